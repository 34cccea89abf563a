"""How the graph is laid out in the KV store.

Per node type ``T``:  namespace ``n.T``; record id = node id (``"T:key"``); one item (key ``b""``)
whose value holds every property with its own version, and whose version is the node's
last-seen time. Keeping a node in one item makes a node read one ``get`` and a merge one
read-modify-write, and lets retention (TTL on the last-seen time) expire the node as a whole.

Per edge type ``E`` three namespaces, all with TTL = the edge type's retention:

* ``e.E.out`` — record = source id; item key = ``inv(ts) ‖ target id``. Newest first in plain
  key order, and a lookback window ``[since, until)`` is one key range, so no read sorts.
* ``e.E.in``  — the reverse index: record = target id; item key = ``inv(ts) ‖ source id``.
* ``e.E.key`` — by target: record = source id; item key = target id. One ``get`` answers
  "does this edge exist, and at which version", which is what an upsert needs to find and
  remove the old position in both time-ordered lists (so an edge is never listed twice), and
  what a delete leaves its tombstone in.

Edge values (``out``/``in``/``key``) are the edge's properties, msgpack-encoded.
"""

from __future__ import annotations

import struct

#: Generation times are µs since epoch in [0, 2**62): far beyond year 100 000, and the
#: inverted value stays positive in a signed 64-bit header.
MAX_TS = (1 << 62) - 1
_INV = struct.Struct(">Q")
_INV_BASE = (1 << 63) - 1

NODE_ITEM = b""


def node_ns(node_type: str) -> str:
    return f"n.{node_type}"


def out_ns(edge_type: str) -> str:
    return f"e.{edge_type}.out"


def in_ns(edge_type: str) -> str:
    return f"e.{edge_type}.in"


def key_ns(edge_type: str) -> str:
    return f"e.{edge_type}.key"


def inv_ts(ts: int) -> bytes:
    """8 bytes that sort descending in ``ts``."""
    return _INV.pack(_INV_BASE - ts)


def ts_of(item_key: bytes) -> int:
    """The generation time encoded at the front of a time-ordered item key."""
    return _INV_BASE - int.from_bytes(item_key[:8], "big")


def time_item(ts: int, other: bytes) -> bytes:
    return _INV.pack(_INV_BASE - ts) + other


def window(since: int | None, until: int | None) -> tuple[bytes | None, bytes | None]:
    """The item-key range ``[start, stop)`` of a time-ordered list for ``since <= ts < until``."""
    start = None if until is None else _INV.pack(_INV_BASE - min(until - 1, MAX_TS))
    stop = None if since is None or since <= 0 else _INV.pack(_INV_BASE - since + 1)
    return start, stop

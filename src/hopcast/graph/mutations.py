"""Graph mutations and their last-write-wins (LWW) rules.

A mutation is an immutable value. Four kinds exist:

* :class:`NodeUpsert` — merge properties into a node (creating it if needed).
* :class:`EdgeUpsert` — create or refresh the edge ``(src)-[type]->(dst)`` with properties.
* :class:`NodeDelete` — delete a node, its properties and every incident edge.
* :class:`EdgeDelete` — delete one edge.

Every mutation carries ``ts`` (the *generation time*: when the event happened, in integer
microseconds since the Unix epoch, set by the producer, never by the store), ``id`` (an
idempotency id: the same logical write replayed carries the same id) and, when it comes from a
source with an order, ``seq`` (its place in that order: see :func:`token_of`).

Merge rules (enforced by :mod:`hopcast.graph.store`, tested in ``tests/graph``):

1. Writes are ordered by the *version* ``(ts, token)``. The token breaks ties on equal ``ts``:
   it is ``seq`` when the write has one — so changes that share a generation time (every change
   of one database transaction shares its commit time) resolve in the order their source
   produced them, whatever the source, slot or topic is called — and otherwise a 63-bit digest
   of the id, so every replica breaks the tie the same way.
2. Same ``ts`` and same token → the write is a no-op (idempotent replay).
3. An older version never overwrites a newer one. For nodes this holds **per property**: a
   ``NodeUpsert`` at ``t1`` setting ``{a, b}`` followed by one at ``t0 < t1`` setting ``{b, c}``
   leaves ``a`` and ``b`` from ``t1`` and ``c`` from ``t0``.
4. A delete is a write too: it leaves a tombstone at its version, so an older upsert arriving
   late does not resurrect what was deleted. A newer upsert does.
5. An edge exists at most once per ``(src, type, dst)``; a newer upsert moves it to its new
   position in the time-ordered adjacency and replaces its properties as a whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from hopcast.errors import InvalidNodeId

#: Property values the graph stores. Nested containers are kept as they are (JSON-like).
PropValue: TypeAlias = str | int | float | bool | list[Any] | dict[str, Any] | None
Props: TypeAlias = dict[str, PropValue]


def token(idempotency_id: str) -> int:
    """Return the 63-bit tie-break token of an idempotency id (stable across processes)."""
    digest = hashlib.blake2b(idempotency_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def token_of(m: Mutation) -> int:
    """The tie-break token of a mutation's version ``(ts, token)``: its ``seq`` if it has one,
    else :func:`token` of its id."""
    seq = m.seq
    return token(m.id) if seq is None else seq


def split_node_id(node_id: str) -> tuple[str, str]:
    """Split ``"type:key"`` into ``(type, key)``.

    Raises:
        InvalidNodeId: if there is no ``:``, or the type or key is empty.
    """
    node_type, sep, key = node_id.partition(":")
    if not sep or not node_type or not key:
        raise InvalidNodeId(f"node id {node_id!r} must look like 'type:key' (e.g. 'account:42')")
    return node_type, key


@dataclass(frozen=True, slots=True)
class NodeUpsert:
    """Merge ``props`` into node ``node`` (``"type:key"``) at generation time ``ts`` (µs)."""

    node: str
    ts: int
    id: str
    props: Props = field(default_factory=dict)
    seq: int | None = None

    @property
    def kind(self) -> str:
        return "node_upsert"


@dataclass(frozen=True, slots=True)
class EdgeUpsert:
    """Create or refresh edge ``src -[type]-> dst`` at ``ts`` (µs), replacing its properties."""

    src: str
    type: str
    dst: str
    ts: int
    id: str
    props: Props = field(default_factory=dict)
    seq: int | None = None

    @property
    def kind(self) -> str:
        return "edge_upsert"


@dataclass(frozen=True, slots=True)
class NodeDelete:
    """Delete node ``node`` and its incident edges whose version is older than this delete."""

    node: str
    ts: int
    id: str
    seq: int | None = None

    @property
    def kind(self) -> str:
        return "node_delete"


@dataclass(frozen=True, slots=True)
class EdgeDelete:
    """Delete edge ``src -[type]-> dst`` if its version is older than this delete."""

    src: str
    type: str
    dst: str
    ts: int
    id: str
    seq: int | None = None

    @property
    def kind(self) -> str:
        return "edge_delete"


Mutation: TypeAlias = NodeUpsert | EdgeUpsert | NodeDelete | EdgeDelete

_KINDS: dict[str, type[NodeUpsert] | type[EdgeUpsert] | type[NodeDelete] | type[EdgeDelete]] = {
    "node_upsert": NodeUpsert,
    "edge_upsert": EdgeUpsert,
    "node_delete": NodeDelete,
    "edge_delete": EdgeDelete,
}


def to_dict(mutation: Mutation) -> dict[str, Any]:
    """Return the JSON form of a mutation: its fields plus ``"kind"`` (``seq`` only if set)."""
    out: dict[str, Any] = {"kind": mutation.kind}
    for name in mutation.__slots__:
        out[name] = getattr(mutation, name)
    if out["seq"] is None:
        del out["seq"]
    return out


def from_dict(data: dict[str, Any]) -> Mutation:
    """Build a mutation from its JSON form (see :func:`to_dict`).

    Raises:
        InvalidMutation: naming the missing or mistyped field.
    """
    from hopcast.errors import InvalidMutation

    if not isinstance(data, dict):
        raise InvalidMutation(f"a mutation must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidMutation(f"'kind' must be one of {sorted(_KINDS)}, got {kind!r}")
    fields = cls.__slots__
    unknown = set(data) - set(fields) - {"kind"}
    if unknown:
        raise InvalidMutation(f"{kind}: unknown field(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name in fields:
        if name not in data:
            if name in ("props", "seq"):
                continue
            raise InvalidMutation(f"{kind}: missing field {name!r}")
        value = data[name]
        if name == "ts":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidMutation(f"{kind}: 'ts' must be an integer (µs since epoch)")
        elif name == "props":
            if not isinstance(value, dict):
                raise InvalidMutation(f"{kind}: 'props' must be an object")
        elif name == "seq":
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
                raise InvalidMutation(f"{kind}: 'seq' must be an integer in [0, 2**63)")
        elif not isinstance(value, str) or not value:
            raise InvalidMutation(f"{kind}: {name!r} must be a non-empty string")
        kwargs[name] = value
    return cls(**kwargs)

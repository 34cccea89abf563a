"""The bounds every write is checked against before it reaches a store.

One table, the same on every backend and every entry (ingest pipelines, the HTTP API,
``hopcast apply``, the Python API): a write that breaks one is refused with a message that
names the bound, and never reaches a backend that could fail on it halfway through a batch.

=====================  ==============================  =============================================
bound                  value                           why
=====================  ==============================  =============================================
node id                1..250 bytes of UTF-8           LMDB keys are at most 511 bytes; an edge's
                                                       key holds both ends, 8 bytes of time and a
                                                       2-byte length: 2 + 250 + 8 + 250 = 510
idempotency id         1..1,024 bytes of UTF-8         it names a write in errors and dead letters,
                                                       it is not a document
generation time        0 <= ts < 2**62 µs              far beyond the year 100,000; the inverted
                                                       time stays positive in a signed 64-bit key
source order (seq)     0 <= seq < 2**63                a signed 64-bit header field
integers               -2**63 <= n < 2**63             signed 64-bit, what every client language
                                                       and msgpack carry exactly
floats                 finite                          NaN and infinities have no JSON form
nesting                depth <= 32 in a property       a member event is flat; deep nesting is an
                                                       attack on recursive decoders
properties of a write  <= 64 KiB msgpack-encoded       a member event, not a blob store
property names         1..256 bytes, not starting NUL  names starting with NUL are the store's own
strings                valid Unicode (no lone          they are stored as UTF-8
                       surrogates)
value types            str, int, float, bool, None,    what JSON carries
                       list, map with string keys
=====================  ==============================  =============================================

Two more checks need the writer's clock, so they are made where a write arrives (the ingest
pipeline, the HTTP API), with ``now`` passed in (:func:`arrival_problem`):

* **far future**: a generation time more than ``max_future`` (default one hour) past ``now`` is
  refused — it would win every last-write-wins comparison until the clock catches up;
* **expired on arrival**: a write older than its type's retention is invisible the moment it
  is stored; it is reported instead of vanishing.

Everything here is pure: functions take values and return a problem (a sentence) or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from hopcast.graph.keys import MAX_TS

#: Longest node id in UTF-8 bytes (see the table above: an edge key holds both ends).
MAX_NODE_ID_BYTES: Final = 250
#: Longest idempotency id in UTF-8 bytes.
MAX_MUTATION_ID_BYTES: Final = 1024
#: Largest source-order tie-breaker (a signed 64-bit header field).
MAX_SEQ: Final = (1 << 63) - 1
#: Integer property values are signed 64-bit.
MIN_INT: Final = -(1 << 63)
MAX_INT: Final = (1 << 63) - 1
#: Deepest nesting of lists and maps inside one property value (a top-level scalar is 0).
MAX_DEPTH: Final = 32
#: Largest properties of one write, msgpack-encoded.
MAX_PROPS_BYTES: Final = 64 * 1024
#: Longest property name in UTF-8 bytes.
MAX_PROP_NAME_BYTES: Final = 256
#: How far past the receiver's clock a generation time may lie by default: producers' clocks
#: drift by seconds, not hours, and a time in the future wins last-write-wins until it passes.
DEFAULT_MAX_FUTURE_US: Final = 3600 * 1_000_000

#: The two outcomes of :func:`arrival_problem` (also dead-letter reasons).
FUTURE_TIME: Final = "future_time"
EXPIRED: Final = "expired"

__all__ = [
    "DEFAULT_MAX_FUTURE_US",
    "EXPIRED",
    "FUTURE_TIME",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_MUTATION_ID_BYTES",
    "MAX_NODE_ID_BYTES",
    "MAX_PROPS_BYTES",
    "MAX_PROP_NAME_BYTES",
    "MAX_SEQ",
    "MAX_TS",
    "MIN_INT",
    "PROPS_BOUND_PER_ENTRY",
    "arrival_problem",
    "id_problem",
    "props_problem",
    "ts_problem",
    "value_problem",
]

_encode = msgspec.msgpack.Encoder().encode
#: Bytes msgpack may spend on a scalar besides a string's characters (a float: 9).
_SCALAR_BYTES = 9
#: An upper bound of the encoded bytes of one property besides its string value's characters
#: (at most 4 bytes each): its name and a scalar. Only when ``4 * characters + this * entries``
#: exceeds :data:`MAX_PROPS_BYTES` are the properties encoded to measure them.
PROPS_BOUND_PER_ENTRY = MAX_PROP_NAME_BYTES + 5 + _SCALAR_BYTES


def _utf8_len(text: str) -> int | None:
    """The UTF-8 length of ``text``, or None if it has a lone surrogate."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return None


def id_problem(value: object, what: str = "node id", limit: int = MAX_NODE_ID_BYTES) -> str | None:
    """Why ``value`` cannot be an id (a node id by default), or None."""
    if type(value) is not str:
        return f"{what} must be a string, got {type(value).__name__}"
    n = _utf8_len(value)
    if n is None:
        return f"{what} {_clip(value)!r} is not valid Unicode (a lone surrogate)"
    if n == 0:
        return f"{what} is empty"
    if n > limit:
        return f"{what} {_clip(value)!r} is {n} bytes of UTF-8; the limit is {limit}"
    return None


def ts_problem(ts: object, what: str = "ts") -> str | None:
    """Why ``ts`` cannot be a generation time (integer µs in [0, 2**62)), or None."""
    if type(ts) is not int:
        return f"{what} must be an integer (µs since the epoch), got {type(ts).__name__}"
    if not 0 <= ts <= MAX_TS:
        return f"{what} {ts} is outside [0, 2**62) µs since the epoch"
    return None


def arrival_problem(
    ts: int, now: int, retention_us: int | None, max_future_us: int | None = DEFAULT_MAX_FUTURE_US
) -> tuple[str, str] | None:
    """``(FUTURE_TIME | EXPIRED, message)`` for a write at ``ts`` arriving at ``now``, or None.

    Args:
        retention_us: the retention of the write's node or edge type (None: forever).
        max_future_us: how far past ``now`` ``ts`` may lie (None: no bound).
    """
    if max_future_us is not None and ts > now + max_future_us:
        ahead = (ts - now) / 1e6
        return FUTURE_TIME, (
            f"generation time {ts} is {ahead:,.0f} s past the receiver's clock "
            f"(at most {max_future_us / 1e6:,.0f} s allowed)"
        )
    if retention_us is not None and ts + retention_us <= now:
        age = (now - ts) / 1e6
        return EXPIRED, (
            f"generation time {ts} is {age:,.0f} s old, beyond the type's retention of "
            f"{retention_us / 1e6:,.0f} s: it would be invisible once written"
        )
    return None


def value_problem(value: Any, name: str = "value") -> str | None:
    """Why ``value`` cannot be stored as a property value, or None.

    Checks types, the integer range, finite floats, string keys, valid Unicode and nesting
    depth (:data:`MAX_DEPTH`); not the encoded size (see :func:`props_problem`). Walks
    containers without recursion, so no input depth can exhaust the stack.
    """
    t = type(value)
    if t is str:
        return None if value.isascii() or _utf8_len(value) is not None else _surrogate(name)
    if t is int:
        return None if MIN_INT <= value <= MAX_INT else _int_range(name, value)
    if t is bool or value is None:
        return None
    if t is float:
        return None if math.isfinite(value) else f"{name}: {value} has no JSON form (not finite)"
    if t is not list and t is not dict:
        return f"{name}: {t.__name__} is not a JSON value (str, int, float, bool, null, list, map)"
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{name}: nested deeper than {MAX_DEPTH} levels"
        children = node.values() if type(node) is dict else node
        if type(node) is dict:
            for key in node:
                if type(key) is not str:
                    return f"{name}: map keys must be strings, got {type(key).__name__}"
                if _utf8_len(key) is None:
                    return _surrogate(name)
        for child in children:
            ct = type(child)
            if ct is list or ct is dict:
                stack.append((child, depth + 1))
            elif ct is str:
                if not child.isascii() and _utf8_len(child) is None:
                    return _surrogate(name)
            elif ct is int:
                if not MIN_INT <= child <= MAX_INT:
                    return _int_range(name, child)
            elif ct is float:
                if not math.isfinite(child):
                    return f"{name}: {child} has no JSON form (not finite)"
            elif ct is not bool and child is not None:
                return f"{name}: {ct.__name__} is not a JSON value"
    return None


def props_problem(props: Mapping[str, Any]) -> str | None:
    """Why ``props`` cannot be stored as the properties of one write, or None.

    Every name and value is checked (:func:`value_problem`), then the encoded size
    (:data:`MAX_PROPS_BYTES`); the size is only encoded when a cheap upper bound exceeds it.
    This runs for every write on the ingest path, so the common case (a few flat, short
    properties whose names were seen before) is one loop of type checks.
    """
    if type(props) is not dict and not isinstance(props, Mapping):
        return f"properties must be a map, got {type(props).__name__}"
    chars = 0  # characters of string values: at most 4 bytes each in UTF-8
    measure = False
    for name, value in props.items():
        if name not in _GOOD_NAMES:
            problem = _name_problem(name)
            if problem:
                return problem
            if len(_GOOD_NAMES) < _GOOD_NAMES_MAX:
                _GOOD_NAMES.add(name)
        t = type(value)
        if t is str:
            if not value.isascii() and _utf8_len(value) is None:
                return _surrogate(f"property {name!r}")
            chars += len(value)
        elif t is int:
            if not MIN_INT <= value <= MAX_INT:
                return _int_range(f"property {name!r}", value)
        elif t is bool or value is None:
            pass
        else:  # floats, containers and anything else: the general check
            problem = value_problem(value, f"property {name!r}")
            if problem:
                return problem
            measure = measure or t is list or t is dict
    if measure or 4 * chars + PROPS_BOUND_PER_ENTRY * len(props) > MAX_PROPS_BYTES:
        size = len(_encode(props))
        if size > MAX_PROPS_BYTES:
            return f"properties are {size} bytes encoded; the limit is {MAX_PROPS_BYTES}"
    return None


#: Property names that passed :func:`_name_problem` (names repeat: a schema has few). Bounded,
#: so arbitrary names (``additional_props``) cannot grow it without limit.
_GOOD_NAMES: set[str] = set()
_GOOD_NAMES_MAX = 4096


def _name_problem(name: object) -> str | None:
    if type(name) is not str:
        return f"property names must be strings, got {type(name).__name__}"
    n = _utf8_len(name)
    if n is None:
        return _surrogate("property name")
    if n == 0 or n > MAX_PROP_NAME_BYTES:
        return f"property name {_clip(name)!r} must be 1..{MAX_PROP_NAME_BYTES} bytes"
    if name[0] == "\x00":
        return f"property name {_clip(name)!r} starts with NUL (reserved for the store)"
    return None


def _int_range(name: str, value: int) -> str:
    bits = value.bit_length()
    shown = str(value) if bits <= 128 else f"an integer of {bits} bits"
    return f"{name}: {shown} is outside the signed 64-bit range [-2**63, 2**63)"


def _surrogate(name: str) -> str:
    return f"{name}: not valid Unicode (a lone surrogate)"


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "…"

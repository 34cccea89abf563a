"""What flows into the pipeline (:class:`Record`) and what the decoders make of it (:class:`Event`).

A :class:`Record` is what a source hands over: raw bytes and where they came from. It carries no
broker or engine type, so the same operators run under the embedded engine and under Flink.

* ``source`` names the source (one mapping file per source);
* ``position`` is the record's place in that source, a :class:`Position` ``(partition, offset)``:
  offsets grow within a partition and mean nothing across partitions (a Kafka partition and its
  offset, a PostgreSQL slot and an LSN, a log file and a byte offset). The engine stores
  positions beside the mutations they produced (exactly-once effect);
* ``key``, ``value``, ``headers`` are bytes as the source delivered them;
* ``event_time`` is when the event happened (µs since the epoch), if the source knows it.

An :class:`Event` is a decoded record: a JSON-like document addressed by dotted paths
(``after.profile_id``), the CDC operation and table if it was a change event, the event time, and
the rows that enrichment attached (``side``). Mappings read events; they never see bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple

import msgspec


class Position(NamedTuple):
    """A record's place in its source: ``offset`` orders records within ``partition`` only."""

    partition: str
    offset: int

    def to_bytes(self) -> bytes:
        """The checkpoint form (what :meth:`GraphStore.apply` stores per source). Offsets
        beyond a signed 64-bit integer (a CDC source's commit LSN and index) are stored as
        their big-endian bytes."""
        offset = self.offset
        if -(1 << 63) <= offset < 1 << 63:
            return _encode((self.partition, offset))
        if offset < 0:
            raise ValueError(f"offset {offset} is below -2**63")
        return _encode((self.partition, offset.to_bytes((offset.bit_length() + 7) // 8, "big")))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Position:
        """Inverse of :meth:`to_bytes`.

        Raises:
            ValueError: if ``raw`` is not a stored position.
        """
        try:
            partition, offset = _decode(raw)
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"not a stored position: {raw!r}") from exc
        if type(offset) is bytes and len(offset) > 8:
            offset = int.from_bytes(offset, "big")
        if (
            not isinstance(partition, str)
            or isinstance(offset, bool)
            or not isinstance(offset, int)
        ):
            raise ValueError(f"not a stored position: {raw!r}")
        return cls(partition, offset)

    def __str__(self) -> str:
        return f"{self.partition}@{self.offset}"


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


@dataclass(frozen=True, slots=True)
class Record:
    """One raw record from a source. See the module docstring for the fields."""

    source: str
    position: Position
    value: bytes
    key: bytes | None = None
    event_time: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class _Missing:
    """The value of a path that leads nowhere (distinct from a JSON ``null``)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: Returned by :meth:`Event.get` when a path does not exist.
MISSING: Final = _Missing()

#: The Debezium operations an :class:`Event` may carry: create, update, delete, read (snapshot)
#: and truncate (a whole table emptied: no row).
CDC_OPS: Final = frozenset({"c", "u", "d", "r", "t"})


def walk(value: Any, parts: Iterable[str]) -> Any:
    """The value at ``parts`` below ``value``, or :data:`MISSING` (:meth:`Event.get`'s rule: map
    keys matched exactly; a part made of digits indexes a list)."""
    for part in parts:
        if type(value) is dict:  # decoded JSON: the fast path
            value = value.get(part, MISSING)
            if value is MISSING:
                return MISSING
        elif isinstance(value, Mapping):
            if part not in value:
                return MISSING
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """The canonical, decoded event that filters, enrichment and mappings work on.

    ``data`` is the document. For a change event it holds ``op``, ``table``, ``before``,
    ``after``, ``source``, ``ts_ms`` and ``row`` (``after``, or ``before`` for a delete), so
    ``row.title_id`` works for every operation. ``op`` is None for plain events. ``side`` holds
    enrichment results by name; a path whose first part names one reads it first. ``order``
    is the event's place in its source's order (the tie-break of equal generation times).
    """

    source: str
    position: Position
    data: Mapping[str, Any]
    raw: bytes = b""
    op: str | None = None
    table: str | None = None
    event_time: int | None = None
    key: bytes | None = None
    side: Mapping[str, Any] = field(default_factory=dict)
    #: The event's place in its source's order, which breaks ties between writes that share a
    #: generation time (see :func:`~hopcast.graph.mutations.token_of`): a CDC change's own LSN,
    #: else the record's offset. None: the offset.
    order: int | None = None

    def get(self, path: tuple[str, ...]) -> Any:
        """The value at ``path`` (parts of a dotted path), or :data:`MISSING`.

        Map keys are matched exactly; a part made of digits indexes a list.
        """
        if not path:
            return self.data
        head = path[0]
        side = self.side
        value: Any
        if side and head in side:
            value = side[head]
        else:
            value = self.data.get(head, MISSING)
            if value is MISSING:
                return MISSING
        return walk(value, path[1:]) if len(path) > 1 else value

    def with_side(self, name: str, row: Any) -> Event:
        """A copy with ``row`` attached as side input ``name``."""
        return make_event(
            self.source,
            self.position,
            self.data,
            self.raw,
            self.op,
            self.table,
            self.event_time,
            self.key,
            {**self.side, name: row},
            self.order,
        )

    def with_time(self, event_time: int) -> Event:
        """A copy with ``event_time`` set (µs since the epoch)."""
        return replace(self, event_time=event_time)


_new = object.__new__
_EVENT_SETTERS = tuple(getattr(Event, name).__set__ for name in Event.__slots__)
(
    _set_source,
    _set_position,
    _set_data,
    _set_raw,
    _set_op,
    _set_table,
    _set_event_time,
    _set_key,
    _set_side,
    _set_order,
) = _EVENT_SETTERS
assert Event.__slots__ == (
    "source", "position", "data", "raw", "op", "table", "event_time", "key", "side", "order",
)  # fmt: skip


def make_event(
    source: str,
    position: Position,
    data: Mapping[str, Any],
    raw: bytes,
    op: str | None,
    table: str | None,
    event_time: int | None,
    key: bytes | None,
    side: Mapping[str, Any],
    order: int | None,
) -> Event:
    """``Event(source, position, …, order)`` with every field given, made by setting its
    slots: the frozen dataclass's ``__init__`` calls ``object.__setattr__`` once per field,
    which costs more than decoding a small record. Event has no ``__post_init__``, so the
    result is the same."""
    event = _new(Event)
    _set_source(event, source)
    _set_position(event, position)
    _set_data(event, data)
    _set_raw(event, raw)
    _set_op(event, op)
    _set_table(event, table)
    _set_event_time(event, event_time)
    _set_key(event, key)
    _set_side(event, side)
    _set_order(event, order)
    return event

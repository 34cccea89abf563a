"""Dead letters: bad input kept with its reason, raw payload and source position, never lost.

A pipeline step never raises: a record it cannot turn into mutations becomes one
:class:`DeadLetter` (all or nothing per record: none of its mutations is written). The engine
writes dead letters to a :class:`DeadLetterStore`; ``hopcast deadletters`` lists, shows and
replays them once the mapping is fixed.

A dead letter's identity is its record's ``(source, position)``: a replayed record that fails
again overwrites its earlier dead letter instead of adding a second one.

Store layout (namespace :data:`DEADLETTER_NS`; the KV lists the items of a record, not the
records of a namespace, so lists are records):

* record ``all``: item key = dead-letter id, value = the encoded dead letter;
* record ``t``: item key = ``time (8 bytes) + id``, the time-ordered index;
* records ``r/<reason>`` and ``s/<source>``: the same keys, filtered by reason and by source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from hopcast.kv.base import KVStore, WriteTxn
from hopcast.stream.record import Position


class Reason(StrEnum):
    """Why a record became a dead letter. The values are stable: they appear in metrics,
    in the store's filters and on the command line."""

    #: The record is larger than the source's ``max_bytes``.
    OVERSIZE = "oversize"
    #: The value is not UTF-8 JSON, or not a JSON object.
    MALFORMED_JSON = "malformed_json"
    #: A change event whose envelope is wrong (no ``op``, ``after`` missing for a create, …).
    BAD_ENVELOPE = "bad_envelope"
    #: A field that an id, a time or a required property needs is absent (or null).
    MISSING_FIELD = "missing_field"
    #: A field has a value of the wrong kind (``"abc"`` for an ``int``, a bad timestamp).
    BAD_VALUE = "bad_value"
    #: No event time: neither the mapping's time field nor the source gave one.
    MISSING_TIME = "missing_time"
    #: No rule of the mapping matched the event.
    UNMATCHED = "unmatched"
    #: A required side-input row (enrichment) does not exist.
    ENRICHMENT_MISSING = "enrichment_missing"
    #: A produced mutation does not fit the graph schema.
    SCHEMA_VIOLATION = "schema_violation"
    #: A value beyond a documented bound (:mod:`hopcast.graph.limits`: id length, integer
    #: range, nesting depth, size, outputs per record).
    OUT_OF_BOUNDS = "out_of_bounds"
    #: A generation time too far past the receiver's clock (``max_future``): it would win
    #: every last-write-wins comparison until the clock caught up.
    FUTURE_TIME = "future_time"
    #: Every mutation of the record is older than its type's retention: it would be invisible
    #: the moment it was written.
    EXPIRED = "expired"
    #: A CDC ``TRUNCATE`` of a table: the graph keeps the nodes and edges its rows made (map
    #: ``op: t`` in a rule to act on it).
    TRUNCATE = "truncate"
    #: The store refused the record's writes (the rest of its batch was written).
    WRITE_FAILED = "write_failed"
    #: A mapping hook raised or returned something that is not a mutation.
    HOOK_ERROR = "hook_error"
    #: Any other error inside a step (a bug: the record is kept so nothing is lost).
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected record.

    Attributes:
        reason: a :class:`Reason` value.
        message: what exactly was wrong, for a human.
        payload: the record's raw value, byte for byte, so it can be replayed.
        source: the source name; ``position`` its position there.
        time: when it was rejected (µs since the epoch; the engine's ``now``).
        stage: the pipeline step that rejected it (``decode``, ``enrich``, ``map``, …).
        mapping: the mapping file (and rule) involved, if any.
        key: the record's key bytes, if any.
        event_time: the record's event time, if the source knew it.
    """

    reason: str
    message: str
    payload: bytes
    source: str
    position: Position
    time: int
    stage: str
    mapping: str | None = None
    key: bytes | None = None
    event_time: int | None = None

    @property
    def id(self) -> str:
        """Stable id: a digest of ``(source, position)``, 16 hex digits."""
        return dead_letter_id(self.source, self.position)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the payload as text if it is UTF-8, else hex)."""
        try:
            payload: str = self.payload.decode()
            encoding = "utf-8"
        except UnicodeDecodeError:
            payload, encoding = self.payload.hex(), "hex"
        return {
            "id": self.id,
            "reason": self.reason,
            "message": self.message,
            "payload": payload,
            "payload_encoding": encoding,
            "source": self.source,
            "position": {"partition": self.position.partition, "offset": self.position.offset},
            "time": self.time,
            "stage": self.stage,
            "mapping": self.mapping,
            "event_time": self.event_time,
        }


def dead_letter_id(source: str, position: Position) -> str:
    """The id of the dead letter of the record at ``position`` in ``source``."""
    text = f"{source}\x00{position.partition}\x00{position.offset}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


#: The dead-letter namespace; ``dl.`` keeps it apart from the graph's and live's namespaces.
DEADLETTER_NS = "dl.letters"

_ALL = b"all"
_BY_TIME = b"t"
#: Dead letters are kept until deleted (a replay deletes them); nothing ages out unnoticed.
_NO_TTL = None
#: Reads in a namespace without TTL do not depend on the time.
_READ_NOW = 0
#: Largest page :meth:`DeadLetterStore.list` returns: a screenful, and a bounded read.
MAX_PAGE = 1000


class _Stored(msgspec.Struct, array_like=True):
    reason: str
    message: str
    payload: bytes
    source: str
    partition: str
    offset: int | bytes  # bytes: big-endian, for an offset beyond a signed 64-bit integer
    time: int
    stage: str
    mapping: str | None
    key: bytes | None
    event_time: int | None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Stored)


def _encode(d: DeadLetter) -> bytes:
    return _encoder.encode(
        _Stored(
            d.reason,
            d.message,
            d.payload,
            d.source,
            d.position.partition,
            _offset_out(d.position.offset),
            d.time,
            d.stage,
            d.mapping,
            d.key,
            d.event_time,
        )
    )


def _decode(raw: bytes) -> DeadLetter:
    s = _decoder.decode(raw)
    return DeadLetter(
        s.reason,
        s.message,
        s.payload,
        s.source,
        Position(s.partition, _offset_in(s.offset)),
        s.time,
        s.stage,
        s.mapping,
        s.key,
        s.event_time,
    )


def _offset_out(offset: int) -> int | bytes:
    if -(1 << 63) <= offset < 1 << 63:
        return offset
    return offset.to_bytes((offset.bit_length() + 7) // 8, "big")


def _offset_in(offset: int | bytes) -> int:
    return offset if isinstance(offset, int) else int.from_bytes(offset, "big")


def _index_key(d: DeadLetter) -> bytes:
    return max(d.time, 0).to_bytes(8, "big") + bytes.fromhex(d.id)


def _index_rid(reason: str | None, source: str | None) -> bytes:
    """The index a listing walks: by reason if given, else by source if given, else by time."""
    if reason is not None:
        return _reason_rid(reason)
    if source is not None:
        return _source_rid(source)
    return _BY_TIME


def _reason_rid(reason: str) -> bytes:
    return b"r/" + reason.encode()


def _source_rid(source: str) -> bytes:
    return b"s/" + source.encode()


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """A page of dead letters, newest first; pass ``cursor`` back for the next page."""

    items: list[DeadLetter]
    cursor: bytes | None


class DeadLetterStore:
    """Dead letters in a :class:`~hopcast.kv.base.KVStore` namespace of their own.

    Thread-safe as the KV store is. Every method may raise
    :class:`~hopcast.errors.StorageError` if the backend fails.
    """

    def __init__(self, kv: KVStore) -> None:
        self._kv = kv
        kv.configure(DEADLETTER_NS, _NO_TTL)

    def put(self, *letters: DeadLetter) -> None:
        """Store dead letters in one atomic write; one with the id of a stored one replaces it."""
        with self._kv.writer() as w:
            for d in letters:
                self._remove(w, d.id)
                key = _index_key(d)
                w.put(DEADLETTER_NS, _ALL, bytes.fromhex(d.id), _encode(d), d.time, 0)
                for rid in (_BY_TIME, _reason_rid(d.reason), _source_rid(d.source)):
                    w.put(DEADLETTER_NS, rid, key, b"", d.time, 0)

    def get(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or None (also for an id that is not 16 hex digits)."""
        key = _id_bytes(letter_id)
        if key is None:
            return None
        item = self._kv.get(DEADLETTER_NS, _ALL, key, _READ_NOW)
        return None if item is None else _decode(item.value)

    def delete(self, letter_id: str) -> bool:
        """Remove a dead letter (after a successful replay). Returns whether it existed."""
        with self._kv.writer() as w:
            return self._remove(w, letter_id)

    def list(
        self,
        limit: int = 100,
        reason: str | None = None,
        source: str | None = None,
        cursor: bytes | None = None,
    ) -> DeadLetterPage:
        """Dead letters newest first, optionally only one reason and/or one source.

        Args:
            limit: page size, 1 to :data:`MAX_PAGE`.
            cursor: from the previous page; None starts at the newest.

        Raises:
            ValueError: if ``limit`` is out of range.
            InvalidCursor: if ``cursor`` was not issued by this method.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}, got {limit}")
        rid = _index_rid(reason, source)
        out: list[DeadLetter] = []
        next_cursor: bytes | None = None
        with self._kv.reader() as r:
            while True:
                page = r.page(DEADLETTER_NS, rid, _READ_NOW, limit, reverse=True, cursor=cursor)
                for item in page.items:
                    got = r.get(DEADLETTER_NS, _ALL, item.key[8:], _READ_NOW)
                    if got is None:
                        continue
                    letter = _decode(got.value)
                    if reason is not None and source is not None and letter.source != source:
                        continue
                    out.append(letter)
                    if len(out) == limit:
                        more = item.key != page.items[-1].key or page.cursor is not None
                        next_cursor = item.key if more else None
                        return DeadLetterPage(out, next_cursor)
                if page.cursor is None:
                    return DeadLetterPage(out, None)
                cursor = page.cursor

    def __iter__(self) -> Iterator[DeadLetter]:
        """Every dead letter, newest first (pages through the store)."""
        cursor: bytes | None = None
        while True:
            page = self.list(MAX_PAGE, cursor=cursor)
            yield from page.items
            if page.cursor is None:
                return
            cursor = page.cursor

    def count(self, reason: str | None = None, source: str | None = None) -> int:
        """How many dead letters are stored (for one reason or one source, if given)."""
        if reason is not None and source is not None:
            return sum(1 for d in self._iter_filtered(reason) if d.source == source)
        rid = _index_rid(reason, source)
        with self._kv.reader() as r:
            return r.count(DEADLETTER_NS, rid, _READ_NOW)

    def _iter_filtered(self, reason: str) -> Iterator[DeadLetter]:
        cursor: bytes | None = None
        while True:
            page = self.list(MAX_PAGE, reason=reason, cursor=cursor)
            yield from page.items
            if page.cursor is None:
                return
            cursor = page.cursor

    @staticmethod
    def _remove(w: WriteTxn, letter_id: str) -> bool:
        key = _id_bytes(letter_id)
        if key is None:
            return False
        item = w.get(DEADLETTER_NS, _ALL, key)
        if item is None:
            return False
        old = _decode(item.value)
        index_key = _index_key(old)
        for rid in (_BY_TIME, _reason_rid(old.reason), _source_rid(old.source)):
            w.delete(DEADLETTER_NS, rid, index_key)
        w.delete(DEADLETTER_NS, _ALL, key)
        return True


def _id_bytes(letter_id: str) -> bytes | None:
    if len(letter_id) != 16:
        return None
    try:
        return bytes.fromhex(letter_id)
    except ValueError:
        return None


__all__ = [
    "DEADLETTER_NS",
    "DeadLetter",
    "DeadLetterPage",
    "DeadLetterStore",
    "Reason",
    "dead_letter_id",
]

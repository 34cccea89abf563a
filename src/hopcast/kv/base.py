"""The key-value abstraction every graph backend implements.

Shape (Netflix's KV data-abstraction layer)::

    namespace ──▶ record id ──▶ sorted map( item key ──▶ item )

* A **namespace** groups records with one TTL policy (one per node type and per edge-list kind).
* A **record** is identified by bytes; its items are kept sorted by item key (bytewise), so a
  record can be read forward or backward, in key ranges, in pages with a resumable cursor.
* An **item** carries ``value`` bytes and a version ``(ts, token)``: ``ts`` is the generation
  time (µs since epoch) and ``token`` a 63-bit tie-breaker. :meth:`WriteTxn.put_lww` applies a
  write only if its version is strictly newer (last-write-wins; equal versions are a no-op).
* An item may be a **tombstone** (a remembered delete, invisible to reads) so that an older write
  arriving late cannot resurrect it.
* **Expiry**: an item expires at ``ts + ttl`` where ``ttl`` is the item's own TTL if given, else
  its namespace's; tombstones in a namespace without TTL expire after
  :data:`TOMBSTONE_GRACE_US`. Expired items are invisible to reads (``now`` is passed in) and are
  removed by :meth:`KVStore.sweep`.
* **Atomicity**: everything done in one :meth:`KVStore.writer` block, including
  :meth:`WriteTxn.set_checkpoint` (source positions), commits or aborts as one.

Backends: :mod:`hopcast.kv.memory` (the reference, the spec in code), :mod:`hopcast.kv.lmdb`
(embedded default) and :mod:`hopcast.kv.redis` (scale-out). All pass
``tests/kv/test_contract.py``.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple, TypeVar

from hopcast.durations import DAY
from hopcast.errors import InvalidCursor

#: Value header: ts (int64), token (int64), expires_at (int64, 0 = never), flags (uint8).
HEADER = struct.Struct(">qqqB")
HEADER_SIZE = HEADER.size
FLAG_TOMBSTONE = 1

#: How long a delete is remembered in a namespace that has no TTL. Replays older than this
#: (e.g. a Kafka topic re-read from a week-old offset) could resurrect deleted data; a week
#: covers Kafka's default 7-day topic retention.
TOMBSTONE_GRACE_US = 7 * DAY

#: Items fetched per round trip when a scan is streamed. Big enough to amortise a cursor
#: re-seek or a network round trip, small enough that an early stop wastes little.
SCAN_BATCH = 64

#: Namespaces that backends reserve for themselves.
CHECKPOINT_NS = "__checkpoints__"
META_NS = "__meta__"


T = TypeVar("T")


class Item(NamedTuple):
    """One stored item. ``expires_at == 0`` means never."""

    key: bytes
    value: bytes
    ts: int
    token: int
    expires_at: int = 0
    tombstone: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """A page of a scan; pass ``cursor`` back to continue, ``None`` means the end."""

    items: list[Item]
    cursor: bytes | None


def expiry(ts: int, ttl_us: int | None, tombstone: bool) -> int:
    """Absolute expiry for an item written at generation time ``ts``; 0 = never."""
    if ttl_us is None:
        return ts + TOMBSTONE_GRACE_US if tombstone else 0
    return ts + ttl_us


_TIME = struct.Struct(">Q")
_TIME_BASE = (1 << 63) - 1


def time_key(ts: int) -> bytes:
    """8 bytes that sort descending in ``ts`` (``0 <= ts < 2**63``): the front of an entry's
    key in a time-ordered list (:meth:`WriteTxn.put_indexed`; the graph's ``keys.inv_ts``)."""
    return _TIME.pack(_TIME_BASE - ts)


def visible(item: Item, now: int) -> bool:
    """Whether a read at ``now`` sees the item (not a tombstone, not expired)."""
    return not item.tombstone and (item.expires_at == 0 or item.expires_at > now)


def newer(ts: int, token: int, than: Item | None) -> bool:
    """Whether version ``(ts, token)`` beats the stored item (strictly newer, LWW)."""
    return than is None or (ts, token) > (than.ts, than.token)


def page_bounds(
    start: bytes | None, stop: bytes | None, reverse: bool, cursor: bytes | None
) -> tuple[bytes | None, bytes | None]:
    """Narrow ``[start, stop)`` so a scan resumes right after ``cursor`` (the last key seen)."""
    if cursor is None:
        return start, stop
    if not isinstance(cursor, bytes):
        raise InvalidCursor("cursor must be bytes")
    if reverse:
        if start is not None and cursor < start:
            raise InvalidCursor("cursor lies outside the scanned range")
        return start, cursor
    if stop is not None and cursor >= stop:
        raise InvalidCursor("cursor lies outside the scanned range")
    return cursor + b"\x00", stop


class ReadTxn(ABC):
    """A read view. On LMDB it is a consistent snapshot; on memory and Redis it reads committed
    data, each batch of a scan atomically but not one snapshot across batches."""

    @abstractmethod
    def get(self, ns: str, rid: bytes, key: bytes, now: int) -> Item | None:
        """The visible item at ``key``, or None (absent, tombstone or expired)."""

    def generation(self) -> int | None:
        """The store's commit generation as this view reads it, or None if the backend cannot
        tell (the default).

        Contract: views of equal generations read the same committed data (without snapshots:
        at least the commits counted in it), and a commit acknowledged (by any process) before
        a view began gives that view a generation unlike that of every view begun before the
        commit. A cache tags what it read with it (:mod:`hopcast.query.cache`).
        """
        return None

    @abstractmethod
    def scan(
        self,
        ns: str,
        rid: bytes,
        now: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        """Stream the visible items of a record with ``start <= key < stop``.

        Items come in key order (descending with ``reverse``), fetched lazily in batches of
        :data:`SCAN_BATCH`, so a caller that stops early pays only for what it read.
        """

    def fetch(
        self,
        ns: str,
        rid: bytes,
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        make: Callable[[bytes, bytes, int], T] | None = None,
    ) -> list[T]:
        """Up to ``limit`` visible items with ``start <= key < stop``, in key order, in one call.

        The hot path of adjacency reads: backends implement it as one tight loop. Fewer than
        ``limit`` results means the range is exhausted.

        Args:
            make: builds each result from ``(key, value, ts)`` instead of an :class:`Item`, so
                a caller's objects are built once, straight from storage.
        """
        items = list(islice(self.scan(ns, rid, now, start, stop), limit))
        if make is None:
            return items  # type: ignore[return-value]
        return [make(i.key, i.value, i.ts) for i in items]

    def fetch_many(
        self,
        ns: str,
        rids: list[bytes],
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        make: Callable[[int, bytes, bytes, int], T] | None = None,
    ) -> list[list[T]]:
        """:meth:`fetch` for many records of one namespace in one round.

        This is what one hop of a breadth-first traversal asks for; backends serve it with one
        cursor (LMDB) or one pipeline (network stores). ``make(i, key, value, ts)`` receives the
        index of the record in ``rids``.
        """
        out: list[list[T]] = []
        for i, rid in enumerate(rids):
            items: list[Item] = self.fetch(ns, rid, now, limit, start, stop)
            if make is None:
                out.append(items)  # type: ignore[arg-type]
            else:
                out.append([make(i, it.key, it.value, it.ts) for it in items])
        return out

    @abstractmethod
    def count(
        self, ns: str, rid: bytes, now: int, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        """Number of visible items with ``start <= key < stop``."""

    @abstractmethod
    def checkpoints(self) -> dict[str, bytes]:
        """Every stored source position, by source name."""

    def page(
        self,
        ns: str,
        rid: bytes,
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
        cursor: bytes | None = None,
    ) -> Page:
        """Up to ``limit`` items and the cursor that resumes after them (None at the end).

        Raises:
            InvalidCursor: if ``cursor`` cannot belong to this range.
        """
        start, stop = page_bounds(start, stop, reverse, cursor)
        items: list[Item] = []
        it = self.scan(ns, rid, now, start, stop, reverse)
        for item in it:
            items.append(item)
            if len(items) >= limit:
                break
        else:
            return Page(items, None)
        for _ in it:
            return Page(items, items[-1].key)
        return Page(items, None)


class WriteTxn(ABC):
    """A write transaction: everything in it commits atomically, or nothing does."""

    @abstractmethod
    def get(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        """The stored item, tombstones and expired items included (LWW needs them)."""

    def prefetch(self, items: Iterable[tuple[str, bytes, bytes]]) -> None:  # noqa: B027
        """A hint that ``get`` will be asked for these ``(ns, rid, key)``: a networked backend
        fetches them in one round trip instead of one each. Embedded backends ignore it."""

    @abstractmethod
    def put(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None = None,
        tombstone: bool = False,
    ) -> None:
        """Write unconditionally. ``ttl_us`` overrides the namespace TTL for this item."""

    def put_lww(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None = None,
        tombstone: bool = False,
    ) -> bool:
        """Write only if ``(ts, token)`` is strictly newer than the stored version.

        Returns:
            True if written; False if the stored version is newer or equal (a replay).
        """
        if not newer(ts, token, self.get(ns, rid, key)):
            return False
        self.put(ns, rid, key, value, ts, token, ttl_us, tombstone)
        return True

    #: Whether :meth:`put_indexed` decides on the server, from the versions stored at commit
    #: time (a backend whose writers can run concurrently in several processes): a caller
    #: that otherwise reads an item and discards its old list entries itself must then use
    #: :meth:`put_indexed` instead, or concurrent writers can leave stale entries behind.
    indexes_on_server = False

    def put_indexed(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        lists: Iterable[tuple[str, bytes, bytes]],
        tombstone: bool = False,
    ) -> bool:
        """Last-write-wins put of an item that time-ordered lists index.

        Each ``(list ns, list rid, suffix)`` of ``lists`` names a list record that holds the
        entry ``time_key(ts) + suffix`` (same value and version, the list namespace's TTL)
        exactly while this item is the newest write and not a tombstone: a newer write moves
        the entries (the old ones go), a tombstone removes them. Every writer of the item must
        name the same lists.

        This default derives the old entries from what the transaction reads: exact for a
        backend that serialises its writers. A backend with :attr:`indexes_on_server` decides
        on the server at commit, from the stored versions, so any interleaving of concurrent
        writers ends with the winner's entries only.

        Returns:
            True if the write wins as this transaction sees it.
        """
        old = self.get(ns, rid, key)
        if old is not None and (ts, token) <= (old.ts, old.token):
            return False
        lists = list(lists)
        if old is not None and not old.tombstone:
            old_key = time_key(old.ts)
            for lns, lrid, suffix in lists:
                self.discard(lns, lrid, old_key + suffix)
        if not tombstone:
            new_key = time_key(ts)
            for lns, lrid, suffix in lists:
                self.put(lns, lrid, new_key + suffix, value, ts, token)
        self.put(ns, rid, key, value, ts, token, tombstone=tombstone)
        return True

    def put_many(self, items: Iterable[tuple[str, bytes, bytes, bytes, int, int]]) -> None:
        """Unconditional puts of ``(ns, rid, key, value, ts, token)`` with namespace TTLs,
        in bulk (backends write them in key order with one cursor per namespace)."""
        for ns, rid, key, value, ts, token in items:
            self.put(ns, rid, key, value, ts, token)

    @abstractmethod
    def delete(self, ns: str, rid: bytes, key: bytes) -> bool:
        """Remove an item physically (no tombstone). Returns whether it existed."""

    def discard(self, ns: str, rid: bytes, key: bytes) -> None:
        """:meth:`delete` for a caller that does not need the answer, so that a networked
        backend removes the item at commit without reading it first."""
        self.delete(ns, rid, key)

    @abstractmethod
    def scan(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        """Stored items of a record in key order, tombstones and expired items included.

        Do not write to the same record while iterating; collect first.
        """

    @abstractmethod
    def set_checkpoint(self, source: str, position: bytes) -> None:
        """Record a source position in this same atomic write."""


class KVStore(ABC):
    """A key-value backend. Thread-safe; readers never block each other."""

    name: str = "kv"

    @abstractmethod
    def configure(self, ns: str, ttl_us: int | None) -> None:
        """Declare a namespace and its TTL (None = no TTL). Idempotent; a new TTL applies to
        items written afterwards."""

    def configure_many(self, ttls: dict[str, int | None]) -> None:
        """Declare several namespaces at once (one write on backends that can)."""
        for ns, ttl in ttls.items():
            self.configure(ns, ttl)

    @abstractmethod
    def ttl(self, ns: str) -> int | None:
        """The namespace's TTL in µs, or None."""

    @abstractmethod
    def reader(self) -> AbstractContextManager[ReadTxn]:
        """A read view for several reads (``with kv.reader() as r: ...``)."""

    @abstractmethod
    def writer(self) -> AbstractContextManager[WriteTxn]:
        """An atomic write: commits when the block exits, aborts if it raises."""

    @abstractmethod
    def sweep(self, now: int, limit: int | None = None) -> int:
        """Remove up to ``limit`` expired items and tombstones; returns how many were removed."""

    @abstractmethod
    def namespaces(self) -> list[str]:
        """The configured namespaces (internal ones excluded)."""

    @abstractmethod
    def close(self) -> None:
        """Release resources; further use raises :class:`~hopcast.errors.StoreClosed`."""

    # Conveniences for one-off reads --------------------------------------------------------

    def get(self, ns: str, rid: bytes, key: bytes, now: int) -> Item | None:
        with self.reader() as r:
            return r.get(ns, rid, key, now)

    def page(
        self,
        ns: str,
        rid: bytes,
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
        cursor: bytes | None = None,
    ) -> Page:
        with self.reader() as r:
            return r.page(ns, rid, now, limit, start, stop, reverse, cursor)

    def checkpoints(self) -> dict[str, bytes]:
        with self.reader() as r:
            return r.checkpoints()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

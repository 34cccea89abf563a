"""Side tables kept in the graph store, for engines whose tasks share no memory (Flink).

The embedded engine keeps its side tables in its one process and persists them (namespace
:data:`~hopcast.stream.engines.embedded.SIDE_NS`). Under Flink every source is its own job with
parallel tasks, so the task that applies a table's changelog (the catalogue's) is never the task
that enriches from it (playback's). Here the store is the table, and every task of every job
reads it:

* **Writing.** A :class:`StoreSideTable` that a ``changelog`` step changes records the change
  as a :class:`SideRow` output of the record (:class:`SideRowPipeline` appends them to the
  pipeline's outputs). Side rows travel like mutations: bucketed by ``(table, key)`` (so one
  writer task owns a row), buffered in the window's Flink state, and written by
  :class:`~hopcast.stream.engines.buckets.BucketWriter` in the **same atomic write** as the
  window's mutations and totals (:func:`side_extra` builds the items). The writer keeps the
  row with the newest version (the change's event time, last-write-wins as
  :class:`~hopcast.stream.operators.SideTable` does) and skips a row the store already holds at
  that version or a newer one; every write that changes a table also writes a fresh random
  *generation token* of that table (namespace :data:`GEN_NS`).
* **Reading.** ``enrich`` reads a row through a per-task cache (positive and negative entries,
  at most ``max_rows``). At most every ``check_ms`` a read first reads the table's generation
  token (one small store read); if it changed, the task reads the table's change log (each
  write's keys, kept :data:`LOG_KEEP_S`) and forgets the rows written since it last looked, so
  a change costs each task one re-read of the changed rows, not of its whole cache (a write of
  more than :data:`MAX_LOGGED_KEYS` rows, or a log not read for ``LOG_KEEP_S / 2``, drops the
  whole cache). A task also sees its own changes at once, before their window is written.

What a reader can see: every row change committed to the store more than ``check_ms`` before the
read (the token and the log entry are written atomically with the rows, a token is never reused,
and writers' clocks agree within ``LOG_KEEP_S / 2``). A change is committed when its window is
written, ``window_ms`` after the changelog record was processed (longer while the store is
away: the writer retries). So an enrichment sees a catalogue change
at most about ``window_ms + check_ms`` after the catalogue job processed it; there is no order
between jobs: an event processed before the change it follows in real time (another topic,
another job) is enriched with the row as it was, or, if the row did not exist yet, goes on
without it — or, for a ``required`` enrichment, becomes an ``enrichment_missing`` dead letter,
which ``hopcast deadletters replay`` re-runs against the stored tables. Rows written by a writer
that does not bump the token (the embedded engine) are re-read after ``max_age_ms``.

Restore and replay: side rows live in the store, not in Flink's checkpoints. A changelog job
restored from a checkpoint replays its records; their rows are already stored at the same or a
newer version, so the writer skips them (idempotent, and a replayed older change never
overwrites a newer row). An enriching job that replays reads the tables as they are *now*, which
may be newer than what its first pass read; the replayed mutations have the same ids and times,
so last-write-wins keeps whichever was stored first for an equal version (the effect of a
replay differs from the first pass only where a side row changed in between).

The stored layout is the embedded engine's (``(version, row)`` as msgpack under
``(SIDE_NS, table, key)``; a delete is a row of None), so ``hopcast deadletters replay`` and the
embedded engine read what Flink wrote, and the other way round.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from hopcast.durations import now_us
from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.base import KVStore
from hopcast.stream.deadletter import DeadLetter
from hopcast.stream.engines.embedded import SIDE_NS
from hopcast.stream.mapping import Mapping
from hopcast.stream.operators import Pipeline, SideTable
from hopcast.stream.record import Record

#: Where each side table's generation token and change log live: record = table name, item
#: ``b"g"`` = the token, items ``b"l" + token`` = what the write of that token changed
#: (``[writer time µs, keys or None]``). (``st.`` like :data:`SIDE_NS`: not graph data.)
GEN_NS = "st.sidegen"
_GEN_KEY = b"g"
_LOG = b"l"
_LOG_END = b"m"
#: How long a change-log entry is kept (writers prune older ones). A reader that has not read
#: the log for half of it drops its whole cache instead (an entry it missed may be gone), so
#: writers' clocks may be up to that far apart.
LOG_KEEP_S = 60.0
#: Keys one change-log entry lists at most; a bigger write (a snapshot) says "everything".
MAX_LOGGED_KEYS = 1_000

#: How often a reading task asks whether a table changed (one small read per table per task per
#: interval). 100 ms keeps enrichment within a tenth of a second of the store, well under the
#: writer's default 200 ms window, for ten reads a second per table and task.
DEFAULT_CHECK_MS = 100
#: Longest a cached row is used without reading it again, whatever the token says: bounds the
#: staleness of rows written by a writer that bumps no token (the embedded engine).
DEFAULT_MAX_AGE_MS = 30_000
#: Rows (and own changes) one task caches per table: reference data (a catalogue's hot titles),
#: about 100 MB at ~1 kB a row at most; past it the oldest entries are dropped first.
DEFAULT_MAX_ROWS = 100_000

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class SideRow(msgspec.Struct, frozen=True, array_like=True):
    """One changed side-table row on its way to the store (``row`` None: deleted)."""

    table: str
    key: str
    version: int | None
    row: dict[str, Any] | None


def _wins(new: int | None, old: int | None) -> bool:
    """Whether a change at version ``new`` replaces one at ``old`` (SideTable's rule: an older
    versioned change never replaces a newer one; unversioned changes always apply)."""
    return new is None or old is None or new >= old


def _read_row(kv: KVStore, table: str, key: str) -> tuple[int | None, dict[str, Any] | None] | None:
    item = kv.get(SIDE_NS, table.encode(), key.encode(), now_us())
    if item is None:
        return None
    version, row = _decode(item.value)
    return version, row


def _read_token(kv: KVStore, table: str) -> bytes | None:
    item = kv.get(GEN_NS, table.encode(), _GEN_KEY, now_us())
    return None if item is None else bytes(item.value)


def configure(kv: KVStore) -> None:
    """Declare the side-table namespaces on ``kv`` (idempotent)."""
    kv.configure_many({SIDE_NS: None, GEN_NS: None})


def side_extra(store: GraphStore, rows: Sequence[SideRow]) -> list[tuple[str, bytes, bytes, bytes]]:
    """The items that write ``rows`` (for :meth:`GraphStore.apply`'s ``extra``): per row the
    newest change of the batch, unless the store holds that row at the same version or a newer
    one; and for every table that changes a fresh generation token with its change-log entry
    (the keys written). Empty when nothing changes (a replay).

    Reads the stored versions: call it in the attempt that writes (a row has one writer task,
    its bucket's, so nothing changes it in between). Prunes change-log entries older than
    :data:`LOG_KEEP_S` on the way (a write of its own: harmless if the batch then fails).
    """
    if not rows:
        return []
    newest: dict[tuple[str, str], SideRow] = {}
    for r in rows:
        old = newest.get((r.table, r.key))
        if old is None or _wins(r.version, old.version):
            newest[(r.table, r.key)] = r
    configure(store.kv)
    out: list[tuple[str, bytes, bytes, bytes]] = []
    changed: dict[str, list[str]] = {}
    now = now_us()
    with store.kv.reader() as reader:
        for (table, key), r in newest.items():
            item = reader.get(SIDE_NS, table.encode(), key.encode(), now)
            if item is not None:
                version, row = _decode(item.value)
                if (version, row) == (r.version, r.row):
                    continue  # already stored: a replay
                if r.version is not None and version is not None and version > r.version:
                    continue  # a newer change is stored
            out.append((SIDE_NS, table.encode(), key.encode(), _encode((r.version, r.row))))
            changed.setdefault(table, []).append(key)
        stale = [
            (table, i.key)
            for table in changed
            for i in reader.scan(GEN_NS, table.encode(), now, _LOG, _LOG_END)
            if _decode(i.value)[0] < now - LOG_KEEP_S * 1e6
        ]
    if stale:
        with store.kv.writer() as w:
            for table, entry in stale:
                w.delete(GEN_NS, table.encode(), entry)
    for table, keys in sorted(changed.items()):
        token = now.to_bytes(8, "big") + os.urandom(8)  # never reused: readers compare tokens
        logged = keys if len(keys) <= MAX_LOGGED_KEYS else None
        out.append((GEN_NS, table.encode(), _GEN_KEY, token))
        out.append((GEN_NS, table.encode(), _LOG + token, _encode((now, logged))))
    return out


class StoreSideTable(SideTable):
    """A side table whose rows live in the graph store, read through a cache (see the module
    docstring). One per task and table; not thread-safe (a task's calls are sequential).

    Args:
        name: the table.
        kv: the graph store's KV.
        check_ms: how often a read asks whether the table changed.
        max_age_ms: longest a cached row is used without reading it again.
        max_rows: cache entries kept (and own changes remembered) at most.
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        name: str,
        kv: KVStore,
        *,
        check_ms: int = DEFAULT_CHECK_MS,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        max_rows: int = DEFAULT_MAX_ROWS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name)
        if check_ms < 0 or max_age_ms < 0 or max_rows < 1:
            raise ValueError("check_ms and max_age_ms must be >= 0, max_rows >= 1")
        self.kv = kv
        self.check_s = check_ms / 1000
        self.max_age_s = max_age_ms / 1000
        self.max_rows = max_rows
        self.clock = clock
        configure(kv)
        #: key → (read at, version, row); row None: absent or deleted
        self._cache: dict[str, tuple[float, int | None, dict[str, Any] | None]] = {}
        #: this task's own changes, which may not be stored yet: key → (made at, version, row)
        self._own: dict[str, tuple[float, int | None, dict[str, Any] | None]] = {}
        self._changes: list[SideRow] = []
        self._token: bytes | None = None
        self._checked = -math.inf
        #: change-log entries seen at the last read of the log, and when that was
        self._seen: set[bytes] = set()
        self._scanned = -math.inf
        #: store reads of rows and tokens (for tests and benchmarks)
        self.reads = 0

    # -- reading ------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        """The row of ``key``: this task's own newer change, else the stored row as of at most
        ``check_ms`` ago (read through the cache)."""
        now = self.clock()
        self._poll(now)
        entry = self._cache.get(key)
        if entry is None or now - entry[0] > self.max_age_s:
            self.reads += 1
            stored = _read_row(self.kv, self.name, key)
            version, row = stored if stored is not None else (None, None)
            if len(self._cache) >= self.max_rows and key not in self._cache:
                del self._cache[next(iter(self._cache))]
            entry = self._cache[key] = (now, version, row)
        own = self._own.get(key)
        if own is not None:
            if now - own[0] > self.max_age_s:
                del self._own[key]  # long written (or its job failed): the store has it
            elif _wins(own[1], entry[1]):
                return own[2]
        return entry[2]

    def _poll(self, now: float) -> None:
        """Every ``check_ms``: if the table's token changed, read its change log and forget the
        rows written since the last read (all rows if the log cannot tell)."""
        if now - self._checked < self.check_s:
            return
        self._checked = now
        self.reads += 1
        token = _read_token(self.kv, self.name)
        if token == self._token:
            return
        self._token = token  # read before the log: a write after it changes the token again
        self.reads += 1
        with self.kv.reader() as r:
            log = {
                bytes(i.key): _decode(i.value)[1]
                for i in r.scan(GEN_NS, self.name.encode(), now_us(), _LOG, _LOG_END)
            }
        new = [keys for entry, keys in log.items() if entry not in self._seen]
        if now - self._scanned > LOG_KEEP_S / 2 or any(keys is None for keys in new):
            self._cache.clear()
        else:
            for keys in new:
                for key in keys:
                    self._cache.pop(key, None)
        self._seen = set(log)
        self._scanned = now

    def __len__(self) -> int:
        return sum(1 for key in self._keys() if self.get(key) is not None)

    def _keys(self) -> list[str]:
        with self.kv.reader() as r:
            stored = [i.key.decode() for i in r.scan(SIDE_NS, self.name.encode(), now_us())]
        return list(dict.fromkeys([*stored, *self._own]))

    # -- changing -----------------------------------------------------------------------------

    def _set(self, key: str, row: dict[str, Any] | None, version: int | None) -> bool:
        """Record a change (no store read: the writer checks the stored version)."""
        current = self._own.get(key) or self._cache.get(key)
        if current is not None and not _wins(version, current[1]):
            return False
        if len(self._own) >= self.max_rows and key not in self._own:
            del self._own[next(iter(self._own))]
        self._own[key] = (self.clock(), version, row)
        self._changes.append(SideRow(self.name, key, version, row))
        return True

    def truncate(self, version: int | None = None) -> int:
        """Delete every stored row (and own change) that no newer change set."""
        live = [key for key in self._keys() if self.get(key) is not None]
        return sum(1 for key in live if self._set(key, None, version))

    def take_changes(self) -> list[SideRow]:
        """The changes made since the last call, in order."""
        out, self._changes = self._changes, []
        return out


Output = Mutation | DeadLetter | SideRow


class SideRowPipeline:
    """A mapping's :class:`Pipeline` whose outputs also carry the side-table rows each record
    changed (after the record's own outputs), for the writer to store."""

    def __init__(self, pipeline: Pipeline, tables: Iterable[StoreSideTable]) -> None:
        self.pipeline = pipeline
        self.tables = list(tables)

    def process(self, record: Record, now: int) -> list[Output]:
        """:meth:`Pipeline.process`, then the side rows the record changed. Never raises."""
        out: list[Output] = list(self.pipeline.process(record, now))
        for t in self.tables:
            out += t.take_changes()
        return out

    def process_many(self, records: Iterable[Record], now: int) -> list[Output]:
        """:meth:`process` for each record, outputs concatenated in record order."""
        out: list[Output] = []
        for record in records:
            out += self.process(record, now)
        return out


class StoreTablesMapping:
    """A mapping whose side tables (``changelog`` and ``enrich``) are the store's
    (:class:`StoreSideTable`): what the Flink engine runs.

    Args:
        mapping: the source's mapping.
        kv: the graph store's KV.
        options: passed to every :class:`StoreSideTable` (``check_ms``, ``max_age_ms``, …).
    """

    def __init__(self, mapping: Mapping, kv: KVStore, **options: Any) -> None:
        self.mapping = mapping
        self.kv = kv
        self.options = options

    @property
    def source(self) -> str:
        return self.mapping.source

    @property
    def tables(self) -> set[str]:
        return self.mapping.tables

    def pipeline(self, schema: Schema | None = None) -> SideRowPipeline:
        """The mapping's pipeline over store-backed side tables (one set per call: one task)."""
        tables = {
            name: StoreSideTable(name, self.kv, **self.options) for name in self.mapping.tables
        }
        shared: dict[str, SideTable] = dict(tables)
        return SideRowPipeline(self.mapping.pipeline(schema, tables=shared), tables.values())


__all__ = [
    "DEFAULT_CHECK_MS",
    "DEFAULT_MAX_AGE_MS",
    "DEFAULT_MAX_ROWS",
    "GEN_NS",
    "LOG_KEEP_S",
    "MAX_LOGGED_KEYS",
    "SideRow",
    "SideRowPipeline",
    "StoreSideTable",
    "StoreTablesMapping",
    "configure",
    "side_extra",
]

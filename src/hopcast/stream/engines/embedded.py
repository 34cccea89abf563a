"""The embedded engine: sources → pipelines → one atomic graph write per micro-batch.

::

    engine = EmbeddedEngine(graph, [(source, mapping.pipeline(tables=tables)), ...], deadletters)
    engine.install_signal_handlers()     # SIGTERM/SIGINT: finish the batch, flush, return
    engine.run()                         # until stopped (or run(until_idle=True) for a backlog)

One micro-batch, bounded by ``batch_records`` records and ``batch_ms`` milliseconds:

1. **poll** every source (round robin, without waiting, never more than the batch's remaining
   room) until the batch is full, a round finds nothing more (the sources are idle: the batch
   closes at once), ``linger_ms`` have passed since its first record, or ``batch_ms`` since it
   started; only while the batch is still empty does it wait, a few ms on one source at a time
   (so at low rates a record waits a few ms before it is processed, while a backlog is read in
   full batches at once, and a batch written while records arrive takes them all next); in
   :meth:`run`, while the previous batch's write runs, only ``batch_records`` and ``batch_ms``
   close the batch, so the records that arrive during that write are written right after it
   (not one write later);
2. **process** each record through its source's pipeline (pure; never raises): its mutations
   join the batch (through a :class:`~hopcast.stream.dedup.Coalescer` with ``coalesce=True``),
   a rejected record becomes one dead letter;
3. **write**: the batch's dead letters first, then ONE :meth:`GraphStore.apply` with the
   batch's mutations, the positions of every record of the batch (the last one per source and
   partition) as checkpoints, and the side-table rows the batch changed; a record the store
   refuses is isolated into a dead letter and the rest of the batch is written (see
   :meth:`EmbeddedEngine._write`);
4. **commit**: tell each source what is now durable (PostgreSQL confirms its LSN, the journal
   drops finished segments).

Why this is exactly-once in effect:

* Everything a batch's records produced is in the same write as their positions, so a
  checkpoint never runs ahead of a mutation from a record at or before it. With
  ``coalesce=True`` the coalescer is **flushed at the end of every batch** (its window is the
  batch) for the same reason; a window across batches would have to hold checkpoints back to
  its oldest entry, for little gain: :meth:`GraphStore.apply` already keeps only the newest
  write per edge of a batch.
* A crash before the graph write loses nothing: the positions were not stored, the records are
  read again after the restart and produce the same mutations (same ids, same times: writes
  are idempotent under last-write-wins).
* Dead letters are written before the graph write that stores their positions. A crash in
  between re-reads those records, and their dead letters are stored again under the same id
  (a digest of source and position), replacing the first: none lost, none duplicated.
* On start the engine reads the stored positions (:meth:`GraphStore.checkpoints`) and opens
  every source strictly after them.

* Side tables (enrichment state kept current from a changelog, e.g. the title catalogue) are
  persisted in namespace :data:`SIDE_NS` of the graph's KV, the rows a batch changed in the
  same atomic write as the batch's mutations and positions, and reloaded on start: after a
  crash, the replayed records see the tables exactly as they were when the records were first
  processed, never a newer row.
* A checkpoint of one of the engine's sources that cannot be decoded stops the engine with a
  :class:`~hopcast.errors.StorageError` naming it (``hopcast ingest positions`` shows them,
  ``hopcast ingest set-position`` repairs one): replaying that source from the start without
  a word would be wrong either way.

Durability: every batch is ONE LMDB transaction, fsync'd before it returns (``LmdbKV``'s
``sync=True``, the default), holding the batch's mutations and positions. A source is told a
batch is done (step 4: PostgreSQL confirms the LSN, the journal deletes segments, Kafka commits
offsets for monitoring) only after that write has returned, so whatever a crash or a power cut
can take from the store is still in the source, and a restart replays it. In :meth:`run` the
write of batch N runs in a writer thread while batch N+1 is polled and processed
(``overlap_writes``, on by default): the fsync no longer stalls the pipeline, and the
guarantees do not change — writes stay in order, one at a time, and the sources hear of batch N
only after its write returned. Skipping fsyncs (``sync=False``, or syncing on a timer) was not
taken: LMDB documents that a system crash under ``MDB_NOSYNC`` can corrupt the environment,
not only lose its tail, unless the file system keeps the order of writes.

Backpressure: one thread polls and processes, one writes; at most one batch is being written
while the next is read, so a slow store slows polling and at most two batches are in memory
(sources keep their own bounded buffers).

Checkpoint names are ``<source>/<partition>`` and the value is
:meth:`Position.to_bytes <hopcast.stream.record.Position.to_bytes>`.

Metrics (:class:`IngestMetrics`, Prometheus, its own registry unless one is given):
``hopcast_ingest_events_total{source}``, ``hopcast_ingest_mutations_total{source}`` (what the
pipelines produced), ``hopcast_ingest_mutations_written_total`` (after coalescing, handed to the
store), ``hopcast_ingest_mutations_applied_total`` /
``…_skipped_total`` (changed the graph / lost to a newer version),
``hopcast_ingest_dead_letters_total{source,reason}``, ``hopcast_ingest_expired_total{source}``
(mutations older than their type's retention on arrival, dropped), ``hopcast_ingest_lag{source}``
(sources that know it, in the source's unit), ``hopcast_ingest_freshness_seconds`` (histogram:
event time of a written mutation → committed and queryable; sampled, at most 256 per batch),
``hopcast_ingest_stage_seconds{stage}`` (poll, process, write, commit, per batch),
``hopcast_ingest_batch_records`` (histogram), ``hopcast_ingest_batches_total`` and
``hopcast_ingest_source_errors_total{source}``.

A source that fails (:class:`~hopcast.errors.SourceError`: its broker or database is away) does
not stop the engine: every source is closed and reopened at the stored positions after a
back-off, up to ``source_retries`` times in a row.

Logs go to the ``hopcast.ingest`` logger with structured ``extra`` fields (``event``, counts,
positions): start, stop, signals, sources opened (with their resume positions), dead letters
(counts by reason, the first ids) and write retries; per-batch lines at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hopcast.durations import now_us
from hopcast.errors import (
    OutOfBounds,
    SchemaViolation,
    SourceError,
    StorageError,
    StorageRefused,
)
from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import Schema
from hopcast.graph.store import ApplyResult, GraphStore
from hopcast.graphdb import Graph
from hopcast.kv.base import KVStore
from hopcast.stream.deadletter import DeadLetter, DeadLetterStore, Reason
from hopcast.stream.dedup import Coalescer
from hopcast.stream.operators import Pipeline, SideTable
from hopcast.stream.record import Position, Record
from hopcast.stream.sources.base import LagAware, Source

log = logging.getLogger("hopcast.ingest")

#: Default batch bounds: large enough to amortise one fsync'd LMDB commit, short enough that
#: freshness stays well under a second.
DEFAULT_BATCH_RECORDS = 5_000
DEFAULT_BATCH_MS = 200
DEFAULT_LINGER_MS = 20
#: Longest wait on one idle source before the engine looks at all of them again (a record on
#: any source waits at most about this long to be polled).
IDLE_WAIT_S = 0.005
#: Longest wait on one idle source while the previous batch's write runs: the batch closes
#: about this soon after that write returns (1 ms: a wake-up costs microseconds).
HOLD_WAIT_S = 0.001
#: Consecutive source failures survived (about four minutes of backing off) before giving up.
DEFAULT_SOURCE_RETRIES = 12
#: The first back-off after a source failure (doubling per failure in a row, up to the max).
SOURCE_BACKOFF_S = 0.5
SOURCE_BACKOFF_MAX_S = 30.0
#: Most freshness observations per batch (a histogram observation costs about a microsecond).
FRESHNESS_SAMPLES = 256
#: How often a failing store write is retried before the engine gives up (and stops unharmed:
#: nothing of the batch was stored, so a restart re-reads it).
WRITE_RETRIES = 5

#: Where side tables are persisted: record = table name, item key = row key.
SIDE_NS = "st.sidetables"

_FRESHNESS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0, 600.0, 3600.0, 86400.0
)  # fmt: skip
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class TrackedSideTable(SideTable):
    """A :class:`SideTable` that remembers the keys changed since :meth:`take_changes`."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._changed: set[str] = set()

    def _set(self, key: str, row: dict[str, Any] | None, version: int | None) -> bool:
        applied = super()._set(key, row, version)
        if applied:
            self._changed.add(key)
        return applied

    def take_changes(self) -> dict[str, tuple[int | None, dict[str, Any] | None]]:
        """The changed rows (``(version, row or None for a delete)``) since the last call."""
        out = {k: self._rows[k] for k in self._changed}
        self._changed.clear()
        return out

    def restore(self, key: str, version: int | None, row: dict[str, Any] | None) -> None:
        """Set a row as persisted (not a change)."""
        self._rows[key] = (version, row)


_side_encode = msgspec.msgpack.Encoder().encode
_side_decode = msgspec.msgpack.Decoder().decode


def load_side_tables(kv: KVStore, tables: Mapping[str, TrackedSideTable]) -> None:
    """Fill ``tables`` with their persisted rows."""
    if not tables:
        return
    kv.configure(SIDE_NS, None)
    with kv.reader() as r:
        for name, table in tables.items():
            for item in r.scan(SIDE_NS, name.encode(), 0):
                version, row = _side_decode(item.value)
                table.restore(item.key.decode(), version, row)


def side_items(tables: Mapping[str, TrackedSideTable]) -> list[tuple[str, bytes, bytes, bytes]]:
    """The rows changed since the last call, as items for :meth:`GraphStore.apply`'s
    ``extra``: ``(SIDE_NS, table, key, encoded (version, row))``."""
    return [
        (SIDE_NS, name.encode(), key.encode(), _side_encode(change))
        for name, table in tables.items()
        for key, change in table.take_changes().items()
    ]


class IngestMetrics:
    """The engine's Prometheus metrics (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "hopcast_ingest_events", "Records read from sources", ["source"], registry=r
        )
        self.mutations = Counter(
            "hopcast_ingest_mutations",
            "Mutations the pipelines produced (before coalescing)",
            ["source"],
            registry=r,
        )
        self.written = Counter(
            "hopcast_ingest_mutations_written",
            "Mutations handed to the store (after coalescing)",
            registry=r,
        )
        self.applied = Counter(
            "hopcast_ingest_mutations_applied", "Writes that changed the graph", registry=r
        )
        self.skipped = Counter(
            "hopcast_ingest_mutations_skipped",
            "Writes that lost to a newer or equal version",
            registry=r,
        )
        self.dead_letters = Counter(
            "hopcast_ingest_dead_letters",
            "Records rejected into the dead-letter store",
            ["source", "reason"],
            registry=r,
        )
        self.lag = Gauge(
            "hopcast_ingest_lag",
            "Data available upstream beyond what was read (in the source's unit)",
            ["source"],
            registry=r,
        )
        self.freshness = Histogram(
            "hopcast_ingest_freshness_seconds",
            "Event time of a written mutation to committed (sampled)",
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "hopcast_ingest_stage_seconds",
            "Time per batch in each stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.batch_records = Histogram(
            "hopcast_ingest_batch_records",
            "Records per batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 50000),
            registry=r,
        )
        self.batches = Counter("hopcast_ingest_batches", "Batches written", registry=r)
        self.source_errors = Counter(
            "hopcast_ingest_source_errors",
            "Source failures (every source reopened at the stored positions)",
            ["source"],
            registry=r,
        )
        self.expired = Counter(
            "hopcast_ingest_expired",
            "Mutations dropped because they were older than their type's retention on arrival",
            ["source"],
            registry=r,
        )


@dataclass
class EngineStats:
    """Running totals and recent samples, for progress displays and reports."""

    started: float = field(default_factory=time.monotonic)
    batches: int = 0
    events: int = 0
    mutations: int = 0
    applied: int = 0
    dead_letters: int = 0
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    #: Mutations dropped because they had expired before they arrived (see Pipeline).
    expired: int = 0
    lag: dict[str, int] = field(default_factory=dict)
    #: (monotonic time, events so far) after each batch, for rates over a recent window.
    history: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=256))
    #: Recent freshness samples (seconds).
    freshness: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def rate(self, window_s: float = 5.0) -> tuple[float, float]:
        """Events/s and mutations/s over the last ``window_s`` seconds."""
        if not self.history:
            return 0.0, 0.0
        now, events, mutations = self.history[-1]
        start = (self.started, 0, 0)
        for entry in self.history:
            if now - entry[0] <= window_s:
                break
            start = entry
        span = now - start[0]
        if span <= 0:
            return 0.0, 0.0
        return (events - start[1]) / span, (mutations - start[2]) / span

    def freshness_quantiles(self) -> tuple[float, float] | None:
        """p50 and p99 of the recent freshness samples (seconds), or None."""
        if not self.freshness:
            return None
        ordered = sorted(self.freshness)
        n = len(ordered)
        return ordered[n // 2], ordered[min(n - 1, (n * 99) // 100)]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one :meth:`EmbeddedEngine.step` did."""

    records: int
    mutations: int
    dead_letters: int
    positions: dict[str, dict[str, Position]]
    #: ``time.perf_counter()`` when the batch's write committed (its records queryable);
    #: 0.0 for a batch without records.
    committed_at: float = 0.0


@dataclass(slots=True)
class _Batch:
    """One micro-batch between its processing and its write (see :meth:`EmbeddedEngine.run`)."""

    batches: list[tuple[str, list[Record]]]
    records: int
    mutations: list[Mutation]
    #: per record: its mutations (kept to isolate a record the store rejects)
    per_record: list[tuple[Record, list[Mutation]]]
    letters: list[DeadLetter]
    positions: dict[str, dict[str, Position]]
    by_source: dict[str, int]
    #: the side-table rows the batch changed, taken when its processing ended
    side: list[tuple[str, bytes, bytes, bytes]]
    #: perf_counter at: poll start, poll end, processing end, write start, write end
    times: list[float]
    #: the clock (µs) and perf_counter when the write committed
    committed_us: int = 0
    committed_at: float = 0.0


def checkpoint_name(source: str, partition: str) -> str:
    """The checkpoint under which a source partition's position is stored."""
    return f"{source}/{partition}"


def stored_positions(store: GraphStore, sources: Sequence[str]) -> dict[str, dict[str, Position]]:
    """The stored positions of ``sources``, per source and partition.

    Checkpoints of other writers (names not ``<one of sources>/…``) are ignored.

    Raises:
        StorageError: a checkpoint named for one of ``sources`` cannot be decoded, or names
            another partition than its own name says.
    """
    out: dict[str, dict[str, Position]] = {s: {} for s in sources}
    for name, raw in store.checkpoints().items():
        source, sep, partition = name.partition("/")
        while sep and source not in out:  # source names may contain '/': try every split
            head, sep, partition = partition.partition("/")
            source = f"{source}/{head}"
        if not sep or source not in out:
            continue  # another writer's checkpoint
        try:
            pos = Position.from_bytes(raw)
        except ValueError as exc:
            raise StorageError(
                f"the stored position {name!r} of source {source!r} is corrupt ({exc}); "
                "refusing to read the source again from its start. See it with "
                "'hopcast ingest positions' and set it with 'hopcast ingest set-position'"
            ) from None
        if pos.partition != partition:
            raise StorageError(
                f"the stored position {name!r} of source {source!r} names partition "
                f"{pos.partition!r}; refusing to guess which one to resume"
            )
        out[source][partition] = pos
    return out


class EmbeddedEngine:
    """Runs sources through their pipelines into a graph with exactly-once effect.

    Args:
        graph: a :class:`~hopcast.graphdb.Graph` or its :class:`GraphStore`.
        sources: ``(source, pipeline)`` pairs; source names must be unique.
        deadletters: where rejected records go; None keeps them on the same KV as the graph.
        batch_records: most records per batch.
        batch_ms: longest time a batch collects records.
        linger_ms: longest time a batch keeps collecting after its first record while records
            keep arriving (a round of polls that finds nothing closes the batch sooner).
        coalesce: merge overlapping updates within a batch before writing (off by default:
            with the embedded LMDB store it costs more CPU than the writes it saves — on the
            demo mix 36% fewer writes with hot keys, yet 8% fewer events/s, because the store
            already keeps the newest write per edge of a batch; worth it in front of a store
            where every write is a network round trip).
        metrics: Prometheus metrics; a fresh registry if None.
        clock: now in µs (the pipelines' ``now``, freshness).
        tables: the pipelines' side tables to persist and reload (:func:`engine_for` passes
            them); tables that are not given live in memory only.
        source_retries: consecutive source failures (:class:`~hopcast.errors.SourceError`: a
            broker or database away) survived by closing every source, backing off (0.5 s doubling
            up to 30 s) and reopening them at the stored positions; one more is raised.
        overlap_writes: in :meth:`run`, write each batch in a writer thread while the next
            one is polled and processed (:meth:`step` is always sequential). Every write is
            still one fsync'd transaction, written in order, and the sources are told a batch
            is done only after its write returned: the durability is that of ``False``, and
            the time a commit waits for the disk is spent processing the next batch instead.
    """

    def __init__(
        self,
        graph: Graph | GraphStore,
        sources: Sequence[tuple[Source, Pipeline]],
        deadletters: DeadLetterStore | None = None,
        *,
        batch_records: int = DEFAULT_BATCH_RECORDS,
        batch_ms: float = DEFAULT_BATCH_MS,
        linger_ms: float = DEFAULT_LINGER_MS,
        coalesce: bool = False,
        metrics: IngestMetrics | None = None,
        clock: Callable[[], int] = now_us,
        tables: Mapping[str, TrackedSideTable] | None = None,
        source_retries: int = DEFAULT_SOURCE_RETRIES,
        overlap_writes: bool = True,
    ) -> None:
        if batch_records < 1:
            raise ValueError(f"batch_records must be >= 1, got {batch_records}")
        if batch_ms < 0:
            raise ValueError(f"batch_ms must be >= 0, got {batch_ms}")
        names = [s.name for s, _ in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.store = graph.store if isinstance(graph, Graph) else graph
        self.sources = list(sources)
        self.deadletters = (
            deadletters if deadletters is not None else DeadLetterStore(self.store.kv)
        )
        self.batch_records = batch_records
        self.batch_s = batch_ms / 1000
        self.linger_s = linger_ms / 1000
        self.coalesce = coalesce
        self.metrics = metrics if metrics is not None else IngestMetrics()
        self.clock = clock
        self.stats = EngineStats()
        self._stop = threading.Event()
        self._opened = False
        self._pipelines = {s.name: p for s, p in sources}
        #: the one schema every pipeline validates against (None if they differ, one does
        #: not validate, or a coalescer merges their outputs): passed to the store, which
        #: skips its own validation when it is the store's schema
        schemas = {id(p.schema): p.schema for p in self._pipelines.values()}
        self._validated_by: Schema | None = (
            next(iter(schemas.values())) if len(schemas) == 1 and not coalesce else None
        )
        self.tables = dict(tables or {})
        self.source_retries = source_retries
        self.overlap_writes = overlap_writes
        self._expired_seen: dict[str, int] = {}
        self._next_source = 0

    # -- life cycle -------------------------------------------------------------------------

    def open(self) -> dict[str, dict[str, Position]]:
        """Open every source after its stored positions; returns those positions."""
        resume = stored_positions(self.store, list(self._pipelines))
        load_side_tables(self.store.kv, self.tables)
        for source, _ in self.sources:
            source.open(resume[source.name])
            log.info(
                "source opened",
                extra={
                    "event": "open",
                    "source": source.name,
                    "resume": {p: pos.offset for p, pos in resume[source.name].items()},
                },
            )
        self._opened = True
        return resume

    def close(self) -> None:
        """Close every source (the graph stays the caller's)."""
        for source, _ in self.sources:
            try:
                source.close()
            except Exception:
                log.exception("closing source %s failed", source.name)
        self._opened = False

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (thread- and signal-safe)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the engine gracefully (main thread only)."""

        def handle(signum: int, frame: FrameType | None) -> None:
            log.info("signal received", extra={"event": "signal", "signal": signum})
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(
        self,
        *,
        until_idle: bool = False,
        max_batches: int | None = None,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> EngineStats:
        """Run batches until :meth:`stop` (or a signal), then close the sources.

        Args:
            until_idle: also return after the first batch that found no records (drains a
                backlog, as tests and one-off loads do).
            max_batches: also return after this many batches.
            on_batch: called after every batch (progress displays).
        """
        log.info("engine started", extra={"event": "start", "sources": list(self._pipelines)})
        writer = (
            ThreadPoolExecutor(1, thread_name_prefix="hopcast-ingest-write")
            if self.overlap_writes
            else None
        )
        #: the batch being written by ``writer`` (at most one: backpressure as before)
        inflight: tuple[_Batch, Future[None]] | None = None

        def finish_inflight(commit_sources: bool = True) -> BatchResult | None:
            nonlocal inflight
            if inflight is None:
                return None
            batch, written = inflight
            inflight = None
            written.result()  # a write that failed for good raises here
            return self._finish(batch, commit_sources)

        try:
            started = done = failures = 0

            def report(result: BatchResult | None) -> None:
                nonlocal done
                if result is not None:
                    done += 1
                    if on_batch is not None:
                        on_batch(result)

            while not self._stop.is_set():
                try:
                    if not self._opened:
                        self.open()
                    batch = self._collect(inflight[1] if inflight is not None else None)
                except SourceError as exc:
                    # What was read before the failure is written; its sources are told
                    # nothing (they are reopened at the stored positions next).
                    report(finish_inflight(commit_sources=False))
                    failures += 1
                    if failures > self.source_retries:
                        raise
                    self._source_failed(exc, failures)
                    continue
                failures = 0
                started += 1
                # 1. the previous batch's write has returned: tell its sources, report it
                report(finish_inflight())
                # 2. this batch: written in the writer thread while the next one is read
                if writer is None or not batch.records:
                    self._store(batch)
                    report(self._finish(batch))
                else:
                    inflight = (batch, writer.submit(self._store, batch))
                if until_idle and batch.records == 0:
                    break
                if max_batches is not None and started >= max_batches:
                    break
            report(finish_inflight())
        finally:
            if inflight is not None:  # leaving on an error: let the write end, tell no one
                with contextlib.suppress(BaseException):
                    inflight[1].result()
            if writer is not None:
                writer.shutdown(wait=True)
            self.close()
            log.info(
                "engine stopped",
                extra={
                    "event": "stop",
                    "events": self.stats.events,
                    "mutations": self.stats.mutations,
                    "dead_letters": self.stats.dead_letters,
                },
            )
        return self.stats

    def _source_failed(self, exc: SourceError, failures: int) -> None:
        """Close every source, wait, and let :meth:`run` reopen them at the stored positions.

        All of them: records already polled from the others in the failed batch were not
        written, and reopening is what makes them be read again.
        """
        name = getattr(exc, "hopcast_source", None)
        if name is not None:
            self.metrics.source_errors.labels(name).inc()
        delay = min(SOURCE_BACKOFF_S * 2 ** (failures - 1), SOURCE_BACKOFF_MAX_S)
        log.warning(
            "source failed; reopening the sources at the stored positions",
            extra={
                "event": "source_error",
                "source": name,
                "error": str(exc),
                "attempt": failures,
                "retry_in_s": delay,
            },
        )
        self.close()
        self._stop.wait(delay)

    # -- one batch --------------------------------------------------------------------------

    def step(self) -> BatchResult:
        """Poll, process, write and commit one micro-batch (see the module docstring)."""
        batch = self._collect()
        self._store(batch)
        return self._finish(batch)

    def _collect(self, hold: Future[None] | None = None) -> _Batch:
        """Steps 1 and 2 of a batch: poll the sources and process the records; ``hold`` (the
        previous batch's write) keeps the poll open while it runs (see :meth:`_poll`)."""
        t0 = time.perf_counter()
        batches = self._poll(hold)
        t1 = time.perf_counter()
        now = self.clock()
        coalescer = Coalescer(window_us=0, max_keys=1 << 62) if self.coalesce else None
        mutations: list[Mutation] = []
        per_record: list[tuple[Record, list[Mutation]]] = []
        letters: list[DeadLetter] = []
        positions: dict[str, dict[str, Position]] = {}
        by_source: dict[str, int] = {}
        for name, records in batches:
            process = self._pipelines[name].process
            last = positions.setdefault(name, {})
            for record in records:
                out = process(record, now)
                last[record.position.partition] = record.position
                if len(out) == 1 and isinstance(out[0], DeadLetter):
                    letters.append(out[0])
                    continue
                ms: list[Mutation] = out  # type: ignore[assignment]
                per_record.append((record, ms))
                by_source[name] = by_source.get(name, 0) + len(ms)
                if coalescer is not None:
                    for m in ms:
                        coalescer.add(m, now)
                else:
                    mutations.extend(ms)
        if coalescer is not None:
            mutations = coalescer.flush()
        n_records = sum(len(r) for _, r in batches)
        side = side_items(self.tables) if n_records else []
        t2 = time.perf_counter()
        return _Batch(
            batches,
            n_records,
            mutations,
            per_record,
            letters,
            positions,
            by_source,
            side,
            [t0, t1, t2, t2, t2],
        )

    def _store(self, batch: _Batch) -> None:
        """Step 3 of a batch: write it (in the writer thread when writes overlap)."""
        batch.times[3] = time.perf_counter()
        if batch.records:
            checkpoints = {
                checkpoint_name(src, p): pos.to_bytes()
                for src, parts in batch.positions.items()
                for p, pos in parts.items()
            }
            batch.mutations, more = self._write(
                batch.mutations, batch.per_record, batch.letters, checkpoints, batch.side
            )
            batch.letters += more
            batch.committed_us = self.clock()
            batch.committed_at = time.perf_counter()
        batch.times[4] = time.perf_counter()

    def _finish(self, batch: _Batch, commit_sources: bool = True) -> BatchResult:
        """Step 4 of a batch, after its write returned: tell the sources, account for it."""
        t = time.perf_counter()
        if batch.records and commit_sources:
            for source, _ in self.sources:
                if batch.positions.get(source.name):
                    source.commit(batch.positions[source.name])
        t0, t1, t2, t3, t4 = batch.times
        commit_s = time.perf_counter() - t
        self._account(batch, (t1 - t0, t2 - t1, t4 - t3, commit_s))
        return BatchResult(
            batch.records,
            len(batch.mutations),
            len(batch.letters),
            batch.positions,
            batch.committed_at,
        )

    def _poll(self, hold: Future[None] | None = None) -> list[tuple[str, list[Record]]]:
        """Up to ``batch_records`` records from the sources (see :class:`EmbeddedEngine`).

        Every round asks each source for what it has without waiting; only a round that found
        nothing, before the batch's first record, waits (``IDLE_WAIT_S`` on one source, the
        next in turn each time), so a record on any source is seen within about that long. A
        round that finds nothing more after the first records closes the batch: records do not
        wait for a linger when the sources are idle.

        While ``hold`` (the previous batch's write) runs, neither an empty round nor the
        linger closes the batch (only ``batch_records`` and ``batch_ms`` do): the records that
        arrive meanwhile join this batch, written as soon as that write is done, instead of
        the next one, written after this one (waits are then at most ``HOLD_WAIT_S``, so the
        batch closes about that soon after the write).
        """
        out: dict[str, list[Record]] = {}
        room = self.batch_records
        close_at = time.monotonic() + self.batch_s
        linger_at = close_at
        lingering = False
        n = len(self.sources)
        while room > 0 and not self._stop.is_set():
            got = False
            for i in range(n):
                source = self.sources[(self._next_source + i) % n][0]
                records = self._poll_source(source, room, 0.0)
                if records:
                    out.setdefault(source.name, []).extend(records)
                    room -= len(records)
                    got = True
                    if room <= 0:
                        break
            self._next_source = (self._next_source + 1) % max(n, 1)
            now = time.monotonic()
            if got and not lingering:  # the first records: the batch closes a linger from now
                lingering = True
                linger_at = now + self.linger_s
            if n == 0:
                self._stop.wait(max(0.0, close_at - now))
                break
            if now >= close_at or room <= 0:
                break
            held = hold is not None and not hold.done()
            if not held and ((lingering and not got) or now >= linger_at):
                break
            if not got:
                source = self.sources[self._next_source][0]
                wait = min(HOLD_WAIT_S if held else IDLE_WAIT_S, close_at - now)
                records = self._poll_source(source, room, max(0.0, wait))
                if records:
                    out.setdefault(source.name, []).extend(records)
                    room -= len(records)
                    if not lingering:
                        lingering = True
                        linger_at = time.monotonic() + self.linger_s
        return list(out.items())

    @staticmethod
    def _poll_source(source: Source, room: int, wait: float) -> list[Record]:
        try:
            return source.poll(room, wait)
        except SourceError as exc:
            exc.hopcast_source = source.name  # type: ignore[attr-defined]
            raise

    def _write(
        self,
        mutations: list[Mutation],
        per_record: list[tuple[Record, list[Mutation]]],
        letters: list[DeadLetter],
        checkpoints: dict[str, bytes],
        side: list[tuple[str, bytes, bytes, bytes]],
    ) -> tuple[list[Mutation], list[DeadLetter]]:
        """Store one batch; returns the mutations handed to the store and the records that the
        store refused, as dead letters.

        1. The batch's dead letters are stored (keyed by source position: a replay replaces
           them, never adds a second).
        2. ONE :meth:`GraphStore.apply` writes the batch's mutations, the positions of all its
           records and the side-table rows they changed: the side tables, the graph and the
           positions move together, so a replay after a crash sees the tables as they were.
        3. If the store refuses the batch (a mutation that does not fit its schema, an item the
           backend cannot store, or any unexpected error — a bug must not stop ingestion), the
           records are written in halves, recursively and without positions (idempotent writes:
           a crash here replays them harmlessly), until each refused record is alone and
           becomes a dead letter (``schema_violation`` or ``write_failed``); then (2) again with
           the positions and side rows and no mutations.
        4. A transient storage error (a backend away) is retried with backoff, up to
           ``WRITE_RETRIES`` times, then raised: nothing of the batch's positions is stored, so
           a restart reads it again.
        """
        for attempt in range(WRITE_RETRIES + 1):
            try:
                if letters:
                    self.deadletters.put(*letters)
                try:
                    result = self.store.apply(
                        mutations, checkpoints, validated_by=self._validated_by, extra=side
                    )
                    refused: list[DeadLetter] = []
                except StorageError as exc:
                    if not isinstance(exc, StorageRefused):
                        raise
                    mutations, refused, result = self._isolate(per_record, exc)
                except Exception as exc:  # SchemaViolation, or a bug: isolate the record
                    mutations, refused, result = self._isolate(per_record, exc)
                if refused:
                    self.deadletters.put(*refused)
                    self.store.apply([], checkpoints, validated=True, extra=side)
                self.stats.applied += result.applied
                self.metrics.applied.inc(result.applied)
                self.metrics.skipped.inc(result.skipped)
                return mutations, refused
            except StorageError as exc:
                if isinstance(exc, StorageRefused) or attempt == WRITE_RETRIES:
                    raise
                delay = min(0.1 * 2**attempt, 2.0)
                log.warning(
                    "store write failed, retrying",
                    extra={"event": "write_retry", "attempt": attempt + 1, "error": str(exc)},
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _isolate(
        self, per_record: list[tuple[Record, list[Mutation]]], first: Exception
    ) -> tuple[list[Mutation], list[DeadLetter], ApplyResult]:
        """Write ``per_record`` in halves until every refused record is alone (step 3 of
        :meth:`_write`); returns the mutations written, the refused records' dead letters and
        the combined result.

        Raises:
            StorageError: a transient one, met on the way.
            Exception: ``first``, if it is unexpected and an empty write fails as well (the
                store fails whatever it is given: no record is to blame).
        """
        if not isinstance(first, (SchemaViolation, StorageRefused)):
            # An unexpected error: a write of nothing shows whether the store fails whatever
            # it is given (then it is no record's fault: raise, and stop unharmed).
            try:
                self.store.apply([], validated=True)
            except Exception:
                raise first from None
        log.warning(
            "the store refused a batch; isolating the records it refuses",
            extra={"event": "write_isolate", "records": len(per_record), "error": str(first)},
        )
        written: list[Mutation] = []
        dead: list[DeadLetter] = []
        applied = skipped = 0
        todo: list[list[tuple[Record, list[Mutation]]]] = [per_record]
        first_try = True
        while todo:
            group = todo.pop()
            ms = [m for _, rms in group for m in rms]
            try:
                if first_try and len(group) > 1:
                    raise first  # the whole batch was just refused: split it at once
                result = self.store.apply(ms)
            except StorageError as exc:
                if not isinstance(exc, StorageRefused):
                    raise
                self._split(group, exc, todo, dead)
            except Exception as exc:
                self._split(group, exc, todo, dead)
            else:
                written.extend(ms)
                applied += result.applied
                skipped += result.skipped
            first_try = False
        return written, dead, ApplyResult(applied, skipped)

    def _split(
        self,
        group: list[tuple[Record, list[Mutation]]],
        exc: Exception,
        todo: list[list[tuple[Record, list[Mutation]]]],
        dead: list[DeadLetter],
    ) -> None:
        if len(group) > 1:
            mid = len(group) // 2
            todo.append(group[mid:])
            todo.append(group[:mid])  # popped first: records keep their order
            return
        record = group[0][0]
        if isinstance(exc, OutOfBounds):
            reason, message = Reason.OUT_OF_BOUNDS, f"the store's bounds reject it: {exc}"
        elif isinstance(exc, SchemaViolation):
            reason, message = Reason.SCHEMA_VIOLATION, f"the store's schema rejects it: {exc}"
        else:
            reason = Reason.WRITE_FAILED
            message = f"the store refused its writes: {type(exc).__name__}: {exc}"
        dead.append(
            DeadLetter(
                reason,
                message,
                record.value,
                record.source,
                record.position,
                self.clock(),
                "write",
                self._pipelines[record.source].mapping,
                record.key,
                record.event_time,
            )
        )

    def _account(self, batch: _Batch, stages: tuple[float, float, float, float]) -> None:
        """Metrics, stats and logs of a finished batch; ``stages`` are the seconds of its
        poll, process, write and commit."""
        batches, mutations, letters = batch.batches, batch.mutations, batch.letters
        by_source, positions = batch.by_source, batch.positions
        m, st = self.metrics, self.stats
        n_records = 0
        for name, records in batches:
            m.events.labels(name).inc(len(records))
            n_records += len(records)
        reasons: dict[str, int] = {}
        for letter in letters:
            m.dead_letters.labels(letter.source, letter.reason).inc()
            st.dead_by_reason[letter.reason] = st.dead_by_reason.get(letter.reason, 0) + 1
            reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        if letters:
            log.info(
                "dead letters written",
                extra={
                    "event": "dead_letters",
                    "count": len(letters),
                    "reasons": reasons,
                    "ids": [d.id for d in letters[:5]],
                },
            )
        for name, count in by_source.items():
            m.mutations.labels(name).inc(count)
        for name, pipeline in self._pipelines.items():
            expired = pipeline.expired - self._expired_seen.get(name, 0)
            if expired:
                self._expired_seen[name] = pipeline.expired
                m.expired.labels(name).inc(expired)
                st.expired += expired
        m.written.inc(len(mutations))
        for source, _ in self.sources:
            if isinstance(source, LagAware):
                lag = sum(source.lag().values())
                st.lag[source.name] = lag
                m.lag.labels(source.name).set(lag)
        st.events += n_records
        st.mutations += len(mutations)
        st.dead_letters += len(letters)
        if n_records:
            st.batches += 1
            m.batches.inc()
            m.batch_records.observe(n_records)
            for stage, seconds in zip(("poll", "process", "write", "commit"), stages, strict=True):
                m.stage.labels(stage).observe(seconds)
        if mutations:
            committed = batch.committed_us
            step = max(1, len(mutations) // FRESHNESS_SAMPLES)
            for i in range(0, len(mutations), step):
                ts = getattr(mutations[i], "ts", None)
                if isinstance(ts, int):
                    seconds = max(0, committed - ts) / 1e6
                    m.freshness.observe(seconds)
                    st.freshness.append(seconds)
        st.history.append((time.monotonic(), st.events, st.mutations))
        if n_records:
            log.debug(
                "batch written",
                extra={
                    "event": "batch",
                    "records": n_records,
                    "mutations": len(mutations),
                    "dead_letters": len(letters),
                    "poll_s": round(stages[0], 6),
                    "process_s": round(stages[1], 6),
                    "write_s": round(stages[2], 6),
                    "positions": {
                        s: {p: pos.offset for p, pos in parts.items()}
                        for s, parts in positions.items()
                    },
                },
            )


def engine_for(
    graph: Graph | GraphStore,
    sources: Sequence[Source],
    mappings: Mapping[str, Any],
    **options: Any,
) -> EmbeddedEngine:
    """An engine whose sources run through their mappings (by source name), sharing side
    tables, which the engine persists.

    Raises:
        ValueError: if a source has no mapping.
    """
    store = graph.store if isinstance(graph, Graph) else graph
    tracked: dict[str, TrackedSideTable] = {}
    pairs: list[tuple[Source, Pipeline]] = []
    for source in sources:
        mapping = mappings.get(source.name)
        if mapping is None:
            known = ", ".join(sorted(mappings)) or "none"
            raise ValueError(f"no mapping for source {source.name!r} (mapped: {known})")
        for name in mapping.tables:
            tracked.setdefault(name, TrackedSideTable(name))
        shared: dict[str, SideTable] = dict(tracked)
        pairs.append((source, mapping.pipeline(store.schema, tables=shared)))
    return EmbeddedEngine(store, pairs, tables=tracked, **options)

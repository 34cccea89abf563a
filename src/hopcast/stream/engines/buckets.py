"""What the Flink engine's Python stage does, without pyflink: one window of Kafka records (as
the job's SQL windows hand them over, column by column) through the source's pipeline and into
the graph store, with the group's running totals and Kafka position in the same write.

:mod:`hopcast.stream.engines.flink` wires this into a PyFlink job; keeping it here keeps that
module a thin adapter (principle 1) and lets the logic be tested without a JVM.

* :func:`kafka_record` builds the :class:`~hopcast.stream.record.Record` the embedded engine's
  Kafka source would build from the same message (partition ``"<topic>:<n>"``, Kafka's offset,
  the message timestamp as event time), so both engines feed the mapping the same values.
* A *group* is the slice ``(topic, partition, offset mod spread)`` of a source: the job's SQL
  window collects each group's records in offset order, and one task writes one group, so a
  group's writes follow its offsets.
* :func:`write_window` runs one window of one group through the pipeline (record by record,
  exactly the embedded engine's ``Pipeline.process``) and writes it with :class:`BucketWriter`
  in writes of at most ``max_batch`` records: dead letters first, then the coalesced mutations
  (dedup per node and edge identity) and the group's :class:`Totals` -- whose ``offset`` is the
  newest offset written -- in ONE :meth:`GraphStore.apply`, retrying storage errors with a
  doubling back-off (a store that restarts makes the job wait, not fail).

Why nothing is lost and nothing doubles: a window lives in Flink's state until it is written,
and Flink's checkpoints hold that state together with the Kafka offsets. A restore replays the
records after the checkpoint and re-fires the restored windows; a record at or below its group's
stored ``offset`` was written (with the totals, atomically) and is skipped, so the totals stay
exact, and anything written twice regardless is a no-op under last-write-wins (writes are
idempotent on ``(ts, id)``; dead letters are stored under a digest of their source position).
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import msgspec

from hopcast.durations import now_us
from hopcast.errors import SchemaViolation, StorageError, StorageRefused
from hopcast.graph.mutations import Mutation, NodeDelete, NodeUpsert, to_dict
from hopcast.graph.store import ApplyResult, GraphStore
from hopcast.stream.deadletter import DeadLetter, DeadLetterStore, Reason
from hopcast.stream.dedup import Coalescer
from hopcast.stream.engines.sidestore import SideRow, side_extra
from hopcast.stream.record import Position, Record
from hopcast.stream.sources.kafka import partition_name

log = logging.getLogger("hopcast.flink")

#: Checkpoint names under which each bucket stores its running totals (with its writes).
PROGRESS_PREFIX = "flink:"

#: The first wait after a failed store write; it doubles up to :data:`WRITE_BACKOFF_MAX_S`.
WRITE_BACKOFF_S = 0.2
WRITE_BACKOFF_MAX_S = 10.0
#: How long a window keeps retrying before the task fails (Flink then restarts the job from its
#: last checkpoint, which still holds the window).
DEFAULT_WRITE_PATIENCE_S = 600.0


def kafka_record(
    source: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    timestamp_ms: int | None,
    headers: dict[str, bytes | None] | None = None,
) -> Record:
    """The record of one Kafka message, as :class:`hopcast.stream.sources.kafka.KafkaSource`
    builds it (a tombstone's null value becomes ``b""``; headers in name order)."""
    return Record(
        source=source,
        position=Position(partition_name(topic, partition), offset),
        value=bytes(value) if value is not None else b"",
        key=bytes(key) if key is not None else None,
        event_time=timestamp_ms * 1000 if timestamp_ms is not None and timestamp_ms >= 0 else None,
        headers=tuple(
            (k, bytes(v) if v is not None else b"") for k, v in sorted((headers or {}).items())
        ),
    )


def identity(mutation: Mutation | SideRow) -> str:
    """The node or edge a mutation writes (what the coalescer files it under)."""
    if isinstance(mutation, SideRow):  # a side-table row: one writer per (table, key)
        return f"\x01{mutation.table}\x00{mutation.key}"
    if isinstance(mutation, NodeUpsert | NodeDelete):
        return mutation.node
    return f"{mutation.type}\x00{mutation.src}\x00{mutation.dst}"


def bucket_of(key: str, buckets: int) -> int:
    """A stable bucket in ``[0, buckets)`` (CRC-32: the same in every process and run)."""
    return zlib.crc32(key.encode()) % buckets


def route(
    outputs: Iterable[Mutation | DeadLetter | SideRow], buckets: int
) -> dict[int, list[Mutation | DeadLetter | SideRow]]:
    """Outputs by bucket, in order: a mutation's by the node or edge it writes (so every write
    to one node or edge has one writer), a side-table row's by its table and key, a dead
    letter's by its id."""
    out: dict[int, list[Mutation | DeadLetter | SideRow]] = {}
    for o in outputs:
        key = o.id if isinstance(o, DeadLetter) else identity(o)
        out.setdefault(bucket_of(key, buckets), []).append(o)
    return out


class Totals(msgspec.Struct, array_like=True):
    """A group's running totals, stored with its writes (checkpoint ``flink:<job>/<group>``).

    ``mutations`` arrived, ``written`` after coalescing, ``dead_letters`` stored, ``windows``
    (writes) done, ``last_write_us`` wall time of the last write, ``newest_ts_us`` the newest
    generation time written, ``offset`` the newest Kafka offset of the group written (-1:
    none; meaningless in a sum of groups).
    """

    mutations: int = 0
    written: int = 0
    dead_letters: int = 0
    windows: int = 0
    last_write_us: int = 0
    newest_ts_us: int = 0
    offset: int = -1


_totals_encode = msgspec.msgpack.Encoder().encode
_totals_decode = msgspec.msgpack.Decoder(Totals).decode


def progress_name(job: str, group: str | int) -> str:
    """The checkpoint name of a group's totals."""
    return f"{PROGRESS_PREFIX}{job}/{group}"


def group_name(topic: str, partition: int, sub: int) -> str:
    """A group's name: its Kafka partition (``topic:n``) and its slice of the offsets."""
    return f"{partition_name(topic, partition)}/{sub}"


def read_group_totals(store: GraphStore, job: str, group: str) -> Totals:
    """The stored totals of one group (empty if it has written nothing)."""
    raw = store.checkpoints().get(progress_name(job, group))
    if raw is None:
        return Totals()
    try:
        return _totals_decode(raw)
    except msgspec.DecodeError:
        return Totals()


def read_totals(store: GraphStore, job: str) -> Totals:
    """The totals of every bucket of ``job``, summed (the newest times are maxima)."""
    prefix = f"{PROGRESS_PREFIX}{job}/"
    out = Totals()
    for name, raw in store.checkpoints().items():
        if not name.startswith(prefix):
            continue
        try:
            t = _totals_decode(raw)
        except msgspec.DecodeError:
            continue
        out.mutations += t.mutations
        out.written += t.written
        out.dead_letters += t.dead_letters
        out.windows += t.windows
        out.last_write_us = max(out.last_write_us, t.last_write_us)
        out.newest_ts_us = max(out.newest_ts_us, t.newest_ts_us)
    return out


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What writing one window did."""

    mutations: int
    written: int
    applied: int
    dead_letters: int
    freshness_us: int | None  # write time minus the oldest generation time written
    attempts: int


class BucketWriter:
    """Writes windows of bucketed outputs into a graph store (see the module docstring).

    Args:
        store: the graph store (each Flink task opens its own).
        job: the job name, for the totals' checkpoint names.
        clock: now in µs.
        patience_s: how long one window keeps retrying a failing store before
            :class:`StorageError` is raised.
        sleep: how to wait between attempts (tests pass a fake).
        on_retry: called with the error before each back-off, while the store is failing
            (the Flink job counts ``hopcast_write_retries`` there, so the metric moves during
            an outage rather than after it).
    """

    def __init__(
        self,
        store: GraphStore,
        job: str,
        *,
        clock: Callable[[], int] = now_us,
        patience_s: float = DEFAULT_WRITE_PATIENCE_S,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[StorageError], None] | None = None,
    ) -> None:
        self.store = store
        self.job = job
        self.clock = clock
        self.patience_s = patience_s
        self.sleep = sleep
        self.on_retry = on_retry
        self.deadletters = DeadLetterStore(store.kv)

    def write(
        self,
        bucket: str | int,
        entries: Iterable[Mutation | DeadLetter | SideRow],
        totals: Totals,
        offset: int | None = None,
    ) -> WindowResult:
        """Coalesce ``entries`` and write them with ``totals`` (updated in place; its ``offset``
        becomes ``offset`` when given) in one write.

        Raises:
            StorageError: if the store kept failing for ``patience_s``.
        """
        coalescer = Coalescer(window_us=0, max_keys=1 << 62)
        letters: list[DeadLetter] = []
        side: list[SideRow] = []  # side-table rows: written with the window (sidestore)
        n_mutations = 0
        now = self.clock()
        for e in entries:
            if isinstance(e, DeadLetter):
                letters.append(e)
            elif isinstance(e, SideRow):
                side.append(e)
            else:
                n_mutations += 1
                coalescer.add(e, now)
        mutations = coalescer.flush()
        if not mutations and not letters and not side and offset is None:
            return WindowResult(0, 0, 0, 0, None, 0)
        deadline = time.monotonic() + self.patience_s
        delay = WRITE_BACKOFF_S
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._write_once(
                    bucket, mutations, letters, n_mutations, totals, attempts, offset, side
                )
            except StorageError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "store write failed, retrying",
                    extra={"event": "write_retry", "bucket": bucket, "attempt": attempts,
                           "delay_s": delay, "error": str(exc)},
                )  # fmt: skip
                if self.on_retry is not None:
                    self.on_retry(exc)
                self.sleep(delay)
                delay = min(delay * 2, WRITE_BACKOFF_MAX_S)

    def _write_once(
        self,
        bucket: str | int,
        mutations: list[Mutation],
        letters: list[DeadLetter],
        n_mutations: int,
        totals: Totals,
        attempts: int,
        offset: int | None,
        side: Sequence[SideRow] = (),
    ) -> WindowResult:
        more: list[DeadLetter] = []
        extra = side_extra(self.store, side)
        if mutations:
            valid, rejected = self.store.partition(mutations)
            if rejected:  # fits the mapping's schema, not the store's: dead-letter, never drop
                more = [self._rejected(m, reason) for m, reason in rejected]
                mutations = valid
        if letters or more:
            self.deadletters.put(*letters, *more)
        now = self.clock()
        new = Totals(
            totals.mutations + n_mutations,
            totals.written + len(mutations),
            totals.dead_letters + len(letters) + len(more),
            totals.windows + 1,
            now,
            max([totals.newest_ts_us, *(m.ts for m in mutations)]),
            totals.offset if offset is None else max(totals.offset, offset),
        )
        progress = {progress_name(self.job, bucket): _totals_encode(new)}
        try:
            result = self.store.apply(mutations, progress, extra=extra)
        except StorageError as exc:
            if not isinstance(exc, StorageRefused):
                raise
            result, mutations, refused = self._isolate(mutations, exc)
        except Exception as exc:  # a bug must not stop the job: isolate the mutation
            result, mutations, refused = self._isolate(mutations, exc)
        else:
            refused, extra = [], []  # the side rows went with the window
        if refused or extra:
            self.deadletters.put(*refused)
            more += refused
            new.written -= len(refused)
            new.dead_letters += len(refused)
            progress = {progress_name(self.job, bucket): _totals_encode(new)}
            self.store.apply([], progress, validated=True, extra=extra)
        for f in totals.__struct_fields__:
            setattr(totals, f, getattr(new, f))
        oldest = min((m.ts for m in mutations), default=None)
        return WindowResult(
            n_mutations,
            len(mutations),
            result.applied,
            len(letters) + len(more),
            None if oldest is None else max(0, now - oldest),
            attempts,
        )

    def _isolate(
        self, mutations: list[Mutation], first: Exception
    ) -> tuple[ApplyResult, list[Mutation], list[DeadLetter]]:
        """Write ``mutations`` in halves, without the totals, until each one the store refuses
        is alone and becomes a ``write_failed`` (or ``schema_violation``) dead letter; returns
        the combined result, the mutations written and the dead letters. An unexpected error
        that an empty write meets as well is the store's, not a mutation's: it is raised."""
        if not isinstance(first, (SchemaViolation, StorageRefused)):
            try:
                self.store.apply([], validated=True)
            except Exception:
                raise first from None
        written: list[Mutation] = []
        dead: list[DeadLetter] = []
        applied = skipped = 0
        todo = [mutations]
        error: Exception | None = first
        while todo:
            group = todo.pop()
            try:
                if error is not None and len(group) > 1:
                    raise error  # the whole window was just refused: split it at once
                result = self.store.apply(group)
            except StorageError as exc:
                if not isinstance(exc, StorageRefused):
                    raise
                error = exc
            except Exception as exc:
                error = exc
            else:
                written += group
                applied += result.applied
                skipped += result.skipped
                error = None
                continue
            if len(group) > 1:
                mid = len(group) // 2
                todo += [group[mid:], group[:mid]]
                continue
            reason = (
                Reason.SCHEMA_VIOLATION
                if isinstance(error, SchemaViolation)
                else Reason.WRITE_FAILED
            )
            dead.append(self._rejected(group[0], f"{type(error).__name__}: {error}", reason))
            error = None
        return ApplyResult(applied, skipped), written, dead

    def _rejected(
        self, mutation: Mutation, reason: str, code: str = Reason.SCHEMA_VIOLATION
    ) -> DeadLetter:
        doc = to_dict(mutation)
        try:
            payload = msgspec.json.encode(doc)
        except (TypeError, ValueError, OverflowError):  # what the store could not take either
            payload = repr(doc).encode()
        return DeadLetter(
            code,
            f"the store rejects a mutation: {reason}",
            payload,
            self.job,
            Position("write", zlib.crc32(payload)),
            self.clock(),
            "write",
        )


@dataclass(slots=True)
class WindowCounts:
    """What :func:`write_window` did with one window (the job's metrics)."""

    records: int = 0  # run through the pipeline
    skipped: int = 0  # at or below the group's stored offset: written before a restore
    mutations: int = 0
    dead_letters: int = 0  # of the pipeline (a write's own rejections are in ``written``'s)
    written: int = 0
    writes: int = 0
    freshness_us: int | None = None


#: A pipeline's per-record call: mutations, dead letters and changed side-table rows.
Process = Callable[[Record, int], list[Mutation | DeadLetter | SideRow]]


def map_window(
    process: Process,
    *,
    source: str,
    topic: str,
    partition: int,
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    timestamps_ms: Sequence[int | None],
    now: int,
) -> tuple[list[Mutation | DeadLetter | SideRow], int]:
    """Run one window's records (columns, as :func:`write_window` takes them) through
    ``process``, in offset order; the outputs and how many records became dead letters.

    Raises:
        ValueError: if the columns differ in length.
    """
    order = _order(offsets, keys, values, timestamps_ms)
    columns = (offsets, keys, values, timestamps_ms)
    return _process(process, order, source, topic, partition, columns, now)


def _process(
    process: Process,
    indexes: Iterable[int],
    source: str,
    topic: str,
    partition: int,
    columns: tuple[
        Sequence[int], Sequence[bytes | None], Sequence[bytes | None], Sequence[int | None]
    ],
    now: int,
) -> tuple[list[Mutation | DeadLetter | SideRow], int]:
    """The records at ``indexes`` of a window's columns through ``process``: their outputs,
    and how many records became dead letters."""
    offsets, keys, values, timestamps_ms = columns
    outputs: list[Mutation | DeadLetter | SideRow] = []
    letters = 0
    for i in indexes:
        record = kafka_record(
            source, topic, partition, offsets[i], keys[i], values[i], timestamps_ms[i]
        )
        out = process(record, now)
        if len(out) == 1 and isinstance(out[0], DeadLetter):
            letters += 1
        outputs += out
    return outputs, letters


def _order(
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    timestamps_ms: Sequence[int | None],
) -> Sequence[int]:
    """The indexes of a window's columns in offset order."""
    n = len(offsets)
    if not len(keys) == len(values) == len(timestamps_ms) == n:
        raise ValueError(
            f"a window's columns differ in length: {n} offsets, {len(keys)} keys, "
            f"{len(values)} values, {len(timestamps_ms)} timestamps"
        )
    if any(offsets[i] >= offsets[i + 1] for i in range(n - 1)):
        return sorted(range(n), key=offsets.__getitem__)
    return range(n)


def write_window(
    process: Process,
    writer: BucketWriter,
    *,
    source: str,
    topic: str,
    partition: int,
    group: str,
    totals: Totals,
    offsets: Sequence[int],
    keys: Sequence[bytes | None],
    values: Sequence[bytes | None],
    timestamps_ms: Sequence[int | None],
    max_batch: int,
    clock: Callable[[], int] = now_us,
) -> WindowCounts:
    """Run one window of one group (its records as columns, in offset order) through
    ``process`` (the pipeline's, called once per record as the embedded engine calls it) and
    write it in writes of at most ``max_batch`` records, each with the group's ``totals``
    (updated in place) and its newest offset. Records at or below ``totals.offset`` are skipped.

    Raises:
        ValueError: if the columns differ in length.
        StorageError: if the store kept failing for the writer's patience.
    """
    n = len(offsets)
    order = _order(offsets, keys, values, timestamps_ms)  # a group's writes follow its offsets
    todo = [i for i in order if offsets[i] > totals.offset]
    counts = WindowCounts(skipped=n - len(todo))
    letters = 0
    for start in range(0, len(todo), max_batch):
        chunk = todo[start : start + max_batch]
        columns = (offsets, keys, values, timestamps_ms)
        outputs, chunk_letters = _process(
            process, chunk, source, topic, partition, columns, clock()
        )
        letters += chunk_letters
        result = writer.write(group, outputs, totals, offsets[chunk[-1]])
        counts.records += len(chunk)
        counts.mutations += result.mutations
        counts.written += result.written
        counts.writes += 1
        if result.freshness_us is not None:
            counts.freshness_us = result.freshness_us
    counts.dead_letters = letters
    return counts

"""The Flink engine: one PyFlink job per source topic, running the operators the embedded engine
runs, with Flink's state, windows and checkpoints.

The only module that imports ``pyflink`` (``pip install 'hopcast[flink]'``); the logic it wires
lives in :mod:`hopcast.stream.engines.buckets`. Topology of the job ``hopcast-<source>``::

    Kafka topic(s) ── Flink's Kafka connector, in SQL: raw key and value, topic, partition,
    │                 offset, timestamp as ms (offsets kept in Flink's checkpoints)      JVM
    ▼  hash by group = (topic, partition, offset mod spread)
    window          a tumbling window (``window_ms``) per group: ARRAY_AGG of the group's
    │               offsets, keys, values and timestamps, in the order read; buffered in
    │               Flink's keyed state (checkpointed with the offsets)                  JVM
    ▼  one row per group and window (chained: no task boundary)
    pipeline-writer the source's mapping run record by record (decode, filter/project,    Python
    │  (p = 1)     changelog, map, validate: exactly the embedded engine's
    │               Pipeline.process); a bad record becomes ONE dead letter with its raw
    │               payload and Kafka position; then the window is coalesced (dedup per
    │               node/edge identity) and written: dead letters, then ONE idempotent
    │               last-write-wins batch (at most ``max_batch`` records' worth) with the
    │               group's running totals and newest offset
    ▼
    discard         (a sink is required; progress is read from the store)

With parallelism above 1 the mapping and the write are two steps, so that every write to one
node or edge has one writer (:class:`BucketWriterFunction` says why)::

    window ─▶ pipeline (Python: the mapping, as above; its outputs split by bucket of the node
              │          or edge they write, one element per bucket and window)
              ▼  key_by(bucket)
              bucket-writer (Python: coalesce, write with the bucket's totals in keyed state)
              ▼
              discard

Why this shape: every per-record step a built-in operator can do (reading Kafka, picking
columns, windowing, hashing groups to tasks) runs in the JVM, and Python is entered once per
group and window, not once per record; two Python stages with a ``key_by`` between them (the
first design) cost more at that task boundary than the work itself. Kafka headers are not
passed (converting the headers map costs more than a record's mapping, and no mapping reads
them): records reach the mapping with empty headers.

Time: a bounded run's windows use ingestion time (the clock as a record is read) with a
watermark, so the end of input closes and writes every window; an unbounded run's use
processing time, so a window closes on the clock even when no further record arrives.

Delivery: checkpoints (on by default, every ``checkpoint_interval_ms``; ``checkpoint_dir`` is
required with them, since buffered windows overflow the JobManager's 5 MB memory storage) hold
the Kafka offsets and the windows not written yet, so a crash replays from the last checkpoint;
a window is written while its task handles it, before any later checkpoint. At parallelism 1 a
group's records reach the task in offset order, and each write stores the group's newest
offset with its mutations, atomically; after a restore, records at or below that offset are
skipped. Above 1, each bucket's totals live in Flink's keyed state and are restored with the
offsets. Either way: at-least-once delivery, exactly-once *effect* and exact totals (whatever
is rewritten is a no-op under last-write-wins). Checkpoints are retained on cancellation and after a
crash; :meth:`FlinkJob.execute` restores from the newest complete one in ``checkpoint_dir`` (or
the path given), so stopping and starting a job resumes it. A store that goes away makes the
writer back off and retry (the job waits; backpressure stops the reading); only after
``patience_s`` does the task fail, and Flink restarts it from the last checkpoint
(exponential-delay restart strategy).

Execution: the Python function runs in Flink's *thread* mode (embedded CPython through pemja),
so all Python of one TaskManager shares one interpreter lock: parallelism within one
TaskManager adds no Python CPU, more TaskManager processes do (``deploy/flink.sh cluster-start
--taskmanagers N``). Locally the job runs on a MiniCluster in a JVM started by PyFlink;
``jobmanager="host:port"`` submits it to a running Flink cluster instead (its TaskManagers need
the same Python environment: ``pip install 'hopcast[flink]'``).

Side tables (``changelog`` and ``enrich``) live in the graph store
(:mod:`hopcast.stream.engines.sidestore`), because with one job per source and parallel tasks no
task's memory sees every change of a table that another source keeps. A changelog's changed rows
are outputs of their record: bucketed by ``(table, key)``, buffered in the window's state and
written in the window's one atomic store write, with a fresh generation token of the table (an
older version never replaces a newer row; a replayed row is not written again). ``enrich`` reads
rows through a per-task cache that reads a table's token at most every 100 ms and, when it
changed, the table's change log, forgetting the rows written since; a task sees its own changes
at once. So an enrichment sees a change about ``window_ms`` + 100 ms after the changelog job
processed it, with no order between jobs: an event may be enriched with the row as it was just
before, and a ``required`` enrichment of a row not stored yet is an ``enrichment_missing`` dead
letter (``hopcast deadletters replay`` re-runs it against the stored tables). The tables are
not in Flink's checkpoints: a restored job reads them as they are now (which may be newer than
its first pass read); the embedded engine persists them in the same layout, so both engines
share them.
Broadcast state (every enriching job also reading the changelog topics) was not chosen: each job
would re-read and re-map every changelog source and hold every table in every task's
checkpoints, where the store already holds each row once and a cached read costs 1.2-2.3x a
dict look-up (``bench/enrich.py``: 0.7-1.5 µs on LMDB and Redis, with the table changing every
second or every 50 ms; a cold read costs 12 µs on LMDB, 160 µs a round trip to Redis here).

Metrics: Flink's own (Kafka lag ``pendingRecords``, checkpoint durations, backpressure) plus, per
task, ``hopcast_records``, ``hopcast_records_skipped`` (replayed, already written),
``hopcast_mutations``, ``hopcast_dead_letters``, ``hopcast_mutations_written``,
``hopcast_windows`` (writes), ``hopcast_write_retries`` and the gauge ``hopcast_freshness_ms``
(write time minus the oldest generation time of the last write); ``metrics_port`` exposes them
all for Prometheus through the reporter PyFlink ships.
"""

from __future__ import annotations

import contextlib
import logging
import os
import site
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from hopcast.errors import ConfigError, SourceError, StorageError
from hopcast.graphdb import Graph
from hopcast.stream.engines.buckets import (
    BucketWriter,
    Totals,
    group_name,
    map_window,
    read_group_totals,
    read_totals,
    route,
    write_window,
)
from hopcast.stream.engines.sidestore import StoreTablesMapping
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping

try:
    from pyflink.common import Configuration, Types
    from pyflink.common.job_client import JobClient
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.base import Sink
    from pyflink.datastream.functions import (
        KeyedProcessFunction,
        ProcessFunction,
        RuntimeContext,
    )
    from pyflink.datastream.state import ValueStateDescriptor
    from pyflink.java_gateway import get_gateway
    from pyflink.table import StreamTableEnvironment
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError("the Flink engine needs PyFlink: pip install 'hopcast[flink]'") from exc

log = logging.getLogger("hopcast.flink")

#: The Flink release inside the pinned apache-flink wheel, and the Kafka connector built for it
#: (fetched from Maven Central by ``deploy/flink.sh fetch``, checked against its sha256).
FLINK_VERSION = "2.2.1"
CONNECTOR = "flink-sql-connector-kafka-5.0.0-2.2.jar"
#: Where ``deploy/flink.sh fetch`` puts the connector (``$HOPCAST_CACHE`` overrides the root).
JARS_ENV = "HOPCAST_FLINK_JARS"

DEFAULT_WINDOW_MS = 200
DEFAULT_MAX_BATCH = 5_000
DEFAULT_CHECKPOINT_MS = 2_000
#: Groups per Kafka partition (a group is ``offset mod spread`` of one partition): enough that a
#: partition's windows spread over the tasks of a job with more tasks than partitions, few
#: enough that a window of a group stays large (one Python call and one write per group and
#: window). Fixed, not derived from the parallelism: the groups name the stored progress, so
#: a job restarted with another parallelism still finds it.
DEFAULT_SPREAD = 4
#: Writer keys per task of a job with parallelism above 1 (see :class:`BucketWriterFunction`):
#: a few per task, so they spread over the tasks; each group's window is one write per bucket.
BUCKETS_PER_TASK = 2
#: How far the ingestion-time watermark of a bounded run trails the clock: records are stamped
#: with the wall clock as they are read, so only a clock stepping back could make one late.
WATERMARK_DELAY_MS = 1_000


def connector_jar() -> Path:
    """The Kafka connector jar ``deploy/flink.sh fetch`` provides.

    Raises:
        ConfigError: if it is not there, saying how to fetch it.
    """
    explicit = os.environ.get(JARS_ENV)
    if explicit:
        directory = Path(explicit)
    else:
        root = os.environ.get("HOPCAST_CACHE") or str(Path.home() / ".cache" / "hopcast")
        directory = Path(root) / f"flink-{FLINK_VERSION}"
    jar = directory / CONNECTOR
    if not jar.is_file():
        raise ConfigError(
            f"the Flink Kafka connector is missing ({jar}): fetch it with "
            "'deploy/flink.sh fetch' (or 'hopcast services fetch'), or point "
            f"${JARS_ENV} at a directory holding {CONNECTOR}"
        )
    return jar


@dataclass(frozen=True)
class KafkaInput:
    """The topics one job reads: ``kafka:BOOTSTRAP/TOPIC[,TOPIC…][#group=G&start=earliest]``
    (the embedded engine's spec; options with a dot go to the Kafka client as they are)."""

    bootstrap: str
    topics: tuple[str, ...]
    group: str | None = None
    start: str = "earliest"
    client: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, name: str, spec: str) -> KafkaInput:
        """Parse ``spec`` (with or without the ``kafka:`` prefix).

        Raises:
            ConfigError: for anything but a Kafka spec.
        """
        kind, sep, args = spec.partition(":")
        if sep and kind == "kafka":
            spec = args
        elif sep and kind in ("file", "journal", "postgres", "list"):
            raise ConfigError(
                f"source {name!r}: the Flink engine reads Kafka topics, not {kind!r} sources "
                "(put them on Kafka, or run them with 'hopcast ingest run')"
            )
        target, _, fragment = spec.partition("#")
        bootstrap, _, topics_text = target.partition("/")
        topics = tuple(t for t in topics_text.split(",") if t)
        if not bootstrap or not topics:
            raise ConfigError(
                f"source {name!r}: a Flink source is kafka:HOST:PORT/TOPIC[,TOPIC…], got {spec!r}"
            )
        options = dict(parse_qsl(fragment, keep_blank_values=True))
        client = tuple(sorted((k, v) for k, v in options.items() if "." in k))
        plain = {k: v for k, v in options.items() if "." not in k}
        unknown = set(plain) - {"group", "start", "commit"}
        if unknown:
            raise ConfigError(
                f"source {name!r}: unknown kafka option(s) {sorted(unknown)} "
                "(known: group, start, and Kafka client settings with a dot)"
            )
        start = plain.get("start", "earliest")
        if start not in ("earliest", "latest", "group"):
            raise ConfigError(f"source {name!r}: start={start!r} is not earliest, latest or group")
        return cls(bootstrap, topics, plain.get("group") or None, start, client)


@dataclass(frozen=True)
class JobSpec:
    """Everything a task needs (pickled into the job: plain values only)."""

    source: str
    store: str
    schema: str | None
    mappings: str
    spread: int
    buckets: int
    window_ms: int
    max_batch: int
    patience_s: float

    @property
    def job(self) -> str:
        return f"hopcast-{self.source}"


#: Graphs open in this process, shared by its tasks (an LMDB environment must be opened once per
#: process), with the number of tasks using each.
_GRAPHS: dict[tuple[str, str | None], list[Any]] = {}
_GRAPHS_LOCK = threading.Lock()


def _open_graph(spec: JobSpec) -> Graph:
    """The task's graph: one per store and schema in a process, closed with its last task."""
    key = (spec.store, spec.schema)
    with _GRAPHS_LOCK:
        entry = _GRAPHS.get(key)
        if entry is None:
            entry = _GRAPHS[key] = [Graph.open(spec.store, spec.schema), 0]
        entry[1] += 1
        graph: Graph = entry[0]
        return graph


def _release_graph(spec: JobSpec) -> None:
    key = (spec.store, spec.schema)
    with _GRAPHS_LOCK:
        entry = _GRAPHS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _GRAPHS[key]
            entry[0].close()


def load_mapping(spec: JobSpec, graph: Graph) -> StoreTablesMapping:
    """The source's mapping, its side tables kept in the graph store (see "Side tables").

    Raises:
        ConfigError: if there is none.
    """
    maps = Mapping.load_dir(spec.mappings, graph.schema)
    mapping = maps.get(spec.source)
    if mapping is None:
        known = ", ".join(sorted(maps)) or "none"
        raise ConfigError(
            f"no mapping for source {spec.source!r} in {spec.mappings} (mapped: {known})"
        )
    return StoreTablesMapping(mapping, graph.store.kv)


class WindowFunction(ProcessFunction):  # type: ignore[misc]
    """One window of one group (a row of the job's SQL) → the pipeline → the graph store."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def open(self, runtime_context: RuntimeContext) -> None:
        self.graph = _open_graph(self.spec)
        self._open = True
        self.pipeline = load_mapping(self.spec, self.graph).pipeline(self.graph.schema)
        self.writer = BucketWriter(
            self.graph.store,
            self.spec.job,
            patience_s=self.spec.patience_s,
            on_retry=lambda exc: self.retries.inc(),  # counted while the store is failing
        )
        #: each group's totals, read from the store on its first window (this task is the only
        #: writer of its groups; after a restore they are read again)
        self.totals: dict[str, Totals] = {}
        group = runtime_context.get_metrics_group()
        self.records = group.counter("hopcast_records")
        self.mutations = group.counter("hopcast_mutations")
        self.letters = group.counter("hopcast_dead_letters")
        self.written = group.counter("hopcast_mutations_written")
        self.windows = group.counter("hopcast_windows")
        self.retries = group.counter("hopcast_write_retries")
        self.skipped = group.counter("hopcast_records_skipped")
        self.last_freshness_ms = 0
        group.gauge("hopcast_freshness_ms", lambda: int(self.last_freshness_ms))

    def process_element(self, value: Any, ctx: Any) -> Iterator[int]:
        topic, partition, sub, offsets, keys, values, timestamps = value
        name = group_name(topic, partition, sub)
        totals = self.totals.get(name)
        if totals is None:
            totals = self.totals[name] = read_group_totals(self.graph.store, self.spec.job, name)
        counts = write_window(
            self.pipeline.process,
            self.writer,
            source=self.spec.source,
            topic=topic,
            partition=partition,
            group=name,
            totals=totals,
            offsets=offsets,
            keys=keys,
            values=values,
            timestamps_ms=timestamps,
            max_batch=self.spec.max_batch,
        )
        self.records.inc(counts.records)
        self.skipped.inc(counts.skipped)
        self.mutations.inc(counts.mutations)
        self.letters.inc(counts.dead_letters)
        self.written.inc(counts.written)
        self.windows.inc(counts.writes)
        if counts.freshness_us is not None:
            self.last_freshness_ms = counts.freshness_us // 1000
        yield counts.records

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            _release_graph(self.spec)


class PipelineStage(ProcessFunction):  # type: ignore[misc]
    """Parallelism above 1: one window of one group → the pipeline → its outputs by bucket of
    the node or edge they write, one element per bucket (see :class:`BucketWriterFunction`)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def open(self, runtime_context: RuntimeContext) -> None:
        self.graph = _open_graph(self.spec)
        self._open = True
        self.pipeline = load_mapping(self.spec, self.graph).pipeline(self.graph.schema)
        group = runtime_context.get_metrics_group()
        self.records = group.counter("hopcast_records")
        self.mutations = group.counter("hopcast_mutations")
        self.letters = group.counter("hopcast_dead_letters")
        from hopcast.durations import now_us

        self.now = now_us

    def process_element(self, value: Any, ctx: Any) -> Iterator[tuple[int, Any]]:
        topic, partition, _sub, offsets, keys, values, timestamps = value
        outputs, letters = map_window(
            self.pipeline.process,
            source=self.spec.source,
            topic=topic,
            partition=partition,
            offsets=offsets,
            keys=keys,
            values=values,
            timestamps_ms=timestamps,
            now=self.now(),
        )
        self.records.inc(len(offsets))
        self.letters.inc(letters)
        self.mutations.inc(len(outputs) - letters)
        yield from route(outputs, self.spec.buckets).items()

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            _release_graph(self.spec)


class BucketWriterFunction(KeyedProcessFunction):  # type: ignore[misc]
    """Parallelism above 1: writes each bucket's share of a window as it arrives (coalesced,
    with the bucket's running totals, kept in keyed state). Every write to one node or edge has
    this one writer: the store's last-write-wins is checked per item on the server, but a
    write's index entries are derived from what its writer read, so two processes writing one
    edge at once could leave a stale index entry."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def open(self, runtime_context: RuntimeContext) -> None:
        self.graph = _open_graph(self.spec)
        self._open = True
        self.writer = BucketWriter(
            self.graph.store,
            self.spec.job,
            patience_s=self.spec.patience_s,
            on_retry=lambda exc: self.retries.inc(),  # counted while the store is failing
        )
        self.totals = runtime_context.get_state(
            ValueStateDescriptor("totals", Types.PICKLED_BYTE_ARRAY())
        )
        group = runtime_context.get_metrics_group()
        self.written = group.counter("hopcast_mutations_written")
        self.windows = group.counter("hopcast_windows")
        self.retries = group.counter("hopcast_write_retries")
        self.last_freshness_ms = 0
        group.gauge("hopcast_freshness_ms", lambda: int(self.last_freshness_ms))

    def process_element(self, value: Any, ctx: Any) -> Iterator[int]:
        bucket, entries = value
        totals = self.totals.value() or Totals()
        result = self.writer.write(bucket, entries, totals)
        self.totals.update(totals)
        self.written.inc(result.written)
        self.windows.inc()
        if result.freshness_us is not None:
            self.last_freshness_ms = result.freshness_us // 1000
        yield result.written

    def close(self) -> None:
        if getattr(self, "_open", False):
            self._open = False
            _release_graph(self.spec)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def kafka_ddl(table: str, kafka: KafkaInput, *, group: str, bounded: bool) -> str:
    """The CREATE TABLE of the job's Kafka input: raw key and value, the message's position and
    timestamp, and the time its windows use: for a bounded run, the wall clock as a record is
    read (``rt``, with a watermark, so the end of input closes every window); otherwise
    processing time (``pt``: windows close on the clock even when no record comes)."""
    options = {
        "connector": "kafka",
        "topic": ";".join(kafka.topics),
        "properties.bootstrap.servers": kafka.bootstrap,
        "properties.group.id": kafka.group or group,
        "scan.startup.mode": {
            "earliest": "earliest-offset",
            "latest": "latest-offset",
            "group": "group-offsets",
        }[kafka.start],
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        # partitions created while the job runs are picked up (checked every 30 s)
        "scan.topic-partition-discovery.interval": "30 s",
    }
    if kafka.start == "group":
        options["properties.auto.offset.reset"] = "earliest"
    if bounded:
        options["scan.bounded.mode"] = "latest-offset"
    for k, v in kafka.client:
        options[f"properties.{k}"] = v
    with_ = ",\n  ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())
    if bounded:
        clock = (
            "  `rt` AS CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(3)),\n"
            f"  WATERMARK FOR `rt` AS `rt` - INTERVAL '{WATERMARK_DELAY_MS / 1000:g}' SECOND\n"
        )
    else:
        clock = "  `pt` AS PROCTIME()\n"
    return (
        f"CREATE TABLE `{table}` (\n"
        "  `k` BYTES,\n"
        "  `v` BYTES,\n"
        "  `tp` STRING METADATA FROM 'topic' VIRTUAL,\n"
        "  `part` INT METADATA FROM 'partition' VIRTUAL,\n"
        "  `off` BIGINT METADATA FROM 'offset' VIRTUAL,\n"
        "  `ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,\n"
        f"{clock}"
        f") WITH (\n  {with_}\n)"
    )


def window_query(table: str, *, bounded: bool, window_ms: int, spread: int) -> str:
    """The job's windows: per tumbling window and group ``(topic, partition, offset mod
    spread)``, the group's records as columns (offsets, keys, values, timestamps in ms), in the
    order they were read. All per-record work up to here runs in the JVM."""
    column = "rt" if bounded else "pt"
    return (
        "SELECT tp, part, MOD(off, {spread}) AS sub, ARRAY_AGG(off) AS offs, ARRAY_AGG(k) AS ks, "
        "ARRAY_AGG(v) AS vs, "
        "ARRAY_AGG(EXTRACT(EPOCH FROM ts) * 1000 + MOD(EXTRACT(MILLISECOND FROM ts), 1000)) "
        "AS tss\n"
        f"FROM TABLE(TUMBLE(TABLE `{table}`, DESCRIPTOR(`{column}`), "
        f"INTERVAL '{window_ms / 1000:.3f}' SECOND))\n"
        "GROUP BY window_start, window_end, tp, part, MOD(off, {spread})"
    ).replace("{spread}", str(spread))


def python_path() -> str:
    """What the embedded interpreter (thread mode) needs on ``PYTHONPATH``: hopcast's own
    directory and this interpreter's site-packages (pemja and the dependencies live there; a
    ``PYTHONPATH`` entry does not read ``.pth`` files, so an editable install needs both)."""
    import hopcast

    entries = [str(Path(hopcast.__file__).resolve().parent.parent)]
    entries += [p for p in site.getsitepackages() if Path(p).is_dir()]
    user = site.getusersitepackages()
    if isinstance(user, str) and Path(user).is_dir():
        entries.append(user)
    current = os.environ.get("PYTHONPATH")
    if current:
        entries += [p for p in current.split(os.pathsep) if p]
    seen: list[str] = []
    for e in entries:
        if e not in seen:
            seen.append(e)
    return os.pathsep.join(seen)


def _reporter_on_classpath() -> None:
    """Put the Prometheus reporter PyFlink ships (under ``plugins/``) on the local JVM's class
    path: a MiniCluster finds reporters there, not in the plugins directory. PyFlink adds
    ``HADOOP_CLASSPATH`` to the class path of the JVM it starts."""
    import pyflink

    jars = sorted(Path(pyflink.__file__).parent.glob("plugins/metrics-prometheus/*.jar"))
    if not jars:
        raise ConfigError("this PyFlink has no Prometheus reporter (plugins/metrics-prometheus)")
    current = [p for p in os.environ.get("HADOOP_CLASSPATH", "").split(os.pathsep) if p]
    if str(jars[0]) not in current:
        os.environ["HADOOP_CLASSPATH"] = os.pathsep.join([*current, str(jars[0])])


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint or savepoint under ``directory`` (one with ``_metadata``),
    or None."""
    if not directory.is_dir():
        return None
    found = [m.parent for m in directory.glob("*/chk-*/_metadata")]
    found += [m.parent for m in directory.glob("savepoint-*/_metadata")]
    if not found:
        return None
    return max(found, key=lambda p: (p / "_metadata").stat().st_mtime)


@dataclass
class FlinkJob:
    """One source's job. See the module docstring.

    Args:
        source: the source name (its mapping is the file whose ``source:`` is this name).
        kafka: the topics to read.
        store: the graph store URL or path every task opens (``redis://…``, an LMDB directory).
        schema: the graph schema file, if the store does not hold one.
        mappings: the mapping directory (default: the demo company's).
        parallelism: tasks per operator (Kafka partitions are spread over them).
        window_ms: how long a window collects a group's records before they are written.
        max_batch: at parallelism 1, the most records of a window in one store write (a
            larger window is written in several); above 1 each bucket's share of a window is
            one write.
        spread: groups per Kafka partition (see :data:`DEFAULT_SPREAD`).
        checkpoint_dir: where checkpoints are kept (and restored from).
        checkpoint_interval_ms: how often (0 turns checkpointing off).
        restore: ``"latest"`` (the newest checkpoint in ``checkpoint_dir``, if any), a
            checkpoint/savepoint path, or None for a fresh start.
        bounded: stop at the offsets that are the latest when the job starts.
        jobmanager: ``host:port`` of a Flink cluster's REST endpoint; None runs a local
            MiniCluster.
        metrics_port: serve Flink's and hopcast's metrics for Prometheus on this port.
        patience_s: how long a window retries a failing store before its task fails.
    """

    source: str
    kafka: KafkaInput
    store: str
    schema: str | None = None
    mappings: Path = DEMO_MAPPINGS
    parallelism: int = 1
    window_ms: int = DEFAULT_WINDOW_MS
    max_batch: int = DEFAULT_MAX_BATCH
    spread: int = DEFAULT_SPREAD
    checkpoint_dir: Path | None = None
    checkpoint_interval_ms: int = DEFAULT_CHECKPOINT_MS
    restore: str | None = "latest"
    bounded: bool = False
    jobmanager: str | None = None
    metrics_port: int | None = None
    patience_s: float = 600.0
    extra_config: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parallelism < 1:
            raise ConfigError(f"parallelism must be >= 1, got {self.parallelism}")
        if self.window_ms < 1:
            raise ConfigError(f"window_ms must be >= 1, got {self.window_ms}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.spread < 1:
            raise ConfigError(f"spread must be >= 1, got {self.spread}")
        if self.jobmanager is not None:
            host, sep, port = self.jobmanager.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"jobmanager must be host:port, got {self.jobmanager!r}")

    @property
    def name(self) -> str:
        return f"hopcast-{self.source}"

    def spec(self) -> JobSpec:
        return JobSpec(
            source=self.source,
            store=self.store,
            schema=self.schema,
            mappings=str(self.mappings),
            spread=self.spread,
            buckets=BUCKETS_PER_TASK * self.parallelism,
            window_ms=self.window_ms,
            max_batch=self.max_batch,
            patience_s=self.patience_s,
        )

    def check(self) -> None:
        """Fail fast, in this process, on what every task would fail on: the store, the schema
        and the mapping.

        Raises:
            HopcastError: what is wrong.
        """
        spec = self.spec()
        with Graph.open(spec.store, spec.schema) as graph:
            load_mapping(spec, graph)

    def restore_path(self) -> str | None:
        """The checkpoint this run starts from (see ``restore``)."""
        if self.restore is None:
            return None
        if self.restore != "latest":
            path = Path(self.restore.removeprefix("file://"))
            if not (path / "_metadata").is_file():
                raise ConfigError(f"no checkpoint at {self.restore} (no _metadata in it)")
            return str(path)
        if self.checkpoint_dir is None:
            return None
        found = latest_checkpoint(self.checkpoint_dir)
        return None if found is None else str(found)

    def jars(self) -> list[Path]:
        """The jars shipped with the job: the Kafka connector, and for a cluster also PyFlink's
        own runtime (``flink-python``; ``flink run`` adds it, a standalone cluster lacks it)."""
        jars = [connector_jar()]
        if self.jobmanager is not None:
            import pyflink

            found = sorted(Path(pyflink.__file__).parent.glob("opt/flink-python*.jar"))
            if not found:
                raise ConfigError("this PyFlink has no opt/flink-python jar to ship to a cluster")
            jars.append(found[0])
        return jars

    def configuration(self, restore: str | None) -> Configuration:
        """The job's Flink settings.

        Raises:
            ConfigError: for checkpoints without a ``checkpoint_dir`` (windows held in state
                overflow the JobManager's 5 MB memory storage).
        """
        if self.checkpoint_interval_ms > 0 and self.checkpoint_dir is None:
            raise ConfigError(
                "checkpoints need a checkpoint_dir (windows held in state overflow the "
                "JobManager's 5 MB memory storage)"
            )
        conf = Configuration()
        settings = {
            "pipeline.name": self.name,
            "pipeline.jars": ";".join(j.resolve().as_uri() for j in self.jars()),
            "python.execution-mode": "thread",
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            "parallelism.default": str(self.parallelism),
            "restart-strategy.type": "exponential-delay",
            "restart-strategy.exponential-delay.initial-backoff": "1 s",
            "restart-strategy.exponential-delay.max-backoff": "30 s",
        }
        if self.checkpoint_interval_ms > 0:
            settings["execution.checkpointing.interval"] = f"{self.checkpoint_interval_ms} ms"
            settings["execution.checkpointing.mode"] = "EXACTLY_ONCE"
            settings["execution.checkpointing.externalized-checkpoint-retention"] = (
                "RETAIN_ON_CANCELLATION"
            )
            settings["execution.checkpointing.num-retained"] = "2"
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            settings["execution.checkpointing.dir"] = self.checkpoint_dir.resolve().as_uri()
            settings["execution.checkpointing.savepoint-dir"] = (
                self.checkpoint_dir.resolve().as_uri()
            )
        if restore is not None:
            settings["execution.state-recovery.path"] = Path(restore).resolve().as_uri()
        if self.jobmanager is not None:
            host, _, port = self.jobmanager.rpartition(":")
            settings["execution.target"] = "remote"
            settings["rest.address"] = host
            settings["rest.port"] = port
        if self.metrics_port is not None:
            settings["metrics.reporter.prom.factory.class"] = (
                "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
            )
            settings["metrics.reporter.prom.port"] = str(self.metrics_port)
        settings.update(self.extra_config)
        for k, v in settings.items():
            conf.set_string(k, v)
        return conf

    def build(self, restore: str | None) -> StreamExecutionEnvironment:
        """The job's environment with its topology (see the module docstring)."""
        os.environ["PYTHONPATH"] = python_path()  # read when PyFlink starts its JVM
        if self.metrics_port is not None:
            _reporter_on_classpath()
        conf = self.configuration(restore)
        if self.jobmanager is None:
            env = StreamExecutionEnvironment.get_execution_environment(conf)
        else:  # getExecutionEnvironment() is always local outside the flink CLI
            host, _, port = self.jobmanager.rpartition(":")
            jvm = get_gateway().jvm
            jars = get_gateway().new_array(jvm.String, 0)
            env = StreamExecutionEnvironment(
                jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
                .createRemoteEnvironment(host, int(port), conf._j_configuration, jars)
            )  # fmt: skip
        env.set_parallelism(self.parallelism)
        t_env = StreamTableEnvironment.create(env)
        table = f"kafka_{self.source}".replace("-", "_")
        t_env.execute_sql(kafka_ddl(table, self.kafka, group=self.name, bounded=self.bounded))
        spec = self.spec()
        windows = t_env.to_data_stream(
            t_env.sql_query(
                window_query(
                    table, bounded=self.bounded, window_ms=self.window_ms, spread=spec.spread
                )
            )
        )
        if self.parallelism == 1:  # one task writes everything: map and write in one step
            written = (
                windows.process(WindowFunction(spec), output_type=Types.INT())
                .name("pipeline-writer")
                .uid("hopcast-pipeline-writer")
            )
        else:  # one writer per node and edge: a key_by, crossed once per window and bucket
            entry = Types.TUPLE([Types.INT(), Types.PICKLED_BYTE_ARRAY()])
            written = (
                windows.process(PipelineStage(spec), output_type=entry)
                .name("pipeline")
                .uid("hopcast-pipeline")
                .key_by(lambda e: e[0], key_type=Types.INT())
                .process(BucketWriterFunction(spec), output_type=Types.INT())
                .name("bucket-writer")
                .uid("hopcast-bucket-writer")
            )
        discard = get_gateway().jvm.org.apache.flink.streaming.api.functions.sink.v2
        written.sink_to(Sink(discard.DiscardingSink())).name("discard").uid("hopcast-discard")
        return env

    def execute(
        self,
        *,
        on_progress: Callable[[str, Totals], None] | None = None,
        progress_every_s: float = 1.0,
        stop: threading.Event | None = None,
    ) -> str:
        """Run the job until it finishes (bounded) or ``stop`` is set (then it is stopped with a
        savepoint in ``checkpoint_dir``, or cancelled if there is none). Returns the final
        status (``FINISHED``, ``CANCELED``, …).

        Raises:
            HopcastError: on a bad configuration or store, before anything runs;
            SourceError: if the job failed.
        """
        self.check()
        restore = self.restore_path()
        if restore:
            log.info("restoring", extra={"event": "restore", "path": restore})
        env = self.build(restore)
        client: JobClient = env.execute_async(self.name)
        job_id = str(client.get_job_id())
        log.info("submitted", extra={"event": "submitted", "job": job_id, "job_name": self.name})
        stop = stop or threading.Event()
        spec = self.spec()
        graph = Graph.open(spec.store, spec.schema) if on_progress is not None else None
        try:
            outcome = client.get_job_execution_result()
            status = "RUNNING"
            while not outcome.done():
                if stop.is_set():
                    status = self._stop(client)
                    break
                try:
                    status = client.get_job_status().result().name
                except Exception:  # the local cluster shuts down as the job ends
                    if outcome.done():
                        break
                    raise
                if graph is not None and on_progress is not None:
                    try:
                        on_progress(status, read_totals(graph.store, spec.job))
                    except StorageError as exc:  # the store is away: the job waits, so do we
                        log.warning("cannot read progress", extra={"error": str(exc)})
                stop.wait(progress_every_s)
            try:
                outcome.result()
                status = "FINISHED" if status != "CANCELED" else status
            except Exception as exc:  # py4j errors carry Flink's cause
                if status != "CANCELED":
                    raise SourceError(f"Flink job {self.name} failed: {_cause(exc)}") from exc
            if graph is not None and on_progress is not None:
                with contextlib.suppress(StorageError):
                    on_progress(status, read_totals(graph.store, spec.job))
            return status
        finally:
            if graph is not None:
                graph.close()

    def _stop(self, client: JobClient) -> str:
        if self.checkpoint_dir is not None and self.checkpoint_interval_ms > 0:
            try:
                path = _stop_with_savepoint(client, self.checkpoint_dir.resolve().as_uri())
                log.info("stopped with a savepoint", extra={"event": "stopped", "path": path})
                return "FINISHED"
            except Exception as exc:  # fall back to a cancel
                log.warning("savepoint failed, cancelling", extra={"error": _cause(exc)})
        client.cancel().result()
        return "CANCELED"


def _stop_with_savepoint(client: JobClient, directory: str) -> str:
    """Stop the job with a (canonical) savepoint in ``directory``; its path. PyFlink 2.2's
    ``JobClient.stop_with_savepoint`` calls a Java method that no longer exists (Flink 2 added
    the savepoint format argument), so this calls the Java client itself."""
    from pyflink.common.completable_future import CompletableFuture

    jvm = get_gateway().jvm
    canonical = jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    j_client = client._j_job_client
    return str(
        CompletableFuture(j_client.stopWithSavepoint(False, directory, canonical), str).result()
    )


def _cause(exc: BaseException) -> str:
    text = str(exc)
    causes = [line for line in text.splitlines() if "Caused by:" in line]
    return causes[-1].strip() if causes else text.splitlines()[0] if text else repr(exc)


__all__ = [
    "CONNECTOR",
    "FLINK_VERSION",
    "FlinkJob",
    "JobSpec",
    "KafkaInput",
    "connector_jar",
    "kafka_ddl",
    "latest_checkpoint",
]

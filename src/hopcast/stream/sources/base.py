"""The source interface: how records with positions get into an engine.

A source is a synchronous adapter that the engine drives from one thread::

    source.open(resume)            # resume = {partition: Position} stored beside the graph
    while running:
        records = source.poll(max_records, timeout_s)   # [] on timeout
        ...                                             # process, write mutations + positions
        source.commit(positions)                        # those positions are durable now
    source.close()

Positions of truth are hopcast's: the engine stores them in the same atomic write as the
mutations they produced and hands them back to :meth:`Source.open` after a restart. ``commit``
only tells the source that it may let go of (or acknowledge upstream) everything up to them —
PostgreSQL confirms the LSN so the server can recycle WAL, Kafka may commit offsets for
monitoring, the journal may delete fully processed segments. A source must never need its own
bookkeeping to resume correctly.

Rules every source follows (checked by :func:`check_source_contract`):

* ``poll`` returns records in offset order within each partition (no order across partitions);
* ``open(resume)`` starts strictly after each partition's resume position; partitions not in
  ``resume`` start from the beginning (or the source's configured start);
* ``close`` then ``open`` again works, and delivers the same records for the same ``resume``;
* the engine may call ``poll`` with a timeout of 0 and expects it not to block then.

Optional: a source that knows how much is waiting upstream implements :class:`LagAware`.

Source kinds and specs
----------------------
``hopcast ingest run --source NAME=SPEC`` builds sources from specs ``KIND:ARGS`` through a small
registry (:func:`build_source`). A kind maps to ``"module:function"``, imported only when used,
so optional dependencies stay optional; the function takes ``(name, args)`` and returns a
:class:`Source`. Built in: ``file:PATH`` (:mod:`~hopcast.stream.sources.logfile`),
``journal:DIR`` (:mod:`~hopcast.stream.sources.journal`), ``kafka:…``
(:mod:`~hopcast.stream.sources.kafka`) and ``postgres:…``
(:mod:`~hopcast.stream.sources.postgres_cdc`); each such module defines ``from_spec(name, args)``.
Other kinds are added with :func:`register_kind`.
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from hopcast.errors import ConfigError
from hopcast.stream.record import Position, Record


@runtime_checkable
class Source(Protocol):
    """A stream of :class:`Record` with positions. See the module docstring for the rules."""

    #: The source name: the ``source:`` of its mapping file and the records' ``source``.
    name: str

    def open(self, resume: Mapping[str, Position]) -> None:
        """Start strictly after ``resume[partition]`` for each partition given.

        Partitions not in ``resume`` start from the beginning (or the configured start).
        """
        ...

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records, ordered per partition; ``[]`` after ``timeout_s``."""
        ...

    def commit(self, positions: Mapping[str, Position]) -> None:
        """Everything up to (and including) these positions is durably processed."""
        ...

    def close(self) -> None:
        """Release files, sockets and connections. ``open`` may be called again afterwards."""
        ...


@runtime_checkable
class LagAware(Protocol):
    """A source that can say how much is waiting beyond what has been polled."""

    def lag(self) -> Mapping[str, int]:
        """Per partition, how far the newest available data is ahead of the last polled record.

        In the source's own unit (records for Kafka, bytes for files and WAL); the engine
        reports the sum per source as a gauge.
        """
        ...


#: A factory of sources of one kind: ``(name, args)`` → source (``args`` = the spec after ``:``).
SourceFactory = Callable[[str, str], Source]

_KINDS: dict[str, str | SourceFactory] = {
    "file": "hopcast.stream.sources.logfile:from_spec",
    "journal": "hopcast.stream.sources.journal:from_spec",
    "kafka": "hopcast.stream.sources.kafka:from_spec",
    "postgres": "hopcast.stream.sources.postgres_cdc:from_spec",
}


def register_kind(kind: str, factory: str | SourceFactory) -> None:
    """Make ``KIND:ARGS`` specs build sources with ``factory`` (or ``"module:function"``)."""
    _KINDS[kind] = factory


def source_kinds() -> list[str]:
    """The kinds :func:`build_source` knows, sorted."""
    return sorted(_KINDS)


def build_source(name: str, spec: str) -> Source:
    """The source ``name`` described by ``spec`` (``KIND:ARGS``, e.g. ``file:/var/log/app``).

    Raises:
        ConfigError: if the spec is malformed, the kind unknown, or its module missing.
    """
    kind, sep, args = spec.partition(":")
    if not sep or not kind:
        raise ConfigError(f"source {name!r}: spec {spec!r} is not KIND:ARGS")
    factory = _KINDS.get(kind)
    if factory is None:
        known = ", ".join(source_kinds())
        raise ConfigError(f"source {name!r}: unknown kind {kind!r} (known: {known})")
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"source kind {kind!r} is not available: {exc}") from exc
        factory = getattr(module, attr)
        assert callable(factory)
    return factory(name, args)


def check_source_contract(
    make: Callable[[], Source],
    expected: list[bytes],
    *,
    max_records: int = 7,
    timeout_s: float = 10.0,
) -> list[Record]:
    """Check that the source ``make()`` builds follows the rules of this module.

    ``make`` returns a fresh, unopened source whose upstream already holds exactly the records
    whose values are ``expected`` (in any order across partitions). Checks: values and
    ``source`` names; offsets strictly increasing per partition; resuming after the first,
    a middle and the last record of each partition delivers exactly the records after it
    (other partitions from the start); close/open cycles on one instance repeat the same
    records; resuming after everything delivers nothing. Returns the records read. Raises
    :class:`AssertionError` on a violation, so any test framework reports it.
    """
    source = make()
    try:
        everything = _drain(source, {}, len(expected), max_records, timeout_s)
        assert sorted(r.value for r in everything) == sorted(expected), (
            f"{source.name}: delivered values differ from the upstream's"
        )
        assert all(r.source == source.name for r in everything), "record.source != source.name"
        by_partition: dict[str, list[Record]] = {}
        for r in everything:
            by_partition.setdefault(r.position.partition, []).append(r)
        for partition, records in by_partition.items():
            offsets = [r.position.offset for r in records]
            assert all(a < b for a, b in itertools.pairwise(offsets)), (
                f"{source.name}: offsets not increasing in partition {partition!r}: {offsets}"
            )
        # Resume after a cut in one partition: that partition's tail plus all the others.
        for partition, records in by_partition.items():
            for cut in sorted({0, len(records) // 2, len(records) - 1}):
                resume = {partition: records[cut].position}
                want = [r for r in everything if r.position.partition != partition]
                want += records[cut + 1 :]
                got = _drain(source, resume, len(want), max_records, timeout_s)
                assert _key(got) == _key(want), (
                    f"{source.name}: resume after {records[cut].position} delivered "
                    f"{len(got)} records, want {len(want)}"
                )
        # Same instance, same resume: the same records again.
        again = _drain(source, {}, len(expected), max_records, timeout_s)
        assert _key(again) == _key(everything), f"{source.name}: a reopen delivered other records"
        # After everything: nothing.
        last = {p: rs[-1].position for p, rs in by_partition.items()}
        rest = _drain(source, last, 0, max_records, min(timeout_s, 0.5))
        assert rest == [], f"{source.name}: resume after the end delivered {len(rest)} records"
        # And a fresh instance resumes like the old one did.
        other = make()
        try:
            tail = _drain(other, last, 0, max_records, min(timeout_s, 0.5))
            assert tail == [], f"{source.name}: a new instance re-delivered {len(tail)} records"
        finally:
            other.close()
        return everything
    finally:
        source.close()


def _key(records: list[Record]) -> list[tuple[str, int, bytes]]:
    return sorted((r.position.partition, r.position.offset, r.value) for r in records)


def _drain(
    source: Source,
    resume: Mapping[str, Position],
    want: int,
    max_records: int,
    timeout_s: float,
) -> list[Record]:
    """Open at ``resume``, poll until ``want`` records came (then one short poll for extras)."""
    source.open(resume)
    try:
        got: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < want and time.monotonic() < deadline:
            batch = source.poll(max_records, 0.05)
            assert len(batch) <= max_records, f"poll returned {len(batch)} > {max_records}"
            got.extend(batch)
        got.extend(source.poll(max_records, 0.05 if want else min(timeout_s, 0.3)))
        return got
    finally:
        source.close()

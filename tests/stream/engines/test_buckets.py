"""The Flink engine's window writer without a JVM: a window of records goes through the pipeline
into the store with its group's totals and newest offset, records written before a restore are
skipped, a failing store is retried with back-off, and every retry is reported while the store
is still failing."""

from __future__ import annotations

from typing import Any

import pytest

from hopcast.errors import StorageError
from hopcast.graph.mutations import NodeUpsert
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetter
from hopcast.stream.engines.buckets import (
    BucketWriter,
    Totals,
    read_group_totals,
    read_totals,
    write_window,
)
from hopcast.stream.record import Record

NOW = 1_700_000_000_000_000


class FailingStore:
    """A GraphStore whose next ``fail`` applies raise StorageError."""

    def __init__(self, store: Any, fail: int) -> None:
        self._store, self.fail = store, fail

    def apply(self, mutations: Any, checkpoints: Any = None, **options: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise StorageError("connection refused")
        return self._store.apply(mutations, checkpoints, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_each_retry_is_reported_before_its_back_off_while_the_store_still_fails() -> None:
    events: list[str] = []
    with Graph.open(clock=lambda: NOW) as graph:
        store = FailingStore(graph.store, 2)
        writer = BucketWriter(
            store,  # type: ignore[arg-type]
            "job",
            clock=lambda: NOW,
            sleep=lambda s: events.append(f"sleep {s:g}"),
            on_retry=lambda exc: events.append(f"retry while failing: {store.fail} left, {exc}"),
        )
        result = writer.write(0, [NodeUpsert("title:1", NOW - 1, "a", {})], Totals())
        assert graph.node("title:1") is not None
    assert result.attempts == 3 and result.written == 1
    assert events == [
        "retry while failing: 1 left, connection refused",
        "sleep 0.2",
        "retry while failing: 0 left, connection refused",
        "sleep 0.4",
    ]


def test_a_store_failing_past_the_patience_raises_after_reporting_its_retries() -> None:
    retries: list[StorageError] = []
    with Graph.open(clock=lambda: NOW) as graph:
        writer = BucketWriter(
            FailingStore(graph.store, 1_000),  # type: ignore[arg-type]
            "job",
            clock=lambda: NOW,
            patience_s=1.0,  # back-offs of 0.2, 0.4, 0.8 s fit in it (no real sleep); 1.6 not
            sleep=lambda s: None,
            on_retry=retries.append,
        )
        with pytest.raises(StorageError):
            writer.write(0, [NodeUpsert("title:1", NOW - 1, "a", {})], Totals())
    assert len(retries) >= 1


def _title(record: Record, now: int) -> list[NodeUpsert | DeadLetter]:
    """A pipeline stand-in: a value ``bad`` is a dead letter, anything else a title node."""
    if record.value == b"bad":
        return [
            DeadLetter("decode_error", "bad", record.value, "src", record.position, now, "decode")
        ]
    return [NodeUpsert(f"title:{record.value.decode()}", NOW - 1, "a", {})]


def _window(graph: Graph, totals: Totals, offsets: list[int], values: list[bytes], **kw: Any):  # type: ignore[no-untyped-def]
    writer = BucketWriter(graph.store, "job", clock=lambda: NOW)
    return write_window(
        _title,
        writer,
        source="src",
        topic="t",
        partition=0,
        group="t:0/0",
        totals=totals,
        offsets=offsets,
        keys=[None] * len(offsets),
        values=values,
        timestamps_ms=[None] * len(offsets),
        clock=lambda: NOW,
        **{"max_batch": 100, **kw},
    )


def test_a_window_is_written_in_writes_of_max_batch_records_each_with_its_newest_offset() -> None:
    with Graph.open(clock=lambda: NOW) as graph:
        totals = Totals()
        counts = _window(graph, totals, [10, 11, 12, 13, 14], [b"1", b"2", b"bad", b"3", b"1"],
                         max_batch=2)  # fmt: skip
        assert (counts.records, counts.writes, counts.dead_letters) == (5, 3, 1)
        assert graph.node("title:3") is not None
        stored = read_group_totals(graph.store, "job", "t:0/0")
        assert stored == totals and stored.offset == 14
        assert (stored.mutations, stored.dead_letters, stored.windows) == (4, 1, 3)
        assert read_totals(graph.store, "job").mutations == 4


def test_records_at_or_below_the_stored_offset_are_skipped_so_a_replay_counts_nothing_twice() -> (
    None
):
    with Graph.open(clock=lambda: NOW) as graph:
        _window(graph, Totals(), [0, 1, 2], [b"1", b"2", b"bad"])
        # after a restore: the task reads the group's totals again, and the replay overlaps
        replayed = read_group_totals(graph.store, "job", "t:0/0")
        counts = _window(graph, replayed, [1, 2, 3], [b"2", b"bad", b"4"])
        assert (counts.skipped, counts.records) == (2, 1)
        stored = read_group_totals(graph.store, "job", "t:0/0")
        assert (stored.mutations, stored.dead_letters, stored.offset) == (3, 1, 3)
        assert graph.node("title:4") is not None


def test_a_window_out_of_offset_order_is_written_in_offset_order() -> None:
    with Graph.open(clock=lambda: NOW) as graph:
        totals = Totals()
        _window(graph, totals, [7, 5, 6], [b"7", b"5", b"6"], max_batch=1)
        assert totals.offset == 7 and totals.windows == 3


def test_columns_of_different_lengths_are_refused() -> None:
    with Graph.open(clock=lambda: NOW) as graph, pytest.raises(ValueError, match="differ"):
        _window(graph, Totals(), [1, 2], [b"1"])

"""The Flink engine's window writer without a JVM: a failing store is retried with back-off,
and every retry is reported while the store is still failing."""

from __future__ import annotations

from typing import Any

import pytest

from hopcast.errors import StorageError
from hopcast.graph.mutations import NodeUpsert
from hopcast.graphdb import Graph
from hopcast.stream.engines.buckets import BucketWriter, Totals

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

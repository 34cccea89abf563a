"""The event-loop lag monitor: what it records, that it sees a busy loop, and /metrics."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.seed import TestClient
from hopcast import Graph
from hopcast.api import create_app
from hopcast.looplag import LAG_BUCKETS, LoopLag

#: A loop blocked this long must show up as lag of at least half of it, however busy the
#: machine (a busy machine only adds lag).
BLOCK_S = 0.3


def samples(text: str) -> dict[str, float]:
    return {
        s.name + "".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_observe_counts_each_sample_in_its_bucket_and_keeps_the_max() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry)
    for value in (0.0005, 0.03, 0.03, 7.0, -1.0):
        lag.observe(value)
    got = samples(generate_latest(registry).decode())
    assert got["hopcast_event_loop_lag_seconds_bucketle=0.001"] == 2  # -1 counts as 0
    assert got["hopcast_event_loop_lag_seconds_bucketle=0.05"] == 4
    assert got["hopcast_event_loop_lag_seconds_bucketle=+Inf"] == 5
    assert got["hopcast_event_loop_lag_seconds_count"] == 5
    assert got["hopcast_event_loop_lag_max_seconds"] == 7.0
    stats = lag.stats()
    assert stats["samples"] == 5 and stats["max"] == 7.0 and stats["p50"] == 0.03
    lag.reset_recent()
    assert lag.stats()["samples"] == 0 and lag.max == 7.0
    assert len(LAG_BUCKETS) == len(set(LAG_BUCKETS))


def test_the_monitor_sees_a_loop_kept_busy() -> None:
    async def main() -> LoopLag:
        lag = LoopLag(interval_s=0.01)
        lag.start()
        await asyncio.sleep(0.05)  # the monitor is sleeping on its timer
        time.sleep(BLOCK_S)  # the loop is blocked: the timer fires late
        await asyncio.sleep(0.05)
        await lag.stop()
        return lag

    lag = asyncio.run(main())
    assert lag.max >= BLOCK_S / 2, f"a {BLOCK_S} s block measured as {lag.max} s"
    assert lag.stats()["samples"] >= 2


def test_the_histogram_is_on_the_apis_metrics_while_it_serves() -> None:
    graph = Graph.open()
    app = create_app(graph)
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while app.state.loop_lag.stats()["samples"] == 0:  # the monitor's first wake-up
            assert time.monotonic() < deadline, "the loop-lag monitor never recorded a sample"
            time.sleep(0.02)
        got = samples(client.get("/metrics").text)
    assert got["hopcast_event_loop_lag_seconds_count"] >= 1
    assert "hopcast_event_loop_lag_max_seconds" in got
    graph.close()

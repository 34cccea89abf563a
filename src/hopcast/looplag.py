"""Event-loop lag: how late a timer fires, measured continuously in every serving process.

Everything a server process does — HTTP requests, the live gateway's fan-out, the schedule's
timers — shares one asyncio event loop. Work that keeps the loop busy (a broadcast to every
device written in one go, a request computing inline) delays everything else by as long. The
monitor makes that visible: a task sleeps :data:`INTERVAL_S` again and again and records how
much later than asked it woke up. A loop busy for 300 ms in one go shows as one sample of about
300 ms (minus what was left of the interval).

Series (on the registry given): ``hopcast_event_loop_lag_seconds`` (histogram) and
``hopcast_event_loop_lag_max_seconds`` (the largest lag seen since the process started).
:meth:`LoopLag.stats` gives quantiles over the recent samples, for benchmarks and logs.

    lag = LoopLag(registry)
    lag.start()          # inside the running loop
    ...
    await lag.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: Sampling interval. 20 ms resolves the ~50 ms budget a burst of work may take on the loop,
#: while 50 wake-ups a second cost ~0.1% of a core.
INTERVAL_S: Final = 0.02
#: Histogram buckets (seconds): timer granularity (~1 ms) to a stall of seconds, dense around
#: the 50 ms budget.
LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Recent samples kept for :meth:`LoopLag.stats`: five minutes at the default interval.
RECENT_SAMPLES: Final = 15_000


class LoopLag(Collector):
    """Records event-loop lag; a Prometheus collector of its own series.

    Args:
        registry: where to register the series (None: not registered; read :meth:`stats`).
        interval_s: the timer's interval.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, interval_s: float = INTERVAL_S
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = interval_s
        self._counts = [0] * (len(LAG_BUCKETS) + 1)  # the last one: +Inf
        self._sum = 0.0
        self._count = 0
        self._max = 0.0  # since the process started
        self._recent: deque[float] = deque(maxlen=RECENT_SAMPLES)
        self._task: asyncio.Task[None] | None = None
        if registry is not None:
            registry.register(self)

    # -- recording (pure) ------------------------------------------------------------------------

    def observe(self, lag_s: float) -> None:
        """Record one sample (negative lag counts as 0)."""
        lag_s = max(0.0, lag_s)
        for i, bound in enumerate(LAG_BUCKETS):
            if lag_s <= bound:
                self._counts[i] += 1
                break
        else:
            self._counts[-1] += 1
        self._sum += lag_s
        self._count += 1
        self._max = max(self._max, lag_s)
        self._recent.append(lag_s)

    @property
    def max(self) -> float:
        """The largest lag seen (seconds)."""
        return self._max

    def reset_recent(self) -> None:
        """Forget the recent samples (a benchmark's phase starts); the Prometheus series and
        :attr:`max` keep counting."""
        self._recent.clear()

    def stats(self) -> dict[str, float]:
        """``samples``, ``p50``, ``p99``, ``max`` (seconds) over the recent samples."""
        ordered = sorted(self._recent)
        if not ordered:
            return {"samples": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

        def q(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

        return {"samples": len(ordered), "p50": q(0.5), "p99": q(0.99), "max": ordered[-1]}

    def collect(self) -> Iterator[Metric]:
        buckets = []
        running = 0
        for bound, count in zip((*LAG_BUCKETS, float("inf")), self._counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        histogram = HistogramMetricFamily(
            "hopcast_event_loop_lag_seconds",
            "How late the event loop ran a timer (seconds): the time the loop was busy with "
            "other work.",
        )
        histogram.add_metric([], buckets, self._sum)
        yield histogram
        yield GaugeMetricFamily(
            "hopcast_event_loop_lag_max_seconds",
            "The largest event-loop lag seen since the process started (seconds).",
            value=self._max,
        )

    # -- the monitor task --------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Start sampling on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")
        return self._task

    async def stop(self) -> None:
        """Stop sampling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # perf_counter, not loop.time(): uvloop's clock has millisecond steps
        interval = self.interval_s
        while True:
            asked = time.perf_counter() + interval
            await asyncio.sleep(interval)
            self.observe(time.perf_counter() - asked)

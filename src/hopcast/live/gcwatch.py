"""Watching and taming CPython's cyclic garbage collector in a server with many connections.

A full collection walks every tracked object, so its pause grows with the number of open
connections (measured with python-socketio: ~55 ms at 1k, 310 ms at 5k, 620 ms at 10k).
:class:`FreezePolicy` decides when to move everything alive to the permanent generation
(``gc.freeze()``) and when to thaw it again; :class:`GcMonitor` times every collection through
``gc.callbacks`` and exports the pauses as a Prometheus histogram. Used by the live gateway and
by the broadcast benchmark for every server it measures.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping

from prometheus_client.core import HistogramMetricFamily, Metric

from hopcast.errors import ConfigError

#: Freeze the heap after every this many new devices: a burst of 1,000 connections is ~10-20 MB
#: of objects a full collection would otherwise walk again and again.
FREEZE_STEP = 1_000
#: GC pause histogram buckets (s): the issue measured 55-620 ms pauses at 1k-10k connections
#: without freezing; the target is well under the 1 ms end.
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class FreezePolicy:
    """Decides when to ``gc.freeze()`` and ``gc.unfreeze()`` from the number of open devices.

    Freeze when the count has grown by ``step`` since the last decision; unfreeze once it has
    fallen to half of what it was at the last freeze (the departed devices' cyclic garbage is
    then worth a full collection). Pure: the caller performs the decision.
    """

    def __init__(self, step: int = FREEZE_STEP) -> None:
        """
        Raises:
            ConfigError: ``step`` < 1.
        """
        if step < 1:
            raise ConfigError(f"freeze step must be >= 1, got {step}")
        self._step = step
        self._base = 0  # device count at the last freeze or unfreeze
        self._frozen = False

    def opened(self, count: int) -> bool:
        """A device was welcomed and ``count`` are open: True means call ``gc.freeze()``."""
        if count >= self._base + self._step:
            self._base, self._frozen = count, True
            return True
        return False

    def closed(self, count: int) -> bool:
        """A device left and ``count`` remain: True means call ``gc.unfreeze()``."""
        if self._frozen and count <= self._base // 2:
            self._base, self._frozen = count, False
            return True
        return False

    def settled(self, count: int) -> bool:
        """A heartbeat's round trip is over and ``count`` devices are open: True means call
        ``gc.freeze()`` again.

        Every ``ping`` makes every device answer, and websockets allocates a few new objects
        per connection to take the ``pong`` in (measured: ~10 per device, so 1M at 100k
        devices) outside the frozen heap; without a fresh freeze the next full collection walks
        them all (2 s pauses at 100k devices over 6 processes, landing mid-broadcast). Only
        once the heap is frozen anyway (at least ``step`` devices), so a small node keeps
        collecting normally.
        """
        if self._frozen and count >= self._step:
            self._base = max(self._base, count)
            return True
        return False


class GcMonitor:
    """Times garbage collections via ``gc.callbacks``; a Prometheus collector and plain stats.

    The callback only does arithmetic on lists: a collection can start while the same thread
    holds a prometheus_client lock, so it must not call into prometheus_client.
    """

    def __init__(self, buckets: tuple[float, ...] = GC_PAUSE_BUCKETS) -> None:
        self._bounds = buckets
        self._counts = [[0] * (len(buckets) + 1) for _ in range(3)]
        self._sums = [0.0, 0.0, 0.0]
        self._started = 0.0
        self.max_pause_s = 0.0
        self.last_pause_s = 0.0

    def install(self) -> None:
        """Start timing (idempotent)."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        """Stop timing (idempotent)."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = min(max(info.get("generation", 2), 0), 2)
        self._counts[generation][bisect_left(self._bounds, pause)] += 1
        self._sums[generation] += pause
        self.last_pause_s = pause
        self.max_pause_s = max(self.max_pause_s, pause)

    def stats(self) -> dict[str, float]:
        """Collections per generation, pause total / max / last (s), objects frozen."""
        out: dict[str, float] = {f"gc_collections_gen{g}": sum(self._counts[g]) for g in range(3)}
        out["gc_pause_total_s"] = sum(self._sums)
        out["gc_pause_max_s"] = self.max_pause_s
        out["gc_pause_last_s"] = self.last_pause_s
        out["gc_frozen_objects"] = gc.get_freeze_count()
        return out

    def collect(self) -> Iterator[Metric]:
        """Prometheus collector protocol: the pause histogram per generation."""
        family = HistogramMetricFamily(
            "hopcast_gateway_gc_pause_seconds",
            "Garbage collection pauses in the gateway process",
            labels=["generation"],
        )
        for generation in range(3):
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*self._bounds, float("inf")), self._counts[generation], strict=True
            ):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family

"""Engines: run sources through their pipelines into the graph store.

:mod:`~hopcast.stream.engines.embedded` is the default: one process, micro-batches, source
positions written in the same atomic write as the mutations they produced (exactly-once effect).
"""

from __future__ import annotations

from hopcast.stream.engines.embedded import (
    BatchResult,
    EmbeddedEngine,
    EngineStats,
    IngestMetrics,
    engine_for,
    stored_positions,
)

__all__ = [
    "BatchResult",
    "EmbeddedEngine",
    "EngineStats",
    "IngestMetrics",
    "engine_for",
    "stored_positions",
]

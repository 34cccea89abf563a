"""A demo store behind the whole API, for the contract test: the seeded graph, a live service
with events in several states and payloads, an ingest journal; a fixed clock."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from api.seed import NOW, SEED
from hopcast import Graph
from hopcast.api import create_app
from hopcast.durations import MINUTE
from hopcast.live.schedule import Create, StartNow
from hopcast.live.service import LiveService
from hopcast.stream.sources.journal import Journal


@dataclass
class Demo:
    graph: Graph
    live: LiveService
    journal: Journal
    app: FastAPI
    directory: Path

    def close(self) -> None:
        self.journal.close()
        self.graph.close()


def demo() -> Demo:
    """Build the demo app (the caller closes it)."""
    directory = Path(tempfile.mkdtemp(prefix="hopcast-contract-"))
    graph = Graph.open(clock=lambda: NOW)
    graph.apply(SEED)
    live = LiveService(graph.store.kv, clock=lambda: NOW)
    live.command(Create("final", "The Final", NOW + 30 * MINUTE, NOW + 150 * MINUTE, 0), NOW)
    live.command(Create("semi", "The Semi", NOW + 10 * MINUTE, None, 0), NOW)
    live.command(StartNow("semi"), NOW)
    live.materialise("final", NOW, ["all"])
    journal = Journal(directory / "journal")
    app = create_app(graph, live=live, journals={"logs": journal})
    return Demo(graph, live, journal, app, directory)

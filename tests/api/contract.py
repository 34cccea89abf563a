"""A demo store behind the whole API, for the contract test: the seeded graph, a live service
with events in several states and payloads, an ingest journal, an admin key; a fixed clock.
:func:`served` runs it in uvicorn on a loopback port, as in production."""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.seed import NOW, SEED
from hopcast import EdgeUpsert, Graph, NodeUpsert
from hopcast.api import create_app
from hopcast.api.policy import Security
from hopcast.auth import KeyFile
from hopcast.durations import DAY, HOUR, MINUTE
from hopcast.live.schedule import Create, StartNow
from hopcast.live.service import LiveService
from hopcast.stream.sources.journal import Journal

#: The graph node of the live event "final" and its audience, so that recommendations can be
#: materialised from the graph for it (console routes).
EVENT_GRAPH = [
    NodeUpsert("live_event:final", NOW - DAY, "g1", {"name": "The Final", "sport": "football"}),
    NodeUpsert("team:a", NOW - DAY, "g2", {"name": "Red Rovers", "sport": "football"}),
    EdgeUpsert("live_event:final", "features", "team:a", NOW - DAY, "g3"),
    EdgeUpsert("profile:1", "watched_live", "live_event:final", NOW - HOUR, "g4", {"minutes": 30}),
    EdgeUpsert("profile:2", "supports", "team:a", NOW - HOUR, "g5"),
    EdgeUpsert("profile:2", "browsed", "live_event:final", NOW - HOUR, "g6"),
]


@dataclass
class Demo:
    graph: Graph
    live: LiveService
    journal: Journal
    app: FastAPI
    directory: Path
    #: An admin key of the app's key file (every route accepts it).
    key: str

    def close(self) -> None:
        self.journal.close()
        self.graph.close()


def demo() -> Demo:
    """Build the demo app (the caller closes it)."""
    directory = Path(tempfile.mkdtemp(prefix="hopcast-contract-"))
    graph = Graph.open(clock=lambda: NOW)
    graph.apply(SEED)
    graph.apply(EVENT_GRAPH)
    live = LiveService(graph.store.kv, clock=lambda: NOW)
    live.command(Create("final", "The Final", NOW + 30 * MINUTE, NOW + 150 * MINUTE, 0), NOW)
    live.command(Create("semi", "The Semi", NOW + 10 * MINUTE, None, 0), NOW)
    live.command(StartNow("semi"), NOW)
    live.materialise("final", NOW, ["all"])
    journal = Journal(directory / "journal")
    keys = KeyFile(directory / "keys.json")
    _, key = keys.create("contract", ["admin"], NOW)
    app = create_app(graph, live=live, journals={"logs": journal}, security=Security(keys=keys))
    return Demo(graph, live, journal, app, directory, key)


#: Generous bound on the server's start-up and shutdown; reached only if it hangs.
JOIN_TIMEOUT_S = 30


#: How long a materialise request of the contract run waits for its job (the demo's jobs take
#: milliseconds; this bounds a very busy machine).
JOB_WAIT_S = 60


class SettledJobs:
    """Ask every ``POST …/materialise`` without a ``wait`` to wait for its job.

    A materialise job runs in the background, so whether the next materialise of the same event
    is a 202 or a 409 ``job_running`` would depend on the machine's speed; the stateful run
    draws its next steps from the answers it got, and Hypothesis fails a run whose draws change
    between replays ("inconsistent data generation"). Waiting makes every answer depend on the
    requests alone. Both answers are documented; tests/api/test_api_jobs.py covers the 202.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith("/materialise")
            and b"wait=" not in scope.get("query_string", b"")
        ):
            query = scope.get("query_string", b"")
            wait = b"wait=%d" % JOB_WAIT_S
            scope = {**scope, "query_string": query + b"&" + wait if query else wait}
        await self.app(scope, receive, send)


@contextmanager
def served(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL.

    The socket is bound and listening before the server starts, so requests wait in the backlog
    until it accepts them: no polling for readiness.
    """
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(JOIN_TIMEOUT_S)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"

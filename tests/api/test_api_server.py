"""The real server: uvicorn (uvloop + httptools) on a loopback port, spoken to over TCP."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.seed import NOW, SEED
from childproc import Child
from hopcast import Graph
from hopcast.api import make_server, serve
from hopcast.api.server import worker_app
from hopcast.auth import KeyFile
from hopcast.durations import DAY
from hopcast.errors import ConfigError
from hopcast.ports import listening_socket

#: Generous bound on start-up and shutdown; only reached if the server hangs.
JOIN_TIMEOUT_S = 30


@pytest.fixture
def base_url() -> Iterator[str]:
    graph = Graph.open(clock=lambda: NOW)
    graph.apply(SEED)
    server = make_server(graph, max_body_bytes=1_000, log_level="warning")
    # Bind before starting: connections queue in the backlog until the server accepts them, so
    # the test needs no polling for readiness.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(JOIN_TIMEOUT_S)
        sock.close()
        graph.close()
    assert not thread.is_alive(), "the server did not stop"


def test_the_real_server_answers_health_and_a_neighbours_query(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=JOIN_TIMEOUT_S) as http:
        health = http.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "backend": "memory"}
        response = http.get(
            "/v1/nodes/profile:1/neighbours", params={"edge": "started_watching", "limit": 1}
        )
    assert response.status_code == 200
    assert response.json() == {
        "node": "profile:1",
        "edges": [
            {
                "src": "profile:1",
                "type": "started_watching",
                "dst": "title:11",
                "ts": NOW - DAY,
                "props": {"position_s": 120, "device": "device:tv1"},
                "neighbour": "title:11",
            }
        ],
        "truncated": True,  # profile:1 watched another title: the limit of 1 left it out
        "reason": "limit (1) reached with more matching: profile:1's started_watching edges; "
        "raise limit to lift it",
    }


def test_the_real_server_refuses_a_chunked_body_past_the_limit(base_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    with httpx.Client(base_url=base_url, timeout=JOIN_TIMEOUT_S) as http:
        response = http.post("/v1/mutations", content=chunks())
    assert response.status_code == 413
    assert response.json() == {
        "error": "body_too_large",
        "message": "the request body exceeds 1000 bytes",
    }


def test_several_workers_need_a_graph_in_lmdb() -> None:
    with Graph.open() as graph, pytest.raises(ConfigError, match="needs a graph stored in LMDB"):
        serve(graph, workers=2)


def test_zero_workers_is_refused() -> None:
    with Graph.open() as graph, pytest.raises(ConfigError, match="workers must be >= 1"):
        serve(graph, workers=0)


def test_a_worker_opens_the_graph_named_by_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Graph.open(tmp_path / "graph", sync=False) as graph:
        graph.apply(SEED)
        schema = graph.schema.source
    monkeypatch.setenv("HOPCAST_API_STORE", str(tmp_path / "graph"))
    monkeypatch.setenv("HOPCAST_API_SCHEMA", schema)
    app = worker_app()
    try:
        assert app.state.graph.node("profile:1").props == {"name": "Ann", "kids": False}
        assert app.state.graph.store.kv.name == "lmdb"
    finally:
        app.state.graph.close()


def test_a_worker_without_its_environment_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOPCAST_API_STORE", raising=False)
    with pytest.raises(ConfigError, match="HOPCAST_API_STORE and HOPCAST_API_SCHEMA"):
        worker_app()


def test_serve_on_a_taken_port_says_so_before_it_starts() -> None:
    with listening_socket("127.0.0.1", 0) as taken, Graph.open() as graph:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on http://127.0.0.1:{port}"):
            serve(graph, port=port)


def test_hopcast_serve_on_port_0_prints_the_port_it_bound_and_answers_there(
    tmp_path: Path,
) -> None:
    with Graph.open(tmp_path / "graph", sync=False) as graph:
        graph.apply(SEED)
    _, key = KeyFile(tmp_path / "graph" / "keys.json").create("test", ["reader"], NOW)
    hopcast = [sys.executable, "-c", "from hopcast.cli import main; main()"]
    server = Child([*hopcast, "--store", str(tmp_path / "graph"), "serve", "--port", "0"])
    try:
        (line,) = server.wait_for(r"hopcast API on (http://127\.0\.0\.1:(\d+)) ", "the API")
        assert int(line[2]) > 0
        # the socket listened before the line was printed: no polling for readiness
        health = httpx.get(line[1] + "/healthz", timeout=JOIN_TIMEOUT_S)
        assert health.json() == {"status": "ok", "backend": "lmdb"}
        node = line[1] + "/v1/nodes/profile:1"
        assert httpx.get(node, timeout=JOIN_TIMEOUT_S).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(node, headers=auth, timeout=JOIN_TIMEOUT_S).status_code == 200
        server.stop(signal.SIGINT)  # Ctrl-C: uvicorn shuts the app down (click says Aborted!)
        assert "Application shutdown complete" in server.output
    finally:
        if server.proc.poll() is None:
            server.kill()

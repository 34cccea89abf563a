"""The demo runner end to end: load, serve, live writes, clean stop."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hopcast.demo import run

#: Loads a company and serves it over HTTP for several seconds.
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_the_demo_loads_a_company_serves_it_and_keeps_writing_until_it_stops(
    tmp_path: Path,
) -> None:
    port = _free_port()
    store = tmp_path / "demo"
    argv = ["--store", str(store), "--accounts", "60", "--history", "3000", "--rate", "400"]
    argv += ["--port", str(port), "--duration", "6"]
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(run.main(argv)))
    worker.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    health = None
    while time.monotonic() < deadline and health is None:
        try:
            health = _get(base + "/healthz")
        except OSError:
            time.sleep(0.2)
    assert health is not None and health["status"] == "ok"
    # The preloaded history is there; live activity (stamped after start-up) keeps arriving.
    served_at = time.time_ns() // 1000
    history = _get(base + "/v1/nodes/account:0/journey?since=31d&limit=50")
    assert len(history["members"]) > 2 and history["entries"]
    live: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline and not live:
        time.sleep(0.3)
        live = _get(base + f"/v1/nodes/account:0/journey?since={served_at}&limit=50")["entries"]
    assert live and all(e["ts"] >= served_at for e in live)
    worker.join(60)
    assert result == [0]
    assert (store / "data.mdb").exists()

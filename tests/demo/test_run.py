"""``hopcast run`` end to end: history, snapshot through the pipeline, live records from the
company's services ingested while the API serves them, dead letters counted, clean stops on
SIGTERM and after --duration."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hopcast.demo import run
from hopcast.demo.records import BAD_KINDS, SOURCES
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetterStore

#: Runs the whole system in a subprocess for several seconds.
pytestmark = pytest.mark.slow

HOPCAST = [sys.executable, "-c", "from hopcast.cli import main; main()"]


def _free_port_pair() -> int:
    """A port P with P and P + 1 free (the API and the live gateway)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        body = r.read()
    return json.loads(body) if r.headers.get_content_type() == "application/json" else body


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if _get(base + "/healthz")["status"] == "ok":
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the API did not come up")


def _metric(text: str, name: str) -> dict[str, float]:
    """Samples of one Prometheus metric by their label string."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def test_hopcast_run_ingests_the_live_records_serves_them_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    port = _free_port_pair()
    data = tmp_path / "demo"
    args = [*HOPCAST, "run", "--data", str(data), "--port", str(port), "--rate", "300"]
    args += ["--accounts", "60", "--history", "2000", "--bad-share", "0.03", "--no-progress"]
    args += ["--rotate-bytes", "65536"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base, proc)
        served_at = time.time_ns() // 1000
        # A heavy member's journey fills with edges streamed from the browse log and the
        # playback table (Debezium), stamped after the API came up.
        deadline = time.monotonic() + 60
        types: set[str] = set()
        while time.monotonic() < deadline and not {"browsed", "started_watching"} <= types:
            time.sleep(0.5)
            journey = _get(f"{base}/v1/nodes/account:0/journey?since={served_at}&limit=200")
            assert all(e["ts"] >= served_at for e in journey["entries"])
            types = {e["type"] for e in journey["entries"]}
        assert {"browsed", "started_watching"} <= types, types
        # The pipeline's metrics are served by the API: every source ingested, dead letters.
        dead: dict[str, float] = {}
        while time.monotonic() < deadline and sum(dead.values()) < 3:
            time.sleep(0.5)
            text = _get(base + "/metrics").decode()
            dead = _metric(text, "hopcast_ingest_dead_letters_total")
        events = _metric(text, "hopcast_ingest_events_total")
        assert {f'{{source="{s}"}}' for s in SOURCES} <= set(events)
        assert sum(dead.values()) >= 3
        assert _metric(text, "hopcast_ingest_freshness_seconds_count")[""] > 100
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 0, text
    assert "stopped:" in text and "dead letters" in text
    # After the stop: the engine drained what was written, stored its positions, and every
    # bad record is a dead letter with the reason of its kind.
    written = sum(
        sum(1 for line in p.read_bytes().splitlines() if line)
        for p in (data / "logs").rglob("*.jsonl*")
    )
    ingested = re.search(r"ingested ([\d,]+) records", text)
    assert ingested is not None and int(ingested.group(1).replace(",", "")) >= written
    with Graph.open(data / "graph") as graph:
        letters = list(DeadLetterStore(graph.store.kv))
        checkpoints = graph.store.checkpoints()
        assert graph.node("profile:0-0") is not None  # from the members snapshot
    kinds = {(d.source, d.reason) for d in letters}
    assert kinds and kinds <= set(BAD_KINDS)
    assert len(letters) >= sum(dead.values())
    assert {name.split("/")[0] for name in checkpoints} >= set(SOURCES)
    reported = re.search(r"([\d,]+) deliberately bad", text)
    assert reported is not None and int(reported.group(1).replace(",", "")) == len(letters)


def test_the_demo_entry_point_stops_by_itself_after_its_duration(tmp_path: Path) -> None:
    port = _free_port_pair()
    data = tmp_path / "demo"
    argv = ["--store", str(data), "--accounts", "40", "--history", "500", "--rate", "100"]
    argv += ["--port", str(port), "--duration", "3", "--no-progress"]
    started = time.monotonic()
    assert run.main(argv) == 0
    assert time.monotonic() - started < 60
    assert (data / "graph" / "data.mdb").exists()
    assert {p.name for p in (data / "logs").iterdir()} == set(SOURCES)
    with Graph.open(data / "graph") as graph:
        assert graph.store.checkpoints()


def test_sigterm_while_the_history_loads_stops_after_the_batch(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    args = [*HOPCAST, "run", "--data", str(data), "--port", str(_free_port_pair())]
    args += ["--accounts", "100", "--history", "5000000", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (data / "graph" / "data.mdb").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "stopped while loading" in err.decode()

"""The scripted live event of ``hopcast run``: scheduled a few seconds out with rows from the
graph, prefetched by simulated devices, taken live on schedule, every device updated; and the
pieces of :mod:`hopcast.demo.scenario` on their own."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hopcast.demo.company import Company, CompanyConfig
from hopcast.demo.scenario import pick_event
from hopcast.durations import DAY, HOUR
from hopcast.graphdb import Graph

HOPCAST = [sys.executable, "-c", "from hopcast.cli import main; main()"]


def _free_port_pair() -> int:
    import socket

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
        return json.loads(r.read())


def _until(what: str, check: Any, proc: subprocess.Popen[bytes], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            last = check()
        except OSError:
            last = None
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


def test_pick_event_takes_the_live_event_with_the_largest_audience() -> None:
    now = 1_700_000_000_000_000
    company = Company(CompanyConfig(accounts=5, seed=3), now - 30 * DAY)
    graph = Graph.open(clock=lambda: now)
    graph.apply(company.catalogue())
    ids = company.live_event_ids()
    assert pick_event(graph, company, now) == max(ids)  # no audience yet: the largest id
    for p in range(3):
        graph.upsert_edge(f"profile:{p}-0", "watched_live", ids[0], {"minutes": 3}, ts=now - HOUR)
    graph.upsert_edge("profile:9-0", "watched_live", ids[1], {"minutes": 3}, ts=now - HOUR)
    assert pick_event(graph, company, now) == ids[0]
    graph.close()


@pytest.mark.slow
def test_hopcast_run_takes_a_scripted_event_live_and_every_device_gets_the_trigger(
    tmp_path: Path,
) -> None:
    port = _free_port_pair()
    devices = 20
    args = [*HOPCAST, "run", "--data", str(tmp_path / "demo"), "--port", str(port)]
    args += ["--accounts", "80", "--history", "4000", "--rate", "100", "--no-progress"]
    args += ["--event-in", "8", "--devices", str(devices), "--max-segments", "3"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:

        def scheduled() -> Any:
            return _get(f"{base}/v1/live/events")["events"]

        events = _until("the event is scheduled", scheduled, proc, 120)
        assert len(events) == 1
        event = events[0]["id"]
        # its rows come from the graph, in at most 3 segments
        seg = _get(f"{base}/v1/console/events/{event}/segments")
        assert seg["node"].startswith("live_event:")
        assert 1 <= len(seg["segments"]) <= 3 and seg["segments"][-1]["key"] == "all"
        assert seg["cardinality"] == 3 * len(seg["segments"])

        def live() -> Any:
            doc = _get(f"{base}/v1/live/events/{event}")
            return doc if doc["state"] == "live" else None

        went = _until("the event goes live", live, proc, 60)
        assert went["went_live_at"] >= went["original_starts_at"]

        def updated() -> Any:
            doc = _get(f"{base}/v1/console/dashboard?event={event}")
            ttu = doc["time_to_update"]
            return doc if ttu and ttu["stage"] == "live" and ttu["devices"] == devices else None

        dash = _until("every device shows the live stage", updated, proc, 60)
        assert dash["devices"] == {"gateway": True, "connected": devices}
        assert dash["prefetch"]["coverage_pct"] == 100.0  # everyone prefetched in the window
        assert dash["time_to_update"]["cdf"][-1]["fraction"] == 1.0
        assert dash["time_to_update"]["p99_ms"] < 5_000
        ingest = _get(f"{base}/v1/console/ingest")
        assert ingest["engine"] is True and ingest["events"] > 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert proc.returncode == 0, text
    assert f"device page  {base}/web/device.html" in text
    assert f"console      {base}/web/console.html" in text
    assert f"API docs     {base}/docs" in text
    assert f"live event   {event}" in text and "goes live in 8 s" in text

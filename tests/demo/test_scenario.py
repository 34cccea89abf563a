"""The scripted live event of ``hopcast run``: scheduled a few seconds out with rows from the
graph, prefetched by simulated devices, taken live on schedule, every device updated; and the
pieces of :mod:`hopcast.demo.scenario` on their own."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from childproc import Child
from hopcast.demo.company import Company, CompanyConfig
from hopcast.demo.scenario import pick_event
from hopcast.durations import DAY, HOUR
from hopcast.graphdb import Graph

HOPCAST = [sys.executable, "-c", "from hopcast.cli import main; main()"]


#: Bound on one HTTP request to the demo's API: it shares a process with the pipeline, the
#: generator and the devices, so on a loaded machine a request may wait seconds for the GIL.
REQUEST_TIMEOUT_S = 30


def _get(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as r:
        return json.loads(r.read())


def _until(what: str, check: Any, demo: Child, timeout: float) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what`` (and the demo's
    output) if the demo exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        assert demo.proc.poll() is None, f"{what}: the demo exited first:\n{demo.tail()}"
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r}):\n{demo.tail()}")


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
    devices = 20
    args = [*HOPCAST, "run", "--data", str(tmp_path / "demo"), "--port", "0"]
    args += ["--accounts", "80", "--history", "4000", "--rate", "100", "--no-progress"]
    args += ["--event-in", "8", "--devices", str(devices), "--max-segments", "3"]
    demo = Child(args)
    try:
        # the API's address (port 0: the one it bound), printed once it serves
        (page,) = demo.wait_for(
            r"device page  (http://127\.0\.0\.1:\d+)/web/device\.html", "the API"
        )
        base = page[1]
        printed = re.search(r"API key +(hck_\S+)", demo.output)
        assert printed is not None, demo.output
        key = printed[1]  # the demo's operator key
        # printed once the event is scheduled and its rows are materialised
        (line,) = demo.wait_for(r"live event   (\S+) .* goes live in 8 s", "the scheduled event")
        event = line[1]
        events = _get(f"{base}/v1/live/events", key)["events"]
        assert [e["id"] for e in events] == [event]
        # its rows come from the graph, in at most 3 segments
        seg = _get(f"{base}/v1/console/events/{event}/segments", key)
        assert seg["node"].startswith("live_event:")
        assert 1 <= len(seg["segments"]) <= 3 and seg["segments"][-1]["key"] == "all"
        assert seg["cardinality"] == 3 * len(seg["segments"])

        def live() -> Any:
            doc = _get(f"{base}/v1/live/events/{event}", key)
            return doc if doc["state"] == "live" else None

        went = _until("the event goes live", live, demo, 60)
        assert went["went_live_at"] >= went["original_starts_at"]

        def updated() -> Any:
            doc = _get(f"{base}/v1/console/dashboard?event={event}", key)
            ttu = doc["time_to_update"]
            return doc if ttu and ttu["stage"] == "live" and ttu["devices"] == devices else None

        dash = _until("every device shows the live stage", updated, demo, 60)
        assert dash["devices"] == {"gateway": True, "connected": devices}
        assert dash["prefetch"]["coverage_pct"] == 100.0  # everyone prefetched in the window
        assert dash["time_to_update"]["cdf"][-1]["fraction"] == 1.0
        # the CDF is coherent (how fast is bench/broadcast.py's question, not this test's)
        ttu = dash["time_to_update"]
        assert 0 <= ttu["p50_ms"] <= ttu["p99_ms"] <= ttu["max_ms"]
        ingest = _get(f"{base}/v1/console/ingest", key)
        assert ingest["engine"] is True and ingest["events"] > 0
        assert demo.stop() == 0, demo.output
    finally:
        if demo.proc.poll() is None:
            demo.kill()
    text = demo.output
    assert f"device page  {base}/web/device.html" in text
    assert f"console      {base}/web/console.html" in text
    assert f"API docs     {base}/docs" in text
    assert f"live event   {event}" in text and "goes live in 8 s" in text

"""``hopcast run`` end to end: history, snapshot through the pipeline, live records from the
company's services ingested while the API serves them, dead letters counted, clean stops on
SIGTERM and after --duration."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from childproc import Child
from hopcast.demo.records import BAD_KINDS, SOURCES
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetterStore

#: Runs the whole system in a subprocess for several seconds.
pytestmark = pytest.mark.slow

HOPCAST = [sys.executable, "-c", "from hopcast.cli import main; main()"]


#: Bound on one HTTP request to the demo's API (it shares its process with the pipeline and
#: the generator; on a loaded machine a request can wait seconds for the GIL).
REQUEST_TIMEOUT_S = 30
#: Bound on the demo's own stop (drain, engine stop, server stop); reached only if it hangs.
STOP_S = 120
#: The line the demo prints once its API serves, naming the address it bound (``--port 0``).
SERVING = r"device page  (http://127\.0\.0\.1:\d+)/web/device\.html"


#: The operator key the demo prints (and hands to the console in the URL fragment).
KEY = re.compile(r"API key +(hck_[0-9a-f]{12}_[A-Za-z0-9_-]{43})")


def _get(url: str, key: str | None = None) -> Any:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as r:
        body = r.read()
    return json.loads(body) if r.headers.get_content_type() == "application/json" else body


def _metric(text: str, name: str) -> dict[str, float]:
    """Samples of one Prometheus metric by their label string."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def test_hopcast_run_ingests_the_live_records_serves_them_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    data = tmp_path / "demo"
    args = [*HOPCAST, "run", "--data", str(data), "--port", "0", "--rate", "300"]
    args += ["--accounts", "60", "--history", "2000", "--bad-share", "0.03", "--no-progress"]
    args += ["--rotate-bytes", "65536"]
    demo = Child(args)
    try:
        (serving,) = demo.wait_for(SERVING, "the API")
        base = serving[1]
        printed = KEY.search(demo.output)
        assert printed is not None, demo.output
        key = printed[1]
        assert f"{base}/web/console.html#key={key}" in demo.output
        with pytest.raises(urllib.error.HTTPError) as refused:
            _get(f"{base}/v1/live/events")
        assert refused.value.code == 401
        served_at = time.time_ns() // 1000
        # A heavy member's journey fills with edges streamed from the browse log and the
        # playback table (Debezium), stamped after the API came up.
        deadline = time.monotonic() + 60
        types: set[str] = set()
        while time.monotonic() < deadline and not {"browsed", "started_watching"} <= types:
            time.sleep(0.5)
            journey = _get(f"{base}/v1/nodes/account:0/journey?since={served_at}&limit=200", key)
            assert all(e["ts"] >= served_at for e in journey["entries"])
            types = {e["type"] for e in journey["entries"]}
        assert {"browsed", "started_watching"} <= types, types
        # The pipeline's metrics are served by the API: every source ingested, dead letters.
        dead: dict[str, float] = {}
        while time.monotonic() < deadline and sum(dead.values()) < 3:
            time.sleep(0.5)
            text = _get(base + "/metrics", key).decode()
            dead = _metric(text, "hopcast_ingest_dead_letters_total")
        events = _metric(text, "hopcast_ingest_events_total")
        assert {f'{{source="{s}"}}' for s in SOURCES} <= set(events)
        assert sum(dead.values()) >= 3
        assert _metric(text, "hopcast_ingest_freshness_seconds_count")[""] > 100
        assert demo.stop(timeout=STOP_S) == 0, demo.output
    finally:
        if demo.proc.poll() is None:
            demo.kill()
    text = demo.output
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
    data = tmp_path / "demo"
    argv = ["--store", str(data), "--accounts", "40", "--history", "500", "--rate", "100"]
    argv += ["--port", "0", "--duration", "3", "--no-progress"]
    demo = Child([sys.executable, "-m", "hopcast.demo.run", *argv])
    try:
        demo.wait_for(SERVING, "the API")
        # no signal: it stops by itself once its 3 s are over
        assert demo.proc.wait(STOP_S) == 0, demo.output
    finally:
        if demo.proc.poll() is None:
            demo.kill()
    assert "stopped:" in demo.output
    assert (data / "graph" / "data.mdb").exists()
    assert {p.name for p in (data / "logs").iterdir()} == set(SOURCES)
    with Graph.open(data / "graph") as graph:
        assert graph.store.checkpoints()


def test_sigterm_while_the_history_loads_stops_after_the_batch(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    args = [*HOPCAST, "run", "--data", str(data), "--port", "0"]
    args += ["--accounts", "100", "--history", "5000000", "--no-progress"]
    demo = Child(args)
    try:
        # printed once SIGTERM is handled, right before the load (minutes for 5M interactions)
        demo.wait_for(r"loading 5,000,000 interactions", "the history load")
        assert demo.stop(timeout=STOP_S) == 0, demo.output
    finally:
        if demo.proc.poll() is None:
            demo.kill()
    assert "stopped while loading" in demo.output

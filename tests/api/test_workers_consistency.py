"""``hopcast serve --workers 2``: a write acknowledged by one worker is read back by the other.

Real processes: the CLI serves an LMDB directory (and a Redis store) with two uvicorn workers
on a port the kernel picks (``--port 0``; the port is read back from the server's log). Each
round reads the node on both workers (so both caches hold it), writes a new version through
whichever worker takes the POST, then reads it again many times over fresh connections: every
read must return the version just acknowledged, whichever worker answers. With the old 1 s node
cache, 2 of 60 such reads returned the previous version.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hopcast import Graph
from hopcast.api.server import WORKER_HEADER
from hopcast.durations import now_us

#: Bound on the server's start-up (two workers importing the app on a loaded machine) and stop.
START_TIMEOUT_S = 90
HOPCAST = str(Path(sys.executable).parent / "hopcast")
#: Write-then-read rounds, and reads after each write: 60 reads is what showed 2 stale ones.
ROUNDS, READS = 30, 8
#: uvicorn's start-up line, which names the port it bound.
#: The line ``hopcast serve`` prints once its socket is bound (before the workers start).
RUNNING = re.compile(rb"hopcast API on http://127\.0\.0\.1:(\d+)")


@contextmanager
def serving(store: str, *extra: str) -> Iterator[str]:
    """``hopcast --store STORE serve --workers 2 --port 0``, until it answers /healthz; yields
    its base URL."""
    proc = subprocess.Popen(
        [HOPCAST, "--store", store, "serve", "--workers", "2", "--port", "0", "--insecure", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    log: list[bytes] = []

    def pump() -> None:  # the pipe must be drained for as long as the server runs
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        port = None
        while port is None:
            left = deadline - time.monotonic()
            assert left > 0, f"the server logged no bound port in time: {b''.join(log)!r}"
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line, f"the server exited ({proc.poll()}) before binding: {b''.join(log)!r}"
            log.append(line)
            if m := RUNNING.search(line):
                port = int(m.group(1))
        base = f"http://127.0.0.1:{port}"
        while True:
            assert proc.poll() is None, f"the server exited: {b''.join(log)!r}"
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /healthz in time"
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def call(http: httpx.Client, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
    """(status, JSON, worker) over a fresh connection, so that both workers take requests."""
    r = http.request(method, path, json=body, headers={"connection": "close"})
    return r.status_code, r.json(), r.headers[WORKER_HEADER]


def check_read_your_writes(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as http:
        _check_read_your_writes(http)


def _check_read_your_writes(http: httpx.Client) -> None:
    node = "account:ryw"
    start = now_us()
    crossed = 0  # reads answered by the worker that did not take the write
    readers: set[str] = set()
    for i in range(ROUNDS):
        for _ in range(4):  # warm both workers' caches with the current version
            call(http, "GET", f"/v1/nodes/{node}")
        mutation = {
            "kind": "node_upsert",
            "node": node,
            "ts": start + i,
            "id": f"ryw-{i}",
            "props": {"plan": f"v{i}"},
        }
        status, body, writer = call(http, "POST", "/v1/mutations", {"mutations": [mutation]})
        assert (status, body["applied"], body["skipped"]) == (200, 1, 0), body
        for _ in range(READS):
            status, got, reader = call(http, "GET", f"/v1/nodes/{node}")
            assert status == 200, got
            assert got["props"] == {"plan": f"v{i}"}, (
                f"round {i}: worker {reader} read {got['props']} after worker {writer} "
                f"acknowledged v{i}"
            )
            readers.add(reader)
            crossed += reader != writer
    assert len(readers) == 2, f"only {readers} answered: the test did not cross workers"
    assert crossed > 0, "no read was answered by the worker that did not take the write"


def test_two_lmdb_workers_read_every_acknowledged_write(tmp_path: Path) -> None:
    store = tmp_path / "graph"
    with Graph.open(store):
        pass  # an empty store, with the demo schema's namespaces
    with serving(str(store)) as base:
        check_read_your_writes(base)


def test_two_redis_workers_read_every_acknowledged_write(redis_url: str, redis_prefix: str) -> None:
    with serving(f"{redis_url}?prefix={redis_prefix}") as base:
        check_read_your_writes(base)


@pytest.mark.parametrize("value", ["bounded", "read-your-writes"])
def test_serve_accepts_both_consistency_models(tmp_path: Path, value: str) -> None:
    store = tmp_path / "graph"
    with Graph.open(store):
        pass
    with serving(str(store), "--consistency", value) as base, httpx.Client(base_url=base) as http:
        status, body, _ = call(http, "GET", "/v1/nodes/account:none")
        assert status == 404, body

"""``hopcast serve --workers 2`` over Redis (one server, and a Redis Cluster): real processes,
stateless replicas of one store.

A graph is written into a real Redis (and the same mutations into an LMDB copy); the CLI serves
the Redis store with two uvicorn workers in a subprocess. Many queries over fresh connections
must answer exactly what the same app answers over the LMDB copy, both workers must have served
(each names its pid in ``X-Hopcast-Worker``, checked against the server's children in /proc), and
data written into Redis afterwards by this process shows in both workers' answers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.seed import TestClient
from childproc import Child
from hopcast import EdgeUpsert, Graph, NodeUpsert
from hopcast.api import create_app
from hopcast.api.server import WORKER_HEADER, worker_app
from hopcast.durations import HOUR, now_us
from hopcast.graph.mutations import Mutation
from hopcast.kv.redis import RedisKV

#: Bound on the server's start-up (two workers importing the app on a loaded machine) and stop.
START_TIMEOUT_S = 90
HOPCAST = str(Path(sys.executable).parent / "hopcast")
ACCOUNTS, PROFILES_PER_ACCOUNT, TITLES = 4, 2, 30


def company(now: int, seed: int = 3) -> list[Mutation]:
    """Accounts with profiles and a device each, titles, and a few days of interactions."""
    rng = random.Random(seed)
    out: list[Mutation] = []
    for t in range(TITLES):
        out.append(NodeUpsert(f"title:{t}", now - 90 * 24 * HOUR, f"t{t}", {"name": f"T{t}"}))
    for a in range(ACCOUNTS):
        out.append(NodeUpsert(f"account:{a}", now - 60 * 24 * HOUR, f"a{a}", {"plan": "basic"}))
        out.append(
            EdgeUpsert(f"account:{a}", "logged_in_from", f"device:{a}", now - HOUR, f"d{a}", {})
        )
        for p in range(PROFILES_PER_ACCOUNT):
            profile = f"profile:{a}-{p}"
            out.append(NodeUpsert(profile, now - 50 * 24 * HOUR, f"p{a}{p}", {"name": profile}))
            out.append(
                EdgeUpsert(f"account:{a}", "has_profile", profile, now - 50 * 24 * HOUR, "h")
            )
            for i in range(25):
                ts = now - rng.randrange(1, 20 * 24) * HOUR
                title = f"title:{rng.randrange(TITLES)}"
                kind = rng.choice(["started_watching", "browsed"])
                props: dict[str, Any] = (
                    {"position_s": rng.randrange(3600)} if kind == "started_watching" else {}
                )
                out.append(EdgeUpsert(profile, kind, title, ts, f"{profile}:{i}", props))
    return out


def queries() -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of every query kind the API serves over this graph."""
    out: list[tuple[str, str, Any]] = []
    for a in range(ACCOUNTS):
        out.append(("GET", f"/v1/nodes/account:{a}/journey?limit=40", None))
        out.append(("GET", f"/v1/nodes/account:{a}/neighbours?edge=has_profile", None))
        for p in range(PROFILES_PER_ACCOUNT):
            profile = f"profile:{a}-{p}"
            out.append(("GET", f"/v1/nodes/{profile}/neighbours?edge=started_watching", None))
            out.append(("GET", f"/v1/nodes/{profile}/neighbours?edge=browsed&limit=5", None))
            out.append(("GET", f"/v1/nodes/{profile}/count?edge=started_watching,browsed", None))
            out.append(("GET", f"/v1/nodes/{profile}", None))
            hops = [
                {"edge": ["started_watching"], "direction": "out"},
                {"edge": ["started_watching"], "direction": "in"},
            ]
            out.append(("POST", "/v1/query/traverse", {"start": profile, "hops": hops}))
    for t in range(0, TITLES, 3):
        out.append(("GET", f"/v1/nodes/title:{t}/neighbours?edge=browsed&direction=in", None))
    return out


def ask(base: str, method: str, path: str, body: Any) -> tuple[int, Any, int]:
    """(status, JSON, worker pid) over a fresh connection (so the workers share them)."""
    with httpx.Client(base_url=base, timeout=30) as http:
        r = http.request(method, path, json=body, headers={"connection": "close"})
    return r.status_code, r.json(), int(r.headers[WORKER_HEADER])


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


@pytest.fixture(params=["redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, redis_prefix: str) -> str:
    """The session's Redis or Redis Cluster, with a key prefix of this test's own in the URL
    (the form ``hopcast --store`` takes)."""
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
    else:
        url = "redis+cluster://" + request.getfixturevalue("redis_cluster_url").partition("://")[2]
    return f"{url}?prefix={redis_prefix}"


@contextmanager
def serving(store_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``hopcast --store URL serve --workers 2 --port 0`` in a subprocess, once it has said
    where it listens (the socket listens before the workers start: requests wait for them)."""
    server = Child(
        [HOPCAST, "--store", store_url, "serve", "--workers", "2", "--port", "0", "--insecure"]
    )
    try:
        (line,) = server.wait_for(
            r"hopcast API on (http://127\.0\.0\.1:\d+) with 2 workers", "the API"
        )
        # both workers serve (uvicorn logs each one's start), so both can answer the queries
        server.wait_for("Application startup complete", "both workers started", count=2)
        yield line[1], server.proc
    finally:
        server.stop(signal.SIGINT, START_TIMEOUT_S)


def test_two_workers_over_redis_answer_like_lmdb_and_see_new_writes(
    store_url: str, tmp_path: Path
) -> None:
    now = now_us()
    data = company(now)
    with Graph.open(store_url) as shared:
        assert shared.store.kv.name == "redis"
        shared.apply(data)
    reference = Graph.open(tmp_path / "lmdb", sync=False)
    reference.apply(data)
    try:
        with serving(store_url) as (base, proc), TestClient(create_app(reference)) as local:

            def expected(method: str, path: str, body: Any) -> Any:
                r = local.request(method, path, json=body)
                assert r.status_code == 200, (path, r.text)
                return r.json()

            calls = queries() * 4
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda c: ask(base, *c), calls))
            pids: set[int] = set()
            for (method, path, body), (status, got, pid) in zip(calls, answers, strict=True):
                assert status == 200, (path, got)
                assert got == expected(method, path, body), path
                pids.add(pid)
            # Both workers served, and they are the server's own processes.
            assert len(pids) == 2, pids
            assert {parent_of(pid) for pid in pids} == {proc.pid}

            # A write into Redis from this process shows in every replica's answers: edge lists
            # are read from Redis on every query, nodes after at most the node cache's TTL (1 s).
            new: list[Mutation] = [
                EdgeUpsert("profile:0-0", "started_watching", "title:99", now, "new", {}),
                NodeUpsert("profile:0-0", now, "new-n", {"language": "nl"}),
            ]
            with Graph.open(store_url) as writer:
                writer.apply(new)
            reference.apply(new)
            edges_path, node_path = "/v1/nodes/profile:0-0/neighbours", "/v1/nodes/profile:0-0"
            want_edges = expected("GET", edges_path, None)
            assert want_edges["edges"][0]["dst"] == "title:99"
            want_node = expected("GET", node_path, None)
            assert want_node["props"]["language"] == "nl"
            edges_from: set[int] = set()
            node_from: set[int] = set()
            deadline = time.monotonic() + 30
            while edges_from != pids or node_from != pids:
                assert time.monotonic() < deadline, (edges_from, node_from)
                paths = [edges_path, node_path] * 4
                with ThreadPoolExecutor(4) as pool:
                    got = list(pool.map(lambda p: ask(base, "GET", p, None), paths))
                for path, (status, doc, pid) in zip(paths, got, strict=True):
                    assert status == 200
                    if path == edges_path:
                        assert doc == want_edges  # never stale
                        edges_from.add(pid)
                    elif doc == want_node:
                        node_from.add(pid)
                time.sleep(0.1)
    finally:
        reference.close()


def test_serve_refuses_workers_for_a_graph_in_memory() -> None:
    done = subprocess.run(
        [HOPCAST, "--store", "memory://", "serve", "--workers", "2", "--insecure"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2
    assert "needs a graph stored in LMDB" in done.stderr and "Redis" in done.stderr


def test_a_worker_opens_the_redis_store_and_prefix_named_by_its_environment(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = now_us()
    kv = RedisKV(redis_url, prefix=redis_prefix)
    with Graph.open(kv=kv) as graph:
        graph.apply(company(now))
        schema = graph.schema.source
    monkeypatch.setenv("HOPCAST_API_STORE", redis_url)
    monkeypatch.setenv("HOPCAST_API_SCHEMA", schema)
    monkeypatch.setenv("HOPCAST_API_REDIS_PREFIX", redis_prefix)
    app = worker_app()
    try:
        kv_seen = app.state.graph.store.kv
        assert (kv_seen.name, kv_seen.prefix) == ("redis", redis_prefix)
        with TestClient(app) as http:
            r = http.get("/v1/nodes/profile:0-0/neighbours", params={"edge": "browsed"})
        assert r.status_code == 200 and r.json()["edges"]
        assert r.headers[WORKER_HEADER] == str(os.getpid())
    finally:
        app.state.graph.close()

"""Query latency over Redis vs LMDB: the same graph, the same queries, the same engine.

One run loads the benchmark graph of ``bench/graph.py`` (the demo company, with its heavy
accounts) into an LMDB store and into a Redis server started for the run (``deploy/redis.sh``
on a free loopback port, stopped at the end), checks that both answer a sample of queries the
same, then times each query kind of ``bench/graph.py`` on both:

* in process (the Python API: ``QueryEngine`` over ``GraphStore``) -- 1-hop LATEST top-20,
  3-hop bounded traversal, journey (last 100 in 30 days) and count (30 days);
* over HTTP (``make_server`` in a subprocess, one keep-alive connection, sequential requests).

With ``--cluster`` (``run(..., cluster=True)``) a 3-node Redis Cluster (``deploy/redis.sh
cluster-start``) is a third store.

Rows follow the benchmark contract: one per (system, measure) with ``system``
``hopcast-lmdb`` / ``hopcast-redis`` (/ ``hopcast-redis-cluster``), ``unit`` ``us``, ``p50``,
``p99`` and the run's parameters; plus a ``redis/lmdb`` (``redis-cluster/lmdb``) row per
measure with the ratios (unit ``x``: > 1 means Redis is slower), and the load rate of each
store. :func:`run` returns them (``bench/scale.py`` calls it);
running this file prints the table and writes ``bench/results/scale_query.jsonl``
(``scale_query-quick.jsonl`` with ``--quick``).

    python bench/scale_query.py             # 1M edges
    python bench/scale_query.py --quick     # small, < 60 s
    python bench/scale_query.py --quick --cluster
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph import (
    JOURNEY_INTERACTIONS,
    JOURNEY_MEMBERS,
    THREE_HOP,
    THREE_HOP_FANOUT,
    Hopcast,
    Recorder,
    batches,
    company_for,
    free_port,
    generate,
    start_server,
    time_calls,
)
from hopcast.api.server import GC_THRESHOLDS
from hopcast.durations import DAY
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.base import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.redis import RedisKV
from hopcast.query import spec as q

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REDIS_SCRIPT = ROOT / "deploy" / "redis.sh"
#: Edges and timed calls per query kind of a quick run (bench/graph.py's quick sizes; the
#: whole run stays under 60 s).
QUICK_EDGES, QUICK_QUERIES = 100_000, 300
FULL_QUERIES = 2_000
#: Mutations per atomic write while loading. Smaller than bench/graph.py's: on Redis a batch
#: is one Lua script, which blocks the server while it runs.
LOAD_BATCH = 5_000
#: A fixed "now", so runs are comparable (as in bench/graph.py).
NOW = 1_800_000_000_000_000
MEASURES = {
    "1-hop latest top-20": "one_hop_latest",
    "3-hop bounded (fan-out 20)": "three_hop",
    "journey last 100 in 30d": "journey",
    "count 30d": "count",
}

console = Console(stderr=True)


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis on a free loopback port for the run (deploy/redis.sh), stopped afterwards."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="hopcast-bench-redis-")
    cmd = [str(REDIS_SCRIPT), "start", "--port", str(port), "--dir", directory]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        cmd[1] = "stop"
        subprocess.run(cmd, check=False, capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def cluster_ports(nodes: int) -> int:
    """The first of ``nodes`` consecutive free loopback ports whose cluster bus ports (+10000)
    are free too, below the ephemeral range."""
    for _ in range(100):
        base = random.randrange(10_000, 22_000 - nodes)
        socks: list[socket.socket] = []
        try:
            for port in [*range(base, base + nodes), *range(base + 10_000, base + 10_000 + nodes)]:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free consecutive ports for a Redis Cluster")


@contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of ``nodes`` masters for the run (deploy/redis.sh cluster-start)."""
    port = cluster_ports(nodes)
    directory = tempfile.mkdtemp(prefix="hopcast-bench-redis-cluster-")
    cmd = [str(REDIS_SCRIPT), "cluster-start", "--port", str(port), "--nodes", str(nodes)]
    cmd += ["--dir", directory]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    try:
        yield f"redis+cluster://127.0.0.1:{port}"
    finally:
        cmd[1] = "cluster-stop"
        subprocess.run(cmd, check=False, capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def load(kv: KVStore, edges: int, seed: int) -> tuple[GraphStore, float, int]:
    """The benchmark graph written into ``kv``: (store, seconds, mutations)."""
    company = company_for(edges, seed)
    store = GraphStore(kv, Schema.demo(), clock=lambda: NOW)
    written, t0 = 0, time.perf_counter()
    for batch in batches(generate(company, edges, NOW - 90 * DAY, NOW), LOAD_BATCH):
        store.apply(batch)
        written += len(batch)
    return store, time.perf_counter() - t0, written


def query_calls(edges: int, seed: int, n: int) -> dict[str, list[tuple[Any, ...]]]:
    """The timed calls of each query kind, picked like bench/graph.py picks them: 10% of them
    on the heavy members."""
    company = company_for(edges, seed)
    rng = random.Random(seed)
    profiles, accounts = company.profile_ids(), company.account_ids()
    heavy_profiles, heavy_accounts = company.heavy_profile_ids(), company.heavy_account_ids()

    def profile() -> str:
        return rng.choice(heavy_profiles) if rng.random() < 0.1 else rng.choice(profiles)

    def account() -> str:
        return rng.choice(heavy_accounts) if rng.random() < 0.1 else rng.choice(accounts)

    since100, since30 = NOW - 100 * DAY, NOW - 30 * DAY
    return {
        "1-hop latest top-20": [(profile(), "browsed", since100, 20) for _ in range(n)],
        "3-hop bounded (fan-out 20)": [
            (profile(), *THREE_HOP, since100, THREE_HOP_FANOUT) for _ in range(max(1, n // 4))
        ],
        "journey last 100 in 30d": [
            (account(), JOURNEY_MEMBERS, JOURNEY_INTERACTIONS, since30, NOW, 100) for _ in range(n)
        ],
        "count 30d": [(profile(), "browsed", "out", since30, NOW) for _ in range(n)],
    }


def http_requests(
    calls: dict[str, list[tuple[Any, ...]]],
) -> dict[str, list[tuple[str, str, bytes | None]]]:
    """The same queries as API requests: (method, path, body)."""
    out: dict[str, list[tuple[str, str, bytes | None]]] = {}
    out["HTTP 1-hop latest top-20"] = [
        ("GET", f"/v1/nodes/{c[0]}/neighbours?edge={c[1]}&since={c[2]}&limit={c[3]}", None)
        for c in calls["1-hop latest top-20"]
    ]
    out["HTTP 3-hop bounded (fan-out 20)"] = [
        (
            "POST",
            "/v1/query/traverse",
            json.dumps(
                {
                    "start": c[0],
                    "hops": [
                        {"edge": [e], "direction": d} for e, d in zip(c[1], c[2], strict=True)
                    ],
                    "since": c[3],
                    "limits": {"edges_per_hop": c[4], "max_work": q.MAX_WORK},
                }
            ).encode(),
        )
        for c in calls["3-hop bounded (fan-out 20)"]
    ]
    out["HTTP journey last 100 in 30d"] = [
        ("GET", f"/v1/nodes/{c[0]}/journey?since={c[3]}&until={c[4]}&limit={c[5]}", None)
        for c in calls["journey last 100 in 30d"]
    ]
    out["HTTP count 30d"] = [
        ("GET", f"/v1/nodes/{c[0]}/count?edge={c[1]}&since={c[3]}&until={c[4]}", None)
        for c in calls["count 30d"]
    ]
    return out


def time_http(
    url: str, requests: dict[str, list[tuple[str, str, bytes | None]]]
) -> dict[str, tuple[float, float]]:
    """p50/p99 (µs) per measure over one keep-alive connection, after one untimed pass."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"content-type": "application/json"}

    def call(method: str, path: str, body: bytes | None) -> None:
        conn.request(method, path, body=body, headers=headers if body else {})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")

    try:
        for reqs in requests.values():
            for req in reqs:
                call(*req)
        return {measure: time_calls(call, reqs) for measure, reqs in requests.items()}
    finally:
        conn.close()


def run(
    edges: int, quick: bool, *, http: bool = True, cluster: bool = False, seed: int = 7
) -> list[dict[str, Any]]:
    """Load the graph into LMDB and into a fresh Redis (and a fresh 3-node Redis Cluster with
    ``cluster``), time every query kind on each.

    Returns:
        The result rows (see the module docstring).
    """
    queries = QUICK_QUERIES if quick else FULL_QUERIES
    rec = Recorder({"edges": edges, "queries": queries, "mode": "quick" if quick else "full"})
    calls = query_calls(edges, seed, queries)
    work = Path(tempfile.mkdtemp(prefix="hopcast-bench-scale-query-"))
    stores: dict[str, GraphStore] = {}
    try:
        with ExitStack() as services:
            where = {"hopcast-lmdb": str(work / "graph.lmdb")}
            where["hopcast-redis"] = services.enter_context(redis_server())
            if cluster:
                where["hopcast-redis-cluster"] = services.enter_context(redis_cluster())
            for system, url in where.items():
                kv = LmdbKV(url, sync=False) if system == "hopcast-lmdb" else RedisKV(url)
                with console.status(f"loading {edges:,} edges into {system}"):
                    stores[system], seconds, written = load(kv, edges, seed)
                rec.rate(system, "load, batches of 5k", written / seconds, "writes/s")
                console.print(f"{system}: {written:,} mutations loaded in {seconds:.1f} s")

            engines = {system: Hopcast(store, NOW) for system, store in stores.items()}
            for measure, method in MEASURES.items():
                for args in calls[measure][:25]:
                    want = getattr(engines["hopcast-lmdb"], method)(*args)
                    for system, engine in engines.items():
                        if getattr(engine, method)(*args) != want:
                            raise AssertionError(f"{system} disagrees on {measure} {args[:1]}")
            console.print("every store answers the sampled queries alike")

            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)  # the API server's setting, for all alike
            for measure, method in MEASURES.items():
                for system, engine in engines.items():
                    p50, p99 = time_calls(getattr(engine, method), calls[measure])
                    rec.latency(system, measure, p50, p99)
                    console.print(f"{measure:32} {system:21} p50 {p50:8.1f} µs  p99 {p99:8.1f} µs")

            if http:
                requests = http_requests(calls)
                for system, store_url in where.items():
                    # start_server hands str(store) to Graph.open, which takes a URL as well
                    proc, url = start_server(store_url, NOW)  # type: ignore[arg-type]
                    try:
                        for measure, (p50, p99) in time_http(url, requests).items():
                            rec.latency(system, measure, p50, p99)
                            console.print(
                                f"{measure:32} {system:21} p50 {p50:8.1f} µs  p99 {p99:8.1f} µs"
                            )
                    finally:
                        proc.terminate()
                        proc.wait(10)
            for store in stores.values():
                store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rec.rows + ratios(rec.rows)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per latency measure, one ``redis/lmdb`` row (and ``redis-cluster/lmdb``): p50 and p99
    of the Redis store over those of LMDB."""
    by = {(r["system"], r["measure"]): r for r in rows if r["unit"] == "us"}
    out = []
    for (system, measure), redis in by.items():
        lmdb = by.get(("hopcast-lmdb", measure))
        if system == "hopcast-lmdb" or lmdb is None:
            continue
        params = {k: v for k, v in lmdb.items() if k not in ("system", "measure", "unit")}
        params |= {
            "p50": round(redis["p50"] / lmdb["p50"], 2),
            "p99": round(redis["p99"] / lmdb["p99"], 2),
        }
        name = system.removeprefix("hopcast-") + "/lmdb"
        out.append({"system": name, "measure": measure, "unit": "x"} | params)
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    """The printed table, made from the result rows."""
    systems = list(dict.fromkeys(r["system"] for r in rows if r["unit"] == "us"))
    others = [s for s in systems if s != "hopcast-lmdb"]
    t = Table(title="query latency, Redis vs LMDB (µs; ratio > 1: Redis slower)")
    t.add_column("measure")
    for system in systems:
        t.add_column(f"{system.removeprefix('hopcast-')} p50 / p99", justify="right")
    for system in others:
        t.add_column(f"{system.removeprefix('hopcast-')}/lmdb", justify="right")
    by = {(r["system"], r["measure"]): r for r in rows}
    for measure in dict.fromkeys(r["measure"] for r in rows if r["unit"] == "us"):
        cells = [measure]
        for system in systems:
            r = by.get((system, measure))
            cells.append("" if r is None else f"{r['p50']:,.1f} / {r['p99']:,.1f}")
        for system in others:
            r = by.get((system.removeprefix("hopcast-") + "/lmdb", measure))
            cells.append("" if r is None else f"{r['p50']:.2f}x / {r['p99']:.2f}x")
        t.add_row(*cells)
    for r in rows:
        if r["unit"] == "writes/s":
            t.add_row(f"{r['measure']} ({r['system']})", f"{r['value']:,.0f} writes/s")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=1_000_000, help="interaction edges to generate")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_EDGES:,} edges (< 60 s)")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP measurements")
    ap.add_argument("--cluster", action="store_true", help="also a 3-node Redis Cluster")
    args = ap.parse_args(argv)
    edges = QUICK_EDGES if args.quick else args.edges
    t0 = time.perf_counter()
    rows = run(edges, args.quick, http=not args.no_http, cluster=args.cluster)
    Console(width=160).print(table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    # A quick run does not overwrite the recorded full run (bench/graph.py's convention).
    path = RESULTS / ("scale_query-quick.jsonl" if args.quick else "scale_query.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Query latency over Redis vs LMDB: the same graph, the same queries, the same engine.

One run loads the benchmark graph of ``bench/graph.py`` (the demo company, with its heavy
accounts) into an LMDB store and into a Redis server started for the run (``deploy/redis.sh``
on a free loopback port, stopped at the end), checks that both answer a sample of queries the
same, then times each query kind of ``bench/graph.py`` on both:

* in process (the Python API: ``QueryEngine`` over ``GraphStore``) -- 1-hop LATEST top-20,
  3-hop bounded traversal, journey (last 100 in 30 days) and count (30 days);
* over HTTP (``make_server`` in a subprocess, one keep-alive connection, sequential requests).

Rows follow the benchmark contract: one per (system, measure) with ``system``
``hopcast-lmdb`` / ``hopcast-redis``, ``unit`` ``us``, ``p50``, ``p99`` and the run's parameters;
plus a ``redis/lmdb`` row per measure with the ratios (unit ``x``: > 1 means Redis is slower),
and the load rate of each store. :func:`run` returns them (``bench/scale.py`` calls it);
running this file prints the table and writes ``bench/results/scale_query.jsonl``
(``scale_query-quick.jsonl`` with ``--quick``).

    python bench/scale_query.py             # 1M edges
    python bench/scale_query.py --quick     # small, < 60 s
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
SYSTEMS = ("hopcast-lmdb", "hopcast-redis")
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


def run(edges: int, quick: bool, *, http: bool = True, seed: int = 7) -> list[dict[str, Any]]:
    """Load the graph into LMDB and into a fresh Redis, time every query kind on both.

    Returns:
        The result rows (see the module docstring).
    """
    queries = QUICK_QUERIES if quick else FULL_QUERIES
    rec = Recorder({"edges": edges, "queries": queries, "mode": "quick" if quick else "full"})
    calls = query_calls(edges, seed, queries)
    work = Path(tempfile.mkdtemp(prefix="hopcast-bench-scale-query-"))
    stores: dict[str, GraphStore] = {}
    where: dict[str, str] = {}
    try:
        with redis_server() as redis_url:
            kvs: dict[str, KVStore] = {
                "hopcast-lmdb": LmdbKV(work / "graph.lmdb", sync=False),
                "hopcast-redis": RedisKV(redis_url),
            }
            where = {"hopcast-lmdb": str(work / "graph.lmdb"), "hopcast-redis": redis_url}
            for system, kv in kvs.items():
                with console.status(f"loading {edges:,} edges into {system}"):
                    stores[system], seconds, written = load(kv, edges, seed)
                rec.rate(system, "load, batches of 5k", written / seconds, "writes/s")
                console.print(f"{system}: {written:,} mutations loaded in {seconds:.1f} s")

            engines = {system: Hopcast(store, NOW) for system, store in stores.items()}
            for measure, method in MEASURES.items():
                for args in calls[measure][:25]:
                    want = getattr(engines["hopcast-lmdb"], method)(*args)
                    got = getattr(engines["hopcast-redis"], method)(*args)
                    if got != want:
                        raise AssertionError(f"Redis and LMDB disagree on {measure} {args[:1]}")
            console.print("Redis and LMDB answer the sampled queries alike")

            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)  # the API server's setting, for both alike
            for measure, method in MEASURES.items():
                for system, engine in engines.items():
                    p50, p99 = time_calls(getattr(engine, method), calls[measure])
                    rec.latency(system, measure, p50, p99)
                    console.print(f"{measure:32} {system:14} p50 {p50:8.1f} µs  p99 {p99:8.1f} µs")

            if http:
                requests = http_requests(calls)
                for system in SYSTEMS:
                    # start_server hands str(store) to Graph.open, which takes a URL as well
                    proc, url = start_server(where[system], NOW)  # type: ignore[arg-type]
                    try:
                        for measure, (p50, p99) in time_http(url, requests).items():
                            rec.latency(system, measure, p50, p99)
                            console.print(
                                f"{measure:32} {system:14} p50 {p50:8.1f} µs  p99 {p99:8.1f} µs"
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
    """One ``redis/lmdb`` row per latency measure: p50 and p99 of Redis over those of LMDB."""
    by = {(r["system"], r["measure"]): r for r in rows if r["unit"] == "us"}
    out = []
    for (system, measure), lmdb in by.items():
        redis = by.get(("hopcast-redis", measure))
        if system != "hopcast-lmdb" or redis is None:
            continue
        params = {k: v for k, v in lmdb.items() if k not in ("system", "measure", "unit")}
        params |= {
            "p50": round(redis["p50"] / lmdb["p50"], 2),
            "p99": round(redis["p99"] / lmdb["p99"], 2),
        }
        out.append({"system": "redis/lmdb", "measure": measure, "unit": "x"} | params)
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    """The printed table, made from the result rows."""
    t = Table(title="query latency, Redis vs LMDB (µs; ratio > 1: Redis slower)")
    for col in ("measure", "LMDB p50", "LMDB p99", "Redis p50", "Redis p99", "ratio p50/p99"):
        t.add_column(col, justify="left" if col == "measure" else "right")
    by = {(r["system"], r["measure"]): r for r in rows}
    for measure in dict.fromkeys(r["measure"] for r in rows if r["unit"] == "us"):
        lmdb, redis, ratio = (by.get((s, measure)) for s in (*SYSTEMS, "redis/lmdb"))
        if lmdb is None or redis is None or ratio is None:
            continue
        t.add_row(
            measure,
            f"{lmdb['p50']:,.1f}",
            f"{lmdb['p99']:,.1f}",
            f"{redis['p50']:,.1f}",
            f"{redis['p99']:,.1f}",
            f"{ratio['p50']:.2f} / {ratio['p99']:.2f}",
        )
    for r in rows:
        if r["unit"] == "writes/s":
            t.add_row(f"{r['measure']} ({r['system']})", f"{r['value']:,.0f} writes/s")
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=1_000_000, help="interaction edges to generate")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_EDGES:,} edges (< 60 s)")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP measurements")
    args = ap.parse_args(argv)
    edges = QUICK_EDGES if args.quick else args.edges
    t0 = time.perf_counter()
    rows = run(edges, args.quick, http=not args.no_http)
    Console(width=120).print(table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    # A quick run does not overwrite the recorded full run (bench/graph.py's convention).
    path = RESULTS / ("scale_query-quick.jsonl" if args.quick else "scale_query.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

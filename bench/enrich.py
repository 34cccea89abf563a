"""Enrichment look-ups: side tables in the graph store (the Flink engine) against side tables in
the task's memory (the embedded engine; what broadcast state would hold), in the same run.

A ``titles`` table of ``--rows`` rows is stored as the Flink writer stores it; then ``--reads``
look-ups of Zipf-skewed keys (a few hot titles take most reads), timed in one loop, through:

* ``memory``: :class:`~hopcast.stream.operators.SideTable` (the peer: a dict);
* ``store cached``: :class:`~hopcast.stream.engines.sidestore.StoreSideTable` with its defaults
  (token checked every 100 ms), on a table nobody changes;
* ``store cached, changing``: the same while the table changes every ``--change-every-ms`` (each
  change drops the reader's cache; the writes are not timed);
* ``store uncached``: every look-up reads the store (``check_ms=0, max_age_ms=0``).

On LMDB, and on Redis with ``--redis URL`` (a database that is flushed). Prints µs per
look-up, the ratio to ``memory``, and store reads per 1,000 look-ups; ``--record`` appends the
rows to ``bench/results/enrich.jsonl``. Compare with the real mapping's 43-83 µs per event.

    python bench/enrich.py --quick
    python bench/enrich.py --redis redis://127.0.0.1:6379/9 --record
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from hopcast.graphdb import Graph
from hopcast.stream.engines.sidestore import SideRow, StoreSideTable, side_extra
from hopcast.stream.operators import SideTable

#: Zipf exponent of the keys looked up (as bench/node_cache.py: hot items take most reads).
SKEW = 1.1
RESULTS = Path(__file__).with_name("results") / "enrich.jsonl"


def row(i: int, version: int) -> dict[str, Any]:
    return {"title_id": str(i), "name": f"Title {i} v{version}", "kind": "movie", "year": 2000}


def fill(graph: Graph, rows: int) -> None:
    batch = [SideRow("titles", str(i), 1, row(i, 1)) for i in range(rows)]
    for start in range(0, rows, 5000):
        graph.store.apply([], extra=side_extra(graph.store, batch[start : start + 5000]))


def keys(rows: int, reads: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) ** SKEW for i in range(rows)]
    return [str(i) for i in rng.choices(range(rows), weights, k=reads)]


def timed(get: Any, ks: list[str], tick: Any = None) -> float:
    """µs per look-up (``tick`` runs untimed every 256 look-ups)."""
    total = 0
    clock = time.perf_counter_ns
    for start in range(0, len(ks), 256):
        if tick is not None:
            tick()
        t0 = clock()
        for k in ks[start : start + 256]:
            get(k)
        total += clock() - t0
    return total / len(ks) / 1000


def measure(graph: Graph, backend: str, rows: int, ks: list[str], change_ms: int) -> list[dict]:
    memory = SideTable("titles")
    for i in range(rows):
        memory.upsert(str(i), row(i, 1), 1)
    out: list[dict[str, Any]] = []

    def report(name: str, us: float, reads: int | None) -> None:
        per_1k = None if reads is None else round(reads * 1000 / len(ks), 2)
        out.append(
            {"backend": backend, "path": name, "us_per_lookup": round(us, 3),
             "store_reads_per_1k": per_1k}
        )  # fmt: skip

    base = timed(memory.get, ks)
    report("memory", base, None)
    cached = StoreSideTable("titles", graph.store.kv)
    timed(cached.get, ks[:2000])  # warm-up: the hot keys
    cached.reads = 0
    report("store cached", timed(cached.get, ks), cached.reads)
    changing = StoreSideTable("titles", graph.store.kv)
    timed(changing.get, ks[:2000])
    changing.reads = 0
    state = {"next": time.monotonic(), "version": 2}

    def change() -> None:
        if time.monotonic() >= state["next"]:
            v = state["version"]
            i = v % rows
            extra = side_extra(graph.store, [SideRow("titles", str(i), v, row(i, v))])
            graph.store.apply([], extra=extra)
            state["version"] = v + 1
            state["next"] = time.monotonic() + change_ms / 1000

    report("store cached, changing", timed(changing.get, ks, change), changing.reads)
    uncached = StoreSideTable("titles", graph.store.kv, check_ms=0, max_age_ms=0)
    n = min(len(ks), 20_000)
    report("store uncached", timed(uncached.get, ks[:n]), uncached.reads * len(ks) // n)
    for r in out:
        r["ratio_to_memory"] = round(r["us_per_lookup"] / base, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--reads", type=int, default=500_000)
    ap.add_argument("--change-every-ms", type=int, default=50)
    ap.add_argument("--redis", metavar="URL", help="also measure on this Redis database")
    ap.add_argument("--quick", action="store_true", help="10k rows, 100k look-ups")
    ap.add_argument("--record", action="store_true", help=f"append to {RESULTS}")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.reads = 10_000, 100_000
    ks = keys(args.rows, args.reads)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d, Graph.open(Path(d) / "g", sync=False) as graph:
        fill(graph, args.rows)
        results += measure(graph, "lmdb", args.rows, ks, args.change_every_ms)
    if args.redis:
        import redis

        redis.Redis.from_url(args.redis).flushdb()
        with Graph.open(args.redis) as graph:
            fill(graph, args.rows)
            results += measure(graph, "redis", args.rows, ks, args.change_every_ms)
        redis.Redis.from_url(args.redis).flushdb()
    print(f"{'backend':8} {'path':24} {'µs/look-up':>11} {'× memory':>9} {'reads/1k':>9}")
    for r in results:
        reads = "" if r["store_reads_per_1k"] is None else f"{r['store_reads_per_1k']:g}"
        print(f"{r['backend']:8} {r['path']:24} {r['us_per_lookup']:11.3f} "
              f"{r['ratio_to_memory']:9.2f} {reads:>9}")  # fmt: skip
    if args.record:
        meta = {
            "rows": args.rows,
            "reads": args.reads,
            "change_every_ms": args.change_every_ms,
            "load": os.getloadavg()[0],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with RESULTS.open("a") as f:
            for r in results:
                f.write(json.dumps(meta | r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

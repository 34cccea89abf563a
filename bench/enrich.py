"""Enrichment look-ups: side tables in the graph store (the Flink engine) against side tables in
the task's memory (the embedded engine; what broadcast state would hold), in the same run.

A ``titles`` table of ``--rows`` rows is stored as the Flink writer stores it; then ``--reads``
look-ups of Zipf-skewed keys (a few hot titles take most reads), timed in one loop, through:

* ``memory``: :class:`~hopcast.stream.operators.SideTable` (the peer: a dict);
* ``store cached``: :class:`~hopcast.stream.engines.sidestore.StoreSideTable` with its defaults
  (token checked every 100 ms), on a table nobody changes, after a warm-up pass over the same
  keys (steady state: a cold miss costs what ``store uncached`` costs);
* ``store cached, changing every N ms``: the same while the table changes every N ms (each
  ``--change-every-ms``; a change drops the reader's cache at its next token check, so the hot
  keys are read again; the writes are not timed);
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


def timed(get: Any, ks: list[str], tick: Any = None, min_s: float = 0.0) -> tuple[float, int]:
    """(µs per look-up, look-ups): ``ks`` in turn, at least once and for at least ``min_s``
    (``tick`` runs untimed every 256 look-ups)."""
    total = n = 0
    clock = time.perf_counter_ns
    end = time.monotonic() + min_s
    while n == 0 or time.monotonic() < end:
        for start in range(0, len(ks), 256):
            if tick is not None:
                tick()
            t0 = clock()
            for k in ks[start : start + 256]:
                get(k)
            total += clock() - t0
        n += len(ks)
    return total / n / 1000, n


def measure(
    graph: Graph, backend: str, rows: int, ks: list[str], changes_ms: list[int], min_s: float
) -> list[dict[str, Any]]:
    memory = SideTable("titles")
    for i in range(rows):
        memory.upsert(str(i), row(i, 1), 1)
    out: list[dict[str, Any]] = []

    def report(name: str, run: tuple[float, int], reads: int | None) -> None:
        us, n = run
        per_1k = None if reads is None else round(reads * 1000 / n, 2)
        out.append(
            {"backend": backend, "path": name, "us_per_lookup": round(us, 3),
             "lookups": n, "store_reads_per_1k": per_1k}
        )  # fmt: skip

    base = timed(memory.get, ks)
    report("memory", base, None)
    cached = StoreSideTable("titles", graph.store.kv)
    timed(cached.get, ks)  # warm-up: steady state, every key read once
    cached.reads = 0
    report("store cached", timed(cached.get, ks, min_s=min_s), cached.reads)
    versions = [2]
    for change_ms in changes_ms:
        changing = StoreSideTable("titles", graph.store.kv)
        timed(changing.get, ks)
        changing.reads = 0
        # versions go on from the run before (an equal version is a replay: not written)
        state = {"next": time.monotonic(), "version": versions[0], "every_s": change_ms / 1000}

        def change(state: dict[str, float] = state) -> None:
            if time.monotonic() >= state["next"]:
                v = int(state["version"])
                i = v % rows
                extra = side_extra(graph.store, [SideRow("titles", str(i), v, row(i, v))])
                graph.store.apply([], extra=extra)
                state["version"] = v + 1
                state["next"] = time.monotonic() + state["every_s"]

        run = timed(changing.get, ks, change, min_s)
        versions[0] = int(state["version"])
        report(f"store cached, changing every {change_ms} ms", run, changing.reads)
    uncached = StoreSideTable("titles", graph.store.kv, check_ms=0, max_age_ms=0)
    report("store uncached", timed(uncached.get, ks[:20_000]), uncached.reads)
    for r in out:
        r["ratio_to_memory"] = round(r["us_per_lookup"] / base[0], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--reads", type=int, default=500_000)
    ap.add_argument(
        "--change-every-ms",
        default="1000,50",
        help="how often the table changes in the 'changing' runs (comma-separated) [1000,50]",
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="least time per cached run")
    ap.add_argument("--redis", metavar="URL", help="also measure on this Redis database")
    ap.add_argument(
        "--quick", action="store_true", help="10k rows, 100k look-ups, 2 s per cached run"
    )
    ap.add_argument("--record", action="store_true", help=f"append to {RESULTS}")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.reads, args.seconds = 10_000, 100_000, 2.0
    ks = keys(args.rows, args.reads)
    changes = [int(c) for c in args.change_every_ms.split(",") if c]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d, Graph.open(Path(d) / "g", sync=False) as graph:
        fill(graph, args.rows)
        results += measure(graph, "lmdb", args.rows, ks, changes, args.seconds)
    if args.redis:
        import redis

        redis.Redis.from_url(args.redis).flushdb()
        with Graph.open(args.redis) as graph:
            fill(graph, args.rows)
            results += measure(graph, "redis", args.rows, ks, changes, args.seconds)
        redis.Redis.from_url(args.redis).flushdb()
    print(f"{'backend':8} {'path':36} {'µs/look-up':>11} {'× memory':>9} {'reads/1k':>9}")
    for r in results:
        reads = "" if r["store_reads_per_1k"] is None else f"{r['store_reads_per_1k']:g}"
        print(f"{r['backend']:8} {r['path']:36} {r['us_per_lookup']:11.3f} "
              f"{r['ratio_to_memory']:9.2f} {reads:>9}")  # fmt: skip
    if args.record:
        meta = {
            "rows": args.rows,
            "reads": args.reads,
            "change_every_ms": args.change_every_ms,
            "seconds": args.seconds,
            "load": os.getloadavg()[0],
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with RESULTS.open("a") as f:
            for r in results:
                f.write(json.dumps(meta | r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Node reads by id on LMDB: what the node cache saves under each consistency model.

One LMDB store with ``--nodes`` profiles; reads of random ids (Zipf-skewed, as hot members
are) through ``Graph.nodes`` in this process, timed per call, with:

* no cache (every read goes to LMDB);
* ``bounded`` (the 1 s TTL cache: stale across processes by up to 1 s);
* ``read-your-writes`` (the default: an entry serves only views of the store generation it was
  read at).

Each runs twice: with no writes, and with another process committing a one-node batch every
``--write-every-ms`` (a steady ingest), which under read-your-writes retires every entry at each
commit. Prints p50/p99 per read and the cache hit rate.

    python bench/node_cache.py
    python bench/node_cache.py --reads 200000 --write-every-ms 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from hopcast.graph.mutations import NodeUpsert
from hopcast.graphdb import Graph

NOW = 1_800_000_000_000_000
#: Zipf exponent of the ids read: a few hot members take most reads.
SKEW = 1.1


def writer(path: str, every_s: float, stop: Any) -> None:
    """Commit one node write every ``every_s`` until ``stop`` is set."""
    g = Graph.open(path, sync=False, cache=False, clock=lambda: NOW)
    i = 0
    while not stop.is_set():
        g.apply([NodeUpsert(f"device:w{i % 1000}", NOW - 1, f"w{i}", {"os": "tvos"})])
        i += 1
        time.sleep(every_s)
    g.close()


def percentile(samples: list[int], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))] / 1000


def run(path: str, cache: bool, consistency: str, ids: list[str]) -> tuple[float, float, float]:
    g = Graph.open(path, sync=False, cache=cache, consistency=consistency, clock=lambda: NOW)
    for node_id in ids[:1000]:  # warm-up
        g.nodes([node_id], NOW)
    samples = []
    clock = time.perf_counter_ns
    c = g.engine.cache
    hits0, misses0 = (c.hits, c.misses) if c else (0, 0)
    for node_id in ids:
        t0 = clock()
        g.nodes([node_id], NOW)
        samples.append(clock() - t0)
    rate = 0.0
    if c is not None:
        hits, misses = c.hits - hits0, c.misses - misses0
        rate = hits / max(1, hits + misses)
    g.close()
    return percentile(samples, 0.5), percentile(samples, 0.99), rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--reads", type=int, default=50_000)
    ap.add_argument("--write-every-ms", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    weights = [1 / (i + 1) ** SKEW for i in range(args.nodes)]
    ids = [f"profile:{i}" for i in rng.choices(range(args.nodes), weights, k=args.reads)]
    systems = [
        ("no cache", False, "read-your-writes"),
        ("bounded", True, "bounded"),
        ("read-your-writes", True, "read-your-writes"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "graph")
        g = Graph.open(path, sync=False, clock=lambda: NOW)
        g.apply(
            [
                NodeUpsert(f"profile:{i}", NOW - 1, f"p{i}", {"name": f"p{i}", "language": "en"})
                for i in range(args.nodes)
            ]
        )
        g.close()
        print(f"{args.reads:,} reads of {args.nodes:,} nodes (Zipf {SKEW}), one per call")
        for load in ("no writes", f"a commit every {args.write_every_ms:g} ms"):
            stop = mp.Event()
            proc = None
            if load != "no writes":
                proc = mp.Process(target=writer, args=(path, args.write_every_ms / 1000, stop))
                proc.start()
                time.sleep(0.5)
            for name, cache, consistency in systems:
                p50, p99, rate = run(path, cache, consistency, ids)
                hit = f"hits {rate:6.1%}" if cache else ""
                print(f"{load:24} {name:17} p50 {p50:6.1f} µs  p99 {p99:7.1f} µs  {hit}")
            if proc is not None:
                stop.set()
                proc.join(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Do capped path answers say when they may be wrong? Shortest paths on a skewed graph.

The demo company with heavy accounts (``bench/graph.py``'s data: some profiles with far more
than the 300 edges a node expands per hop) is loaded into LMDB; random profile pairs (30% from
a heavy profile) are asked ``shortest_path(a, b, max_hops=3)`` under the default limits and again
with the caps lifted (``edges_per_hop`` 10 000, ``max_work`` 1 000 000; checked not truncated).
An answer is *wrong* if found/hops differ from the lifted one. The contract: no wrong answer
has ``truncated: false``. Prints the counts and the mean time per query of each.

    python bench/path_truncation.py                   # 100k edges, 660 pairs
    python bench/path_truncation.py --edges 1000000 --pairs 2000
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph import batches, company_for, generate
from hopcast.durations import DAY
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.query import spec as q
from hopcast.query.engine import QueryEngine

#: Share of pairs whose first end is a heavy profile (above the per-node cap).
HEAVY_SHARE = 0.3
#: Limits under which the reference answers are exact on these graphs (checked per query).
LIFTED = q.Limits(edges_per_hop=q.MAX_RESULT, max_work=q.MAX_WORK, max_frontier=q.MAX_RESULT * 10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=660)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    now = 1_800_000_000_000_000
    company = company_for(args.edges, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = GraphStore(LmdbKV(Path(tmp) / "graph", sync=False), Schema.demo(), lambda: now)
        for batch in batches(generate(company, args.edges, now - 90 * DAY, now), 50_000):
            store.apply(batch)
        engine = QueryEngine(store)
        rng = random.Random(args.seed)
        heavy, profiles = company.heavy_profile_ids(), company.profile_ids()
        pairs = [
            (rng.choice(heavy) if rng.random() < HEAVY_SHARE else rng.choice(profiles), b)
            for b in (rng.choice(profiles) for _ in range(args.pairs))
        ]
        hidden = flagged_wrong = flagged_right = found = 0
        t_default = t_lifted = 0.0
        for a, b in pairs:
            t0 = time.perf_counter()
            got = engine.shortest_path(q.ShortestPath(a, b, 3), now)
            t1 = time.perf_counter()
            ref = engine.shortest_path(q.ShortestPath(a, b, 3, limits=LIFTED), now)
            t2 = time.perf_counter()
            t_default += t1 - t0
            t_lifted += t2 - t1
            if ref.truncated:
                raise SystemExit(f"the reference for {a} -> {b} is truncated: {ref.reason}")
            found += ref.found
            wrong = (got.found, got.hops) != (ref.found, ref.hops)
            if wrong and not got.truncated:
                hidden += 1
            elif wrong:
                flagged_wrong += 1
            elif got.truncated:
                flagged_right += 1
        n = len(pairs)
        store.close()
    print(f"{args.edges:,} edges, {n} path queries (max_hops 3), {found} with a path")
    print(f"wrong and truncated: false (the defect)  {hidden}")
    print(f"wrong and truncated: true                {flagged_wrong}")
    print(f"right but truncated: true (conservative) {flagged_right}")
    mean_default, mean_lifted = t_default / n * 1e3, t_lifted / n * 1e3
    print(f"mean per query: default limits {mean_default:.2f} ms, lifted {mean_lifted:.2f} ms")
    return 1 if hidden else 0


if __name__ == "__main__":
    raise SystemExit(main())

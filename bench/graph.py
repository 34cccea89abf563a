"""Graph benchmark: hopcast's graph store vs the embedded stores a user would otherwise pick.

One run, one machine, the same synthetic data for every system:

* data — the demo company (``hopcast.demo.company``) with a few extremely active "heavy"
  accounts, so some members have 100k+ edges at 10M edges (realistic skew);
* writes — streaming upserts through ``GraphStore.apply`` (atomic batches, fsync on) and
  single-edge upserts (one transaction each) on every system;
* reads — p50/p99 of 1-hop LATEST top-20, a 3-hop bounded traversal (co-watch: profile → title
  ← profile → title, newest 20 per node per hop), journey (last 100 in 30 days) and count
  (30 days), in-process for all systems and over HTTP for hopcast;
* peers — ``sqlite3`` (an indexed edges table) and ``ladybug`` (embedded Cypher graph DB);
  answers are cross-checked against hopcast's on a sample before timing.

Writes ``bench/results/graph.jsonl`` (``graph-quick``/``graph-<edges>`` for other sizes; one
JSON object per system and measure), prints a table with ratios (> 1 means hopcast is faster)
and saves the chart beside it as ``.png``.

    python bench/graph.py                 # 1M edges
    python bench/graph.py --edges 10000000
    python bench/graph.py --quick         # small, < 60 s
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers
from hopcast.api.server import GC_THRESHOLDS
from hopcast.demo.company import Company, CompanyConfig
from hopcast.durations import DAY
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.query import spec as q
from hopcast.query.engine import QueryEngine

RESULTS = Path(__file__).resolve().parent / "results"
#: Mutations per atomic write in the streaming load. At ~80k writes/s this is a commit every
#: ~0.6 s, inside the ~1 s dedup window a streaming pipeline batches over anyway; every commit
#: is fsynced, and with LMDB the fsync of the dirtied B-tree pages dominates small batches.
BATCH = 50_000
#: Seconds between progress lines when stderr is not a terminal (CI logs).
LOG_EVERY_S = 10.0
#: Fan-out per node per hop of the 3-hop query; newest first.
THREE_HOP_FANOUT = 20
THREE_HOP = (
    ("started_watching", "started_watching", "started_watching"),
    ("out", "in", "out"),
)
JOURNEY_MEMBERS = ("has_profile", "logged_in_from")
JOURNEY_INTERACTIONS = ("started_watching", "streamed_from", "browsed", "plays", "watched_live")

console = Console(stderr=True)


# -- data ------------------------------------------------------------------------------------


def company_for(edges: int, seed: int) -> Company:
    """A company sized so that ``edges`` interactions give realistic degrees and skew."""
    accounts = max(200, edges // 200)
    heavy = 5 if edges >= 1_000_000 else 2
    # With 10M edges each heavy account's profiles get ~100k+ interactions.
    return Company(
        CompanyConfig(
            accounts=accounts,
            titles=max(500, edges // 500),
            games=50,
            heavy_accounts=heavy,
            heavy_share=0.06,
            seed=seed,
        ),
        start_ts=0,
    )


def peer_edge(m: Mutation) -> peers.Edge | None:
    """The mutation as a peer edge tuple, if the peers model that edge type and endpoints."""
    if type(m) is not EdgeUpsert:
        return None
    ends = peers.EDGE_TYPES.get(m.type)
    if ends is None:
        return None
    if m.src.partition(":")[0] != ends[0] or m.dst.partition(":")[0] != ends[1]:
        return None
    return (m.src, m.type, m.dst, m.ts)


def generate(company: Company, n: int, start: int, end: int) -> Iterator[Mutation]:
    yield from company.catalogue()
    yield from company.members()
    yield from company.activity(n, start, end)


def batches(items: Iterable[Mutation], size: int) -> Iterator[list[Mutation]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def keep(m: Mutation) -> bool:
    """Everything the peers can also hold: their edge types, and all node upserts."""
    return type(m) is NodeUpsert or peer_edge(m) is not None


# -- timing helpers --------------------------------------------------------------------------


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return s[len(s) // 2] / 1000, s[min(len(s) - 1, int(len(s) * 0.99))] / 1000


def time_calls(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> tuple[float, float]:
    """p50/p99 in µs of ``fn(*args)`` over ``calls`` (after a short warm-up)."""
    for args in calls[: max(1, len(calls) // 20)]:
        fn(*args)
    samples = []
    clock = time.perf_counter_ns
    for args in calls:
        t0 = clock()
        fn(*args)
        samples.append(clock() - t0)
    return percentiles(samples)


class Recorder:
    def __init__(self, params: dict[str, Any]) -> None:
        self.rows: list[dict[str, Any]] = []
        self.params = params

    def latency(self, system: str, measure: str, p50: float, p99: float) -> None:
        self.rows.append(
            {"system": system, "measure": measure, "unit": "us", "p50": round(p50, 1)}
            | {"p99": round(p99, 1)}
            | self.params
        )

    def rate(self, system: str, measure: str, value: float, unit: str) -> None:
        self.rows.append(
            {"system": system, "measure": measure, "unit": unit, "value": round(value, 1)}
            | self.params
        )


# -- systems ---------------------------------------------------------------------------------


class Hopcast:
    """Adapter with the peers' call signatures over hopcast's engine."""

    name = "hopcast"

    def __init__(self, store: GraphStore, now: int) -> None:
        self.engine = QueryEngine(store)
        self.now = now

    def one_hop_latest(self, node: str, etype: str, since: int, limit: int) -> list[Any]:
        spec = q.Neighbours(node, (etype,), since=since, limit=limit)
        return [(e.dst, e.ts) for e in self.engine.neighbours(spec, self.now).edges]

    def three_hop(
        self,
        start: str,
        etypes: tuple[str, ...],
        directions: tuple[str, ...],
        since: int,
        per_node: int,
    ) -> dict[str, int]:
        hops = tuple(q.Hop((e,), d) for e, d in zip(etypes, directions, strict=True))
        limits = q.Limits(edges_per_hop=per_node, max_work=q.MAX_WORK)
        res = self.engine.traverse(q.Traverse((start,), hops, since=since, limits=limits), self.now)
        return {r.node: r.depth for r in res.nodes}

    def journey(
        self,
        account: str,
        members: tuple[str, ...],
        interactions: tuple[str, ...],
        since: int,
        until: int,
        limit: int,
    ) -> list[Any]:
        spec = q.Journey(account, since, until, limit, None, interactions)
        res = self.engine.journey(spec, self.now)
        return [(e.ts, e.src, e.type, e.dst) for e in res.entries]

    def count(self, node: str, etype: str, direction: str, since: int, until: int) -> int:
        spec = q.Count(node, (etype,), direction, since, until)
        return self.engine.count(spec, self.now).count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path, now: int) -> tuple[subprocess.Popen[bytes], str]:
    """Serve the benchmark store from another process (a second LMDB reader)."""
    port = free_port()
    code = (
        "from hopcast.graphdb import Graph; from hopcast.api.server import make_server; "
        f"g = Graph.open({str(store)!r}, clock=lambda: {now}); "
        f"make_server(g, '127.0.0.1', {port}, log_level='warning').run()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API server did not start")


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=1_000_000, help="interaction edges to generate")
    ap.add_argument("--queries", type=int, default=2_000, help="timed calls per query kind")
    ap.add_argument("--quick", action="store_true", help="100k edges, fewer queries (< 60 s)")
    ap.add_argument("--no-peers", action="store_true", help="skip sqlite3 and ladybug")
    ap.add_argument("--no-http", action="store_true", help="skip the HTTP measurements")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--batch", type=int, default=BATCH, help="mutations per atomic write")
    ap.add_argument("--workdir", default=str(RESULTS / "tmp"))
    args = ap.parse_args(argv)
    if args.quick:
        args.edges, args.queries = 100_000, 300
    n_single = {"hopcast": 2_000, "sqlite3": 2_000, "ladybug": 200}
    if args.quick:
        n_single = {"hopcast": 500, "sqlite3": 500, "ladybug": 50}

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    RESULTS.mkdir(exist_ok=True)
    rec = Recorder(
        {"edges": args.edges, "queries": args.queries, "quick": args.quick, "batch": args.batch}
    )
    now = 1_800_000_000_000_000  # fixed "now" so runs are comparable
    start, end = now - 90 * DAY, now

    # 1. hopcast streaming load --------------------------------------------------------------
    company = company_for(args.edges, args.seed)
    store_dir = work / "hopcast.lmdb"
    store = GraphStore(LmdbKV(store_dir, sync=True), Schema.demo(), clock=lambda: now)
    peer_edges: list[peers.Edge] = []
    nodes: set[str] = set()
    written = 0
    t_total = 0.0
    next_log = time.monotonic() + LOG_EVERY_S
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("hopcast streaming upserts", total=None, rate="")
        for batch in batches(filter(keep, generate(company, args.edges, start, end)), args.batch):
            t0 = time.perf_counter()
            store.apply(batch)
            t_total += time.perf_counter() - t0
            written += len(batch)
            for m in batch:
                pe = peer_edge(m)
                if pe is not None:
                    peer_edges.append(pe)
                    nodes.add(pe[0])
                    nodes.add(pe[2])
            progress.update(task, completed=written, rate=f"{written / t_total:,.0f}/s")
            if not console.is_terminal and time.monotonic() >= next_log:
                # no live bar in a log file: a line every few seconds instead
                console.print(f"  {written:,} mutations written, {written / t_total:,.0f}/s")
                next_log = time.monotonic() + LOG_EVERY_S
    rec.rate("hopcast", "upserts, streaming batches", written / t_total, "writes/s")
    console.print(f"hopcast: {written:,} mutations ({len(peer_edges):,} edges) in {t_total:.1f}s")

    # degrees, to pick query subjects with realistic skew
    out_deg: dict[str, int] = {}
    for src, _, _, _ in peer_edges:
        out_deg[src] = out_deg.get(src, 0) + 1
    profiles = [n for n in out_deg if n.startswith("profile:")]
    heaviest = max(profiles, key=out_deg.__getitem__)
    console.print(f"heaviest member: {heaviest} with {out_deg[heaviest]:,} out-edges")
    rng = random.Random(args.seed)
    accounts = company.account_ids()
    heavy_accounts = company.heavy_account_ids()
    heavy_profiles = company.heavy_profile_ids()
    # 10% of queries hit heavy members, as hot members attract a share of traffic.
    pick_profile = lambda: (  # noqa: E731
        rng.choice(heavy_profiles) if rng.random() < 0.1 else rng.choice(profiles)
    )
    pick_account = lambda: (  # noqa: E731
        rng.choice(heavy_accounts) if rng.random() < 0.1 else rng.choice(accounts)
    )
    since100, since30 = now - 100 * DAY, now - 30 * DAY
    nq = args.queries
    calls: dict[str, list[tuple[Any, ...]]] = {
        "1-hop latest top-20": [(pick_profile(), "browsed", since100, 20) for _ in range(nq)],
        "3-hop bounded (fan-out 20)": [
            (pick_profile(), *THREE_HOP, since100, THREE_HOP_FANOUT) for _ in range(nq // 4)
        ],
        "journey last 100 in 30d": [
            (pick_account(), JOURNEY_MEMBERS, JOURNEY_INTERACTIONS, since30, now, 100)
            for _ in range(nq)
        ],
        "count 30d": [(pick_profile(), "browsed", "out", since30, now) for _ in range(nq)],
    }
    methods = {
        "1-hop latest top-20": "one_hop_latest",
        "3-hop bounded (fan-out 20)": "three_hop",
        "journey last 100 in 30d": "journey",
        "count 30d": "count",
    }

    # The benchmark's own bookkeeping (millions of edge tuples) is long-lived: move it out of
    # the cyclic GC's reach, as a server does after start-up, so collections triggered by the
    # queries' allocations do not scan it. Applies to every system alike.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)  # the API server's setting, for every system alike
    systems: list[Any] = [Hopcast(store, now)]
    # 2. peers: bulk load (their fastest path) -----------------------------------------------
    if not args.no_peers:
        for cls in (peers.SqlitePeer, peers.LadybugPeer):
            d = work / cls.__name__
            d.mkdir()
            p = cls(str(d))
            with console.status(f"loading {p.name} (bulk)"):
                t0 = time.perf_counter()
                p.bulk_load(sorted(nodes), peer_edges)
                dt = time.perf_counter() - t0
            rec.rate(p.name, "bulk load", len(peer_edges) / dt, "edges/s")
            console.print(f"{p.name}: bulk-loaded {len(peer_edges):,} edges in {dt:.1f}s")
            systems.append(p)

    # 3. same answers? -------------------------------------------------------------------------
    for measure, method in methods.items():
        for args_ in calls[measure][:25]:
            want = getattr(systems[0], method)(*args_)
            for p in systems[1:]:
                got = getattr(p, method)(*args_)
                if got != want:
                    console.print(f"[red]{p.name} disagrees on {measure} {args_[:1]}")
                    return 1
    console.print("answers agree across systems on sampled queries")

    # 4. in-process query latency -------------------------------------------------------------
    for measure, method in methods.items():
        for p in systems:
            p50, p99 = time_calls(getattr(p, method), calls[measure])
            rec.latency(p.name, measure, p50, p99)
            console.print(f"{measure:28} {p.name:8} p50 {p50:9.1f} µs  p99 {p99:9.1f} µs")

    # 5. single-edge upserts, one transaction each --------------------------------------------
    single = [
        (rng.choice(profiles), "browsed", f"title:{rng.randrange(1000)}", now - rng.randrange(DAY))
        for _ in range(max(n_single.values()))
    ]
    t0 = time.perf_counter()
    for i, (s, e, d, ts) in enumerate(single[: n_single["hopcast"]]):
        store.apply([EdgeUpsert(s, e, d, ts, f"single:{i}", {})])
    rate = n_single["hopcast"] / (time.perf_counter() - t0)
    rec.rate("hopcast", "upserts, one per transaction", rate, "writes/s")
    # sqlite3 (WAL, synchronous=NORMAL) and ladybug do not fsync each commit; the fair
    # comparison for them is LMDB without fsync, measured on a second, fresh store.
    nosync = GraphStore(LmdbKV(work / "nosync.lmdb", sync=False), Schema.demo(), lambda: now)
    t0 = time.perf_counter()
    for i, (s, e, d, ts) in enumerate(single[: n_single["hopcast"]]):
        nosync.apply([EdgeUpsert(s, e, d, ts, f"single:{i}", {})])
    rate = n_single["hopcast"] / (time.perf_counter() - t0)
    rec.rate("hopcast", "upserts, one per transaction, no fsync", rate, "writes/s")
    nosync.close()
    for p in systems[1:]:
        n = n_single[p.name]
        t0 = time.perf_counter()
        for s, e, d, ts in single[:n]:
            p.upsert_edge(s, e, d, ts)
        rate = n / (time.perf_counter() - t0)
        # sqlite3 runs WAL + synchronous=NORMAL (no fsync per commit); ladybug commits to its
        # own WAL with its default durability.
        measure = "upserts, one per transaction"
        if p.name == "sqlite3":
            measure += ", no fsync"
        rec.rate(p.name, measure, rate, "writes/s")

    # 6. HTTP ----------------------------------------------------------------------------------
    if not args.no_http:
        proc, url = start_server(store_dir, now)
        try:
            # A lean keep-alive client (http.client), so the numbers are the server's, not a
            # heavyweight client library's; requests are sequential, one connection.
            host, port = url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port))
            three_hop_body = [
                json.dumps(
                    {
                        "start": c[0],
                        "hops": [
                            {"edge": [e], "direction": d} for e, d in zip(c[1], c[2], strict=True)
                        ],
                        "since": c[3],
                        "limits": {"edges_per_hop": c[4], "max_work": q.MAX_WORK},
                    }
                ).encode()
                for c in calls["3-hop bounded (fan-out 20)"]
            ]
            http_calls: dict[str, list[tuple[str, str, bytes | None]]] = {
                "HTTP 1-hop latest top-20": [
                    ("GET", f"/v1/nodes/{c[0]}/neighbours?edge=browsed&since={c[2]}", None)
                    for c in calls["1-hop latest top-20"]
                ],
                "HTTP 3-hop bounded (fan-out 20)": [
                    ("POST", "/v1/query/traverse", body) for body in three_hop_body
                ],
                "HTTP journey last 100 in 30d": [
                    ("GET", f"/v1/nodes/{c[0]}/journey?since={c[3]}&until={c[4]}&limit=100", None)
                    for c in calls["journey last 100 in 30d"]
                ],
                "HTTP count 30d": [
                    ("GET", f"/v1/nodes/{c[0]}/count?edge=browsed&since={c[3]}&until={c[4]}", None)
                    for c in calls["count 30d"]
                ],
            }
            headers = {"content-type": "application/json"}

            def call(method: str, path: str, body: bytes | None) -> None:
                conn.request(method, path, body=body, headers=headers if body else {})
                r = conn.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path}: {r.status} {data[:200]!r}")

            # The server is a fresh process: one untimed pass maps the pages the timed pass
            # reads, as loading did for the in-process systems.
            for requests in http_calls.values():
                for request in requests:
                    call(*request)
            for measure, requests in http_calls.items():
                p50, p99 = time_calls(call, requests)
                rec.latency("hopcast", measure, p50, p99)
                console.print(f"{measure:28} hopcast  p50 {p50:9.1f} µs  p99 {p99:9.1f} µs")
            conn.close()
        finally:
            proc.terminate()
            proc.wait(10)

    for p in systems[1:]:
        p.close()
    store.close()
    report(rec.rows, args)
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    path = RESULTS / f"{result_name(args)}.jsonl"
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    table = Table(title=f"graph benchmark — {args.edges:,} edges, {os.cpu_count()} cores")
    for col in ("measure", "system", "p50", "p99 / value", "ratio vs hopcast"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    base = {(r["measure"]): r for r in rows if r["system"] == "hopcast"}
    for r in rows:
        h = base.get(r["measure"])
        if "p50" in r:
            ratio = "" if r["system"] == "hopcast" or h is None else f"{r['p99'] / h['p99']:.1f}×"
            table.add_row(
                r["measure"], r["system"], f"{r['p50']:,.1f} µs", f"{r['p99']:,.1f} µs", ratio
            )
        else:
            ratio = (
                ""
                if r["system"] == "hopcast" or h is None
                else f"{h['value'] / r['value']:.1f}× slower"
                if r["value"]
                else ""
            )
            table.add_row(r["measure"], r["system"], "", f"{r['value']:,.0f} {r['unit']}", ratio)
    Console().print(table)
    console.print(
        "ratio: latency = peer p99 / hopcast p99; rates = hopcast / peer "
        f"(> 1 means hopcast is faster). Results: {path}"
    )
    chart(rows, RESULTS / f"{result_name(args)}.png")


def result_name(args: argparse.Namespace) -> str:
    """``graph`` for the default 1M-edge run, ``graph-quick`` or ``graph-<edges>`` otherwise."""
    if args.quick:
        return "graph-quick"
    return "graph" if args.edges == 1_000_000 else f"graph-{args.edges}"


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib not installed: no chart")
        return
    lat = [r for r in rows if "p50" in r]
    measures = list(dict.fromkeys(r["measure"] for r in lat))
    systems = list(dict.fromkeys(r["system"] for r in lat))
    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        xs, p50s, p99s = [], [], []
        for j, m in enumerate(measures):
            r = next((r for r in lat if r["system"] == s and r["measure"] == m), None)
            if r:
                xs.append(j + i * width)
                p50s.append(r["p50"])
                p99s.append(r["p99"])
        color = f"C{i}"
        ax.bar(xs, p99s, width, label=f"{s} p99", color=color, alpha=0.35)
        ax.bar(xs, p50s, width, label=f"{s} p50", color=color)
    ax.set_yscale("log")
    ax.set_ylabel("latency (µs, log scale)")
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(measures))])
    ax.set_xticklabels(measures, rotation=15, ha="right", fontsize=8)
    ax.legend(fontsize=7, ncol=len(systems))
    ax.set_title("hopcast graph queries vs peers (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())

"""``make demo`` / ``hopcast demo``: the synthetic company, live, on the embedded default.

Steps:

1. open (and by default reset) an LMDB graph under ``data/demo``;
2. load the company's catalogue and members, then 30 days of member activity, in atomic
   batches with a progress bar;
3. keep generating activity in real time in a background thread (events stamped with the wall
   clock, so "last 5 minutes" queries change while you watch) and show events/s, freshness
   (event time → committed) and the graph's size;
4. serve the HTTP API (OpenAPI docs at ``/docs``) and print example queries with real ids,
   until Ctrl-C.

The ingest pipeline (sources, mapping, dead letters) replaces step 3's direct writes when it
lands; until then the generator writes mutations straight into the graph store.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hopcast.demo.company import Company, CompanyConfig
from hopcast.durations import DAY, now_us
from hopcast.graph.mutations import Mutation
from hopcast.graphdb import Graph

#: Mutations per atomic write while bulk loading: large enough to amortise LMDB's fsync.
LOAD_BATCH = 10_000
#: How often the live generator commits; also the freshness floor of the demo.
LIVE_TICK_S = 0.25


@dataclass
class LiveStats:
    events: int = 0
    batches: int = 0
    last_freshness_ms: float = 0.0
    rate: float = 0.0
    started: float = field(default_factory=time.monotonic)


def _batches(items: Iterable[Mutation], size: int) -> Iterator[list[Mutation]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def load_history(graph: Graph, company: Company, events: int, now: int, console: Console) -> None:
    """Load catalogue, members and ``events`` interactions over the 30 days before ``now``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        static = list(company.catalogue()) + list(company.members())
        task = progress.add_task("catalogue + members", total=len(static), rate="")
        for batch in _batches(static, LOAD_BATCH):
            graph.apply(batch)
            progress.advance(task, len(batch))
        task = progress.add_task("30 days of activity", total=events, rate="")
        started = time.perf_counter()
        done = 0
        edges = company.activity(events, now - 30 * DAY, now)
        for batch in _batches(edges, LOAD_BATCH):
            graph.apply(batch)
            done += len(batch)
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=min(done, events), rate=f"{rate:,.0f} writes/s")


def live_activity(
    graph: Graph, company: Company, rate: int, stop: threading.Event, stats: LiveStats
) -> None:
    """Generate ``rate`` events/s stamped with the wall clock until ``stop`` is set."""
    last = now_us()
    while not stop.wait(LIVE_TICK_S):
        now = now_us()
        n = max(1, int(rate * (now - last) / 1_000_000))
        batch = list(company.activity(n, last, now))
        graph.apply(batch)
        committed = now_us()
        newest = max(m.ts for m in batch)
        stats.events += len(batch)
        stats.batches += 1
        stats.last_freshness_ms = (committed - newest) / 1000
        stats.rate = stats.events / max(time.monotonic() - stats.started, 1e-9)
        last = now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hopcast demo",
        description="Run a synthetic streaming company live on the embedded default (LMDB) "
        "and serve the HTTP API until Ctrl-C.",
    )
    parser.add_argument("--store", default="data/demo", help="LMDB directory (reset unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep an existing demo store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument("--accounts", type=int, default=5_000)
    parser.add_argument("--history", type=int, default=300_000, help="interactions to preload")
    parser.add_argument("--rate", type=int, default=200, help="live events per second")
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after N seconds (0 = until Ctrl-C)"
    )
    args = parser.parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)

    store = Path(args.store)
    reuse = args.keep and store.exists()
    if store.exists() and not reuse:
        shutil.rmtree(store)
    now = now_us()
    company = Company(
        CompanyConfig(accounts=args.accounts, heavy_accounts=3, heavy_share=0.05),
        now - 30 * DAY,
    )
    graph = Graph.open(store, sync=True)
    console.print(f"[bold]hopcast demo[/]: graph at {store.resolve()} (LMDB)")
    if not reuse:
        load_history(graph, company, args.history, now, console)

    stop = threading.Event()
    stats = LiveStats()
    worker = threading.Thread(
        target=live_activity, args=(graph, company, args.rate, stop, stats), daemon=True
    )
    worker.start()

    try:
        from hopcast.api.server import make_server
    except ImportError:
        console.print("[red]the HTTP API needs the server extra: pip install 'hopcast[server]'")
        return 1

    server = make_server(
        graph,
        args.host,
        args.port,
        log_level="warning",
        gateway_port=args.port + 1,
        dev_tokens=True,
    )
    base = f"http://{args.host}:{args.port}"
    account = company.heavy_account_ids()[0]
    profile = company.profiles_of(account)[0]
    title = company.title_ids()[0]
    console.print(
        "\n".join(
            [
                f"API docs     {base}/docs",
                f"metrics      {base}/metrics",
                f"neighbours   {base}/v1/nodes/{profile}/neighbours?edge=started_watching&limit=5",
                f"journey      {base}/v1/nodes/{account}/journey?since=1h&limit=20",
                f"count        {base}/v1/nodes/{profile}/count?edge=browsed&since=7d",
                f"traverse     hopcast --store {store} query traverse {account} "
                "--hop has_profile --hop started_watching --hop in_genre",
                f"title        {base}/v1/nodes/{title}",
                f"live gateway ws://{args.host}:{args.port + 1} (device tokens: "
                f"POST {base}/v1/live/tokens, live events: {base}/v1/live/events)",
                "Ctrl-C to stop.",
            ]
        )
    )

    def report() -> None:
        while not stop.wait(5):
            console.print(
                f"live: {stats.events:,} events ({stats.rate:,.0f}/s), "
                f"freshness {stats.last_freshness_ms:,.0f} ms"
            )

    threading.Thread(target=report, daemon=True).start()
    if args.duration:
        threading.Timer(args.duration, lambda: setattr(server, "should_exit", True)).start()
    try:
        server.run()
    finally:
        stop.set()
        worker.join(timeout=5)
        graph.close()
    console.print(f"stopped after {stats.events:,} live events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

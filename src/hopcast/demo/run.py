"""``hopcast run`` / ``make demo``: the synthetic company, live, through the embedded pipeline.

Steps (:func:`run_demo`):

1. open (and by default reset) the data directory (``data/demo``): the LMDB graph in
   ``graph/``, the services' logs in ``logs/<source>/``;
2. load 30 days of member activity straight into the graph, in atomic batches with a progress
   bar. This history is a backfill, written directly: pushed through JSON lines and the
   pipeline it would take about ten times as long (the decode and mapping cost per record) and
   show nothing a live record does not;
3. write the snapshot of the catalogue and member tables as Debezium snapshot reads
   (``op: r``) into the ``catalogue`` and ``members`` logs and start the embedded engine
   (:class:`~hopcast.stream.engines.embedded.EmbeddedEngine`) over the six logs with the demo
   mappings: it ingests the snapshot (tens of thousands of rows, a second or two), which also
   fills the ``titles`` side table, before the API opens;
4. serve the API (graph, live, metrics — the engine's too, at ``/metrics``) and the live
   WebSocket gateway on ``port + 1`` with development tokens (``port`` 0: each on a free
   port), and print example queries with real ids and the addresses bound (the API's port is
   bound before step 2, so a taken port fails at once). The API requires keys: a fresh
   ``operator`` key (``graph/keys.json``; the previous run's is revoked) is printed once, with
   the console's URL carrying it in the fragment (``console.html#key=…``);
5. generate the company's activity in real time (``rate`` interactions/s, stamped with the wall
   clock) as records: request logs, Debezium change events, game and live events, with late,
   redelivered and deliberately bad records (:mod:`hopcast.demo.records`), appended to rotated
   logs (:mod:`hopcast.demo.logs`) that the engine tails;
6. schedule a live event ``event_in`` seconds out, materialise its recommendation rows from
   the graph, and run ``devices`` simulated devices that prefetch it and take its triggers
   (:mod:`hopcast.demo.scenario`); the live service takes it live on schedule and refreshes
   its rows as the graph changes; the device page and the operator console are served at
   ``/web/``;
7. show events/s, mutations/s, lag, freshness p50/p99 (event time → queryable), dead letters and
   the live event's progress live (a rich display on a terminal, a line every few seconds
   otherwise), until Ctrl-C, SIGTERM or ``--duration``; then stop the devices and the generator,
   let the engine ingest what was written, stop it (it finishes its batch and stores its
   positions), stop the server, close the graph.

With ``--postgres DSN`` the playback service keeps its table in that PostgreSQL
(:mod:`hopcast.demo.postgres`) and the engine captures it by logical replication instead of
tailing the ``playback`` log: the same change events, from a real server.

With ``--keep`` an existing data directory is reused: no history, no snapshot; the engine
resumes after its stored positions and the generator appends to the same logs.
"""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hopcast.demo.company import Company, CompanyConfig
from hopcast.demo.logs import DEFAULT_ROTATE_BYTES, LogWriter
from hopcast.demo.postgres import TABLE, PlaybackTable
from hopcast.demo.records import DEFAULT_BAD_SHARE, SOURCES, CompanyRecords, DemoRecord
from hopcast.durations import DAY, now_us
from hopcast.graph.mutations import Mutation
from hopcast.graphdb import Graph
from hopcast.ports import listening_socket
from hopcast.stream.engines.embedded import EmbeddedEngine, IngestMetrics, engine_for
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.sources.base import Source
from hopcast.stream.sources.logfile import LogFileSource

if TYPE_CHECKING:
    from hopcast.demo.scenario import Scenario

#: Mutations per atomic write while bulk loading: large enough to amortise LMDB's fsync.
LOAD_BATCH = 10_000
#: How often the generator writes what happened since its last tick.
TICK_S = 0.02
#: How long a stop waits for the engine to ingest what the generator wrote.
DRAIN_S = 15.0
#: How long start-up waits for the engine to ingest the snapshot.
SNAPSHOT_S = 300.0
#: How long start-up waits for the API's startup (its live service and gateway) once the
#: snapshot is in: a second normally, a bound for a machine too busy to run the demo.
API_START_S = 60.0
#: Seconds between progress lines when stderr is not a terminal.
REPORT_S = 5.0
#: The engine's micro-batch bounds in the demo (a record waits about LINGER_MS to be written).
#: At most 1,000 records (~1,850 mutations) per write: LMDB keeps every page a write dirtied in
#: a malloc'd cache for reuse, as many as the largest write ever dirtied, and never returns
#: them; with 5,000-record writes (when the engine catches up after a stall) that cache grew in
#: steps of ~10 MB as the store grew (measured: 16 MB to 44 MB of heap over 140 writes of 5,000
#: mutations; flat at 16 MB with 1,000). Live, a batch holds a few dozen records (LINGER_MS
#: and BATCH_MS at 1,800 records/s), so only catching up reaches the bound.
BATCH_RECORDS = 1_000
LINGER_MS = 10.0
BATCH_MS = 50.0


#: The demo's API key file, in its LMDB store directory (where `hopcast --store DIR auth …`
#: finds it; reset with the data directory unless --keep).
KEYS_FILE = "keys.json"
#: The name of the operator key each run creates (the previous run's is revoked).
DEMO_KEY_NAME = "demo console"


def demo_security(path: Path, host: str) -> tuple[Any, str]:
    """The demo server's security and a fresh operator key (printed once, with the console's
    URL carrying it in the fragment). Keys of earlier runs with the same name are revoked, so
    only the printed one opens the console."""
    from hopcast.api.browser import LOOPBACK_HOSTS
    from hopcast.api.policy import Security
    from hopcast.auth.keys import KeyFile

    keys = KeyFile(path)
    now = now_us()
    if keys.exists():
        for old in keys.active():
            if old.name == DEMO_KEY_NAME:
                keys.revoke(old.id, now)
    _, key = keys.create(DEMO_KEY_NAME, ["operator"], now)
    return Security(keys=keys, allowed_hosts=(*LOOPBACK_HOSTS, host)), key


def _default_rates() -> dict[str, Any]:
    from hopcast.api.ratelimit import DEFAULT_RATES  # the server extra, as make_server

    return dict(DEFAULT_RATES)


@dataclass
class DemoOptions:
    """What ``hopcast run`` does (its options; see :mod:`hopcast.cli.run`)."""

    data: Path = Path("data/demo")
    keep: bool = False
    host: str = "127.0.0.1"
    port: int = 8321
    accounts: int = 5_000
    history: int = 300_000
    rate: int = 200
    duration: float = 0.0
    bad_share: float = DEFAULT_BAD_SHARE
    seed: int = 7
    progress: bool | None = None
    rotate_bytes: int = DEFAULT_ROTATE_BYTES
    #: A PostgreSQL DSN: the playback table lives there, captured by CDC (else: a log).
    postgres: str | None = None
    #: Seconds until the scripted live event starts (0: no scripted event).
    event_in: float = 180.0
    #: Simulated devices that prefetch it and take its triggers.
    devices: int = 200
    #: Bound on the event's recommendation segments.
    max_segments: int = 8
    #: Per-key rate limits of the API (:mod:`hopcast.api.ratelimit`); None: none.
    rate_limits: dict[str, Any] | None = field(default_factory=_default_rates)


@dataclass
class GeneratorStats:
    """What the live generator has written (read by the display thread)."""

    interactions: int = 0
    records: int = 0
    bad: int = 0
    started: float = field(default_factory=time.monotonic)


def _batches(items: Iterable[Mutation], size: int) -> Iterator[list[Mutation]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def load_history(
    graph: Graph,
    company: Company,
    events: int,
    now: int,
    console: Console,
    observe: Callable[[list[Mutation]], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Write ``events`` interactions over the 30 days before ``now`` straight into the graph
    (``observe`` sees every batch first: the services' tables follow the node changes; a set
    ``stop`` ends the load after the batch)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("30 days of activity", total=events, rate="")
        started = time.perf_counter()
        done = 0
        for batch in _batches(company.activity(events, now - 30 * DAY, now), LOAD_BATCH):
            if observe is not None:
                observe(batch)
            graph.apply(batch)
            done += len(batch)
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, completed=min(done, events), rate=f"{rate:,.0f} writes/s")
            if stop is not None and stop.is_set():
                return


class Outputs:
    """Where the services' records go: the logs, and with ``--postgres`` the playback changes
    to the table in PostgreSQL."""

    def __init__(self, writer: LogWriter, playback: PlaybackTable | None = None) -> None:
        self.writer = writer
        self.playback = playback

    def write(self, records: list[DemoRecord]) -> None:
        if self.playback is None:
            self.writer.write(records)
            return
        self.writer.write([r for r in records if r.source != "playback"])
        self.playback.write([r for r in records if r.source == "playback"])

    @property
    def bad_left_out(self) -> int:
        """Bad records the table could not take (left out, not written)."""
        return self.playback.bad_left_out if self.playback is not None else 0

    @property
    def total(self) -> int:
        """Records written to logs and changes made to the table."""
        return self.writer.total + (self.playback.changes if self.playback else 0)


def generate(
    records: CompanyRecords,
    outputs: Outputs,
    rate: int,
    start_ts: int,
    stop: threading.Event,
    stats: GeneratorStats,
    clock: Callable[[], int] = now_us,
) -> None:
    """Write ``rate`` interactions/s as records, stamped with the clock, until ``stop``."""
    last = start_ts
    carry = 0.0
    while not stop.wait(TICK_S):
        now = clock()
        if now <= last:
            continue
        carry += rate * (now - last) / 1_000_000
        n = int(carry)
        if n == 0:
            continue
        carry -= n
        out = list(records.activity(n, last, now))
        left_out = outputs.bad_left_out
        outputs.write(out)
        stats.interactions += n
        stats.records += len(out) - (outputs.bad_left_out - left_out)
        stats.bad += sum(1 for r in out if r.bad is not None) - (outputs.bad_left_out - left_out)
        last = now


def _secs(s: float) -> str:
    return f"{s * 1000:,.0f} ms" if s < 1 else f"{s:,.1f} s"


def status_table(
    engine: EmbeddedEngine,
    gen: GeneratorStats,
    writer: LogWriter,
    scenario: Scenario | None = None,
) -> Table:
    """The live display: the generator's side, then the engine's, then the live event's."""
    st = engine.stats
    events_s, mutations_s = st.rate()
    elapsed = max(time.monotonic() - gen.started, 1e-9)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "generated",
        f"{gen.interactions / elapsed:,.0f} interactions/s → {gen.records:,} records "
        f"({gen.bad:,} bad), {sum(writer.rotations.values())} log rotations",
    )
    table.add_row("events/s", f"{events_s:,.0f}   (ingested {st.events:,})")
    table.add_row("mutations/s", f"{mutations_s:,.0f}   (total {st.mutations:,})")
    lag = sum(st.lag.values())
    table.add_row("lag", f"{lag:,} bytes")
    q = st.freshness_quantiles()
    table.add_row("freshness", "-" if q is None else f"p50 {_secs(q[0])}  p99 {_secs(q[1])}")
    dead = ", ".join(f"{r} {n}" for r, n in sorted(st.dead_by_reason.items()))
    table.add_row("dead letters", f"{st.dead_letters:,}" + (f"  ({dead})" if dead else ""))
    if scenario is not None:
        table.add_row("live event", scenario.status())
    return table


def status_line(
    engine: EmbeddedEngine, gen: GeneratorStats, scenario: Scenario | None = None
) -> str:
    st = engine.stats
    events_s, mutations_s = st.rate()
    q = st.freshness_quantiles()
    fresh = "-" if q is None else f"p50 {_secs(q[0])} p99 {_secs(q[1])}"
    return (
        f"live: {gen.records:,} records written, {st.events:,} ingested "
        f"({events_s:,.0f} events/s, {mutations_s:,.0f} mutations/s), "
        f"lag {sum(st.lag.values()):,} B, freshness {fresh}, {st.dead_letters:,} dead letters"
        + ("" if scenario is None else f"; live event {scenario.status()}")
    )


def _registry(server: Any) -> Any:
    """The API app's Prometheus registry (the engine's metrics join the API's at /metrics)."""
    app = server.config.app
    return getattr(getattr(getattr(app, "state", None), "metrics", None), "registry", None)


def run_demo(opts: DemoOptions, console: Console | None = None) -> int:
    """Run the demo (see the module docstring); returns the exit code."""
    console = console or Console(stderr=True, soft_wrap=True)
    try:
        from hopcast.api.server import make_server, url
    except ImportError:
        console.print("[red]the HTTP API needs the server extra: pip install 'hopcast[server]'")
        return 1
    data = opts.data
    reuse = opts.keep and (data / "graph").exists()
    if data.exists() and not reuse:
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    now = now_us()
    heavy = min(3, opts.accounts - 1)  # a few very active accounts, if there are others
    config = CompanyConfig(
        accounts=opts.accounts,
        heavy_accounts=heavy,
        heavy_share=0.05 if heavy else 0.0,
        seed=opts.seed,
    )
    company = Company(config, now - 30 * DAY)
    records = CompanyRecords(company, bad_share=opts.bad_share)
    store = data / "graph"
    graph = Graph.open(store, sync=True)
    console.print(
        f"[bold]hopcast run[/]: graph at {store.resolve()} (LMDB), logs in {data / 'logs'}"
    )
    writer = LogWriter(data / "logs", SOURCES, rotate_bytes=opts.rotate_bytes)
    outputs = Outputs(writer)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # A second Ctrl-C stops at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    listener: socket.socket | None = None
    try:
        try:
            listener = listening_socket(opts.host, opts.port)
        except OSError as exc:
            console.print(f"[red]error:[/] cannot listen on {url(opts.host, opts.port)}: {exc}")
            return 1
        if opts.postgres:
            outputs.playback = PlaybackTable(opts.postgres, reset=not reuse)
            console.print(f"playback table in PostgreSQL ({TABLE}), captured by CDC")
        if not reuse:
            console.print(f"loading {opts.history:,} interactions of the last 30 days")
            load_history(graph, company, opts.history, now, console, records.observe, stop)
        if stop.is_set():
            console.print("stopped while loading")
            return 0
        security, key = demo_security(store / KEYS_FILE, opts.host)
        server = make_server(
            graph,
            opts.host,
            listener.getsockname()[1],
            log_level="warning",
            gateway_port=opts.port + 1 if opts.port else 0,
            dev_tokens=True,
            security=security,
            rate_limits=opts.rate_limits,
        )
        sources: list[Source] = [
            outputs.playback.source()
            if name == "playback" and outputs.playback is not None
            else LogFileSource(name, writer.directory(name))
            for name in SOURCES
        ]
        engine = engine_for(
            graph,
            sources,
            Mapping.load_dir(DEMO_MAPPINGS, graph.schema),
            batch_records=BATCH_RECORDS,
            batch_ms=BATCH_MS,
            linger_ms=LINGER_MS,
            metrics=IngestMetrics(_registry(server)),
        )
        _attach_console(server, engine, company)
        snapshot = 0 if reuse else writer.write(records.snapshot(max(now_us(), now + 1)))
        return _serve(
            opts, console, company, records, outputs, server, listener, engine, snapshot, stop,
            graph, key,
        )  # fmt: skip
    finally:
        if listener is not None:
            listener.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
        writer.close()
        if outputs.playback is not None:
            outputs.playback.close()
        graph.close()


def _app(server: Any) -> Any:
    """The API app inside the uvicorn server."""
    return server.config.app


def _attach_console(server: Any, engine: EmbeddedEngine, company: Company) -> None:
    """The console's ingest status reads the engine's stats; its search knows the company."""
    state = getattr(_app(server), "state", None)
    if state is None:
        return
    state.ingest = engine.stats
    directory = getattr(getattr(state, "console", None), "directory", None)
    if directory is not None:
        directory.add(
            [
                *company.account_ids(),
                *company.profile_ids(),
                *company.device_ids(),
                *company.title_ids(),
                *company.genre_ids(),
                *company.game_ids(),
                *company.team_ids(),
                *company.live_event_ids(),
            ]
        )


@dataclass(frozen=True)
class Addresses:
    """Where the started API and live gateway listen (the ports bound, not the ones asked)."""

    api: str
    gateway: str


def _addresses(opts: DemoOptions, server: Any, listener: socket.socket) -> Addresses:
    from hopcast.api.server import url

    api = url(opts.host, listener.getsockname()[1])
    gateway = getattr(getattr(_app(server), "state", None), "gateway_url", None)
    return Addresses(api, gateway if isinstance(gateway, str) else "-")


def _scenario(
    opts: DemoOptions,
    console: Console,
    server: Any,
    graph: Graph,
    company: Company,
    where: Addresses,
) -> Scenario | None:
    """Schedule the scripted live event and start its devices (None: ``--event-in 0``)."""
    if opts.event_in <= 0:
        return None
    from hopcast.demo.scenario import Scenario, ScenarioOptions

    state = _app(server).state
    scenario = Scenario(
        ScenarioOptions(
            event_in_s=opts.event_in,
            devices=opts.devices,
            max_segments=opts.max_segments,
            seed=opts.seed,
        ),
        graph,
        state.live,
        state.console.reports,
        company,
        where.api,
        where.gateway,
        console.print,
    )
    scenario.schedule(now_us())
    scenario.start()
    return scenario


def _serve(
    opts: DemoOptions,
    console: Console,
    company: Company,
    records: CompanyRecords,
    outputs: Outputs,
    server: Any,
    listener: socket.socket,
    engine: EmbeddedEngine,
    snapshot: int,
    stop: threading.Event,
    graph: Graph,
    key: str,
) -> int:
    writer = outputs.writer
    failures: list[BaseException] = []

    def guarded(target: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the main thread, which stops the rest
                failures.append(exc)
                stop.set()

        return run

    engine_thread = threading.Thread(target=guarded(engine.run), name="engine")
    server_thread = threading.Thread(
        target=guarded(lambda: server.run(sockets=[listener])), name="api"
    )
    gen_stop = threading.Event()
    gen = GeneratorStats()
    gen_thread: threading.Thread | None = None
    scenario: Scenario | None = None
    try:
        engine_thread.start()
        with console.status(f"ingesting the snapshot of {snapshot:,} rows through the pipeline"):
            deadline = time.monotonic() + SNAPSHOT_S
            while engine.stats.events < snapshot and time.monotonic() < deadline:
                if stop.wait(0.05):
                    break
        if snapshot and not stop.is_set():
            q = engine.stats.freshness_quantiles()
            console.print(
                f"snapshot: {engine.stats.events:,} rows → {engine.stats.mutations:,} mutations"
                + ("" if q is None else f", freshness p50 {_secs(q[0])}, p99 {_secs(q[1])}")
            )
            # From here on the display's freshness is the live records' (/metrics keeps all).
            engine.stats.freshness.clear()
        server_thread.start()
        deadline = time.monotonic() + API_START_S
        while not server.started and server_thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started and not stop.is_set():
            stop.set()
            if not failures:
                failures.append(
                    RuntimeError(
                        _startup_failed(opts)
                        if not server_thread.is_alive()
                        else f"the API did not finish its startup within {API_START_S:g} s"
                    )
                )
        if not stop.is_set():
            where = _addresses(opts, server, listener)
            gen_thread = threading.Thread(
                target=guarded(
                    lambda: generate(records, outputs, opts.rate, now_us(), gen_stop, gen)
                ),
                name="generator",
            )
            gen.started = time.monotonic()
            gen_thread.start()
            _print_examples(console, opts, company, where, key)
            scenario = _scenario(opts, console, server, graph, company, where)
            _watch(opts, console, engine, gen, writer, stop, scenario)
    finally:
        if scenario is not None:
            scenario.stop()
        gen_stop.set()
        if gen_thread is not None:
            gen_thread.join()
        # Let the engine ingest what was written, then stop it: it finishes its batch.
        deadline = time.monotonic() + DRAIN_S
        while engine_thread.is_alive() and time.monotonic() < deadline:
            if engine.stats.events >= outputs.total and not sum(engine.stats.lag.values()):
                break
            time.sleep(0.05)
        engine.stop()
        engine_thread.join()
        server.should_exit = True
        if server_thread.is_alive():
            server_thread.join()
    for exc in failures:
        if isinstance(exc, SystemExit):  # uvicorn's way of saying the app did not start
            console.print(f"[red]error:[/] {_startup_failed(opts)}")
        else:
            console.print(f"[red]error:[/] {type(exc).__name__}: {exc}")
    st = engine.stats
    q = st.freshness_quantiles()
    fresh = "-" if q is None else f"p50 {_secs(q[0])}, p99 {_secs(q[1])}"
    dead = ", ".join(f"{r} {n}" for r, n in sorted(st.dead_by_reason.items()))
    console.print(
        f"stopped: {gen.interactions:,} live interactions → {gen.records:,} records "
        f"({gen.bad:,} deliberately bad); ingested {st.events:,} records → "
        f"{st.mutations:,} mutations; freshness {fresh}; {st.dead_letters:,} dead letters"
        + (f" ({dead})" if dead else "")
    )
    return 1 if failures else 0


def _startup_failed(opts: DemoOptions) -> str:
    gateway = f"port {opts.port + 1}" if opts.port else "a free port"
    return f"the API did not start (can the live gateway listen on {gateway}?)"


def _print_examples(
    console: Console, opts: DemoOptions, company: Company, where: Addresses, key: str
) -> None:
    base = where.api
    account = (company.heavy_account_ids() or company.account_ids())[0]
    profile = company.profiles_of(account)[0]
    title = company.title_ids()[0]
    store = opts.data / "graph"
    console.print(
        "\n".join(
            [
                f"console      {base}/web/console.html#key={key}",
                f"API key      {key}   (operator; send 'Authorization: Bearer <key>')",
                f"device page  {base}/web/device.html",
                f"API docs     {base}/docs",
                f"metrics      {base}/metrics   (hopcast_ingest_* : the pipeline)",
                f"neighbours   {base}/v1/nodes/{profile}/neighbours?edge=started_watching&limit=5",
                f"journey      {base}/v1/nodes/{account}/journey?since=1h&limit=20",
                f"count        {base}/v1/nodes/{profile}/count?edge=browsed&since=7d",
                f"curl         curl -H 'Authorization: Bearer {key}' {base}/v1/live/events",
                f"traverse     hopcast --store {store} query traverse {account} "
                "--hop has_profile --hop started_watching --hop in_genre",
                f"title        {base}/v1/nodes/{title}",
                f"live gateway {where.gateway} (device tokens: "
                f"POST {base}/v1/live/tokens, live events: {base}/v1/live/events)",
                f"logs         {opts.data / 'logs'}/<source>/  (what the pipeline tails)",
                f"dead letters hopcast --store {store} deadletters list",
                "Ctrl-C to stop.",
            ]
        )
    )


def _watch(
    opts: DemoOptions,
    console: Console,
    engine: EmbeddedEngine,
    gen: GeneratorStats,
    writer: LogWriter,
    stop: threading.Event,
    scenario: Scenario | None = None,
) -> None:
    """Show progress until ``stop`` or the duration ends."""
    end = time.monotonic() + opts.duration if opts.duration else None

    def left() -> float:
        return float("inf") if end is None else end - time.monotonic()

    show = console.is_terminal if opts.progress is None else opts.progress
    if show:
        table = status_table(engine, gen, writer, scenario)
        with Live(table, console=console, refresh_per_second=4) as live:
            while left() > 0 and not stop.wait(min(0.25, max(left(), 0))):
                live.update(status_table(engine, gen, writer, scenario))
        return
    while left() > 0 and not stop.wait(min(REPORT_S, max(left(), 0))):
        console.print(status_line(engine, gen, scenario))


def main(argv: list[str] | None = None) -> int:
    """``python -m hopcast.demo.run [OPTIONS]``: the options of ``hopcast run``."""
    from hopcast.cli.run import run_command

    code = run_command.main(args=argv, prog_name="hopcast run", standalone_mode=False)
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())

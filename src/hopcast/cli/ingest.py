"""``hopcast ingest`` and ``hopcast deadletters``: run the embedded engine, inspect bad input.

::

    hopcast [--store DIR] [--schema FILE] ingest run --source NAME=SPEC [--source …]
            [--mappings DIR] [--batch-records 5000] [--batch-ms 200] [--linger-ms 20]
            [--coalesce]
            [--until-idle] [--listen HOST:PORT] [--progress/--no-progress]
            [--log-format text|json] [--log-level info]
    hopcast deadletters list [--reason R] [--source S] [--limit N]
    hopcast deadletters show ID
    hopcast deadletters replay [--reason R] [--source S] [--id ID …] [--mappings DIR]

``SPEC`` is ``KIND:ARGS`` (:func:`hopcast.stream.sources.base.build_source`): ``file:PATH``
(a JSON-lines file, directory or glob), ``journal:DIR`` (the HTTP ingest journal), and, when
installed, ``kafka:…`` and ``postgres:…``. Each source is mapped by the file in ``--mappings``
(default: the demo company's mappings) whose ``source:`` is its NAME.

``ingest run`` writes into ``--store`` with exactly-once effect and resumes from the stored
positions when started again. SIGTERM or SIGINT (Ctrl-C) finish the current batch and exit 0.
``--until-idle`` exits once a batch finds nothing to read (one-off loads). ``--listen`` serves
``GET /metrics`` (the engine's Prometheus metrics) and, for ``journal:`` sources,
``POST /v1/ingest/{source}`` (:mod:`hopcast.api.ingest`; needs ``hopcast[server]``); once it
serves, it says where on stderr (``listening on http://HOST:PORT``: port 0 is a free port). Like
``hopcast serve`` it needs an API key (``--keys``; a ``writer`` key to ingest) unless started
with ``--insecure`` on a loopback host. A live
display on stderr shows events/s, lag, freshness p50/p99 and dead letters (``--progress``,
default when stderr is a terminal); logs are one JSON object a line with ``--log-format json``.

``deadletters replay`` runs each stored payload through the current mapping of its source (with
the side tables as the engine persisted them);
records that now map are written (without positions: a replay is outside the stream) and their
dead letters deleted; records that fail again keep one dead letter with the new reason.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table

from hopcast.cli.auth import security_options, server_security
from hopcast.cli.common import (
    Settings,
    json_option,
    make_console,
    print_json,
    rate_limit_option,
    wants_json,
)
from hopcast.durations import now_us
from hopcast.errors import (
    ConfigError,
    InvalidInput,
    NotFound,
    SchemaViolation,
    StorageRefused,
)
from hopcast.graphdb import Graph
from hopcast.ports import listening_socket
from hopcast.stream.deadletter import DeadLetter, DeadLetterStore, Reason
from hopcast.stream.engines.embedded import (
    EmbeddedEngine,
    EngineStats,
    TrackedSideTable,
    checkpoint_name,
    engine_for,
    load_side_tables,
    side_items,
)
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import SideTable
from hopcast.stream.record import Position, Record
from hopcast.stream.sources.base import Source, build_source

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value …``"""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STD_ATTRS)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower()} {record.name} {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (the live display redirects it, so
    log lines appear above the display instead of through it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(fmt: str, level: str) -> None:
    handler: logging.StreamHandler[Any] = logging.StreamHandler(_Stderr())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("hopcast")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def parse_sources(specs: tuple[str, ...]) -> list[Source]:
    """``NAME=KIND:ARGS`` options → sources.

    Raises:
        ConfigError: for a malformed option or spec.
    """
    out: list[Source] = []
    for option in specs:
        name, sep, spec = option.partition("=")
        if not sep or not name or not spec:
            raise ConfigError(f"--source {option!r}: expected NAME=KIND:ARGS")
        out.append(build_source(name, spec))
    return out


def load_mappings(directory: str | None, graph: Graph) -> dict[str, Mapping]:
    path = Path(directory) if directory else DEMO_MAPPINGS
    if not path.is_dir():
        raise ConfigError(f"--mappings {path}: not a directory")
    return Mapping.load_dir(path, graph.schema)


def progress_view(engine: EmbeddedEngine) -> Table:
    """The live display: rates, totals, lag per source, freshness, dead letters by reason."""
    st: EngineStats = engine.stats
    events_s, mutations_s = st.rate()
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("events/s", f"{events_s:,.0f}   (total {st.events:,})")
    table.add_row("mutations/s", f"{mutations_s:,.0f}   (total {st.mutations:,})")
    lag = ", ".join(f"{s} {v:,}" for s, v in sorted(st.lag.items())) or "-"
    table.add_row("lag", lag)
    q = st.freshness_quantiles()
    table.add_row("freshness", "-" if q is None else f"p50 {_secs(q[0])}  p99 {_secs(q[1])}")
    dead = ", ".join(f"{r} {n}" for r, n in sorted(st.dead_by_reason.items()))
    table.add_row("dead letters", f"{st.dead_letters:,}" + (f"  ({dead})" if dead else ""))
    return table


def _secs(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86_400:.0f} d"


#: How long ``--listen`` waits for its HTTP server's startup (the app is small: milliseconds
#: normally; a bound for a machine too busy to serve).
LISTEN_START_S = 60.0


@contextmanager
def _listening(
    address: str | None,
    engine: EmbeddedEngine,
    sources: list[Source],
    security: Any = None,
    rate_limits: Any = None,
) -> Iterator[None]:
    """Serve /metrics and the journal ingest route in a background thread while the engine runs."""
    if address is None:
        yield
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {address!r}: expected HOST:PORT")
    try:
        import uvicorn

        from hopcast.api.ingest import ingest_app
        from hopcast.api.server import PROXY_HEADERS
    except ImportError as exc:
        raise ConfigError(
            f"--listen needs the server extras: pip install 'hopcast[server]' ({exc})"
        ) from exc
    from hopcast.stream.sources.journal import Journal, JournalSource

    try:
        sock = listening_socket(host, int(port))
    except OSError as exc:
        raise ConfigError(f"--listen {address}: cannot listen there: {exc}") from exc
    # The HTTP side owns its writers: they outlive the engine's sources until the server stops.
    journals = {s.name: Journal(s.directory) for s in sources if isinstance(s, JournalSource)}
    app = ingest_app(journals, engine.metrics.registry, security=security, rate_limits=rate_limits)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=int(port),
            log_level="warning",
            access_log=False,
            proxy_headers=PROXY_HEADERS,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ingest-http", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + LISTEN_START_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
        for journal in journals.values():
            journal.close()
        raise ConfigError(f"--listen {address}: the HTTP server did not start")
    bound = sock.getsockname()[1]
    print(
        f"listening on http://{host}:{bound} (/metrics, /v1/ingest/{{source}})",
        file=sys.stderr,
        flush=True,
    )
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
        for journal in journals.values():
            journal.close()


@click.group("ingest")
def ingest() -> None:
    """Run sources through their mappings into the graph (the embedded engine)."""


@ingest.command("run")
@click.option(
    "--source",
    "sources",
    multiple=True,
    required=True,
    metavar="NAME=SPEC",
    help="A source: NAME (its mapping's source:) = KIND:ARGS, e.g. browse=file:/var/log/browse.",
)
@click.option("--mappings", metavar="DIR", help="Mapping files [default: the demo mappings].")
@click.option(
    "--batch-records",
    type=click.IntRange(1),
    default=5000,
    show_default=True,
    help="Most records per atomic write.",
)
@click.option(
    "--batch-ms",
    type=click.FloatRange(0),
    default=200.0,
    show_default=True,
    help="Longest a batch collects records.",
)
@click.option(
    "--linger-ms",
    type=click.FloatRange(0),
    default=20.0,
    show_default=True,
    help="How long a batch keeps collecting after its first record.",
)
@click.option(
    "--coalesce",
    is_flag=True,
    help="Merge overlapping updates per node and edge within a batch before writing.",
)
@click.option("--until-idle", is_flag=True, help="Exit once a batch finds nothing to read.")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Serve /metrics and POST /v1/ingest/{source} (needs an API key, or --insecure on "
    "loopback).",
)
@security_options
@rate_limit_option
@click.option("--progress/--no-progress", default=None, help="Live display on stderr.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@json_option
@click.pass_obj
def run(
    settings: Settings,
    sources: tuple[str, ...],
    mappings: str | None,
    batch_records: int,
    batch_ms: float,
    linger_ms: float,
    coalesce: bool,
    until_idle: bool,
    listen: str | None,
    keys: str | None,
    insecure: bool,
    allowed_hosts: tuple[str, ...],
    cors_origins: tuple[str, ...],
    rate_limits: Any,
    progress: bool | None,
    log_format: str,
    log_level: str,
    as_json: bool,
) -> None:
    """Ingest from sources into the store until stopped (SIGTERM/SIGINT: finish, flush, exit 0).

    SPEC is KIND:ARGS: file:PATH (JSON lines: a file, directory or glob), journal:DIR (what
    POST /v1/ingest/NAME accepted), kafka:… and postgres:… (see their modules). Restarts
    resume after the positions stored with the graph.

    JSON: {"events", "mutations", "dead_letters", "dead_by_reason", "batches", "seconds"}.
    """
    setup_logging(log_format, log_level)
    built = parse_sources(sources)
    security = None
    if listen is not None:  # refuse an unguarded server before opening anything
        host = listen.rpartition(":")[0]
        security = server_security(settings, host, keys, insecure, allowed_hosts, cors_origins)
    with Graph.open(settings.store, settings.schema) as graph:
        maps = load_mappings(mappings, graph)
        try:
            engine = engine_for(
                graph,
                built,
                maps,
                batch_records=batch_records,
                batch_ms=batch_ms,
                linger_ms=linger_ms,
                coalesce=coalesce,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        engine.install_signal_handlers()
        show = sys.stderr.isatty() if progress is None else progress
        started = time.monotonic()
        with _listening(listen, engine, built, security, rate_limits):
            if show:
                console = make_console(stderr=True, highlight=True)
                with Live(progress_view(engine), console=console, refresh_per_second=4) as live:
                    last = [0.0]

                    def refresh(_: Any) -> None:
                        now = time.monotonic()
                        if now - last[0] >= 0.25:
                            last[0] = now
                            live.update(Group(progress_view(engine)))

                    stats = engine.run(until_idle=until_idle, on_batch=refresh)
                    live.update(progress_view(engine))
            else:
                stats = engine.run(until_idle=until_idle)
    doc = {
        "events": stats.events,
        "mutations": stats.mutations,
        "dead_letters": stats.dead_letters,
        "dead_by_reason": stats.dead_by_reason,
        "batches": stats.batches,
        "seconds": round(time.monotonic() - started, 3),
    }
    if wants_json(settings, as_json):
        print_json(doc)
    else:
        make_console().print(
            f"ingested {doc['events']:,} events → {doc['mutations']:,} mutations, "
            f"{doc['dead_letters']:,} dead letters in {doc['seconds']} s"
        )


@ingest.command("positions")
@click.option("--source", help="Only this source's positions.")
@json_option
@click.pass_obj
def positions(settings: Settings, source: str | None, as_json: bool) -> None:
    """The stored source positions: where each source partition resumes (strictly after).

    A position that cannot be read is listed as corrupt (the engine refuses to start on it:
    repair it with 'hopcast ingest set-position'). Checkpoints of other writers (Flink jobs'
    totals) are listed with their name only.

    JSON: {"positions": [{"name", "source", "partition", "offset", "state"}]} (state ok,
    corrupt or other).
    """
    rows: list[dict[str, Any]] = []
    with Graph.open(settings.store, settings.schema) as graph:
        for name, raw in sorted(graph.store.checkpoints().items()):
            src, _, partition = name.partition("/")
            if source is not None and src != source:
                continue
            row: dict[str, Any] = {"name": name, "source": src, "partition": partition}
            try:
                pos = Position.from_bytes(raw)
            except ValueError:
                state = "other" if src.startswith("flink:") else "corrupt"
                rows.append(row | {"offset": None, "state": state})
                continue
            rows.append(row | {"partition": pos.partition, "offset": pos.offset, "state": "ok"})
    if wants_json(settings, as_json):
        print_json({"positions": rows})
        return
    table = Table("source", "partition", "offset", "state", box=None)
    for r in rows:
        table.add_row(
            r["source"], r["partition"], "" if r["offset"] is None else str(r["offset"]), r["state"]
        )
    make_console().print(table if rows else "no stored positions")


@ingest.command("set-position")
@click.argument("source")
@click.argument("partition")
@click.argument("offset")
@click.pass_obj
def set_position(settings: Settings, source: str, partition: str, offset: str) -> None:
    """Store where SOURCE's PARTITION resumes: strictly after OFFSET, or from its start
    (OFFSET 'start').

    For a position that is corrupt, or to read a partition again on purpose. Stop the
    ingest first: a running engine overwrites the position with its next batch. Writes are
    idempotent, so reading records again changes nothing they already wrote.
    """
    if not source or not partition:
        raise InvalidInput("SOURCE and PARTITION must not be empty")
    try:
        after = -1 if offset == "start" else int(offset)
    except ValueError:
        raise InvalidInput(f"OFFSET must be an integer or 'start', got {offset!r}") from None
    if after < -1:
        raise InvalidInput(f"OFFSET must be >= 0 (or 'start'), got {after}")
    with Graph.open(settings.store, settings.schema) as graph:
        name = checkpoint_name(source, partition)
        graph.store.apply([], {name: Position(partition, after).to_bytes()}, validated=True)
    where = "from its start" if after < 0 else f"after offset {after}"
    make_console().print(f"{name}: resumes {where}")


@click.group("deadletters")
def deadletters() -> None:
    """Inspect and replay records that could not be ingested."""


def _row(d: DeadLetter) -> dict[str, Any]:
    doc = d.to_dict()
    doc["position"] = f"{d.position.partition}@{d.position.offset}"
    return doc


@deadletters.command("list")
@click.option("--reason", help="Only this reason (malformed_json, schema_violation, …).")
@click.option("--source", help="Only this source.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_obj
def list_(
    settings: Settings, reason: str | None, source: str | None, limit: int, as_json: bool
) -> None:
    """Dead letters, newest first.

    JSON: {"total", "items": [dead letter]} (a dead letter as in `show`).
    """
    with Graph.open(settings.store, settings.schema) as graph:
        store = DeadLetterStore(graph.store.kv)
        page = store.list(limit, reason=reason, source=source)
        total = store.count(reason=reason, source=source)
    if wants_json(settings, as_json):
        print_json({"total": total, "items": [d.to_dict() for d in page.items]})
        return
    table = Table(title=f"{total} dead letters", title_justify="left")
    for col in ("id", "reason", "source", "position"):
        table.add_column(col, no_wrap=True)
    table.add_column("message", overflow="fold")
    for d in page.items:
        table.add_row(d.id, d.reason, d.source, str(d.position), d.message[:120])
    make_console(highlight=True).print(table)


@deadletters.command("show")
@click.argument("letter_id", metavar="ID")
@json_option
@click.pass_obj
def show(settings: Settings, letter_id: str, as_json: bool) -> None:
    """One dead letter with its raw payload.

    JSON: {"id", "reason", "message", "payload", "payload_encoding", "source",
    "position": {"partition", "offset"}, "time", "stage", "mapping", "event_time"}.
    """
    with Graph.open(settings.store, settings.schema) as graph:
        d = DeadLetterStore(graph.store.kv).get(letter_id)
    if d is None:
        raise NotFound(f"no dead letter {letter_id!r}")
    doc = d.to_dict()
    if wants_json(settings, as_json):
        print_json(doc)
        return
    console = make_console()
    for key in ("id", "reason", "message", "source", "position", "stage", "mapping", "time"):
        console.print(f"[bold]{key}[/bold]: {doc[key]}")
    console.print("[bold]payload[/bold]:")
    console.print(doc["payload"], markup=False)


@deadletters.command("replay")
@click.option("--reason", help="Only dead letters with this reason.")
@click.option("--source", help="Only dead letters of this source.")
@click.option("--id", "ids", multiple=True, help="Only these ids (repeatable).")
@click.option("--mappings", metavar="DIR", help="Mapping files [default: the demo mappings].")
@json_option
@click.pass_obj
def replay(
    settings: Settings,
    reason: str | None,
    source: str | None,
    ids: tuple[str, ...],
    mappings: str | None,
    as_json: bool,
) -> None:
    """Re-run dead letters through the current mappings; delete those that now ingest.

    JSON: {"replayed", "ingested", "failed", "mutations", "failures": {reason: count}}.
    """
    with Graph.open(settings.store, settings.schema) as graph:
        store = DeadLetterStore(graph.store.kv)
        maps = load_mappings(mappings, graph)
        tables = {t: TrackedSideTable(t) for m in maps.values() for t in m.tables}
        load_side_tables(graph.store.kv, tables)  # enrichments see what the engine saw
        shared: dict[str, SideTable] = dict(tables)
        pipelines = {name: m.pipeline(graph.schema, tables=shared) for name, m in maps.items()}
        if ids:
            letters = []
            for i in ids:
                d = store.get(i)
                if d is None:
                    raise NotFound(f"no dead letter {i!r}")
                letters.append(d)
        else:
            letters = [
                d
                for d in store
                if (reason is None or d.reason == reason) and (source is None or d.source == source)
            ]
        result = replay_letters(graph, store, pipelines, letters)
        changes = side_items(tables)
        if changes:
            graph.store.apply([], extra=changes)
    if wants_json(settings, as_json):
        print_json(result)
    else:
        make_console().print(
            f"replayed {result['replayed']}: {result['ingested']} ingested "
            f"({result['mutations']} mutations), {result['failed']} failed again"
        )
    if result["failed"]:
        raise click.exceptions.Exit(1)


def replay_letters(
    graph: Graph, store: DeadLetterStore, pipelines: dict[str, Any], letters: list[DeadLetter]
) -> dict[str, Any]:
    """Replay ``letters`` in their stream order (oldest position first, per source)."""
    out: dict[str, Any] = {"replayed": 0, "ingested": 0, "failed": 0, "mutations": 0}
    failures: dict[str, int] = {}
    now = now_us()
    for d in sorted(letters, key=lambda d: (d.source, d.position)):
        out["replayed"] += 1
        pipeline = pipelines.get(d.source)
        if pipeline is None:
            raise InvalidInput(f"dead letter {d.id}: no mapping for source {d.source!r}")
        record = Record(d.source, d.position, d.payload, d.key, d.event_time)
        result = pipeline.process(record, now)
        if len(result) == 1 and isinstance(result[0], DeadLetter):
            store.put(result[0])
            out["failed"] += 1
            failures[result[0].reason] = failures.get(result[0].reason, 0) + 1
            continue
        try:
            graph.apply(result)
        except (SchemaViolation, StorageRefused) as exc:
            reason = (
                Reason.SCHEMA_VIOLATION if isinstance(exc, SchemaViolation) else Reason.WRITE_FAILED
            )
            store.put(replace(d, reason=reason, message=str(exc), time=now, stage="write"))
            out["failed"] += 1
            failures[reason] = failures.get(reason, 0) + 1
            continue
        store.delete(d.id)
        out["ingested"] += 1
        out["mutations"] += len(result)
    out["failures"] = failures
    return out

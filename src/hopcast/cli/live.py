"""``hopcast live …``: schedule and operate live events, on the local store or a server (--url).

::

    hopcast [--store PATH] live create ID --title T --starts-at TIME [--ends-at TIME] [--lead 30m]
    hopcast live list | show ID
    hopcast live delay ID 5m                 (-- -5m brings it forward)
    hopcast live reschedule ID [--starts-at …] [--ends-at … | --no-end]
    hopcast live start|end|cancel|interrupt|resume ID
    hopcast live materialise ID [--segment KEY …]
    hopcast live cardinality ID
    hopcast live token DEVICE --channel C [--ttl 1h]
    hopcast live revoke (--token-id JTI | --subject DEVICE) [--keep 7d] [--redis URL | --url API]

Every command takes ``--url`` (command a running ``hopcast serve`` through ``/v1/live``) and
``--json`` (print the document the HTTP API answers). Without ``--url`` the command runs a
:class:`~hopcast.live.service.LiveService` on ``--store``: the schedule lives in the same LMDB
environment as the graph, under its own ``live.*`` namespaces. A server that runs the store does
not see a local change until it restarts (and then announces only the current stages), so with a
server up, use ``--url``.

Times: a duration from now (``10m``), µs since the epoch, or ISO-8601 (UTC without a zone).
A command the event's state does not accept prints one line, ``error: live event 'x' cannot …
(accepted now: …)``, and exits 2, like every other input error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from hopcast.cli import remote
from hopcast.cli.common import (
    Doc,
    Settings,
    emit,
    make_console,
    missing_store,
    query_options,
    store_dir,
    wants_json,
)
from hopcast.cli.gateway import gateway
from hopcast.cli.render import age, iso
from hopcast.cli.simulate import simulate_command
from hopcast.config import live_secret
from hopcast.durations import DAY, HOUR, MINUTE, SECOND, format_duration, now_us, parse_duration
from hopcast.errors import HopcastError, InvalidInput, NotFound
from hopcast.kv import open_kv
from hopcast.live.prefetch import DEFAULT_LEAD_US
from hopcast.live.schedule import Cancel, Command, Create, EndNow, Interrupt, Resume, StartNow
from hopcast.live.service import (
    KEEP,
    LiveService,
    event_doc,
    parse_delay,
    parse_instant,
    parse_lead,
    result_doc,
)
from hopcast.live.tokens import issue as issue_token
from hopcast.live.tokens import verify as verify_token

ROUTE = "/v1/live/events"


# -- running a command here or there ---------------------------------------------------------------


@contextmanager
def _service(settings: Settings) -> Iterator[LiveService]:
    """A service over the local store, which must exist: an event created in a new store would
    be served by no server (the usual slip: forgetting ``--url`` while ``make demo`` runs).

    Raises:
        NotFound: the store directory holds no store.
    """
    path = store_dir(settings.store)
    if path is not None and not (path / "data.mdb").is_file():
        raise NotFound(
            f"{missing_store(path)}: to reach a running server pass --url (e.g. "
            "--url http://127.0.0.1:8321, where `make demo` serves), or point --store (or "
            "$HOPCAST_STORE) at an existing store (`hopcast serve --store DIR` creates one)"
        )
    kv = open_kv(settings.store)
    try:
        yield LiveService(kv)
    finally:
        kv.close()


def _event_route(event_id: str, action: str = "") -> str:
    suffix = f"/{action}" if action else ""
    return f"{ROUTE}/{remote.segment(event_id)}{suffix}"


def _command(
    settings: Settings,
    url: str | None,
    event_id: str,
    action: str,
    make: Callable[[str], Command],
) -> Doc:
    """POST ``action`` to the server, or run ``make(event_id)`` on the local store."""
    if url:
        return remote.call(url, _event_route(event_id, action), {}, {})
    with _service(settings) as service:
        return result_doc(service.command(make(event_id), now_us()))


def _show(settings: Settings, as_json: bool, doc: Doc, url: str | None) -> None:
    emit(settings, as_json, doc, _render_result)
    if not url and not wants_json(settings, as_json) and doc.get("triggers"):
        make_console(stderr=True).print(
            Text(
                "note: the local store changed; a running server announces it only after a "
                "restart (use --url to command a server)",
                style="dim",
            ),
            soft_wrap=True,
        )


# -- commands --------------------------------------------------------------------------------------


@click.group()
def live() -> None:
    """Schedule and operate live events (the local store, or a server with --url)."""


live.add_command(gateway)


@live.command()
@click.argument("event_id", metavar="ID")
@click.option("--title", required=True, help="Display name of the event.")
@click.option("--starts-at", required=True, metavar="TIME", help="10m, µs or ISO-8601.")
@click.option("--ends-at", metavar="TIME", help="Same forms; default: ended by command.")
@click.option(
    "--lead",
    default=format_duration(DEFAULT_LEAD_US),
    show_default=True,
    metavar="DURATION",
    help="How long before the start the prefetch window opens.",
)
@query_options
@click.pass_obj
def create(
    settings: Settings,
    event_id: str,
    title: str,
    starts_at: str,
    ends_at: str | None,
    lead: str,
    url: str | None,
    as_json: bool,
) -> None:
    """Schedule live event ID. A start at or before now goes live at once."""
    if url:
        body = {"id": event_id, "title": title, "starts_at": starts_at, "prefetch_lead": lead}
        doc = remote.call(url, ROUTE, {}, body | {"ends_at": ends_at})
    else:
        now = now_us()
        start = parse_instant(starts_at, now)
        end = None if ends_at is None else parse_instant(ends_at, now)
        command = Create(event_id, title, start, end, parse_lead(lead))
        with _service(settings) as service:
            doc = result_doc(service.command(command, now))
    _show(settings, as_json, doc, url)


@live.command("list")
@query_options
@click.pass_obj
def list_events(settings: Settings, url: str | None, as_json: bool) -> None:
    """Every live event: state, version, times.

    JSON: {"events": [event, …]} as GET /v1/live/events answers.
    """
    if url:
        doc = remote.call(url, ROUTE, {})
    else:
        with _service(settings) as service:
            doc = {"events": [event_doc(e) for e in service.events()]}
    emit(settings, as_json, doc, _render_list)


@live.command()
@click.argument("event_id", metavar="ID")
@query_options
@click.pass_obj
def show(settings: Settings, event_id: str, url: str | None, as_json: bool) -> None:
    """One event: schedule, stage times, accepted commands, pending timer, history."""
    if url:
        doc = remote.call(url, _event_route(event_id), {})
    else:
        with _service(settings) as service:
            doc = event_doc(service.get(event_id))
    emit(settings, as_json, doc, _render_event)


@live.command()
@click.argument("event_id", metavar="ID")
@click.argument("amount", metavar="DURATION")
@query_options
@click.pass_obj
def delay(settings: Settings, event_id: str, amount: str, url: str | None, as_json: bool) -> None:
    """Delay ID by DURATION (5m): its start and end move, or only its end once it is live.

    Bring it forward with a negative duration after --: `hopcast live delay ID -- -5m`.
    """
    if url:
        doc = remote.call(url, _event_route(event_id, "reschedule"), {}, {"delay": amount})
    else:
        with _service(settings) as service:
            result = service.reschedule(event_id, now_us(), delay_us=parse_delay(amount))
            doc = result_doc(result)
    _show(settings, as_json, doc, url)


@live.command()
@click.argument("event_id", metavar="ID")
@click.option("--starts-at", metavar="TIME", help="New start: 10m, µs or ISO-8601.")
@click.option("--ends-at", metavar="TIME", help="New end, same forms.")
@click.option("--no-end", is_flag=True, help="Remove the end (ended by command).")
@query_options
@click.pass_obj
def reschedule(
    settings: Settings,
    event_id: str,
    starts_at: str | None,
    ends_at: str | None,
    no_end: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Set new times for ID (the options not given stay as they are)."""
    if no_end and ends_at is not None:
        raise click.UsageError("--ends-at and --no-end exclude each other")
    if url:
        body: Doc = {}
        if starts_at is not None:
            body["starts_at"] = starts_at
        if ends_at is not None or no_end:
            body["ends_at"] = ends_at
        doc = remote.call(url, _event_route(event_id, "reschedule"), {}, body)
    else:
        now = now_us()
        start: Any = KEEP if starts_at is None else parse_instant(starts_at, now)
        end: Any = None if no_end else KEEP if ends_at is None else parse_instant(ends_at, now)
        with _service(settings) as service:
            doc = result_doc(service.reschedule(event_id, now, starts_at=start, ends_at=end))
    _show(settings, as_json, doc, url)


def _simple(name: str, make: Callable[[str], Command], help: str) -> None:
    @live.command(name, help=help)
    @click.argument("event_id", metavar="ID")
    @query_options
    @click.pass_obj
    def run(settings: Settings, event_id: str, url: str | None, as_json: bool) -> None:
        _show(settings, as_json, _command(settings, url, event_id, name, make), url)


_simple("start", StartNow, "Go live now (before the scheduled start).")
_simple("end", EndNow, "End a live or interrupted event now (an early end).")
_simple("cancel", Cancel, "Cancel the event; devices drop it.")
_simple("interrupt", Interrupt, "Interrupt a live event (a stoppage).")
_simple("resume", Resume, "Make an interrupted event live again.")


@live.command()
@click.argument("event_id", metavar="ID")
@click.option(
    "--segment",
    "segments",
    multiple=True,
    metavar="KEY",
    help="Segment key (repeat); default: every segment of the demo company.",
)
@query_options
@click.pass_obj
def materialise(
    settings: Settings, event_id: str, segments: tuple[str, ...], url: str | None, as_json: bool
) -> None:
    """Publish fixture payloads for every stage of ID through the real payload store.

    With --url the server runs it as a job; its progress is shown (on a terminal) until done.

    JSON: {"event", "version", "stages", "segments", "entries", "cardinality"}.
    """
    wanted = list(segments) or None
    with _progress(f"materialising {event_id}") as progress:
        if url:
            body = {} if wanted is None else {"segments": wanted}
            doc = remote.call(url, _event_route(event_id, "materialise"), {"wait": 1}, body)
            doc = _follow_job(url, doc, progress)
        else:
            with _service(settings) as service:
                doc = service.materialise(event_id, now_us(), wanted, progress)
    emit(settings, as_json, doc, _render_materialised)


#: How often ``materialise --url`` asks for its job's progress: a few times a second is smooth
#: on a terminal and a negligible load on the server.
JOB_POLL_S = 0.25


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (a terminal only); yields ``progress(done, total)``."""
    console = make_console(stderr=True, highlight=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("writes"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task = bar.add_task(what, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def _follow_job(url: str, doc: Doc, progress: Callable[[int, int], None]) -> Doc:
    """The result of a server's job (``hopcast.api.jobs``): poll its url, reporting progress,
    until it is done; a doc that is not a job is the result already.

    Raises:
        NotFound, InvalidInput, HopcastError: the job failed (as the request would have).
    """
    while _is_job(doc) and doc["state"] in ("queued", "running"):
        progress(doc["progress"]["done"], doc["progress"]["total"])
        time.sleep(JOB_POLL_S)
        doc = remote.call(url, doc["url"], {})
    if not _is_job(doc):
        return doc
    if doc["state"] == "failed":
        err = doc["error"] or {}
        message = err.get("message") or "the job failed"
        if err.get("status") == 404:
            raise NotFound(message)
        if 400 <= err.get("status", 500) < 500:
            raise InvalidInput(message)
        raise HopcastError(f"server error (HTTP {err.get('status')}): {message}")
    progress(doc["progress"]["done"], doc["progress"]["total"])
    result: Doc = doc["result"]
    return result


def _is_job(doc: Doc) -> bool:
    return isinstance(doc.get("progress"), dict) and "url" in doc and "state" in doc


@live.command()
@click.argument("event_id", metavar="ID")
@query_options
@click.pass_obj
def cardinality(settings: Settings, event_id: str, url: str | None, as_json: bool) -> None:
    """Distinct payloads served for ID, per stage, against the (stage, segment) entries."""
    if url:
        doc = remote.call(url, _event_route(event_id, "cardinality"), {})
    else:
        with _service(settings) as service:
            doc = service.cardinality(event_id, now_us())
    emit(settings, as_json, doc, _render_cardinality)


# -- rendering -------------------------------------------------------------------------------------

_UNITS = (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND))
_STATE_STYLE = {
    "scheduled": "cyan",
    "prefetch": "blue",
    "live": "bold green",
    "interrupted": "yellow",
    "ended": "dim",
    "cancelled": "red",
}


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def _when(us: int | None, now: int) -> str:
    return "-" if us is None else f"{iso(us)} ({age(us, now)})"


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLE.get(state, ""))


def _delay(us: int) -> str:
    """``+5m`` (later than first scheduled) or ``-10m`` (earlier), in the largest whole unit."""
    if us == 0:
        return ""
    sign = "+" if us > 0 else "-"
    for unit, size in _UNITS:
        if abs(us) >= size:
            return f"{sign}{abs(us) // size}{unit}"
    return f"{sign}{abs(us)}us"


def _render_list(console: Console, doc: Doc) -> None:
    now = now_us()
    table = _table("event", "title", "state", "version", "starts (UTC)", "ends (UTC)", "delay")
    for e in doc["events"]:
        table.add_row(
            Text(e["id"]),
            Text(e["title"]),
            _state(e["state"]),
            str(e["version"]),
            _when(e["starts_at"], now),
            _when(e["ends_at"], now),
            _delay(e["delay_us"]),
        )
    console.print(table)
    console.print(f"{len(doc['events'])} live event(s)")


def _render_event(console: Console, doc: Doc) -> None:
    now = now_us()
    console.print(Text(f"{doc['id']} — {doc['title']}", style="bold"), soft_wrap=True)
    rows: list[tuple[str, Any]] = [
        ("state", _state(doc["state"]) + f" (version {doc['version']})"),
        ("since", _when(doc["stage_changed_at"], now)),
        ("starts", _when(doc["starts_at"], now)),
        ("ends", _when(doc["ends_at"], now)),
        ("delay", _delay(doc["delay_us"]) or "none"),
        (
            "prefetch",
            f"opens {_when(doc['prefetch_opens_at'], now)}, lead "
            f"{format_duration(doc['prefetch_lead_us'])}",
        ),
    ]
    timer = doc.get("next_timer")
    if timer is not None:
        rows.append(("next timer", f"{timer['reason']} at {_when(timer['at'], now)}"))
    rows.append(("accepts", ", ".join(doc["accepts"]) or "nothing (finished)"))
    for label, value in rows:
        console.print(Text(f"{label:<11}") + (value if isinstance(value, Text) else Text(value)))
    history = _table("version", "input", "from", "to", "time (UTC)", title="history")
    for h in doc["history"]:
        history.add_row(
            str(h["version"]), h["input"], h["from"] or "-", _state(h["to"]), iso(h["at"])
        )
    console.print(history)


def _render_result(console: Console, doc: Doc) -> None:
    _render_event(console, doc)
    for t in doc.get("triggers", []):
        console.print(
            Text(f"trigger: {t['event']} → ") + _state(t["stage"]) + f" (version {t['version']})"
        )


def _render_materialised(console: Console, doc: Doc) -> None:
    console.print(
        f"{doc['event']}: {doc['entries']:,} (stage, segment) entries over {doc['segments']:,} "
        f"segment(s) and {len(doc['stages'])} stage(s) → {doc['cardinality']:,} distinct "
        f"payload(s) (version {doc['version']})"
    )


def _render_cardinality(console: Console, doc: Doc) -> None:
    table = _table("stage", "segments", "payloads", title=doc["event"])
    for stage, counts in doc["stages"].items():
        table.add_row(_state(stage), f"{counts['segments']:,}", f"{counts['payloads']:,}")
    console.print(table)
    console.print(f"{doc['cardinality']:,} distinct payload(s) behind {doc['entries']:,} entries")


@live.command()
@click.argument("device")
@click.option(
    "--channel", "channels", multiple=True, required=True, help="Channel the device may follow."
)
@click.option(
    "--ttl", default="1h", show_default=True, help="Lifetime, e.g. 1h or 30m; at most 7d."
)
@click.option("--json", "as_json", is_flag=True, help="Machine output: one JSON document.")
@click.pass_obj
def token(
    settings: Settings, device: str, channels: tuple[str, ...], ttl: str, as_json: bool
) -> None:
    """Issue a device token signed with $HOPCAST_LIVE_SECRET (what `hopcast serve
    --gateway-port` verifies)."""
    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        raise InvalidInput(f"--ttl: {exc}") from None
    now = now_us()
    issued = issue_token(live_secret(required=True), device, channels, now, lifetime)
    doc: Doc = {
        "token": issued,
        "token_id": verify_token(live_secret(required=True), issued, now).token_id,
        "device": device,
        "channels": list(channels),
        "expires_at": now + lifetime,
    }
    emit(settings, as_json, doc, lambda console, d: console.print(d["token"], soft_wrap=True))


@live.command()
@click.option("--token-id", default=None, help="Revoke one token: its id (the jti claim).")
@click.option("--subject", default=None, help="Revoke every token of this device issued until now.")
@click.option(
    "--keep",
    default="7d",
    show_default=True,
    help="How long the entry is kept (then pruned); a token living longer than that is "
    "accepted again once pruned (tokens live at most 7d).",
)
@click.option("--note", default="", help="Why (kept with the entry).")
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    default=None,
    help="The list of gateway nodes fed through this Redis (`hopcast live gateway`).",
)
@click.option("--prefix", default=None, help="Redis key prefix [default: hopcast:live:].")
@click.option(
    "--url", default=None, help="A running `hopcast serve` (POST /v1/live/tokens/revoke)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine output: one JSON document.")
@click.pass_obj
def revoke(
    settings: Settings,
    token_id: str | None,
    subject: str | None,
    keep: str,
    note: str,
    redis_url: str | None,
    prefix: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Revoke device tokens by id or subject: every gateway reading the list closes the
    connections using them (`bye revoked`) within a second and refuses them at hello.

    The list is, in order: the server's with --url; the Redis one with --redis; else the
    store's: <store>/revocations.json, or on a Redis store the hash beside its keys, which
    `hopcast serve --gateway-port` on that store polls.
    """
    import asyncio

    from hopcast.live.revocation import FileRevocations, RevocationSource, revocation

    if (token_id is None) == (subject is None):
        raise InvalidInput("name exactly one of --token-id and --subject")
    kind, value = ("token_id", token_id) if token_id is not None else ("subject", subject)
    assert value is not None
    if url is not None:
        body: Doc = {kind: value, "keep": keep, "note": note}
        doc = remote.call(url, "/v1/live/tokens/revoke", {}, body)
    else:
        try:
            retention = parse_duration(keep)
        except ValueError as exc:
            raise InvalidInput(f"--keep: {exc}") from None
        now = now_us()
        entry = revocation(kind, value, now, retention_us=retention, note=note)
        source: RevocationSource | None = None
        directory = store_dir(settings.store)
        if redis_url is not None:
            from hopcast.live.redisfan import DEFAULT_PREFIX
            from hopcast.live.redisrevoke import RedisRevocations

            source = RedisRevocations(redis_url, prefix=prefix or DEFAULT_PREFIX)
        elif directory is None:
            # A Redis store: the list beside its keys, which `hopcast serve` on it polls.
            from hopcast.kv import open_kv
            from hopcast.live.redisrevoke import for_store

            kv = open_kv(settings.store)
            try:
                source = for_store(kv)
            finally:
                kv.close()
            if source is None:
                raise InvalidInput(
                    "--store is neither a directory nor one Redis server: use --redis or --url"
                )
        if source is not None:
            shared = source

            async def add() -> int:
                try:
                    return len(await shared.add(entry, now))
                finally:
                    await shared.close()

            entries = asyncio.run(add())
        else:
            assert directory is not None
            entries = len(FileRevocations.in_directory(directory).add_sync(entry, now))
        doc = {
            "kind": kind,
            "value": value,
            "revoked_at": entry.revoked_at,
            "until": entry.until,
            "entries": entries,
        }
    emit(
        settings,
        as_json,
        doc,
        lambda console, d: console.print(
            f"revoked {d['kind']} {d['value']!r} until {iso(d['until'])} "
            f"({d['entries']} entries in the list)"
        ),
    )


live.add_command(simulate_command)

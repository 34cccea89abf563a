"""What every ``hopcast`` command shares: settings, exit codes, options, opening the store, output.

Exit codes: 0 success; :data:`EXIT_ERROR` (1) storage or other failures, and ``apply`` runs that
skipped bad lines; :data:`EXIT_BAD_INPUT` (2) the caller's input is wrong (invalid query or
mutation, schema error, missing store) — the same code click uses for usage errors.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from hopcast.durations import parse_duration, parse_iso
from hopcast.errors import ConfigError, HopcastError, InvalidInput, NotFound, SchemaError
from hopcast.graphdb import Graph
from hopcast.query import spec as q

#: Where the embedded store lives when neither ``--store`` nor ``$HOPCAST_STORE`` says.
DEFAULT_STORE = "./data/graph"
EXIT_ERROR = 1
EXIT_BAD_INPUT = 2

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TIME_HELP = "a duration back from now (7d, 90m), µs since the epoch, or ISO-8601"

Doc = dict[str, Any]
Fn = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Settings:
    """The root group's options, passed to every command as the click context object."""

    store: str
    schema: str | None
    json: bool


#: Width of output that is not a terminal (a pipe or a file) when ``$COLUMNS`` does not say:
#: wide enough that no table row or line of ours wraps, so ``hopcast … | grep`` and ``> file``
#: see whole rows (rich's own default there is 80 columns). Tables take only the width they need.
PIPE_WIDTH = 512


def make_console(*, stderr: bool = False, highlight: bool = False) -> Console:
    """A rich console for a command's output (stdout, or ``stderr``): the terminal's width on a
    terminal, ``$COLUMNS`` if set, else :data:`PIPE_WIDTH`."""
    stream = sys.stderr if stderr else sys.stdout
    width = None
    if "COLUMNS" not in os.environ and not (hasattr(stream, "isatty") and stream.isatty()):
        width = PIPE_WIDTH
    return Console(stderr=stderr, highlight=highlight, width=width)


def exit_code(exc: HopcastError) -> int:
    """:data:`EXIT_BAD_INPUT` when the caller can fix the input, else :data:`EXIT_ERROR`."""
    bad_input = (InvalidInput, NotFound, ConfigError, SchemaError)
    return EXIT_BAD_INPUT if isinstance(exc, bad_input) else EXIT_ERROR


def error(message: str) -> None:
    """Print ``error: <message>`` as one red line on stderr (line breaks become spaces)."""
    console = make_console(stderr=True)
    console.print(Text(f"error: {' '.join(message.split())}", style="red"), soft_wrap=True)


def parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """A time option: ``7d`` (kept as text: "before now" is resolved where the query runs, which
    may be a server), µs since the epoch (int), or ISO-8601 (to µs; without a zone it is UTC).

    Raises:
        click.BadParameter: for anything else (a usage error, exit 2).
    """
    if value is None:
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parse_duration(text)
        return text
    except ValueError:
        pass
    try:
        return parse_iso(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time ({TIME_HELP})") from None


# -- options -----------------------------------------------------------------------------------


def json_option(fn: Fn) -> Fn:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


def query_options(fn: Fn) -> Fn:
    """``--url`` and ``--json``, which every query command takes."""
    fn = json_option(fn)
    return click.option(
        "--url", metavar="URL", help="Ask a running server (http://host:port) instead."
    )(fn)


def edge_option(fn: Fn) -> Fn:
    return click.option(
        "--edge",
        "edges",
        multiple=True,
        metavar="TYPE[,TYPE]",
        help="Edge type(s); repeat or comma-separate. Default: all.",
    )(fn)


def direction_option(default: str) -> Callable[[Fn], Fn]:
    return click.option(
        "--direction", type=click.Choice(q.DIRECTIONS), default=default, show_default=True
    )


def since_option(fn: Fn) -> Fn:
    help = f"Oldest time: {TIME_HELP}."
    return click.option("--since", metavar="TIME", callback=parse_time, help=help)(fn)


def until_option(fn: Fn) -> Fn:
    help = "Newest time (exclusive), same forms."
    return click.option("--until", metavar="TIME", callback=parse_time, help=help)(fn)


def split_types(values: Iterable[str]) -> list[str]:
    """``("a,b", "c")`` → ``["a", "b", "c"]``."""
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


# -- store and output --------------------------------------------------------------------------


def store_dir(store: str) -> Path | None:
    """The LMDB directory a store URL names, or None for a store that is not a directory."""
    scheme, sep, rest = store.partition("://")
    if not sep:
        return Path(store)
    return Path(rest) if scheme == "lmdb" and rest else None


def missing_store(path: Path) -> str:
    """Why ``path`` is no store, pointing at the store inside it if it holds one (``hopcast
    run --store data/demo`` keeps its graph in ``data/demo/graph``)."""
    what = "does not exist" if not path.exists() else "holds no hopcast store"
    inner = path / "graph"
    if (inner / "data.mdb").is_file():
        what += f" (the store in it is {str(inner)!r}: pass --store {inner})"
    return f"store {str(path)!r} {what}"


def open_existing(settings: Settings) -> Graph:
    """Open a store that must already exist: reading never creates an empty store.

    Raises:
        NotFound: if the directory holds no store.
        SchemaError: if ``--schema`` names a bad file.
    """
    path = store_dir(settings.store)
    if path is not None and not (path / "data.mdb").is_file():
        raise NotFound(
            f"{missing_store(path)}; create it with `hopcast apply FILE`, "
            "or point --store (or $HOPCAST_STORE) at an existing store"
        )
    # No fsync: a reader writes nothing but the (idempotent) namespace settings.
    return Graph.open(settings.store, settings.schema, sync=False)


def wants_json(settings: Settings, as_json: bool) -> bool:
    return settings.json or as_json


def print_json(doc: Doc) -> None:
    """The one JSON document of ``--json`` output."""
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False))


def emit(
    settings: Settings, as_json: bool, doc: Doc, render: Callable[[Console, Doc], None]
) -> None:
    """Print ``doc`` as JSON, or render it as tables on stdout."""
    if wants_json(settings, as_json):
        print_json(doc)
    else:
        render(make_console(), doc)


def _rates(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    """``--rate-limit`` values → the rates per bucket (None: ``off``); a bad one is a usage
    error naming the syntax."""
    from hopcast.api.ratelimit import DEFAULT_RATES, rates_from  # the server extra

    if not value:
        return dict(DEFAULT_RATES)
    try:
        return rates_from(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def rate_limit_option(fn: Fn) -> Fn:
    """``--rate-limit BUCKET=COUNT/UNIT[:BURST]`` (repeatable) or ``--rate-limit off``; the
    command gets ``rate_limits``: bucket → Rate, or None when off."""
    return click.option(
        "--rate-limit",
        "rate_limits",
        multiple=True,
        metavar="BUCKET=COUNT/UNIT[:BURST]",
        callback=_rates,
        help="Per-key rate limit of a bucket (mutations, ingest, operator, reports), e.g. "
        "mutations=50/s:100 (50 a second, bursts of 100; UNIT s, m or h); repeatable. "
        "Defaults: mutations=50/s:100, ingest=200/s:400, operator=5/s:20, reports=10/s:50. "
        "'off' disables rate limiting.",
    )(fn)

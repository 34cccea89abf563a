"""``hopcast run``: the whole system embedded — the demo company, the pipeline, the API.

::

    hopcast run [--data DIR] [--keep] [--rate N] [--host H] [--port 8321] [--accounts N]
                [--history N] [--bad-share F] [--seed N] [--duration S]
                [--rotate-bytes N] [--postgres DSN] [--progress/--no-progress]
                [--event-in S] [--devices N] [--max-segments N]

What it runs is :mod:`hopcast.demo.run` (``make demo`` runs it with the defaults): a
synthetic company's services write request logs and change events under ``DIR/logs``, the
embedded engine ingests them through the demo mappings into the LMDB graph in ``DIR/graph``,
and the API serves it on ``--port`` (the live WebSocket gateway on ``--port + 1``, with
development tokens; ``--port 0``: each on a free port, named in the lines printed at start).
``--postgres DSN`` keeps the playback service's table in that PostgreSQL and ingests it by
logical replication (:mod:`hopcast.demo.postgres`) instead of from a log.
A live event is scheduled ``--event-in`` seconds out with recommendation rows materialised from
the graph (at most ``--max-segments`` segments); ``--devices`` simulated devices prefetch it and
take its triggers, and the device page and operator console are served at ``/web/``
(:mod:`hopcast.demo.scenario`).
Ctrl-C or SIGTERM stop everything cleanly (exit 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hopcast.cli.common import rate_limit_option
from hopcast.demo.logs import DEFAULT_ROTATE_BYTES
from hopcast.demo.records import DEFAULT_BAD_SHARE


@click.command("run")
@click.option(
    "--data",
    "--store",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data/demo"),
    show_default=True,
    help="Data directory: graph/ (LMDB) and logs/ (reset unless --keep).",
)
@click.option("--keep", is_flag=True, help="Reuse an existing data directory (resume).")
@click.option(
    "--rate",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="Member interactions per second.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65534),
    default=8321,
    show_default=True,
    help="API port; the live gateway listens on PORT+1 (0: each on a free port, printed).",
)
@click.option("--accounts", type=click.IntRange(1), default=5_000, show_default=True)
@click.option(
    "--history",
    type=click.IntRange(0),
    default=300_000,
    show_default=True,
    help="Interactions of the last 30 days, loaded before the live part.",
)
@click.option(
    "--bad-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_BAD_SHARE,
    show_default=True,
    help="Share of interactions followed by a bad record.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(0),
    default=0.0,
    help="Stop after this many seconds [default: until Ctrl-C].",
)
@click.option(
    "--rotate-bytes",
    type=click.IntRange(1024),
    default=DEFAULT_ROTATE_BYTES,
    show_default=True,
    help="Rotate a service's log at this size.",
)
@click.option(
    "--postgres",
    metavar="DSN",
    help="Keep the playback table in this PostgreSQL (wal_level=logical) and ingest it by CDC "
    "(needs hopcast[postgres]) [default: a log of Debezium change events].",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Live display [default: when stderr is a terminal].",
)
@click.option(
    "--event-in",
    type=click.FloatRange(0),
    default=180.0,
    show_default=True,
    help="Seconds until the scripted live event starts (0: no scripted event).",
)
@click.option(
    "--devices",
    type=click.IntRange(0, 5_000),
    default=200,
    show_default=True,
    help="Simulated devices that prefetch the live event and take its triggers.",
)
@click.option(
    "--max-segments",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    help="Most recommendation segments of the live event.",
)
@rate_limit_option
def run_command(
    data: Path,
    keep: bool,
    rate: int,
    host: str,
    port: int,
    accounts: int,
    history: int,
    bad_share: float,
    seed: int,
    duration: float,
    rotate_bytes: int,
    postgres: str | None,
    progress: bool | None,
    event_in: float,
    devices: int,
    max_segments: int,
    rate_limits: Any,
) -> int:
    """Run the demo company through the embedded pipeline and serve the API (make demo)."""
    from hopcast.demo.run import DemoOptions, run_demo

    code = run_demo(
        DemoOptions(
            data=data,
            keep=keep,
            host=host,
            port=port,
            accounts=accounts,
            history=history,
            rate=rate,
            duration=duration,
            bad_share=bad_share,
            seed=seed,
            progress=progress,
            rotate_bytes=rotate_bytes,
            postgres=postgres,
            event_in=event_in,
            devices=devices,
            max_segments=max_segments,
            rate_limits=rate_limits,
        )
    )
    if code:
        raise click.exceptions.Exit(code)
    return code

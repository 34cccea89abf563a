"""``hopcast live simulate``: the load harness (:mod:`hopcast.sdk.simulator`) from the shell.

::

    hopcast live simulate --devices 5000 --processes 4 --window 30s [--restart]
                          [--no-prefetch | --compare-prefetch] [--out DIR]
    hopcast live simulate --devices 2000 --api http://127.0.0.1:8321 \\
                          --gateway ws://127.0.0.1:8322 [--gateway ws://…]

Without ``--api`` it starts its own embedded system (``hopcast serve --gateway-port`` on a
temporary store); with it, device tokens are signed with ``$HOPCAST_LIVE_SECRET`` when set,
else taken from the server's development token route. Progress goes to stderr; a summary table
and the paths of ``report.json`` and the charts to stdout (``--json``: the report itself).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from hopcast.cli.common import Settings, make_console, print_json, wants_json
from hopcast.config import LIVE_SECRET_ENV, live_secret
from hopcast.durations import SECOND, parse_duration
from hopcast.errors import InvalidInput
from hopcast.sdk.simulator import (
    DEFAULT_CONNECT_RATE,
    DEFAULT_SEGMENTS,
    MAX_DEVICES_PER_PROCESS,
    SimConfig,
    SimResult,
    simulate,
)

#: Where results go without ``--out`` (relative to the working directory).
DEFAULT_OUT = "hopcast-simulate"


def _seconds(option: str, text: str) -> float:
    try:
        return parse_duration(text) / SECOND
    except ValueError as exc:
        raise InvalidInput(f"{option}: {exc}") from None


@click.command("simulate")
@click.option("--devices", type=click.IntRange(1), default=1_000, show_default=True)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=None,
    help=f"Simulator processes (default: enough for {MAX_DEVICES_PER_PROCESS:,} devices each, "
    "at least 2).",
)
@click.option(
    "--window", default="30s", show_default=True, help="Prefetch lead time (e.g. 30s, 2m)."
)
@click.option("--restart", is_flag=True, help="Restart the server after the trigger.")
@click.option("--no-prefetch", is_flag=True, help="Devices fetch payloads at trigger time.")
@click.option("--compare-prefetch", is_flag=True, help="Run with and without prefetch.")
@click.option("--api", metavar="URL", help="A running system's API (http://host:port).")
@click.option(
    "--gateway",
    "gateways",
    multiple=True,
    metavar="URL",
    help="A running system's gateway (ws://…); repeat for several nodes.",
)
@click.option(
    "--connect-rate",
    type=click.FloatRange(min=1),
    default=DEFAULT_CONNECT_RATE,
    show_default=True,
    help="Connections started per second (whole fleet).",
)
@click.option(
    "--fallback-window",
    default=None,
    help="Spread of payload fetches at trigger time (default: the SDK's 10s with prefetch, "
    "0 without).",
)
@click.option(
    "--spread",
    type=click.Choice(["hash", "rank"]),
    default="hash",
    show_default=True,
    help="How devices place their prefetch in the window.",
)
@click.option(
    "--client",
    type=click.Choice(["light", "sdk"]),
    default="light",
    show_default=True,
    help="light: the SDK's protocol core over a minimal WebSocket connection (15k devices per "
    "process); sdk: a full DeviceClient on websockets per device.",
)
@click.option("--segments", type=click.IntRange(1), default=DEFAULT_SEGMENTS, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Directory for report.json and the PNG charts.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def simulate_command(
    settings: Settings,
    devices: int,
    processes: int | None,
    window: str,
    restart: bool,
    no_prefetch: bool,
    compare_prefetch: bool,
    api: str | None,
    gateways: tuple[str, ...],
    connect_rate: float,
    fallback_window: str | None,
    spread: str,
    client: str,
    segments: int,
    seed: int,
    out: Path,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Simulate N devices through a live event; write a JSON report and PNG charts.

    Timeline: connect every device, create an event whose prefetch window opens now, let the
    devices prefetch in it, the trigger at the start, optionally restart the server, then end
    the event. Measures time to update, duplicates, misses and origin requests per second.
    """
    if no_prefetch and compare_prefetch:
        raise InvalidInput("--no-prefetch and --compare-prefetch exclude each other")
    if processes is None:
        processes = max(min(devices, 2), math.ceil(devices / MAX_DEVICES_PER_PROCESS))
    secret = live_secret() if api and os.environ.get(LIVE_SECRET_ENV) else None
    config = SimConfig(
        devices=devices,
        processes=processes,
        window_s=_seconds("--window", window),
        prefetch=not no_prefetch,
        restart=restart,
        api=api,
        gateways=gateways,
        secret=secret,
        connect_rate=connect_rate,
        fallback_window_s=None
        if fallback_window is None
        else _seconds("--fallback-window", fallback_window),
        spread=spread,
        client=client,
        segments=segments,
        seed=seed,
        show_progress=not no_progress,
    )
    result = simulate(config, out, compare_prefetch=compare_prefetch)
    if wants_json(settings, as_json):
        assert result.report_path is not None
        print_json(json.loads(result.report_path.read_text()))
        return
    console = make_console()
    console.print(summary_table(result))
    click.echo(f"report  {result.report_path}")  # plain: paths must not wrap
    for chart in result.charts:
        click.echo(f"chart   {chart}")


def _ms(stats: dict[str, Any]) -> str:
    if not stats.get("count"):
        return "-"
    return f"{stats['p50']:,.0f} / {stats['p99']:,.0f} / {stats['max']:,.0f}"


def summary_table(result: SimResult) -> Table:
    """One column per run: the headline numbers of its report."""
    table = Table(
        title="hopcast live simulate",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
    )
    table.add_column("")
    reports = [run.report for run in result.runs]
    for report in reports:
        table.add_column(report["mode"], justify="right")

    def row(label: str, cell: Any) -> None:
        table.add_row(label, *(cell(r) for r in reports))

    row("devices", lambda r: f"{r['devices']:,}")
    row("connect rate /s", lambda r: f"{r['connect'].get('rate_per_s', 0):,.0f}")
    row("live p50/p99/max ms", lambda r: _ms(r["stages"]["live"]["time_to_update_ms"]))
    row("ended p50/p99/max ms", lambda r: _ms(r["stages"]["ended"]["time_to_update_ms"]))
    row("updated (live)", lambda r: f"{r['stages']['live']['updated']:,}")
    row("applied twice", lambda r: f"{r['counts']['applied_twice']:,}")
    row("misses", lambda r: f"{r['counts']['misses']:,}")
    row("redelivered (ignored)", lambda r: f"{r['counts']['redelivered_ignored']:,}")
    row(
        "window peak / target rps",
        lambda r: f"{r['origin']['peak_rps_in_window']:,} / {r['origin']['target_peak_rps']:,.0f}",
    )
    row("origin peak rps", lambda r: f"{r['origin']['peak_rps']:,}")
    row("origin hits at trigger", lambda r: f"{r['origin']['trigger_hit_pct']:.2f}%")
    row(
        "simulator lag p99/max ms",
        lambda r: (
            "-"
            if not r["simulator"]["loop_lag_ms"]["count"]
            else f"{r['simulator']['loop_lag_ms']['p99']:,.0f} / "
            f"{r['simulator']['loop_lag_ms']['max']:,.0f}"
        ),
    )
    if any("restart" in r for r in reports):
        row(
            "reconnected (p10-p90 s)",
            lambda r: (
                "-"
                if "restart" not in r
                else f"{r['restart']['reconnected']:,} ({r['restart']['spread_p10_p90_s']} s)"
            ),
        )
    return table

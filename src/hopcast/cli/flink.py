"""``hopcast flink``: run a source's pipeline as an Apache Flink job (PyFlink), and put the demo
company's records on Kafka to try it.

::

    hopcast [--store URL] [--schema FILE] flink run --source NAME=kafka:HOST:PORT/TOPIC[,…]
            [--mappings DIR] [--parallelism 1] [--window-ms 200] [--max-batch 5000]
            [--checkpoint-dir DIR] [--checkpoint-interval-ms 2000] [--restore latest|PATH|none]
            [--bounded] [--jobmanager HOST:PORT] [--metrics-port P] [--progress/--no-progress]
    hopcast flink seed --bootstrap HOST:PORT [--events 20000] [--prefix P] [--partitions 3]

``flink run`` runs ONE source's job (Netflix runs one job per source topic; start one per
source): Kafka → windows in Flink state → the source's mapping → coalesced, idempotent
last-write-wins writes into ``--store`` (Redis: ``redis://…``; an LMDB directory works too). On
the local MiniCluster by default; ``--jobmanager`` submits to a Flink cluster. Checkpoints go to
``--checkpoint-dir`` (default ``./data/flink/<source>``) and a new run restores the newest one,
so SIGTERM/Ctrl-C (stop with a savepoint, exit 0) and a restart resume where the job was.
``--bounded`` reads up to the offsets that are the latest at start, then finishes (one-off
loads, tests, benchmarks). Needs ``hopcast[flink]`` and the connector jar
(``deploy/flink.sh fetch``). See :mod:`hopcast.stream.engines.flink`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from hopcast.cli.common import Settings, json_option, make_console, print_json, wants_json
from hopcast.errors import ConfigError


@click.group("flink")
def flink() -> None:
    """Run pipelines as Apache Flink jobs (needs hopcast[flink])."""


@flink.command("run")
@click.option(
    "--source",
    "source",
    required=True,
    metavar="NAME=kafka:HOST:PORT/TOPIC[,…]",
    help="The source: its name (which mapping) and its Kafka topics.",
)
@click.option("--mappings", metavar="DIR", help="Mapping files [default: the demo mappings].")
@click.option("--parallelism", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--window-ms",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="How long a window collects records (in Flink state) before they go through the "
    "mapping and are written, coalesced per node and edge.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1),
    default=5000,
    show_default=True,
    help="The most records of a window in one store write (a larger window takes several).",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where checkpoints are kept and restored from [default: data/flink/<source>].",
)
@click.option("--checkpoint-interval-ms", type=click.IntRange(0), default=2000, show_default=True)
@click.option(
    "--restore",
    default="latest",
    show_default=True,
    help="'latest' (the newest checkpoint in --checkpoint-dir), a checkpoint path, or 'none'.",
)
@click.option("--bounded", is_flag=True, help="Stop at the offsets that are the latest at start.")
@click.option("--jobmanager", metavar="HOST:PORT", help="Submit to this Flink cluster (REST).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Prometheus metrics port.")
@click.option("--progress/--no-progress", default=None, help="Progress lines on stderr.")
@json_option
@click.pass_obj
def run(
    settings: Settings,
    source: str,
    mappings: str | None,
    parallelism: int,
    window_ms: int,
    max_batch: int,
    checkpoint_dir: Path | None,
    checkpoint_interval_ms: int,
    restore: str,
    bounded: bool,
    jobmanager: str | None,
    metrics_port: int | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Run one source's pipeline as a Flink job until it ends (--bounded) or is stopped.

    JSON: {"job", "status", "mutations", "written", "dead_letters", "windows", "seconds"}.
    """
    from hopcast.stream.engines.flink import FlinkJob, KafkaInput

    name, sep, spec = source.partition("=")
    if not sep or not name or not spec:
        raise click.BadParameter("expected NAME=kafka:HOST:PORT/TOPIC", param_hint="--source")
    options: dict[str, Any] = {}
    if mappings is not None:
        options["mappings"] = Path(mappings)
        if not options["mappings"].is_dir():
            raise ConfigError(f"--mappings {mappings}: not a directory")
    job = FlinkJob(
        name,
        KafkaInput.parse(name, spec),
        settings.store,
        settings.schema,
        parallelism=parallelism,
        window_ms=window_ms,
        max_batch=max_batch,
        checkpoint_dir=checkpoint_dir or Path("data") / "flink" / name,
        checkpoint_interval_ms=checkpoint_interval_ms,
        restore=None if restore == "none" else restore,
        bounded=bounded,
        jobmanager=jobmanager,
        metrics_port=metrics_port,
        **options,
    )
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    show = sys.stderr.isatty() if progress is None else progress
    err = make_console(stderr=True)
    started = time.monotonic()
    last: list[Any] = [None]

    def on_progress(status: str, totals: Any) -> None:
        last[0] = totals
        if show:
            err.print(
                f"{job.name} {status.lower()}: {totals.mutations:,} mutations → "
                f"{totals.written:,} written, {totals.dead_letters:,} dead letters, "
                f"{totals.windows:,} windows ({time.monotonic() - started:.0f} s)"
            )

    resume = job.restore_path()
    err.print(
        f"{job.name}: resuming from checkpoint {resume}"
        if resume
        else f"{job.name}: starting fresh (no checkpoint in {job.checkpoint_dir})"
    )
    status = job.execute(on_progress=on_progress, stop=stop, progress_every_s=2.0)
    totals = last[0]
    doc = {
        "job": job.name,
        "status": status,
        "mutations": getattr(totals, "mutations", 0),
        "written": getattr(totals, "written", 0),
        "dead_letters": getattr(totals, "dead_letters", 0),
        "windows": getattr(totals, "windows", 0),
        "seconds": round(time.monotonic() - started, 3),
    }
    if wants_json(settings, as_json):
        print_json(doc)
    else:
        make_console().print(
            f"{doc['job']} {status.lower()}: {doc['mutations']:,} mutations → {doc['written']:,} "
            f"written, {doc['dead_letters']:,} dead letters in {doc['seconds']} s"
        )


@flink.command("seed")
@click.option("--bootstrap", required=True, metavar="HOST:PORT", help="The Kafka cluster.")
@click.option("--events", type=click.IntRange(0), default=20_000, show_default=True)
@click.option("--accounts", type=click.IntRange(1), default=500, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--prefix", default="", help="Topic name prefix (topics are <prefix><source>).")
@click.option("--partitions", type=click.IntRange(1), default=3, show_default=True)
@json_option
@click.pass_obj
def seed(
    settings: Settings,
    bootstrap: str,
    events: int,
    accounts: int,
    seed: int,
    prefix: str,
    partitions: int,
    as_json: bool,
) -> None:
    """Put the demo company's records (snapshot + EVENTS interactions, with late, duplicated
    and bad records) on Kafka, one topic per source.

    JSON: {"topics": {topic: records}, "records"}.
    """
    from hopcast.demo.kafka import demo_input, publish

    data = demo_input(events, accounts=accounts, seed=seed)
    records = data.records()
    err = make_console(stderr=True)
    err.print(f"publishing {len(records):,} records to {bootstrap}")
    counts = publish(
        bootstrap,
        records,
        prefix=prefix,
        partitions=partitions,
        progress=lambda n: err.print(f"  {n:,} / {len(records):,}") if n % 10_000 == 0 else None,
    )
    doc = {"topics": counts, "records": sum(counts.values())}
    if wants_json(settings, as_json):
        print_json(doc)
    else:
        for topic, n in sorted(counts.items()):
            make_console().print(f"{topic:<24} {n:>9,}")

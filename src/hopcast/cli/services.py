"""``hopcast services``: start, stop and check the local services the scale-out path runs on.

::

    hopcast services up     [NAME ...] [--kafka-port 9092] [--kafka-controller-port P]
                            [--redis-port 6379] [--redis-cluster-port 7000]
                            [--redis-cluster-nodes 3] [--postgres-port 5432] [--dir DIR] [--json]
    hopcast services down   [NAME ...] [same options]
    hopcast services status [NAME ...] [same options] [--json]

NAME is ``kafka`` (one KRaft node), ``redis`` (one server), ``redis-cluster`` (N masters on
consecutive ports) or ``postgres`` (logical replication on); none means all four. Every service
listens on 127.0.0.1 only. The commands run the scripts shipped in ``hopcast/deploy/`` (in a
checkout, ``deploy/<name>.sh`` links to them: ``make test`` and CI run the same scripts), which
keep each service's files under ``$TMPDIR/hopcast-<service>-<port>`` unless ``--dir`` says.

``up`` prints one progress line per service on stderr, then the status table; ``status`` exits 0
when every service asked for is up, 1 otherwise; ``up`` and ``down`` exit 1 when a service did not
start or stop (after trying the others).
"""

from __future__ import annotations

import functools
import glob
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hopcast.cli.common import Doc, Fn, Settings, json_option, make_console, print_json, wants_json
from hopcast.errors import HopcastError

#: The scripts that provision the services (package data; the repo's deploy/ links here).
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HOST = "127.0.0.1"
NAMES = ("kafka", "redis", "redis-cluster", "postgres")
INSTALL_HINT = "in a hopcast checkout, deploy/install.sh installs every service's packages"


@dataclass(frozen=True, slots=True)
class Service:
    """How to drive one service through its script."""

    name: str
    script: str
    actions: tuple[str, str, str]  # start, stop, status
    needs: tuple[tuple[str, str], ...]  # (program, the apt package that has it)
    start_timeout: float

    def url(self, port: int) -> str:
        if self.name == "kafka":
            return f"{HOST}:{port}"  # a bootstrap address, what KafkaSource takes
        if self.name == "redis":
            return f"redis://{HOST}:{port}/0"
        if self.name == "redis-cluster":
            return f"redis+cluster://{HOST}:{port}"  # the --store URL; one node finds the rest
        return f"postgresql://postgres@{HOST}:{port}/postgres"


SERVICES = {
    s.name: s
    for s in (
        Service(
            "kafka",
            "kafka.sh",
            ("start", "stop", "status"),
            (("java", "openjdk-17-jre-headless"),),
            600,  # the first start fetches the broker's jars
        ),
        Service(
            "redis",
            "redis.sh",
            ("start", "stop", "status"),
            (("redis-server", "redis-server"), ("redis-cli", "redis-server")),
            60,
        ),
        Service(
            "redis-cluster",
            "redis.sh",
            ("cluster-start", "cluster-stop", "cluster-status"),
            (("redis-server", "redis-server"), ("redis-cli", "redis-server")),
            180,  # each node's start (up to 30 s), then up to 60 s to agree on the slots
        ),
        Service(
            "postgres",
            "postgres.sh",
            ("start", "stop", "status"),
            (("postgres", "postgresql"),),
            180,
        ),
    )
}


def _installed(program: str) -> bool:
    if program == "postgres":  # Debian keeps the server's binaries out of PATH
        return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or bool(
            shutil.which("postgres")
        )
    return shutil.which(program) is not None


@dataclass(frozen=True, slots=True)
class Options:
    """Where the services listen (the command-line options)."""

    kafka_port: int
    kafka_controller_port: int | None
    redis_port: int
    redis_cluster_port: int
    redis_cluster_nodes: int | None
    postgres_port: int
    dir: Path | None

    def port(self, name: str) -> int:
        return {
            "kafka": self.kafka_port,
            "redis": self.redis_port,
            "redis-cluster": self.redis_cluster_port,
            "postgres": self.postgres_port,
        }[name]

    def args(self, service: Service, for_start: bool) -> list[str]:
        """The script's options for ``service``."""
        port = self.port(service.name)
        args = ["--port", str(port)]
        if self.dir is not None:
            args += ["--dir", str(self.dir / f"{service.name}-{port}")]
        if service.name == "kafka" and self.kafka_controller_port is not None:
            args += ["--controller-port", str(self.kafka_controller_port)]
        if service.name == "redis-cluster":
            # Without --nodes, stop and status find the count cluster-start recorded.
            nodes = self.redis_cluster_nodes or (3 if for_start else None)
            if nodes is not None:
                args += ["--nodes", str(nodes)]
        return args


def _run(service: Service, action: str, args: list[str], timeout: float) -> tuple[int, str, str]:
    """Run ``service``'s script; (exit code, stdout, stderr). A timeout is exit code 124."""
    cmd = [shutil.which("bash") or "/bin/bash", str(DEPLOY / service.script), action, *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return 124, "", f"{service.script} {action} did not finish within {timeout:.0f} s"
    return done.returncode, done.stdout, done.stderr


def _why(out: str, err: str) -> str:
    """The last few lines a failed script printed, as one line."""
    lines = [line.strip() for line in (err or out).strip().splitlines() if line.strip()]
    return " | ".join(lines[-3:]) or "no output"


def _missing(services: Sequence[Service]) -> None:
    """Raise, naming programs and packages, if a service's server is not installed."""
    lacking: dict[str, str] = {}
    for service in services:
        for program, package in service.needs:
            if not _installed(program):
                lacking[program] = package
    if lacking:
        programs = ", ".join(lacking)
        packages = " ".join(dict.fromkeys(lacking.values()))
        raise HopcastError(
            f"not installed: {programs}; install with `sudo apt-get install -y {packages}` "
            f"({INSTALL_HINT})"
        )


def _status(service: Service, options: Options) -> Doc:
    """One service's row: where it listens, whether it answers, what to connect with."""
    port = options.port(service.name)
    code, out, err = _run(service, service.actions[2], options.args(service, False), 60)
    ports = [port]
    if service.name == "redis-cluster":
        ports = [int(p) for p in re.findall(rf"^{re.escape(HOST)}:(\d+) ", out, re.M)] or ports
    lines = out.strip().splitlines()
    if code not in (0, 1) or not lines:
        detail = _why(out, err)
    elif service.name == "redis-cluster":  # a line per node, then the verdict
        bad = [line for line in lines[:-1] if not line.endswith("cluster_state:ok")]
        detail = "; ".join(bad) or lines[-1]
    else:
        detail = lines[0]
    if code == 3:  # the script's own "not found: install it with …"
        detail = f"{detail} ({INSTALL_HINT})"
    return {
        "name": service.name,
        "host": HOST,
        "port": port,
        "ports": ports,
        "up": code == 0,
        "url": service.url(port),
        "detail": detail,
    }


def _ports(row: Doc) -> str:
    ports: list[int] = row["ports"]
    return f"{ports[0]}-{ports[-1]}" if len(ports) > 1 else str(row["port"])


def _render(console: Console, doc: Doc) -> None:
    """The table, then why each service that is down is down (the script's words)."""
    rows = [
        (row["name"], _ports(row), "up" if row["up"] else "down", row["url"])
        for row in doc["services"]
    ]
    table = Table(
        header_style="bold",
        box=None,
        pad_edge=False,
        padding=(0, 2, 0, 0),
    )
    needed = 0
    for i, name in enumerate(("service", "port", "state", "url")):
        width = max([len(name), *(len(row[i]) for row in rows)])
        table.add_column(name, no_wrap=True, min_width=width)
        needed += width + 2
    for name, ports, state, url in rows:
        style = "green" if state == "up" else "red"
        table.add_row(name, ports, Text(state, style=style), Text(url))
    console.print(table, width=max(console.width, needed), crop=False)  # URLs are never cut
    for row in doc["services"]:
        if not row["up"]:
            console.print(Text(f"{row['name']}: {row['detail']}", style="dim"), soft_wrap=True)


def _emit(settings: Settings, as_json: bool, rows: list[Doc]) -> None:
    doc = {"services": rows, "up": all(row["up"] for row in rows)}
    if wants_json(settings, as_json):
        print_json(doc)
    else:
        _render(make_console(), doc)


def _progress(text: str, nl: bool = True) -> None:
    click.echo(text, err=True, nl=nl)


# -- the commands ------------------------------------------------------------------------------


def _options(fn: Fn) -> Fn:
    """The service names, ports and directory every services command takes, handed to ``fn`` as
    ``chosen`` (the services, in order) and ``options``."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        base: Path | None = kwargs.pop("base")
        options = Options(
            kafka_port=kwargs.pop("kafka_port"),
            kafka_controller_port=kwargs.pop("kafka_controller_port"),
            redis_port=kwargs.pop("redis_port"),
            redis_cluster_port=kwargs.pop("redis_cluster_port"),
            redis_cluster_nodes=kwargs.pop("redis_cluster_nodes"),
            postgres_port=kwargs.pop("postgres_port"),
            dir=base.resolve() if base is not None else None,
        )
        names: tuple[str, ...] = kwargs.pop("names")
        chosen = [SERVICES[name] for name in dict.fromkeys(names or NAMES)]
        return fn(*args, chosen=chosen, options=options, **kwargs)

    port = click.IntRange(1, 65535)
    decorators = [
        click.argument("names", nargs=-1, type=click.Choice(NAMES)),
        click.option("--kafka-port", type=port, default=9092, show_default=True),
        click.option(
            "--kafka-controller-port",
            type=port,
            default=None,
            help="Kafka's KRaft controller port [default: the Kafka port + 1].",
        ),
        click.option("--redis-port", type=port, default=6379, show_default=True),
        click.option(
            "--redis-cluster-port",
            type=click.IntRange(1, 55535),
            default=7000,
            show_default=True,
            help="The first cluster node's port; the others follow it (bus ports: + 10000).",
        ),
        click.option(
            "--redis-cluster-nodes",
            type=click.IntRange(3),
            default=None,
            help="Cluster masters [default: 3; down/status: as many as were started].",
        ),
        click.option("--postgres-port", type=port, default=5432, show_default=True),
        click.option(
            "--dir",
            "base",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Keep each service's files under DIR/<service>-<port> "
            "[default: $TMPDIR/hopcast-<service>-<port>]; give the same to up, down and status.",
        ),
    ]
    wrapped: Fn = command
    for decorate in reversed(decorators):
        wrapped = decorate(wrapped)
    return wrapped


@click.group()
def services() -> None:
    """Start, stop and check local Kafka, Redis, a Redis Cluster and PostgreSQL (loopback)."""


@services.command()
@_options
@json_option
@click.pass_obj
def up(settings: Settings, chosen: list[Service], options: Options, as_json: bool) -> None:
    """Start the services (default: all), wait until each answers, print where they are.

    Exit 1 if one did not start (the others are still started).
    JSON: {"services": [{"name", "host", "port", "ports", "up", "url", "detail"}], "up"}.
    """
    _missing(chosen)
    failed: list[str] = []
    for service in chosen:
        port = options.port(service.name)
        _progress(f"starting {service.name} on {HOST}:{port} … ", nl=False)
        began = time.monotonic()
        code, out, err = _run(
            service, service.actions[0], options.args(service, True), service.start_timeout
        )
        took = time.monotonic() - began
        if code == 0:
            _progress("already up" if "already" in out else f"up in {took:.1f}s")
        else:
            _progress(f"failed after {took:.1f}s")
            failed.append(f"{service.name}: {_why(out, err)}")
    _emit(settings, as_json, [_status(service, options) for service in chosen])
    if failed:
        raise HopcastError(f"did not start: {'; '.join(failed)}")


@services.command()
@_options
@click.pass_obj
def down(settings: Settings, chosen: list[Service], options: Options) -> None:
    """Stop the services (default: all) and wait until they are gone; a service that is not
    running is left as it is. Exit 1 if one did not stop."""
    failed: list[str] = []
    for service in chosen:
        port = options.port(service.name)
        _progress(f"stopping {service.name} on {HOST}:{port} … ", nl=False)
        began = time.monotonic()
        code, out, err = _run(service, service.actions[1], options.args(service, False), 90)
        took = time.monotonic() - began
        if code == 0:
            _progress(f"stopped in {took:.1f}s")
        else:
            _progress(f"failed after {took:.1f}s")
            failed.append(f"{service.name}: {_why(out, err)}")
    if failed:
        raise HopcastError(f"did not stop: {'; '.join(failed)}")


@services.command()
@_options
@json_option
@click.pass_obj
def status(settings: Settings, chosen: list[Service], options: Options, as_json: bool) -> None:
    """Show whether the services (default: all) are up and what to connect with; exit 0 if all
    of them are up, 1 if not.

    JSON: {"services": [{"name", "host", "port", "ports", "up", "url", "detail"}], "up"}.
    """
    rows = [_status(service, options) for service in chosen]
    _emit(settings, as_json, rows)
    if not all(row["up"] for row in rows):
        raise click.exceptions.Exit(1)

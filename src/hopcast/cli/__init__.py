"""The ``hopcast`` command line.

::

    hopcast [--store PATH_OR_URL] [--schema FILE] [--json] COMMAND
      query neighbours|traverse|journey|count|exists|path|node …   read the graph (or --url)
      apply FILE|-                                                  write mutations (JSON lines)
      sweep                                                         remove expired data
      info                                                          what the store holds
      schema check FILE                                             validate a schema
      serve                                                         run the HTTP API
      auth create|list|revoke                                       API keys and roles

The store is ``--store`` (default ``$HOPCAST_STORE`` or ``./data/graph``; ``memory://`` for a
throw-away one) with the schema ``--schema`` (default ``$HOPCAST_SCHEMA`` or the demo schema).

Output contract:

* Results are rich tables on stdout; progress bars and diagnostics go to stderr.
* ``--json`` (on the group or on a command) prints exactly one JSON document on stdout: the
  result's ``to_dict()``, the document the HTTP API returns too.
* A :class:`~hopcast.errors.HopcastError` prints one red line ``error: <message>`` on stderr and
  exits 2 when the input is wrong or 1 otherwise (see :mod:`hopcast.cli.common`); never a
  traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from hopcast import __version__
from hopcast.cli import render
from hopcast.cli.auth import auth, security_options, server_security
from hopcast.cli.common import (
    DEFAULT_STORE,
    Settings,
    error,
    exit_code,
    json_option,
    make_console,
    print_json,
    rate_limit_option,
    wants_json,
)
from hopcast.cli.flink import flink
from hopcast.cli.gateway import device_limit_options, token_leeway_s
from hopcast.cli.ingest import deadletters, ingest
from hopcast.cli.live import live
from hopcast.cli.query import query
from hopcast.cli.run import run_command
from hopcast.cli.services import services
from hopcast.cli.store import apply, info, sweep
from hopcast.errors import HopcastError
from hopcast.graph.schema import Schema
from hopcast.graphdb import Graph
from hopcast.query.cache import DEFAULT_CONSISTENCY, Consistency

__all__ = ["cli", "main"]


class _UsageError(click.UsageError):
    """A usage error shown as one red line with the help to read (click's own is four: usage,
    a hint, a blank line and the error)."""

    def __init__(self, original: click.UsageError) -> None:
        super().__init__(original.format_message(), original.ctx)

    def show(self, file: Any = None) -> None:
        where = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        error(f"{self.format_message().rstrip('.')}{where}")


class _Cli(click.Group):
    """The root group: every HopcastError becomes one red line and an exit code; so does a
    usage error (exit 2, as click's)."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _UsageError(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HopcastError as exc:
            error(str(exc))
            raise click.exceptions.Exit(exit_code(exc)) from None
        except click.UsageError as exc:
            if isinstance(exc, _UsageError):
                raise
            raise _UsageError(exc) from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="HOPCAST_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    metavar="PATH_OR_URL",
    help="LMDB directory, lmdb:///dir or memory:// [env HOPCAST_STORE].",
)
@click.option(
    "--schema",
    envvar="HOPCAST_SCHEMA",
    metavar="FILE",
    help="Schema YAML [env HOPCAST_SCHEMA; default: the demo schema].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine output: one JSON document.")
@click.version_option(__version__, prog_name="hopcast")
@click.pass_context
def cli(ctx: click.Context, store: str, schema: str | None, as_json: bool) -> None:
    """hopcast: a real-time member graph."""
    ctx.obj = Settings(store, schema, as_json)


@cli.group("schema")
def schema_group() -> None:
    """Work with schema files."""


@schema_group.command("check")
@click.argument("file")
@json_option
@click.pass_obj
def schema_check(settings: Settings, file: str, as_json: bool) -> None:
    """Validate a schema YAML FILE: print its types, or the precise error (exit 2).

    JSON: the schema's description (as served at /v1/schema).
    """
    doc = Schema.load(file).to_dict()
    if wants_json(settings, as_json):
        print_json(doc)
    else:
        render.schema(make_console(), doc, file)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8321,
    show_default=True,
    help="0: a free port (the start-up line names it).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Server processes, each opening the store itself: an LMDB directory, or Redis "
    "(redis://, redis+cluster://) for stateless replicas over a shared store. Graph routes "
    "only when > 1.",
)
@click.option(
    "--gateway-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Also run the live WebSocket gateway on this port (single worker; device tokens are "
    "verified with $HOPCAST_LIVE_SECRET).",
)
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    default=None,
    help="Also publish live triggers to this Redis for `hopcast live gateway` nodes "
    "(single worker; needs hopcast[redis]).",
)
@click.option(
    "--consistency",
    type=click.Choice([c.value for c in Consistency]),
    default=DEFAULT_CONSISTENCY.value,
    show_default=True,
    help="Node reads see every write acknowledged before them, by any worker "
    "(read-your-writes), or may lag other workers' writes by up to 1 s (bounded).",
)
@click.option(
    "--tls-cert",
    metavar="PEM",
    default=None,
    help="Serve HTTPS (and the gateway as wss://) with this certificate chain (with --tls-key).",
)
@click.option("--tls-key", metavar="PEM", default=None, help="The private key of --tls-cert.")
@security_options
@rate_limit_option
@device_limit_options
@click.pass_obj
def serve(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    gateway_port: int | None,
    redis_url: str | None,
    consistency: str,
    tls_cert: str | None,
    tls_key: str | None,
    keys: str | None,
    insecure: bool,
    allowed_hosts: tuple[str, ...],
    cors_origins: tuple[str, ...],
    rate_limits: Any,
    max_per_device: int | None,
    token_leeway: str | None,
) -> None:
    """Run the HTTP API on the store (needs the server extras: hopcast[server]).

    With --workers N every worker opens --store and --schema on its own (responses name the
    worker in the X-Hopcast-Worker header); e.g. `hopcast --store redis://10.0.0.5:6379/0
    serve --workers 4` on several hosts behind a load balancer.

    Needs at least one API key (`hopcast auth create`; the key file is --keys, by default
    keys.json in the --store directory) unless started with --insecure, on loopback only.
    """
    security = server_security(settings, host, keys, insecure, allowed_hosts, cors_origins)
    try:
        api = importlib.import_module("hopcast.api")
    except ImportError as exc:
        if (exc.name or "").startswith("hopcast"):
            raise HopcastError(f"the HTTP API is missing from this installation: {exc}") from exc
        raise HopcastError(
            f"`hopcast serve` needs the server extras: pip install 'hopcast[server]' ({exc})"
        ) from exc
    limits: dict[str, Any] = {"token_leeway_s": token_leeway_s(token_leeway)}
    if max_per_device is not None:
        limits["max_per_subject"] = max_per_device
    with Graph.open(settings.store, settings.schema, consistency=consistency) as graph:
        api.serve(
            graph,
            host,
            port,
            workers,
            gateway_port=gateway_port,
            redis_url=redis_url,
            consistency=consistency,
            tls_cert=tls_cert,
            tls_key=tls_key,
            security=security,
            rate_limits=rate_limits,
            **limits,
        )


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
    hidden=True,  # an older name of `hopcast run`, kept working; the help lists `run` only
)
@click.pass_context
def demo(ctx: click.Context) -> None:
    """The older name of `hopcast run` (the same command and options)."""
    from hopcast.demo import run

    ctx.exit(run.main(list(ctx.args)))


cli.add_command(query)
cli.add_command(apply)
cli.add_command(sweep)
cli.add_command(info)
cli.add_command(live)
cli.add_command(ingest)
cli.add_command(deadletters)
cli.add_command(run_command)
cli.add_command(services)
cli.add_command(flink)
cli.add_command(auth)


def main() -> None:
    """Entry point of the ``hopcast`` script."""
    cli(prog_name="hopcast")

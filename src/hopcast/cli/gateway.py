"""``hopcast live gateway``: WebSocket gateway node processes fed through Redis.

::

    HOPCAST_LIVE_SECRET=<hex> hopcast live gateway --redis redis://127.0.0.1:6379/0 \\
        [--host 127.0.0.1] [--port 8322] [--workers N] [--node-id NAME] \\
        [--metrics-port P] [--max-connections N] [--prefix hopcast:live:] \\
        [--max-per-device N] [--token-leeway 30s] [--tls-cert PEM --tls-key PEM]

The router side publishes into the same Redis (``hopcast serve --gateway-port P --redis URL``,
or ``Router(RedisTransport(url))`` in Python). See :mod:`hopcast.live.node`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from hopcast.config import live_secret
from hopcast.durations import SECOND, parse_duration
from hopcast.errors import InvalidInput
from hopcast.tls import check_pair, server_context

F = TypeVar("F", bound=Callable[..., Any])


#: Longest ``--token-leeway``: past an hour an expired token keeps working longer than device
#: tokens commonly live, which is no lifetime at all; clock skew and a token fetch need seconds.
MAX_TOKEN_LEEWAY = "1h"


def token_leeway_s(text: str | None) -> float:
    """``--token-leeway`` in seconds (the gateway's default when not given).

    Raises:
        InvalidInput: not a duration, or over :data:`MAX_TOKEN_LEEWAY`.
    """
    from hopcast.live.gateway import TOKEN_LEEWAY_S

    if text is None:
        return TOKEN_LEEWAY_S
    try:
        leeway = parse_duration(text)
    except ValueError as exc:
        raise InvalidInput(f"--token-leeway: {exc}") from None
    if leeway > parse_duration(MAX_TOKEN_LEEWAY):
        raise InvalidInput(f"--token-leeway: at most {MAX_TOKEN_LEEWAY}, got {text!r}")
    return leeway / SECOND


def device_limit_options(command: F) -> F:
    """``--max-per-device`` and ``--token-leeway``: the same flags, names and checks on
    ``hopcast serve`` and ``hopcast live gateway``."""
    command = click.option(
        "--token-leeway",
        default=None,
        help="A token is good until its expiry plus this, on open connections too; the gateway "
        f"asks for a fresh one before [default: 30s; at most {MAX_TOKEN_LEEWAY}].",
    )(command)
    return click.option(
        "--max-per-device",
        type=click.IntRange(1),
        default=None,
        help="Connections one device id (token subject) may hold per gateway process; the "
        "newest are refused [default: 8].",
    )(command)


@click.command()
@click.option("--redis", "redis_url", required=True, metavar="URL", help="redis://host:port/db")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8322,
    show_default=True,
    help="0: any free port (each worker's start-up line names it).",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Gateway processes sharing the port (SO_REUSEPORT).",
)
@click.option("--node-id", help="Node name (default <hostname>:<port>; worker i: <name>-<i>).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Prometheus /metrics of worker i on this port + i (0: a free port each, named in its "
    "start-up line).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=None,
    help="Connections per worker [default: 19000].",
)
@click.option("--prefix", default=None, help="Redis key prefix [default: hopcast:live:].")
@device_limit_options
@click.option("--tls-cert", metavar="PEM", default=None, help="Serve wss:// with this chain.")
@click.option("--tls-key", metavar="PEM", default=None, help="The private key of --tls-cert.")
def gateway(
    redis_url: str,
    host: str,
    port: int,
    workers: int,
    node_id: str | None,
    metrics_port: int | None,
    max_connections: int | None,
    prefix: str | None,
    max_per_device: int | None,
    token_leeway: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run live gateway nodes fed through Redis (needs hopcast[redis]); devices' tokens are
    verified with $HOPCAST_LIVE_SECRET. SIGTERM/SIGINT: every device gets `bye restart`."""
    from hopcast.live import node  # imports redis: a clear error without hopcast[redis]

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(processName)s %(name)s: %(message)s"
    )

    check_pair(tls_cert, tls_key)
    if tls_cert is not None and tls_key is not None:
        server_context(tls_cert, tls_key)  # a clear error before any worker starts
    leeway_s = token_leeway_s(token_leeway)
    settings = node.NodeSettings(
        redis_url=redis_url,
        host=host,
        port=port,
        node_id=node_id,
        metrics_port=metrics_port,
        max_connections=max_connections or node.DEFAULT_MAX_CONNECTIONS,
        prefix=prefix or node.DEFAULT_PREFIX,
        tls_cert=tls_cert,
        tls_key=tls_key,
        token_leeway_s=leeway_s,
        max_per_subject=max_per_device or node.DEFAULT_MAX_PER_SUBJECT,
    )
    code = node.run_gateway(settings, live_secret(required=True), workers)
    if code:
        raise click.exceptions.Exit(code)

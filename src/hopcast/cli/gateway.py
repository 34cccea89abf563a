"""``hopcast live gateway``: WebSocket gateway node processes fed through Redis.

::

    HOPCAST_LIVE_SECRET=<hex> hopcast live gateway --redis redis://127.0.0.1:6379/0 \\
        [--host 127.0.0.1] [--port 8322] [--workers N] [--node-id NAME] \\
        [--metrics-port P] [--max-connections N] [--prefix hopcast:live:]

The router side publishes into the same Redis (``hopcast serve --gateway-port P --redis URL``,
or ``Router(RedisTransport(url))`` in Python). See :mod:`hopcast.live.node`.
"""

from __future__ import annotations

import logging

import click

from hopcast.config import live_secret


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
def gateway(
    redis_url: str,
    host: str,
    port: int,
    workers: int,
    node_id: str | None,
    metrics_port: int | None,
    max_connections: int | None,
    prefix: str | None,
) -> None:
    """Run live gateway nodes fed through Redis (needs hopcast[redis]); devices' tokens are
    verified with $HOPCAST_LIVE_SECRET. SIGTERM/SIGINT: every device gets `bye restart`."""
    from hopcast.live import node  # imports redis: a clear error without hopcast[redis]

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(processName)s %(name)s: %(message)s"
    )

    settings = node.NodeSettings(
        redis_url=redis_url,
        host=host,
        port=port,
        node_id=node_id,
        metrics_port=metrics_port,
        max_connections=max_connections or node.DEFAULT_MAX_CONNECTIONS,
        prefix=prefix or node.DEFAULT_PREFIX,
    )
    code = node.run_gateway(settings, live_secret(required=True), workers)
    if code:
        raise click.exceptions.Exit(code)

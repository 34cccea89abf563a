"""Gateway nodes as processes: each one a :class:`~hopcast.live.gateway.Gateway` fed by a
:class:`~hopcast.live.redisnode.RedisMirror`, recording its devices in a
:class:`~hopcast.live.redisnode.RedisPushRegistry`.

::

    router process ──▶ Redis ──▶ node 0 ─┐
    (Router(RedisTransport(url)))  ├──▶ node 1 ─┼─ one port (SO_REUSEPORT): the kernel spreads
                                   └──▶ node N ─┘   new connections over the processes

:func:`run_gateway` runs ``workers`` processes on one port (what ``hopcast live gateway``
calls); :func:`run_node` is one node inside an existing event loop (tests, embedding). Worker
``i`` is named ``<node id>-<i>`` and serves Prometheus metrics on ``metrics_port + i``
(``/metrics``: the gateway's, the mirror's and GC pause series). SIGTERM or SIGINT stops every
worker gracefully: each tells its devices ``bye restart`` with a spread ``retry_after_ms``
and closes their connections; the supervisor restarts a worker that dies unexpectedly.

Port 0 means any free port: the supervisor picks one for all its workers (and holds it, so a
restarted worker gets it back), and ``metrics_port`` 0 gives each worker a free port of its
own. Each worker's start-up line names the ports it serves on::

    gateway node gw-0 on ws://127.0.0.1:41234 (pid 123, metrics on :41240)

Every node polls the revocation list in the same Redis (``<prefix>revocations``,
:class:`~hopcast.live.redisrevoke.RedisRevocations`; ``hopcast live revoke --redis`` writes it)
and, with ``tls_cert``/``tls_key``, serves ``wss://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from types import FrameType
from typing import TextIO

from prometheus_client import CollectorRegistry, start_http_server

from hopcast.errors import ConfigError, HopcastError
from hopcast.live.gateway import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from hopcast.live.gateway import DEFAULT_MAX_PER_SUBJECT as DEFAULT_MAX_PER_SUBJECT
from hopcast.live.gateway import HEARTBEAT_S, Gateway, GatewayServer
from hopcast.live.gateway import TOKEN_LEEWAY_S as TOKEN_LEEWAY_S
from hopcast.live.redisfan import DEFAULT_PREFIX as DEFAULT_PREFIX
from hopcast.live.redisnode import RedisMirror, RedisPushRegistry
from hopcast.live.redisrevoke import RedisRevocations
from hopcast.looplag import LoopLag
from hopcast.ports import reuse_port_holder
from hopcast.tls import server_context

logger = logging.getLogger(__name__)

#: Where ``hopcast live gateway`` listens by default: next to the API's 8321.
DEFAULT_GATEWAY_PORT = 8322
#: A device's push-registry entry outlives this many missed heartbeat refreshes.
REGISTRY_TTL_HEARTBEATS = 3
#: Exit code of a worker that could not start (Redis unreachable, port taken): the supervisor
#: stops instead of restarting it in a loop.
EXIT_STARTUP = 3
#: A worker that dies after starting is restarted after this delay.
RESTART_DELAY_S = 1.0
#: How long the supervisor waits for workers to finish their shutdown before killing them:
#: the gateway's close takes at most its close timeout per connection, in parallel.
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """One gateway node (or, with :func:`run_gateway`, the template of each worker).

    Attributes:
        redis_url: where the router publishes (``redis://host:port/db``).
        host, port: where to listen; workers share the port (``reuse_port``).
        node_id: the node's name in ``welcome`` and the push registry (default
            ``<hostname>:<port>``).
        max_connections: connections per node (per worker).
        metrics_port: Prometheus ``/metrics`` port (worker ``i``: this + ``i``; 0: a free port
            for each); none if ``None``.
        prefix: Redis key prefix (the router's).
        heartbeat_s: ping interval; the push registry's TTL is three of them.
        reuse_port: set ``SO_REUSEPORT`` (several processes on one port).
        tls_cert, tls_key: PEM certificate chain and key: serve ``wss://``.
        token_leeway_s: a token is good until ``exp`` plus this, on open connections too.
        max_per_subject: connections one device id may hold on a node.
    """

    redis_url: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_GATEWAY_PORT
    node_id: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    metrics_port: int | None = None
    prefix: str = DEFAULT_PREFIX
    heartbeat_s: float = HEARTBEAT_S
    reuse_port: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    token_leeway_s: float = TOKEN_LEEWAY_S
    max_per_subject: int = DEFAULT_MAX_PER_SUBJECT

    @property
    def name(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    def worker(self, index: int, workers: int) -> NodeSettings:
        """The settings of worker ``index`` of ``workers``."""
        if workers == 1:
            return self
        metrics = self.metrics_port
        if metrics:  # 0 (a free port each) and None stay as they are
            metrics += index
        return replace(self, node_id=f"{self.name}-{index}", metrics_port=metrics)


async def run_node(
    settings: NodeSettings,
    secret: bytes,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[GatewayServer], None] | None = None,
    on_metrics: Callable[[int], None] | None = None,
) -> None:
    """Run one node until ``stop`` is set, then shut it down gracefully.

    Order: 1. the mirror subscribes and loads every channel (devices are only accepted once it
    has); 2. the gateway listens; 3. metrics (``on_metrics`` gets the port bound); 4.
    ``on_ready`` gets the serving gateway; ... 5. on ``stop``: ``bye restart`` to every device,
    close, then the registry and mirror.

    Raises:
        HopcastError: Redis cannot be reached at start.
        ConfigError: a setting is out of range.
        OSError: the port cannot be bound.
    """
    context = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        context = server_context(settings.tls_cert, settings.tls_key)
    registry = CollectorRegistry()
    lag = LoopLag(registry)  # hopcast_event_loop_lag_seconds on this node's /metrics
    mirror = RedisMirror(settings.redis_url, prefix=settings.prefix, metrics_registry=registry)
    await mirror.start()
    ttl_us = int(REGISTRY_TTL_HEARTBEATS * settings.heartbeat_s * 1_000_000)
    push = RedisPushRegistry(settings.redis_url, ttl_us, prefix=settings.prefix)
    revocations = RedisRevocations(settings.redis_url, prefix=settings.prefix)
    metrics = None
    lag.start()
    try:
        gateway = Gateway(
            mirror,
            secret,
            node_id=settings.name,
            max_connections=settings.max_connections,
            heartbeat_s=settings.heartbeat_s,
            registry=push,
            metrics_registry=registry,
            token_leeway_s=settings.token_leeway_s,
            max_per_subject=settings.max_per_subject,
            revocations=revocations,
        )
        server = await gateway.serve(
            settings.host, settings.port, reuse_port=settings.reuse_port, ssl_context=context
        )
        try:
            if settings.metrics_port is not None:
                metrics, _ = start_http_server(
                    settings.metrics_port, addr=settings.host, registry=registry
                )
                if on_metrics is not None:
                    on_metrics(metrics.server_port)
            if on_ready is not None:
                on_ready(server)
            await stop.wait()
        finally:
            await server.close()
    finally:
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()
        await revocations.close()
        await push.close()
        await mirror.close()
        await lag.stop()


def _raise_open_files_limit() -> None:
    """Soft open-files limit up to the hard one: each device holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_worker(settings: NodeSettings, secret: bytes) -> int:
    """Run one node in this process until SIGTERM or SIGINT (under uvloop when installed).

    Returns:
        0 after a graceful stop, :data:`EXIT_STARTUP` if the node could not start.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # until the loop takes them over
    _raise_open_files_limit()

    metrics_bound: list[int] = []

    def ready(server: GatewayServer) -> None:
        metrics = "".join(f", metrics on :{port}" for port in metrics_bound)
        _say(
            f"gateway node {settings.name} on {server.scheme}://{settings.host}:{server.port} "
            f"(pid {os.getpid()}{metrics})"
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_node(settings, secret, stop, on_ready=ready, on_metrics=metrics_bound.append)

    try:
        if importlib.util.find_spec("uvloop") is not None:
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())
    except (HopcastError, OSError) as exc:
        _say(f"error: gateway node {settings.name}: {exc}", sys.stderr)
        return EXIT_STARTUP
    _say(f"gateway node {settings.name} stopped")
    return 0


def _say(line: str, stream: TextIO | None = None) -> None:
    """Write ``line`` and its newline in one write: the workers share one stdout, and
    ``print`` writes the text and the newline separately, so two workers' lines could merge."""
    out = stream or sys.stdout
    out.write(line + "\n")
    out.flush()


def _worker_main(settings: NodeSettings, secret: bytes) -> None:
    sys.exit(run_worker(settings, secret))


def run_gateway(settings: NodeSettings, secret: bytes, workers: int = 1) -> int:
    """Run ``workers`` node processes on one port until SIGTERM/SIGINT; returns an exit code.

    One worker runs in this process. With more, this process supervises forked workers: it
    holds their port (bound with ``SO_REUSEPORT``, never listening: port 0 becomes one free port
    for all of them, and a restarted worker finds its port free), forwards SIGTERM/SIGINT to
    them, waits for their graceful shutdown (killing any still running after
    :data:`STOP_TIMEOUT_S`), and restarts a worker that dies on its own (unless it could not
    start: then it stops them all and returns 1).

    Raises:
        ConfigError: ``workers`` < 1, or several workers without ``reuse_port``.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return run_worker(settings, secret)
    if not settings.reuse_port:
        raise ConfigError("several workers share the port only with reuse_port")
    try:
        holder = reuse_port_holder(settings.host, settings.port)
    except OSError as exc:
        _say(f"error: gateway port {settings.host}:{settings.port}: {exc}", sys.stderr)
        return 1
    with holder:
        return _supervise(replace(settings, port=holder.getsockname()[1]), secret, workers)


def _supervise(settings: NodeSettings, secret: bytes, workers: int) -> int:
    """:func:`run_gateway`'s supervisor loop over ``workers`` forked workers."""
    context = multiprocessing.get_context("fork")
    supervisor = os.getpid()
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def spawn(index: int) -> None:
        proc = context.Process(
            target=_worker_main,
            args=(settings.worker(index, workers), secret),
            name=f"hopcast-gateway-{index}",
        )
        proc.start()
        procs[index] = proc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if os.getpid() != supervisor:  # a worker between fork and its own handlers
            sys.exit(0)
        stopping = True
        for proc in procs.values():
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for index in range(workers):
            spawn(index)
        while not stopping:
            wait([p.sentinel for p in procs.values()], timeout=0.5)
            for index, proc in list(procs.items()):
                if proc.exitcode is None or stopping:
                    continue
                if proc.exitcode == EXIT_STARTUP:
                    failed = True
                    on_signal(signal.SIGTERM, None)
                    break
                logger.error("gateway worker %d exited (%s); restarting", index, proc.exitcode)
                time.sleep(RESTART_DELAY_S)
                if not stopping:
                    spawn(index)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
                failed = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed or any(p.exitcode != 0 for p in procs.values()):
        return 1
    return 0

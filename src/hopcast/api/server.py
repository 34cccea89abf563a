"""Run the API with uvicorn: uvloop event loop, httptools HTTP parser, no access log.

``serve(graph)`` is the one call a user needs. With ``workers > 1`` uvicorn starts that many
processes and each opens the same store on its own: an LMDB directory (many readers and one
writer across processes are what LMDB is built for) or a Redis server or Cluster (the workers
are then stateless replicas: any number of them, on any hosts, over one shared store). The
schema must come from a file. Each worker names itself in the ``X-Hopcast-Worker`` response
header (its process id), so a client or a load balancer can see which replica answered.

:func:`serve` binds its port before anything else and prints the address it bound (port 0:
a free port, so a caller that starts it can read where it listens)::

    hopcast API on http://127.0.0.1:41234 (docs: http://127.0.0.1:41234/docs)

TLS: with ``tls_cert`` and ``tls_key`` (PEM files) the API serves HTTPS (uvicorn's ``ssl_*``
options) and the gateway ``wss://`` with the same certificate; the printed URLs say so.

Device-token revocation (:mod:`hopcast.live.revocation`): the in-process gateway polls the
list in Redis when ``redis_url`` is given (what ``hopcast live gateway`` nodes read too), else in
``<store>/revocations.json`` for an LMDB store, else beside a Redis store's keys
(``<store prefix>live:revocations``, shared by every process on that store), else (a memory or
Redis Cluster store) in this process's memory only.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess

from hopcast.api.app import MAX_BODY_BYTES, create_app
from hopcast.api.live import GatewayBinding
from hopcast.api.policy import Security
from hopcast.api.ratelimit import DEFAULT_RATES, Rate, RateLimits
from hopcast.auth.keys import KeyFile
from hopcast.config import LIVE_SECRET_ENV as LIVE_SECRET_ENV
from hopcast.config import live_secret as live_secret
from hopcast.durations import now_us
from hopcast.errors import ConfigError
from hopcast.graphdb import Graph
from hopcast.kv import KVStore, open_kv
from hopcast.live.fanout import InProcessTransport, Router, Transport
from hopcast.live.gateway import DEFAULT_MAX_PER_SUBJECT, TOKEN_LEEWAY_S, Gateway
from hopcast.live.revocation import FileRevocations, MemoryRevocations, RevocationSource
from hopcast.live.service import LiveService
from hopcast.ports import listening_socket
from hopcast.query.cache import DEFAULT_CONSISTENCY, Consistency
from hopcast.tls import check_pair, server_context

if TYPE_CHECKING:
    from hopcast.live.redisfan import RedisTransport

#: Loopback by default: exposing the API is an explicit choice (and needs API keys).
DEFAULT_HOST = "127.0.0.1"
#: Clear of the ports development servers usually take (8000, 8080, 8888) and of well-known
#: services, so the demo starts next to them without a clash.
DEFAULT_PORT = 8321

# How a worker process finds its graph when ``workers > 1`` (set by :func:`serve`).
_ENV_STORE = "HOPCAST_API_STORE"
_ENV_SCHEMA = "HOPCAST_API_SCHEMA"
_ENV_MAX_BODY = "HOPCAST_API_MAX_BODY_BYTES"
_ENV_REDIS_PREFIX = "HOPCAST_API_REDIS_PREFIX"
_ENV_CONSISTENCY = "HOPCAST_API_CONSISTENCY"
_ENV_KEYS = "HOPCAST_API_KEYS"  # the key file; absent: no authentication
_ENV_ALLOWED_HOSTS = "HOPCAST_API_ALLOWED_HOSTS"  # newline-separated; absent: any host
_ENV_CORS_ORIGINS = "HOPCAST_API_CORS_ORIGINS"  # newline-separated
_ENV_RATE_LIMITS = "HOPCAST_API_RATE_LIMITS"  # JSON {bucket: [per_second, burst]}, or null

#: uvicorn's ``proxy_headers`` (on by default, trusting 127.0.0.1) would take the client's
#: address and scheme from ``X-Forwarded-For``/``-Proto`` sent by any local process: a client
#: could then name its own rate-limit subject (a fresh bucket per request). hopcast reads the
#: peer of the TCP connection; behind a proxy, the key (not the address) is the subject.
PROXY_HEADERS = False

#: The response header in which a worker of a multi-worker server names itself (its pid).
WORKER_HEADER = "x-hopcast-worker"

# uvloop and httptools are in the ``server`` extra except where they do not build (uvloop on
# Windows); fall back to asyncio / h11 there rather than refuse to start.
_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
_HTTP = "httptools" if importlib.util.find_spec("httptools") else "h11"


def url(host: str, port: int, scheme: str = "http") -> str:
    """``http://host:port`` (IPv6 hosts in brackets)."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def revocation_source(kv: KVStore, redis_url: str | None) -> RevocationSource:
    """Where the gateway of a ``hopcast serve`` reads revocations (see the module docstring)."""
    if redis_url is not None:
        from hopcast.live.redisrevoke import RedisRevocations  # the redis extra, when asked for

        return RedisRevocations(redis_url)
    path = getattr(kv, "path", None)
    if kv.name == "lmdb" and path is not None:
        return FileRevocations.in_directory(path)
    if kv.name == "redis":
        from hopcast.live.redisrevoke import for_store

        shared = for_store(kv)
        if shared is not None:
            return shared
    return MemoryRevocations()


def make_server(
    graph: Graph,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    log_level: str = "info",
    live: bool = True,
    gateway_port: int | None = None,
    dev_tokens: bool = False,
    redis_url: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_leeway_s: float = TOKEN_LEEWAY_S,
    max_per_subject: int = DEFAULT_MAX_PER_SUBJECT,
    security: Security | None = None,
    rate_limits: Mapping[str, Rate] | None = DEFAULT_RATES,
) -> uvicorn.Server:
    """A configured, not yet started uvicorn server for ``graph`` (one process).

    With ``gateway_port`` the live WebSocket gateway runs in the same event loop, fed by the
    schedule's triggers; ``dev_tokens`` adds ``POST /v1/live/tokens`` (development only). With
    ``redis_url`` the triggers are also published into Redis for gateway nodes in other
    processes and hosts (``hopcast live gateway``; needs ``hopcast[redis]``). With ``tls_cert``
    and ``tls_key`` the API serves HTTPS and the gateway ``wss://``; ``token_leeway_s`` and
    ``max_per_subject`` are the gateway's (:class:`~hopcast.live.gateway.Gateway`).
    ``rate_limits``: the per-key rates (:mod:`hopcast.api.ratelimit`; None: no limits).

    Raises:
        ConfigError: only one of ``tls_cert`` and ``tls_key``, or they cannot be loaded; the
            gateway's revocation file cannot be read.

    Call ``server.run()`` (blocks; pass ``sockets=[sock]`` to serve an already-bound socket) and
    set ``server.should_exit = True`` from another thread to stop it. With ``live`` the app also
    serves ``/v1/live`` (schedule, prefetch) and runs the schedule's timers; only one process per
    store may do that, which is why :func:`serve` with several workers serves the graph only.
    ``security`` as for :func:`hopcast.api.create_app` (default: no authentication); device
    tokens are verified with the gateway's secret, else ``$HOPCAST_LIVE_SECRET`` if set.
    """
    check_pair(tls_cert, tls_key)
    context = None if tls_cert is None or tls_key is None else server_context(tls_cert, tls_key)
    service = LiveService(graph.store.kv) if live else None
    binding = None
    redis: RedisTransport | None = None
    if service is not None and (gateway_port is not None or redis_url is not None):
        transport: Transport = InProcessTransport()
        if redis_url is not None:  # Redis also serves this process's gateway
            from hopcast.live.redisfan import RedisTransport  # the redis extra, when asked for

            transport = redis = RedisTransport(redis_url)
        router = Router(transport, payload_for=service.payload_for)
        service.add_sink(router.publish_all)
    if service is not None and gateway_port is not None:
        secret = live_secret()
        revocations = revocation_source(graph.store.kv, redis_url)
        if isinstance(revocations, FileRevocations):
            # The gateway refuses to start on a list it cannot read (it would let revoked
            # tokens back in); say why here, as a clear error, before anything starts.
            revocations.load_sync(now_us())
        gateway = Gateway(
            router,
            secret,
            node_id=f"{host}:{gateway_port}",
            token_leeway_s=token_leeway_s,
            max_per_subject=max_per_subject,
            revocations=revocations,
        )
        binding = GatewayBinding(
            gateway,
            host,
            gateway_port,
            secret,
            dev_tokens,
            ssl_context=context,
            revocations=revocations,
        )
    # Gateway nodes elsewhere verify with the shared secret: so do the routes devices call.
    shared = os.environ.get(LIVE_SECRET_ENV)
    if security is not None and security.device_secret is None and binding is None and shared:
        security = dataclasses.replace(security, device_secret=live_secret(required=True))
    if (
        security is not None
        and security.device_secret is not None
        and binding is None
        and security.revocations is None
    ):
        # Without a gateway here, the routes devices call still honour revocations: the app
        # polls the list the gateways poll (the store's file, or Redis).
        source = revocation_source(graph.store.kv, redis_url)
        if isinstance(source, FileRevocations):
            source.load_sync(now_us())  # unreadable: a clear error before anything starts
        security = dataclasses.replace(security, revocations=source)
    app: ASGIApp = create_app(
        graph,
        max_body_bytes=max_body_bytes,
        live=service,
        gateway=binding,
        security=security,
        rate_limits=_limits(rate_limits),
    )
    if redis is not None:
        app = _WithTransport(app, redis)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=_LOOP,
        http=_HTTP,
        access_log=False,
        log_level=log_level,
        proxy_headers=PROXY_HEADERS,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    _freeze_heap()
    return uvicorn.Server(config)


class _WithTransport:
    """The app, with a networked transport started when the app has started (the router's epoch
    reaches Redis before the first trigger) and flushed and closed when it has stopped."""

    def __init__(self, app: ASGIApp, transport: RedisTransport) -> None:
        self.app = app
        self.transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def forward(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.transport.start()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.transport.close()
            await send(message)

        await self.app(scope, receive, forward)


#: Cyclic-GC thresholds for a server process. A 3-hop answer allocates thousands of objects;
#: with CPython's default (700, 10, 10) that triggers full collections every few requests,
#: measured here as 15-22 ms p99 spikes on 2-3 ms requests. Collecting young objects every
#: 100k allocations and the old generation rarely keeps the tail at the request's own cost
#: (max 9 ms over 1,200 requests), while still reclaiming cycles.
GC_THRESHOLDS = (100_000, 50, 1_000)


def _freeze_heap() -> None:
    """Move everything alive at start-up out of the cyclic GC's reach.

    The graph, schema and app are long-lived; without this every gen-2 collection triggered by
    request allocations walks them, which shows up as millisecond latency spikes at p99.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve(
    graph: Graph,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 1,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    gateway_port: int | None = None,
    redis_url: str | None = None,
    consistency: Consistency | str = DEFAULT_CONSISTENCY,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_leeway_s: float = TOKEN_LEEWAY_S,
    max_per_subject: int = DEFAULT_MAX_PER_SUBJECT,
    security: Security | None = None,
    rate_limits: Mapping[str, Rate] | None = DEFAULT_RATES,
) -> None:
    """Serve the API until interrupted (Ctrl-C); prints the URL first, with the port bound.

    The port is bound (and listening) before the server starts, so the printed URL answers
    at once (requests wait in the backlog until the app has started); port 0 picks a free
    port. With ``gateway_port`` (single worker only) the live WebSocket gateway listens there too,
    verifying device tokens with ``$HOPCAST_LIVE_SECRET``. With ``redis_url`` (single worker
    only) the live triggers are also published into that Redis for ``hopcast live gateway``.

    Args:
        graph: the graph. With ``workers > 1`` only its store (LMDB directory, or Redis URL and
            key prefix) and schema file are used: every worker opens its own :class:`Graph` on
            them.
        workers: server processes.
        consistency: the workers' node-cache model (:mod:`hopcast.query.cache`); with one
            worker, ``graph``'s own applies.
        tls_cert, tls_key: PEM certificate chain and key: HTTPS (and ``wss://``) instead of
            plain HTTP.
        token_leeway_s, max_per_subject: the gateway's token leeway and per-subject cap.
        security: keys, allowed hosts, CORS origins (default: no authentication, any host;
            the ``hopcast serve`` command always passes one). Every worker reads the key file
            itself and sees a change within a second.
        rate_limits: the per-key rates of every worker (:mod:`hopcast.api.ratelimit`; each
            worker counts on its own); None: no limits.

    Raises:
        ConfigError: ``workers < 1``, ``workers > 1`` with a graph in memory or a schema not
            loaded from a file, or ``host:port`` cannot be bound.
    """
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    check_pair(tls_cert, tls_key)
    if tls_cert is not None and tls_key is not None:
        server_context(tls_cert, tls_key)  # a clear error before anything starts
    scheme = "http" if tls_cert is None else "https"
    if workers > 1 and (gateway_port is not None or redis_url is not None):
        raise ConfigError("the live gateway runs in a single-worker server (omit --workers)")
    if workers == 1:
        server = make_server(
            graph,
            host,
            port,
            max_body_bytes=max_body_bytes,
            gateway_port=gateway_port,
            redis_url=redis_url,
            tls_cert=tls_cert,
            tls_key=tls_key,
            token_leeway_s=token_leeway_s,
            max_per_subject=max_per_subject,
            security=security,
            rate_limits=rate_limits,
        )
        with _listen(host, port) as sock:
            address = url(host, sock.getsockname()[1], scheme)
            if gateway_port is not None:
                ws = "ws" if tls_cert is None else "wss"
                print(f"live gateway on {ws}://{host}:{gateway_port}", flush=True)
            if redis_url is not None:
                print(f"live triggers published to {redis_url}", flush=True)
            _announce(security)
            print(f"hopcast API on {address} (docs: {address}/docs)", flush=True)
            server.run(sockets=[sock])
        return
    kv = graph.store.kv
    os.environ.pop(_ENV_REDIS_PREFIX, None)
    if kv.name == "lmdb":
        store = getattr(kv, "path", None)
    elif kv.name == "redis":
        store = getattr(kv, "url", None)
        os.environ[_ENV_REDIS_PREFIX] = str(getattr(kv, "prefix", ""))
    else:
        store = None
    if not isinstance(store, str):
        raise ConfigError(
            "workers > 1 needs a graph stored in LMDB (Graph.open('<directory>')) or Redis "
            "(Graph.open('redis://host:port'), 'redis+cluster://host:port'), which every "
            "worker opens on its own"
        )
    schema = Path(graph.schema.source)
    if not schema.is_file():
        raise ConfigError(
            f"workers > 1 needs a schema loaded from a file, not {graph.schema.source!r}"
        )
    os.environ[_ENV_STORE] = store
    os.environ[_ENV_SCHEMA] = str(schema)
    os.environ[_ENV_MAX_BODY] = str(max_body_bytes)
    os.environ[_ENV_CONSISTENCY] = Consistency(consistency).value
    _export_security(security)
    os.environ[_ENV_RATE_LIMITS] = json.dumps(
        None
        if rate_limits is None
        else {b: [r.per_second, r.burst] for b, r in rate_limits.items()}
    )
    config = uvicorn.Config(
        f"{__name__}:worker_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop=_LOOP,
        http=_HTTP,
        access_log=False,
        proxy_headers=PROXY_HEADERS,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
    )
    with _listen(host, port) as sock:
        sock.set_inheritable(True)  # every worker process serves this one socket
        address = url(host, sock.getsockname()[1], scheme)
        _announce(security)
        print(
            f"hopcast API on {address} with {workers} workers (docs: {address}/docs); "
            "graph routes only: the live schedule runs in a single-worker server",
            flush=True,
        )
        # What uvicorn.run does with workers, on the socket bound here.
        Multiprocess(config, sockets=[sock]).run()


def _limits(rates: Mapping[str, Rate] | None) -> RateLimits | None:
    return None if rates is None else RateLimits(rates)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound and listening; a clear error if the address is taken."""
    try:
        return listening_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {url(host, port)}: {exc}") from exc


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory when ``workers > 1``).

    Opens the graph named by the environment :func:`serve` set (an LMDB directory or a Redis
    URL, with ``HOPCAST_API_REDIS_PREFIX`` as the Redis key prefix); the process exit releases
    it. Its responses carry the ``X-Hopcast-Worker`` header (this process's id).

    Raises:
        ConfigError: if that environment is missing.
    """
    store = os.environ.get(_ENV_STORE)
    schema = os.environ.get(_ENV_SCHEMA)
    if not store or not schema:
        raise ConfigError(f"{_ENV_STORE} and {_ENV_SCHEMA} must name the store and schema")
    max_body = int(os.environ.get(_ENV_MAX_BODY, MAX_BODY_BYTES))
    prefix = os.environ.get(_ENV_REDIS_PREFIX)
    consistency = os.environ.get(_ENV_CONSISTENCY, DEFAULT_CONSISTENCY)
    if prefix is not None and store.partition("://")[0] in REDIS_SCHEMES:
        kv = open_kv(store, prefix=prefix)
        graph = Graph.open(schema=schema, kv=kv, consistency=consistency)
    else:
        graph = Graph.open(store, schema, consistency=consistency)
    rates_json = os.environ.get(_ENV_RATE_LIMITS)
    rates: Mapping[str, Rate] | None = DEFAULT_RATES
    if rates_json is not None:
        loaded = json.loads(rates_json)
        rates = None if loaded is None else {b: Rate(r[0], r[1]) for b, r in loaded.items()}
    app = create_app(
        graph,
        max_body_bytes=max_body,
        rate_limits=_limits(rates),
        security=_imported_security(),
    )
    app.add_middleware(_WorkerHeader)
    _freeze_heap()
    return app


def _announce(security: Security | None) -> None:
    """Say how the server guards its door (one line, before the address)."""
    if security is not None and security.keys is not None:
        print(f"API keys from {security.keys.path}", flush=True)
    else:
        print("no authentication: every route is open (loopback only)", flush=True)


def _export_security(security: Security | None) -> None:
    """Hand ``security`` to the worker processes (through their environment)."""
    for name in (_ENV_KEYS, _ENV_ALLOWED_HOSTS, _ENV_CORS_ORIGINS):
        os.environ.pop(name, None)
    if security is None:
        return
    if security.keys is not None:
        os.environ[_ENV_KEYS] = str(security.keys.path)
    if security.allowed_hosts is not None:
        os.environ[_ENV_ALLOWED_HOSTS] = "\n".join(security.allowed_hosts)
    os.environ[_ENV_CORS_ORIGINS] = "\n".join(security.cors_origins)


def _imported_security() -> Security:
    """The security :func:`_export_security` handed to this worker process."""
    keys = os.environ.get(_ENV_KEYS)
    hosts = os.environ.get(_ENV_ALLOWED_HOSTS)
    origins = os.environ.get(_ENV_CORS_ORIGINS, "")
    return Security(
        keys=KeyFile(keys) if keys else None,
        allowed_hosts=None if hosts is None else tuple(hosts.splitlines()),
        cors_origins=tuple(o for o in origins.splitlines() if o),
    )


#: Store URL schemes of the Redis backend (see :func:`hopcast.kv.open_kv`).
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


class _WorkerHeader:
    """Adds ``X-Hopcast-Worker: <pid>`` to every response of a worker process."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (WORKER_HEADER.encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, named)

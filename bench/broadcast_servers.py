"""Broadcast servers for ``bench/broadcast.py``, one per process, all under uvloop.

* ``hopcast`` — :class:`hopcast.live.gateway.Gateway` as shipped (token auth, subscribe,
  per-channel sequence and history, heartbeats, GC freeze policy) fed by an in-process
  ``Router(InProcessTransport())``: ``trigger`` publishes a producer trigger through the router.
  With ``--redis`` the process is one gateway node exactly as ``hopcast live gateway --workers``
  runs it (:func:`hopcast.live.node.run_node`: ``RedisMirror`` source, ``RedisPushRegistry``).
* ``socketio`` — ``python-socketio``'s ``AsyncServer`` as a Python user would deploy it: ASGI
  under uvicorn (httptools, its default WebSocket implementation); ``trigger`` is
  ``sio.emit("trigger", {...})`` to every client. With ``--redis`` the server uses
  ``AsyncRedisManager`` and the orchestrator emits from outside (write-only manager).
* ``websockets`` — the floor: a handler that keeps each connection in a set until it closes;
  ``trigger`` is one ``websockets.broadcast()`` of the same frame bytes hopcast sends. With
  ``--redis`` each process subscribes to a Redis channel and broadcasts what arrives.

With ``--redis`` the trigger comes from a separate ``--role publisher`` process instead (the
router side): ``Router(RedisTransport(url)).publish`` for hopcast, a write-only
``AsyncRedisManager.emit`` for python-socketio, a Redis ``PUBLISH`` of the frame for the floor.

Every server process listens with ``SO_REUSEPORT`` (several processes share one port; the kernel
spreads connections) and a 4096 listen backlog, and times its garbage collections with the same
:class:`~hopcast.live.gcwatch.GcMonitor` (the gateway installs its own).

Control over stdin/stdout, one JSON object per line::

    (start)            → {"listening": port, "pid": pid}   (a publisher: {"publisher": pid})
    trigger <round>    → {"t0": ns}        (time taken just before publishing)
    stats              → {"connections": n, "gc": {...}}  (GcMonitor stats; tracked objects
                                                         not frozen)
    quit               → exit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from hopcast.live import messages as m
from hopcast.live.gcwatch import GcMonitor
from hopcast.live.schedule import State

SECRET_ENV = "HOPCAST_BENCH_SECRET"
BACKLOG = 4096
#: Event id and channel every trigger of the benchmark uses.
EVENT = "bench-live"
CHANNEL = "global"
REDIS_CHANNEL = "bench-broadcast"
SOCKETIO_CHANNEL = "bench-socketio"


def trigger_frame(round_no: int, ts_us: int) -> bytes:
    """The frame the floor broadcasts: byte for byte the shape of hopcast's trigger."""
    return m.encode(
        m.Trigger(
            channel=CHANNEL,
            epoch=1,
            seq=round_no,
            event=EVENT,
            stage=State.LIVE.value,
            version=round_no,
            ts=ts_us,
        )
    )


def trigger_data(round_no: int, ts_us: int) -> dict[str, Any]:
    """The same trigger as a Socket.IO event argument."""
    return {"event": EVENT, "stage": State.LIVE.value, "version": round_no, "ts": ts_us}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class Control:
    """What a server process exposes to the orchestrator."""

    trigger: Callable[[int], Awaitable[int]]
    connections: Callable[[], int]
    gc_stats: Callable[[], dict[str, float]]


async def control_loop(ctl: Control) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        match line:
            case ["trigger", round_no]:
                emit({"t0": await ctl.trigger(int(round_no))})
            case ["stats"]:
                tracked = sum(len(gc.get_objects(g)) for g in range(3))
                stats = ctl.gc_stats() | {"gc_tracked_objects": tracked}
                emit({"connections": ctl.connections(), "gc": stats})
            case ["quit"]:
                return
            case _:
                emit({"error": f"unknown command {line!r}"})


# -- hopcast ---------------------------------------------------------------------------------


def hopcast_trigger(version: int, ts_us: int) -> Any:
    """The producer trigger of a round (the event's version grows with every round)."""
    from hopcast.live.producer import Trigger

    return Trigger(EVENT, State.LIVE if version > 1 else State.PREFETCHING, version, ts_us)


async def run_hopcast(args: argparse.Namespace) -> None:
    if args.redis:
        await run_hopcast_node(args)
        return
    from hopcast.live.fanout import InProcessTransport, Router
    from hopcast.live.gateway import Gateway

    router = Router(InProcessTransport())
    router.publish(hopcast_trigger(1, time.time_ns() // 1000))  # the event exists: version 1
    gateway = Gateway(router, os.environ[SECRET_ENV].encode(), node_id=args.node_id)
    server = await gateway.serve(args.host, args.port, reuse_port=True)
    ctl = Control()

    async def trigger(round_no: int) -> int:
        t0 = time.time_ns()
        router.publish(hopcast_trigger(round_no + 1, t0 // 1000))
        return t0

    ctl.trigger = trigger
    ctl.connections = lambda: gateway.connection_count
    ctl.gc_stats = gateway.gc.stats
    emit({"listening": server.port, "pid": os.getpid()})
    await control_loop(ctl)
    await server.close()


async def run_hopcast_node(args: argparse.Namespace) -> None:
    """One gateway node fed through Redis, as ``hopcast live gateway --workers N`` runs each."""
    from hopcast.live.gateway import GatewayServer
    from hopcast.live.node import NodeSettings, run_node

    settings = NodeSettings(
        redis_url=args.redis, host=args.host, port=args.port, node_id=args.node_id
    )
    stop = asyncio.Event()
    started: asyncio.Future[GatewayServer] = asyncio.get_running_loop().create_future()
    node = asyncio.create_task(
        run_node(settings, os.environ[SECRET_ENV].encode(), stop, on_ready=started.set_result)
    )
    server = await started
    gateway = server.gateway
    ctl = Control()

    async def trigger(round_no: int) -> int:
        raise RuntimeError("a Redis-fed node is triggered by the publisher")

    ctl.trigger = trigger
    ctl.connections = lambda: gateway.connection_count
    ctl.gc_stats = gateway.gc.stats
    emit({"listening": server.port, "pid": os.getpid()})
    await control_loop(ctl)
    stop.set()
    await node


# -- publishers (router side, with --redis) ----------------------------------------------------


async def run_publisher(args: argparse.Namespace) -> None:
    """Fan the trigger in through Redis to every server process of ``args.system``."""
    ctl = Control()
    ctl.connections = lambda: 0
    ctl.gc_stats = dict
    closing: Callable[[], Awaitable[object]]
    if args.system == "hopcast":
        from hopcast.live.fanout import Router
        from hopcast.live.redisfan import RedisTransport

        transport = RedisTransport(args.redis)
        router = Router(transport)
        router.publish(hopcast_trigger(1, time.time_ns() // 1000))  # the event exists
        await transport.flush()  # Redis seeded before any node loads it

        async def trigger(round_no: int) -> int:
            t0 = time.time_ns()
            router.publish(hopcast_trigger(round_no + 1, t0 // 1000))
            await transport.flush()
            return t0

        closing = transport.close
    elif args.system == "socketio":
        import socketio

        manager = socketio.AsyncRedisManager(args.redis, channel=SOCKETIO_CHANNEL, write_only=True)

        async def trigger(round_no: int) -> int:
            t0 = time.time_ns()
            await manager.emit("trigger", trigger_data(round_no, t0 // 1000), namespace="/")
            return t0

        async def close_manager() -> None:
            pass

        closing = close_manager
    else:
        import redis.asyncio as aioredis

        client = aioredis.from_url(args.redis)
        await client.ping()

        async def trigger(round_no: int) -> int:
            t0 = time.time_ns()
            await client.publish(REDIS_CHANNEL, trigger_frame(round_no, t0 // 1000))
            return t0

        closing = client.aclose
    ctl.trigger = trigger
    emit({"publisher": os.getpid()})
    await control_loop(ctl)
    await closing()


# -- websockets (the floor) ------------------------------------------------------------------


async def run_websockets(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    monitor = GcMonitor()
    monitor.install()
    server = await serve(
        handler,
        args.host,
        args.port,
        compression=None,
        ping_interval=None,
        reuse_port=True,
        backlog=BACKLOG,
    )
    ctl = Control()

    async def trigger(round_no: int) -> int:
        t0 = time.time_ns()
        broadcast(clients, trigger_frame(round_no, t0 // 1000), text=True)
        return t0

    ctl.trigger = trigger
    ctl.connections = lambda: len(clients)
    ctl.gc_stats = monitor.stats
    relay = None
    if args.redis:
        relay = asyncio.create_task(
            redis_relay(args.redis, lambda f: broadcast(clients, f, text=True))
        )
        relay.add_done_callback(report_failure)
    emit({"listening": args.port, "pid": os.getpid()})
    await control_loop(ctl)
    if relay is not None:
        relay.cancel()
    server.close()


def report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        print(f"relay failed: {task.exception()!r}", file=sys.stderr, flush=True)


async def redis_relay(url: str, deliver: Callable[[bytes], None]) -> None:
    """Deliver every message of :data:`REDIS_CHANNEL` (the floor's fan-in across processes)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(REDIS_CHANNEL)
    async for message in pubsub.listen():
        deliver(message["data"])


# -- python-socketio -------------------------------------------------------------------------


async def run_socketio(args: argparse.Namespace) -> None:
    import socketio
    import uvicorn

    manager = None
    if args.redis:
        manager = socketio.AsyncRedisManager(args.redis, channel=SOCKETIO_CHANNEL)
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager)
    connected = 0

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        nonlocal connected
        connected += 1

    @sio.event  # type: ignore[misc]
    async def disconnect(sid: str, *reason: Any) -> None:
        nonlocal connected
        connected -= 1

    monitor = GcMonitor()
    monitor.install()
    config = uvicorn.Config(
        socketio.ASGIApp(sio),
        loop="none",  # this process already runs uvloop
        http="httptools",
        log_level="warning",
        backlog=BACKLOG,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    sock = reuse_port_socket(args.host, args.port)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.02)
    ctl = Control()

    async def trigger(round_no: int) -> int:
        t0 = time.time_ns()
        await sio.emit("trigger", trigger_data(round_no, t0 // 1000))
        return t0

    ctl.trigger = trigger
    ctl.connections = lambda: connected
    ctl.gc_stats = monitor.stats
    emit({"listening": args.port, "pid": os.getpid()})
    await control_loop(ctl)
    server.should_exit = True
    server.force_exit = True
    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(serving, 5)


RUNNERS = {"hopcast": run_hopcast, "socketio": run_socketio, "websockets": run_websockets}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", choices=sorted(RUNNERS), required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--redis", help="fan the trigger in through this Redis (multi-process)")
    ap.add_argument("--node-id", default=f"bench-{os.getpid()}")
    ap.add_argument("--role", choices=("server", "publisher"), default="server")
    args = ap.parse_args(argv)
    if args.role == "publisher" and not args.redis:
        ap.error("a publisher needs --redis")
    uvloop.run(run_publisher(args) if args.role == "publisher" else RUNNERS[args.system](args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

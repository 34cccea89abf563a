"""The gateway over real sockets: delivery to many devices with one encoding, resume by replay or
state, dedup, refusals that leave other devices untouched, scopes, the connection limit, slow and
silent devices evicted, and a restart the fleet converges through.

Devices run :class:`~hopcast.sdk.protocol.DeviceProtocol` over ``websockets`` clients; the server
and the devices share one event loop, so a trigger published through the in-process transport is
written to every socket before ``publish`` returns. Waits are on events, bounded by ``WAIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import uvloop
from prometheus_client import generate_latest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from hopcast.durations import HOUR, now_us
from hopcast.errors import ConfigError
from hopcast.live import messages as m
from hopcast.live import tokens
from hopcast.live.fanout import InMemoryPushRegistry, InProcessTransport, Router
from hopcast.live.gateway import FreezePolicy, Gateway, GatewayServer, GcMonitor
from hopcast.live.producer import Trigger
from hopcast.live.schedule import State
from hopcast.sdk.protocol import (
    DeviceEvent,
    DeviceProtocol,
    Phase,
    ServerBye,
    ServerError,
    StateSynced,
    TriggerApplied,
    backoff,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
HOST = "127.0.0.1"
#: Upper bound on any awaited event; a healthy run needs a small fraction of it.
WAIT_S = 20.0
#: Devices in the fan-out test: enough to exercise the broadcast loop, few enough for CI.
FLEET = 200

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]], *, loop: str = "asyncio") -> T:
    """Run ``main()`` on a fresh loop (pytest-asyncio is not installed)."""
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def token(
    device: str = "tv",
    scopes: tuple[str, ...] = ("global", "event:*"),
    *,
    secret: bytes = SECRET,
    issued: int | None = None,
) -> str:
    return tokens.issue(secret, device, scopes, now_us() if issued is None else issued, HOUR)


def trigger(version: int, st: State = State.LIVE, event: str = "finale") -> Trigger:
    return Trigger(event, st, version, 1_767_225_600_000_000 + version)


@dataclass
class Env:
    router: Router
    gateway: Gateway
    server: GatewayServer

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.server.port}"


@contextlib.asynccontextmanager
async def running(router: Router | None = None, **options: Any) -> AsyncIterator[Env]:
    router = router or Router(InProcessTransport())
    options.setdefault("node_id", "gw-test")
    gateway = Gateway(router, SECRET, **options)
    server = await gateway.serve(HOST, 0)
    try:
        yield Env(router, gateway, server)
    finally:
        await server.close()


class Device:
    """A test device: the SDK's protocol core over a websockets client connection."""

    def __init__(
        self, url: str, name: str = "tv", channels: tuple[str, ...] = ("global",), **kw: Any
    ):
        self.url = url
        self.proto = DeviceProtocol(token(name, **kw), channels)
        self.events: list[DeviceEvent] = []
        self.connections: list[list[m.ServerMessage]] = []  # frames received, per connection
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._pings = 0

    @property
    def frames(self) -> list[m.ServerMessage]:
        return self.connections[-1]

    def applied(self) -> list[tuple[str, int]]:
        return [(e.stage, e.version) for e in self.events if isinstance(e, TriggerApplied)]

    async def start(self) -> None:
        """Connect, say hello, wait for welcome, then until the subscription is in place."""
        await self.connect()
        await self.until(lambda: self.proto.phase is Phase.OPEN)
        await self.sync()

    async def connect(self, **kw: Any) -> None:
        self.ws = await connect(self.url, compression=None, ping_interval=None, **kw)
        self.connections.append([])
        await self.ws.send(self.proto.connect(now_us()), text=True)
        self.reader = asyncio.create_task(self._read(self.ws))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            while True:
                data = await ws.recv(decode=False)
                self.frames.append(m.decode_from_server(data))
                events = self.proto.receive(data, now_us())
                for out in self.proto.data_to_send():
                    await ws.send(out, text=True)
                self.events += events
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.proto.connection_lost()
            self._changed.set()

    async def sync(self) -> None:
        """Round-trip a ping: everything sent before it has been handled by the gateway."""
        assert self.ws is not None
        self._pings += 1
        ts = self._pings
        await self.ws.send(m.encode(m.Ping(ts=ts)), text=True)
        await self.until(lambda: m.Pong(ts=ts) in self.frames)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def closed(self) -> None:
        assert self.reader is not None
        async with asyncio.timeout(WAIT_S):
            await self.reader

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            await self.closed()

    async def keep_connected(self, rng: random.Random, backoff_scale: float) -> None:
        """Reconnect forever like the SDK: wait ``retry_after_ms`` plus full-jitter backoff
        (scaled down for the test), reset after each welcome."""
        attempt = 0
        while True:
            before = len(self.connections)
            try:
                await self.connect()
                await self.closed()
            except (OSError, InvalidHandshake, ConnectionClosed):
                pass
            welcomed = len(self.connections) > before and any(
                isinstance(f, m.Welcome) for f in self.frames
            )
            attempt = 0 if welcomed else attempt + 1
            delay = self.proto.retry_after_ms / 1000 + backoff(attempt, rng) * backoff_scale
            await asyncio.sleep(delay)


def last_version(device: Device) -> int | None:
    applied = [e for e in device.events[-2:] if isinstance(e, TriggerApplied)]
    return applied[-1].version if applied else None


async def all_until(devices: list[Device], predicate: Callable[[Device], bool]) -> None:
    await asyncio.gather(*(d.until(functools.partial(predicate, d)) for d in devices))


async def raw_session(url: str, *frames: bytes) -> tuple[list[m.ServerMessage], int | None]:
    """Send ``frames`` and read until the gateway closes: the messages and the close code."""
    received: list[m.ServerMessage] = []
    async with connect(url, compression=None, ping_interval=None) as ws:
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await ws.send(frame, text=True)
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                while True:
                    received.append(m.decode_from_server(await ws.recv(decode=False)))
        return received, ws.close_code


def hello(tok: str | None = None, **kw: Any) -> bytes:
    return m.encode(m.Hello(token=tok or token(), client="test/1", **kw))


# -- fan-out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_trigger_reaches_every_device_encoded_once_per_channel(
    loop: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    encoded: list[m.Message] = []
    real_encode = m.encode

    def counting_encode(msg: m.Message) -> bytes:
        if isinstance(msg, m.Trigger):
            encoded.append(msg)
        return real_encode(msg)

    monkeypatch.setattr(m, "encode", counting_encode)

    async def main() -> float:
        async with running() as env:
            devices = [Device(env.url, f"tv-{i}") for i in range(FLEET)]
            await asyncio.gather(*(d.start() for d in devices))
            assert env.gateway.subscriber_count("global") == FLEET
            started = time.perf_counter()
            assert env.router.publish(trigger(1)) == 2  # "global" and "event:finale"
            written = time.perf_counter() - started
            await all_until(devices, lambda d: d.applied() == [("live", 1)])
            with capsys.disabled():
                print(
                    f"\n{loop}: {FLEET} devices: written in {written * 1e3:.2f} ms, all applied in "
                    f"{(time.perf_counter() - started) * 1e3:.1f} ms"
                )
            assert len(encoded) == 2
            stats = env.gateway.stats()
            assert stats["frames_broadcast"] == 1  # nobody follows "event:finale"
            assert stats["frame_writes"] == FLEET
            assert stats["resumes_state"] == FLEET
            for d in devices:
                (t,) = [f for f in d.frames if isinstance(f, m.Trigger)]
                assert (t.channel, t.seq, t.version) == ("global", 1, 1)
            await asyncio.gather(*(d.stop() for d in devices))
            return written

    run(main, loop=loop)


def test_a_device_offline_during_triggers_gets_exactly_the_missed_ones_on_reconnect() -> None:
    async def main() -> None:
        async with running() as env:
            device = Device(env.url)
            await device.start()
            env.router.publish(trigger(1, State.PREFETCHING))
            await device.until(lambda: device.applied() == [("prefetch", 1)])
            await device.stop()
            env.router.publish(trigger(2, State.LIVE))
            env.router.publish(trigger(3, State.ENDED))
            await device.start()
            await device.until(lambda: len(device.applied()) == 3)
            assert device.applied() == [("prefetch", 1), ("live", 2), ("ended", 3)]
            replayed = [f for f in device.frames if isinstance(f, m.Trigger | m.State)]
            assert [(type(f), f.seq) for f in replayed] == [(m.Trigger, 2), (m.Trigger, 3)]
            assert env.gateway.stats()["resumes_replay"] == 1
            await device.stop()

    run(main)


def test_a_device_whose_gap_left_the_history_gets_the_current_state() -> None:
    async def main() -> None:
        async with running(Router(InProcessTransport(), history=2)) as env:
            device = Device(env.url)
            await device.start()
            env.router.publish(trigger(1, State.PREFETCHING))
            await device.until(lambda: len(device.applied()) == 1)
            await device.stop()
            for version, st in ((2, State.LIVE), (3, State.INTERRUPTED), (4, State.LIVE)):
                env.router.publish(trigger(version, st))
            await device.start()
            assert [type(f) for f in device.frames if isinstance(f, m.Trigger | m.State)] == [
                m.State
            ]
            assert device.applied() == [("prefetch", 1), ("live", 4)]
            epoch = env.router.logs["global"].epoch
            assert StateSynced("global", m.Position(epoch, 4)) in device.events
            env.router.publish(trigger(5, State.ENDED))
            await device.until(lambda: device.applied()[-1] == ("ended", 5))
            assert device.proto.positions["global"] == m.Position(epoch, 5)
            await device.stop()

    run(main)


def test_a_duplicate_producer_trigger_is_not_delivered_again() -> None:
    async def main() -> None:
        async with running() as env:
            device = Device(env.url)
            await device.start()
            env.router.publish(trigger(1))
            assert env.router.publish(trigger(1)) == 0
            env.router.publish(trigger(2, State.ENDED))
            await device.until(lambda: len(device.applied()) == 2)
            await device.sync()
            seqs = [f.seq for f in device.frames if isinstance(f, m.Trigger)]
            assert seqs == [1, 2]
            assert device.proto.duplicates == 0
            await device.stop()

    run(main)


# -- refusals --------------------------------------------------------------------------------

REFUSALS = {
    "first frame not hello": (
        [m.encode(m.Subscribe(channels=("global",)))],
        m.ErrorCode.UNEXPECTED,
    ),
    "forged token": ([hello(token(secret=OTHER_SECRET))], m.ErrorCode.UNAUTHORIZED),
    "expired token": (
        [hello(token(issued=now_us() - 2 * HOUR))],
        m.ErrorCode.UNAUTHORIZED,
    ),
    "garbage token": ([hello("not-a-token")], m.ErrorCode.UNAUTHORIZED),
    "unsupported protocol": (
        [hello(protocol=m.PROTOCOL_VERSION + 1)],
        m.ErrorCode.UNSUPPORTED_PROTOCOL,
    ),
    "malformed json": ([b'{"type":"hello","token":'], m.ErrorCode.MALFORMED),
    "unknown type": ([b'{"type":"gimme"}'], m.ErrorCode.MALFORMED),
    "malformed after welcome": ([hello(), b"[1,2"], m.ErrorCode.MALFORMED),
    "a second hello": ([hello(), hello()], m.ErrorCode.UNEXPECTED),
    "a server message": ([hello(), m.encode(m.Bye(reason="x"))], m.ErrorCode.MALFORMED),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_connection_is_refused_and_closed_without_affecting_others(case: str) -> None:
    frames, code = REFUSALS[case]

    async def main() -> None:
        async with running() as env:
            bystander = Device(env.url)
            await bystander.start()
            received, close_code = await raw_session(env.url, *frames)
            errors = [f for f in received if isinstance(f, m.Error)]
            assert [e.code for e in errors] == [code]
            assert close_code == 1008
            env.router.publish(trigger(1))
            await bystander.until(lambda: bystander.applied() == [("live", 1)])
            assert env.gateway.stats()[f"rejections_{code}"] == 1
            await bystander.stop()

    run(main)


def test_an_oversized_frame_is_refused_before_it_is_buffered_and_others_carry_on() -> None:
    async def main() -> None:
        async with running() as env:
            bystander = Device(env.url)
            await bystander.start()
            async with connect(env.url, compression=None, ping_interval=None) as ws:
                await ws.send(hello(), text=True)
                assert isinstance(m.decode_from_server(await ws.recv(decode=False)), m.Welcome)
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(b"x" * (m.MAX_FRAME_BYTES + 1), text=True)
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(WAIT_S):
                        await ws.recv()
                assert ws.close_code == 1009  # the WebSocket "message too big" refusal
            env.router.publish(trigger(1))
            await bystander.until(lambda: bystander.applied() == [("live", 1)])
            assert env.gateway.stats()["rejections_malformed"] == 1
            await bystander.stop()

    run(main)


def test_token_failures_are_counted_by_problem() -> None:
    async def main() -> None:
        async with running() as env:
            await raw_session(env.url, hello(token(secret=OTHER_SECRET)))
            text = generate_latest(env.gateway.metrics_registry).decode()
            assert 'hopcast_gateway_auth_failures_total{problem="bad_signature"} 1.0' in text

    run(main)


def test_a_channel_outside_the_tokens_scopes_is_forbidden_and_the_connection_stays() -> None:
    async def main() -> None:
        async with running() as env:
            device = Device(env.url, channels=("global", "event:secret"), scopes=("global",))
            await device.start()
            assert (
                ServerError("forbidden", "channel 'event:secret' is outside the token's scopes")
                in device.events
            )
            env.router.publish(trigger(1, event="secret"))
            await device.until(lambda: device.applied() == [("live", 1)])
            await device.sync()
            assert [f.channel for f in device.frames if isinstance(f, m.Trigger)] == ["global"]
            assert env.gateway.subscriber_count("event:secret") == 0
            await device.stop()

    run(main)


def test_unsubscribing_stops_a_channels_frames() -> None:
    async def main() -> None:
        async with running() as env:
            device = Device(env.url, channels=("global", "event:finale"))
            await device.start()
            device.proto.unsubscribe(["event:finale"])
            assert device.ws is not None
            for frame in device.proto.data_to_send():
                await device.ws.send(frame, text=True)
            await device.sync()
            env.router.publish(trigger(1))
            await device.until(lambda: len(device.applied()) == 1)
            await device.sync()
            assert [f.channel for f in device.frames if isinstance(f, m.Trigger)] == ["global"]
            await device.stop()

    run(main)


# -- limits and eviction -----------------------------------------------------------------------


def test_a_node_at_its_connection_limit_says_bye_overloaded_with_a_retry_delay() -> None:
    async def main() -> None:
        async with running(max_connections=2, retry_spread_ms=5_000) as env:
            devices = [Device(env.url, f"tv-{i}") for i in range(2)]
            await asyncio.gather(*(d.start() for d in devices))
            received, close_code = await raw_session(env.url, hello())
            assert len(received) == 1 and isinstance(received[0], m.Bye)
            assert received[0].reason == "overloaded"
            assert 0 <= received[0].retry_after_ms <= 5_000
            assert close_code == 1013
            env.router.publish(trigger(1))
            await all_until(devices, lambda d: d.applied() == [("live", 1)])
            assert env.gateway.connection_count == 2
            await asyncio.gather(*(d.stop() for d in devices))

    run(main)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_device_that_stops_reading_is_evicted_while_the_others_receive_everything(
    loop: str,
) -> None:
    async def main() -> None:
        async with running(write_limit=2048, send_buffer=4096) as env:
            fast = [Device(env.url, f"fast-{i}") for i in range(3)]
            await asyncio.gather(*(d.start() for d in fast))
            # The slow device: a tiny receive buffer, and it stops reading after subscribing.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (HOST, env.server.port))
            slow = Device(env.url, "slow")
            await slow.connect(sock=sock, max_queue=1)
            await slow.until(lambda: slow.proto.phase is Phase.OPEN)
            await slow.sync()
            assert slow.reader is not None
            slow.reader.cancel()  # stop reading; the socket stays open
            with contextlib.suppress(asyncio.CancelledError):
                await slow.reader
            version = 0

            def caught_up(device: Device) -> bool:
                return last_version(device) == version

            while env.gateway.stats()["evictions_slow"] == 0:
                version += 1
                assert version < 10_000, "the slow device was never evicted"
                env.router.publish(trigger(version))
                await all_until(fast, caught_up)
            assert env.gateway.subscriber_count("global") == 3
            assert all(len(d.applied()) == version for d in fast)
            # Reading again, the slow device finds the bye after its backlog, then the close.
            assert slow.ws is not None
            received: list[m.ServerMessage] = []
            with contextlib.suppress(ConnectionClosed):
                async with asyncio.timeout(WAIT_S):
                    while True:
                        received.append(m.decode_from_server(await slow.ws.recv(decode=False)))
            assert m.Bye in [type(f) for f in received]
            bye = next(f for f in received if isinstance(f, m.Bye))
            assert bye.reason == "slow"
            env.router.publish(trigger(version + 1))
            await all_until(fast, lambda d: len(d.applied()) == version + 1)
            await asyncio.gather(*(d.stop() for d in fast))

    run(main, loop=loop)


def test_a_device_that_does_not_answer_pings_is_evicted_and_one_that_does_stays() -> None:
    async def main() -> None:
        async with running(heartbeat_s=0.1) as env:
            alive = Device(env.url, "alive")
            await alive.start()
            received, close_code = await raw_session(env.url, hello())
            assert close_code == 1008
            assert isinstance(received[0], m.Welcome) and received[0].heartbeat_ms == 100
            assert any(isinstance(f, m.Ping) for f in received)
            assert isinstance(received[-1], m.Bye) and received[-1].reason == "timeout"
            assert env.gateway.stats()["evictions_timeout"] == 1
            env.router.publish(trigger(1))
            await alive.until(lambda: alive.applied() == [("live", 1)])
            assert any(isinstance(f, m.Ping) for f in alive.frames)
            await alive.stop()

    run(main)


# -- restart -------------------------------------------------------------------------------


def test_a_gateway_restart_sends_bye_and_the_fleet_converges_without_double_applies() -> None:
    async def main() -> None:
        router = Router(InProcessTransport())
        old = Gateway(router, SECRET, node_id="gw-old", retry_spread_ms=200)
        old_server = await old.serve(HOST, 0, reuse_port=True)
        url = f"ws://{HOST}:{old_server.port}"
        devices = [Device(url, f"tv-{i}") for i in range(50)]
        rng = random.Random(4)
        loops = [asyncio.create_task(d.keep_connected(rng, 0.05)) for d in devices]
        await all_until(devices, lambda d: d.proto.phase is Phase.OPEN)
        await asyncio.gather(*(d.sync() for d in devices))
        router.publish(trigger(1, State.PREFETCHING))
        await all_until(devices, lambda d: ("prefetch", 1) in d.applied())
        # The new process binds the same port, the old one leaves.
        new = Gateway(router, SECRET, node_id="gw-new")
        new_server = await new.serve(HOST, old_server.port, reuse_port=True)
        await old_server.close()
        assert old.connection_count == 0
        router.publish(trigger(2, State.LIVE))  # during the reconnect storm
        await all_until(devices, lambda d: d.proto.node == "gw-new" and len(d.applied()) == 2)
        router.publish(trigger(3, State.ENDED))
        await all_until(devices, lambda d: len(d.applied()) == 3)
        for d in devices:
            assert d.applied() == [("prefetch", 1), ("live", 2), ("ended", 3)]
            byes = [e for e in d.events if isinstance(e, ServerBye)]
            assert byes and byes[0].reason == "restart" and 0 <= byes[0].retry_after_ms <= 200
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await new_server.close()

    run(main)


def test_a_restart_with_a_fresh_router_converges_through_state_without_reapplying() -> None:
    async def main() -> None:
        first = Router(InProcessTransport())
        async with running(first) as env:
            devices = [Device(env.url, f"tv-{i}") for i in range(20)]
            await asyncio.gather(*(d.start() for d in devices))
            first.publish_all([trigger(1, State.PREFETCHING), trigger(2, State.LIVE)])
            await all_until(devices, lambda d: len(d.applied()) == 2)
            await asyncio.gather(*(d.stop() for d in devices))
        second = Router(InProcessTransport())  # a new process: a new epoch, no history
        second.publish(trigger(2, State.LIVE))  # the producer re-announces the current stage
        async with running(second) as env:
            for d in devices:
                d.url = env.url
            await asyncio.gather(*(d.start() for d in devices))
            second.publish(trigger(3, State.ENDED))
            await all_until(devices, lambda d: len(d.applied()) == 3)
            for d in devices:
                assert d.applied() == [("prefetch", 1), ("live", 2), ("ended", 3)]
                assert d.proto.positions["global"] == m.Position(second.epoch, 2)
            await asyncio.gather(*(d.stop() for d in devices))

    run(main)


def test_shutdown_with_nobody_connected_and_a_second_close_are_fine() -> None:
    async def main() -> None:
        gateway = Gateway(Router(InProcessTransport()), SECRET, node_id="gw")
        server = await gateway.serve(HOST, 0)
        await server.close()
        await server.close()
        with pytest.raises(ConfigError):
            await gateway.serve(HOST, 0)

    run(main)


# -- push registry, metrics, GC ---------------------------------------------------------------


class RecordingRegistry(InMemoryPushRegistry):
    def __init__(self) -> None:
        super().__init__(ttl_us=3 * HOUR)
        self.unregistered = asyncio.Event()

    async def unregister(self, device: str, node: str) -> None:
        await super().unregister(device, node)
        self.unregistered.set()


def test_the_push_registry_knows_the_node_of_a_connected_device_until_it_leaves() -> None:
    async def main() -> None:
        registry = RecordingRegistry()
        async with running(registry=registry, node_id="gw-7") as env:
            device = Device(env.url, "tv-42")
            await device.start()
            assert await registry.lookup("tv-42", now_us()) == "gw-7"
            await device.stop()
            async with asyncio.timeout(WAIT_S):
                await registry.unregistered.wait()
            assert await registry.lookup("tv-42", now_us()) is None

    run(main)


def test_a_registry_ttl_shorter_than_the_heartbeat_is_refused() -> None:
    with pytest.raises(ConfigError):
        Gateway(
            Router(InProcessTransport()),
            SECRET,
            node_id="gw",
            heartbeat_s=30,
            registry=InMemoryPushRegistry(ttl_us=10_000_000),
        )


@pytest.mark.parametrize(
    "options",
    [{"keys": b"short"}, {"node_id": ""}, {"max_connections": 0}, {"heartbeat_s": 0}],
)
def test_invalid_gateway_settings_are_refused(options: dict[str, Any]) -> None:
    args: dict[str, Any] = {"keys": SECRET, "node_id": "gw", **options}
    keys = args.pop("keys")
    with pytest.raises(ConfigError):
        Gateway(Router(InProcessTransport()), keys, **args)


def test_the_metrics_expose_every_series() -> None:
    async def main() -> str:
        async with running() as env:
            device = Device(env.url)
            await device.start()
            gc.collect()
            text = generate_latest(env.gateway.metrics_registry).decode()
            await device.stop()
            return text

    text = run(main)
    for series in (
        "hopcast_gateway_connections 1.0",
        "hopcast_gateway_devices 1.0",
        'hopcast_gateway_resumes_total{kind="state"} 1.0',
        'hopcast_gateway_gc_pause_seconds_count{generation="2"}',
        'hopcast_gateway_gc_pause_seconds_bucket{generation="0",le="+Inf"}',
    ):
        assert series in text


def test_the_gc_monitor_times_collections_while_installed() -> None:
    monitor = GcMonitor()
    monitor.install()
    monitor.install()
    try:
        gc.collect()
    finally:
        monitor.uninstall()
        monitor.uninstall()
    stats = monitor.stats()
    assert stats["gc_collections_gen2"] == 1
    assert stats["gc_pause_max_s"] > 0
    gc.collect()
    assert monitor.stats()["gc_collections_gen2"] == 1


def test_the_freeze_policy_freezes_after_each_burst_and_thaws_once_half_have_left() -> None:
    policy = FreezePolicy(step=3)
    assert [policy.opened(n) for n in (1, 2, 3, 4, 5)] == [False, False, True, False, False]
    assert policy.opened(6)
    assert not policy.closed(4)
    assert policy.closed(3)
    assert not policy.closed(1)  # nothing frozen any more
    assert [policy.opened(n) for n in (2, 3, 4, 5, 6)] == [False, False, False, False, True]
    with pytest.raises(ConfigError):
        FreezePolicy(step=0)


def test_the_freeze_policy_refreezes_after_a_heartbeat_only_once_the_heap_is_frozen() -> None:
    policy = FreezePolicy(step=3)
    assert not policy.settled(2)  # a small node keeps collecting normally
    assert policy.opened(3)
    assert policy.settled(3) and policy.settled(5)
    assert not policy.closed(3)  # settling at 5 raised the base: thaw at 2, not at 1
    assert policy.closed(2)
    assert not policy.settled(2)


def test_a_heartbeat_round_freezes_what_the_pongs_allocated() -> None:
    gc.unfreeze()

    async def main() -> None:
        async with running(freeze_step=3, heartbeat_s=0.2) as env:
            devices = [Device(env.url, f"tv-{i}") for i in range(3)]
            await asyncio.gather(*(d.start() for d in devices))
            gc.unfreeze()  # as if the connect burst's freeze were long past
            assert gc.get_freeze_count() == 0
            deadline = asyncio.get_running_loop().time() + 5
            while gc.get_freeze_count() == 0 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            assert gc.get_freeze_count() > 0
            await asyncio.gather(*(d.stop() for d in devices))

    try:
        run(main)
    finally:
        gc.unfreeze()


def test_devices_connecting_in_bursts_get_frozen_out_of_the_collectors_way() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    async def main() -> None:
        async with running(freeze_step=5) as env:
            devices = [Device(env.url, f"tv-{i}") for i in range(5)]
            await asyncio.gather(*(d.start() for d in devices))
            assert gc.get_freeze_count() > 0
            await asyncio.gather(*(d.stop() for d in devices[:3]))
            await devices[4].sync()
        gc.unfreeze()

    try:
        run(main)
    finally:
        gc.unfreeze()

"""The Redis fan-out against a real Redis (started by tests/conftest.py through deploy/redis.sh):
router → RedisTransport → Redis → RedisMirror → Gateway → SDK devices, and the push registry.

Each test uses a key prefix of its own; sockets, Redis and the asyncio client are real.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Protocol

import pytest

from hopcast.durations import now_us
from hopcast.errors import ConfigError, HopcastError
from hopcast.live import messages as m
from hopcast.live import tokens
from hopcast.live.fanout import GLOBAL_CHANNEL, ChannelLog, ResumeKind, Router
from hopcast.live.gateway import Gateway, GatewayServer
from hopcast.live.messages import Position
from hopcast.live.producer import Trigger
from hopcast.live.redisfan import Keys, RedisTransport, connect
from hopcast.live.redisnode import RedisMirror, RedisPushRegistry
from hopcast.live.schedule import State
from hopcast.sdk.client import DeviceClient


class RedisServer(Protocol):
    """The ``redis_server`` fixture (tests/conftest.py)."""

    url: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


SECRET = bytes(range(32))
EPOCH = 4242
#: Upper bound on any awaited condition; a healthy run needs milliseconds.
WAIT_S = 15.0
STAGES = (State.PREFETCHING, State.LIVE, State.INTERRUPTED, State.LIVE, State.ENDED)


async def until(check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Poll ``check`` until true; fail quoting it (its source line) after ``timeout``."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        what = inspect.getsource(check).strip() if check.__name__ == "<lambda>" else check
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def trigger(version: int, event: str = "final") -> Trigger:
    return Trigger(event, STAGES[(version - 1) % len(STAGES)], version, now_us())


def applied(client: DeviceClient) -> list[tuple[str, int]]:
    return [(a.event, a.version) for a in client.stats.applied]


class Fleet:
    """Gateways fed by mirrors, and devices connected to them."""

    def __init__(self, url: str, prefix: str, stack: AsyncExitStack) -> None:
        self.url, self.prefix, self.stack = url, prefix, stack
        self.mirrors: list[RedisMirror] = []
        self.gateways: list[Gateway] = []
        self.ports: list[int] = []
        self.devices: list[DeviceClient] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def node(self) -> int:
        mirror = RedisMirror(self.url, prefix=self.prefix)
        await mirror.start()
        self.stack.push_async_callback(mirror.close)
        gateway = Gateway(mirror, SECRET, node_id=f"node-{len(self.gateways)}")
        server = await gateway.serve("127.0.0.1", 0)
        self.stack.push_async_callback(server.close)
        self.mirrors.append(mirror)
        self.gateways.append(gateway)
        self.ports.append(server.port)
        return len(self.gateways) - 1

    def device(self, node: int, channels: tuple[str, ...] = (GLOBAL_CHANNEL,)) -> DeviceClient:
        name = f"tv-{len(self.devices)}"
        token = tokens.issue(SECRET, name, channels, now_us(), 3_600_000_000)
        client = DeviceClient(
            f"ws://127.0.0.1:{self.ports[node]}", token, channels, rng=random.Random(name)
        )
        self.devices.append(client)
        self.tasks.append(asyncio.create_task(client.run(self.stop)))
        return client

    async def subscribed(self, channel: str = GLOBAL_CHANNEL) -> None:
        count = len(self.devices)
        await until(lambda: sum(g.subscriber_count(channel) for g in self.gateways) == count)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


@asynccontextmanager
async def fleet(url: str, prefix: str) -> AsyncIterator[Fleet]:
    async with AsyncExitStack() as stack:
        f = Fleet(url, prefix, stack)
        try:
            yield f
        finally:
            await f.close()


@asynccontextmanager
async def router(url: str, prefix: str, epoch: int = EPOCH) -> AsyncIterator[Router]:
    transport = RedisTransport(url, prefix=prefix)
    r = Router(transport, epoch=epoch)
    await transport.flush()  # the router's epoch is in Redis before the first trigger
    try:
        yield r
    finally:
        await transport.close()


def transport_of(r: Router) -> RedisTransport:
    transport = r._transport
    assert isinstance(transport, RedisTransport)
    return transport


# -- router → Redis → nodes → devices ----------------------------------------------------------


def test_every_device_on_two_nodes_gets_every_trigger_once_in_order(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix) as r, fleet(redis_url, redis_prefix) as f:
            await f.node(), await f.node()
            for i in range(4):
                f.device(i % 2)
            await f.subscribed()
            expected = []
            for version in range(1, 6):
                r.publish(trigger(version, event=f"e{version % 2}"))
                expected.append((f"e{version % 2}", version))
            await until(lambda: all(applied(d) == expected for d in f.devices))
            assert all(d.stats.duplicates == 0 and d.stats.connects == 1 for d in f.devices)
            assert {d.protocol.node for d in f.devices} == {"node-0", "node-1"}
            positions = {d.protocol.positions[GLOBAL_CHANNEL] for d in f.devices}
            assert positions == {Position(EPOCH, 5)}

    run(main)


def test_the_router_process_keeps_serving_its_own_subscribers(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix) as r:
            heard: list[tuple[str, bytes]] = []
            r.subscribe(lambda channel, frame: heard.append((channel, frame)))
            r.publish(trigger(1))
            # synchronous, before Redis has it: the in-process gateway of `hopcast serve`
            assert [c for c, _ in heard] == [GLOBAL_CHANNEL, "event:final"]
            await transport_of(r).flush()
            assert transport_of(r).pending == 0

    run(main)


def test_a_node_started_late_rebuilds_every_channel_and_resumes_devices(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix) as r, fleet(redis_url, redis_prefix) as f:
            for version in range(1, 4):
                r.publish(trigger(version))
            await transport_of(r).flush()
            node = await f.node()
            mirror = f.mirrors[node]
            assert mirror.epoch == EPOCH
            for channel, log in r.logs.items():
                copy = mirror.logs[channel]
                assert (copy.position, copy.frames) == (log.position, log.frames)
                assert copy.state_frame() == log.state_frame()
                for position in (None, Position(EPOCH, 1), Position(EPOCH + 1, 2)):
                    assert mirror.resume(channel, position) == r.resume(channel, position)
            assert mirror.resume("event:other", None) == r.resume("event:other", None)
            replay = mirror.resume(GLOBAL_CHANNEL, Position(EPOCH, 1))
            assert replay.kind is ResumeKind.REPLAY and len(replay.frames) == 2
            # a fresh device gets the state (3 stages of one event: the latest), then streams
            device = f.device(node)
            await f.subscribed()
            await until(lambda: applied(device) == [("final", 3)])
            assert device.stats.state_syncs == 1
            r.publish(trigger(4))
            await until(lambda: applied(device) == [("final", 3), ("final", 4)])

    run(main)


def test_a_device_resumes_by_replay_on_a_node_started_while_it_was_away(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix) as r:
            stop = asyncio.Event()
            token = tokens.issue(SECRET, "tv-r", (GLOBAL_CHANNEL,), now_us(), 3_600_000_000)

            async def node() -> tuple[RedisMirror, GatewayServer]:
                mirror = RedisMirror(redis_url, prefix=redis_prefix)
                await mirror.start()
                gateway = Gateway(mirror, SECRET, node_id="n", retry_spread_ms=0)
                return mirror, await gateway.serve("127.0.0.1", port)

            port = 0
            mirror, server = await node()
            port = server.port
            device = DeviceClient(
                f"ws://127.0.0.1:{port}",
                token,
                (GLOBAL_CHANNEL,),
                rng=random.Random(3),
                sleep=lambda s: asyncio.sleep(min(s, 0.05)),
            )
            task = asyncio.create_task(device.run(stop))
            try:
                # Publish once the device follows the channel, or it may join after both
                # triggers and get one state holding version 2 only.
                await until(lambda: server.gateway.subscriber_count(GLOBAL_CHANNEL) == 1)
                r.publish(trigger(1))
                r.publish(trigger(2))
                await until(lambda: len(applied(device)) == 2)
                await server.close()  # bye restart; the device retries against a closed port
                await mirror.close()
                r.publish(trigger(3))
                r.publish(trigger(4))
                await transport_of(r).flush()
                mirror, server = await node()  # a new node on the same port, loaded from Redis
                await until(lambda: len(applied(device)) == 4)
                assert applied(device) == [("final", v) for v in range(1, 5)]
                assert device.stats.welcomes == 2 and device.stats.state_syncs == 1  # replayed
            finally:
                stop.set()
                await task
                await server.close()
                await mirror.close()

    run(main)


async def _store_silently(url: str, prefix: str, log: ChannelLog) -> None:
    """Write ``log`` to Redis as the transport would, without publishing anything."""
    keys, client = Keys(prefix), connect(url)
    try:
        await client.delete(keys.history(log.channel))
        await client.rpush(keys.history(log.channel), *log.frames)
        await client.hset(
            keys.meta(log.channel),
            mapping={"epoch": log.epoch, "seq": log.seq, "state": log.state_frame()},
        )
    finally:
        await client.aclose()


def test_a_gap_in_the_live_feed_reloads_the_channel_and_replays_what_was_missed(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix) as r, fleet(redis_url, redis_prefix) as f:
            node = await f.node()
            device = f.device(node)
            await f.subscribed()
            r.publish(trigger(1))
            await until(lambda: applied(device) == [("final", 1)])
            # Frames 2 and 3 reach Redis but the node never hears them; then frame 4 arrives.
            shadow = ChannelLog(GLOBAL_CHANNEL, EPOCH)
            for stage in _stages(4):
                shadow.publish(stage)
            await _store_silently(redis_url, redis_prefix, shadow)
            client = connect(redis_url)
            await client.publish(Keys(redis_prefix).frames, shadow.frames[-1])
            await client.aclose()
            await until(lambda: len(applied(device)) == 4)
            assert applied(device) == [("final", v) for v in range(1, 5)]
            assert device.stats.state_syncs == 1  # its first subscribe; the rest was replayed
            mirror = f.mirrors[node]
            assert mirror.logs[GLOBAL_CHANNEL].position == Position(EPOCH, 4)
            reloads = mirror.metrics_registry.get_sample_value(
                "hopcast_redis_mirror_reloads_total", {"reason": "gap"}
            )
            assert reloads == 1

    run(main)


def _stages(n: int) -> list[m.EventStage]:
    return [
        m.EventStage(event="final", stage=trigger(v).stage.value, version=v, ts=trigger(v).ts)
        for v in range(1, n + 1)
    ]


def test_a_new_epoch_from_a_reset_or_a_restarted_router_reaches_devices_as_a_state(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with fleet(redis_url, redis_prefix) as f:
            async with router(redis_url, redis_prefix) as r:
                node = await f.node()
                device = f.device(node)
                await f.subscribed()
                r.publish(trigger(1))
                await until(lambda: applied(device) == [("final", 1)])
                r.reset(GLOBAL_CHANNEL, EPOCH + 1)
                await until(lambda: device.protocol.positions[GLOBAL_CHANNEL] == (EPOCH + 1, 0))
                r.publish(trigger(2))
                await until(lambda: applied(device) == [("final", 1), ("final", 2)])
            # the router restarts in another epoch and re-announces the current stage, then moves on
            async with router(redis_url, redis_prefix, epoch=EPOCH + 7) as r2:
                r2.publish(trigger(2))
                await until(lambda: device.protocol.positions[GLOBAL_CHANNEL] == (EPOCH + 7, 1))
                r2.publish(trigger(3))
                await until(lambda: applied(device) == [("final", v) for v in (1, 2, 3)])
                await until(lambda: f.mirrors[node].epoch == EPOCH + 7)
            assert device.stats.connects == 1 and device.stats.duplicates == 0

    run(main)


def test_a_redis_restart_mid_stream_loses_no_frame_and_nodes_reconnect(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    url = redis_server.url

    async def main() -> None:
        async with router(url, redis_prefix) as r, fleet(url, redis_prefix) as f:
            await f.node(), await f.node()
            for i in range(4):
                f.device(i % 2)
            await f.subscribed()
            r.publish(trigger(1))
            r.publish(trigger(2))
            await until(lambda: all(len(applied(d)) == 2 for d in f.devices))
            await asyncio.to_thread(redis_server.stop)
            try:
                for version in range(3, 6):
                    r.publish(trigger(version))
                await until(lambda: transport_of(r).failures >= 2)
                assert transport_of(r).pending > 0
            finally:
                await asyncio.to_thread(redis_server.start)
            await transport_of(r).flush()
            expected = [("final", v) for v in range(1, 6)]
            await until(lambda: all(applied(d) == expected for d in f.devices))
            assert all(d.stats.connects == 1 for d in f.devices)  # connections kept
            for mirror in f.mirrors:
                await until(mirror.connected.is_set)
                reconnects = mirror.metrics_registry.get_sample_value(
                    "hopcast_redis_mirror_reconnects_total"
                )
                assert reconnects is not None and reconnects >= 1
            failures = transport_of(r).metrics_registry.get_sample_value(
                "hopcast_redis_transport_send_failures_total"
            )
            assert failures is not None and failures >= 2
            # Redis lost its data in the restart; the transport re-seeded it in full
            late = await f.node()
            for channel, log in r.logs.items():
                copy = f.mirrors[late].logs[channel]
                assert (copy.position, copy.frames) == (log.position, log.frames)

    run(main)


def test_a_router_refills_redis_that_silently_lost_its_data(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix) as r, fleet(redis_url, redis_prefix) as f:
            for version in range(1, 81):  # 81 channels: more than one seed round trip
                r.publish(trigger(version, event=f"e{version}"))
            await transport_of(r).flush()
            client = connect(redis_url)
            async for key in client.scan_iter(match=redis_prefix + "*"):
                await client.delete(key)  # as a flush or a restart without persistence would
            await client.aclose()
            r.publish(trigger(81, event="e81"))
            await transport_of(r).flush()  # noticed the missing marker: re-seeded
            node = await f.node()
            assert set(f.mirrors[node].logs) == set(r.logs)
            for channel, log in r.logs.items():
                copy = f.mirrors[node].logs[channel]
                assert (copy.position, copy.frames) == (log.position, log.frames)

    run(main)


def test_a_full_queue_drops_the_oldest_frames_counts_them_and_reseeds_redis(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        transport = RedisTransport(redis_url, prefix=redis_prefix, max_pending=3)
        r = Router(transport, epoch=EPOCH)
        try:
            for version in range(1, 6):  # 10 frames, published before the sender runs once
                r.publish(trigger(version))
            assert (transport.pending, transport.dropped) == (3, 7)
            dropped = transport.metrics_registry.get_sample_value(
                "hopcast_redis_transport_dropped_frames_total"
            )
            assert dropped == 7
            await transport.flush()  # re-seeded from the router's logs, then the rest sent
            assert transport.pending == 0
            async with fleet(redis_url, redis_prefix) as f:
                node = await f.node()
                for channel, log in r.logs.items():
                    copy = f.mirrors[node].logs[channel]
                    assert (copy.position, copy.frames) == (log.position, log.frames)
        finally:
            await transport.close()

    run(main)


def test_the_redis_transport_checks_its_queue_bound() -> None:
    with pytest.raises(ConfigError, match="max_pending"):
        RedisTransport("redis://127.0.0.1:1/0", max_pending=0)


def test_a_mirror_refuses_to_start_without_redis(redis_prefix: str) -> None:
    async def main() -> None:
        mirror = RedisMirror("redis://127.0.0.1:1/0", prefix=redis_prefix)
        with pytest.raises(HopcastError, match="cannot reach Redis"):
            await mirror.start()

    run(main)


def test_prefixes_with_braces_are_refused_and_channel_keys_share_a_hash_tag() -> None:
    with pytest.raises(ConfigError):
        Keys("a{b}:")
    keys = Keys()
    assert keys.meta("event:x") == "hopcast:live:ch:{event:x}"
    assert keys.history("event:x") == "hopcast:live:ch:{event:x}:h"


# -- the push registry ---------------------------------------------------------------------------


#: A push-registry TTL no step of a test outlasts, however loaded the machine (expiry itself is
#: checked with :data:`SHORT_TTL_US`, by waiting for it).
LONG_TTL_US = 600_000_000
SHORT_TTL_US = 300_000


def test_the_push_registry_registers_refreshes_expires_and_compares_before_deleting(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        registry = RedisPushRegistry(redis_url, LONG_TTL_US, prefix=redis_prefix)
        client = connect(redis_url)
        try:
            now = now_us()
            assert registry.ttl_us == LONG_TTL_US
            assert await registry.lookup("tv-1", now) is None
            await registry.register("tv-1", "node-a", now)
            assert await registry.lookup("tv-1", now) == "node-a"
            await registry.register("tv-1", "node-b", now)  # a later registration wins
            await registry.unregister("tv-1", "node-a")  # not the owner: no effect
            assert await registry.lookup("tv-1", now) == "node-b"
            await registry.unregister("tv-1", "node-b")
            assert await registry.lookup("tv-1", now) is None
            # refresh re-arms every entry's TTL (what keeps a connected device's entry alive)
            devices = [f"tv-{i}" for i in range(2500)]  # several pipelined chunks
            await registry.refresh(devices, "node-a", now)
            last = registry.keys.device("tv-2499")
            await client.pexpire(last, 1_000)  # as if all but a second of its TTL had passed
            await registry.refresh(devices, "node-a", now)
            assert await client.pttl(last) > 1_000
            assert await registry.lookup("tv-2499", now) == "node-a"
            assert await registry.expire(now) == 0  # Redis expires the keys itself
            # a connect storm: changes queue and go out pipelined on one connection, in order
            await asyncio.gather(*(registry.register(d, "node-c", now) for d in devices))
            await asyncio.gather(*(registry.unregister(d, "node-c") for d in devices[:1000]))
            assert await registry.lookup("tv-999", now) is None
            assert await registry.lookup("tv-1000", now) == "node-c"
            assert registry.failures == 0
        finally:
            await registry.close()
            await client.aclose()
        # without a refresh an entry lapses once its TTL has passed
        short = RedisPushRegistry(redis_url, SHORT_TTL_US, prefix=redis_prefix + "short:")
        try:
            await short.register("lapses", "node-a", now_us())
            assert await short.lookup("lapses", now_us()) == "node-a"
            deadline = time.monotonic() + WAIT_S
            while await short.lookup("lapses", now_us()) is not None:
                assert time.monotonic() < deadline, f"the entry outlived its TTL by {WAIT_S} s"
                await asyncio.sleep(0.05)
        finally:
            await short.close()

    run(main)


def test_a_gateway_records_its_devices_in_the_redis_registry(
    redis_url: str, redis_prefix: str
) -> None:
    async def main() -> None:
        async with router(redis_url, redis_prefix), fleet(redis_url, redis_prefix) as f:
            mirror = RedisMirror(redis_url, prefix=redis_prefix)
            await mirror.start()
            f.stack.push_async_callback(mirror.close)
            registry = RedisPushRegistry(redis_url, 60_000_000, prefix=redis_prefix)
            f.stack.push_async_callback(registry.close)
            gateway = Gateway(mirror, SECRET, node_id="node-r", registry=registry)
            server = await gateway.serve("127.0.0.1", 0)
            f.stack.push_async_callback(server.close)
            f.gateways.append(gateway)
            f.ports.append(server.port)
            f.device(0)
            await f.subscribed()
            assert await registry.lookup("tv-0", now_us()) == "node-r"
            await f.close()
            await until(lambda: gateway.connection_count == 0)
            deadline = time.monotonic() + WAIT_S  # the gateway unregisters as the handler ends
            while await registry.lookup("tv-0", now_us()) is not None:
                assert time.monotonic() < deadline, f"tv-0 still registered after {WAIT_S} s"
                await asyncio.sleep(0.01)

    run(main)


def test_the_push_registry_checks_its_settings(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisPushRegistry(redis_url, 999)
    with pytest.raises(ConfigError):
        RedisPushRegistry(redis_url, 1_000_000, chunk=0)
    with pytest.raises(ConfigError):
        RedisTransport(redis_url, batch=0)

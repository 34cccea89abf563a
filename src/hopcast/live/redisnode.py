"""The gateway node's side of the Redis fan-out: :class:`RedisMirror` (a
:class:`~hopcast.live.fanout.FrameSource` rebuilt from Redis) and :class:`RedisPushRegistry`.

The router's side, the key layout and the Redis client are in :mod:`hopcast.live.redisfan`
(the one module that imports ``redis``). A mirror ``SUBSCRIBE``\\ s first, then loads every
channel's state and history and rebuilds local :class:`~hopcast.live.fanout.ChannelLog` copies
(:meth:`~hopcast.live.fanout.ChannelLog.restore`), then applies live frames
(:meth:`~hopcast.live.fanout.ChannelLog.ingest`): the next one is forwarded; a duplicate is
dropped; a gap, a new epoch, a ``state`` at another position or an unknown channel reloads
that channel and forwards what its subscribers missed (a replay, or one ``state``). On
connection loss it reconnects with backoff and reloads everything; devices keep their WebSocket
connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from hopcast.errors import ConfigError, HopcastError
from hopcast.live import messages as m
from hopcast.live.fanout import (
    DEFAULT_HISTORY,
    ChannelLog,
    FrameCallback,
    Ingest,
    Resume,
    Subscribers,
    Unsubscribe,
    empty_resume,
)
from hopcast.live.messages import Position, ProtocolError
from hopcast.live.redisfan import (
    DEFAULT_PREFIX,
    Client,
    Keys,
    RedisError,
    as_text,
    backoff,
    connect,
)

logger = logging.getLogger(__name__)

#: Channels loaded per pipelined round trip when a mirror (re)loads.
LOAD_BATCH = 200

#: How long a mirror's subscriber connection may stay idle before redis-py pings it, so a
#: silently dead connection is noticed within a few seconds.
HEALTH_CHECK_S = 5

# Unregister: delete the device's key only if it still names this node.
_COMPARE_AND_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisMirror:
    """Node side: local copies of every channel's log, fed from Redis; a gateway's source.

    ``await mirror.start()`` (subscribes, loads everything; raises if Redis cannot be reached),
    then give it to a :class:`~hopcast.live.gateway.Gateway`; ``await mirror.close()`` at the
    end. Callbacks run on the loop's thread; one task reads frames in order.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        metrics_registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self._rng = rng or random.Random()
        self._client: Client | None = None
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._logs: dict[str, ChannelLog] = {}
        self._subscribers = Subscribers()
        self._epoch = 0  # the router's, once known
        self._history = DEFAULT_HISTORY
        self._answered_epochs: set[int] = set()  # epochs told about unpublished channels
        self.connected = asyncio.Event()
        self.metrics_registry = metrics_registry or CollectorRegistry()
        name = "hopcast_redis_mirror_"
        reg = self.metrics_registry
        self._frames = Counter(
            name + "frames", "Frames received by result", ["result"], registry=reg
        )
        self._reloads = Counter(
            name + "reloads", "Channel reloads by cause", ["reason"], registry=reg
        )
        self._reconnects = Counter(name + "reconnects", "Reconnections to Redis", registry=reg)
        self._channels = Gauge(name + "channels", "Channels mirrored", registry=reg)
        for result in (*Ingest, "new", "state", "malformed"):
            self._frames.labels(str(result))
        for reason in ("gap", "state", "new", "reconnect"):
            self._reloads.labels(reason)

    # -- FrameSource -------------------------------------------------------------------------

    def subscribe(self, callback: FrameCallback) -> Unsubscribe:
        return self._subscribers.add(callback)

    def resume(self, channel: str, position: Position | None) -> Resume:
        log = self._logs.get(channel)
        if log is not None:
            return log.resume(position)
        self._answered_epochs.add(self._epoch)
        return empty_resume(channel, self._epoch, position)

    # -- inspection --------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The router's epoch (0 until Redis holds one)."""
        return self._epoch

    @property
    def logs(self) -> Mapping[str, ChannelLog]:
        """Channel → its local copy, for every channel mirrored."""
        return self._logs

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, load every channel, and start following.

        Raises:
            HopcastError: Redis cannot be reached.
        """
        self._client = connect(self.url, health_check_interval=HEALTH_CHECK_S)
        try:
            await self._connect()
        except (RedisError, OSError) as exc:
            await self.close()
            raise HopcastError(f"cannot reach Redis at {self.url}: {exc}") from exc
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_pubsub()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    async def _connect(self) -> None:
        """1. SUBSCRIBE (frames published from now on are buffered); 2. load every channel."""
        assert self._client is not None
        await self._drop_pubsub()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.keys.frames)
        await self._load_all()
        self.connected.set()

    async def _follow(self) -> None:
        attempt = 0
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                    self._reconnects.inc()
                    logger.warning("redis mirror: reconnected to %s and reloaded", self.url)
                attempt = 0
                while True:
                    message = await self._pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        await self._on_frame(message["data"])
            except Exception as exc:  # the feed must never stop silently: resync from Redis
                self.connected.clear()
                await self._drop_pubsub()
                attempt += 1
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("redis mirror: unexpected failure; reconnecting to resync")
                elif attempt & (attempt - 1) == 0:
                    logger.warning("redis mirror: lost %s (%s); reconnecting", self.url, exc)
                await asyncio.sleep(backoff(attempt, self._rng))

    # -- applying frames ---------------------------------------------------------------------

    async def _on_frame(self, frame: bytes) -> None:
        try:
            msg = m.decode(frame)
        except ProtocolError as exc:
            self._frames.labels("malformed").inc()
            logger.error("redis mirror: dropped a malformed frame (%s)", exc.reason)
            return
        if not isinstance(msg, m.Trigger | m.State):
            self._frames.labels("malformed").inc()
            return
        log = self._logs.get(msg.channel)
        if isinstance(msg, m.State):
            self._frames.labels("state").inc()
            if log is None or log.position != (msg.epoch, msg.seq):
                await self._reload((msg.channel,), "state" if log else "new")
            return
        if log is None:
            self._frames.labels("new").inc()
            await self._reload((msg.channel,), "new")
            return
        result = log.ingest(frame, msg)
        self._frames.labels(result.value).inc()
        if result is Ingest.APPLIED:
            self._subscribers.deliver(msg.channel, frame)
        elif result is Ingest.GAP:
            await self._reload((msg.channel,), "gap")

    async def _load_all(self) -> None:
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(self.keys.router, ["epoch", "history"])
        pipe.smembers(self.keys.channels)
        (epoch, history), members = await pipe.execute()
        self._set_router(epoch, history)
        channels = sorted({as_text(c) or "" for c in members} | set(self._logs))
        for i in range(0, len(channels), LOAD_BATCH):
            await self._reload(channels[i : i + LOAD_BATCH], "reconnect", with_router=False)

    def _set_router(self, epoch: bytes | None, history: bytes | None) -> None:
        if epoch is not None:
            self._epoch = int(epoch)
        if history is not None:
            self._history = int(history)

    async def _reload(
        self, channels: Sequence[str], reason: str, *, with_router: bool = True
    ) -> None:
        """Rebuild ``channels`` from Redis and send their subscribers what they missed."""
        assert self._client is not None
        pipe = self._client.pipeline(transaction=False)
        if with_router:
            pipe.hmget(self.keys.router, ["epoch", "history"])
        for channel in channels:
            pipe.hget(self.keys.meta(channel), "state")
            pipe.lrange(self.keys.history(channel), 0, -1)
        results = await pipe.execute()
        if with_router:
            self._set_router(*results.pop(0))
        for i, channel in enumerate(channels):
            self._reloads.labels(reason).inc()
            state, history = results[2 * i], results[2 * i + 1]
            if state is None:
                continue  # nothing stored (Redis lost it): keep the local copy, if any
            try:
                fresh = ChannelLog.restore(state, history, capacity=self._history)
            except HopcastError as exc:
                logger.error("redis mirror: channel %r unreadable in Redis: %s", channel, exc)
                continue
            self._adopt(fresh)
        self._channels.set(len(self._logs))

    def _adopt(self, fresh: ChannelLog) -> None:
        channel = fresh.channel
        old = self._logs.get(channel)
        if old is not None:
            if old.epoch == fresh.epoch and old.seq >= fresh.seq:
                return  # Redis is not ahead of this copy
            frames = fresh.resume(old.position).frames
        elif self._answered_epochs <= {fresh.epoch}:
            # Devices heard "[epoch, 0]" in this epoch (or nothing): replay from the start.
            frames = fresh.resume(Position(fresh.epoch, 0)).frames
        else:
            frames = (fresh.state_frame(),)  # some heard another epoch: a snapshot moves them
        self._logs[channel] = fresh
        for frame in frames:
            self._subscribers.deliver(channel, frame)


class RedisPushRegistry:
    """:class:`~hopcast.live.fanout.PushRegistry` in Redis: one key per device with a TTL.

    Redis expires the keys itself (``now`` is not used for expiry; :meth:`expire` returns 0).
    :meth:`register` and :meth:`unregister` only queue the change and return: one writer task
    sends the queue in order, pipelined, so a reconnect storm of thousands of devices costs a
    few round trips on one connection instead of a connection per device. A batch Redis refuses
    is logged, counted (:attr:`failures`) and dropped: presence is soft state, re-asserted by
    every heartbeat's :meth:`refresh` and lapsing by TTL. :meth:`lookup` first waits for this
    registry's queued changes (read your own writes). A refresh re-asserts the node for each
    device (``SET … PX``), so it also wins over a newer registration elsewhere that raced with
    this node's unregister; that node's next heartbeat puts it back.
    """

    def __init__(
        self,
        url: str,
        ttl_us: int,
        *,
        prefix: str = DEFAULT_PREFIX,
        chunk: int = 1000,
    ) -> None:
        """
        Raises:
            ConfigError: ``ttl_us`` below one millisecond, ``chunk`` < 1, or a brace in the prefix.
        """
        if ttl_us < 1000:
            raise ConfigError(f"push registry ttl must be >= 1 ms, got {ttl_us} µs")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.keys = Keys(prefix)
        self._ttl_us = ttl_us
        self._ttl_ms = ttl_us // 1000
        self._chunk = chunk
        self._client = connect(url)
        self._cad = self._client.register_script(_COMPARE_AND_DELETE)
        self._changes: deque[tuple[bool, str, str]] = deque()  # (register?, device, node)
        self._writer: asyncio.Task[None] | None = None
        self.failures = 0  # batches not written

    @property
    def ttl_us(self) -> int:
        return self._ttl_us

    async def register(self, device: str, node: str, now: int) -> None:
        self._change(True, device, node)

    async def unregister(self, device: str, node: str) -> None:
        self._change(False, device, node)

    async def refresh(self, devices: Iterable[str], node: str, now: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        queued = 0
        for device in devices:
            pipe.set(self.keys.device(device), node, px=self._ttl_ms)
            queued += 1
            if queued == self._chunk:
                await pipe.execute()
                queued = 0
        if queued:
            await pipe.execute()

    async def lookup(self, device: str, now: int) -> str | None:
        await self.flush()
        return as_text(await self._client.get(self.keys.device(device)))

    async def expire(self, now: int) -> int:
        return 0

    async def flush(self) -> None:
        """Wait until every change queued so far has been sent (or dropped on failure)."""
        if self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def close(self) -> None:
        await self.flush()
        await self._client.aclose()

    def _change(self, register: bool, device: str, node: str) -> None:
        self._changes.append((register, device, node))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._changes:
            batch = [self._changes.popleft() for _ in range(min(self._chunk, len(self._changes)))]
            pipe = self._client.pipeline(transaction=False)
            for register, device, node in batch:
                key = self.keys.device(device)
                if register:
                    pipe.set(key, node, px=self._ttl_ms)
                else:
                    await self._cad(keys=(key,), args=(node,), client=pipe)
            try:
                await pipe.execute()
            except (RedisError, OSError) as exc:
                self.failures += 1
                if self.failures & (self.failures - 1) == 0:  # 1, 2, 4, ... failures
                    logger.warning(
                        "push registry: %d change(s) not written to %s (%s); heartbeats "
                        "re-assert presence and entries lapse by TTL",
                        len(batch),
                        self.keys.prefix,
                        exc,
                    )

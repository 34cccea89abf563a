"""Fan-out across processes and hosts through Redis: router → Redis → gateway nodes.

The only module that imports ``redis`` (the ``redis`` extra: ``pip install 'hopcast[redis]'``);
it holds the key layout, the client settings and the router's side. The node's side,
:class:`~hopcast.live.redisnode.RedisMirror` and
:class:`~hopcast.live.redisnode.RedisPushRegistry`, is in :mod:`hopcast.live.redisnode`.

:class:`RedisTransport` is a :class:`~hopcast.live.fanout.LoggedTransport`. ``publish`` never
blocks: it hands the frame to the process's own subscribers at once (so an in-process gateway
keeps working) and queues it; one background task sends the queue, in order, in pipelined
batches. For each frame one Lua script, atomically, keeps the channel's bounded **history**
and current ``state`` frame in Redis and ``PUBLISH``\\ es the frame. When Redis is unreachable
the batch is retried with capped, jittered exponential backoff, in order, counted and logged.
The queue is bounded (:data:`MAX_PENDING_FRAMES`): beyond it the oldest frame is dropped,
counted, and Redis re-seeded from the router's logs, so no stage is lost from Redis. The
script is idempotent (a frame already stored is not stored again, only published again), so
a retry after a half-sent batch is harmless. When Redis has lost its data
(restart without persistence, flush) the transport **re-seeds** it from the router's logs and
publishes the ``state`` of every channel without queued frames, so nodes converge.

Keys (``prefix`` default ``hopcast:live:``; a channel's two keys share a Redis Cluster slot
through the ``{channel}`` hash tag)::

    <prefix>router              hash   epoch, history, token (the router's; token marks a seed)
    <prefix>channels            set    every channel name published
    <prefix>ch:{<channel>}      hash   epoch, seq, state (the channel's current state frame)
    <prefix>ch:{<channel>}:h    list   the newest ``history`` trigger frames, oldest first
    <prefix>dev:<device>        string the node holding the device (PX = the registry's TTL)
    <prefix>frames              pub/sub channel carrying every frame as sent to devices

Prometheus series: ``hopcast_redis_transport_{frames_sent,send_failures,seeds}_total``,
``hopcast_redis_transport_pending_frames``, ``hopcast_redis_transport_dropped_frames_total``
(over :data:`MAX_PENDING_FRAMES`; each drop makes the transport re-seed Redis);
``hopcast_redis_mirror_frames_total{result}`` (applied, duplicate, gap, new, state, malformed),
``hopcast_redis_mirror_reloads_total{reason}``
(gap, state, new, reconnect), ``hopcast_redis_mirror_reconnects_total``,
``hopcast_redis_mirror_channels``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge

from hopcast.errors import ConfigError
from hopcast.live import messages as m
from hopcast.live.fanout import (
    DEFAULT_HISTORY,
    FrameCallback,
    Router,
    Subscribers,
    Unsubscribe,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError as RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError(
        f"the Redis fan-out needs the redis extra: pip install 'hopcast[redis]' ({exc})"
    ) from exc

logger = logging.getLogger(__name__)

#: Key prefix of everything the live fan-out keeps in Redis.
DEFAULT_PREFIX = "hopcast:live:"
#: Frames per pipelined round trip: large enough to amortise the round trip over a burst of
#: triggers, small enough that one round trip stays in the low milliseconds.
BATCH = 256
#: Channels re-seeded per pipelined round trip.
SEED_BATCH = 64
#: Frames queued for Redis at most. Triggers are rare (an event makes about six stage changes,
#: each a frame on two channels), so 16,384 frames hold thousands of triggers: far more than
#: an outage accumulates. Beyond it the oldest frame is dropped and counted, and Redis is
#: re-seeded from the router's logs before anything else is sent, so what the dropped frame
#: told reaches Redis anyway (in the channel's state and history) and nodes converge. ~400
#: bytes per queued frame make a full queue ~6 MB.
MAX_PENDING_FRAMES = 16_384
#: Reconnect/retry backoff: the first retry after ~50 ms, doubling up to 2 s (full jitter).
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0

# Store one frame: KEYS meta, history; ARGV epoch, seq, frame, state, capacity, pubsub, kind
# ("t" trigger, "s" state after a reset). Stores only what is newer than the channel's position
# (a retry stores nothing twice); keeps the history one contiguous run of the channel's epoch
# ending at the stored seq; always publishes (a subscriber drops what it already has).
_STORE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = tonumber(ARGV[2])
local stored = -1
if epoch == ARGV[1] then stored = tonumber(redis.call('HGET', KEYS[1], 'seq')) end
if seq > stored then
  if epoch ~= ARGV[1] or ARGV[7] == 's' or seq ~= stored + 1 then
    redis.call('DEL', KEYS[2])
  end
  if ARGV[7] == 't' then
    redis.call('RPUSH', KEYS[2], ARGV[3])
    redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
  end
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[2], 'state', ARGV[4])
end
redis.call('PUBLISH', ARGV[6], ARGV[3])
return seq > stored and 1 or 0
"""

# Seed one channel from the router's log: KEYS meta, history; ARGV epoch, seq, state, pubsub
# channel ("" to publish nothing), then the history frames. Replaces what Redis holds and
# publishes the state frame.
_SEED = """
redis.call('DEL', KEYS[2])
if #ARGV > 4 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 5)) end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[2], 'state', ARGV[3])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[3]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis names under one prefix (see the module docstring)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ConfigError("the Redis key prefix must not contain '{' or '}' (hash tags)")

    @property
    def router(self) -> str:
        return self.prefix + "router"

    @property
    def channels(self) -> str:
        return self.prefix + "channels"

    @property
    def frames(self) -> str:
        return self.prefix + "frames"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}ch:{{{channel}}}"

    def history(self, channel: str) -> str:
        return f"{self.prefix}ch:{{{channel}}}:h"

    def device(self, device: str) -> str:
        return f"{self.prefix}dev:{device}"


#: The asyncio Redis client (for annotations outside this module).
Client = aioredis.Redis


def connect(url: str, **options: Any) -> Client:
    """A client for ``url`` (``redis://host:port/db``) whose failures surface at once: the
    callers here retry with their own backoff and must see a reconnect to reload."""
    client: Client = aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return client


def backoff(attempt: int, rng: random.Random) -> float:
    """Retry delay, full jitter over an exponential ceiling: [0, 50 ms], [0, 100 ms], … [0, 2 s]."""
    return rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (attempt - 1)))


def as_text(value: bytes | str | None) -> str | None:
    """A Redis reply as text (``None`` stays ``None``)."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class _Pending:
    channel: str
    frame: bytes
    state: bytes | None  # None: publish only (a frame sent without a router)
    epoch: int
    seq: int
    kind: str  # "t" trigger, "s" state


class RedisTransport:
    """Router side: frames to Redis (history, state, ``PUBLISH``) in order, never blocking.

    Use it through a :class:`~hopcast.live.fanout.Router` (``Router(RedisTransport(url))``),
    which attaches itself and calls :meth:`publish_logged`. Call it from one thread, the event
    loop's: the sending task starts on the first publish made inside a running loop (or with
    :meth:`start`); :meth:`flush` waits until Redis has everything; :meth:`close` flushes (within
    a timeout) and stops. One router per key prefix: a second one would overwrite the first's
    channels (each re-seeds Redis when it finds another's marker). Subscribers in this process
    (:meth:`subscribe`, e.g. the gateway of ``hopcast serve --gateway-port``) receive every frame
    synchronously, as with the in-process transport.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        batch: int = BATCH,
        max_pending: int = MAX_PENDING_FRAMES,
        metrics_registry: CollectorRegistry | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """
        Args:
            url: the Redis URL, ``redis://host:port/db``.
            prefix: key prefix (no braces).
            batch: frames per pipelined round trip.
            max_pending: frames queued at most (:data:`MAX_PENDING_FRAMES`).
            metrics_registry: where the Prometheus series go (default: a registry of their own,
                :attr:`metrics_registry`).
            rng: draws the retry delays.

        Raises:
            ConfigError: ``batch`` or ``max_pending`` < 1, or the prefix holds a brace.
        """
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        self._max_pending = max_pending
        self.url = url
        self.keys = Keys(prefix)
        self._batch = batch
        self._rng = rng or random.Random()
        self._router: Router | None = None
        self._subscribers = Subscribers()
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._client: aioredis.Redis | None = None
        self._token = os.urandom(8).hex()  # marks Redis as seeded by this transport
        self._need_seed = True
        self._indexed: set[str] = set()
        self._closing = False
        self.failures = 0  # consecutive failed round trips (0 when healthy)
        self.dropped = 0  # frames dropped from a full queue
        self.metrics_registry = metrics_registry or CollectorRegistry()
        name = "hopcast_redis_transport_"
        reg = self.metrics_registry
        self._sent = Counter(name + "frames_sent", "Frames stored and published", registry=reg)
        self._failed = Counter(name + "send_failures", "Failed Redis round trips", registry=reg)
        self._seeds = Counter(name + "seeds", "Redis re-seeded from the router", registry=reg)
        self._pending = Gauge(name + "pending_frames", "Frames waiting for Redis", registry=reg)
        self._dropped = Counter(
            name + "dropped_frames",
            "Frames dropped from a full queue (Redis is re-seeded from the router after)",
            registry=reg,
        )

    # -- Transport / LoggedTransport ---------------------------------------------------------

    def attach(self, router: Router) -> None:
        if self._router is not None and self._router is not router:
            raise ConfigError("a RedisTransport serves one router")
        self._router = router

    def publish(self, channel: str, frame: bytes) -> None:
        """Deliver locally and ``PUBLISH`` without storing (routers use :meth:`publish_logged`)."""
        self._enqueue(channel, frame, None)

    def publish_logged(self, channel: str, frame: bytes, state: bytes) -> None:
        self._enqueue(channel, frame, state)

    def subscribe(self, callback: FrameCallback) -> Unsubscribe:
        """Receive every frame published through this transport in this process."""
        return self._subscribers.add(callback)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Frames not yet in Redis."""
        return len(self._queue)

    def start(self) -> None:
        """Start the sending task on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def flush(self) -> None:
        """Wait until every frame published so far is in Redis (and seeded, on start)."""
        self.start()
        while self._queue or self._need_seed:
            self._idle.clear()
            await self._idle.wait()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush for at most ``timeout_s`` (what is left is logged), then stop."""
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await self.flush()
            except TimeoutError:
                logger.error(
                    "redis fan-out closing with %d frame(s) not sent to %s", self.pending, self.url
                )
            self._closing = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- sending -----------------------------------------------------------------------------

    def _enqueue(self, channel: str, frame: bytes, state: bytes | None) -> None:
        msg = m.decode(frame)  # the router's own encoding: valid by construction
        if not isinstance(msg, m.Trigger | m.State):
            raise ConfigError(f"only trigger and state frames are fanned out, not {msg!r}")
        self._subscribers.deliver(channel, frame)
        kind = "t" if isinstance(msg, m.Trigger) else "s"
        if len(self._queue) >= self._max_pending:
            self._drop_oldest()
        self._queue.append(_Pending(channel, frame, state, msg.epoch, msg.seq, kind))
        self._pending.set(len(self._queue))
        self._wake.set()
        if self._task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: start() later
                self.start()

    def _drop_oldest(self) -> None:
        """Make room: drop the oldest frame and re-seed Redis before sending anything else."""
        self._queue.popleft()
        self._dropped.inc()
        self._need_seed = True
        self.dropped += 1
        if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8, ... drops
            logger.error(
                "redis fan-out: %d frame(s) queued for %s, dropped the oldest (%d so far); "
                "Redis will be re-seeded from the router",
                len(self._queue) + 1,
                self.url,
                self.dropped,
            )

    async def _run(self) -> None:
        if self._client is None:
            self._client = connect(self.url)
        client = self._client
        store = client.register_script(_STORE)
        seed = client.register_script(_SEED)
        while not self._closing:
            if not self._queue and not self._need_seed:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self._batch, len(self._queue)))]
            try:
                if self._need_seed:
                    await self._seed(client, seed)
                marker = await self._send(client, store, batch)
            except Exception as exc:  # never drop a frame: keep it queued and retry
                self._need_seed = True
                self.failures += 1
                self._failed.inc()
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("redis fan-out: unexpected failure sending to %s", self.url)
                elif self.failures & (self.failures - 1) == 0:  # 1, 2, 4, 8, ... failures
                    logger.warning(
                        "redis fan-out: %s unreachable (%s); %d frame(s) waiting, retry %d",
                        self.url,
                        exc,
                        len(self._queue),
                        self.failures,
                    )
                await asyncio.sleep(backoff(self.failures, self._rng))
                continue
            if self.failures:
                logger.warning(
                    "redis fan-out: %s reachable again after %d failed attempt(s)",
                    self.url,
                    self.failures,
                )
                self.failures = 0
            for item in batch:  # a full queue may have dropped some of them meanwhile
                if self._queue and self._queue[0] is item:
                    self._queue.popleft()
            self._pending.set(len(self._queue))
            self._sent.inc(len(batch))
            if batch and marker != self._token.encode():
                # Redis lost the router's data (restart without persistence, flush): put it back.
                logger.warning("redis fan-out: %s lost the router's data; re-seeding", self.url)
                self._need_seed = True

    async def _send(self, client: aioredis.Redis, store: Any, batch: list[_Pending]) -> object:
        """One pipelined round trip for ``batch``; returns the router's seed marker."""
        keys = self.keys
        pipe = client.pipeline(transaction=False)
        pipe.hget(keys.router, "token")
        for item in batch:
            if item.state is None:
                pipe.publish(keys.frames, item.frame)
                continue
            if item.channel not in self._indexed:
                pipe.sadd(keys.channels, item.channel)
            capacity = self._router.history if self._router is not None else DEFAULT_HISTORY
            args = (item.epoch, item.seq, item.frame, item.state, capacity, keys.frames, item.kind)
            await store(
                keys=(keys.meta(item.channel), keys.history(item.channel)), args=args, client=pipe
            )
        results = await pipe.execute()
        self._indexed.update(item.channel for item in batch)
        return results[0]

    async def _seed(self, client: aioredis.Redis, seed: Any) -> None:
        """Write the router's epoch and every channel's log, as they are now, to Redis."""
        router = self._router
        if router is None:
            self._need_seed = False
            return
        keys = self.keys
        logs = [
            (log.channel, log.epoch, log.seq, log.state_frame(), log.frames)
            for log in router.logs.values()
        ]
        self._indexed.clear()
        pipe = client.pipeline(transaction=False)
        if logs:
            pipe.sadd(keys.channels, *(channel for channel, *_ in logs))
        # A channel with frames still queued is told by them; the others get their state so a
        # node that missed a frame (sent just before Redis went away) notices.
        queued = {item.channel for item in self._queue}
        for i, (channel, epoch, seq, state, frames) in enumerate(logs, 1):
            announce = "" if channel in queued else keys.frames
            args = (epoch, seq, state, announce, *frames)
            await seed(keys=(keys.meta(channel), keys.history(channel)), args=args, client=pipe)
            if i % SEED_BATCH == 0:  # bounded round trips: up to ~50 KB of history per channel
                await pipe.execute()
        # The marker last: a seed cut short is redone.
        mapping = {"epoch": router.epoch, "history": router.history, "token": self._token}
        pipe.hset(keys.router, mapping=cast(Any, mapping))  # the stubs' value type varies
        await pipe.execute()
        self._indexed.update(channel for channel, *_ in logs)
        self._need_seed = False
        self._seeds.inc()
        logger.info("redis fan-out: seeded %s with %d channel(s)", self.url, len(logs))

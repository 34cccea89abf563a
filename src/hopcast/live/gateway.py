"""The WebSocket gateway: authenticate devices, catch them up, fan frames out, evict the stuck.

A thin asyncio adapter over the ``websockets`` library (the only module that imports it); the
decisions live in pure code — :mod:`~hopcast.live.messages` (the protocol, followed exactly),
:mod:`~hopcast.live.tokens`, :class:`~hopcast.live.fanout.ChannelLog` (sequence, history,
resume) and :class:`FreezePolicy` here. Run it under uvloop (``uvloop.run(main())``) for speed;
it works on any asyncio loop.

Per connection (:meth:`Gateway._handle`):

0. over the node's ``max_connections`` → ``bye overloaded`` with a jittered ``retry_after_ms``;
1. the first frame must be a valid ``hello`` within ``hello_timeout_s`` (else ``error`` and close;
   an oversize frame is refused by websockets itself, close code 1009, before it is buffered);
2. the token must verify (``error unauthorized`` and close) → ``welcome``;
3. ``subscribe``: a channel outside the token's scopes gets ``error forbidden`` and the connection
   stays; an allowed one gets its catch-up frames (:meth:`FrameSource.resume
   <hopcast.live.fanout.FrameSource.resume>` from ``hello.last``) and then its live frames — the
   two happen with no ``await`` between, so nothing can slip in between or out of order.

Token lifetime (:meth:`Gateway._schedule_lifetime`): a token is good until ``exp`` plus
``token_leeway_s`` for the connection's whole life. At ``exp`` minus half its lifetime (at most
:data:`REFRESH_LEAD_S` ahead) the gateway sends ``refresh``; a ``token`` answer for the same
subject replaces the claims in place (subscriptions kept, channels the new scopes forbid
dropped with ``error forbidden``); none by ``exp`` + leeway → ``bye token_expired``, close code
4001. Revocation: the gateway polls a :class:`~hopcast.live.revocation.RevocationSource` every
``revocation_poll_s``; a ``hello`` whose token is revoked is refused (``error unauthorized``),
an open connection whose token becomes revoked gets ``bye revoked`` and close code 4003.
Per-subject cap: a ``hello`` whose subject already holds ``max_per_subject`` connections gets
``bye too_many_connections`` (close 1013); the connections already open are kept (a leaked
token cannot push the real device off). A binary frame gets ``error malformed`` and close code
1003 (the protocol is text only). Frame budget: a connection, welcomed or not, may send
:data:`MESSAGE_RATE` frames a second with bursts of :data:`MESSAGE_BURST` — WebSocket pings
included, which websockets answers before any handler sees them (a token bucket in two
attributes of the connection, charged in ``process_event``); beyond, ``bye
too_many_messages`` and close code 1008, and a connection that keeps sending a further burst
is aborted, so one client cannot spend the event loop (shared with the API under ``hopcast
serve``) on floods.

Fan-out: for each ``(channel, frame)`` the source delivers, the **same bytes** are written to
every open subscriber with ``websockets.broadcast`` — no per-device encoding, closed
connections skipped — through an :class:`~hopcast.live.outbox.Outbox`, which writes at most
``CHUNK`` connections per slice of the event loop and yields in between, so a fleet-wide
trigger never holds the loop for long (the subscribers are fixed when the frame is queued).
Nothing waits for a slow device; instead the transport's write
buffer has a high-water mark (``write_limit``): when a connection crosses it, asyncio calls
``pause_writing``, and the gateway evicts it right after the current broadcast (``bye slow``,
then close; the ``bye`` is best effort since the device is not reading). Heartbeats: one ``ping``
frame for all devices every ``heartbeat_s``; a device silent for :data:`LIVENESS_INTERVALS` is
evicted (``bye timeout``). Shutdown (:meth:`GatewayServer.close`): ``bye restart`` to every device
with ``retry_after_ms`` spread over ``retry_spread_ms``, then close code 1012.

Garbage collection: a full CPython collection walks every tracked object, so its pause grows
with the number of connections. The gateway adds one object per connection beyond what
websockets allocates, the asyncio timer of its token's lifetime (the rest of its per-device
state lives as attributes of websockets' connection object; subscriptions are one set per
channel; messages are untracked msgspec structs), and after each
burst of :data:`FREEZE_STEP` new devices it calls ``gc.freeze()``, moving everything alive to
the permanent generation that collections skip (``gc.freeze`` is O(1)). Cyclic garbage frozen
with them is reclaimed after ``gc.unfreeze()``, which :class:`FreezePolicy` calls once half the
frozen devices have left. Pauses are timed through ``gc.callbacks`` (:class:`GcMonitor`).

Prometheus series (one registry per gateway): ``hopcast_gateway_connections``,
``hopcast_gateway_devices``, ``hopcast_gateway_frames_broadcast_total``,
``hopcast_gateway_frame_writes_total``, ``hopcast_gateway_evictions_total{reason}``,
``hopcast_gateway_rejections_total{reason}``, ``hopcast_gateway_auth_failures_total{problem}``,
``hopcast_gateway_resumes_total{kind}``, ``hopcast_gateway_gc_pause_seconds{generation}``,
``hopcast_gateway_refresh_requests_total``, ``hopcast_gateway_token_refreshes_total{outcome}``
(``ok``, ``refused``), ``hopcast_gateway_token_expiries_total``,
``hopcast_gateway_revocations_total{when}`` (``hello``, ``open``),
``hopcast_gateway_subject_cap_refusals_total``, ``hopcast_gateway_binary_refusals_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import assert_never

from prometheus_client import CollectorRegistry, Counter, Gauge
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame
from websockets.protocol import Event
from websockets.protocol import State as WsState

from hopcast.durations import now_us
from hopcast.errors import ConfigError, HopcastError, ProtocolError, TokenError
from hopcast.live import messages as m
from hopcast.live.fanout import FrameSource, PushRegistry, ResumeKind
from hopcast.live.gcwatch import FREEZE_STEP as FREEZE_STEP
from hopcast.live.gcwatch import FreezePolicy as FreezePolicy
from hopcast.live.gcwatch import GcMonitor as GcMonitor
from hopcast.live.messages import ByeReason, CloseCodes, ErrorCode, Position
from hopcast.live.outbox import Outbox
from hopcast.live.revocation import POLL_S, RevocationList, RevocationSource
from hopcast.live.tokens import (
    DEFAULT_KEY_ID,
    DEFAULT_LEEWAY_US,
    MIN_SECRET_BYTES,
    Claims,
    TokenProblem,
    verify,
)

logger = logging.getLogger(__name__)

#: Ping interval. NAT gateways and load balancers commonly drop TCP flows idle for 60 s or more;
#: 30 s keeps them open while 100k devices answer only ~3.3k pongs per second.
HEARTBEAT_S = 30.0
#: Silence tolerated, in heartbeats: two lost pings plus half an interval of delay (the SDK
#: uses the same rule for the gateway).
LIVENESS_INTERVALS = 2.5
#: Time for the WebSocket handshake and then for ``hello``: a device sends it at once; 10 s
#: covers a slow mobile link while bounding how long an unauthenticated socket holds a slot.
HELLO_TIMEOUT_S = 10.0
#: Closing handshake: a healthy device answers within a round trip; an evicted one that does
#: not read never does, and is aborted after this.
CLOSE_TIMEOUT_S = 2.0
#: Per-connection write-buffer high-water mark (bytes, beyond what the kernel buffers). A full
#: replay (256 triggers, ~50 KB) or a large ``state`` fits with room; a device this far behind
#: on ~200-byte triggers is not reading, and evicting it bounds its memory.
WRITE_HIGH_WATER = 256 * 1024
#: Kernel send buffer per device socket (``SO_SNDBUF``; Linux doubles it). Autotuning would let
#: a device that stopped reading pin up to 4 MB of kernel memory (~20k triggers) before the
#: write-buffer mark above even sees it; 64 KiB still holds ~300 triggers in flight.
SEND_BUFFER = 64 * 1024
#: Received frames buffered per connection: a device sends a handful at a time (hello,
#: subscribe, pong); 4 bounds a hostile one to 4 x MAX_FRAME_BYTES.
INBOUND_QUEUE = 4
#: Connections per gateway process: the open-files hard limit here is 20,000 per process, less
#: ~1,000 descriptors for the listener, Redis, logs and the accept queue.
DEFAULT_MAX_CONNECTIONS = 19_000
#: Listen backlog: a restarted node takes a reconnect storm; asyncio's default of 100 would drop
#: SYNs (a 1 s retransmit each). 4096 is the kernel's default ``somaxconn`` cap.
LISTEN_BACKLOG = 4096
#: ``bye`` spreads ``retry_after_ms`` uniformly over [0, this]: 100k devices told to leave come
#: back at ~10k/s at most, plus each device's own jittered backoff.
RETRY_SPREAD_MS = 10_000
#: Longest wait after a heartbeat's pings before the heap is frozen again (the pongs of 100k
#: devices on one node arrive within a second or two).
SETTLE_MAX_S = 5.0
#: Time after ``exp`` a connection may go on without a fresh token (and the clock difference
#: tolerated when a token is checked): the same 30 s as the token check at ``hello``, which is
#: also time enough for a device to fetch a token from its login service.
TOKEN_LEEWAY_S = DEFAULT_LEEWAY_US / 1_000_000
#: The ``refresh`` request goes out this long before ``exp`` at most (half the token's lifetime
#: for shorter tokens), so a device has a minute plus the leeway to get a fresh token.
REFRESH_LEAD_S = 60.0
#: Connections one subject (device id) may hold at once: a device holds one, plus a few
#: half-open ones left by network changes until the heartbeat notices them (75 s); 8 covers
#: that and a few browser tabs, and bounds a leaked token to 8 of a node's 19,000 slots.
DEFAULT_MAX_PER_SUBJECT = 8
#: Frames a connection may send per second, sustained (a token bucket per connection, every
#: frame counted, WebSocket pings too). A device sends a handful per connection (``hello``,
#: ``subscribe``, a ``pong`` per heartbeat, a ``token`` per refresh). Unbounded, two clients
#: flooding ``token`` messages (150k a second, one HMAC each) held the API of ``hopcast serve``
#: at 0.5 s a request on the shared loop, and two flooding WebSocket pings (never a hello) at
#: 2 to 6 s; with the budget, 4 to 9 ms.
MESSAGE_RATE = 10.0
#: Frames a connection may send at once before the rate applies: a page subscribing to its
#: channels one ``subscribe`` at a time after a reconnect stays well inside.
MESSAGE_BURST = 50
#: Distinct ``bye`` frames per reason, encoded once: 32 evenly spaced delays spread a fleet as
#: well as per-device randomness without encoding a frame per device.
RETRY_BUCKETS = 32


class _Metrics:
    def __init__(self, registry: CollectorRegistry, monitor: GcMonitor) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"hopcast_gateway_{name}", doc, registry=registry)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"hopcast_gateway_{name}", doc, labels, registry=registry)

        self.connections = gauge("connections", "Open WebSocket connections")
        self.devices = gauge("devices", "Authenticated connections")
        self.frames = counter("frames_broadcast", "Frames fanned out to a channel")
        self.writes = counter("frame_writes", "Connection writes by fan-out")
        self.evictions = counter("evictions", "Devices evicted", "reason")
        self.rejections = counter("rejections", "Connections refused or closed", "reason")
        self.auth_failures = counter("auth_failures", "Tokens refused", "problem")
        self.resumes = counter("resumes", "Channel catch-ups by kind", "kind")
        self.refresh_requests = counter("refresh_requests", "refresh messages sent")
        self.refreshes = counter("token_refreshes", "Fresh tokens received, by outcome", "outcome")
        self.expiries = counter("token_expiries", "Connections closed: token expired")
        self.revocations = counter("revocations", "Revoked tokens refused or closed", "when")
        self.cap_refusals = counter("subject_cap_refusals", "Hellos over the per-subject cap")
        self.binary_refusals = counter("binary_refusals", "Connections closed for a binary frame")
        self.collectors: tuple[Gauge | Counter, ...] = (self.connections, self.devices)
        self.collectors += (self.frames, self.writes, self.evictions, self.rejections)
        self.collectors += (self.auth_failures, self.resumes, self.refresh_requests)
        self.collectors += (self.refreshes, self.expiries, self.revocations)
        self.collectors += (self.cap_refusals, self.binary_refusals)
        # Every known label value from the start, so a zero is a sample rather than absent.
        for reason in ByeReason:
            self.evictions.labels(reason.value)
        extra = ("overloaded", "hello_timeout", "too_many_connections", "binary")
        for refusal in (*(c.value for c in ErrorCode), *extra):
            self.rejections.labels(refusal)
        for problem in TokenProblem:
            self.auth_failures.labels(problem.value)
        for outcome in ("ok", "refused"):
            self.refreshes.labels(outcome)
        for when in ("hello", "open"):
            self.revocations.labels(when)
        for kind in ResumeKind:
            self.resumes.labels(kind.value)
        registry.register(monitor)


class _Connection(ServerConnection):
    """websockets' connection, carrying the gateway's per-device state as attributes so a device
    costs no extra Python object. Class-level defaults hold until a value is set."""

    hc_claims: Claims | None = None
    hc_last: Mapping[str, Position] = MappingProxyType({})
    hc_channels: tuple[str, ...] = ()
    hc_heard: float = 0.0  # loop time of the last frame received
    hc_timer: asyncio.TimerHandle | None = None  # the token's next refresh request or expiry
    hc_budget: float = 0.0  # frames the device may still send now (token bucket)
    hc_budget_at: float = 0.0  # loop time the budget was last charged (0: never)
    hc_evicted: bool = False  # _evict has run: a close is under way


def _connection_class(
    on_backlog: Callable[[_Connection], None],
    on_frame: Callable[[_Connection], None],
    burst: float,
) -> type[_Connection]:
    class GatewayConnection(_Connection):
        hc_budget = burst  # a new connection starts with a full budget

        def pause_writing(self) -> None:
            super().pause_writing()
            on_backlog(self)  # the write buffer crossed the high-water mark

        def process_event(self, event: Event) -> None:
            # Every frame the device sends, control frames included: websockets answers a
            # ping itself, before any handler sees it, so the budget is charged here.
            if isinstance(event, Frame):
                on_frame(self)
            super().process_event(event)

    return GatewayConnection


def _broadcast(conns: Sequence[ServerConnection], frame: bytes) -> None:
    broadcast(conns, frame, text=True)


def _write(conn: ServerConnection, frame: bytes) -> None:
    """Queue ``frame`` as a text frame without waiting; skipped if the connection is closing."""
    broadcast((conn,), frame, text=True)


class Gateway:
    """One gateway node: its devices, their subscriptions, heartbeats and metrics.

    Serve once (:meth:`serve`); run one per process (several processes share a port with
    ``reuse_port=True``). Everything runs on the serving loop's thread, including the source's
    frame callback.
    """

    def __init__(
        self,
        source: FrameSource,
        keys: bytes | Mapping[str, bytes],
        *,
        node_id: str,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        heartbeat_s: float = HEARTBEAT_S,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        write_limit: int = WRITE_HIGH_WATER,
        send_buffer: int | None = SEND_BUFFER,
        retry_spread_ms: int = RETRY_SPREAD_MS,
        freeze_step: int = FREEZE_STEP,
        registry: PushRegistry | None = None,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], int] = now_us,
        rng: random.Random | None = None,
        token_leeway_s: float = TOKEN_LEEWAY_S,
        max_per_subject: int = DEFAULT_MAX_PER_SUBJECT,
        revocations: RevocationSource | None = None,
        revocation_poll_s: float = POLL_S,
        message_rate: float = MESSAGE_RATE,
        message_burst: int = MESSAGE_BURST,
    ) -> None:
        """
        Args:
            source: live frames and catch-up (a :class:`~hopcast.live.fanout.Router`, or a
                node-side mirror of one).
            keys: the token keyring (key id → secret) or one secret.
            node_id: this node's name, sent in ``welcome`` and kept in the push registry.
            max_connections: connections this node accepts at once.
            heartbeat_s: ping interval; silence for 2.5 of them evicts a device.
            hello_timeout_s: WebSocket handshake timeout, then again for ``hello``.
            close_timeout_s: how long a closing handshake may take before the socket is aborted.
            write_limit: write-buffer high-water mark in bytes; crossing it evicts the device.
            send_buffer: ``SO_SNDBUF`` of each device's socket (``None``: the kernel's
                autotuning, up to ``tcp_wmem`` max, 4 MB here).
            retry_spread_ms: ``bye`` delays spread over [0, this].
            freeze_step: devices between ``gc.freeze()`` calls (:class:`FreezePolicy`).
            registry: where to record which node holds each device (none by default).
            metrics_registry: Prometheus registry (default: a new one, :attr:`metrics_registry`).
            clock: µs since the epoch, for token checks, pings and the registry.
            rng: picks ``bye`` delays.
            token_leeway_s: a token is good until ``exp`` plus this, at ``hello`` and for the
                connection's life (``bye token_expired`` after it without a fresh token).
            max_per_subject: connections one subject may hold at once (the newest refused).
            revocations: where revoked tokens and subjects are listed (polled); none: no
                revocation except through :meth:`apply_revocations`.
            revocation_poll_s: how often ``revocations`` is read.
            message_rate, message_burst: messages a connection may send per second, sustained,
                and at once; beyond them ``bye too_many_messages`` and close code 1008.

        Raises:
            ConfigError: a setting is out of range, a secret is shorter than
                ``MIN_SECRET_BYTES``, or the registry's TTL does not exceed the heartbeat.
        """
        keyring = {DEFAULT_KEY_ID: keys} if isinstance(keys, bytes) else dict(keys)
        if not keyring or any(len(s) < MIN_SECRET_BYTES for s in keyring.values()):
            raise ConfigError(f"the gateway needs token secrets of >= {MIN_SECRET_BYTES} bytes")
        if not 1 <= len(node_id) <= m.MAX_NAME_CHARS:
            raise ConfigError(f"node id must have 1 to {m.MAX_NAME_CHARS} characters")
        if max_connections < 1 or heartbeat_s < 0.001 or write_limit < 1 or retry_spread_ms < 0:
            raise ConfigError("max_connections, heartbeat_s, write_limit must be positive")
        if token_leeway_s < 0 or max_per_subject < 1 or revocation_poll_s <= 0:
            raise ConfigError(
                "token_leeway_s must be >= 0, max_per_subject >= 1, revocation_poll_s > 0"
            )
        if message_rate <= 0 or message_burst < 1:
            raise ConfigError("message_rate must be > 0 and message_burst >= 1")
        if registry is not None and registry.ttl_us <= heartbeat_s * 1e6:
            raise ConfigError("the push registry's TTL must exceed the heartbeat interval")
        self._source = source
        self._keyring = keyring
        self._node_id = node_id
        self._max_connections = max_connections
        self._heartbeat_s = heartbeat_s
        self._hello_timeout_s = hello_timeout_s
        self._close_timeout_s = close_timeout_s
        self._write_limit = write_limit
        self._send_buffer = send_buffer
        self._registry = registry
        self._clock = clock
        self._rng = rng or random.Random()
        self._leeway_us = round(token_leeway_s * 1_000_000)
        self._max_per_subject = max_per_subject
        self._per_subject: dict[str, int] = {}
        self._message_rate = message_rate
        self._message_burst = float(message_burst)
        self._revocation_source = revocations
        self._revocation_poll_s = revocation_poll_s
        self._revoked = RevocationList()
        self._revocation_task: asyncio.Task[None] | None = None
        self._revocation_problem: str | None = None  # the last load's error, logged once
        self._welcome = m.encode(m.Welcome(node=node_id, heartbeat_ms=round(heartbeat_s * 1000)))
        last = RETRY_BUCKETS - 1
        self._byes = {
            reason: tuple(
                m.encode(m.Bye(reason=reason, retry_after_ms=retry_spread_ms * i // last))
                for i in range(RETRY_BUCKETS)
            )
            for reason in ByeReason
        }
        self._conns: set[_Connection] = set()  # every connection in a handler
        self._devices: set[_Connection] = set()  # welcomed ones
        self._subs: dict[str, set[_Connection]] = {}  # channel -> subscribers
        self._backlogged: list[_Connection] = []
        # fan-out written in chunks, yielding to the loop between them (hopcast.live.outbox)
        self._outbox: Outbox[_Connection] = Outbox(_broadcast)
        self._tasks: set[asyncio.Task[None]] = set()
        self._freeze = FreezePolicy(freeze_step)
        self.gc = GcMonitor()
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self._m = _Metrics(self.metrics_registry, self.gc)
        self._server: Server | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- inspection --------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def connection_count(self) -> int:
        """Connections open, authenticated or not."""
        return len(self._conns)

    def subscriber_count(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    def subject_count(self, subject: str) -> int:
        """Welcomed connections of ``subject``."""
        return self._per_subject.get(subject, 0)

    def stats(self) -> dict[str, float]:
        """Every series as a flat dict (``evictions_slow``, ``resumes_state``, ...) plus
        :meth:`GcMonitor.stats`: for the benchmark and logs."""
        out: dict[str, float] = {}
        for collector in self._m.collectors:
            for family in collector.collect():
                for sample in family.samples:
                    if not sample.name.endswith("_created"):
                        name = sample.name.removeprefix("hopcast_gateway_").removesuffix("_total")
                        out["_".join((name, *sample.labels.values()))] = sample.value
        out.update(self.gc.stats())
        return out

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> GatewayServer:
        """Listen on ``host:port`` and start taking frames from the source and heartbeating.

        Args:
            host, port: where to listen (port 0: any free port, see :attr:`GatewayServer.port`).
            reuse_port: set ``SO_REUSEPORT`` so several gateway processes share the port (the
                kernel spreads new connections over them).
            ssl_context: serve ``wss://`` with this server context (see
                :func:`hopcast.tls.server_context`); ``None``: plain ``ws://``.

        Raises:
            ConfigError: this gateway is already serving or was closed.
            HopcastError: the revocation source cannot be read (a corrupt file, Redis down).
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise ConfigError("a Gateway serves once; create another one")
        loop = asyncio.get_running_loop()
        if self._revocation_source is not None:
            # Hellos are checked against the list from the start. One that cannot be read
            # refuses the start (HopcastError): starting with an empty list would let every
            # revoked token back in. Later read failures keep the last list instead.
            self.apply_revocations(await self._revocation_source.load(self._clock()))
        self._server = await serve(
            self._handle,
            host,
            port,
            compression=None,  # ~3x the memory per connection, for tiny messages
            max_size=m.MAX_FRAME_BYTES,
            max_queue=INBOUND_QUEUE,
            write_limit=self._write_limit,
            ping_interval=None,  # application pings (the protocol's), one frame for all
            ping_timeout=None,
            open_timeout=self._hello_timeout_s,
            close_timeout=self._close_timeout_s,
            create_connection=_connection_class(
                self._on_backlog, self._charge, self._message_burst
            ),
            reuse_port=reuse_port,
            backlog=LISTEN_BACKLOG,
            ssl=ssl_context,
        )
        self._unsubscribe = self._source.subscribe(self._on_frame)
        self._heartbeat_task = loop.create_task(self._heartbeat())
        if self._revocation_source is not None:
            self._revocation_task = loop.create_task(self._poll_revocations())
        self.gc.install()
        return GatewayServer(self, self._server, "wss" if ssl_context is not None else "ws")

    async def _shutdown(self, server: Server) -> None:
        # 1. Take no more frames, pings or connections.
        if self._closing:
            await server.wait_closed()
            return
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._outbox.close()  # devices resume from their positions when they come back
        for task in (self._heartbeat_task, self._revocation_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # 2. Tell every connection to come back later, each after its own delay, and close it
        #    (code 1012, service restart) within the close timeout.
        for conn in self._conns:
            self._bye(conn, ByeReason.RESTART)
            self._close_soon(conn, CloseCode.SERVICE_RESTART, ByeReason.RESTART)
        # 3. Stop listening and wait for every handler.
        server.close()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await server.wait_closed()
        # 4. Stop timing collections.
        self.gc.uninstall()

    # -- per connection ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, _Connection)
        conn = ws
        # 0. The node's connection limit.
        if self._closing or len(self._conns) >= self._max_connections:
            self._m.rejections.labels("overloaded").inc()
            self._bye(conn, ByeReason.OVERLOADED)
            await self._close(conn, CloseCode.TRY_AGAIN_LATER, ByeReason.OVERLOADED)
            return
        self._conns.add(conn)
        self._m.connections.inc()
        if self._send_buffer is not None:
            sock = conn.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        try:
            claims = await self._handshake(conn)  # 1-2
            if claims is not None:
                await self._serve_device(conn, claims)  # 3
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self._m.rejections.labels(ErrorCode.MALFORMED).inc()
        finally:
            await self._drop(conn)

    async def _handshake(self, conn: _Connection) -> Claims | None:
        """1. a valid ``hello`` first, within the timeout; 2. a valid token. ``None`` if refused."""
        try:
            async with asyncio.timeout(self._hello_timeout_s):
                data = await conn.recv(decode=None)  # str: a text frame; bytes: binary
        except TimeoutError:
            self._m.rejections.labels("hello_timeout").inc()
            await self._close(conn, CloseCode.POLICY_VIOLATION, "no hello")
            return None
        if isinstance(data, bytes):
            await self._refuse_binary(conn)
            return None
        try:
            hello = m.decode_from_client(data)
        except ProtocolError as exc:
            await self._refuse(conn, ErrorCode.MALFORMED, exc.reason)
            return None
        if not isinstance(hello, m.Hello):
            await self._refuse(conn, ErrorCode.UNEXPECTED, "the first message must be 'hello'")
            return None
        if hello.protocol != m.PROTOCOL_VERSION:
            reason = f"this gateway speaks protocol {m.PROTOCOL_VERSION}, not {hello.protocol}"
            await self._refuse(conn, ErrorCode.UNSUPPORTED_PROTOCOL, reason)
            return None
        claims = self._verify(hello.token, "hello")
        if isinstance(claims, TokenError):
            await self._refuse(conn, ErrorCode.UNAUTHORIZED, str(claims))
            return None
        # The per-subject cap; no await from here to _serve_device counting this connection.
        if self._per_subject.get(claims.device, 0) >= self._max_per_subject:
            self._m.cap_refusals.inc()
            self._m.rejections.labels(ByeReason.TOO_MANY_CONNECTIONS.value).inc()
            self._bye(conn, ByeReason.TOO_MANY_CONNECTIONS)
            await self._close(conn, CloseCode.TRY_AGAIN_LATER, ByeReason.TOO_MANY_CONNECTIONS)
            return None
        if hello.last:
            conn.hc_last = hello.last
        return claims

    def _verify(self, token: str, when: str) -> Claims | TokenError:
        """The token's claims if it verifies and is not revoked, else why not (counted)."""
        try:
            claims = verify(self._keyring, token, self._clock(), leeway_us=self._leeway_us)
            revoked = self._revoked.reason(claims)
            if revoked is not None:
                self._m.revocations.labels(when).inc()
                raise TokenError(TokenProblem.REVOKED, f"revoked: {revoked}")
        except TokenError as exc:
            self._m.auth_failures.labels(exc.problem).inc()
            return exc
        return claims

    async def _serve_device(self, conn: _Connection, claims: Claims) -> None:
        """Welcome the device, then answer its messages until the connection closes."""
        conn.hc_claims = claims
        conn.hc_heard = asyncio.get_running_loop().time()
        self._devices.add(conn)
        self._m.devices.inc()
        self._per_subject[claims.device] = self._per_subject.get(claims.device, 0) + 1
        _write(conn, self._welcome)
        self._schedule_lifetime(conn, claims)
        if self._freeze.opened(len(self._devices)):
            gc.freeze()
        if self._registry is not None:
            await self._presence(
                self._registry.register(claims.device, self._node_id, self._clock())
            )
        loop = asyncio.get_running_loop()
        while True:
            data = await conn.recv(decode=None)
            conn.hc_heard = loop.time()
            if isinstance(data, bytes):
                await self._refuse_binary(conn)
                return
            try:
                msg = m.decode_from_client(data)
            except ProtocolError as exc:
                await self._refuse(conn, ErrorCode.MALFORMED, exc.reason)
                return
            match msg:
                case m.Subscribe(channels=channels):
                    self._subscribe(conn, conn.hc_claims or claims, channels)
                case m.FreshToken(token=token):
                    if not await self._renew(conn, token):
                        return
                case m.Unsubscribe(channels=channels):
                    self._unsubscribe_channels(conn, channels)
                case m.Ping(ts=ts):
                    _write(conn, m.encode(m.Pong(ts=ts)))
                case m.Pong():
                    pass
                case m.Hello():
                    await self._refuse(conn, ErrorCode.UNEXPECTED, "'hello' was already accepted")
                    return
                case _:
                    assert_never(msg)

    def _subscribe(self, conn: _Connection, claims: Claims, channels: tuple[str, ...]) -> None:
        """For each new channel in order: 1. refuse it (``error forbidden``, the connection
        stays) if the token does not allow it or the connection follows ``MAX_CHANNELS``;
        2. write its catch-up frames; 3. add the connection to its subscribers. No ``await``
        between 2 and 3: no live frame can come between the catch-up and the stream."""
        if conn.protocol.state is not WsState.OPEN:
            return  # evicted while this subscribe was queued
        for channel in channels:
            if channel in conn.hc_channels:
                continue
            # 1. Scope and count.
            if not claims.allows(channel):
                self._forbid(conn, f"channel {channel!r} is outside the token's scopes")
                continue
            if len(conn.hc_channels) >= m.MAX_CHANNELS:
                self._forbid(conn, f"a connection follows at most {m.MAX_CHANNELS} channels")
                continue
            # 2. Catch up.
            resume = self._source.resume(channel, conn.hc_last.get(channel))
            for frame in resume.frames:
                _write(conn, frame)
            self._m.resumes.labels(resume.kind.value).inc()
            # 3. Stream.
            subscribers = self._subs.get(channel)
            if subscribers is None:
                subscribers = self._subs[channel] = set()
            subscribers.add(conn)
            conn.hc_channels = (*conn.hc_channels, channel)

    async def _renew(self, conn: _Connection, token: str) -> bool:
        """Take a fresh token on an open connection: same subject, then the new claims replace
        the old, channels the new scopes forbid are dropped (``error forbidden`` each) and the
        lifetime timer restarts. False (after ``error unauthorized`` and close) if refused."""
        old = conn.hc_claims
        assert old is not None  # welcomed connections only
        claims = self._verify(token, "open")
        if isinstance(claims, Claims) and claims.device != old.device:
            self._m.auth_failures.labels(TokenProblem.WRONG_SUBJECT).inc()
            claims = TokenError(
                TokenProblem.WRONG_SUBJECT,
                f"a fresh token must name the same subject {old.device!r}",
            )
        if isinstance(claims, TokenError):
            self._m.refreshes.labels("refused").inc()
            await self._refuse(conn, ErrorCode.UNAUTHORIZED, str(claims))
            return False
        conn.hc_claims = claims
        dropped = tuple(ch for ch in conn.hc_channels if not claims.allows(ch))
        if dropped:
            self._unsubscribe_channels(conn, dropped)
            for channel in dropped:
                self._forbid(conn, f"channel {channel!r} is outside the fresh token's scopes")
        self._schedule_lifetime(conn, claims)
        self._m.refreshes.labels("ok").inc()
        return True

    def _schedule_lifetime(self, conn: _Connection, claims: Claims) -> None:
        """Arm the connection's one timer: ``refresh`` at ``exp`` minus half the lifetime (at
        most :data:`REFRESH_LEAD_S`), then ``bye token_expired`` at ``exp`` + leeway."""
        if conn.hc_timer is not None:
            conn.hc_timer.cancel()
        lifetime = max(0, claims.expires_at - claims.not_before)
        ask_at = claims.expires_at - min(round(REFRESH_LEAD_S * 1_000_000), lifetime // 2)
        delay_s = max(0.0, (ask_at - self._clock()) / 1_000_000)
        loop = asyncio.get_running_loop()
        conn.hc_timer = loop.call_later(delay_s, self._ask_refresh, conn, claims)

    def _ask_refresh(self, conn: _Connection, claims: Claims) -> None:
        if conn.protocol.state is not WsState.OPEN or conn.hc_claims is not claims:
            return
        close_at = claims.expires_at + self._leeway_us
        within_us = max(0, close_at - self._clock())
        refresh = m.Refresh(expires_at=claims.expires_at, within_ms=within_us // 1000)
        _write(conn, m.encode(refresh))
        self._m.refresh_requests.inc()
        loop = asyncio.get_running_loop()
        conn.hc_timer = loop.call_later(within_us / 1_000_000, self._expire, conn, claims)

    def _expire(self, conn: _Connection, claims: Claims) -> None:
        if conn.protocol.state is not WsState.OPEN or conn.hc_claims is not claims:
            return
        self._m.expiries.inc()
        self._evict(conn, ByeReason.TOKEN_EXPIRED, CloseCodes.TOKEN_EXPIRED)

    # -- revocation --------------------------------------------------------------------------

    @property
    def revocations(self) -> RevocationList:
        """The revocation list in force here."""
        return self._revoked

    def apply_revocations(self, revoked: RevocationList) -> int:
        """Make ``revoked`` the list in force: later hellos are checked against it, and every
        open connection whose token it revokes gets ``bye revoked`` and close code 4003.

        Returns:
            How many connections were closed.
        """
        if revoked is self._revoked or revoked == self._revoked:
            return 0
        self._revoked = revoked
        closed = 0
        for conn in [c for c in self._devices if c.hc_claims is not None]:
            assert conn.hc_claims is not None
            if revoked.reason(conn.hc_claims) is not None:
                self._m.revocations.labels("open").inc()
                self._evict(conn, ByeReason.REVOKED, CloseCodes.REVOKED)
                closed += 1
        return closed

    async def _load_revocations(self) -> None:
        assert self._revocation_source is not None
        try:
            revoked = await self._revocation_source.load(self._clock())
        except HopcastError as exc:
            # Logged when the problem changes, not at every poll (one line a second otherwise).
            if str(exc) != self._revocation_problem:
                self._revocation_problem = str(exc)
                logger.warning("gateway %s keeps its revocation list: %s", self._node_id, exc)
            return
        if self._revocation_problem is not None:
            self._revocation_problem = None
            logger.warning("gateway %s reads its revocation list again", self._node_id)
        self.apply_revocations(revoked)

    async def _poll_revocations(self) -> None:
        while True:
            await asyncio.sleep(self._revocation_poll_s)
            await self._load_revocations()

    def _unsubscribe_channels(self, conn: _Connection, channels: tuple[str, ...]) -> None:
        for channel in channels:
            subscribers = self._subs.get(channel)
            if subscribers is not None:
                subscribers.discard(conn)
                if not subscribers:
                    del self._subs[channel]
        conn.hc_channels = tuple(c for c in conn.hc_channels if c not in channels)

    def _forbid(self, conn: _Connection, reason: str) -> None:
        self._m.rejections.labels(ErrorCode.FORBIDDEN).inc()
        _write(conn, m.encode(m.Error(code=ErrorCode.FORBIDDEN, reason=reason)))

    async def _refuse_binary(self, conn: _Connection) -> None:
        """A binary frame: ``error malformed`` and close code 1003 (unsupported data)."""
        self._m.binary_refusals.inc()
        self._m.rejections.labels("binary").inc()
        reason = "binary frames are not accepted: the protocol is JSON in text frames"
        _write(conn, m.encode(m.Error(code=ErrorCode.MALFORMED, reason=reason)))
        await self._close(conn, CloseCode.UNSUPPORTED_DATA, "binary frame")

    async def _refuse(self, conn: _Connection, code: ErrorCode, reason: str) -> None:
        """Send ``error`` and close (for the fatal codes)."""
        self._m.rejections.labels(code).inc()
        _write(conn, m.encode(m.Error(code=code, reason=reason[: m.MAX_TEXT_CHARS])))
        await self._close(conn, CloseCode.POLICY_VIOLATION, code)

    async def _drop(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        self._m.connections.dec()
        if conn.hc_timer is not None:
            conn.hc_timer.cancel()
            conn.hc_timer = None
        if conn not in self._devices:
            return
        self._devices.discard(conn)
        self._m.devices.dec()
        if conn.hc_claims is not None:
            subject = conn.hc_claims.device
            left = self._per_subject.get(subject, 1) - 1
            if left > 0:
                self._per_subject[subject] = left
            else:
                self._per_subject.pop(subject, None)
        self._unsubscribe_channels(conn, conn.hc_channels)
        if self._freeze.closed(len(self._devices)):
            gc.unfreeze()
        if self._registry is not None and conn.hc_claims is not None:
            await self._presence(self._registry.unregister(conn.hc_claims.device, self._node_id))

    async def _presence(self, call: Awaitable[object]) -> None:
        """Run a push-registry call; a failure is logged, never fatal to a connection."""
        try:
            await call
        except Exception:
            logger.exception("push registry call failed on node %s", self._node_id)

    # -- fan-out and eviction ----------------------------------------------------------------

    def _on_frame(self, channel: str, frame: bytes) -> None:
        """The source's callback: the same bytes to every open subscriber, no waiting."""
        subscribers = self._subs.get(channel)
        if subscribers:
            self._outbox.send(subscribers, frame)
            self._m.frames.inc()
            self._m.writes.inc(len(subscribers))

    def _charge(self, conn: _Connection) -> None:
        """One frame received (from websockets' ``data_received``): take it from the
        connection's budget, refilled at ``message_rate`` up to ``message_burst``. Over it:
        ``bye too_many_messages`` and close 1008; still sending a burst past that: abort."""
        now = conn.loop.time()
        budget = conn.hc_budget
        if conn.hc_budget_at:
            budget = min(
                self._message_burst, budget + (now - conn.hc_budget_at) * self._message_rate
            )
        conn.hc_budget_at = now
        conn.hc_budget = budget - 1
        if conn.hc_budget >= 0:
            return
        if conn.hc_budget < -self._message_burst:
            conn.transport.abort()  # ignores the close: stop spending anything on it
        else:
            self._evict(conn, ByeReason.TOO_MANY_MESSAGES)  # once: only an open one is evicted

    def _on_backlog(self, conn: _Connection) -> None:
        # Called inside a write (maybe mid-broadcast): evict once the current callback is done.
        self._backlogged.append(conn)
        if len(self._backlogged) == 1:
            asyncio.get_running_loop().call_soon(self._evict_backlogged)

    def _evict_backlogged(self) -> None:
        backlogged, self._backlogged = self._backlogged, []
        for conn in backlogged:
            self._evict(conn, ByeReason.SLOW)

    def _evict(
        self, conn: _Connection, reason: ByeReason, code: int = CloseCode.POLICY_VIOLATION
    ) -> None:
        """Stop streaming to ``conn``, tell it why (best effort), close it in the background.
        Once per connection: its state stays OPEN until the background close runs, and a second
        cause in between (more frames of a flood, a revocation after an expiry) would send a
        second ``bye`` and count twice."""
        if conn.protocol.state is not WsState.OPEN or conn.hc_evicted:
            return
        conn.hc_evicted = True
        self._unsubscribe_channels(conn, conn.hc_channels)
        self._bye(conn, reason)
        self._m.evictions.labels(reason.value).inc()
        self._close_soon(conn, code, reason)

    def _close_soon(self, conn: _Connection, code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self._close(conn, code, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, conn: _Connection, code: int, reason: str) -> None:
        """Closing handshake bounded by ``close_timeout_s``, then abort. (websockets' own
        ``close()`` first drains the write buffer, which never ends for a device not reading.)"""
        try:
            async with asyncio.timeout(self._close_timeout_s):
                await conn.close(code, reason)
        except TimeoutError:
            conn.transport.abort()

    def _bye(self, conn: _Connection, reason: ByeReason) -> None:
        _write(conn, self._rng.choice(self._byes[reason]))

    async def _heartbeat(self) -> None:
        # The pongs of a round are in well before the next ping: re-freeze the heap then
        # (FreezePolicy.settled), so what they allocated is not walked by full collections.
        settle_s = min(SETTLE_MAX_S, self._heartbeat_s / 4)
        while True:
            await asyncio.sleep(self._heartbeat_s - settle_s)
            self._beat()
            if self._registry is not None:
                now = self._clock()
                devices = [c.hc_claims.device for c in self._devices if c.hc_claims is not None]
                await self._presence(self._registry.refresh(devices, self._node_id, now))
                await self._presence(self._registry.expire(now))
            await asyncio.sleep(settle_s)
            if self._freeze.settled(len(self._devices)):
                gc.freeze()

    def _beat(self) -> None:
        """One heartbeat: 1. one ``ping`` frame to every device; 2. evict the silent ones."""
        self._outbox.send(self._devices, m.encode(m.Ping(ts=self._clock())))
        silent_since = asyncio.get_running_loop().time() - LIVENESS_INTERVALS * self._heartbeat_s
        for conn in [c for c in self._devices if c.hc_heard < silent_since]:
            self._evict(conn, ByeReason.TIMEOUT)


class GatewayServer:
    """A serving :class:`Gateway`: its bound port, and :meth:`close`."""

    def __init__(self, gateway: Gateway, server: Server, scheme: str = "ws") -> None:
        self._gateway = gateway
        self._server = server
        self.scheme = scheme  # "wss" when serving TLS

    @property
    def gateway(self) -> Gateway:
        return self._gateway

    @property
    def port(self) -> int:
        """The port bound (useful after ``serve(host, 0)``)."""
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Shut down for a restart: 1. stop taking frames and pinging; 2. ``bye restart`` to
        every connection with a jittered ``retry_after_ms``; 3. stop listening, close every
        connection (code 1012) and wait for the handlers; 4. stop timing GC. Idempotent."""
        await self._gateway._shutdown(self._server)

    async def __aenter__(self) -> GatewayServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

"""The device client for asyncio: a thin loop around :class:`~hopcast.sdk.protocol.DeviceProtocol`.

The protocol core decides everything (what to send, what was applied, when a connection is
dead, how long to back off); this module only moves frames between it and a WebSocket, keeps
timers and counts what happened. ``websockets`` is imported here and nowhere else in the SDK,
and its exceptions stop here.

One connection, from the client's side::

    open the WebSocket ─▶ send hello (with the last positions) ─▶ receive welcome ─▶ subscribe
      ─▶ receive triggers / state / pings until one of:
           stop set          → close, return from run()
           refresh           → get a fresh token (refresh_token) and send it on this same
                               connection: no reconnect, nothing missed
           bye               → reconnect after retry_after_ms + jittered backoff (after
                               token_expired or revoked: with a fresh token)
           resync needed     → reconnect (resumes from the last contiguous position)
           error             → unauthorized: refresh the token, reconnect; forbidden: go on;
                               unsupported_protocol: raise; anything else: reconnect
           malformed frame   → close (1002), reconnect
           deadline passed   → drop the dead connection, reconnect
           connection closed → reconnect

Every reconnection waits :func:`~hopcast.sdk.protocol.reconnect_delay`: full-jitter exponential
backoff whose first window is already random, so a fleet dropped at once returns spread out; the
attempt count restarts at 0 each time a connection is welcomed.

Payloads: ``cache`` maps a payload reference (``<event>/<stage>``, :func:`payload_ref`) to the
payload's bytes. :meth:`DeviceClient.prefetch` fills it from the event's manifest at the
device's point of the prefetch window; a trigger naming a reference the cache lacks makes the
client fetch it after a jittered delay (:func:`~hopcast.sdk.protocol.fallback_fetch_delay`),
so the few devices that missed the prefetch do not hit the origin together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.frames import CloseCode
from websockets.uri import parse_uri

from hopcast.durations import SECOND, now_us
from hopcast.errors import ConfigError
from hopcast.live import messages as m
from hopcast.live.messages import ProtocolError
from hopcast.live.messages import payload_ref as payload_ref  # re-exported: part of this API
from hopcast.sdk.device import AppliedStage as AppliedStage  # re-exported: part of this API
from hopcast.sdk.device import ClientStats as ClientStats
from hopcast.sdk.device import DeviceCore
from hopcast.sdk.device import Fetch as Fetch
from hopcast.sdk.device import RefreshToken as RefreshToken
from hopcast.sdk.device import Sleep as Sleep
from hopcast.sdk.protocol import FALLBACK_WINDOW_S, HELLO_TIMEOUT_US, DeviceEvent
from hopcast.tls import client_context

#: How long to wait for the WebSocket handshake: the same budget as the wait for ``welcome``
#: (a gateway busy for longer is better retried later, maybe on another node).
OPEN_TIMEOUT_S = HELLO_TIMEOUT_US / SECOND
#: How long the closing handshake may take: a healthy gateway answers within a round trip, and
#: every second spent here delays the reconnect that usually follows.
CLOSE_TIMEOUT_S = 1.0

logger = logging.getLogger("hopcast.sdk")


class DeviceClient(DeviceCore):
    """One device: connects, follows channels, applies triggers and keeps its payload cache.

    Args:
        url: the gateway's ``ws://`` or ``wss://`` URL.
        token: the device token (``hopcast.live.tokens``).
        channels: the channels to follow.
        cache: payload reference → bytes; shared with the caller (created if ``None``).
        fetch: fetches payloads for the fallback and manifests for :meth:`prefetch`; without
            it, missing payloads are only reported (``on_event``).
        rng: draws every backoff and fallback delay; seed it per device for reproducible runs.
        clock: µs since the epoch; feeds the protocol's deadlines and ``applied_at``.
        on_event: called with every :data:`~hopcast.sdk.protocol.DeviceEvent`, after the
            client handled it; an exception it raises ends :meth:`run`.
        refresh_token: called after the gateway refused the token; the next connection uses
            what it returns. Without it a refusal ends :meth:`run` with :class:`TokenError`.
        sleep: waits the delays the client chooses (reconnect, fallback, prefetch spread); the
            default is :func:`asyncio.sleep`. Deadlines from the gateway's heartbeat are not
            routed through it.
        fallback_window_s: the window over which a missing payload's fetch is spread.
        connect_options: extra keyword arguments for ``websockets.asyncio.client.connect``
            (and through it ``loop.create_connection``), e.g. ``local_addr`` or ``write_limit``;
            they override the defaults set here.
        ssl_context: for ``wss://``: the TLS client context (default: the system's trusted
            CAs, or ``ca_file``).
        ca_file: for ``wss://``: a PEM file of the CA (or self-signed certificate) to trust
            instead of the system's, e.g. a private deployment's.

    Raises:
        ConfigError: ``url`` is not a WebSocket URL, TLS options with a ``ws://`` URL, both
            ``ssl_context`` and ``ca_file``, or an unreadable ``ca_file``.
        InvalidInput: a channel name is invalid or there are too many.
    """

    def __init__(
        self,
        url: str,
        token: str,
        channels: Iterable[str],
        *,
        rng: random.Random,
        cache: MutableMapping[str, bytes] | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], int] = now_us,
        on_event: Callable[[DeviceEvent], None] | None = None,
        refresh_token: RefreshToken | None = None,
        sleep: Sleep = asyncio.sleep,
        fallback_window_s: float = FALLBACK_WINDOW_S,
        connect_options: Mapping[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ca_file: str | None = None,
    ) -> None:
        try:
            secure = parse_uri(url).secure
        except InvalidURI as exc:
            raise ConfigError(f"not a WebSocket URL: {url!r}") from exc
        if (ssl_context is not None or ca_file is not None) and not secure:
            raise ConfigError(f"TLS options need a wss:// URL, not {url!r}")
        if ssl_context is not None and ca_file is not None:
            raise ConfigError("pass ssl_context or ca_file, not both")
        if ca_file is not None:
            ssl_context = client_context(ca_file)
        super().__init__(
            token,
            channels,
            rng=rng,
            cache=cache,
            fetch=fetch,
            clock=clock,
            on_event=on_event,
            refresh_token=refresh_token,
            sleep=sleep,
            fallback_window_s=fallback_window_s,
        )
        self.url = url
        self._connect_options: dict[str, Any] = {
            "compression": None,  # 3x the server's memory per connection for tiny messages
            "max_size": m.MAX_FRAME_BYTES,
            "open_timeout": OPEN_TIMEOUT_S,
            "close_timeout": CLOSE_TIMEOUT_S,
            # The protocol's own pings and deadline() detect dead connections; WebSocket
            # keepalive pings would double the heartbeat traffic of every device.
            "ping_interval": None,
            **({"ssl": ssl_context} if ssl_context is not None else {}),
            **(connect_options or {}),
        }
        self._ws: ClientConnection | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def _session(self, stop_task: asyncio.Future[Any]) -> None:
        """One connection, from opening the WebSocket to losing it (never raises on I/O)."""
        # 1. Open, giving up at once if stop is set meanwhile.
        opening = asyncio.ensure_future(connect(self.url, **self._connect_options))
        await asyncio.wait({opening, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if not opening.done():
            opening.cancel()  # websockets aborts the half-open connection
            await asyncio.gather(opening, return_exceptions=True)
            return
        try:
            ws = opening.result()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self.stats.connect_failures += 1
            logger.debug("connecting to %s failed: %s", self.url, exc)
            return
        self.stats.connects += 1
        # 2. Converse until something ends the connection; stop closes it from outside.
        closing: list[asyncio.Task[None]] = []

        def close_on_stop(_: asyncio.Future[Any]) -> None:
            closing.append(asyncio.ensure_future(ws.close()))

        stop_task.add_done_callback(close_on_stop)
        code = CloseCode.NORMAL_CLOSURE
        self._ws = ws
        try:
            code = await self._converse(ws)
        except ConnectionClosed:
            pass
        finally:
            # 3. Close: gracefully, unless the peer is dead; keep positions for the resume.
            self._ws = None
            stop_task.remove_done_callback(close_on_stop)
            self.protocol.connection_lost()
            if closing:
                await closing[0]
            elif code == CloseCode.ABNORMAL_CLOSURE:
                ws.transport.abort()
                await ws.wait_closed()
            else:
                await ws.close(code)

    def _send_now(self, frames: list[bytes]) -> None:
        ws = self._ws
        if ws is None:
            return

        async def send() -> None:
            with contextlib.suppress(ConnectionClosed):
                for frame in frames:
                    await ws.send(frame, text=True)

        task = asyncio.ensure_future(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _converse(self, ws: ClientConnection) -> CloseCode:
        """Send ``hello``, then feed frames to the protocol until the connection should end.

        Returns:
            How to close: ``NORMAL_CLOSURE``, ``PROTOCOL_ERROR`` for an invalid frame, or
            ``ABNORMAL_CLOSURE`` (abort without a handshake) when the deadline passed.

        Raises:
            ConnectionClosed: the connection closed (by the gateway, the network or stop).
        """
        proto = self.protocol
        await ws.send(proto.connect(self._clock()), text=True)
        while True:
            deadline = proto.deadline()
            timeout = None if deadline is None else (deadline - self._clock()) / SECOND
            try:
                async with asyncio.timeout(timeout):
                    data = await ws.recv(decode=False)
            except TimeoutError:
                self.stats.timeouts += 1
                return CloseCode.ABNORMAL_CLOSURE
            now = self._clock()
            try:
                events = proto.receive(data, now)
            except ProtocolError as exc:
                self.stats.protocol_errors += 1
                logger.debug("invalid frame from %s: %s", self.url, exc.reason)
                return CloseCode.PROTOCOL_ERROR
            for out in proto.data_to_send():
                await ws.send(out, text=True)
            if not self._handle(events, now):
                return CloseCode.NORMAL_CLOSURE

"""A lighter device for the load harness: :class:`~hopcast.sdk.protocol.DeviceProtocol` over a
minimal asyncio WebSocket connection, for ~15k simulated devices per process.

:class:`~hopcast.sdk.client.DeviceClient` runs each device on a ``websockets`` connection: the
right choice for a real device, but measured here at ~140 µs of CPU per device per trigger —
15,000 DeviceClients in one simulator process took 2.1 s (p50) to take in one broadcast, so the
simulator, not the system under test, set the time to update; the same 15,000 as LightClients
took 0.21 s. :class:`LightClient` keeps every decision in the same sans-I/O core (hello/resume,
idempotent application, deadlines, ``bye`` and :func:`~hopcast.sdk.protocol.reconnect_delay`
backoff, jittered fallback fetches, the prefetch spread) and replaces only the transport with
:class:`_Wire`, an ``asyncio.Protocol`` that speaks just what the gateway uses of RFC 6455:

* the opening handshake (``Sec-WebSocket-Accept`` checked), no extensions, no subprotocol;
* unmasked server frames, fragmented or not, up to ``MAX_FRAME_BYTES``; masked client frames;
* ``ping`` answered with ``pong``; ``close`` answered and the connection closed.

It is not a general WebSocket client (no TLS, no compression, no redirects).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, cast
from urllib.parse import urlsplit

from hopcast.durations import SECOND, now_us
from hopcast.errors import ConfigError
from hopcast.live import messages as m
from hopcast.live.messages import ProtocolError
from hopcast.sdk.client import CLOSE_TIMEOUT_S, OPEN_TIMEOUT_S
from hopcast.sdk.device import DeviceCore, Fetch, RefreshToken
from hopcast.sdk.protocol import FALLBACK_WINDOW_S, DeviceEvent

#: RFC 6455's GUID, hashed with the key to make ``Sec-WebSocket-Accept``.
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Longest handshake answer read before giving up (the gateway's is ~150 bytes).
_MAX_HANDSHAKE_BYTES = 16 * 1024
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_CLOSE_NORMAL, _CLOSE_PROTOCOL_ERROR, _CLOSE_TOO_BIG = 1000, 1002, 1009


class _Wire(asyncio.Protocol):
    """One WebSocket connection, client side: handshake, then whole messages to ``on_message``."""

    def __init__(self, host: str, path: str, on_message: Callable[[bytes], None]) -> None:
        self._key = base64.b64encode(os.urandom(16))
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self._on_message = on_message
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._open = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_sent = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._open and not self._handshake():
            return
        self._frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the WebSocket handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending -------------------------------------------------------------------------------

    def send(self, data: bytes, opcode: int = _OP_TEXT) -> None:
        """Send one masked frame (dropped if the connection is closing)."""
        if self._transport is None or self.close_sent:
            return
        n = len(data)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 1 << 16:
            header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
        self._transport.write(header + mask + masked)

    def close(self, code: int = _CLOSE_NORMAL) -> None:
        """Start the closing handshake: send ``close``; the server closes the TCP connection."""
        if self._transport is None or self.close_sent:
            return
        self.send(code.to_bytes(2, "big"), _OP_CLOSE)
        self.close_sent = True

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- receiving -----------------------------------------------------------------------------

    def _handshake(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HANDSHAKE_BYTES:
                self._fail_open("handshake answer too long")
            return False
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self._key + _WS_GUID).digest()).decode()
        if not head[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != accept:
            self._fail_open(f"not a WebSocket upgrade: {head[0]!r}")
            return False
        self._open = True
        self.opened.set_result(None)
        return True

    def _fail_open(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(reason))
        self.abort()

    def _frames(self) -> None:
        buf = self._buffer
        while len(buf) >= 2 and self._transport is not None:
            b0, b1 = buf[0], buf[1]
            length, offset = b1 & 0x7F, 2
            if b1 & 0x80:
                return self._protocol_error(_CLOSE_PROTOCOL_ERROR)  # servers never mask
            if length == 126:
                if len(buf) < 4:
                    return
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            if length > m.MAX_FRAME_BYTES:
                return self._protocol_error(_CLOSE_TOO_BIG)
            if len(buf) < offset + length:
                return
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            self._frame(b0 & 0x80 != 0, b0 & 0x0F, payload)

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
            if opcode != _OP_CONT and self._fragments:
                return self._protocol_error(_CLOSE_PROTOCOL_ERROR)
            if not fin:
                self._fragments.append(payload)
                if sum(map(len, self._fragments)) > m.MAX_FRAME_BYTES:
                    self._protocol_error(_CLOSE_TOO_BIG)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments.clear()
            if not self.close_sent:
                self._on_message(payload)
        elif opcode == _OP_PING:
            self.send(payload, _OP_PONG)
        elif opcode == _OP_CLOSE:
            self.close(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else _CLOSE_NORMAL)
            if self._transport is not None:
                self._transport.close()
        elif opcode != _OP_PONG:
            self._protocol_error(_CLOSE_PROTOCOL_ERROR)

    def _protocol_error(self, code: int) -> None:
        self.close(code)
        self.abort()


class LightClient(DeviceCore):
    """One device on :class:`_Wire`; the same contract as
    :class:`~hopcast.sdk.client.DeviceClient` for what the simulator uses: :meth:`run`,
    :meth:`prefetch`, :attr:`stats`, :attr:`protocol`, :attr:`cache`.

    Args:
        url: ``ws://host:port[/path]`` (no TLS).
        local_addr: the local ``(host, port)`` to bind the socket to.
        Others: as :class:`~hopcast.sdk.client.DeviceClient`.

    Raises:
        ConfigError: ``url`` is not a ``ws://`` URL.
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
        fallback_window_s: float = FALLBACK_WINDOW_S,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ConfigError(f"the light client speaks ws:// only, got {url!r}")
        super().__init__(
            token,
            channels,
            rng=rng,
            cache=cache,
            fetch=fetch,
            clock=clock,
            on_event=on_event,
            refresh_token=refresh_token,
            fallback_window_s=fallback_window_s,
        )
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 80
        self._netloc = parts.netloc
        self._path = parts.path or "/"
        self._local_addr = local_addr
        self._wire: _Wire | None = None

    async def _session(self, stop_task: asyncio.Future[Any]) -> None:
        loop = asyncio.get_running_loop()
        wire = _Wire(self._netloc, self._path, self._on_message)
        # 1. open: TCP, then the WebSocket handshake, within the open timeout
        try:
            async with asyncio.timeout(OPEN_TIMEOUT_S):
                await loop.create_connection(
                    lambda: wire, self._host, self._port, local_addr=self._local_addr
                )
                await wire.opened
        except (OSError, TimeoutError):
            self.stats.connect_failures += 1
            wire.abort()
            return
        self.stats.connects += 1
        self._wire = wire
        wire.send(self.protocol.connect(self._clock()))
        # 2. frames arrive through _on_message; wait for the end, stop, or the deadline
        try:
            while not wire.closed.done():
                deadline = self.protocol.deadline()
                timeout = None if deadline is None else (deadline - self._clock()) / SECOND
                await asyncio.wait(
                    {wire.closed, stop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_task.done():
                    break
                deadline = self.protocol.deadline()
                if not wire.closed.done() and deadline is not None and self._clock() >= deadline:
                    self.stats.timeouts += 1
                    wire.abort()
                    break
            # 3. close: gracefully unless the peer is dead; keep positions for the resume
            if not wire.closed.done():
                wire.close()
                await asyncio.wait({wire.closed}, timeout=CLOSE_TIMEOUT_S)
                wire.abort()
        finally:
            self._wire = None
            self.protocol.connection_lost()

    def _send_now(self, frames: list[bytes]) -> None:
        wire = self._wire
        if wire is not None:
            for frame in frames:
                wire.send(frame)

    def _on_message(self, data: bytes) -> None:
        wire = self._wire
        if wire is None:
            return
        now = self._clock()
        try:
            events = self.protocol.receive(data, now)
        except ProtocolError:
            self.stats.protocol_errors += 1
            wire.close(_CLOSE_PROTOCOL_ERROR)
            return
        for out in self.protocol.data_to_send():
            wire.send(out)
        if not self._handle(events, now):
            wire.close()

"""A small HTTP/1.1 client for the simulator's devices: keep-alive GETs and POSTs, counted.

The load harness (:mod:`hopcast.sdk.simulator`) runs thousands of devices per process; each
origin request must be cheap on the client so that the machine's cores go to the system under
test, and every request must be counted by the second. :class:`OriginPool` is that and no more:
one host, a bounded pool of keep-alive connections bound to a chosen local address (so each
simulator process can use its own loopback source address), ``Content-Length`` and chunked
bodies, and a log of ``(sent_at µs, kind)`` for every request written to the wire.

A request that fails on a reused keep-alive connection before any byte of the answer arrived
(the server closed an idle connection, e.g. while restarting) is retried once on a new
connection; everything else raises :class:`OriginError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from hopcast.durations import now_us
from hopcast.errors import ConfigError, HopcastError

#: Connections per pool: enough that a trigger-time burst of thousands of fetches is limited by
#: the origin, not by the client, while a process keeps far below its 20,000 open files.
DEFAULT_POOL_SIZE = 32
#: Longest wait for a connection and a full answer: an origin flooded at trigger time answers
#: within seconds; beyond this the device counts a failure rather than hanging.
REQUEST_TIMEOUT_S = 30.0
#: Largest answer accepted (payloads are at most 64 KiB; a manifest inlines a handful).
MAX_BODY_BYTES = 4 * 1024 * 1024


class OriginError(HopcastError):
    """The origin could not be reached, or answered something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, lower-cased headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def found(self, what: str) -> bytes | None:
        """The body of a 200, None for a 404 (not published), OriginError for anything else."""
        if self.status == 404:
            return None
        if self.status != 200:
            raise OriginError(f"{what}: HTTP {self.status}")
        return self.body


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class OriginPool:
    """Keep-alive connections to one ``http://host:port``, at most ``size`` at once.

    Args:
        base_url: ``http://host:port`` (no path).
        local_host: the local address to bind each connection to (e.g. ``127.0.0.2``).
        size: most connections open at once; further requests wait for one.
        clock: µs since the epoch, for the request log.

    Attributes:
        log: ``(sent_at, kind)`` of every request written, in order.
        failures: requests that raised.

    Raises:
        ConfigError: ``base_url`` is not ``http://host[:port]``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        local_host: str | None = None,
        size: int = DEFAULT_POOL_SIZE,
        clock: Callable[[], int] = now_us,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"the origin must be http://host:port, got {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._host_header = parts.netloc
        self._local = None if local_host is None else (local_host, 0)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Conn] = []
        self._clock = clock
        self.log: list[tuple[int, str]] = []
        self.failures = 0

    async def get(self, path: str, kind: str, *, bearer: str | None = None) -> Answer:
        """``GET path``; ``kind`` labels the request in :attr:`log`; ``bearer``: a device token
        or API key sent as ``Authorization: Bearer`` (the prefetch routes need one).

        Raises:
            OriginError: no answer (connection refused, reset, timeout, malformed answer).
        """
        return await self.request("GET", path, kind, bearer=bearer)

    async def request(
        self, method: str, path: str, kind: str, body: bytes = b"", *, bearer: str | None = None
    ) -> Answer:
        """Send one request and read its answer (``body`` as JSON when not empty; ``bearer``
        as ``Authorization: Bearer``).

        Raises:
            OriginError: no answer (connection refused, reset, timeout, malformed answer).
        """
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
        if bearer:
            head += f"Authorization: Bearer {bearer}\r\n"
        if body or method != "GET":
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        wire = head.encode() + b"\r\n" + body
        try:
            async with self._slots, asyncio.timeout(REQUEST_TIMEOUT_S):
                return await self._exchange(wire, kind)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as exc:
            self.failures += 1
            raise OriginError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except OriginError:
            self.failures += 1
            raise

    async def close(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _exchange(self, wire: bytes, kind: str) -> Answer:
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._open()
        self.log.append((self._clock(), kind))
        try:
            answer, keep = await self._send(conn, wire)
        except (OSError, asyncio.IncompleteReadError) as exc:
            conn[1].close()
            if not (reused and _nothing_received(exc)):
                raise
            conn = await self._open()  # the server closed the idle connection: retry once
            answer, keep = await self._send(conn, wire)
        except BaseException:
            conn[1].close()
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn[1].close()
        return answer

    async def _open(self) -> _Conn:
        return await asyncio.open_connection(
            self.host, self.port, local_addr=self._local, limit=MAX_BODY_BYTES
        )

    async def _send(self, conn: _Conn, wire: bytes) -> tuple[Answer, bool]:
        reader, writer = conn
        writer.write(wire)
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise OriginError(f"not an HTTP/1.1 status line: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            length = int(headers.get("content-length", "0"))
            if length > MAX_BODY_BYTES:
                raise OriginError(f"answer of {length} bytes is over {MAX_BODY_BYTES}")
            body = await reader.readexactly(length)
        keep = headers.get("connection", "").lower() != "close"
        return Answer(status, headers, body), keep


def _nothing_received(exc: BaseException) -> bool:
    """Whether a failure happened before any byte of the answer (safe to resend a GET)."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return not exc.partial
    return isinstance(exc, (ConnectionResetError, BrokenPipeError))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(chunks)
        total += size
        if total > MAX_BODY_BYTES:
            raise OriginError(f"chunked answer over {MAX_BODY_BYTES} bytes")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)

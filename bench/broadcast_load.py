"""Simulated devices for ``bench/broadcast.py``: one process holds up to ~17k WebSocket clients.

The clients are deliberately light so the benchmark measures the servers: a minimal RFC 6455
client on asyncio protocols (uvloop), no per-connection task, ``__slots__`` objects and one
preallocated array of receive times. Three dialects, one per server measured:

* ``hopcast`` — the real wire protocol through the sans-I/O :class:`DeviceProtocol`: ``hello``
  with a signed token, ``welcome``, ``subscribe global``, ``state``; pings answered;
* ``socketio`` — Engine.IO v4 / Socket.IO v5 over a plain WebSocket
  (``/socket.io/?EIO=4&transport=websocket``): open packet, namespace connect, pings answered;
* ``websockets`` — a bare WebSocket, nothing on top.

During a round the only work per received trigger is one ``time.time_ns()`` and one array
store (plus keeping the frame); hopcast's frames are fed to each device's protocol afterwards
(``check``), so client CPU does not compete with the server while it broadcasts.

Driven by the orchestrator through stdin/stdout, one JSON object per line::

    (start)          → {"ready": n, "failed": k, "connect_s": s, "rss": bytes, ...}
    status           → {"status": open devices, ...}  (at once, even while connecting)
    arm <round> <timeout_s>  → {"armed": round}   then, when every open device has the round's
                               trigger or the timeout passed: {"round": r, "times": [...], ...}
    check            → {"checked": n, "applied": a, "problems": p}  (protocol-level validation)
    quit             → connections reset (no TIME_WAIT), process exits
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import struct
import sys
import time
from array import array
from collections import Counter
from typing import Any

import uvloop

from hopcast.durations import now_us
from hopcast.errors import ProtocolError
from hopcast.live import tokens
from hopcast.sdk.protocol import (
    DeviceProtocol,
    ResyncNeeded,
    ServerBye,
    ServerError,
    StateSynced,
    TriggerApplied,
)

#: Secret shared with the hopcast gateway under test (the orchestrator sets it).
SECRET_ENV = "HOPCAST_BENCH_SECRET"
#: Handshakes in flight per client process: enough to keep a server's accept loop busy without
#: a SYN flood the listen backlog (4096) would drop.
CONNECT_CONCURRENCY = 200
#: A device that is not ready this long after its TCP connect counts as failed.
READY_TIMEOUT_S = 60.0
#: Connection attempts per device (refused or reset handshakes are retried).
ATTEMPTS = 5

#: Linux ``IP_BIND_ADDRESS_NO_PORT`` (not exported by the ``socket`` module).
IP_BIND_ADDRESS_NO_PORT = 24

_HANDSHAKE, _OPEN, _CLOSED = 0, 1, 2
_MASK = os.urandom(4)
_KEY = base64.b64encode(os.urandom(16)).decode()
_LINGER_RESET = struct.pack("ii", 1, 0)
_TRIGGER_PREFIX = {
    "hopcast": b'{"type":"trigger"',
    "socketio": b'42["trigger"',
    "websockets": b"",
}


def _mask(payload: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (_MASK * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked, final client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _MASK + _mask(payload)


class Fleet:
    """Every device of this process, the round being timed and the counters."""

    def __init__(self, system: str, count: int, first_id: int) -> None:
        self.system = system
        self.count = count
        self.first_id = first_id
        self.conns: list[Device | None] = [None] * count
        self.recv = array("q", bytes(8 * count))
        self.frames: list[bytes | None] = [None] * count
        self.prefix = _TRIGGER_PREFIX[system]
        self.armed = False
        self.received = 0
        self.target = 0
        self.round_done: asyncio.Future[None] | None = None
        self.open = 0
        self.lost = 0
        self.errors = 0
        self.secret = os.environ.get(SECRET_ENV, "").encode()

    def got(self, dev: Device, now: int, payload: bytes) -> None:
        """A trigger frame reached ``dev`` at ``now`` (ns)."""
        if not self.armed or self.recv[dev.i]:
            return
        self.recv[dev.i] = now
        self.frames[dev.i] = payload
        self.received += 1
        if self.received >= self.target and self.round_done and not self.round_done.done():
            self.round_done.set_result(None)


class Device(asyncio.Protocol):
    """One simulated device: a minimal WebSocket client plus its dialect (subclasses)."""

    __slots__ = ("buf", "fleet", "i", "ready", "state", "transport")
    path = "/"

    def __init__(self, fleet: Fleet, i: int, ready: asyncio.Future[bool]) -> None:
        self.fleet = fleet
        self.i = i
        self.ready: asyncio.Future[bool] | None = ready
        self.state = _HANDSHAKE
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    # -- transport callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        host, port = transport.get_extra_info("peername")[:2]
        transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == _HANDSHAKE:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self._fail()
                return
            self.state = _OPEN
            self.opened(now)
            data = data[end + 4 :]
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            payload = data[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                self.message(payload, now)
            elif opcode == 9:
                self.send(payload, 10)  # pong
            elif opcode == 8:
                self.transport.close()  # type: ignore[union-attr]
                return
        if pos < n:
            self.buf = data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        fleet = self.fleet
        if self.state == _OPEN and self.ready is None:
            fleet.open -= 1
            fleet.lost += 1
        self.state = _CLOSED
        if self.ready is not None and not self.ready.done():
            self.ready.set_result(False)
        fleet.conns[self.i] = None

    # -- dialect hooks -----------------------------------------------------------------------

    def opened(self, now: int) -> None:
        self._ready()

    def message(self, payload: bytes, now: int) -> None:
        if payload.startswith(self.fleet.prefix):
            self.fleet.got(self, now, payload)

    # -- helpers -----------------------------------------------------------------------------

    def send(self, payload: bytes, opcode: int = 1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(payload, opcode))

    def _ready(self) -> None:
        if self.ready is not None and not self.ready.done():
            self.fleet.open += 1
            self.fleet.conns[self.i] = self
            self.ready.set_result(True)
            self.ready = None

    def _fail(self) -> None:
        self.fleet.errors += 1
        if self.transport is not None:
            self.transport.abort()

    def reset(self) -> None:
        """Close with a TCP reset: no TIME_WAIT left on this client's source port."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self.transport.abort()


class HopcastDevice(Device):
    """The hopcast wire protocol through the SDK's sans-I/O core."""

    __slots__ = ("proto",)

    def __init__(self, fleet: Fleet, i: int, ready: asyncio.Future[bool]) -> None:
        super().__init__(fleet, i, ready)
        device_id = f"bench-{fleet.first_id + i}"
        now = now_us()
        token = tokens.issue(fleet.secret, device_id, ["global"], now, 3600 * 1_000_000)
        self.proto = DeviceProtocol(token, ["global"])

    def opened(self, now: int) -> None:
        self.send(self.proto.connect(now // 1000))

    def message(self, payload: bytes, now: int) -> None:
        fleet = self.fleet
        if self.ready is None and payload.startswith(fleet.prefix):
            fleet.got(self, now, payload)  # applied later, in check()
            return
        try:
            events = self.proto.receive(payload, now // 1000)
        except ProtocolError:
            self._fail()
            return
        for data in self.proto.data_to_send():
            self.send(data)
        for event in events:
            if isinstance(event, StateSynced):
                self._ready()
            elif isinstance(event, ServerError | ServerBye):
                fleet.errors += 1


class SocketIODevice(Device):
    """Engine.IO v4 / Socket.IO v5 over a WebSocket, namespace ``/``."""

    __slots__ = ()
    path = "/socket.io/?EIO=4&transport=websocket"

    def opened(self, now: int) -> None:
        pass  # the server speaks first (Engine.IO open packet)

    def message(self, payload: bytes, now: int) -> None:
        if payload.startswith(b"42"):
            if payload.startswith(self.fleet.prefix):
                self.fleet.got(self, now, payload)
        elif payload == b"2":
            self.send(b"3")  # Engine.IO ping → pong
        elif payload.startswith(b"40"):
            self._ready()  # namespace connected: in the broadcast room
        elif payload.startswith(b"0"):
            self.send(b"40")  # Engine.IO open → connect to namespace "/"
        elif payload.startswith((b"44", b"1")):
            self.fleet.errors += 1


DIALECTS: dict[str, type[Device]] = {
    "hopcast": HopcastDevice,
    "socketio": SocketIODevice,
    "websockets": Device,
}


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from ``/proc``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def connect_all(fleet: Fleet, host: str, port: int, source: str) -> None:
    loop = asyncio.get_running_loop()
    dialect = DIALECTS[fleet.system]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failed = 0
    why: Counter[str] = Counter()  # why attempts failed

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            for attempt in range(ATTEMPTS):
                ready: asyncio.Future[bool] = loop.create_future()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    # Pick the source port at connect(), not bind(): binding to port 0 scans
                    # the ports in use, which grows with every connection of this address.
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((source, 0))
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (host, port))
                    _, dev = await loop.create_connection(
                        lambda r=ready: dialect(fleet, i, r),  # type: ignore[misc]
                        sock=sock,
                    )
                except OSError as exc:
                    sock.close()
                    why[f"connect: {exc.strerror or type(exc).__name__}"] += 1
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                try:
                    async with asyncio.timeout(READY_TIMEOUT_S):
                        if await ready:
                            return
                    why["closed before ready"] += 1
                except TimeoutError:
                    why[f"not ready in {READY_TIMEOUT_S:.0f} s"] += 1
                    dev.reset()
                await asyncio.sleep(0.5 * (attempt + 1))
            failed += 1

    start = time.perf_counter()
    base_rss = rss_bytes()
    await asyncio.gather(*(one(i) for i in range(fleet.count)))
    elapsed = time.perf_counter() - start
    rss = rss_bytes()
    emit(
        {
            "ready": fleet.open,
            "failed": failed,
            "retried": dict(why),
            "errors": fleet.errors,
            "connect_s": round(elapsed, 3),
            "rss": rss,
            "rss_per_device": round((rss - base_rss) / max(1, fleet.open)),
        }
    )


def check(fleet: Fleet) -> dict[str, int]:
    """Feed the kept trigger frames to each device's protocol (hopcast): every one must apply
    as a new stage, in sequence. For the other dialects, only that a frame arrived."""
    checked = applied = problems = 0
    now = now_us()
    for i, payload in enumerate(fleet.frames):
        if payload is None:
            continue
        checked += 1
        dev = fleet.conns[i]
        if isinstance(dev, HopcastDevice):
            try:
                events = dev.proto.receive(payload, now)
            except ProtocolError:
                problems += 1
                continue
            if any(isinstance(e, ResyncNeeded) for e in events):
                problems += 1
            if any(isinstance(e, TriggerApplied) for e in events):
                applied += 1
            for data in dev.proto.data_to_send():
                dev.send(data)
        else:
            applied += 1
    fleet.frames = [None] * fleet.count
    return {"checked": checked, "applied": applied, "problems": problems}


async def run_round(fleet: Fleet, round_no: int, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    fleet.recv = array("q", bytes(8 * fleet.count))
    fleet.received = 0
    fleet.target = fleet.open
    fleet.round_done = loop.create_future()
    fleet.armed = True
    emit({"armed": round_no})
    if fleet.target:
        try:
            async with asyncio.timeout(timeout_s):
                await fleet.round_done
        except TimeoutError:
            pass
    fleet.armed = False
    times = [t for t in fleet.recv if t]
    emit(
        {
            "round": round_no,
            "times": times,
            "expected": fleet.target,
            "missing": fleet.target - len(times),
            "open": fleet.open,
            "lost": fleet.lost,
        }
    )


async def main_async(args: argparse.Namespace) -> None:
    fleet = Fleet(args.system, args.count, args.first_id)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    connecting = loop.create_task(connect_all(fleet, args.host, args.port, args.source))
    while line := (await reader.readline()).decode().split():
        match line:
            case ["status"]:  # answered at once, even while connecting
                emit({"status": fleet.open, "lost": fleet.lost, "errors": fleet.errors})
            case ["arm", round_no, timeout_s]:
                await connecting
                await run_round(fleet, int(round_no), float(timeout_s))
            case ["check"]:
                emit(check(fleet))
            case ["quit"]:
                break
            case _:
                emit({"error": f"unknown command {line!r}"})
    connecting.cancel()
    for dev in fleet.conns:
        if dev is not None:
            dev.reset()
    await asyncio.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", choices=sorted(DIALECTS), required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--source", default="127.0.0.2", help="local address to connect from")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--first-id", type=int, default=0, help="device number of the first one")
    args = ap.parse_args(argv)
    uvloop.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

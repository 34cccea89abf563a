"""``hopcast live gateway``: worker processes on one port (SO_REUSEPORT) fed through a real
Redis; devices on every worker get a trigger the router publishes; SIGTERM ends them cleanly."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from hopcast.cli import cli
from hopcast.config import LIVE_SECRET_ENV
from hopcast.durations import now_us
from hopcast.live import tokens
from hopcast.live.fanout import GLOBAL_CHANNEL, Router
from hopcast.live.producer import Trigger
from hopcast.live.redisfan import RedisTransport
from hopcast.live.schedule import State
from hopcast.sdk.client import DeviceClient

SECRET = bytes(range(100, 132))
WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Gateways:
    """``hopcast live gateway`` in a subprocess, its output collected line by line."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, LIVE_SECRET_ENV: SECRET.hex(), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from hopcast.cli import main; main()",
                "live",
                "gateway",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, count: int, needle: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while sum(needle in line for line in self.lines) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("gateway workers did not start:\n" + "\n".join(self.lines))
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(5)


@pytest.fixture
def gateways() -> Iterator[list[Gateways]]:
    started: list[Gateways] = []
    yield started
    for g in started:
        g.stop()


def test_two_workers_share_one_port_and_every_device_gets_the_trigger(
    redis_url: str, redis_prefix: str, gateways: list[Gateways]
) -> None:
    port, metrics = free_port(), free_port()
    g = Gateways(
        [
            *("--redis", redis_url, "--port", str(port), "--workers", "2"),
            *("--node-id", "gw", "--metrics-port", str(metrics), "--prefix", redis_prefix),
        ]
    )
    gateways.append(g)
    g.wait_for(2, f"on ws://127.0.0.1:{port}")
    assert any("gateway node gw-0" in line for line in g.lines)
    assert any("gateway node gw-1" in line for line in g.lines)

    async def main() -> None:
        transport = RedisTransport(redis_url, prefix=redis_prefix)
        router = Router(transport)
        await transport.flush()
        stop = asyncio.Event()
        devices: list[DeviceClient] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            # The kernel spreads connections over the two workers by address hash: connect
            # until both have devices (each new device has a new source port).
            while {d.protocol.node for d in devices} != {"gw-0", "gw-1"}:
                assert len(devices) < 64, "every device landed on one worker"
                name = f"tv-{len(devices)}"
                token = tokens.issue(SECRET, name, (GLOBAL_CHANNEL,), now_us(), 3_600_000_000)
                device = DeviceClient(
                    f"ws://127.0.0.1:{port}", token, (GLOBAL_CHANNEL,), rng=random.Random(name)
                )
                devices.append(device)
                tasks.append(asyncio.create_task(device.run(stop)))
                await _until(lambda: devices[-1].protocol.node is not None)
            await _until(lambda: all(d.stats.state_syncs == 1 for d in devices))
            router.publish(Trigger("final", State.LIVE, 7, now_us()))
            await _until(lambda: all([a.version for a in d.stats.applied] == [7] for d in devices))
            # each worker serves its metrics on metrics-port + i
            for i in (0, 1):
                body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics + i}/metrics")
                assert "hopcast_gateway_devices" in body
                assert "hopcast_redis_mirror_frames_total" in body
            # SIGTERM: every worker says bye (restart) to its devices and exits 0
            assert await asyncio.to_thread(g.stop) == 0
            await _until(lambda: all(d.stats.byes >= 1 for d in devices))
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await transport.close()

    asyncio.run(main())


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


async def _until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT_S)


def test_a_gateway_needs_the_token_secret(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LIVE_SECRET_ENV, raising=False)
    result = CliRunner().invoke(cli, ["live", "gateway", "--redis", redis_url])
    assert result.exit_code != 0
    assert LIVE_SECRET_ENV in result.output


def test_a_gateway_without_redis_exits_with_an_error(gateways: list[Gateways]) -> None:
    g = Gateways(["--redis", "redis://127.0.0.1:1/0", "--port", str(free_port())])
    gateways.append(g)
    assert g.proc.wait(WAIT_S) != 0
    g._reader.join(5)
    assert any("cannot reach Redis" in line for line in g.lines), g.lines

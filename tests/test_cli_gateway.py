"""``hopcast live gateway``: worker processes on one port (SO_REUSEPORT) fed through a real
Redis; devices on every worker get a trigger the router publishes; SIGTERM ends them cleanly."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from childproc import Child
from hopcast.cli import cli
from hopcast.config import LIVE_SECRET_ENV
from hopcast.durations import now_us
from hopcast.errors import TokenError
from hopcast.live import tokens
from hopcast.live.fanout import GLOBAL_CHANNEL, Router
from hopcast.live.producer import Trigger
from hopcast.live.redisfan import RedisTransport
from hopcast.live.schedule import State
from hopcast.ports import PortReservation
from hopcast.sdk.client import DeviceClient

SECRET = bytes(range(100, 132))
#: Bound on a device-side wait (a trigger, a bye); a healthy run needs milliseconds.
WAIT_S = 20.0
#: A worker's start-up line: its name, the port it serves devices on and its metrics port.
READY = r"gateway node (\S+) on ws://127\.0\.0\.1:(\d+) \(pid \d+(?:, metrics on :(\d+))?\)"


class Gateways(Child):
    """``hopcast live gateway`` in a subprocess, its output collected line by line."""

    def __init__(self, args: list[str]) -> None:
        command = [sys.executable, "-c", "from hopcast.cli import main; main()", "live", "gateway"]
        super().__init__([*command, *args], {LIVE_SECRET_ENV: SECRET.hex()})

    def ready(self, workers: int) -> dict[str, tuple[int, int | None]]:
        """Wait for every worker's start-up line: ``{name: (port, metrics port)}``."""
        found = self.wait_for(READY, f"{workers} gateway workers listening", count=workers)
        return {m[1]: (int(m[2]), int(m[3]) if m[3] is not None else None) for m in found}


@pytest.fixture
def gateways() -> Iterator[list[Gateways]]:
    started: list[Gateways] = []
    yield started
    for g in started:
        if g.proc.poll() is None:
            g.kill()


def test_two_workers_share_one_port_and_every_device_gets_the_trigger(
    redis_url: str, redis_prefix: str, gateways: list[Gateways]
) -> None:
    g = Gateways(
        [
            *("--redis", redis_url, "--port", "0", "--workers", "2"),
            *("--node-id", "gw", "--metrics-port", "0", "--prefix", redis_prefix),
        ]
    )
    gateways.append(g)
    workers = g.ready(2)
    assert set(workers) == {"gw-0", "gw-1"}
    # one free port picked for both workers, and a metrics port of each one's own
    (port,) = {port for port, _ in workers.values()}
    metrics = [m for _, m in workers.values()]
    assert None not in metrics and len(set(metrics)) == 2

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
            # each worker serves its metrics on the port its start-up line named
            for metrics_port in metrics:
                body = await asyncio.to_thread(_get, f"http://127.0.0.1:{metrics_port}/metrics")
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
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
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


def test_a_gateway_without_redis_exits_with_an_error(
    gateways: list[Gateways], reserved_port: PortReservation
) -> None:
    # nothing listens on the reserved port, and nothing can start to: Redis is refused there
    unreachable = f"redis://127.0.0.1:{reserved_port.port}/0"
    g = Gateways(["--redis", unreachable, "--port", "0"])
    gateways.append(g)
    g.wait_for("cannot reach Redis", "the gateway's error about Redis")
    assert g.proc.wait(WAIT_S) != 0


def test_a_subject_revoked_with_the_cli_is_closed_on_every_worker_within_seconds(
    redis_url: str, redis_prefix: str, gateways: list[Gateways]
) -> None:
    g = Gateways(
        [
            *("--redis", redis_url, "--port", "0", "--workers", "2", "--node-id", "gw"),
            *("--prefix", redis_prefix, "--max-per-device", "64"),
        ]
    )
    gateways.append(g)
    (port,) = {port for port, _ in g.ready(2).values()}

    async def main() -> None:
        stop = asyncio.Event()
        devices: list[DeviceClient] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            # every device is the same subject; connect until both workers hold some
            while {d.protocol.node for d in devices} != {"gw-0", "gw-1"}:
                assert len(devices) < 64, "every device landed on one worker"
                token = tokens.issue(SECRET, "tv", (GLOBAL_CHANNEL,), now_us(), 3_600_000_000)
                device = DeviceClient(
                    f"ws://127.0.0.1:{port}", token, (GLOBAL_CHANNEL,), rng=random.Random(1)
                )
                devices.append(device)
                tasks.append(asyncio.create_task(device.run(stop)))
                await _until(lambda: devices[-1].protocol.node is not None)
            revoke = ["live", "revoke", "--subject", "tv", "--redis", redis_url]
            result = await asyncio.to_thread(
                CliRunner().invoke, cli, [*revoke, "--prefix", redis_prefix, "--json"]
            )
            assert result.exit_code == 0, result.output
            assert '"kind": "subject"' in result.output or '"kind":"subject"' in result.output
            started = asyncio.get_running_loop().time()
            # without refresh_token each client stops on `bye revoked`
            outcomes = await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), WAIT_S
            )
            took = asyncio.get_running_loop().time() - started
            assert all(isinstance(o, TokenError) and o.problem == "revoked" for o in outcomes), (
                outcomes
            )
            assert took < 5.0, f"revocation took {took:.1f} s to reach every worker"
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_a_gateway_node_serves_wss_that_a_device_verifies_against_its_certificate(
    redis_url: str, redis_prefix: str, gateways: list[Gateways], tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "/usr/bin/openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=WAIT_S,
    )  # fmt: skip
    g = Gateways(
        [
            *("--redis", redis_url, "--port", "0", "--prefix", redis_prefix),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
        ]
    )
    gateways.append(g)
    (found,) = g.wait_for(r"gateway node \S+ on wss://127\.0\.0\.1:(\d+)", "the wss start-up line")
    port = int(found[1])

    async def main() -> int:
        token = tokens.issue(SECRET, "tv", (GLOBAL_CHANNEL,), now_us(), 3_600_000_000)
        device = DeviceClient(
            f"wss://127.0.0.1:{port}",
            token,
            (GLOBAL_CHANNEL,),
            rng=random.Random(1),
            ca_file=str(cert),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(device.run(stop))
        try:
            await _until(lambda: device.stats.state_syncs == 1)
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
        return device.stats.welcomes

    assert asyncio.run(main()) == 1
    assert g.stop() == 0

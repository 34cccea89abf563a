"""``hopcast serve --gateway-port`` with the gateway's device limits, over a real process and raw
WebSocket clients: ``--max-per-device`` caps a subject (the newest refused) and a device that
closes and reopens quickly is never locked out by a leaked count; ``--token-leeway`` is the
window after ``exp``; both flags take the same names and checks as ``hopcast live gateway``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect

from childproc import Child
from hopcast.cli import cli
from hopcast.config import LIVE_SECRET_ENV
from hopcast.durations import HOUR, SECOND, now_us
from hopcast.live import tokens
from hopcast.ports import PortReservation

SECRET = bytes(range(32))
#: Bound on every wait for the server; a healthy one answers in milliseconds.
WAIT_S = 20.0
#: Close-and-reopen rounds for one device: far more than its cap, so a count leaked per round
#: would lock it out.
CHURN = 25


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``hopcast serve`` with ``--max-per-device 2 --token-leeway 0s``; yields the gateway URL."""
    with PortReservation() as gateway:
        child = Child(
            [
                *(sys.executable, "-c", "from hopcast.cli import main; main()"),
                *("--store", str(tmp_path / "store"), "serve", "--insecure", "--port", "0"),
                *("--gateway-port", str(gateway.port), "--max-per-device", "2"),
                *("--token-leeway", "0s"),
            ],
            env={LIVE_SECRET_ENV: SECRET.hex()},
        )
        try:
            child.wait_for(r"Application startup complete", "the API and its gateway to listen")
            yield f"ws://127.0.0.1:{gateway.port}"
        finally:
            child.stop()


def token(device: str, issued: int | None = None, ttl: int = HOUR) -> str:
    return tokens.issue(SECRET, device, ("global",), now_us() if issued is None else issued, ttl)


async def hello(url: str, tok: str) -> tuple[ClientConnection, dict[str, Any]]:
    """Open a connection, send ``hello``, return it with the first answer."""
    ws = await connect(url)
    await ws.send(json.dumps({"type": "hello", "token": tok, "client": "t/1", "protocol": 1}))
    async with asyncio.timeout(WAIT_S):
        first = json.loads(await ws.recv())
    return ws, first


def test_serve_caps_a_device_at_max_per_device_and_a_device_reopening_fast_is_never_locked_out(
    served: str,
) -> None:
    async def main() -> None:
        a, first = await hello(served, token("tv"))
        b, second = await hello(served, token("tv"))
        c, third = await hello(served, token("tv"))
        assert first["type"] == second["type"] == "welcome"
        assert (third["type"], third["reason"]) == ("bye", "too_many_connections")
        other, welcome = await hello(served, token("phone"))  # another subject is not affected
        assert welcome["type"] == "welcome"
        for ws in (b, c, other):
            await ws.close()
        for round_ in range(CHURN):  # close and reopen at once, every way a client can
            ws, answer = await hello(served, token("tv"))
            assert answer["type"] == "welcome", (round_, answer)
            if round_ % 2:
                await ws.close()
            else:
                ws.transport.abort()  # no closing handshake: a dropped network
                await ws.wait_closed()
        # Once the server has noticed the aborted ones, the cap holds exactly again.
        async with asyncio.timeout(WAIT_S):
            while True:
                d, answer = await hello(served, token("tv"))
                if answer["type"] == "welcome":
                    break
                await d.close()
                await asyncio.sleep(0.05)
        e, refused = await hello(served, token("tv"))
        assert refused["reason"] == "too_many_connections"
        for ws in (a, d, e):
            await ws.close()

    asyncio.run(main())


def test_serve_takes_the_token_leeway_a_token_expired_a_second_ago_is_refused_at_zero(
    served: str,
) -> None:
    async def main() -> None:
        expired = token("tv", issued=now_us() - HOUR - SECOND)  # the default 30 s would pass it
        ws, answer = await hello(served, expired)
        assert answer["type"] == "error" and "expired" in answer["reason"], answer
        await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "command", [["serve", "--insecure"], ["live", "gateway", "--redis", "redis://x:1"]]
)
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--token-leeway", "2h"], "at most 1h"),
        (["--token-leeway", "soon"], "not a duration"),
        (["--max-per-device", "0"], "0 is not in the range x>=1"),
    ],
)
def test_serve_and_live_gateway_refuse_the_same_bad_device_limits(
    command: list[str], flags: list[str], message: str, tmp_path: Path
) -> None:
    args = ["--store", str(tmp_path / "store"), *command, "--gateway-port", "1", *flags]
    if command[0] != "serve":
        args.remove("--gateway-port")
        args.remove("1")
    result = CliRunner().invoke(cli, args, env={LIVE_SECRET_ENV: SECRET.hex()})
    assert result.exit_code == 2, result.output
    assert message in result.output

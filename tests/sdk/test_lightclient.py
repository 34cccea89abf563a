"""The simulator's light device: the protocol core over a minimal WebSocket connection, against
the real gateway (triggers, a restart with ``bye``) and against a plain ``websockets`` server
(fragments, pings, close, masking)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from hopcast.durations import HOUR, now_us
from hopcast.errors import ConfigError
from hopcast.kv.memory import MemoryKV
from hopcast.live import tokens
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.schedule import Create, EndNow, StartNow
from hopcast.live.service import LiveService
from hopcast.sdk.lightclient import LightClient, _Wire

SECRET = bytes(range(32))
WAIT_S = 20.0


async def _until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT_S)


def test_light_devices_follow_triggers_and_come_back_after_a_gateway_restart() -> None:
    service = LiveService(MemoryKV())
    router = Router(InProcessTransport())
    service.add_sink(router.publish_all)

    async def main() -> None:
        gateway = Gateway(router, SECRET, node_id="gw-1", retry_spread_ms=500)
        server = await gateway.serve("127.0.0.1", 0)
        port = server.port
        stop = asyncio.Event()
        clients = [
            LightClient(
                f"ws://127.0.0.1:{port}",
                tokens.issue(SECRET, f"tv-{i}", ("global",), now_us(), HOUR),
                ("global",),
                rng=random.Random(i),
                local_addr=("127.0.0.3", 0),
            )
            for i in range(5)
        ]
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await _until(lambda: gateway.subscriber_count("global") == 5)
            service.command(Create("final", "The Final", now_us() + HOUR, None, 0), now_us())
            service.command(StartNow("final"), now_us())

            def stages() -> list[list[str]]:
                return [[a.stage for a in c.stats.applied] for c in clients]

            await _until(lambda: all(s[-1:] == ["live"] for s in stages()))
            before = stages()
            # the gateway restarts: bye restart, then a new gateway on the same port
            await server.close()
            await _until(lambda: all(c.stats.byes == 1 for c in clients))
            gateway = Gateway(router, SECRET, node_id="gw-2")
            server = await gateway.serve("127.0.0.1", port)
            await _until(lambda: all(c.stats.welcomes == 2 for c in clients))
            service.command(EndNow("final"), now_us())
            await _until(lambda: all(s[-1:] == ["ended"] for s in stages()))
            assert stages() == [[*s, "ended"] for s in before]  # nothing applied twice
            for c in clients:
                assert c.stats.duplicates == 0 and c.stats.protocol_errors == 0
                assert c.protocol.node == "gw-2"
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
            await server.close()

    asyncio.run(main())


def test_the_wire_joins_fragments_answers_pings_and_masks_what_it_sends() -> None:
    received: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.send(["frag", "ment", "ed"])  # one message in three frames
        await ws.ping(b"are you there")
        await ws.send("whole")
        received.append(str(await ws.recv()))  # websockets rejects unmasked client frames
        await ws.close()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            messages: list[bytes] = []
            wire = _Wire(f"127.0.0.1:{port}", "/", messages.append)
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: wire, "127.0.0.1", port)
            await asyncio.wait_for(wire.opened, WAIT_S)
            await _until(lambda: len(messages) == 2)
            wire.send(b"x" * 300)  # a 16-bit length
            await asyncio.wait_for(wire.closed, WAIT_S)
            assert messages == [b"fragmented", b"whole"]
        assert received == ["x" * 300]

    asyncio.run(main())


def test_only_ws_urls_are_accepted() -> None:
    with pytest.raises(ConfigError):
        LightClient("wss://example.com", "t", (), rng=random.Random(0))

"""``hopcast serve --gateway-port P --redis URL``: the API's live triggers reach devices on its
own gateway and, through a real Redis, devices on a gateway node elsewhere."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hopcast.api.server import LIVE_SECRET_ENV, make_server
from hopcast.durations import now_us
from hopcast.graphdb import Graph
from hopcast.live import tokens
from hopcast.live.gateway import Gateway
from hopcast.live.redisfan import Keys, connect
from hopcast.live.redisnode import RedisMirror
from hopcast.ports import listening_socket
from hopcast.sdk.client import DeviceClient

WAIT_S = 20.0
SECRET = bytes(range(200, 232))
CHANNELS = ("event:final",)


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=WAIT_S) as r:
        return json.loads(r.read())


async def _until_async(check: Callable[[], Awaitable[int]]) -> None:
    async def poll() -> None:
        while not await check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT_S)


async def _until(check: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT_S)


def test_the_api_publishes_triggers_to_its_gateway_and_through_redis(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LIVE_SECRET_ENV, SECRET.hex())
    graph = Graph.open(tmp_path / "store", sync=False)
    sock = listening_socket("127.0.0.1", 0)  # the API's; the gateway takes a free port (0)
    server = make_server(
        graph, "127.0.0.1", 0, log_level="warning", gateway_port=0, redis_url=redis_url
    )
    server.config.lifespan = "on"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def devices() -> list[list[str]]:
        # the server wrote the router's epoch at start-up, before any trigger
        client = connect(redis_url)
        try:
            await _until_async(lambda: client.exists(Keys().router))
        finally:
            await client.aclose()
        mirror = RedisMirror(redis_url)
        await mirror.start()
        assert mirror.epoch != 0
        node = await Gateway(mirror, SECRET, node_id="remote").serve("127.0.0.1", 0)
        stop = asyncio.Event()
        clients = []
        own = server.config.app.app.state.gateway_url  # the app, inside its Redis transport
        for i, url in enumerate((own, f"ws://127.0.0.1:{node.port}")):
            token = tokens.issue(SECRET, f"tv-{i}", CHANNELS, now_us(), 3_600_000_000)
            clients.append(DeviceClient(url, token, CHANNELS, rng=random.Random(i)))
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await _until(lambda: all(c.stats.state_syncs >= 1 for c in clients))
            event = {"id": "final", "title": "The Final", "starts_at": "1h"}
            await asyncio.to_thread(_post, base + "/v1/live/events", event)
            await asyncio.to_thread(_post, base + "/v1/live/events/final/start", {})
            await _until(lambda: all(len(c.stats.applied) >= 1 for c in clients))
            # one device on the API's own gateway, one on the node fed through Redis
            assert [c.protocol.node == "remote" for c in clients] == [False, True]
            # both took the trigger itself after one state on subscribe, in the same epoch
            assert [c.stats.state_syncs for c in clients] == [1, 1]
            assert len({c.protocol.positions["event:final"] for c in clients}) == 1
            return [[a.stage for a in c.stats.applied] for c in clients]
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await node.close()
            await mirror.close()

    try:
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the API (and its gateway) did not finish starting"
        assert asyncio.run(devices()) == [["live"], ["live"]]
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()
        graph.close()

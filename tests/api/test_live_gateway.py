"""The API server runs the live gateway beside its routes: a device takes a dev token from the
API, connects to the gateway, and receives the triggers of commands made over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hopcast.api.server import LIVE_SECRET_ENV, live_secret, make_server
from hopcast.errors import ConfigError
from hopcast.graphdb import Graph
from hopcast.sdk.client import DeviceClient

#: Upper bound on any wait; a healthy run needs well under a second.
WAIT_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_a_device_gets_a_token_connects_and_sees_the_operators_commands(tmp_path: Path) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    port, gw_port = _free_port(), _free_port()
    server = make_server(
        graph, "127.0.0.1", port, log_level="warning", gateway_port=gw_port, dev_tokens=True
    )
    server.config.lifespan = "on"
    thread = threading.Thread(target=server.run, daemon=True)
    base = f"http://127.0.0.1:{port}"
    try:
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        issued = _post(base + "/v1/live/tokens", {"device": "tv-1", "channels": ["event:final"]})
        assert issued["url"] == f"ws://127.0.0.1:{gw_port}"

        async def fetch(ref: str) -> bytes | None:  # the SDK's fallback, from the real origin
            event, stage = ref.split("/")
            url = f"{base}/v1/live/events/{event}/payload?stage={stage}&segment=adult.US.en.b0"
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())

        async def device() -> list[str]:
            stop = asyncio.Event()
            client = DeviceClient(
                issued["url"],
                issued["token"],
                ("event:final",),
                rng=random.Random(1),
                fetch=fetch,
                fallback_window_s=0.0,
            )
            task = asyncio.create_task(client.run(stop))
            # subscribed once the gateway has answered the subscribe with the channel's state
            await asyncio.wait_for(_until(lambda: client.stats.state_syncs >= 1), WAIT_S)
            await asyncio.to_thread(
                _post,
                base + "/v1/live/events",
                {"id": "final", "title": "The Final", "starts_at": "1h"},
            )
            await asyncio.to_thread(_post, base + "/v1/live/events/final/materialise", {})
            await asyncio.to_thread(_post, base + "/v1/live/events/final/start", {})
            await asyncio.wait_for(_until(lambda: len(client.stats.applied) >= 1), WAIT_S)
            # the trigger named the live payload; the device lacked it and fetched it once
            await asyncio.wait_for(_until(lambda: "final/live" in client.cache), WAIT_S)
            assert client.stats.fallback_fetches == 1 and client.stats.fallback_failures == 0
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
            return [a.stage for a in client.stats.applied]

        assert asyncio.run(device()) == ["live"]
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        graph.close()


async def _until(check: object) -> None:
    while not check():  # type: ignore[operator]
        await asyncio.sleep(0.01)


def test_without_dev_tokens_the_token_route_does_not_exist(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    graph = Graph.open(tmp_path / "store", sync=False)
    server = make_server(graph, "127.0.0.1", 0, gateway_port=0)
    with TestClient(server.config.app) as client:
        r = client.post("/v1/live/tokens", json={"device": "x", "channels": ["global"]})
        assert r.status_code in (404, 405)
    graph.close()


def test_the_live_secret_comes_from_the_environment_as_hex(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LIVE_SECRET_ENV, "ab" * 32)
    assert live_secret() == bytes([0xAB]) * 32
    monkeypatch.setenv(LIVE_SECRET_ENV, "zz")
    with pytest.raises(ConfigError):
        live_secret()
    monkeypatch.setenv(LIVE_SECRET_ENV, "ab" * 8)
    with pytest.raises(ConfigError):
        live_secret()
    monkeypatch.delenv(LIVE_SECRET_ENV)
    assert len(live_secret()) == 32

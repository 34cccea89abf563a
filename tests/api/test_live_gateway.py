"""The API server runs the live gateway beside its routes: a device takes a dev token from the
API, connects to the gateway, and receives the triggers of commands made over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from hopcast.api.server import LIVE_SECRET_ENV, live_secret, make_server
from hopcast.errors import ConfigError
from hopcast.graphdb import Graph
from hopcast.ports import listening_socket
from hopcast.sdk.client import DeviceClient

#: Upper bound on any wait; a healthy run needs well under a second.
WAIT_S = 20.0


def _post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=WAIT_S) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_a_device_gets_a_token_connects_and_sees_the_operators_commands(tmp_path: Path) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    sock = listening_socket("127.0.0.1", 0)  # the API's; the gateway takes a free port (0)
    server = make_server(
        graph, "127.0.0.1", 0, log_level="warning", gateway_port=0, dev_tokens=True
    )
    server.config.lifespan = "on"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the API (and its gateway) did not finish starting"
        issued = _post(base + "/v1/live/tokens", {"device": "tv-1", "channels": ["event:final"]})
        # the token names where the gateway listens: the free port it bound
        assert issued["url"] == server.config.app.state.gateway_url
        assert issued["url"].startswith("ws://127.0.0.1:") and not issued["url"].endswith(":0")

        async def fetch(ref: str) -> bytes | None:  # the SDK's fallback, from the real origin
            event, stage = ref.split("/")
            url = f"{base}/v1/live/events/{event}/payload?stage={stage}&segment=adult.US.en.b0"
            return await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=WAIT_S).read()
            )

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
            await _until(lambda: client.stats.state_syncs >= 1, "the subscribe's state")
            await asyncio.to_thread(
                _post,
                base + "/v1/live/events",
                {"id": "final", "title": "The Final", "starts_at": "1h"},
            )
            await asyncio.to_thread(_post, base + "/v1/live/events/final/materialise?wait=60", {})
            await asyncio.to_thread(_post, base + "/v1/live/events/final/start", {})
            await _until(lambda: len(client.stats.applied) >= 1, "the start trigger")
            # the trigger named the live payload; the device lacked it and fetched it once
            await _until(lambda: "final/live" in client.cache, "the fallback fetch of final/live")
            assert client.stats.fallback_fetches == 1 and client.stats.fallback_failures == 0
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
            return [a.stage for a in client.stats.applied]

        assert asyncio.run(device()) == ["live"]
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()
        graph.close()


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` until true; fail naming ``what`` after :data:`WAIT_S`."""

    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        raise AssertionError(f"the device did not get {what} within {WAIT_S:g} s") from None


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

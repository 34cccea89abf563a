"""Browser tests: a real hopcast API + live gateway on free ports, driven in Debian's Chromium.

The server is the production wiring of ``hopcast serve --gateway-port P --dev-tokens``
(``api/server.py`` ``make_server``): a :class:`LiveService` whose triggers go through a
:class:`Router` to a :class:`Gateway` in the same event loop, the app from :func:`create_app`
serving the pages at ``/web/`` — built here piece by piece only to give the gateway a one-second
heartbeat, so a dropped connection is noticed in 2.5 s instead of 75 s.

Chromium is Debian's (``deploy/chromium.sh``), launched headless by Playwright for Python with a
fresh profile; ``playwright install`` is never needed. A missing browser or package fails the
tests with what to run; they are never skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from hopcast.api.app import create_app
from hopcast.api.live import GatewayBinding
from hopcast.graphdb import Graph
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.service import LiveService

CHROMIUM = os.environ.get("HOPCAST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Gateway heartbeat in these tests: a device declares a silent connection dead after 2.5 of them.
HEARTBEAT_S = 1.0
#: Upper bound on a wait for the page; a healthy run needs a fraction of it.
WAIT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Hopcast:
    """A running API + gateway, with small helpers for the live routes."""

    base: str
    gateway_port: int
    service: LiveService

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data, {"content-type": "application/json"}, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from None
        return json.loads(raw) if raw else None

    def create_event(self, event: str, title: str, starts_at: str = "10m") -> dict[str, Any]:
        """Schedule an event and publish its payloads (the fixture rows, segment ``all``)."""
        doc = self.request(
            "POST", "/v1/live/events", {"id": event, "title": title, "starts_at": starts_at}
        )
        self.request("POST", f"/v1/live/events/{event}/materialise", {"segments": []})
        return doc  # type: ignore[no-any-return]

    def command(self, event: str, verb: str, body: Any = None) -> dict[str, Any]:
        return self.request("POST", f"/v1/live/events/{event}/{verb}", body or {})  # type: ignore[no-any-return]

    def event(self, event: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/live/events/{event}")  # type: ignore[no-any-return]


@pytest.fixture
def hopcast(tmp_path: Path) -> Iterator[Hopcast]:
    graph = Graph.open(tmp_path / "store", sync=False)
    port, gateway_port = _free_port(), _free_port()
    service = LiveService(graph.store.kv)
    router = Router(InProcessTransport(), payload_for=service.payload_for)
    service.add_sink(router.publish_all)
    secret = secrets.token_bytes(32)
    gateway = Gateway(router, secret, node_id="web-test", heartbeat_s=HEARTBEAT_S)
    binding = GatewayBinding(gateway, "127.0.0.1", gateway_port, secret, dev_tokens=True)
    app = create_app(graph, live=service, gateway=binding)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the API did not start"
    try:
        yield Hopcast(f"http://127.0.0.1:{port}", gateway_port, service)
    finally:
        server.should_exit = True
        thread.join(20)
        graph.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser tests need Playwright for Python: .venv/bin/pip install playwright "
            "(part of the dev extra)",
            pytrace=False,
        )
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the browser tests need Chromium at {CHROMIUM}: run deploy/chromium.sh "
            "(apt-get install chromium) or set HOPCAST_CHROMIUM",
            pytrace=False,
        )
    with sync_playwright() as p:
        # launch() gives every run a fresh temporary profile (user-data-dir)
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Where a test saves its screenshots: a pytest tmp dir, printed so a run shows where they
    are, and also copied to ``$HOPCAST_WEB_ARTIFACTS`` when set (e.g. by CI, to upload)."""
    path = tmp_path / "screenshots"
    path.mkdir()
    print(f"\nscreenshots of {request.node.name}: {path}")
    yield path
    target = os.environ.get("HOPCAST_WEB_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in path.glob("*.png"):
            shutil.copy(png, Path(target) / f"{request.node.name}-{png.name}")

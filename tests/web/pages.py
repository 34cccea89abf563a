"""What the browser tests share: a real hopcast API + live gateway on reserved ports, and
helpers to open the device page and the console in it.

The server is the production wiring of ``hopcast serve --gateway-port P --dev-tokens``
(``api/server.py`` ``make_server``): a :class:`LiveService` whose triggers go through a
:class:`Router` to a :class:`Gateway` in the same event loop, the app from :func:`create_app`
serving the pages at ``/web/`` and the console routes — built here piece by piece only to give
the gateway a one-second heartbeat, so a dropped connection is noticed in 2.5 s instead of 75 s.
Authentication is on, as in ``hopcast run``: an operator key (:attr:`Hopcast.key`) that the
helpers send and that :func:`open_console` hands to the console in the URL fragment; the device
page uses the device token it is issued.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from hopcast.api.app import create_app
from hopcast.api.browser import LOOPBACK_HOSTS
from hopcast.api.live import GatewayBinding
from hopcast.api.policy import Security
from hopcast.auth import KeyFile
from hopcast.durations import now_us
from hopcast.graphdb import Graph
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.service import LiveService
from hopcast.ports import PortReservation, listening_socket

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
#: A restarting gateway spreads its devices' returns over this (the default is 10 s, for a fleet).
RETRY_SPREAD_MS = 2_000
#: Gateway token leeway after ``exp`` in these tests (30 s by default): a page that stopped
#: refreshing is closed within a second of its token's expiry.
TOKEN_LEEWAY_S = 1.0
#: Upper bound on a wait for the page; a healthy run needs a fraction of it.
WAIT_MS = 30_000


#: Upper bound on the API's start-up (its lifespan starts the gateway); a healthy one takes
#: milliseconds.
START_S = 20.0


@dataclass
class Ports:
    """The API's and the gateway's ports, reserved (:class:`hopcast.ports.PortReservation`):
    a restarted server binds the same two, and nothing else can take them meanwhile (a page
    retrying the gateway while it is down must find it there again, not someone else)."""

    api: PortReservation
    gateway: PortReservation

    @classmethod
    def reserve(cls) -> Ports:
        return cls(PortReservation(), PortReservation())

    def close(self) -> None:
        self.api.close()
        self.gateway.close()


@dataclass
class Hopcast:
    """A running API + gateway, with small helpers for the live routes."""

    base: str
    port: int
    gateway_port: int
    service: LiveService
    #: An operator key of the server's key file (the console's).
    key: str
    #: An admin key: what the helpers below send (they also write the graph).
    admin: str

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {self.admin}"}
        req = urllib.request.Request(self.base + path, data, headers, method=method)
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
        self.request("POST", f"/v1/live/events/{event}/materialise?wait=60", {"segments": []})
        return doc  # type: ignore[no-any-return]

    def command(self, event: str, verb: str, body: Any = None) -> dict[str, Any]:
        return self.request("POST", f"/v1/live/events/{event}/{verb}", body or {})  # type: ignore[no-any-return]

    def event(self, event: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/live/events/{event}")  # type: ignore[no-any-return]


@contextmanager
def running_hopcast(store: Path, ports: Ports | None = None) -> Iterator[Hopcast]:
    """Start the API and gateway on loopback (on ``ports``, or ports reserved for this run) over
    the LMDB graph in ``store``; stop them on exit. Every start draws a new token secret and the
    router a new epoch, as a restarted ``hopcast serve`` does."""
    own = ports is None
    held = Ports.reserve() if ports is None else ports
    try:
        with _serving(store, held) as running:
            yield running
    finally:
        if own:
            held.close()


@contextmanager
def _serving(store: Path, ports: Ports) -> Iterator[Hopcast]:
    graph = Graph.open(store, sync=False)
    port, gateway_port = ports.api.port, ports.gateway.port
    service = LiveService(graph.store.kv)
    router = Router(InProcessTransport(), payload_for=service.payload_for)
    service.add_sink(router.publish_all)
    secret = secrets.token_bytes(32)
    gateway = Gateway(
        router,
        secret,
        node_id="web-test",
        heartbeat_s=HEARTBEAT_S,
        retry_spread_ms=RETRY_SPREAD_MS,
        token_leeway_s=TOKEN_LEEWAY_S,
    )
    binding = GatewayBinding(gateway, "127.0.0.1", gateway_port, secret, dev_tokens=True)
    keys = KeyFile(store.parent / "keys.json")
    _, key = keys.create("web console", ["operator"], now_us())
    _, admin = keys.create("web tests", ["admin"], now_us())
    security = Security(keys=keys, allowed_hosts=LOOPBACK_HOSTS)
    app = create_app(graph, live=service, gateway=binding, security=security)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    sock = listening_socket("127.0.0.1", port)  # on the reservation (SO_REUSEADDR)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + START_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, f"the API (and its gateway) did not start within {START_S:g} s"
        yield Hopcast(f"http://127.0.0.1:{port}", port, gateway_port, service, key, admin)
    finally:
        server.should_exit = True
        thread.join(START_S)
        sock.close()
        graph.close()


#: The member the device page plays (a profile id of the demo company).
MEMBER = "profile:0-0"


def device_state(page: Any, expr: str) -> Any:
    """Evaluate ``expr`` over the device page's ``window.hopcastDevice`` (as ``d``)."""
    return page.evaluate(f"() => {{ const d = window.hopcastDevice; return d && ({expr}); }}")


def open_device(context: Any, hopcast: Hopcast, event: str, *, hash: str = "") -> Any:
    """Open the device page and wait until it is connected and holds ``event``'s payloads."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{hopcast.base}/web/device.html?member={MEMBER}{hash}")
    page.wait_for_function(
        f"""() => {{
            const d = window.hopcastDevice;
            return d && d.status === "open"
                && (d.prefetched[{event!r}] || []).includes("live")
                && d.cacheKeys.includes({event + "/live"!r})
                && d.artworkKeys.includes("art/live/{event}/live.jpg");
        }}""",
        timeout=WAIT_MS,
    )
    return page


def open_console(context: Any, hopcast: Hopcast, *, key: str | None = "") -> Any:
    """Open the operator console with an API key in the URL fragment (``hopcast.key`` unless
    ``key`` is given; None: no key). Its uncaught errors collect in ``page.errors``."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    given = hopcast.key if key == "" else key
    fragment = "" if given is None else f"#key={given}"
    page.goto(f"{hopcast.base}/web/console.html{fragment}")
    return page


#: Words a page must never show: a template or a DOM call given an absent value prints them.
PLACEHOLDERS = frozenset({"null", "undefined", "NaN", "[object Object]"})


def assert_no_placeholders(page: Any) -> None:
    """The page's visible text holds none of :data:`PLACEHOLDERS` as a word."""
    text = page.inner_text("body")
    words = set(text.replace("\n", " ").split())
    shown = words & PLACEHOLDERS
    assert not shown, f"the page shows {sorted(shown)}: {text}"

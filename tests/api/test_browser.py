"""A web page in the operator's browser cannot use the API: the cross-origin requests of issue 12,
a foreign ``Host`` (DNS rebinding), CORS closed unless configured, and the pages' security
headers. Over real HTTP: uvicorn on a loopback port, as ``hopcast serve`` runs it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from api.contract import served
from hopcast import Graph
from hopcast.api import create_app
from hopcast.api.browser import LOOPBACK_HOSTS, host_name
from hopcast.api.policy import Security
from hopcast.auth import KeyFile
from hopcast.durations import HOUR, MINUTE, now_us
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService

EVIL = "https://evil.example"
FRIEND = "https://console.example"
WEB = Path(__file__).resolve().parents[2] / "src" / "hopcast" / "web"


@dataclass
class Api:
    base: str
    live: LiveService
    operator: str

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator}"}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    graph = Graph.open()
    live = LiveService(graph.store.kv)
    now = now_us()
    live.command(Create("X", "Match X", now + HOUR, now + 3 * HOUR, 30 * MINUTE), now)
    keys = KeyFile(tmp_path / "keys.json")
    _, operator = keys.create("console", ["operator"], now)
    security = Security(keys=keys, allowed_hosts=LOOPBACK_HOSTS, cors_origins=(FRIEND,))
    app = create_app(graph, live=live, security=security)
    try:
        with served(app) as base:
            yield Api(base, live, operator)
    finally:
        graph.close()


def test_the_issues_cross_site_form_post_cannot_start_an_event(api: Api) -> None:
    # curl -X POST -H 'Origin: https://evil.example'
    #      -H 'content-type: application/x-www-form-urlencoded' .../v1/live/events/X/start
    headers = {"Origin": EVIL, "content-type": "application/x-www-form-urlencoded"}
    for extra in ({}, api.auth()):  # even with the operator's key (a page has none)
        answer = httpx.post(f"{api.base}/v1/live/events/X/start", headers=headers | extra)
        assert answer.status_code in (403, 415), answer.text
        assert answer.json()["error"] in ("cross_origin", "unsupported_media_type")
    assert api.live.get("X").state.value == "scheduled", "the event was started"


def test_a_form_body_is_refused_even_from_the_same_origin(api: Api) -> None:
    answer = httpx.post(
        f"{api.base}/v1/live/events/X/start",
        content=b"a=1",
        headers={"content-type": "application/x-www-form-urlencoded", **api.auth()},
    )
    assert answer.status_code == 415 and answer.json()["error"] == "unsupported_media_type"
    assert api.live.get("X").state.value == "scheduled"


def test_a_text_plain_create_is_refused_from_any_origin(api: Api) -> None:
    body = b'{"id": "evil", "title": "Evil", "starts_at": "2h"}'
    for origin in ({"Origin": EVIL}, {}):
        answer = httpx.post(
            f"{api.base}/v1/live/events",
            content=body,
            headers={"content-type": "text/plain", **origin, **api.auth()},
        )
        assert answer.status_code in (403, 415), answer.text
    assert [e.id for e in api.live.events()] == ["X"], "an event was created"


def test_an_untyped_body_from_a_page_is_refused(api: Api) -> None:
    answer = httpx.post(
        f"{api.base}/v1/live/events",
        content=b'{"id": "evil", "title": "Evil", "starts_at": "2h"}',
        headers={"Origin": EVIL, **api.auth()},
    )
    assert answer.status_code == 403


def test_the_same_origin_and_a_configured_origin_may_write(api: Api) -> None:
    for origin in (api.base, FRIEND):
        answer = httpx.post(
            f"{api.base}/v1/live/events",
            json={"id": f"e{len(origin)}", "title": "Fine", "starts_at": "2h"},
            headers={"Origin": origin, **api.auth()},
        )
        assert answer.status_code == 201, answer.text


def test_a_foreign_host_is_refused_whatever_the_route(api: Api) -> None:
    for method, path in (("GET", "/healthz"), ("GET", "/web/console.html")):
        answer = httpx.request(method, f"{api.base}{path}", headers={"Host": "evil.example"})
        assert answer.status_code == 421 and answer.json()["error"] == "unknown_host"
    answer = httpx.post(
        f"{api.base}/v1/live/events/X/start",
        headers={"Host": "evil.example:8321", **api.auth()},
    )
    assert answer.status_code == 421
    assert api.live.get("X").state.value == "scheduled"


def test_loopback_hosts_with_a_port_are_served(api: Api) -> None:
    port = api.base.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert httpx.get(f"{api.base}/healthz", headers={"Host": host}).status_code == 200


def test_a_preflight_from_an_unconfigured_origin_gets_no_cors_headers(api: Api) -> None:
    preflight = {
        "Origin": EVIL,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    answer = httpx.options(f"{api.base}/v1/live/events/X/start", headers=preflight)
    # what lets a browser send the request: without it the page's write never leaves
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-credentials" not in answer.headers
    friendly = httpx.options(
        f"{api.base}/v1/live/events/X/start", headers={**preflight, "Origin": FRIEND}
    )
    assert friendly.headers["access-control-allow-origin"] == FRIEND


def test_cors_is_closed_when_no_origin_is_configured(tmp_path: Path) -> None:
    with Graph.open() as graph, served(create_app(graph)) as base:
        answer = httpx.options(
            f"{base}/v1/mutations",
            headers={"Origin": FRIEND, "Access-Control-Request-Method": "POST"},
        )
        got = httpx.get(f"{base}/healthz", headers={"Origin": FRIEND})
    assert not any(h.startswith("access-control-") for h in answer.headers)
    assert not any(h.startswith("access-control-") for h in got.headers)


@pytest.mark.parametrize("path", ["/web/console.html", "/web/device.html", "/docs"])
def test_the_pages_carry_a_content_security_policy_without_inline_script(
    api: Api, path: str
) -> None:
    answer = httpx.get(f"{api.base}{path}")
    assert answer.status_code == 200
    csp = answer.headers["content-security-policy"]
    for directive in (
        "script-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ):
        assert directive in csp
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", answer.text, re.S):
        assert "src=" in attrs and not body.strip(), f"inline script in {path}"
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", answer.text), f"inline handler in {path}"


def test_every_answer_carries_the_security_headers_refusals_too(api: Api) -> None:
    for answer in (
        httpx.get(f"{api.base}/healthz"),
        httpx.get(f"{api.base}/v1/live/events"),  # 401
        httpx.get(f"{api.base}/v1/nowhere"),  # 404
        httpx.get(f"{api.base}/healthz", headers={"Host": "evil.example"}),  # 421
    ):
        assert answer.headers["x-content-type-options"] == "nosniff", answer.status_code
        assert answer.headers["referrer-policy"] == "no-referrer", answer.status_code
        # plain HTTP: no HSTS (browsers ignore it there; loopback must stay reachable)
        assert "strict-transport-security" not in answer.headers, answer.status_code


@pytest.mark.parametrize("page", sorted(p.name for p in WEB.glob("*.html")))
def test_no_page_file_holds_inline_script_or_handlers(page: str) -> None:
    text = (WEB / page).read_text()
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", text, re.S):
        assert "src=" in attrs and not body.strip(), f"inline script in {page}"
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", text), f"inline handler in {page}"
    assert "javascript:" not in text


@pytest.mark.parametrize(
    "host", ["127.0.0.1:80@evil.example", "localhost:abc", "[::1]evil", "[::1]:1x", "[::1]@x"]
)
def test_a_host_header_that_is_not_a_name_and_a_numeric_port_is_refused(
    api: Api, host: str
) -> None:
    answer = httpx.get(f"{api.base}/healthz", headers={"Host": host})
    assert answer.status_code == 421, f"{host!r} was served"
    assert answer.json()["error"] == "unknown_host"


def test_host_name_takes_off_only_a_port_of_ascii_digits() -> None:
    assert host_name("LocalHost:8321") == "localhost"
    assert host_name("[::1]:8321") == host_name("[::1]") == "::1"
    assert host_name("127.0.0.1:") == "127.0.0.1"  # an empty port is a port (RFC 3986)
    for odd in ("localhost:\u0663", "localhost:123456", "a:b@c", "[::1]x"):
        assert host_name(odd) == odd.lower(), odd

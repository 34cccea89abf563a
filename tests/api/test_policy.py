"""Every route the served app has declares who may call it, and each answers accordingly.

The app is built as ``hopcast serve`` and ``hopcast run`` build it, with every router present:
the graph routes, a live service with a gateway (and development tokens), an ingest journal and
the console. Each route is called with no credential, a garbage one, a wrong key, a revoked
key, a key of each role and a device token; a route that declared no policy fails the first
test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request

from api.seed import SEED, TestClient
from hopcast import Graph
from hopcast.api import create_app
from hopcast.api.live import GatewayBinding
from hopcast.api.policy import (
    POLICY_EXTENSION,
    Security,
    policy,
    policy_of,
    public,
    served_routes,
)
from hopcast.auth import KeyFile, Policy, Role
from hopcast.auth.roles import granted
from hopcast.durations import HOUR, MINUTE, now_us
from hopcast.live import tokens
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService
from hopcast.stream.sources.journal import Journal

SECRET = b"s" * 32
#: Routes that are not API routes: served by Starlette itself, public because they hold no
#: data (the OpenAPI document, the Swagger UI files, the static pages).
NON_API_PUBLIC = {"/openapi.json", "/docs/assets/{path}", "/web/{path}"}
#: A value for each path parameter that names something that exists.
EVENT = "final"


@dataclass
class Served:
    app: FastAPI
    keys: KeyFile
    by_role: dict[Role, str]
    revoked: str
    wrong: str
    device: str
    params: dict[str, str]
    client: TestClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root: Path = tmp_path_factory.mktemp("policy")
    graph = Graph.open(root / "graph", sync=False)
    graph.apply(SEED)
    live = LiveService(graph.store.kv)
    now = now_us()
    live.command(Create(EVENT, "The Final", now + HOUR, now + 3 * HOUR, 30 * MINUTE), now)
    materialised = live.materialise(EVENT, now, ["all"])
    payload_id = _a_payload_id(live, now)
    router = Router(InProcessTransport(), payload_for=live.payload_for)
    live.add_sink(router.publish_all)
    binding = GatewayBinding(
        Gateway(router, SECRET, node_id="policy"), "127.0.0.1", 0, SECRET, dev_tokens=True
    )
    journal = Journal(root / "journal")
    keys = KeyFile(root / "keys.json")
    by_role = {role: keys.create(role.value, [role.value], now)[1] for role in Role}
    gone, revoked = keys.create("gone", ["admin"], now)
    keys.revoke(gone.id, now)
    keys.refresh(force=True)
    wrong = by_role[Role.ADMIN][:-4] + "AAAA"
    app = create_app(
        graph,
        live=live,
        gateway=binding,
        journals={"logs": journal},
        security=Security(keys=keys),
    )
    device = tokens.issue(SECRET, "tv-1", ["*"], now, HOUR)
    params = {
        "event_id": EVENT,
        "node_id": "profile:1",
        "payload_id": payload_id,
        "source": "logs",
        "job_id": "0123456789abcdef",  # no such job: allowed callers get a 404
    }
    assert materialised
    try:
        with TestClient(app) as client:  # one lifespan: the gateway serves once
            yield Served(app, keys, by_role, revoked, wrong, device, params, client)
    finally:
        journal.close()
        graph.close()


def _a_payload_id(live: LiveService, now: int) -> str:
    answer = live.manifest(EVENT, "all", None, now)
    ids = re.findall(rb'"([0-9a-f]{32})"', answer.body or b"")
    assert ids, "the materialised manifest names no payload"
    return ids[0].decode()


def _routes(app: FastAPI) -> list[tuple[str, str, Policy]]:
    out = []
    for route in served_routes(app):
        declared = policy_of(route)
        if declared is None:
            continue
        for method in sorted(route.methods or ()):
            out.append((method, route.path_format, declared))
    return out


def _url(path: str, params: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: params[m.group(1)], path)


def _call(client: TestClient, method: str, url: str, credential: str | None) -> Any:
    headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
    if method == "POST":
        return client.request(method, url, headers=headers, json={})
    return client.request(method, url, headers=headers)


def _undeclared(app: FastAPI) -> list[str]:
    return [
        f"{sorted(route.methods or ['*'])} {route.path_format}"
        for route in served_routes(app)
        if policy_of(route) is None and route.path_format not in NON_API_PUBLIC
    ]


def test_every_served_route_declares_a_policy(served: Served) -> None:
    undeclared = _undeclared(served.app)
    assert not undeclared, f"routes without a declared policy: {undeclared}"
    paths = {path for _, path, _ in _routes(served.app)}
    for expected in ("/v1/live/tokens", "/v1/ingest/{source}", "/v1/console/dashboard"):
        assert expected in paths, f"{expected} missing: not every router is present"


def test_a_route_added_without_a_policy_is_caught() -> None:
    with Graph.open() as graph:
        app = create_app(graph)
        router = APIRouter(prefix="/v1/extra")

        @router.get("/thing")
        async def thing() -> dict[str, str]:
            return {}

        app.include_router(router)
        assert _undeclared(app) == ["['GET'] /v1/extra/thing"]


def test_every_operation_of_the_openapi_document_records_its_policy(served: Served) -> None:
    doc = served.app.openapi()
    missing = [
        f"{method.upper()} {path}"
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        if POLICY_EXTENSION not in operation
    ]
    assert not missing
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/mutations"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_the_routes_that_are_not_api_routes_hold_no_data_and_are_public(served: Served) -> None:
    client = served.client
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/web/console.html").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def _expect(declared: Policy, who: str) -> str:
    """``ok`` (neither 401 nor 403), ``401`` or ``403`` for a credential kind on a policy."""
    if declared.public:
        return "ok"
    if who in ("none", "garbage", "wrong", "revoked"):
        return "401"
    if who == "device":
        return "ok" if declared.device else "403"
    assert declared.role is not None
    return "ok" if declared.role in granted([Role(who)]) else "403"


def test_every_route_answers_each_credential_as_its_policy_says(served: Served) -> None:
    credentials: dict[str, str | None] = {
        "none": None,
        "garbage": "nonsense",
        "wrong": served.wrong,
        "revoked": served.revoked,
        "device": served.device,
        **{role.value: key for role, key in served.by_role.items()},
    }
    failures = []
    checked = 0
    for method, path, declared in _routes(served.app):
        url = _url(path, served.params)
        for who, credential in credentials.items():
            response = _call(served.client, method, url, credential)
            status = response.status_code
            expected = _expect(declared, who)
            got = str(status) if status in (401, 403) else "ok"
            checked += 1
            if got != expected:
                failures.append(f"{method} {url} as {who}: {status} (expected {expected})")
                continue
            if status in (401, 403):
                body = response.json()
                assert body["error"] == {401: "unauthorized", 403: "forbidden"}[status]
                if status == 401:
                    assert response.headers["www-authenticate"] == "Bearer"
    assert not failures, "\n".join(failures)
    assert checked >= 35 * len(credentials), f"only {checked} calls: routes missing?"


def test_the_principal_is_set_for_a_key_and_left_empty_on_a_public_route(tmp_path: Path) -> None:
    keys = KeyFile(tmp_path / "keys.json")
    record, key = keys.create("console", ["operator"], now_us())
    with Graph.open() as graph:
        app = create_app(graph, security=Security(keys=keys))

        @app.get("/whoami", dependencies=[policy(Role.READER)])
        async def whoami(request: Request) -> dict[str, Any]:
            p = request.state.principal
            return {"id": p.key_id, "name": p.name, "roles": list(p.roles)}

        @app.get("/open", dependencies=[public("a test route")])
        async def open_route(request: Request) -> dict[str, Any]:
            return {"principal": request.state.principal}

        with TestClient(app) as client:
            me = client.get("/whoami", headers={"Authorization": f"Bearer {key}"}).json()
            assert me == {"id": record.id, "name": "console", "roles": ["operator"]}
            assert client.get("/open").json() == {"principal": None}


def test_a_policy_with_a_limit_answers_429_with_retry_after_when_the_limiter_says_wait(
    tmp_path: Path,
) -> None:
    calls: list[tuple[str, str]] = []

    class Limiter:
        def check(self, subject: str, bucket: str) -> float | None:
            calls.append((subject, bucket))
            return 1.2 if len(calls) > 1 else None

    keys = KeyFile(tmp_path / "keys.json")
    record, key = keys.create("ci", ["writer"], now_us())
    with Graph.open() as graph:
        app = create_app(graph, security=Security(keys=keys))
        app.state.rate_limits = Limiter()
        with TestClient(app) as client:
            auth = {"Authorization": f"Bearer {key}"}
            first = client.post("/v1/mutations", json={"mutations": []}, headers=auth)
            second = client.post("/v1/mutations", json={"mutations": []}, headers=auth)
            reads = client.get("/v1/nodes?ids=profile:1", headers=auth)  # no bucket: not drawn
    assert first.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "2"
    assert second.json()["error"] == "rate_limited"
    assert reads.status_code == 200
    assert calls == [(f"key:{record.id}", "mutations")] * 2


def test_a_device_token_reports_for_its_own_device_only(served: Served) -> None:
    """One device token must not fill an event's device bound with invented devices (or speak
    for another device); an operator key may relay a fleet's reports."""
    own = {"kind": "prefetched", "device": "tv-1", "event": EVENT, "stages": ["live"]}
    other = {**own, "device": "tv-2"}
    as_device = {"Authorization": f"Bearer {served.device}"}
    as_operator = {"Authorization": f"Bearer {served.by_role[Role.OPERATOR]}"}
    url = "/v1/console/reports"
    mine = served.client.post(url, json={"reports": [own]}, headers=as_device)
    assert mine.status_code == 202, mine.text
    mixed = served.client.post(url, json={"reports": [own, other]}, headers=as_device)
    assert mixed.status_code == 403 and "cannot report for device 'tv-2'" in mixed.text
    relayed = served.client.post(url, json={"reports": [own, other]}, headers=as_operator)
    assert relayed.status_code == 202, relayed.text


def test_device_reports_draw_on_the_reports_bucket_as_the_device(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []

    class Limiter:
        def check(self, subject: str, bucket: str) -> float | None:
            calls.append((subject, bucket))
            return 3.0 if len(calls) > 1 else None

    now = now_us()
    keys = KeyFile(tmp_path / "keys.json")
    keys.create("admin", ["admin"], now)
    with Graph.open() as graph:
        live = LiveService(graph.store.kv)
        app = create_app(graph, live=live, security=Security(keys=keys, device_secret=SECRET))
        app.state.rate_limits = Limiter()
        token = tokens.issue(SECRET, "tv-9", ["*"], now, HOUR)
        report = {"kind": "prefetched", "device": "tv-9", "event": EVENT, "stages": []}
        with TestClient(app) as client:
            auth = {"Authorization": f"Bearer {token}"}
            first = client.post("/v1/console/reports", json={"reports": [report]}, headers=auth)
            second = client.post("/v1/console/reports", json={"reports": [report]}, headers=auth)
    assert first.status_code == 202, first.text
    assert second.status_code == 429 and second.headers["retry-after"] == "3"
    assert calls == [("device:tv-9", "reports")] * 2


def test_the_policy_buckets_are_the_limiter_buckets() -> None:
    from hopcast.api import ratelimit
    from hopcast.auth import policy as auth_policy

    assert set(auth_policy.BUCKETS) == set(ratelimit.BUCKETS) == set(ratelimit.DEFAULT_RATES)

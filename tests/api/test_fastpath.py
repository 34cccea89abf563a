"""The hot routes' fast front (:mod:`hopcast.api.fastpath`) answers exactly as FastAPI does.

Each request is sent to two apps over the same graph: one as built (fast front installed) and
one built with the front left out; status, body and the headers that matter must agree. Then:
a plainly valid request really skips FastAPI's dependency solving, and the route policy (keys,
roles, rate-limit bucket) holds on the fast path, charged once per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest

from api.seed import NOW, SEED, TestClient
from hopcast import Graph
from hopcast.api import create_app, fastpath
from hopcast.api.policy import Security
from hopcast.api.ratelimit import MUTATIONS, Rate, RateLimits
from hopcast.auth import KeyFile, Role
from hopcast.durations import DAY

#: Requests to the hot routes: valid in several shapes, and refused in every way a parameter
#: can be wrong (each must get FastAPI's own refusal).
READS = [
    "/v1/nodes/profile:1",
    "/v1/nodes/profile:1?ignored=1",
    "/v1/nodes/profile:404",
    "/v1/nodes/nosuchtype:1",
    "/v1/nodes/p:",
    "/v1/nodes/" + "profile:" + "9" * 400,
    "/v1/nodes/profile:1/neighbours",
    "/v1/nodes/profile:1/neighbours?edge=started_watching",
    "/v1/nodes/profile:1/neighbours?edge=started_watching,browsed&limit=1",
    "/v1/nodes/account:1/neighbours?edge=&direction=both&selection=any",
    f"/v1/nodes/profile:1/neighbours?since={NOW - 10 * DAY}&until={NOW}",
    "/v1/nodes/profile:1/neighbours?since=7d&until=",
    "/v1/nodes/profile:1/neighbours?since=1.5h",
    '/v1/nodes/profile:1/neighbours?where={"position_s":{"gte":0}}',
    "/v1/nodes/profile:1/neighbours?where=not-json",
    "/v1/nodes/profile:1/neighbours?limit=0",
    "/v1/nodes/profile:1/neighbours?limit=10001",
    "/v1/nodes/profile:1/neighbours?limit=10000",
    "/v1/nodes/profile:1/neighbours?limit=+5",
    "/v1/nodes/profile:1/neighbours?limit=05",
    "/v1/nodes/profile:1/neighbours?limit=abc",
    "/v1/nodes/profile:1/neighbours?limit=2&limit=3",
    "/v1/nodes/profile:1/neighbours?direction=sideways",
    "/v1/nodes/profile:1/neighbours?selection=random",
    "/v1/nodes/profile:1/neighbours?edge=Bad-Edge",
    "/v1/nodes/profile:1/neighbours?edge=no_such_edge",
    "/v1/nodes/profile:1/neighbours?since=yesterday",
    "/v1/nodes/profile:1/neighbours?since=99999999999999999999",
    "/v1/nodes/nosuchtype:1/neighbours",
]
WRITES = [
    b'{"mutations": [{"kind": "edge_upsert", "src": "profile:2", "type": "browsed", '
    b'"dst": "title:10", "ts": %d, "id": "w1"}]}' % (NOW - DAY),
    b'{"mutations": [',
    b'{"mutations": [{"kind": "edge_upsert", "src": "profile:2", "type": "browsed", '
    b'"dst": "account:1", "ts": %d, "id": "w2"}]}' % (NOW - DAY),
]
#: Headers that are part of an answer's contract (the rest: dates and the like).
HEADERS = ("content-type", "retry-after", "www-authenticate", "x-content-type-options")


def _graph(root: Path) -> Graph:
    graph = Graph.open(root, sync=False, clock=lambda: NOW)
    graph.apply(SEED)
    return graph


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    fast_graph, slow_graph = _graph(tmp_path / "fast"), _graph(tmp_path / "slow")
    fast = create_app(fast_graph)
    with monkeypatch.context() as m:
        m.setattr(fastpath, "install", lambda app: [])
        slow = create_app(slow_graph)
    try:
        yield fast, slow
    finally:
        for app, graph in ((fast, fast_graph), (slow, slow_graph)):
            app.state.committer.close()
            graph.close()


def _answer(client: TestClient, method: str, url: str, body: bytes | None) -> tuple[Any, ...]:
    if method == "GET":
        r = client.get(url)
    else:
        r = client.post(url, content=body, headers={"content-type": "application/json"})
    return r.status_code, r.json(), {h: r.headers.get(h) for h in HEADERS}


def _fronted(app: Any) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.router.routes
        if getattr(getattr(route, "app", None), "__qualname__", "") == "front.<locals>.app"
        for method in route.methods
    }


def test_every_hot_route_and_only_those_get_the_fast_front(apps: tuple[Any, Any]) -> None:
    fast, slow = apps
    assert _fronted(fast) == set(fastpath.HOT)
    assert _fronted(slow) == set()


def test_the_fast_front_answers_every_request_as_fastapi_does(apps: tuple[Any, Any]) -> None:
    fast, slow = apps
    with TestClient(fast) as f, TestClient(slow) as s:
        for url in READS:
            assert _answer(f, "GET", url, None) == _answer(s, "GET", url, None), url
        for body in WRITES:
            got = _answer(f, "POST", "/v1/mutations", body)
            assert got == _answer(s, "POST", "/v1/mutations", body), body
        # the write went through the committer on the fast path: read back from the fast app
        edges = f.get("/v1/nodes/profile:2/neighbours?edge=browsed").json()["edges"]
        assert [e["dst"] for e in edges] == ["title:10"]


def test_a_plainly_valid_request_skips_fastapis_dependency_solving(
    apps: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, _ = apps
    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    with TestClient(fast) as client:
        assert client.get("/v1/nodes/profile:1/neighbours?limit=5").status_code == 200
        assert client.get("/v1/nodes/profile:1").status_code == 200
        assert client.post("/v1/mutations", content=WRITES[0]).status_code == 200
        assert solved == [], f"FastAPI solved the parameters of {solved}"
        assert client.get("/v1/nodes/profile:1/neighbours?limit=0").status_code == 400
        assert solved == ["/v1/nodes/profile:1/neighbours"], "an invalid value must reach FastAPI"


def test_the_route_policy_holds_on_the_fast_path_and_charges_once(tmp_path: Path) -> None:
    graph = _graph(tmp_path / "graph")
    keys = KeyFile(tmp_path / "keys.json")
    reader = keys.create("r", [Role.READER.value], NOW)[1]
    writer = keys.create("w", [Role.WRITER.value], NOW)[1]
    limits = RateLimits({MUTATIONS: Rate(0.001, 2)})  # two writes, then none for ~17 min
    app = create_app(graph, security=Security(keys=keys), rate_limits=limits)
    try:
        with TestClient(app) as client:

            def as_(key: str | None) -> dict[str, str]:
                return {} if key is None else {"authorization": f"Bearer {key}"}

            read = "/v1/nodes/profile:1/neighbours?limit=5"
            assert client.get(read).status_code == 401
            assert client.get(read, headers={"authorization": "Basic eDp5"}).status_code == 401
            assert client.get(read, headers=as_("hck_wrong_key")).status_code == 401
            assert client.get(read, headers=as_(reader)).status_code == 200
            assert (
                client.post("/v1/mutations", content=WRITES[0], headers=as_(reader)).status_code
                == 403
            )
            statuses = [
                client.post("/v1/mutations", content=WRITES[0], headers=as_(writer)).status_code
                for _ in range(3)
            ]
            assert statuses == [200, 200, 429], "each request takes exactly one token"
    finally:
        app.state.committer.close()
        graph.close()

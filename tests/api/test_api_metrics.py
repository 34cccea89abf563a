"""``GET /metrics``: Prometheus text with request, latency, mutation and store series."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from api.seed import NOW, TestClient
from hopcast import Graph
from hopcast.api import create_app


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


def test_requests_are_counted_per_route_template_and_status(client: TestClient) -> None:
    client.get("/v1/nodes/profile:1")
    client.get("/v1/nodes/profile:2")
    client.get("/v1/nodes/profile:9")
    client.get("/v1/no/such/route")
    got = samples(client)
    node = "/v1/nodes/{node_id}"
    assert got["hopcast_http_requests_total", labels(method="GET", route=node, status="200")] == 2
    assert got["hopcast_http_requests_total", labels(method="GET", route=node, status="404")] == 1
    assert (
        got["hopcast_http_requests_total", labels(method="GET", route="<unmatched>", status="404")]
        == 1
    )
    count = got[
        "hopcast_http_request_duration_seconds_count",
        labels(method="GET", route=node, status="200"),
    ]
    assert count == 2


def test_mutations_applied_and_skipped_are_counted(client: TestClient) -> None:
    upsert = {"kind": "node_upsert", "node": "profile:3", "ts": NOW, "id": "m1"}
    client.post("/v1/mutations", json={"mutations": [upsert]})
    client.post("/v1/mutations", json={"mutations": [upsert, upsert]})
    got = samples(client)
    assert got["hopcast_mutations_applied_total", labels()] == 1
    assert got["hopcast_mutations_skipped_total", labels()] == 2


def test_the_store_backend_is_exposed(client: TestClient) -> None:
    assert samples(client)["hopcast_store_info", labels(backend="memory")] == 1


def test_unknown_methods_share_one_label(client: TestClient) -> None:
    client.request("BREW", "/v1/nodes/profile:1")
    got = samples(client)
    route = "/v1/nodes/{node_id}"
    assert (
        got["hopcast_http_requests_total", labels(method="OTHER", route=route, status="405")] == 1
    )


def test_each_app_has_its_own_registry(graph: Graph) -> None:
    with TestClient(create_app(graph)) as first, TestClient(create_app(graph)) as second:
        first.get("/healthz")
        assert (
            "hopcast_http_requests_total",
            labels(method="GET", route="/healthz", status="200"),
        ) in samples(first)
        assert (
            "hopcast_http_requests_total",
            labels(method="GET", route="/healthz", status="200"),
        ) not in samples(second)

"""Bad input always gets a 4xx with ``{"error", "message"}``; a bug gets a generic 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from api.seed import NOW, TestClient
from hopcast import Graph
from hopcast.api import MAX_BODY_BYTES, create_app
from hopcast.live.service import LiveService


def fails(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error"] == kind
    assert isinstance(body["message"], str) and body["message"]
    return body


# -- 400: malformed queries ---------------------------------------------------------------------


def test_an_unknown_edge_type_is_a_400_that_lists_the_known_ones(client: TestClient) -> None:
    body = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"edge": "watched"}),
        400,
        "invalid_query",
    )
    assert body["message"].startswith("unknown edge type 'watched' (known: browsed, features,")


@pytest.mark.parametrize(
    "path",
    ["/v1/nodes/nocolon", "/v1/nodes/nocolon/neighbours", "/v1/nodes/:1/count"],
)
def test_a_node_id_without_type_and_key_is_a_400(client: TestClient, path: str) -> None:
    body = fails(client.get(path), 400, "invalid_query")
    assert body["message"].startswith("path.node_id: ")
    assert "must be a node id 'type:key'" in body["message"] or "at least 3" in body["message"]


def test_an_unknown_node_type_is_a_400(client: TestClient) -> None:
    body = fails(client.get("/v1/nodes/gadget:1"), 400, "invalid_query")
    assert "unknown node type 'gadget'" in body["message"]


def test_a_bad_direction_is_a_400(client: TestClient) -> None:
    body = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"direction": "up"}),
        400,
        "invalid_query",
    )
    assert body["message"] == "query.direction: Input should be 'out', 'in' or 'both', got 'up'"


def test_a_bad_selection_is_a_400(client: TestClient) -> None:
    body = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"selection": "oldest"}),
        400,
        "invalid_query",
    )
    assert body["message"] == "query.selection: Input should be 'latest' or 'any', got 'oldest'"


def test_a_bad_since_is_a_400_naming_the_accepted_forms(client: TestClient) -> None:
    body = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"since": "yesterday"}),
        400,
        "invalid_query",
    )
    assert body["message"] == (
        "query.since: must be a time: µs since the epoch in [0, 2**62) or a duration such as 7d, "
        "got 'yesterday'"
    )


@pytest.mark.parametrize("limit", [0, 10_001])
def test_a_limit_out_of_range_is_a_400(client: TestClient, limit: int) -> None:
    body = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"limit": limit}),
        400,
        "invalid_query",
    )
    bound = "greater than or equal to 1" if limit < 1 else "less than or equal to 10000"
    assert body["message"] == f"query.limit: Input should be {bound}, got '{limit}'"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("{", "where: not valid JSON (Input data was truncated)"),
        ("[1]", "where: must be a JSON object of property -> value or {op: value}"),
        (
            json.dumps({"minutes": {"approx": 3}}),
            "where.minutes: unknown operator 'approx' (use ('eq', 'ne', 'gt', 'gte', 'lt', "
            "'lte', 'in'))",
        ),
    ],
)
def test_a_bad_where_is_a_400(client: TestClient, where: str, message: str) -> None:
    body = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"where": where}),
        400,
        "invalid_query",
    )
    assert body["message"] == message


def test_a_cursor_the_server_did_not_issue_is_a_422(client: TestClient) -> None:
    body = fails(
        client.get("/v1/nodes/account:1/journey", params={"cursor": "zzz"}),
        422,
        "invalid_cursor",
    )
    assert body["message"] == "invalid cursor 'zzz'"


def test_a_journey_from_a_non_account_is_a_400(client: TestClient) -> None:
    body = fails(client.get("/v1/nodes/profile:1/journey"), 400, "invalid_query")
    assert body["message"] == "a journey starts at a 'account' node"


def test_an_empty_id_list_is_a_400(client: TestClient) -> None:
    body = fails(client.get("/v1/nodes", params={"ids": " , "}), 400, "invalid_query")
    assert body["message"] == (
        "query.ids: must be 1 to 1000 node ids 'type:key', comma-separated, got ' , '"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"start": "account:1", "hops": []}, "body: Expected `array` of length >= 1 - at `$.hops`"),
        (
            {"start": "account:1", "hops": ["has_profile"], "limits": {"lookback": "soon"}},
            "body: Expected `str`: a duration such as 100d (at most 2**62 µs) - at "
            "`$.limits.lookback`",
        ),
        (
            {"start": "account:1", "hops": ["has_profile"], "limits": {"edges_per_hop": 10_001}},
            "body: Expected `int` <= 10000 - at `$.limits.edges_per_hop`",
        ),
        (
            {"start": "account:1", "hops": [{"edge": "has_profile", "where": {"a": {"x": 1}}}]},
            "hops[0]: where.a: unknown operator 'x'",
        ),
        (
            {"start": "account:1", "hops": ["has_profile"], "since": "later"},
            "body: Expected `str`: a time: µs since the epoch in [0, 2**62) or a duration",
        ),
    ],
)
def test_a_malformed_traversal_is_a_400(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    got = fails(client.post("/v1/query/traverse", json=body), 400, "invalid_query")
    assert got["message"].startswith(message)


@pytest.mark.parametrize(
    "content", [b"{nope", b"", b'{"mutations": [}'], ids=["garbage", "empty", "truncated"]
)
def test_a_body_that_is_not_json_is_a_400(client: TestClient, content: bytes) -> None:
    body = fails(client.post("/v1/mutations", content=content), 400, "malformed_json")
    assert body["message"].startswith("the request body is not valid JSON: ")


# -- 422: input that does not fit a declared shape ----------------------------------------------


def test_a_schema_violation_is_a_422_naming_the_mutation_and_nothing_is_written(
    client: TestClient, graph: Graph
) -> None:
    body = {
        "mutations": [
            {"kind": "node_upsert", "node": "profile:3", "ts": NOW, "id": "a"},
            {
                "kind": "edge_upsert",
                "src": "profile:1",
                "type": "has_profile",
                "dst": "account:1",
                "ts": NOW,
                "id": "b",
            },
        ]
    }
    reason = "edge 'has_profile' does not connect profile -> account (allowed: account->profile)"
    assert fails(client.post("/v1/mutations", json=body), 422, "schema_violation") == {
        "error": "schema_violation",
        "message": f"mutation #1: {reason}",
        "index": 1,
        "reason": reason,
    }
    assert graph.node("profile:3") is None


def test_an_undeclared_property_is_a_schema_violation(client: TestClient) -> None:
    body = {
        "mutations": [
            {"kind": "node_upsert", "node": "profile:3", "ts": NOW, "id": "a", "props": {"x": 1}}
        ]
    }
    got = fails(client.post("/v1/mutations", json=body), 422, "schema_violation")
    assert got["index"] == 0
    assert "undeclared property 'x'" in got["reason"]


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ({"kind": "node_upsert", "node": "profile:3", "ts": "now", "id": "a"}, "'ts' must be"),
        ({"kind": "upsert", "node": "profile:3", "ts": NOW, "id": "a"}, "'kind' must be one of"),
        ({"kind": "node_delete", "node": "profile:3", "ts": NOW}, "missing field 'id'"),
        (7, "a mutation must be a JSON object, got int"),
    ],
)
def test_a_malformed_mutation_is_a_422_naming_its_index(
    client: TestClient, mutation: Any, reason: str
) -> None:
    ok_first = {"kind": "node_upsert", "node": "profile:3", "ts": NOW, "id": "z"}
    got = fails(
        client.post("/v1/mutations", json={"mutations": [ok_first, mutation]}),
        422,
        "invalid_mutation",
    )
    assert got["index"] == 1
    assert reason in got["reason"]
    assert got["message"] == f"mutation #1: {got['reason']}"


def test_a_body_of_the_wrong_shape_is_a_422_naming_the_json_path(client: TestClient) -> None:
    got = fails(
        client.post("/v1/query/traverse", json={"start": "account:1", "hops": 3}),
        422,
        "validation_error",
    )
    assert got["message"] == "body: Expected `array`, got `int` - at `$.hops`"
    got = fails(client.post("/v1/mutations", json={"mutation": []}), 422, "validation_error")
    assert "unknown field `mutation`" in got["message"]


def test_a_query_parameter_of_the_wrong_type_is_a_422_in_the_same_shape(
    client: TestClient,
) -> None:
    got = fails(
        client.get("/v1/nodes/profile:1/neighbours", params={"limit": "many"}),
        422,
        "validation_error",
    )
    assert got["message"].startswith("query.limit: ")
    assert got["details"][0]["loc"] == "query.limit"


def test_a_missing_query_parameter_is_a_422(client: TestClient) -> None:
    got = fails(client.get("/v1/path", params={"src": "profile:1"}), 422, "validation_error")
    assert got["message"] == "query.dst: Field required"


# -- 404, 405 -----------------------------------------------------------------------------------


def test_an_absent_node_is_a_404(client: TestClient) -> None:
    got = fails(client.get("/v1/nodes/profile:9"), 404, "not_found")
    assert got["message"].startswith("node 'profile:9' does not exist")


def test_an_unknown_route_is_a_404_in_the_same_shape(client: TestClient) -> None:
    got = fails(client.get("/v1/nope"), 404, "not_found")
    assert got["message"] == "no route for GET /v1/nope"


def test_a_wrong_method_is_a_405(client: TestClient) -> None:
    response = client.delete("/v1/nodes/profile:1")
    got = fails(response, 405, "method_not_allowed")
    assert got["message"] == "DELETE is not allowed on /v1/nodes/profile:1"
    assert response.headers["allow"] == "GET"


def test_a_405_lists_every_method_of_a_path_served_by_several_routes(graph: Graph) -> None:
    live = LiveService(graph.store.kv, clock=lambda: NOW)
    with TestClient(create_app(graph, live=live)) as c:
        response = c.options("/v1/live/events")
        fails(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "GET, POST"
        assert c.delete("/v1/live/events/final").headers["allow"] == "GET"


# -- 413: too large -----------------------------------------------------------------------------


@pytest.fixture
def small(graph: Graph) -> Iterator[TestClient]:
    with TestClient(create_app(graph, max_body_bytes=100, max_mutations=2)) as c:
        yield c


def test_the_default_body_limit_is_one_mebibyte() -> None:
    assert MAX_BODY_BYTES == 1024 * 1024


def test_a_body_declared_larger_than_the_limit_is_a_413(small: TestClient) -> None:
    got = fails(small.post("/v1/mutations", content=b"x" * 101), 413, "body_too_large")
    assert got["message"] == "the request body exceeds 100 bytes"


def test_a_chunked_body_is_cut_off_with_a_413_once_past_the_limit(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 40

    response = small.post("/v1/query/traverse", content=chunks())
    assert "content-length" not in response.request.headers  # so the 413 came from counting
    fails(response, 413, "body_too_large")


def test_a_body_at_the_limit_is_accepted(small: TestClient) -> None:
    body = json.dumps({"mutations": []}).encode().ljust(100)
    assert small.post("/v1/mutations", content=body).json() == {
        "applied": 0,
        "skipped": 0,
        "skipped_by_reason": {"lost_to_newer": 0, "expired": 0},
        "expired": [],
    }


def test_too_many_mutations_is_a_413(graph: Graph) -> None:
    one = {"kind": "node_delete", "node": "profile:9", "ts": NOW, "id": "d"}
    with TestClient(create_app(graph, max_mutations=2)) as client:
        response = client.post("/v1/mutations", json={"mutations": [one] * 3})
    got = fails(response, 413, "too_many_mutations")
    assert got["message"] == "3 mutations in one request; at most 2"


# -- 5xx ----------------------------------------------------------------------------------------


def test_an_unexpected_exception_is_a_generic_500_and_is_logged(
    client: TestClient, graph: Graph, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(graph, "node", broken)
    with caplog.at_level(logging.ERROR, logger="hopcast.api"):
        got = fails(client.get("/v1/nodes/profile:1"), 500, "internal_error")
    assert "secret" not in got["message"]
    assert "Traceback" not in client.get("/v1/nodes/profile:1").text
    assert any("secret internals" in r.exc_text for r in caplog.records if r.exc_text)


def test_a_closed_store_is_a_503(client: TestClient, graph: Graph) -> None:
    graph.close()
    fails(client.get("/healthz"), 503, "storage_unavailable")
    fails(client.get("/v1/nodes/profile:1/neighbours"), 503, "storage_unavailable")


def test_data_the_backend_refuses_is_a_422_not_a_503_to_retry(
    client: TestClient, graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend refusing the data (StorageRefused: retrying cannot help) answers 422
    ``storage_refused`` with the reason; a 503 would send the client into endless retries."""
    from hopcast.errors import StorageRefused

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise StorageRefused("LMDB refused a key or value: MDB_BAD_VALSIZE")

    monkeypatch.setattr(graph, "node", refuse)
    got = fails(client.get("/v1/nodes/profile:1"), 422, "storage_refused")
    assert "MDB_BAD_VALSIZE" in got["message"]

"""Every route's happy path, with the exact JSON it returns; the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.seed import NOW, SEED, TestClient
from hopcast import Graph
from hopcast.durations import DAY, HOUR
from hopcast.graph.mutations import to_dict

WATCHED_11 = {
    "src": "profile:1",
    "type": "started_watching",
    "dst": "title:11",
    "ts": NOW - DAY,
    "props": {"position_s": 120, "device": "device:tv1"},
}
WATCHED_10 = {
    "src": "profile:1",
    "type": "started_watching",
    "dst": "title:10",
    "ts": NOW - 3 * DAY,
    "props": {"position_s": 0, "device": "device:tv1"},
}
BROWSED = {
    "src": "profile:2",
    "type": "browsed",
    "dst": "title:10",
    "ts": NOW - 2 * HOUR,
    "props": {"row": "trending", "page": "home"},
}
HAS_PROFILE_1 = {
    "src": "account:1",
    "type": "has_profile",
    "dst": "profile:1",
    "ts": NOW - 30 * DAY,
    "props": {},
}
HAS_PROFILE_2 = {
    "src": "account:1",
    "type": "has_profile",
    "dst": "profile:2",
    "ts": NOW - 29 * DAY,
    "props": {},
}
LOGGED_IN = {
    "src": "account:1",
    "type": "logged_in_from",
    "dst": "device:tv1",
    "ts": NOW - 2 * DAY,
    "props": {"ip_country": "NL"},
}


def ok(response: Any) -> Any:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


# -- nodes --------------------------------------------------------------------------------------


def test_a_node_is_returned_with_its_time_and_properties(client: TestClient) -> None:
    assert ok(client.get("/v1/nodes/profile:1")) == {
        "id": "profile:1",
        "ts": NOW - 30 * DAY,
        "props": {"name": "Ann", "kids": False},
    }


def test_several_nodes_come_back_in_the_order_asked_with_null_for_absent_ones(
    client: TestClient,
) -> None:
    assert ok(client.get("/v1/nodes", params={"ids": "profile:9,account:1"})) == {
        "nodes": [
            None,
            {
                "id": "account:1",
                "ts": NOW - 30 * DAY,
                "props": {"country": "NL", "plan": "premium"},
            },
        ]
    }


# -- queries ------------------------------------------------------------------------------------


def test_neighbours_are_newest_first_with_the_neighbour_named(client: TestClient) -> None:
    body = ok(client.get("/v1/nodes/profile:1/neighbours", params={"edge": "started_watching"}))
    assert body == {
        "node": "profile:1",
        "edges": [WATCHED_11 | {"neighbour": "title:11"}, WATCHED_10 | {"neighbour": "title:10"}],
        "truncated": False,
        "reason": None,
    }


def test_neighbours_honour_limit_where_and_direction(client: TestClient) -> None:
    limited = ok(client.get("/v1/nodes/profile:1/neighbours", params={"limit": 1}))
    assert limited["edges"] == [WATCHED_11 | {"neighbour": "title:11"}]
    filtered = ok(
        client.get(
            "/v1/nodes/profile:1/neighbours",
            params={"edge": "started_watching", "where": json.dumps({"position_s": {"lt": 60}})},
        )
    )
    assert filtered["edges"] == [WATCHED_10 | {"neighbour": "title:10"}]
    incoming = ok(client.get("/v1/nodes/title:10/neighbours", params={"direction": "in"}))
    assert incoming == {
        "node": "title:10",
        "edges": [BROWSED | {"neighbour": "profile:2"}, WATCHED_10 | {"neighbour": "profile:1"}],
        "truncated": False,
        "reason": None,
    }


def test_neighbours_since_accepts_a_duration_and_microseconds_and_ignores_empty_until(
    client: TestClient,
) -> None:
    by_duration = ok(client.get("/v1/nodes/title:10/neighbours?direction=in&since=2d&until="))
    by_micros = ok(
        client.get(
            "/v1/nodes/title:10/neighbours", params={"direction": "in", "since": NOW - 2 * DAY}
        )
    )
    assert (
        by_duration
        == by_micros
        == {
            "node": "title:10",
            "edges": [BROWSED | {"neighbour": "profile:2"}],
            "truncated": False,
            "reason": None,
        }
    )


def test_neighbours_until_excludes_newer_edges(client: TestClient) -> None:
    body = ok(client.get("/v1/nodes/profile:1/neighbours", params={"until": "2d"}))
    assert body["edges"] == [WATCHED_10 | {"neighbour": "title:10"}]


def test_a_traversal_with_hops_as_edge_names_returns_each_node_with_its_depth_and_edge(
    client: TestClient,
) -> None:
    body = ok(
        client.post(
            "/v1/query/traverse",
            json={"start": "account:1", "hops": ["has_profile", "started_watching"]},
        )
    )
    assert body == {
        "nodes": [
            {"node": "profile:2", "depth": 1, "via": HAS_PROFILE_2},
            {"node": "profile:1", "depth": 1, "via": HAS_PROFILE_1},
            {"node": "title:11", "depth": 2, "via": WATCHED_11},
            {"node": "title:10", "depth": 2, "via": WATCHED_10},
        ],
        "work": 4,
        "truncated": False,
        "reason": None,
    }


def test_a_traversal_with_hop_objects_applies_filters_and_layered_limits(
    client: TestClient,
) -> None:
    body = ok(
        client.post(
            "/v1/query/traverse",
            json={
                "start": ["account:1"],
                "hops": [
                    {"edge": ["has_profile"], "direction": "out"},
                    {"edge": "started_watching,browsed", "where": {"position_s": {"gte": 60}}},
                ],
                "since": "35d",
                "limits": {"per_depth": {"1": 1}, "max_work": 100, "lookback": "100d"},
            },
        )
    )
    # Depth 1 keeps only the newest profile (per_depth 1; the second one read says the cap
    # cut): profile:2, whose only edge is a 'browsed' without position_s, so the filter leaves
    # nothing at depth 2.
    assert body == {
        "nodes": [{"node": "profile:2", "depth": 1, "via": HAS_PROFILE_2}],
        "work": 3,
        "truncated": True,
        "reason": "limits.per_depth[1] (1) cut account:1's has_profile edges at hop 1, more "
        "matching; raise limits.per_depth[1]",
    }


def test_a_traversal_that_hits_max_work_says_so(client: TestClient) -> None:
    body = ok(
        client.post(
            "/v1/query/traverse",
            json={"start": "account:1", "hops": ["has_profile"], "limits": {"max_work": 1}},
        )
    )
    assert body == {
        "nodes": [{"node": "profile:2", "depth": 1, "via": HAS_PROFILE_2}],
        "work": 1,
        "truncated": True,
        "reason": "limits.max_work (1) reached at hop 1, reading account:1's has_profile edges; "
        "raise limits.max_work to lift it",
    }


def test_a_journey_merges_the_accounts_profiles_and_devices_newest_first(
    client: TestClient,
) -> None:
    assert ok(client.get("/v1/nodes/account:1/journey")) == {
        "node": "account:1",
        "members": ["account:1", "profile:2", "profile:1", "device:tv1"],
        "entries": [BROWSED, WATCHED_11, WATCHED_10],
        "cursor": None,
        "truncated": False,
        "reason": None,
    }


def test_a_journey_can_be_limited_to_some_interactions_and_a_window(client: TestClient) -> None:
    body = ok(
        client.get(
            "/v1/nodes/account:1/journey", params={"edge": "started_watching", "since": "2d"}
        )
    )
    assert body["entries"] == [WATCHED_11]


def test_journey_pages_follow_the_cursor_without_gaps_or_repeats(client: TestClient) -> None:
    first = ok(client.get("/v1/nodes/account:1/journey", params={"limit": 2}))
    assert first["entries"] == [BROWSED, WATCHED_11]
    assert isinstance(first["cursor"], str)
    second = ok(
        client.get("/v1/nodes/account:1/journey", params={"limit": 2, "cursor": first["cursor"]})
    )
    assert second["entries"] == [WATCHED_10]
    assert second["cursor"] is None


def test_count_totals_and_splits_by_edge_type(client: TestClient) -> None:
    assert ok(client.get("/v1/nodes/profile:1/count")) == {
        "node": "profile:1",
        "count": 2,
        "by_type": {
            "started_watching": 2,
            "streamed_from": 0,
            "browsed": 0,
            "plays": 0,
            "watched_live": 0,
            "supports": 0,
        },
        "truncated": False,
        "reason": None,
    }
    assert ok(
        client.get("/v1/nodes/title:10/count", params={"direction": "in", "since": "1d"})
    ) == {
        "node": "title:10",
        "count": 1,
        "by_type": {"started_watching": 0, "browsed": 1},
        "truncated": False,
        "reason": None,
    }


def test_exists_finds_a_two_way_edge_from_either_end(client: TestClient) -> None:
    assert ok(
        client.get(
            "/v1/edges/exists",
            params={"src": "device:tv1", "edge": "logged_in_from", "dst": "account:1"},
        )
    ) == {"exists": True, "edge": LOGGED_IN}
    assert ok(
        client.get(
            "/v1/edges/exists",
            params={"src": "account:1", "edge": "has_profile", "dst": "profile:3"},
        )
    ) == {"exists": False, "edge": None}


def test_a_shortest_path_lists_its_nodes_and_edges(client: TestClient) -> None:
    body = ok(
        client.get(
            "/v1/path", params={"src": "profile:1", "dst": "profile:2", "edge": "has_profile"}
        )
    )
    assert body == {
        "found": True,
        "hops": 2,
        "nodes": ["profile:1", "account:1", "profile:2"],
        "edges": [HAS_PROFILE_1, HAS_PROFILE_2],
        "work": 3,
        "truncated": False,
        "reason": None,
    }
    none = ok(
        client.get(
            "/v1/path",
            params={"src": "profile:1", "dst": "profile:2", "edge": "has_profile", "max_hops": 1},
        )
    )
    assert none["found"] is False and none["hops"] is None


# -- writes -------------------------------------------------------------------------------------


def test_mutations_are_applied_and_readable_at_once(client: TestClient, graph: Graph) -> None:
    body = {
        "mutations": [
            {
                "kind": "node_upsert",
                "node": "profile:3",
                "ts": NOW,
                "id": "w1",
                "props": {"name": "Cy"},
            },
            {
                "kind": "edge_upsert",
                "src": "account:1",
                "type": "has_profile",
                "dst": "profile:3",
                "ts": NOW,
                "id": "w2",
            },
            {
                "kind": "edge_delete",
                "src": "profile:1",
                "type": "started_watching",
                "dst": "title:10",
                "ts": NOW,
                "id": "w3",
            },
        ]
    }
    assert ok(client.post("/v1/mutations", json=body)) == {
        "applied": 3,
        "skipped": 0,
        "skipped_by_reason": {"lost_to_newer": 0, "expired": 0},
        "expired": [],
    }
    assert ok(client.get("/v1/nodes/profile:3")) == {
        "id": "profile:3",
        "ts": NOW,
        "props": {"name": "Cy"},
    }
    assert graph.exists("account:1", "has_profile", "profile:3")
    assert not graph.exists("profile:1", "started_watching", "title:10")


def test_a_node_id_with_a_slash_a_comma_or_a_line_break_is_written_and_read_back(
    client: TestClient,
) -> None:
    ids = ["profile:a/b", "profile:a,b", "profile:a\nb", "profile:x/neighbours/y"]
    body = {
        "mutations": [
            {"kind": "node_upsert", "node": i, "ts": NOW, "id": f"w{n}", "props": {"name": i}}
            for n, i in enumerate(ids)
        ]
    }
    assert ok(client.post("/v1/mutations", json=body))["applied"] == 4
    for node_id in ids:
        path = "/v1/nodes/" + node_id.replace("/", "%2F").replace("\n", "%0A")
        assert ok(client.get(path))["props"] == {"name": node_id}
        assert ok(client.get(path + "/count"))["node"] == node_id


def test_integers_written_as_whole_floats_are_those_integers(client: TestClient) -> None:
    body = {
        "mutations": [
            {"kind": "node_upsert", "node": "title:9", "ts": float(NOW), "id": "f1", "seq": 7.0},
            {
                "kind": "node_upsert",
                "node": "title:9",
                "ts": NOW,
                "id": "f2",
                "props": {"year": 1999.0},
            },
        ]
    }
    assert ok(client.post("/v1/mutations", json=body))["applied"] == 2
    assert ok(client.get("/v1/nodes/title:9"))["props"] == {"year": 1999}
    traversal = {"start": "account:1", "hops": ["has_profile"], "limits": {"max_work": 100.0}}
    assert len(ok(client.post("/v1/query/traverse", json=traversal))["nodes"]) == 2
    fraction = {"start": "account:1", "hops": ["has_profile"], "limits": {"max_work": 100.5}}
    assert client.post("/v1/query/traverse", json=fraction).status_code == 422


def test_replayed_mutations_are_skipped(client: TestClient) -> None:
    body = {"mutations": [to_dict(m) for m in SEED[:3]]}
    assert ok(client.post("/v1/mutations", json=body)) == {
        "applied": 0,
        "skipped": 3,
        "skipped_by_reason": {"lost_to_newer": 3, "expired": 0},
        "expired": [],
    }


def test_an_empty_batch_applies_nothing(client: TestClient) -> None:
    assert ok(client.post("/v1/mutations", json={"mutations": []})) == {
        "applied": 0,
        "skipped": 0,
        "skipped_by_reason": {"lost_to_newer": 0, "expired": 0},
        "expired": [],
    }


# -- schema, health, docs -----------------------------------------------------------------------


def test_the_schema_is_served_as_the_schema_describes_itself(
    client: TestClient, graph: Graph
) -> None:
    assert ok(client.get("/v1/schema")) == graph.schema.to_dict()


def test_health_reports_ok_and_the_backend(client: TestClient) -> None:
    assert ok(client.get("/healthz")) == {"status": "ok", "backend": "memory"}


def test_the_openapi_document_lists_every_route_with_a_summary(client: TestClient) -> None:
    doc = ok(client.get("/openapi.json"))
    operations = {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    assert set(operations) == {
        ("GET", "/v1/nodes/{node_id}"),
        ("GET", "/v1/nodes"),
        ("GET", "/v1/nodes/{node_id}/neighbours"),
        ("POST", "/v1/query/traverse"),
        ("GET", "/v1/nodes/{node_id}/journey"),
        ("GET", "/v1/nodes/{node_id}/count"),
        ("GET", "/v1/edges/exists"),
        ("GET", "/v1/path"),
        ("POST", "/v1/mutations"),
        ("GET", "/v1/schema"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    }
    assert all(op.get("summary") for op in operations.values())


def test_the_openapi_document_resolves_its_request_and_error_schemas(client: TestClient) -> None:
    doc = ok(client.get("/openapi.json"))
    schemas = doc["components"]["schemas"]
    assert {"TraverseRequest", "HopRequest", "LimitsRequest", "MutationsRequest", "Error"} <= set(
        schemas
    )
    refs = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"].rsplit("/", 1)[-1])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(doc)
    assert refs <= set(schemas)
    traverse = doc["paths"]["/v1/query/traverse"]["post"]
    assert traverse["requestBody"]["content"]["application/json"]["examples"]
    assert traverse["responses"]["400"]["content"]["application/json"]["example"]["error"]


@pytest.mark.parametrize("lookback", ["0w", "00d", "0.5us"])
def test_a_lookback_under_a_microsecond_is_the_shortest_one_not_an_error(
    client: TestClient, lookback: str
) -> None:
    body = ok(
        client.post(
            "/v1/query/traverse",
            json={"start": "account:1", "hops": ["has_profile"], "limits": {"lookback": lookback}},
        )
    )
    assert body["nodes"] == []  # nothing is 1 µs old

"""No input gets a 500: the reproducers of issue 11, each a 4xx that names the problem.

Each test is one class of input (huge numbers, deep nesting, long ids, invalid Unicode,
non-finite numbers, far-off times) on every route that takes it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.seed import NOW, SEED, TestClient
from hopcast import Graph
from hopcast.api import create_app
from hopcast.durations import DAY, MINUTE
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService
from hopcast.stream.sources.journal import Journal, JournalSource


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Journal]]:
    graph = Graph.open(clock=lambda: NOW)
    graph.apply(SEED)
    live = LiveService(graph.store.kv, clock=lambda: NOW)
    live.command(Create("final", "The Final", NOW + 30 * MINUTE, None, 0), NOW)
    journal = Journal(tmp_path / "journal")
    app = create_app(graph, live=live, journals={"logs": journal})
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, journal
    journal.close()
    graph.close()


def refused(response: Any, status: int, kind: str, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind, body
    for word in words:
        assert word in body["message"], body["message"]
    return str(body["message"])


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def mutation(**fields: Any) -> dict[str, Any]:
    return {"kind": "node_upsert", "node": "profile:9", "ts": NOW, "id": "m1"} | fields


def journaled(journal: Journal) -> int:
    source = JournalSource("s", journal.directory)
    source.open({})
    try:
        return len(source.poll(10_000, 0.01))
    finally:
        source.close()


# -- times out of range ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize(
    "value", ["18446744073709551615", "-99999999999999999999", "4611686018427387904"]
)
@pytest.mark.parametrize(
    "path",
    [
        "/v1/nodes/profile:1/neighbours",
        "/v1/nodes/profile:1/count",
        "/v1/nodes/account:1/journey",
    ],
)
def test_a_time_parameter_beyond_2_62_or_negative_is_a_400_naming_it(
    api: tuple[TestClient, Journal], path: str, name: str, value: str
) -> None:
    client, _ = api
    refused(client.get(path, params={name: value}), 400, "invalid_query", f"query.{name}", "2**62")


def test_a_duration_longer_than_the_epoch_reaches_back_to_the_epoch(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    got = client.get("/v1/nodes/profile:1/count", params={"since": "9999999d"})
    assert got.status_code == 200 and got.json()["count"] == 2


def test_a_traversal_time_beyond_2_62_is_a_400(api: tuple[TestClient, Journal]) -> None:
    client, _ = api
    body = '{"start": "account:1", "hops": ["has_profile"], "since": %s}' % ("9" * 30)
    refused(client.post("/v1/query/traverse", content=body), 400, "invalid_query", "$.since")


@pytest.mark.parametrize("starts_at", [1e30, 3.7e24])
def test_a_start_time_written_as_a_huge_float_is_a_400_naming_the_bound(
    api: tuple[TestClient, Journal], starts_at: float
) -> None:
    client, _ = api
    body = json.dumps({"id": "e1", "title": "t", "starts_at": starts_at})
    refused(client.post("/v1/live/events", content=body), 400, "invalid_input", "$.starts_at")


def test_a_start_time_with_a_fraction_is_a_422(api: tuple[TestClient, Journal]) -> None:
    client, _ = api
    body = json.dumps({"id": "e1", "title": "t", "starts_at": NOW + 0.5})
    refused(client.post("/v1/live/events", content=body), 422, "validation_error", "starts_at")


def test_a_whole_float_is_the_integer_it_spells(api: tuple[TestClient, Journal]) -> None:
    client, _ = api
    later = float(NOW + 3_600_000_000)
    body = json.dumps({"id": "e1", "title": "t", "starts_at": later, "prefetch_lead": 60e6})
    assert client.post("/v1/live/events", content=body).status_code == 201
    got = client.get("/v1/live/events/e1").json()
    assert (got["starts_at"], got["prefetch_lead_us"]) == (int(later), 60_000_000)


@pytest.mark.parametrize(
    "starts_at", ["0³", "99999999999999999999d", "9" * 400 + "d", 10**30, "9" * 5000]
)
def test_a_start_time_that_is_no_time_or_beyond_2_62_is_a_400(
    api: tuple[TestClient, Journal], starts_at: Any
) -> None:
    client, _ = api
    body = {"id": "e1", "title": "t", "starts_at": starts_at}
    message = refused(client.post("/v1/live/events", json=body), 400, "invalid_input")
    assert "$.starts_at" in message
    assert "a time" in message or "<= 4611686018427387903" in message


@pytest.mark.parametrize("delay", [2**63, 2**62, f"-{2**63}", 2**64, "99999999999w"])
def test_a_delay_that_would_move_a_start_beyond_2_62_is_a_400(
    api: tuple[TestClient, Journal], delay: Any
) -> None:
    client, _ = api
    got = client.post("/v1/live/events/final/reschedule", json={"delay": delay})
    message = refused(got, 400, "invalid_input", "$.delay")
    assert "a delay" in message or "<= 4611686018427387903" in message
    assert client.get("/v1/live/events/final").json()["starts_at"] == NOW + 30 * MINUTE


def test_a_delay_inside_its_bound_that_moves_the_start_beyond_2_62_is_a_422(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    got = client.post("/v1/live/events/final/reschedule", json={"delay": 2**62 - 1})
    refused(got, 422, "invalid_schedule", "starts_at must be µs since the epoch in [0, 2**62)")


# -- deep nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2_000, 50_000])
def test_mutation_props_nested_thousands_deep_are_a_400_before_parsing(
    api: tuple[TestClient, Journal], depth: int
) -> None:
    client, _ = api
    body = (
        '{"mutations": [{"kind": "node_upsert", "node": "profile:9", "ts": ' + str(NOW) + ", "
        '"id": "x", "props": {"name": ' + nested(depth) + "}}]}"
    )
    refused(client.post("/v1/mutations", content=body), 400, "too_deep", "at most 64")


def test_props_nested_beyond_32_levels_are_a_422_naming_the_mutation(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    body = {"mutations": [mutation(props={"name": json.loads(nested(40))})]}
    refused(client.post("/v1/mutations", json=body), 422, "schema_violation", "mutation #0")


@pytest.mark.parametrize("depth", [2_000, 50_000])
def test_a_where_nested_thousands_deep_is_a_400(
    api: tuple[TestClient, Journal], depth: int
) -> None:
    client, _ = api
    body = '{"start": "account:1", "hops": [{"edge": "has_profile", "where": {"a": %s}}]}'
    got = client.post("/v1/query/traverse", content=body % nested(depth))
    refused(got, 400, "too_deep")
    got = client.get(
        "/v1/nodes/profile:1/neighbours", params={"where": '{"a": ' + nested(3000) + "}"}
    )
    refused(got, 400, "invalid_query")


@pytest.mark.parametrize("depth", [2_000, 50_000])
@pytest.mark.parametrize("array", [False, True])
def test_a_journal_body_nested_thousands_deep_is_a_400_and_journals_nothing(
    api: tuple[TestClient, Journal], depth: int, array: bool
) -> None:
    client, journal = api
    record = '{"a": ' + nested(depth) + "}"
    body = f"[{record}]" if array else record
    refused(client.post("/v1/ingest/logs", content=body), 400, "too_deep")
    assert journaled(journal) == 0


# -- ids, integers, Unicode, non-finite numbers ---------------------------------------------------


def test_a_600_character_node_id_is_a_422_naming_the_mutation_and_the_bound(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    body = {"mutations": [mutation(), mutation(node="profile:" + "x" * 600)]}
    message = refused(client.post("/v1/mutations", json=body), 422, "out_of_bounds")
    assert message.startswith("mutation #1: node id 'profile:xxx")
    assert "the limit is 250" in message
    assert client.get("/v1/nodes/profile:9").status_code == 404  # nothing of the batch written


def test_a_600_character_node_id_in_a_read_is_a_400(api: tuple[TestClient, Journal]) -> None:
    client, _ = api
    refused(client.get("/v1/nodes/profile:" + "x" * 600), 400, "invalid_query", "at most 250")


def test_a_2000_byte_idempotency_id_is_a_422_naming_the_bound(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    body = {"mutations": [mutation(id="x" * 2000)]}
    refused(client.post("/v1/mutations", json=body), 422, "out_of_bounds", "limit is 1024")


@pytest.mark.parametrize(
    "number", ["1180591620717411303424", "9" * 400, "-" + "9" * 4000, "9" * 5000]
)
def test_an_integer_beyond_int64_is_refused_naming_the_property(
    api: tuple[TestClient, Journal], number: str
) -> None:
    client, _ = api
    body = (
        '{"mutations": [{"kind": "edge_upsert", "src": "profile:1", "type": "plays", '
        f'"dst": "game:1", "ts": {NOW}, "id": "x", "props": {{"minutes": {number}}}}}]}}'
    )
    got = client.post("/v1/mutations", content=body)
    assert got.status_code in (400, 422), got.text
    assert "minutes" in got.json()["message"] or "out of range" in got.json()["message"]


def test_a_huge_integer_in_a_query_parameter_is_a_400(api: tuple[TestClient, Journal]) -> None:
    client, _ = api
    for limit in ("9" * 400, "9" * 5000):
        got = client.get("/v1/nodes/profile:1/neighbours", params={"limit": limit})
        refused(got, 400, "invalid_query", "query.limit")


@pytest.mark.parametrize(
    "body",
    [
        b'{"mutations": [{"kind": "node_upsert", "node": "profile:\\ud800", "ts": 1, "id": "a"}]}',
        b'{"mutations": [{"kind": "node_upsert", "node": "profile:1", "ts": 1, "id": "\\udfff"}]}',
        b'{"mutations": [{"kind": "node_upsert", "node": "profile:1", "ts": 1, "id": "a", '
        b'"props": {"name": "\\ud800"}}]}',
    ],
)
def test_a_lone_surrogate_in_an_id_or_a_property_is_a_400_saying_so(
    api: tuple[TestClient, Journal], body: bytes
) -> None:
    client, _ = api
    refused(client.post("/v1/mutations", content=body), 400, "malformed_json", "surrogate")


def test_a_lone_surrogate_in_a_journal_record_is_a_400(api: tuple[TestClient, Journal]) -> None:
    client, journal = api
    refused(client.post("/v1/ingest/logs", content=b'{"a": "\\ud800"}'), 400, "malformed_json")
    assert journaled(journal) == 0


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_non_finite_number_is_refused(api: tuple[TestClient, Journal], value: bytes) -> None:
    client, _ = api
    body = (
        b'{"mutations": [{"kind": "edge_upsert", "src": "profile:1", "type": "plays", '
        b'"dst": "game:1", "ts": 1, "id": "x", "props": {"minutes": ' + value + b"}}]}"
    )
    got = client.post("/v1/mutations", content=body)
    assert got.status_code in (400, 422), got.text
    assert got.json()["message"]


# -- times the clock decides ----------------------------------------------------------------------


def test_a_write_more_than_an_hour_in_the_future_is_a_422_naming_it(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    year_9999 = 253_402_300_799_000_000
    body = {"mutations": [mutation(), mutation(id="late", ts=year_9999)]}
    message = refused(client.post("/v1/mutations", json=body), 422, "future_time", "mutation #1")
    assert "'late'" in message and "3,600 s allowed" in message
    assert client.get("/v1/nodes/profile:9").status_code == 404


def test_a_write_older_than_its_retention_is_reported_expired_not_lost_silently(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    old = {"kind": "node_upsert", "node": "device:old", "ts": NOW - 200 * DAY, "id": "old"}
    got = client.post("/v1/mutations", json={"mutations": [mutation(), old]})
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["applied"] == 1 and answer["skipped"] == 1
    assert answer["skipped_by_reason"] == {"lost_to_newer": 0, "expired": 1}
    assert answer["expired"][0]["index"] == 1 and answer["expired"][0]["id"] == "old"
    assert "beyond the type's retention" in answer["expired"][0]["message"]


def test_a_write_that_loses_to_a_newer_version_is_counted_as_such(
    api: tuple[TestClient, Journal],
) -> None:
    client, _ = api
    stale = {"kind": "node_upsert", "node": "profile:1", "ts": NOW - 40 * DAY, "id": "stale"}
    answer = client.post("/v1/mutations", json={"mutations": [stale]}).json()
    assert answer["skipped_by_reason"] == {"lost_to_newer": 1, "expired": 0}

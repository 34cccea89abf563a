"""The ``/v1/live`` routes over a LiveService on the memory store, with a clock the test moves.

Most tests use the client without its context manager, so the app's lifespan (resume and the
timer loop) does not run and the test fires timers itself with ``service.tick``; the lifespan
tests at the end enter it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.seed import NOW, TestClient
from hopcast import Graph
from hopcast.api import create_app
from hopcast.durations import HOUR, MINUTE, SECOND
from hopcast.live.prefetch import DEFAULT_JITTER, DEFAULT_MAX_AGE_S
from hopcast.live.producer import Trigger
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService

START = NOW + 10 * MINUTE
LEAD = 5 * MINUTE
EVENTS = "/v1/live/events"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, int]] = []
        self.arrived = threading.Event()

    def __call__(self, triggers: Sequence[Trigger]) -> None:
        self.triggers += [(t.event_id, t.stage.value, t.version) for t in triggers]
        self.arrived.set()


class Live:
    """The pieces a test pokes at: clock, sink, service, and a client of the app."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.sink = Sink()
        self.graph = Graph.open(clock=self.clock)
        self.service = LiveService(self.graph.store.kv, sink=self.sink, clock=self.clock)
        self.app = create_app(self.graph, live=self.service)
        self.client = TestClient(self.app)

    def create(self, event_id: str = "final", **extra: Any) -> dict[str, Any]:
        body = {"id": event_id, "title": "The Final", "starts_at": START, "prefetch_lead": "5m"}
        response = self.client.post(EVENTS, json=body | extra)
        assert response.status_code == 201, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post(f"{EVENTS}/final/{path}", json=body)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = self.client.get("/metrics").text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture
def live() -> Iterator[Live]:
    world = Live()
    yield world
    world.graph.close()


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


# -- schedule --------------------------------------------------------------------------------------


def test_create_answers_201_with_the_event_document(live: Live) -> None:
    doc = live.create(ends_at="2023-11-15T00:00:00Z")
    assert doc["id"] == "final"
    assert doc["state"] == "scheduled"
    assert doc["version"] == 1
    assert doc["starts_at"] == START
    assert doc["ends_at"] == 1_700_006_400_000_000
    assert doc["prefetch_lead_us"] == LEAD
    assert doc["prefetch_opens_at"] == START - LEAD
    assert doc["delay_us"] == 0
    assert doc["history"] == [
        {"version": 1, "input": "create", "from": None, "to": "scheduled", "at": NOW}
    ]
    assert doc["triggers"] == []


def test_create_takes_a_duration_from_the_servers_now(live: Live) -> None:
    doc = live.create(starts_at="10m", prefetch_lead=LEAD)
    assert doc["starts_at"] == NOW + 10 * MINUTE
    assert doc["prefetch_lead_us"] == LEAD


def test_creating_an_event_that_exists_is_a_409(live: Live) -> None:
    live.create()
    response = live.client.post(EVENTS, json={"id": "final", "title": "x", "starts_at": START})
    assert response.status_code == 409
    doc = response.json()
    assert doc["error"] == "illegal_transition"
    assert "already exists" in doc["message"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"starts_at": NOW - 1}, 422, "in the past"),
        ({"starts_at": "next tuesday"}, 400, "a time"),
        ({"starts_at": "2026-02-29T20:00Z"}, 400, "a time"),  # not a calendar date
        ({"ends_at": START - 1}, 422, "must come after starts_at"),
        ({"prefetch_lead": "soon"}, 400, "prefetch lead"),
        ({"prefetch_lead": "25h"}, 400, "prefetch lead"),
        ({"id": "no spaces"}, 400, "event id"),
        ({"title": " \t"}, 400, "title"),
        ({"starts_at": 1.5}, 422, "starts_at"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
def test_bad_create_input_is_refused_with_the_reason(
    live: Live, body: dict[str, Any], status: int, message: str
) -> None:
    base = {"id": "final", "title": "The Final", "starts_at": START}
    response = live.client.post(EVENTS, json=base | body)
    assert response.status_code == status
    assert message in response.json()["message"]
    assert live.client.get(f"{EVENTS}/final").status_code == 404


def test_a_body_that_is_not_json_is_a_400(live: Live) -> None:
    response = live.client.post(EVENTS, content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"


def test_list_and_get_answer_the_stored_events(live: Live) -> None:
    live.create("b")
    live.create("a")
    listed = live.client.get(EVENTS).json()["events"]
    assert [e["id"] for e in listed] == ["a", "b"]
    one = live.client.get(f"{EVENTS}/a").json()
    assert one == listed[0]
    assert "triggers" not in one


def test_an_unknown_event_is_a_404_on_every_event_route(live: Live) -> None:
    assert live.client.get(f"{EVENTS}/nope").status_code == 404
    for action in ("start", "end", "cancel", "interrupt", "resume"):
        response = live.client.post(f"{EVENTS}/nope/{action}")
        assert response.status_code == 404, action
        assert response.json() == {"error": "not_found", "message": "no live event 'nope'"}
    assert live.client.post(f"{EVENTS}/nope/reschedule", json={"delay": "5m"}).status_code == 404
    assert live.client.post(f"{EVENTS}/nope/materialise").status_code == 404


def test_a_delay_moves_the_triggers_to_the_new_times(live: Live) -> None:
    live.create()
    doc = live.post("reschedule", {"delay": "5m"}).json()
    assert doc["delay_us"] == 5 * MINUTE
    assert doc["starts_at"] == START + 5 * MINUTE
    assert doc["triggers"] == []
    live.service.tick(START - LEAD)  # the old window opening
    assert live.sink.triggers == []
    live.service.tick(START)  # the old start is the new window opening
    assert live.sink.triggers == [("final", "prefetch", 3)]
    live.service.tick(START + 5 * MINUTE)
    assert live.sink.triggers == [("final", "prefetch", 3), ("final", "live", 4)]


def test_reschedule_sets_new_times_and_null_removes_the_end(live: Live) -> None:
    live.create(ends_at=START + HOUR)
    doc = live.post("reschedule", {"starts_at": START + MINUTE}).json()
    assert (doc["starts_at"], doc["ends_at"]) == (START + MINUTE, START + HOUR)
    doc = live.post("reschedule", {"ends_at": None}).json()
    assert (doc["starts_at"], doc["ends_at"]) == (START + MINUTE, None)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"delay": "5m", "starts_at": START}, 400, "not both"),
        ({}, 400, "give starts_at, ends_at or a delay"),
        ({"starts_at": NOW - 1}, 422, "in the past"),
        ({"delay": "a while"}, 400, "delay"),
        ({"delay": [5]}, 422, "delay"),
    ],
)
def test_bad_reschedules_are_refused(
    live: Live, body: dict[str, Any], status: int, message: str
) -> None:
    live.create()
    response = live.post("reschedule", body)
    assert response.status_code == status
    assert message in response.json()["message"]
    assert live.client.get(f"{EVENTS}/final").json()["version"] == 1


def test_start_broadcasts_the_live_trigger_and_answers_it(live: Live) -> None:
    live.create()
    doc = live.post("start").json()
    assert doc["state"] == "live"
    assert doc["triggers"] == [{"event": "final", "stage": "live", "version": 2, "ts": NOW}]
    assert live.sink.triggers == [("final", "live", 2)]


def test_an_illegal_command_is_a_409_listing_what_is_accepted_now(live: Live) -> None:
    live.create()
    response = live.post("resume")
    assert response.status_code == 409
    assert response.json() == {
        "error": "illegal_transition",
        "message": "live event 'final' cannot resume while scheduled "
        "(accepted now: start_now, reschedule, cancel)",
        "event": "final",
        "state": "scheduled",
        "command": "resume",
    }
    assert live.sink.triggers == []


def test_interrupt_resume_end_then_nothing_more_is_accepted(live: Live) -> None:
    live.create()
    states = [live.post(a).json()["state"] for a in ("start", "interrupt", "resume", "end")]
    assert states == ["live", "interrupted", "live", "ended"]
    assert [s for _, s, _ in live.sink.triggers] == states
    for action in ("start", "end", "cancel", "interrupt", "resume"):
        response = live.post(action)
        assert response.status_code == 409
        assert "(accepted now: nothing)" in response.json()["message"]


def test_cancel_broadcasts_the_cancelled_stage(live: Live) -> None:
    live.create()
    assert live.post("cancel").json()["state"] == "cancelled"
    assert live.sink.triggers == [("final", "cancelled", 2)]


def test_commands_and_triggers_are_counted(live: Live) -> None:
    live.create()
    live.post("start")
    live.post("start")
    live.post("reschedule", {"starts_at": "tomorrow"})
    live.service.tick(NOW + HOUR)  # nothing due: the event has no end
    got = live.metrics()
    commands = "hopcast_live_commands_total"
    assert got[commands, labels(command="create", outcome="applied")] == 1
    assert got[commands, labels(command="start_now", outcome="applied")] == 1
    assert got[commands, labels(command="start_now", outcome="illegal")] == 1
    assert got[commands, labels(command="reschedule", outcome="invalid")] == 1
    assert got["hopcast_live_triggers_total", labels(stage="live")] == 1


# -- payloads and prefetch -------------------------------------------------------------------------


def materialised(live: Live) -> None:
    live.create()
    body = {"segments": ["adult.US.en.b0", "kids.US.en.b0"]}
    doc = live.post("materialise?wait=60", body).json()
    assert doc["entries"] == 15
    assert doc["segments"] == 3


def test_materialise_without_a_body_publishes_the_demo_segments(live: Live) -> None:
    live.create()
    doc = live.post("materialise?wait=60").json()
    assert doc["segments"] == 177
    assert doc["stages"] == ["ended", "interrupted", "live", "prefetch", "scheduled"]
    assert (
        live.client.get(f"{EVENTS}/final/cardinality").json()["cardinality"] == doc["cardinality"]
    )


def test_materialise_refuses_a_malformed_segment(live: Live) -> None:
    live.create()
    response = live.post("materialise?wait=60", {"segments": ["no spaces"]})
    assert response.status_code == 400


def test_cardinality_counts_distinct_payloads_against_entries(live: Live) -> None:
    materialised(live)
    doc = live.client.get(f"{EVENTS}/final/cardinality").json()
    assert doc["event"] == "final"
    assert doc["entries"] == 15
    assert 0 < doc["cardinality"] < doc["entries"]
    assert doc["stages"]["live"]["segments"] == 3


def test_the_manifest_has_an_etag_a_jittered_max_age_and_answers_304_when_it_matches(
    live: Live,
) -> None:
    materialised(live)
    url = f"{EVENTS}/final/manifest"
    first = live.client.get(url, params={"segment": "kids.US.en.b0"})
    assert first.status_code == 200
    manifest = first.json()
    assert manifest["segment"] == "kids.US.en.b0"
    assert manifest["opens_at"] == START - LEAD
    assert set(manifest["stages"]) == {"ended", "interrupted", "live", "prefetch", "scheduled"}
    max_age = int(first.headers["cache-control"].removeprefix("public, max-age="))
    low, high = DEFAULT_MAX_AGE_S * (1 - DEFAULT_JITTER), DEFAULT_MAX_AGE_S * (1 + DEFAULT_JITTER)
    assert low <= max_age <= high
    etag = first.headers["etag"]
    again = live.client.get(
        url, params={"segment": "kids.US.en.b0"}, headers={"If-None-Match": etag}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    other = live.client.get(
        url, params={"segment": "adult.US.en.b0"}, headers={"If-None-Match": etag}
    )
    assert other.status_code == 200


def test_a_manifest_with_nothing_published_is_a_404_that_is_not_cached(live: Live) -> None:
    live.create()
    response = live.client.get(f"{EVENTS}/final/manifest")
    assert response.status_code == 404
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "not_found"


def test_a_malformed_segment_is_a_400(live: Live) -> None:
    materialised(live)
    response = live.client.get(f"{EVENTS}/final/manifest", params={"segment": "a b"})
    assert response.status_code == 400


def test_the_stage_payload_follows_the_events_stage_and_its_id_is_immutable(live: Live) -> None:
    materialised(live)
    url = f"{EVENTS}/final/payload"
    scheduled = live.client.get(url, params={"segment": "adult.US.en.b0"})
    live.post("start")
    current = live.client.get(url, params={"segment": "adult.US.en.b0"})
    explicit = live.client.get(url, params={"segment": "adult.US.en.b0", "stage": "live"})
    assert scheduled.status_code == current.status_code == 200
    assert current.headers["etag"] == explicit.headers["etag"] != scheduled.headers["etag"]
    assert current.json()["title"]["badge"] == "Live"

    payload_id = current.headers["etag"].strip('"')
    by_id = live.client.get(f"/v1/live/payloads/{payload_id}")
    assert by_id.status_code == 200
    assert by_id.content == current.content
    assert by_id.headers["cache-control"] == "public, max-age=31536000, immutable"
    cached = live.client.get(
        f"/v1/live/payloads/{payload_id}", headers={"If-None-Match": f'W/"{payload_id}"'}
    )
    assert cached.status_code == 304


def test_an_unknown_payload_is_a_404_and_a_stage_without_one_too(live: Live) -> None:
    materialised(live)
    assert live.client.get("/v1/live/payloads/" + "0" * 32).status_code == 404
    assert live.client.get("/v1/live/payloads/not-an-id").status_code == 400
    missing = live.client.get(f"{EVENTS}/final/payload", params={"stage": "cancelled"})
    assert missing.status_code == 404
    assert missing.headers["cache-control"] == "no-store"
    assert live.client.get(f"{EVENTS}/nope/payload").status_code == 404


def test_prefetch_responses_are_counted_by_route_and_status(live: Live) -> None:
    materialised(live)
    url = f"{EVENTS}/final/manifest"
    etag = live.client.get(url).headers["etag"]
    live.client.get(url, headers={"If-None-Match": etag})
    live.client.get("/v1/live/payloads/" + "0" * 32)
    got = live.metrics()
    prefetch = "hopcast_live_prefetch_responses_total"
    assert got[prefetch, labels(route="manifest", status="200")] == 1
    assert got[prefetch, labels(route="manifest", status="304")] == 1
    assert got[prefetch, labels(route="payload", status="404")] == 1


# -- documentation and lifespan --------------------------------------------------------------------


def test_the_openapi_document_lists_every_live_route_and_its_409(live: Live) -> None:
    doc = live.client.get("/openapi.json").json()
    paths = {p for p in doc["paths"] if p.startswith("/v1/live")}
    assert paths == {
        "/v1/live/events",
        "/v1/live/events/{event_id}",
        *(f"/v1/live/events/{{event_id}}/{a}" for a in ("reschedule", "start", "end", "cancel")),
        *(f"/v1/live/events/{{event_id}}/{a}" for a in ("interrupt", "resume", "materialise")),
        *(f"/v1/live/events/{{event_id}}/{a}" for a in ("cardinality", "manifest", "payload")),
        "/v1/live/payloads/{payload_id}",
        "/v1/live/jobs/{job_id}",
    }
    create = doc["paths"]["/v1/live/events"]["post"]
    assert "409" in create["responses"] and "201" in create["responses"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert set(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["required"]) == {
        "id",
        "title",
        "starts_at",
    }
    manifest = doc["paths"]["/v1/live/events/{event_id}/manifest"]["get"]
    assert "304" in manifest["responses"]


def test_an_app_without_a_live_service_has_no_live_routes() -> None:
    with Graph.open() as graph:
        client = TestClient(create_app(graph))
        assert client.get(EVENTS).status_code == 404


def test_starting_the_app_resumes_the_service_and_fires_what_fell_due(live: Live) -> None:
    live.service.command(Create("final", "The Final", START, START + HOUR, LEAD), NOW)
    live.clock.now = START + SECOND  # the server was down through the window and the start
    with live.client:
        assert live.sink.triggers == [("final", "live", 2)]
        assert live.client.get(f"{EVENTS}/final").json()["state"] == "live"


def test_the_apps_timer_loop_fires_the_end_when_the_clock_reaches_it(live: Live) -> None:
    live.service.command(Create("final", "The Final", NOW, START, LEAD), NOW)
    assert live.sink.triggers == [("final", "live", 2)]
    live.sink.arrived.clear()
    with live.client:
        live.clock.now = START
        live.service.poke()
        assert live.sink.arrived.wait(timeout=10)
        assert live.sink.triggers[-1] == ("final", "ended", 3)

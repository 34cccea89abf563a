"""The ``/v1/console`` routes over a real app: device reports and the dashboard, recommendations
from the graph, the graph explorer, ingest status, the OpenAPI entries and the static pages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.seed import NOW, SEED, TestClient
from hopcast import EdgeUpsert, Graph, NodeUpsert
from hopcast.api import app as app_module
from hopcast.api import create_app
from hopcast.api.console import NodeDirectory, cdf, pick_event
from hopcast.durations import DAY, HOUR, MINUTE
from hopcast.live.fanout import InProcessTransport, Router
from hopcast.live.gateway import Gateway
from hopcast.live.payloads import decode_payload
from hopcast.live.prefetch import decode_manifest
from hopcast.live.schedule import Create, StartNow
from hopcast.live.service import LiveService
from hopcast.stream.deadletter import DeadLetter, DeadLetterStore
from hopcast.stream.engines.embedded import EngineStats
from hopcast.stream.record import Position

C = "/v1/console"

LIVE = [
    NodeUpsert("live_event:1", NOW - 30 * DAY, "l1", {"name": "The Final", "sport": "football"}),
    NodeUpsert("team:a", NOW - 30 * DAY, "l2", {"name": "Red Rovers", "sport": "football"}),
    EdgeUpsert("live_event:1", "features", "team:a", NOW - 30 * DAY, "l3"),
    EdgeUpsert("profile:1", "supports", "team:a", NOW - HOUR, "l4", {"source": "app"}),
    EdgeUpsert("profile:2", "supports", "team:a", NOW - HOUR, "l5", {"source": "app"}),
    EdgeUpsert("profile:9", "watched_live", "live_event:1", NOW - DAY, "l6", {"minutes": 5}),
    EdgeUpsert(
        "profile:1", "plays", "game:1", NOW - 2 * HOUR, "l7", {"minutes": 3, "device": "device:tv1"}
    ),
    EdgeUpsert(
        "profile:1",
        "streamed_from",
        "device:tv1",
        NOW - 3 * DAY + 1,
        "l8",
        {"title": "title:10", "bitrate_kbps": 3000},
    ),
    EdgeUpsert("profile:2", "browsed", "live_event:1", NOW - HOUR, "l9", {"row": "r", "page": "p"}),
]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


class Stack:
    """A graph with the API seed and a live event, its live service, and a client."""

    def __init__(self, **app_options: Any) -> None:
        self.clock = Clock()
        self.graph = Graph.open(clock=self.clock)
        self.graph.apply([*SEED, *LIVE])
        self.service = LiveService(self.graph.store.kv, clock=self.clock)
        self.app = create_app(self.graph, live=self.service, **app_options)
        self.client = TestClient(self.app)

    def create(self, event_id: str = "final", starts_in: int = 10 * MINUTE) -> None:
        self.service.command(
            Create(event_id, "The Final", self.clock.now + starts_in, None, 5 * MINUTE),
            self.clock.now,
        )


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.graph.close()


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def err(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["message"]
    if code is not None:
        assert body["error"] == code
    return body


# -- pure helpers ----------------------------------------------------------------------------------


def test_cdf_rises_to_one_in_at_most_the_points_asked() -> None:
    assert cdf([]) == []
    points = cdf([float(v) for v in range(1, 1001)], points=50)
    assert len(points) == 50
    assert points[0] == {"ms": 20.0, "fraction": 0.02}
    assert points[-1] == {"ms": 1000.0, "fraction": 1.0}
    assert cdf([5.0, 1.0]) == [{"ms": 1.0, "fraction": 0.5}, {"ms": 5.0, "fraction": 1.0}]


def test_the_directory_finds_ids_by_prefix() -> None:
    d = NodeDirectory()
    d.add([f"title:{i}" for i in range(30)] + ["profile:1-0", "no-type", "team:7"])
    assert d.search("title:2", None, 5) == (
        ["title:2", "title:20", "title:21", "title:22", "title:23"],
        True,
    )
    assert d.search("1", "title", 3) == (["title:1", "title:10", "title:11"], True)
    assert d.search("", "team", 10) == (["team:7"], False)
    assert d.search("profile:1", None, 10) == (["profile:1-0"], False)
    d.add(["title:99"])
    assert "title:99" in d.search("title:9", None, 10)[0]
    assert len(d) == 33


# -- reports and the dashboard ---------------------------------------------------------------------


def test_dashboard_without_events_or_gateway(stack: Stack) -> None:
    doc = ok(stack.client.get(f"{C}/dashboard"))
    assert doc["event"] is None and doc["prefetch"] is None and doc["time_to_update"] is None
    assert doc["devices"] == {"gateway": False, "connected": 0}
    assert doc["origin"]["window_s"] == 10


def test_reports_fill_coverage_and_the_time_to_update_cdf(stack: Stack) -> None:
    stack.create()
    c = stack.client
    doc = ok(c.get(f"{C}/dashboard"))
    assert doc["event"]["id"] == "final" and doc["event"]["state"] == "scheduled"
    assert doc["prefetch"] == {"stage": "live", "devices": 0, "connected": 0, "coverage_pct": None}
    reports = [
        {"device": f"d{i}", "kind": "prefetched", "event": "final", "stages": ["prefetch", "live"]}
        for i in range(3)
    ] + [{"device": "d9", "kind": "prefetched", "event": "final", "stages": ["prefetch"]}]
    assert ok(c.post(f"{C}/reports", json={"reports": reports}), 202) == {"accepted": 4}
    assert ok(c.get(f"{C}/dashboard"))["prefetch"]["devices"] == 3
    # the event goes live: the trigger's time is remembered; devices report when they updated
    stack.clock.now += MINUTE
    result = stack.service.command(StartNow("final"), stack.clock.now)
    trigger = result.triggers[-1]
    updated = [
        {
            "device": f"d{i}",
            "kind": "updated",
            "event": "final",
            "stage": "live",
            "version": trigger.version,
            "at": trigger.ts + (i + 1) * 10_000,
        }
        for i in range(3)
    ]
    ok(c.post(f"{C}/reports", json={"reports": updated}), 202)
    doc = ok(c.get(f"{C}/dashboard?event=final"))
    assert doc["event"]["state"] == "live"
    ttu = doc["time_to_update"]
    assert ttu["stage"] == "live" and ttu["version"] == trigger.version
    assert ttu["trigger_ts"] == trigger.ts
    assert ttu["devices"] == 3
    assert ttu["p50_ms"] == 20.0 and ttu["max_ms"] == 30.0
    assert ttu["cdf"][-1] == {"ms": 30.0, "fraction": 1.0}
    assert doc["prefetch"]["stage"] == "live"


def test_origin_rate_counts_prefetch_requests(stack: Stack) -> None:
    stack.create()
    stack.service.materialise("final", stack.clock.now)  # fixture payloads
    c = stack.client
    ok(c.get(f"{C}/dashboard"))  # first sample
    for _ in range(5):
        assert c.get("/v1/live/events/final/manifest?segment=all").status_code == 200
    time.sleep(0.25)
    origin = ok(c.get(f"{C}/dashboard?window=60"))["origin"]
    assert origin["requests"] == 5
    assert origin["rps"] > 0
    assert origin["series"] and origin["series"][-1]["rps"] > 0


def test_dashboard_counts_the_gateway_devices() -> None:
    s = Stack()
    router = Router(InProcessTransport(), payload_for=s.service.payload_for)
    gateway = Gateway(router, b"k" * 32, node_id="test")
    from hopcast.api import console

    app = create_app(s.graph, console_routes=False)
    console.install(app, s.graph, None, live=s.service, gateway=gateway)
    doc = ok(TestClient(app).get(f"{C}/dashboard"))
    assert doc["devices"] == {"gateway": True, "connected": 0}
    s.graph.close()


def test_bad_reports_and_dashboard_queries(stack: Stack) -> None:
    c = stack.client
    missing = {"device": "d", "kind": "updated", "event": "final", "stage": "live"}
    err(c.post(f"{C}/reports", json={"reports": [missing]}), 422, "validation_error")
    unknown = {"device": "d", "kind": "cheered", "event": "final"}
    err(c.post(f"{C}/reports", json={"reports": [unknown]}), 422, "validation_error")
    many = [{"device": "d", "kind": "prefetched", "event": "e"}] * 1001
    err(c.post(f"{C}/reports", json={"reports": many}), 413, "too_many_reports")
    err(c.post(f"{C}/reports", content=b"{nope"), 400, "malformed_json")
    err(c.get(f"{C}/dashboard?window=0"), 400, "invalid_query")
    err(c.get(f"{C}/dashboard?window=x"), 422)
    err(c.get(f"{C}/dashboard?event=nope"), 404, "not_found")


def test_pick_event_prefers_live_then_next(stack: Stack) -> None:
    stack.create("later", 20 * MINUTE)
    stack.create("sooner", 10 * MINUTE)
    events = stack.service.events()
    assert pick_event(events, NOW).id == "sooner"
    stack.service.command(StartNow("later"), NOW)
    assert pick_event(stack.service.events(), NOW).id == "later"
    assert pick_event([], NOW) is None


# -- recommendations from the graph ----------------------------------------------------------------


def test_materialise_from_the_graph_and_prefetch_by_member(stack: Stack) -> None:
    stack.create()
    c = stack.client
    doc = ok(
        c.post(
            f"{C}/events/final/materialise?wait=60",
            json={"node": "live_event:1", "max_segments": 4},
        )
    )
    assert doc["changed"] and doc["node"] == "live_event:1"
    keys = [s["key"] for s in doc["segments"]]
    assert keys == ["team.a", "viewers", "all"]
    assert doc["cardinality"] == 9 and doc["members"] == 3
    # nothing changed: the same payloads
    again = ok(c.post(f"{C}/events/final/materialise?wait=60", json={}))
    assert again["changed"] and again["new_payloads"] == 0  # forced, content-addressed
    seg = ok(c.get(f"{C}/events/final/segments?member=profile:1"))
    assert seg["member"]["segment"] == "team.a" and seg["member"]["lookup_us"] >= 0
    assert seg["segments"][0]["label"] == "fans of Red Rovers"
    rows = seg["segments"][0]["rows"]
    assert rows[0]["title"] == "Popular with fans of Red Rovers"
    assert rows[0]["items"][:2] == [
        {"id": "title:11", "name": "Ozark"},
        {"id": "title:10", "name": "Dark"},
    ]
    assert ok(c.get(f"{C}/events/final/segments?member=profile:404"))["member"]["segment"] == "all"
    # the device asks with its profile id and gets its segment's payloads
    manifest = decode_manifest(c.get("/v1/live/events/final/manifest?segment=profile:1").content)
    assert manifest.segment == "team.a"
    live = decode_payload(bytes(manifest.payloads[manifest.stages["live"]]))
    assert live.title.id == "live_event:1" and live.title.badge == "Live"
    # profile:2 supports team:a too (2.0) more than it browsed the event (1.0)
    assert (
        decode_manifest(c.get("/v1/live/events/final/manifest?segment=profile:2").content).segment
        == "team.a"
    )


def test_materialise_errors(stack: Stack) -> None:
    stack.create()
    c = stack.client
    err(
        c.post(f"{C}/events/nope/materialise?wait=60", json={"node": "live_event:1"}),
        404,
        "not_found",
    )
    err(c.post(f"{C}/events/final/materialise?wait=60"), 422, "no_graph_node")  # none for "final"
    err(c.post(f"{C}/events/final/materialise?wait=60", json={"node": "live_event:2"}), 404)
    err(c.post(f"{C}/events/final/materialise?wait=60", json={"max_segments": "x"}), 422)
    err(
        c.post(
            f"{C}/events/final/materialise?wait=60",
            json={"node": "live_event:1", "max_segments": 0},
        ),
        400,
    )
    err(c.get(f"{C}/events/final/segments"), 404, "not_found")
    ok(c.post(f"{C}/events/final/materialise?wait=60", json={"node": "live_event:1"}))
    err(c.get(f"{C}/events/final/segments?member=nocolon"), 400, "invalid_query")
    err(c.get(f"{C}/events/final/segments?member=planet:1"), 400, "invalid_query")


# -- graph explorer --------------------------------------------------------------------------------


def test_search_finds_exact_ids_and_directory_prefixes(stack: Stack) -> None:
    c = stack.client
    doc = ok(c.get(f"{C}/graph/search?q=title:10"))
    assert [n["id"] for n in doc["nodes"]] == ["title:10"]
    assert doc["nodes"][0]["props"]["name"] == "Dark" and doc["nodes"][0]["type"] == "title"
    assert ok(c.get(f"{C}/graph/search?q=10&type=title"))["nodes"][0]["id"] == "title:10"
    assert ok(c.get(f"{C}/graph/search?q=title:1"))["nodes"] == []  # not a node, not known
    stack.app.state.console.directory.add(["title:10", "title:11", "title:12"])
    found = ok(c.get(f"{C}/graph/search?q=title:1&limit=2"))
    assert [n["id"] for n in found["nodes"]] == ["title:10", "title:11"]
    assert found["truncated"]
    err(c.get(f"{C}/graph/search?q=x&type=planet"), 400, "invalid_query")
    err(c.get(f"{C}/graph/search?q=x&limit=0"), 400)
    # an id of another type than the one asked for matches nothing
    assert ok(c.get(f"{C}/graph/search?q=profile:1&type=title")) == {
        "nodes": [],
        "truncated": False,
    }


def test_neighbourhood_is_shaped_for_drawing(stack: Stack) -> None:
    c = stack.client
    one = ok(c.get(f"{C}/graph/neighbourhood/profile:1"))
    ids = {n["id"]: n for n in one["nodes"]}
    assert one["center"] == "profile:1" and ids["profile:1"]["depth"] == 0
    assert {"account:1", "title:10", "team:a", "device:tv1"} <= set(ids)
    assert ids["title:10"]["depth"] == 1 and ids["title:10"]["props"]["name"] == "Dark"
    assert any(e["type"] == "has_profile" and e["src"] == "account:1" for e in one["edges"])
    assert not one["truncated"]
    two = ok(c.get(f"{C}/graph/neighbourhood/profile:1?depth=2"))
    depths = {n["id"]: n["depth"] for n in two["nodes"]}
    assert depths["profile:2"] == 2  # via account:1 (or team:a)
    assert depths["live_event:1"] == 2  # via team:a
    assert len({(e["src"], e["type"], e["dst"]) for e in two["edges"]}) == len(two["edges"])
    only = ok(c.get(f"{C}/graph/neighbourhood/profile:1?edge=has_profile"))
    assert {n["id"] for n in only["nodes"]} == {"profile:1", "account:1"}
    # the nodes shown become searchable
    assert ok(c.get(f"{C}/graph/search?q=team:"))["nodes"][0]["id"] == "team:a"
    err(c.get(f"{C}/graph/neighbourhood/profile:404"), 404, "not_found")
    err(c.get(f"{C}/graph/neighbourhood/profile:1?depth=3"), 400)
    err(c.get(f"{C}/graph/neighbourhood/profile:1?limit=501"), 400)
    err(c.get(f"{C}/graph/neighbourhood/profile:1?edge=nope"), 400)


def test_journey_timeline_across_devices_and_verticals(stack: Stack) -> None:
    c = stack.client
    doc = ok(c.get(f"{C}/graph/journey/profile:1?since=30d"))
    assert doc["account"] == "account:1"
    assert "device:tv1" in doc["devices"]
    entries = doc["entries"]
    assert [e["ts"] for e in entries] == sorted((e["ts"] for e in entries), reverse=True)
    by_type = {e["type"]: e for e in entries}
    assert by_type["plays"]["vertical"] == "games" and by_type["plays"]["device"] == "device:tv1"
    assert by_type["streamed_from"]["device"] == "device:tv1"
    assert by_type["started_watching"]["vertical"] == "streaming"
    assert by_type["started_watching"]["dst_name"] in ("Dark", "Ozark")
    live = [e for e in entries if e["dst"] == "live_event:1"]
    assert live and all(e["vertical"] == "live" for e in live)
    assert {"games", "streaming", "live"} <= set(doc["verticals"])
    same = ok(c.get(f"{C}/graph/journey/account:1?since=30d"))
    assert same["entries"] == entries
    page = ok(c.get(f"{C}/graph/journey/account:1?since=30d&limit=1"))
    assert len(page["entries"]) == 1 and page["cursor"]
    nxt = ok(c.get(f"{C}/graph/journey/account:1?since=30d&limit=1&cursor={page['cursor']}"))
    assert nxt["entries"][0] == entries[1]
    err(c.get(f"{C}/graph/journey/title:10"), 400, "invalid_query")
    err(c.get(f"{C}/graph/journey/profile:404"), 404)
    err(c.get(f"{C}/graph/journey/account:1?since=soon"), 400)


# -- ingest ----------------------------------------------------------------------------------------


def test_ingest_status_without_a_pipeline_counts_stored_dead_letters(stack: Stack) -> None:
    DeadLetterStore(stack.graph.store.kv).put(
        DeadLetter("malformed_json", "bad", b"{", "browse", Position("0", 1), NOW, "decode")
    )
    doc = ok(stack.client.get(f"{C}/ingest"))
    assert doc["engine"] is False and doc["dead_letters"] == 1
    assert doc["freshness_ms"] is None and doc["lag_total_bytes"] == 0


def test_ingest_status_of_a_running_pipeline() -> None:
    stats = EngineStats()
    stats.events, stats.mutations = 1000, 4000
    stats.dead_letters, stats.dead_by_reason = 2, {"malformed_json": 2}
    stats.lag = {"browse": 512, "playback": 0}
    stats.freshness.extend([0.010, 0.020, 0.030])
    stats.history.append((stats.started + 2.0, 1000, 4000))
    s = Stack(ingest=stats)
    doc = ok(s.client.get(f"{C}/ingest"))
    assert doc["engine"] is True
    assert doc["events"] == 1000 and doc["events_per_s"] == 500.0
    assert doc["mutations_per_s"] == 2000.0
    assert doc["lag_bytes"] == {"browse": 512, "playback": 0} and doc["lag_total_bytes"] == 512
    assert doc["freshness_ms"] == {"p50": 20.0, "p99": 30.0}
    assert doc["dead_letters"] == 2 and doc["dead_by_reason"] == {"malformed_json": 2}
    s.graph.close()


# -- documents and pages ---------------------------------------------------------------------------


def test_the_console_routes_are_in_openapi(stack: Stack) -> None:
    doc = ok(stack.client.get("/openapi.json"))
    console = {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        if path.startswith(C)
        for method, op in item.items()
    }
    assert set(console) == {
        ("POST", f"{C}/reports"),
        ("GET", f"{C}/dashboard"),
        ("POST", f"{C}/events/{{event_id}}/materialise"),
        ("GET", f"{C}/events/{{event_id}}/segments"),
        ("GET", f"{C}/graph/search"),
        ("GET", f"{C}/graph/neighbourhood/{{node_id}}"),
        ("GET", f"{C}/graph/journey/{{node_id}}"),
        ("GET", f"{C}/ingest"),
    }
    assert all(op.get("summary") and op.get("tags") == ["console"] for op in console.values())
    assert "requestBody" in console[("POST", f"{C}/reports")]


def test_a_graph_only_app_has_no_console() -> None:
    g = Graph.open(clock=lambda: NOW)
    assert TestClient(create_app(g)).get(f"{C}/dashboard").status_code == 404
    g.close()


def test_the_web_directory_is_served_and_home_redirects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "device.html").write_text("<!doctype html><title>device</title>")
    (web / "index.html").write_text("<!doctype html><title>home</title>")
    monkeypatch.setattr(app_module, "WEB_DIR", web)
    g = Graph.open(clock=lambda: NOW)
    client = TestClient(create_app(g))
    page = client.get("/web/device.html")
    assert page.status_code == 200 and "device" in page.text
    home = client.get("/", follow_redirects=False)
    assert home.status_code in (302, 307) and home.headers["location"] == "/web/"
    assert "home" in client.get("/").text
    g.close()
    monkeypatch.setattr(app_module, "WEB_DIR", tmp_path / "absent")
    g = Graph.open(clock=lambda: NOW)
    assert TestClient(create_app(g)).get("/web/device.html").status_code == 404
    g.close()


def test_materialise_guesses_the_node_of_an_event_created_without_one(stack: Stack) -> None:
    c = stack.client
    stack.graph.upsert_node("live_event:2", {"name": "Quiz Night", "sport": "quiz"}, ts=NOW)
    stack.create("final")  # titled "The Final", like live_event:1
    stack.service.command(Create("quiz", "QUIZ NIGHT ", NOW + HOUR, None, 5 * MINUTE), NOW)
    stack.service.command(Create("other", "Something else", NOW + HOUR, None, 5 * MINUTE), NOW)
    err(c.post(f"{C}/events/final/materialise?wait=60"), 422, "no_graph_node")  # nothing known yet
    stack.app.state.console.directory.add(["live_event:1", "live_event:2"])
    assert ok(c.post(f"{C}/events/final/materialise?wait=60"))["node"] == "live_event:1"
    assert ok(c.post(f"{C}/events/quiz/materialise?wait=60"))["node"] == "live_event:2"  # by name
    # no name matches: the largest audience (live_event:1 has a watcher, live_event:2 none)
    assert ok(c.post(f"{C}/events/other/materialise?wait=60"))["node"] == "live_event:1"
    # once materialised, the node stays
    stack.app.state.console.directory.add(["live_event:3"])
    assert ok(c.post(f"{C}/events/quiz/materialise?wait=60", json={}))["node"] == "live_event:2"

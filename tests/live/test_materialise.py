"""Recommendation rows from the graph: segments and row order of a small graph, the bound on
segments, refreshes that republish only after a material change, and prefetch by member."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hopcast.durations import DAY, HOUR, MINUTE
from hopcast.errors import ConfigError, InvalidInput, NotFound
from hopcast.graphdb import Graph
from hopcast.kv.lmdb import LmdbKV
from hopcast.live.materialise import (
    VIEWERS,
    EventInfo,
    Facet,
    GatherLimits,
    Inputs,
    Materialiser,
    RankParams,
    Touch,
    Watch,
    build_payloads,
    co_watch,
    decay,
    digest,
    fingerprint,
    plan,
    segment_key,
)
from hopcast.live.payloads import DEFAULT_SEGMENT, decode_payload
from hopcast.live.prefetch import decode_manifest
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService

T0 = 1_700_000_000_000_000
NOW = T0 + 30 * DAY
EVENT = "final"
NODE = "live_event:1"


def build(graph: Graph) -> None:
    """The small graph of these tests (all times relative to NOW):

    * live_event:1 "The Final" features team:a (Red Rovers) and team:b (Blue Bees), genre sports;
    * p1, p2 support team:a; p3 supports team:b; p4 watched the final; p5 watches a sports
      title; p6 touched nothing related;
    * watches: p1 title:3 (1 h ago) and title:4 (20 days ago); p2 title:3 and title:5 (2 h ago);
      p3 title:6; p4 title:4 (1 h ago); p5 title:1; p6 title:2.
    """
    up = graph.upsert_node
    up(NODE, {"name": "The Final", "sport": "football"}, ts=T0)
    up("team:a", {"name": "Red Rovers", "sport": "football"}, ts=T0)
    up("team:b", {"name": "Blue Bees", "sport": "football"}, ts=T0)
    up("genre:sports", {"name": "Sports"}, ts=T0)
    for t in range(1, 7):
        up(f"title:{t}", {"name": f"Title {t}", "kind": "show", "year": 2020}, ts=T0)
    edge = graph.upsert_edge
    edge(NODE, "features", "team:a", ts=T0)
    edge(NODE, "features", "team:b", ts=T0)
    edge(NODE, "in_genre", "genre:sports", ts=T0)
    edge("title:1", "in_genre", "genre:sports", ts=T0)
    edge("title:2", "in_genre", "genre:drama", ts=T0)
    edge("profile:1", "supports", "team:a", {"source": "app"}, ts=NOW - HOUR)
    edge("profile:2", "supports", "team:a", {"source": "app"}, ts=NOW - 2 * HOUR)
    edge("profile:3", "supports", "team:b", {"source": "app"}, ts=NOW - HOUR)
    edge("profile:4", "watched_live", NODE, {"device": "device:4", "minutes": 30}, ts=NOW - DAY)
    watch = {"position_s": 0, "device": "device:x"}
    edge("profile:1", "started_watching", "title:3", watch, ts=NOW - HOUR)
    edge("profile:1", "started_watching", "title:4", watch, ts=NOW - 20 * DAY)
    edge("profile:2", "started_watching", "title:3", watch, ts=NOW - 2 * HOUR)
    edge("profile:2", "started_watching", "title:5", watch, ts=NOW - 2 * HOUR)
    edge("profile:3", "started_watching", "title:6", watch, ts=NOW - HOUR)
    edge("profile:4", "started_watching", "title:4", watch, ts=NOW - HOUR)
    edge("profile:5", "started_watching", "title:1", watch, ts=NOW - HOUR)
    edge("profile:6", "started_watching", "title:2", watch, ts=NOW - HOUR)


@pytest.fixture
def graph() -> Graph:
    g = Graph.open(None, clock=lambda: NOW)
    build(g)
    return g


@pytest.fixture
def service(graph: Graph) -> LiveService:
    svc = LiveService(graph.store.kv, clock=lambda: NOW)
    svc.command(Create(EVENT, "The Final", NOW + HOUR, None, 30 * MINUTE), NOW)
    svc.use_graph(graph, min_changes=3)
    return svc


# -- the pure core ---------------------------------------------------------------------------------


def test_decay_halves_every_half_life() -> None:
    assert decay(0, DAY) == 1.0
    assert decay(DAY, DAY) == pytest.approx(0.5)
    assert decay(-5, DAY) == 1.0  # a signal from the future counts as now


def test_segment_key_is_a_valid_segment() -> None:
    assert segment_key("team", "team:7") == "team.7"
    assert segment_key("genre", "genre:sci fi/x") == "genre.sci_fi_x"


def _inputs() -> Inputs:
    facets = {
        "team.a": Facet("team.a", "team:a", "fans of A"),
        "team.b": Facet("team.b", "team:b", "fans of B"),
        VIEWERS: Facet(VIEWERS, NODE, "viewers of The Final"),
    }
    touches = (
        Touch("m1", "team.a", 2.0, NOW),
        Touch("m2", "team.a", 2.0, NOW),
        Touch("m2", "team.b", 2.0, NOW - 30 * DAY),  # old: m2 stays with team.a
        Touch("m3", "team.b", 2.0, NOW),
        Touch("m3", "team.a", 1.0, NOW),  # m3 leans to team.b, but likes team.a too
        Touch("m4", VIEWERS, 3.0, NOW),
    )
    watches = (
        Watch("m1", "t:x", NOW),
        Watch("m1", "t:x", NOW - DAY),  # a binge counts once
        Watch("m1", "t:x", NOW - 2 * DAY),
        Watch("m1", "t:y", NOW - 14 * DAY),
        Watch("m2", "t:z", NOW),
        Watch("m2", "t:y", NOW),
        Watch("m3", "t:w", NOW),
        Watch("m4", "t:v", NOW),
    )
    return Inputs(EventInfo(NODE, "The Final"), facets, touches, watches, ("team:a", "team:b"))


def test_co_watch_counts_each_member_once_by_their_latest_watch() -> None:
    ranked = co_watch(_inputs().watches, ["m1", "m2"], NOW, 7 * DAY)
    # t:y: m2 now (1.0) + m1 two weeks ago (0.25) = 1.25 ; t:x: m1 now (1.0) ; t:z: m2 (1.0)
    assert [t for t, _ in ranked] == ["t:y", "t:x", "t:z"]
    assert ranked[0][1] == pytest.approx(1.25)


def test_plan_segments_and_row_order() -> None:
    result = plan(_inputs(), 8, NOW, RankParams(row_length=3))
    assert result.keys == ["team.a", "team.b", VIEWERS, DEFAULT_SEGMENT]
    assert dict(result.assignments) == {
        "m1": "team.a",
        "m2": "team.a",
        "m3": "team.b",
        "m4": VIEWERS,
    }
    by_key = {s.key: s for s in result.segments}
    assert by_key["team.a"].members == 2
    assert by_key["team.a"].picks == ("t:y", "t:x", "t:z")
    # team.b's own ranking (t:w), topped up from the whole audience's
    assert by_key["team.b"].picks[0] == "t:w"
    assert len(by_key["team.b"].picks) == 3
    assert by_key[DEFAULT_SEGMENT].members == 0
    assert by_key[DEFAULT_SEGMENT].label == "everyone else (new and unplaced members)"
    labels = [s.label for s in result.segments]
    assert len(labels) == len(set(labels)), f"two segments named alike: {labels}"


def test_plan_respects_max_segments_and_moves_members_to_kept_facets() -> None:
    result = plan(_inputs(), 2, NOW)
    assert result.keys == ["team.a", DEFAULT_SEGMENT]
    # m3's best facet (team.b) was not kept, but m3 likes team.a too; m4 only the event: all
    assert dict(result.assignments) == {"m1": "team.a", "m2": "team.a", "m3": "team.a"}
    by_key = {s.key: s for s in result.segments}
    assert by_key[DEFAULT_SEGMENT].members == 1
    only_all = plan(_inputs(), 1, NOW)
    assert only_all.keys == [DEFAULT_SEGMENT] and not only_all.assignments
    with pytest.raises(InvalidInput):
        plan(_inputs(), 0, NOW)


def test_fingerprint_ignores_times_and_order() -> None:
    a = _inputs()
    moved = Inputs(
        a.event,
        a.facets,
        tuple(reversed([Touch(t.member, t.facet, t.weight, t.ts - 5) for t in a.touches])),
        a.watches,
    )
    assert digest(fingerprint(a)) == digest(fingerprint(moved))
    more = Inputs(a.event, a.facets, (*a.touches, Touch("m9", "team.a", 2.0, NOW)), a.watches)
    assert len(fingerprint(a) ^ fingerprint(more)) == 1


def test_payloads_share_ids_across_stages_of_one_kind() -> None:
    result = plan(_inputs(), 8, NOW)
    names = {"t:x": "X", "team:a": "Red Rovers"}
    built = build_payloads(result, EventInfo(NODE, "The Final", "football"), ("team:a",), names)
    assert built["scheduled"] is built["prefetch"]
    assert built["live"] is built["interrupted"]
    live = built["live"]["team.a"]
    assert live.title.id == NODE and live.title.badge == "Live"
    assert [r.title for r in live.rows] == ["Watch now", "Popular with fans of A", "Playing"]
    assert [i.id for i in live.rows[1].items][:2] == ["t:y", "t:x"]
    assert live.rows[1].items[1].name == "X"
    assert live.rows[2].items[0].name == "Red Rovers"
    assert [r.title for r in built["ended"]["team.a"].rows] == [
        "Highlights",
        "Popular with fans of A",
    ]


# -- from the graph --------------------------------------------------------------------------------


def test_materialise_from_a_graph(service: LiveService) -> None:
    report = service.materialise_graph(EVENT, NOW, node=NODE, max_segments=8)
    state = report.state
    assert report.changed and state.node == NODE
    keys = [s.key for s in state.segments]
    # team.a (2 members), then the one-member facets by key, then all
    assert keys == ["team.a", "genre.sports", "team.b", VIEWERS, DEFAULT_SEGMENT]
    seg = {s.key: s for s in state.segments}
    assert seg["team.a"].members == 2
    assert seg["team.a"].label == "fans of Red Rovers"
    row = seg["team.a"].rows[0]
    assert row.title == "Popular with fans of Red Rovers"
    # title:3 (both fans, recent) > title:5 (p2, recent) > title:4 (p1, 20 days ago)
    assert [i for i, _ in row.items][:3] == ["title:3", "title:5", "title:4"]
    assert row.items[0][1] == "Title 3"
    # three kinds of content per segment; cardinality = distinct payload ids
    assert state.cardinality == 3 * len(keys)
    assert service.payloads.cardinality(EVENT, NOW) == state.cardinality
    m = service.materialiser
    assert m is not None
    assert m.segment_of(EVENT, "profile:1", NOW) == "team.a"
    assert m.segment_of(EVENT, "profile:4", NOW) == VIEWERS
    assert m.segment_of(EVENT, "profile:5", NOW) == "genre.sports"
    assert m.segment_of(EVENT, "profile:6", NOW) is None
    assert state.members == 5 and state.audience == 5


def test_cardinality_never_exceeds_max_segments(service: LiveService) -> None:
    for bound in (1, 2, 3):
        state = service.materialise_graph(EVENT, NOW + bound, node=NODE, max_segments=bound).state
        assert len(state.segments) <= bound
        assert state.segments[-1].key == DEFAULT_SEGMENT
        assert state.cardinality <= 3 * bound
        placed = {s for s in state.payloads["live"]}
        assert placed == {s.key for s in state.segments}


def test_refresh_republishes_only_after_a_material_change(
    service: LiveService, graph: Graph
) -> None:
    first = service.materialise_graph(EVENT, NOW, node=NODE).state
    # nothing changed: nothing republished, the same ids
    again = service.refresh_recommendations(NOW + MINUTE)
    assert [r.changed for r in again] == [False]
    assert again[0].state.payloads == first.payloads
    assert again[0].new_payloads == 0
    # two new edges: below min_changes=3
    graph.upsert_edge("profile:7", "supports", "team:b", {"source": "app"}, ts=NOW)
    graph.upsert_edge("profile:7", "started_watching", "title:6", {"position_s": 0}, ts=NOW)
    assert [r.changed for r in service.refresh_recommendations(NOW + 2 * MINUTE)] == [False]
    # a material change: team:b gains fans who watch a new title
    for p in range(8, 12):
        graph.upsert_edge(f"profile:{p}", "supports", "team:b", {"source": "app"}, ts=NOW)
        graph.upsert_edge(f"profile:{p}", "started_watching", "title:2", {"position_s": 0}, ts=NOW)
    changed = service.refresh_recommendations(NOW + 3 * MINUTE)
    assert [r.changed for r in changed] == [True]
    state = changed[0].state
    assert state.segments[0].key == "team.b"  # now the biggest audience
    assert state.payloads != first.payloads
    assert changed[0].new_payloads > 0
    assert service.materialiser is not None
    assert service.materialiser.segment_of(EVENT, "profile:9", NOW) == "team.b"


def test_refresh_after_a_restart_compares_the_stored_digest(graph: Graph) -> None:
    svc = LiveService(graph.store.kv, clock=lambda: NOW)
    svc.command(Create(EVENT, "The Final", NOW + HOUR, None, 30 * MINUTE), NOW)
    svc.use_graph(graph)
    first = svc.materialise_graph(EVENT, NOW, node=NODE).state
    restarted = LiveService(graph.store.kv, clock=lambda: NOW)
    m = restarted.use_graph(graph)
    report = m.refresh_if_changed(EVENT, NOW + MINUTE)
    assert report is not None and not report.changed
    assert report.state.version == first.version
    assert m.refresh_if_changed("never", NOW) is None


def test_a_member_prefetches_their_segment(service: LiveService) -> None:
    state = service.materialise_graph(EVENT, NOW, node=NODE).state
    response = service.manifest(EVENT, "profile:1", None, NOW)
    assert response.status == 200 and response.body is not None
    manifest = decode_manifest(response.body)
    assert manifest.segment == "team.a"
    assert manifest.stages["live"] == state.payloads["live"]["team.a"]
    live = decode_payload(bytes(manifest.payloads[manifest.stages["live"]]))
    assert live.rows[1].items[0].id == "title:3"
    # a member the materialiser did not place gets the default segment
    other = service.stage_payload(EVENT, "live", "profile:6", None, NOW)
    assert other.status == 200
    assert other.headers["ETag"] == f'"{state.payloads["live"][DEFAULT_SEGMENT]}"'
    # an ordinary segment key still works as before
    plain = service.stage_payload(EVENT, "live", "team.b", None, NOW)
    assert plain.headers["ETag"] == f'"{state.payloads["live"]["team.b"]}"'
    with pytest.raises(InvalidInput):
        service.manifest(EVENT, "profile:1 bad", None, NOW)


def test_materialise_errors(service: LiveService, graph: Graph) -> None:
    with pytest.raises(NotFound):
        service.materialise_graph("nope", NOW)
    with pytest.raises(InvalidInput, match="no graph node"):
        service.materialise_graph(EVENT, NOW)  # "final" names no node and none was given
    with pytest.raises(NotFound):
        service.materialise_graph(EVENT, NOW, node="live_event:404")
    with pytest.raises(InvalidInput):
        service.materialise_graph(EVENT, NOW, node=NODE, max_segments=5000)
    bare = LiveService(graph.store.kv, clock=lambda: NOW)
    with pytest.raises(InvalidInput, match="no graph"):
        bare.materialise_graph(EVENT, NOW)
    with pytest.raises(ConfigError):
        Materialiser(graph, bare.payloads, graph.store.kv, max_segments=0)


def test_the_event_node_defaults_to_live_event_of_its_id(graph: Graph) -> None:
    svc = LiveService(graph.store.kv, clock=lambda: NOW)
    svc.command(Create("1", "The Final", NOW + HOUR, None, 30 * MINUTE), NOW)
    svc.use_graph(graph)
    assert svc.materialise_graph("1", NOW).state.node == NODE


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_segment_lookup_takes_microseconds(backend: str, tmp_path: Path) -> None:
    """A member's segment is one KV get; measured over 10,000 members (printed with -s)."""
    kv = LmdbKV(tmp_path / "lmdb", sync=False) if backend == "lmdb" else None
    graph = Graph.open(None, kv=kv, clock=lambda: NOW)
    build(graph)
    for p in range(100, 10_100):  # 10k fans of team:a
        graph.upsert_edge(f"profile:{p}", "supports", "team:a", {"source": "app"}, ts=NOW)
    svc = LiveService(graph.store.kv, clock=lambda: NOW)
    svc.command(Create(EVENT, "The Final", NOW + HOUR, None, 30 * MINUTE), NOW)
    m = svc.use_graph(graph, limits=GatherLimits(audience=20_000, members=20_000))
    started = time.perf_counter()
    state = svc.materialise_graph(EVENT, NOW, node=NODE).state
    took = time.perf_counter() - started
    members = [f"profile:{p}" for p in range(100, 10_100)]
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for member in members:
            m.segment_of(EVENT, member, NOW)
        best = min(best, (time.perf_counter() - t) / len(members))
    per_request = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for member in members[:2000]:
            svc.segment_for(EVENT, member, NOW)
        per_request = min(per_request, (time.perf_counter() - t) / 2000)
    print(
        f"\n{backend}: materialised {state.audience} members into {len(state.segments)} "
        f"segments (cardinality {state.cardinality}) in {took * 1000:.0f} ms; segment lookup "
        f"{best * 1e6:.2f} µs, segment_for {per_request * 1e6:.2f} µs"
    )
    assert m.segment_of(EVENT, "profile:5000", NOW) == "team.a"
    assert best < 200e-6  # microseconds, with a wide margin for a loaded machine
    graph.close()


def test_lift_brings_a_segments_own_tastes_forward() -> None:
    """Three fans all watch the hit that everyone watches; two of them watch a niche title
    nobody else does. By co-watching alone the hit leads their row; lifted, the niche does."""
    fans = [f"f{i}" for i in range(3)]
    others = [f"o{i}" for i in range(6)]
    facets = {
        "team.a": Facet("team.a", "team:a", "fans of A"),
        VIEWERS: Facet(VIEWERS, NODE, "viewers"),
    }
    touches = tuple(Touch(m, "team.a", 2.0, NOW) for m in fans) + tuple(
        Touch(m, VIEWERS, 3.0, NOW) for m in others
    )
    watches = (
        *(Watch(m, "t:hit", NOW) for m in fans + others),
        Watch("f0", "t:niche", NOW),
        Watch("f1", "t:niche", NOW),
    )
    inputs = Inputs(EventInfo(NODE, "The Final"), facets, touches, watches)
    plain = plan(inputs, 8, NOW, RankParams(lift=0))
    assert plain.segments[0].key == VIEWERS  # six members
    assert {s.key: s.picks for s in plain.segments}["team.a"] == ("t:hit", "t:niche")
    lifted = {s.key: s.picks for s in plan(inputs, 8, NOW).segments}
    assert lifted["team.a"] == ("t:niche", "t:hit")
    assert lifted[DEFAULT_SEGMENT] == ("t:hit", "t:niche")  # everyone: by co-watching
    with pytest.raises(ConfigError):
        RankParams(lift=-1)


def test_an_ended_event_s_map_expires_with_its_payloads(service: LiveService) -> None:
    from hopcast.live.schedule import EndNow, StartNow

    service.materialise_graph(EVENT, NOW, node=NODE)
    m = service.materialiser
    assert m is not None
    service.command(StartNow(EVENT), NOW + 1)
    service.command(EndNow(EVENT), NOW + 2)
    retention = service.payloads.retention_us
    later = NOW + 2 + retention
    assert m.segment_of(EVENT, "profile:1", later - 1) == "team.a"
    assert m.state(EVENT, later - 1) is not None
    assert m.segment_of(EVENT, "profile:1", later + 1) is None
    assert m.state(EVENT, later + 1) is None
    assert service.refresh_recommendations(NOW + 3) == []  # ended: not refreshed
    # materialising again pins everything again
    service.materialise_graph(EVENT, NOW + 4, node=NODE)
    assert m.segment_of(EVENT, "profile:1", later + 1) == "team.a"


def test_an_event_borrowing_another_events_node_is_shown_under_its_own_title(
    service: LiveService, graph: Graph
) -> None:
    """An event created without a graph node of its own (e.g. from the console) takes the
    audience of another event's node, not its name: its payloads carry its own title and no
    sport, while the viewers row still says whose audience it is; refreshes keep the title."""
    service.command(Create("ux-final", "UX Final", NOW + HOUR, None, 30 * MINUTE), NOW)

    def titles(event: str, at: int) -> set[tuple[str, str]]:
        state = service.materialiser.state(event, at) if service.materialiser else None
        assert state is not None and "live" in state.payloads, "materialised, with a live stage"
        out = set()
        for stage in state.payloads:
            body = service.stage_payload(event, stage, DEFAULT_SEGMENT, None, at).body
            assert body is not None, stage
            title = decode_payload(body).title
            out.add((title.name, title.synopsis))
        return out

    state = service.materialise_graph("ux-final", NOW, node=NODE).state
    assert titles("ux-final", NOW) == {("UX Final", "UX Final, live")}
    assert {s.key: s.label for s in state.segments}[VIEWERS] == "viewers of The Final"
    for p in range(8, 12):  # a material change, so the refresh republishes
        graph.upsert_edge(f"profile:{p}", "supports", "team:b", {"source": "app"}, ts=NOW)
        graph.upsert_edge(f"profile:{p}", "started_watching", "title:2", {"position_s": 0}, ts=NOW)
    changed = service.refresh_recommendations(NOW + MINUTE)
    assert [r.changed for r in changed] == [True]
    assert titles("ux-final", NOW + MINUTE) == {("UX Final", "UX Final, live")}
    service.materialise_graph(EVENT, NOW + MINUTE, node=NODE)
    assert titles(EVENT, NOW + MINUTE) == {("The Final", "The Final, live: football")}

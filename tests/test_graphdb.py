"""``hopcast.Graph``: opening, time arguments, write helpers and every query on a tiny graph."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopcast import ApplyResult, Graph, Limits, Schema
from hopcast.durations import DAY, HOUR
from hopcast.errors import InvalidQuery
from hopcast.graph.mutations import EdgeUpsert, Mutation
from hopcast.graphdb import resolve_time
from hopcast.query import spec as q

#: A fixed "now" (2023-11-14 22:13:20 UTC).
NOW = 1_700_000_000_000_000


def clock() -> int:
    return NOW


# -- opening ---------------------------------------------------------------------------------


def test_graph_open_without_a_path_is_in_memory_with_the_demo_schema() -> None:
    with Graph.open(clock=clock) as g:
        assert g.store.kv.name == "memory"
        assert set(g.schema.nodes) == set(Schema.demo().nodes)


def test_graph_open_with_a_path_persists_in_lmdb(tmp_path: Path) -> None:
    with Graph.open(tmp_path / "graph", clock=clock, sync=False) as g:
        assert g.store.kv.name == "lmdb"
        g.upsert_node("account:1", {"plan": "basic"}, ts=NOW - 1)
    with Graph.open(tmp_path / "graph", clock=clock) as again:
        node = again.node("account:1")
        assert node is not None
        assert node.props == {"plan": "basic"}


def test_graph_open_accepts_store_urls_and_a_schema_path(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text("nodes:\n  user: {props: {name: str}}\n")
    with Graph.open("memory://", schema=schema, clock=clock) as g:
        assert set(g.schema.nodes) == {"user"}
    with Graph.open(f"lmdb://{tmp_path / 'url'}", schema=schema, clock=clock) as g:
        assert g.store.kv.name == "lmdb"


def test_graph_open_without_a_cache_still_reads_nodes() -> None:
    with Graph.open(cache=False, clock=clock) as g:
        assert g.engine.cache is None
        g.upsert_node("title:1", {"name": "Heat"}, ts=NOW - 1)
        assert [n.props if n else None for n in g.nodes(["title:1", "title:2"])] == [
            {"name": "Heat"},
            None,
        ]


# -- times ----------------------------------------------------------------------------------


def test_resolve_time_passes_ints_and_none_through() -> None:
    assert resolve_time(123, NOW) == 123
    assert resolve_time(None, NOW) is None


def test_resolve_time_reads_a_duration_as_that_long_before_now() -> None:
    assert resolve_time("7d", NOW) == NOW - 7 * DAY
    assert resolve_time(" 90s ", NOW) == NOW - 90_000_000


def test_resolve_time_reads_a_numeric_string_as_microseconds() -> None:
    assert resolve_time("1700000000000000", 0) == 1_700_000_000_000_000
    assert resolve_time("-5", NOW) == -5


def test_resolve_time_converts_datetimes_naive_ones_as_utc() -> None:
    aware = dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert resolve_time(aware, 0) == NOW
    assert resolve_time(aware.replace(tzinfo=None), 0) == NOW
    plus_one = dt.datetime(2023, 11, 14, 23, 13, 20, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert resolve_time(plus_one, 0) == NOW


def test_resolve_time_converts_a_datetime_to_the_exact_microsecond() -> None:
    # A float detour (timestamp() * 1e6) loses the last microsecond for some instants.
    when = dt.datetime(1974, 4, 5, 6, 7, 55, 277418, tzinfo=dt.UTC)
    assert resolve_time(when, 0) == 134_374_075_277_418


@pytest.mark.parametrize("bad", ["yesterday", "7x", "", True, 1.5, b"7d"])
def test_resolve_time_rejects_anything_else(bad: object) -> None:
    with pytest.raises(InvalidQuery):
        resolve_time(bad, NOW)  # type: ignore[arg-type]


# -- writes ----------------------------------------------------------------------------------


@pytest.fixture
def g() -> Iterator[Graph]:
    graph = Graph.open(clock=clock)
    yield graph
    graph.close()


def test_upsert_node_defaults_ts_to_now(g: Graph) -> None:
    assert g.upsert_node("account:1", {"plan": "basic"}) == ApplyResult(1, 0)
    node = g.node("account:1")
    assert node is not None
    assert node.ts == NOW


def test_write_helpers_without_an_id_make_up_a_fresh_one_each_call(
    g: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[Mutation] = []
    apply = g.apply

    def recording_apply(batch: list[Mutation]) -> ApplyResult:
        sent.extend(batch)
        return apply(batch)

    monkeypatch.setattr(g, "apply", recording_apply)
    g.upsert_node("account:1")
    g.upsert_node("account:1")
    g.upsert_edge("account:1", "has_profile", "profile:1")
    g.delete_edge("account:1", "has_profile", "profile:1")
    g.delete_node("account:1")
    assert len({m.id for m in sent}) == 5


def test_a_write_helper_with_an_id_is_idempotent(g: Graph) -> None:
    first = g.upsert_edge("profile:1", "plays", "game:1", {"minutes": 3}, ts="1h", id="evt-1")
    again = g.upsert_edge("profile:1", "plays", "game:1", {"minutes": 3}, ts="1h", id="evt-1")
    assert (first, again) == (ApplyResult(1, 0), ApplyResult(0, 1))
    edge = g.neighbours("profile:1", "plays").edges[0]
    assert (edge.ts, edge.props) == (NOW - HOUR, {"minutes": 3})


def test_delete_helpers_remove_nodes_and_edges(g: Graph) -> None:
    g.upsert_node("game:1", {"name": "Chess"}, ts=NOW - 10)
    g.upsert_edge("profile:1", "plays", "game:1", {"minutes": 3}, ts=NOW - 10)
    g.upsert_edge("profile:1", "plays", "game:2", {"minutes": 4}, ts=NOW - 10)
    assert g.delete_edge("profile:1", "plays", "game:2", ts=NOW - 5) == ApplyResult(1, 0)
    assert [e.dst for e in g.neighbours("profile:1", "plays").edges] == ["game:1"]
    assert g.delete_node("game:1", ts=NOW - 5) == ApplyResult(1, 0)
    assert g.node("game:1") is None
    assert g.neighbours("profile:1", "plays").edges == []


# -- queries on a tiny graph -------------------------------------------------------------------


@pytest.fixture
def tiny(g: Graph) -> Graph:
    """An account with two profiles and a TV; the profiles watch, play and browse."""
    g.apply(
        [
            EdgeUpsert("account:a", "has_profile", "profile:p1", NOW - 5 * DAY, "1"),
            EdgeUpsert("account:a", "has_profile", "profile:p2", NOW - 4 * DAY, "2"),
            EdgeUpsert("device:tv", "logged_in_from", "account:a", NOW - 3 * DAY, "3"),
            EdgeUpsert(
                "profile:p1", "started_watching", "title:t1", NOW - 2 * DAY, "4", {"position_s": 10}
            ),
            EdgeUpsert(
                "profile:p1", "started_watching", "title:t2", NOW - DAY, "5", {"position_s": 0}
            ),
            EdgeUpsert("profile:p2", "plays", "game:g", NOW - HOUR, "6", {"minutes": 30}),
            EdgeUpsert("profile:p2", "browsed", "title:t1", NOW - 2 * HOUR, "7", {"row": "top"}),
            EdgeUpsert("profile:p9", "plays", "game:old", NOW - 200 * DAY, "8", {"minutes": 1}),
        ]
    )
    g.upsert_node("title:t1", {"name": "Heat", "year": 1995}, ts=NOW - 10 * DAY)
    return g


def test_neighbours_lists_newest_first(tiny: Graph) -> None:
    result = tiny.neighbours("account:a", "has_profile")
    assert [(e.dst, e.ts) for e in result.edges] == [
        ("profile:p2", NOW - 4 * DAY),
        ("profile:p1", NOW - 5 * DAY),
    ]
    assert result.to_dict()["edges"][0]["neighbour"] == "profile:p2"


def test_neighbours_of_all_edge_types_merge_by_time(tiny: Graph) -> None:
    result = tiny.neighbours("account:a")
    assert [e.other("account:a") for e in result.edges] == [
        "device:tv",
        "profile:p2",
        "profile:p1",
    ]


def test_neighbours_follow_a_two_way_edge_from_either_end(tiny: Graph) -> None:
    assert [e.other("device:tv") for e in tiny.neighbours("device:tv", "logged_in_from").edges] == [
        "account:a"
    ]


def test_neighbours_in_the_in_direction_read_the_reverse_index(tiny: Graph) -> None:
    result = tiny.neighbours("title:t1", ["started_watching", "browsed"], direction="in")
    assert [(e.src, e.type) for e in result.edges] == [
        ("profile:p2", "browsed"),
        ("profile:p1", "started_watching"),
    ]


def test_neighbours_honour_limit_window_and_where(tiny: Graph) -> None:
    assert [e.dst for e in tiny.neighbours("profile:p1", "started_watching", limit=1).edges] == [
        "title:t2"
    ]
    since_36h = tiny.neighbours("profile:p1", "started_watching", since="36h").edges
    assert [e.dst for e in since_36h] == ["title:t2"]
    until = tiny.neighbours("profile:p1", "started_watching", until=NOW - DAY).edges
    assert [e.dst for e in until] == ["title:t1"]
    where = tiny.neighbours("profile:p1", "started_watching", where={"position_s": {"gte": 5}})
    assert [e.dst for e in where.edges] == ["title:t1"]


def test_neighbours_older_than_the_lookback_are_not_returned(tiny: Graph) -> None:
    assert tiny.neighbours("profile:p9", "plays").edges == []
    assert tiny.neighbours("profile:p9", "plays", lookback="300d").edges == []  # retention: 100d


def test_neighbours_reject_a_bad_selection_or_lookback(tiny: Graph) -> None:
    with pytest.raises(InvalidQuery, match="selection"):
        tiny.neighbours("account:a", selection="oldest")
    with pytest.raises(InvalidQuery, match="not a duration"):
        tiny.neighbours("account:a", lookback="forever")


def test_traverse_reaches_each_node_once_with_its_depth(tiny: Graph) -> None:
    result = tiny.traverse("account:a", ["has_profile", "started_watching,plays"])
    assert [(r.node, r.depth) for r in result.nodes] == [
        ("profile:p2", 1),
        ("profile:p1", 1),
        ("game:g", 2),
        ("title:t2", 2),
        ("title:t1", 2),
    ]
    assert result.truncated is False
    assert result.reason is None
    assert result.work == 5
    via = result.nodes[2].via
    assert via is not None
    assert (via.src, via.type, via.dst) == ("profile:p2", "plays", "game:g")


def test_traverse_stops_with_truncated_when_max_work_is_reached(tiny: Graph) -> None:
    result = tiny.traverse(
        "account:a", ["has_profile", "started_watching"], limits=Limits(max_work=1)
    )
    assert result.truncated is True
    assert result.reason == (
        "limits.max_work (1) reached at hop 1, reading account:a's has_profile edges; "
        "raise limits.max_work to lift it"
    )
    assert [r.node for r in result.nodes] == ["profile:p2"]
    assert result.work == 1


def test_traverse_expands_only_max_frontier_nodes_and_says_so(tiny: Graph) -> None:
    result = tiny.traverse(
        "account:a", ["has_profile", "started_watching"], limits=Limits(max_frontier=1)
    )
    assert result.truncated is True
    assert result.reason == (
        "limits.max_frontier (1) cut the frontier after hop 1: the nodes found beyond it were "
        "not expanded; raise limits.max_frontier to lift it"
    )
    # Both profiles are found; only the first (profile:p2, which watched nothing) expands.
    assert [r.node for r in result.nodes] == ["profile:p2", "profile:p1"]


def test_traverse_edges_per_hop_bounds_each_node_s_fan_out_and_says_where_it_cut(
    tiny: Graph,
) -> None:
    result = tiny.traverse(
        "account:a", ["has_profile", "started_watching"], limits=Limits(per_depth={2: 1})
    )
    assert [r.node for r in result.nodes] == ["profile:p2", "profile:p1", "title:t2"]
    # profile:p1 watched two titles; the cap kept the newest and read one more to know.
    assert result.truncated is True
    assert result.reason == (
        "limits.per_depth[2] (1) cut profile:p1's started_watching edges at hop 2, more "
        "matching; raise limits.per_depth[2]"
    )
    assert result.work == 4
    unlimited = tiny.traverse("account:a", ["has_profile", "started_watching"])
    assert unlimited.truncated is False
    assert [r.node for r in unlimited.nodes] == [*(r.node for r in result.nodes), "title:t1"]


def test_traverse_is_not_truncated_when_a_cap_equals_the_list_length(tiny: Graph) -> None:
    result = tiny.traverse(
        "account:a", ["has_profile", "started_watching"], limits=Limits(edges_per_hop=2)
    )
    assert result.truncated is False
    assert len(result.nodes) == 4


def test_journey_merges_the_account_s_interactions_newest_first(tiny: Graph) -> None:
    result = tiny.journey("account:a")
    assert result.members == ["account:a", "profile:p2", "profile:p1", "device:tv"]
    assert [(e.src, e.type, e.dst) for e in result.entries] == [
        ("profile:p2", "plays", "game:g"),
        ("profile:p2", "browsed", "title:t1"),
        ("profile:p1", "started_watching", "title:t2"),
        ("profile:p1", "started_watching", "title:t1"),
    ]
    assert result.cursor is None


def test_journey_pages_with_a_cursor_without_gaps_or_repeats(tiny: Graph) -> None:
    first = tiny.journey("account:a", limit=3)
    assert first.cursor is not None
    second = tiny.journey("account:a", limit=3, cursor=first.cursor)
    assert second.cursor is None
    assert [e.dst for e in first.entries + second.entries] == [
        "game:g",
        "title:t1",
        "title:t2",
        "title:t1",
    ]
    assert [e.type for e in second.entries] == ["started_watching"]


def test_journey_can_be_narrowed_to_some_edge_types_and_a_window(tiny: Graph) -> None:
    assert [e.dst for e in tiny.journey("account:a", edge="plays").entries] == ["game:g"]
    assert [e.dst for e in tiny.journey("account:a", since="3h").entries] == [
        "game:g",
        "title:t1",
    ]


def test_count_sums_every_edge_type_and_reports_each(tiny: Graph) -> None:
    result = tiny.count("account:a")
    assert result.count == 3
    assert result.by_type == {"has_profile": 2, "logged_in_from": 1}
    assert tiny.count("account:a", "has_profile", since=NOW - 4 * DAY).count == 1
    assert tiny.count("title:t1", direction="in").count == 2


def test_exists_checks_one_edge_from_either_end_of_a_two_way_type(tiny: Graph) -> None:
    assert tiny.exists("account:a", "logged_in_from", "device:tv")
    assert tiny.exists("device:tv", "logged_in_from", "account:a")
    assert not tiny.exists("account:a", "has_profile", "profile:zz")
    assert not tiny.exists("account:a", "plays", "game:g")  # no such mapping


def test_shortest_path_finds_the_fewest_hops(tiny: Graph) -> None:
    path = tiny.shortest_path("profile:p1", "profile:p2")
    assert path.found
    assert path.nodes == ["profile:p1", "account:a", "profile:p2"]
    assert path.hops == 2
    assert [e.type for e in path.edges] == ["has_profile", "has_profile"]
    longer = tiny.shortest_path("device:tv", "game:g")
    assert longer.nodes == ["device:tv", "account:a", "profile:p2", "game:g"]


def test_shortest_path_reports_not_found_beyond_max_hops(tiny: Graph) -> None:
    path = tiny.shortest_path("device:tv", "game:g", max_hops=2)
    assert not path.found
    assert path.to_dict()["hops"] is None
    assert tiny.shortest_path("title:t1", "title:t1").nodes == ["title:t1"]


# -- caps: every limit that drops an edge says so ------------------------------------------------


def _heavy(g: Graph, profile: str, first: str, newer: int) -> None:
    """``profile`` watches ``first``, then ``newer`` newer titles (one more than the default cap
    makes ``first`` the edge the cap drops)."""
    batch: list[Mutation] = [
        EdgeUpsert(profile, "started_watching", first, NOW - DAY, f"{profile}:{first}")
    ]
    for i in range(1, newer + 1):
        title = f"title:{profile.partition(':')[2]}-{i}"
        batch.append(EdgeUpsert(profile, "started_watching", title, NOW - DAY + i, f"{title}"))
    g.apply(batch)


def test_a_shortest_path_through_an_edge_past_the_cap_is_found_from_the_other_end(
    g: Graph,
) -> None:
    # The reproducer of issue 11: found False, truncated False before.
    _heavy(g, "profile:a", "title:0", Limits().edges_per_hop)
    g.upsert_edge("profile:b", "started_watching", "title:0", ts=NOW - HOUR)
    path = g.shortest_path("profile:a", "profile:b", max_hops=3)
    assert (path.found, path.hops, path.truncated) == (True, 2, False)
    assert path.nodes == ["profile:a", "title:0", "profile:b"]
    backwards = g.shortest_path("profile:b", "profile:a", max_hops=3)
    assert (backwards.found, backwards.hops, backwards.truncated) == (True, 2, False)


def test_a_path_hidden_by_caps_at_both_ends_is_reported_as_truncated_with_the_limit(
    g: Graph,
) -> None:
    cap = Limits().edges_per_hop
    _heavy(g, "profile:a", "title:0", cap)
    _heavy(g, "profile:b", "title:0", cap)
    path = g.shortest_path("profile:a", "profile:b", max_hops=3)
    assert (path.found, path.truncated) == (False, True)
    assert path.reason is not None
    assert path.reason.startswith(
        f"limits.edges_per_hop ({cap}) cut profile:a's started_watching edges at hop 1 from "
        "profile:a, more matching; raise limits.edges_per_hop"
    )
    assert path.to_dict()["truncated"] is True and path.to_dict()["reason"] == path.reason
    lifted = g.shortest_path("profile:a", "profile:b", limits=Limits(edges_per_hop=cap + 1))
    assert (lifted.found, lifted.hops, lifted.truncated) == (True, 2, False)


def test_a_dropped_edge_straight_to_the_other_end_is_looked_up_past_the_cap(g: Graph) -> None:
    # Every title the account's profile watched is newer than the one edge to the target, and
    # the target (a title) watched by nobody else is only reachable through it.
    _heavy(g, "profile:a", "title:0", 3)
    path = g.shortest_path("profile:a", "title:0", limits=Limits(edges_per_hop=2))
    assert (path.found, path.hops, path.truncated) == (True, 1, False)


def test_traverse_through_a_node_above_the_cap_is_truncated_and_names_it(g: Graph) -> None:
    cap = Limits().edges_per_hop
    _heavy(g, "profile:a", "title:0", cap)
    result = g.traverse("profile:a", ["started_watching"])
    assert len(result.nodes) == cap
    assert "title:0" not in {r.node for r in result.nodes}
    assert result.truncated is True
    assert result.reason == (
        f"limits.edges_per_hop ({cap}) cut profile:a's started_watching edges at hop 1, more "
        "matching; raise limits.edges_per_hop (or limits.per_depth[1], "
        "limits.per_edge_type[started_watching])"
    )
    lifted = g.traverse("profile:a", ["started_watching"], limits=Limits(per_depth={1: cap + 1}))
    assert (len(lifted.nodes), lifted.truncated) == (cap + 1, False)


def test_neighbours_say_when_the_limit_leaves_matching_edges_out(tiny: Graph) -> None:
    cut = tiny.neighbours("account:a", limit=2)
    assert [e.other("account:a") for e in cut.edges] == ["device:tv", "profile:p2"]
    assert cut.truncated is True
    assert cut.reason == (
        "limit (2) reached with more matching: account:a's edges; raise limit to lift it"
    )
    whole = tiny.neighbours("account:a", limit=3)
    assert (len(whole.edges), whole.truncated, whole.reason) == (3, False, None)
    assert whole.to_dict()["truncated"] is False
    # A filter: the cap is met, the one edge left does not match, so nothing was cut.
    watched = tiny.neighbours(
        "profile:p1", "started_watching", limit=1, where={"position_s": {"gte": 10}}
    )
    assert ([e.dst for e in watched.edges], watched.truncated) == (["title:t1"], False)


def test_a_journey_over_max_members_is_truncated_and_a_count_never_is(tiny: Graph) -> None:
    result = tiny.engine.journey(q.Journey("account:a", max_members=2), NOW)
    assert result.members == ["account:a", "profile:p2"]
    assert result.truncated is True
    assert result.reason is not None and result.reason.startswith("max_members (2) reached")
    assert tiny.journey("account:a").truncated is False
    count = tiny.count("account:a")
    assert (count.truncated, count.to_dict()["truncated"], count.to_dict()["reason"]) == (
        False,
        False,
        None,
    )


def test_node_and_nodes_read_properties(tiny: Graph) -> None:
    node = tiny.node("title:t1")
    assert node is not None
    assert node.to_dict() == {
        "id": "title:t1",
        "ts": NOW - 10 * DAY,
        "props": {"name": "Heat", "year": 1995},
    }
    assert tiny.nodes(["title:t2", "title:t1"])[0] is None


def test_a_node_read_with_a_bad_id_is_an_invalid_query(tiny: Graph) -> None:
    with pytest.raises(InvalidQuery):
        tiny.node("title")


def test_sweep_removes_what_retention_has_expired(tiny: Graph) -> None:
    assert tiny.sweep() == 3  # the 200-day-old plays edge: out-, in- and key-item
    assert tiny.sweep() == 0

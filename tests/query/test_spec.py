"""Query specs: ``where`` parsing, filter semantics, ``check()`` messages, limits, cursors."""

from __future__ import annotations

from typing import Any

import pytest

from hopcast.errors import InvalidCursor, InvalidInput, InvalidQuery
from hopcast.graph.schema import Schema
from hopcast.query import spec as q

SCHEMA = Schema.demo()


# -- where / filters ---------------------------------------------------------------------------


def test_parse_where_turns_plain_values_into_equality() -> None:
    assert q.parse_where({"device_type": "tv", "kids": False}) == (
        q.Filter("device_type", "eq", "tv"),
        q.Filter("kids", "eq", False),
    )


def test_parse_where_reads_each_operator_of_a_property() -> None:
    assert q.parse_where({"minutes": {"gte": 30, "lt": 90}, "row": {"in": ["top", "new"]}}) == (
        q.Filter("minutes", "gte", 30),
        q.Filter("minutes", "lt", 90),
        q.Filter("row", "in", ["top", "new"]),
    )


@pytest.mark.parametrize("empty", [None, {}])
def test_parse_where_of_nothing_is_no_filter(empty: dict[str, Any] | None) -> None:
    assert q.parse_where(empty) == ()


def test_parse_where_accepts_every_documented_operator() -> None:
    where = {"x": {op: ([1] if op == "in" else 1) for op in q.OPS}}
    assert [f.op for f in q.parse_where(where)] == list(q.OPS)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"minutes": {"between": [1, 2]}}, "where.minutes: unknown operator 'between'"),
        ({"row": {"in": "top"}}, "where.row: 'in' needs a list"),
        (["minutes"], "'where' must be an object"),
    ],
)
def test_parse_where_names_what_is_wrong(where: Any, message: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        q.parse_where(where)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("op", "value", "prop", "matches"),
    [
        ("eq", 30, 30, True),
        ("eq", 30, 31, False),
        ("ne", 30, 31, True),
        ("ne", 30, 30, False),
        ("gt", 30, 31, True),
        ("gt", 30, 30, False),
        ("gte", 30, 30, True),
        ("gte", 30, 29, False),
        ("lt", 30, 29, True),
        ("lt", 30, 30, False),
        ("lte", 30, 30, True),
        ("lte", 30, 31, False),
        ("in", ["tv", "web"], "tv", True),
        ("in", ["tv", "web"], "mobile", False),
    ],
)
def test_each_operator_compares_the_property_with_the_value(
    op: str, value: Any, prop: Any, matches: bool
) -> None:
    assert q.Filter("p", op, value).matches({"p": prop}) is matches


@pytest.mark.parametrize("op", q.OPS)
def test_a_missing_property_never_matches_not_even_ne(op: str) -> None:
    value: Any = ["x"] if op == "in" else "x"
    assert q.Filter("p", op, value).matches({"other": "x"}) is False


@pytest.mark.parametrize("op", ["gt", "gte", "lt", "lte"])
def test_an_ordering_between_mismatched_types_is_false_not_an_error(op: str) -> None:
    assert q.Filter("minutes", op, 30).matches({"minutes": "thirty"}) is False
    assert q.Filter("minutes", op, 30).matches({"minutes": None}) is False


def test_equality_between_mismatched_types_is_false() -> None:
    assert q.Filter("minutes", "eq", 30).matches({"minutes": "30"}) is False


# -- check() -------------------------------------------------------------------------------------


def _check_error(spec: q.QuerySpec) -> str:
    with pytest.raises(InvalidQuery) as info:
        q.check(SCHEMA, spec)
    return str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        q.Neighbours("account:1", ("has_profile",)),
        q.Traverse(("account:1",), (q.Hop(("has_profile",)), q.Hop(("plays",)))),
        q.Journey("account:1"),
        q.Count("profile:1", ("plays",), "both"),
        q.Exists("profile:1", "plays", "game:1"),
        q.ShortestPath("profile:1", "profile:2", max_hops=q.MAX_DEPTH),
    ],
    ids=lambda s: type(s).__name__,
)
def test_a_well_formed_spec_passes_check(spec: q.QuerySpec) -> None:
    q.check(SCHEMA, spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (q.Neighbours("account"), "node: node id 'account' must look like 'type:key'"),
        (q.Neighbours("planet:1"), "node: unknown node type 'planet'"),
        (q.Neighbours("account:1", ("likes",)), "unknown edge type 'likes'"),
        (q.Neighbours("account:1", direction="up"), "direction must be one of"),
        (q.Neighbours("account:1", limit=q.MAX_RESULT + 1), "limit must be an integer in"),
        (q.Neighbours("account:1", limit=0), "limit must be an integer in [1, 10000], got 0"),
        (q.Count("account:1", direction="sideways"), "direction must be one of"),
        (q.Count(":1"), "node: node id ':1'"),
        (q.Count("account:1", ("nope",)), "unknown edge type 'nope'"),
        (q.Exists("account:1", "has_profile", "pro"), "dst: node id 'pro'"),
        (q.Exists("x:1", "has_profile", "profile:1"), "src: unknown node type 'x'"),
        (q.Exists("account:1", "has_pro", "profile:1"), "unknown edge type 'has_pro'"),
    ],
)
def test_check_names_what_is_wrong_with_a_simple_spec(spec: q.QuerySpec, message: str) -> None:
    assert message in _check_error(spec)


def test_check_rejects_a_bool_limit_although_bool_is_an_int() -> None:
    assert "limit must be an integer" in _check_error(q.Neighbours("account:1", limit=True))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (q.Traverse((), (q.Hop(),)), "start needs 1 to 1000 node ids"),
        (
            q.Traverse(tuple(f"account:{i}" for i in range(q.MAX_IDS + 1)), (q.Hop(),)),
            "start needs 1 to 1000 node ids",
        ),
        (q.Traverse(("account",), (q.Hop(),)), "start: node id 'account'"),
        (q.Traverse(("account:1",), ()), "a traversal needs 1 to 6 hops, got 0"),
        (
            q.Traverse(("account:1",), (q.Hop(),) * (q.MAX_DEPTH + 1)),
            "a traversal needs 1 to 6 hops, got 7",
        ),
        (q.Traverse(("account:1",), (q.Hop(("nope",)),)), "unknown edge type 'nope'"),
        (q.Traverse(("account:1",), (q.Hop(direction="down"),)), "direction must be one of"),
        (
            q.Traverse(("account:1",), (q.Hop(),), limits=q.Limits(max_work=q.MAX_WORK + 1)),
            "limits.max_work must be an integer in [1, 1000000]",
        ),
        (
            q.Traverse(("account:1",), (q.Hop(),), limits=q.Limits(edges_per_hop=0)),
            "limits.edges_per_hop",
        ),
        (
            q.Traverse(("account:1",), (q.Hop(),), limits=q.Limits(per_depth={2: 0})),
            "limits.per_depth[2]",
        ),
        (
            q.Traverse(("account:1",), (q.Hop(),), limits=q.Limits(per_edge_type={"plays": -1})),
            "limits.per_edge_type[plays]",
        ),
        (
            q.Traverse(("account:1",), (q.Hop(),), limits=q.Limits(max_frontier=0)),
            "limits.max_frontier",
        ),
        (
            q.Traverse(("account:1",), (q.Hop(),), limits=q.Limits(lookback_us=0)),
            "limits.lookback_us",
        ),
    ],
)
def test_check_names_what_is_wrong_with_a_traversal(spec: q.Traverse, message: str) -> None:
    assert message in _check_error(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (q.ShortestPath("profile:1", "profile:2", max_hops=0), "max_hops must be an integer"),
        (
            q.ShortestPath("profile:1", "profile:2", max_hops=q.MAX_DEPTH + 1),
            "max_hops must be an integer in [1, 6], got 7",
        ),
        (q.ShortestPath("profile", "profile:2"), "src: node id 'profile'"),
        (q.ShortestPath("profile:1", "gnome:2"), "dst: unknown node type 'gnome'"),
        (q.ShortestPath("profile:1", "profile:2", direction="x"), "direction must be one of"),
        (q.ShortestPath("profile:1", "profile:2", edge_types=("x",)), "unknown edge type 'x'"),
        (
            q.ShortestPath("profile:1", "profile:2", limits=q.Limits(max_work=0)),
            "limits.max_work",
        ),
    ],
)
def test_check_names_what_is_wrong_with_a_shortest_path(spec: q.ShortestPath, message: str) -> None:
    assert message in _check_error(spec)


def test_a_journey_must_start_at_the_schema_root_type() -> None:
    assert _check_error(q.Journey("profile:1")) == "a journey starts at a 'account' node"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (q.Journey("account"), "node: node id 'account'"),
        (q.Journey("account:1", edge_types=("nope",)), "unknown edge type 'nope'"),
        (q.Journey("account:1", limit=q.MAX_RESULT + 1), "limit must be an integer"),
    ],
)
def test_check_names_what_is_wrong_with_a_journey(spec: q.Journey, message: str) -> None:
    assert message in _check_error(spec)


def test_a_journey_needs_a_schema_that_defines_one() -> None:
    schema = Schema.from_dict({"nodes": {"account": {}}})
    with pytest.raises(InvalidQuery, match="defines no journey"):
        q.check(schema, q.Journey("account:1"))


@pytest.mark.parametrize(
    "cursor", ["not a cursor!", "AAAA", "é", q.encode_cursor(1, "a", "b", "c")[:-3]]
)
def test_a_journey_with_a_cursor_we_did_not_issue_is_rejected(cursor: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        q.check(SCHEMA, q.Journey("account:1", cursor=cursor))
    assert isinstance(info.value, InvalidInput)
    assert "invalid cursor" in str(info.value)


def test_a_journey_with_an_issued_cursor_passes_check() -> None:
    cursor = q.encode_cursor(1_700_000_000_000_000, "profile:1", "plays", "game:1")
    q.check(SCHEMA, q.Journey("account:1", cursor=cursor))


# -- limits and cursors --------------------------------------------------------------------------


def test_edges_for_prefers_edge_type_then_depth_then_the_default() -> None:
    limits = q.Limits(edges_per_hop=300, per_depth={2: 50}, per_edge_type={"plays": 5})
    assert limits.edges_for(1, "browsed") == 300
    assert limits.edges_for(2, "browsed") == 50
    assert limits.edges_for(1, "plays") == 5
    assert limits.edges_for(2, "plays") == 5


def test_the_default_limits_are_netflix_rdg_s() -> None:
    limits = q.Limits()
    assert limits.edges_for(1, "plays") == 300
    assert limits.lookback_us == 100 * 24 * 3600 * 1_000_000


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    entry = (1_700_000_000_000_123, "profile:ü/1", "started_watching", "title:a+b")
    cursor = q.encode_cursor(*entry)
    assert q.decode_cursor(cursor) == entry
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

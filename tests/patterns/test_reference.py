"""The reference evaluator on small graphs whose matches are known by hand."""

from __future__ import annotations

from typing import Any

from hopcast.graph.schema import Schema
from hopcast.patterns import from_yaml
from hopcast.patterns.reference import holding

SCHEMA = Schema.demo()
MIN = 60_000_000
PATTERNS = from_yaml(
    """\
version: 1
patterns:
  join:
    nodes: {p: profile, e: live_event}
    edges:
      b: {type: browsed, from: p, to: e, where: {page: title}}
      j: {type: watched_live, from: p, to: e}
    time: [{first: b, then: j, within: 5m}]
  sharing:
    nodes: {a: account, d: device}
    edges: {l: {type: logged_in_from, from: a, to: d}}
    count: {distinct: l.ip_country, per: [a], within: 1h, at_least: 4}
  reversed:
    nodes: {d: device, a: {type: account, where: {plan: premium}}}
    edges: {l: {type: logged_in_from, from: d, to: a}}
""",
    SCHEMA,
)


def join(browse_at: int, watch_at: int, page: str = "title") -> set[Any]:
    edges = {
        ("profile:1", "browsed", "live_event:1"): (browse_at, {"page": page}),
        ("profile:1", "watched_live", "live_event:1"): (watch_at, {}),
    }
    return holding(PATTERNS["join"], SCHEMA, edges, {})


def test_a_join_within_five_minutes_of_browsing_the_title_page_holds() -> None:
    (key,) = join(0, 3 * MIN)
    assert dict(key) == {
        "p": "profile:1",
        "e": "live_event:1",
        "b": ("profile:1", "browsed", "live_event:1"),
        "j": ("profile:1", "watched_live", "live_event:1"),
    }


def test_a_join_too_late_before_the_browse_or_from_another_page_does_not() -> None:
    assert join(0, 6 * MIN) == set()
    assert join(3 * MIN, 0) == set()
    assert join(0, MIN, page="home") == set()


def sharing(minutes_and_countries: list[tuple[int, str]]) -> set[Any]:
    edges = {
        ("account:1", "logged_in_from", f"device:{i}"): (m * MIN, {"ip_country": c})
        for i, (m, c) in enumerate(minutes_and_countries)
    }
    return holding(PATTERNS["sharing"], SCHEMA, edges, {})


def test_four_countries_within_an_hour_hold_for_the_account() -> None:
    assert sharing([(0, "US"), (10, "NL"), (20, "DE"), (59, "FR")]) == {(("a", "account:1"),)}
    # a fifth country later: the same match (it is keyed by the account)
    assert len(sharing([(0, "US"), (10, "NL"), (20, "DE"), (30, "FR"), (90, "JP")])) == 1


def test_fewer_countries_or_a_longer_spread_do_not() -> None:
    assert sharing([(0, "US"), (10, "NL"), (20, "DE"), (30, "DE")]) == set()
    assert sharing([(0, "US"), (10, "NL"), (20, "DE"), (60, "FR")]) == set()  # (t-1h, t]


def test_a_two_way_edge_read_reversed_matches_with_a_node_predicate() -> None:
    edges = {("account:1", "logged_in_from", "device:9"): (0, {"ip_country": "US"})}
    premium = {"account:1": {"plan": "premium"}}
    (key,) = holding(PATTERNS["reversed"], SCHEMA, edges, premium)
    assert dict(key)["d"] == "device:9" and dict(key)["a"] == "account:1"
    assert holding(PATTERNS["reversed"], SCHEMA, edges, {"account:1": {"plan": "basic"}}) == set()
    assert holding(PATTERNS["reversed"], SCHEMA, edges, {}) == set()  # no node, no property

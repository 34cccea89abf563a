"""Windowed coalescing: timers, merge rules, and the proof that writing the coalesced output gives
the same graph as writing every input (memory KV + GraphStore)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.memory import MemoryKV
from hopcast.stream.dedup import DEFAULT_WINDOW_US, Coalescer

SCHEMA = Schema.from_yaml(
    """
version: 1
defaults: {retention: forever}
nodes:
  person: {props: {a: int, b: int, c: int}}
  place: {props: {a: int}}
edges:
  visits:
    props: {w: int}
    mappings: [{from: person, to: place}]
  knows:
    props: {w: int}
    mappings: [{from: person, to: person, two_way: true}]
""",
    source="dedup-test.yaml",
)
PEOPLE = ["person:1", "person:2", "person:3"]
PLACES = ["place:1", "place:2"]
NOW = 10_000


def graph(mutations: list[list[Mutation]]) -> dict[str, Any]:
    """Apply batches in order to a fresh store; return every node and edge it holds."""
    store = GraphStore(MemoryKV(), SCHEMA, clock=lambda: NOW)
    for batch in mutations:
        store.apply(batch)
    out: dict[str, Any] = {}
    with store.read(NOW) as r:
        for node in PEOPLE + PLACES:
            n = r.node(node)
            out[node] = None if n is None else (n.ts, n.props)
            for edge_type in ("visits", "knows"):
                for physical in ("out", "in"):
                    if physical in SCHEMA.physical_lists(node.split(":")[0], edge_type, "both"):
                        out[f"{node} {edge_type} {physical}"] = [
                            (e.src, e.dst, e.ts, e.props)
                            for e in r.edges(node, edge_type, physical)
                        ]
                out[f"{node} {edge_type} by target"] = [
                    (e.dst, e.ts, e.props) for e in r.edges_by_target(node, edge_type)
                ]
    return out


_props = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), st.integers(0, 3) | st.none(), max_size=3
)
_ts = st.integers(1, 12)  # few distinct times: plenty of ties broken by the id token


@st.composite
def mutation(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(["nu", "nu", "nd", "eu", "eu", "ed"]))
    ts = draw(_ts)
    mid = "unset"
    if kind in ("nu", "nd"):
        node = draw(st.sampled_from(PEOPLE + PLACES))
        if kind == "nd":
            return NodeDelete(node, ts, mid)
        props = draw(_props)
        if node.startswith("place"):
            props = {k: v for k, v in props.items() if k == "a"}
        return NodeUpsert(node, ts, mid, props)
    edge_type = draw(st.sampled_from(["visits", "knows"]))
    src = draw(st.sampled_from(PEOPLE))
    dst = draw(st.sampled_from(PLACES if edge_type == "visits" else PEOPLE))
    if kind == "ed":
        return EdgeDelete(src, edge_type, dst, ts, mid)
    props = draw(st.dictionaries(st.just("w"), st.integers(0, 3), max_size=1))
    return EdgeUpsert(src, edge_type, dst, ts, mid, props)


@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[Mutation, int]]:
    """Canonical mutations with non-decreasing arrival times; some delivered twice."""
    # Ids are unique per write (a redelivery repeats one): same (ts, id) means same mutation.
    drawn = draw(st.lists(mutation(), max_size=40))
    items = [SCHEMA.validate(replace(m, id=f"m{i}")) for i, m in enumerate(drawn)]
    out: list[tuple[Mutation, int]] = []
    now = 0
    for m in items:
        now += draw(st.integers(0, 400))
        out.append((m, now))
        if draw(st.integers(0, 5)) == 0:  # a redelivery of an earlier mutation
            out.append((items[draw(st.integers(0, len(out) - 1)) % len(items)], now))
    return out


@settings(max_examples=300, deadline=None)
@given(arrivals(), st.integers(0, 1000), st.integers(1, 6))
def test_writing_the_coalesced_output_gives_the_same_graph_as_writing_every_input(
    timeline: list[tuple[Mutation, int]], window: int, max_keys: int
) -> None:
    c = Coalescer(window_us=window, max_keys=max_keys)
    batches: list[list[Mutation]] = []
    for m, now in timeline:
        batches.append(c.fire(now))
        batches.append(c.add(m, now))
    batches.append(c.flush())
    assert len(c) == 0 and c.next_deadline is None
    emitted = sum(len(b) for b in batches)
    assert emitted <= len(timeline) + sum(isinstance(m, NodeUpsert) for m, _ in timeline)
    assert graph([b for b in batches if b]) == graph([[m] for m, _ in timeline])


@settings(max_examples=100, deadline=None)
@given(arrivals(), st.randoms(use_true_random=False))
def test_shuffled_and_duplicated_input_converges_to_the_same_graph(
    timeline: list[tuple[Mutation, int]], rnd: random.Random
) -> None:
    inputs = [m for m, _ in timeline]
    messy = inputs + rnd.sample(inputs, len(inputs) // 2)
    rnd.shuffle(messy)
    c = Coalescer(window_us=DEFAULT_WINDOW_US)
    for i, m in enumerate(messy):
        c.add(m, i)
    assert graph([c.flush()]) == graph([[m] for m in inputs])


# -- the rules, one by one ---------------------------------------------------------------------


def test_a_keys_timer_is_armed_by_its_first_mutation_and_not_moved_by_later_ones() -> None:
    c = Coalescer(window_us=1000)
    c.add(EdgeUpsert("person:1", "visits", "place:1", 5, "x"), now=100)
    c.add(EdgeUpsert("person:1", "visits", "place:1", 6, "y"), now=900)
    c.add(NodeUpsert("person:2", 5, "z", {"a": 1}), now=500)
    assert c.next_deadline == 1100
    assert c.fire(1099) == []
    assert c.fire(1100) == [EdgeUpsert("person:1", "visits", "place:1", 6, "y")]
    assert c.next_deadline == 1500 and len(c) == 1
    assert c.fire(10**9) == [NodeUpsert("person:2", 5, "z", {"a": 1})]
    assert (c.mutations_in, c.mutations_out) == (3, 2)


def test_an_edge_keeps_its_newest_write_whether_upsert_or_delete() -> None:
    c = Coalescer()
    c.add(EdgeUpsert("person:1", "visits", "place:1", 7, "new", {"w": 1}), 0)
    c.add(EdgeDelete("person:1", "visits", "place:1", 6, "del"), 0)
    c.add(EdgeUpsert("person:1", "visits", "place:1", 3, "old", {"w": 2}), 0)
    assert c.flush() == [EdgeUpsert("person:1", "visits", "place:1", 7, "new", {"w": 1})]
    c.add(EdgeUpsert("person:1", "visits", "place:1", 3, "old"), 0)
    c.add(EdgeDelete("person:1", "visits", "place:1", 6, "del"), 0)
    assert c.flush() == [EdgeDelete("person:1", "visits", "place:1", 6, "del")]


def test_node_properties_keep_the_version_they_were_written_at() -> None:
    c = Coalescer()
    c.add(NodeUpsert("person:1", 1, "u1", {"a": 1, "b": 1}), 0)
    c.add(NodeUpsert("person:1", 3, "u3", {"a": 3}), 0)
    c.add(NodeUpsert("person:1", 2, "u2", {"b": 2, "c": 2}), 0)
    assert c.flush() == [
        NodeUpsert("person:1", 2, "u2", {"b": 2, "c": 2}),
        NodeUpsert("person:1", 3, "u3", {"a": 3}),
    ]


def test_a_node_delete_drops_older_writes_and_keeps_newer_ones() -> None:
    c = Coalescer()
    c.add(NodeUpsert("person:1", 1, "u1", {"a": 1}), 0)
    c.add(NodeUpsert("person:1", 5, "u5", {}), 0)
    c.add(NodeDelete("person:1", 3, "d3"), 0)
    c.add(NodeDelete("person:1", 2, "d2"), 0)
    c.add(NodeUpsert("person:1", 4, "u4", {"b": 4}), 0)
    assert c.flush() == [
        NodeDelete("person:1", 3, "d3"),
        NodeUpsert("person:1", 4, "u4", {"b": 4}),
        NodeUpsert("person:1", 5, "u5", {}),
    ]


def test_past_max_keys_the_entries_due_first_are_emitted_early() -> None:
    c = Coalescer(window_us=100, max_keys=2)
    assert c.add(NodeUpsert("person:1", 1, "a"), 0) == []
    assert c.add(NodeUpsert("person:2", 1, "b"), 1) == []
    assert c.add(NodeUpsert("person:3", 1, "c"), 2) == [NodeUpsert("person:1", 1, "a")]
    assert len(c) == 2


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Coalescer(window_us=-1)
    with pytest.raises(ValueError):
        Coalescer(max_keys=0)

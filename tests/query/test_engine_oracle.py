"""Property tests: every query kind, on both backends, against the brute-force oracle.

Hypothesis draws graphs from a small id space, so colliding writes, refreshes (the same edge
upserted again, newer or older), exact replays (same ``ts`` and ``id``), deletes older or newer
than what they target, and equal times all happen often. The mutations are applied in a random
order, split into random batches; the oracle (``tests/query/oracle.py``) is computed from the
mutation *set* alone, so any dependence on application order shows up as a mismatch.

Two application orders are used:

* **any order** — by the LWW tests (node reads, edge lists, order independence).
* **node deletes last** — every other mutation in random order and batches, then the node
  deletes in random order, in batches of their own: the order in which a delete can only meet
  older writes already stored. The LWW tests run in it too (a failure in "any order" but not
  here points at late writes meeting a delete), and the query tests use only it, so that a
  broken merge fails the LWW tests and not every query test at once.

Two worlds: the demo schema (with data older than its 100-day retention and lookback), and a
small schema with retentions of an hour or a few, self-mappings (``user -> user``, one-way and
two-way) whose nodes read two stored lists, and "forever" types.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hopcast.durations import DAY, HOUR, MINUTE
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import Edge, Node
from hopcast.graphdb import Graph
from hopcast.kv.base import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV
from hopcast.query import spec as q
from hopcast.query.engine import QueryEngine
from query.oracle import OEdge, OHop, OLimits, Oracle, canonical, type_of, where_holds

#: Hypothesis runs hundreds of graphs per test: part of `make test`, not of `make check`.
pytestmark = pytest.mark.slow

BACKENDS = ["memory", "lmdb"]

#: The fixed "now" of every test (Nov 2023), so retention and lookback are deterministic.
NOW = 1_700_000_000_000_000
#: Enough examples per test to hit ties, replays and late deletes many times, while the whole
#: module stays well under a minute.
EXAMPLES = 100
#: Mutations per generated graph: enough to collide often in the small id space.
MAX_MUTATIONS = 80
#: Larger than any adjacency list a generated graph can have, so such a limit never binds.
UNBOUNDED = 300
#: A lookback that reaches every generated time.
FOREVER_LOOKBACK = 1000 * DAY

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Strategy = st.SearchStrategy


# -- worlds ------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False, eq=False)
class World:
    """A schema plus everything the strategies draw from."""

    name: str
    schema: Schema
    nodes: Mapping[str, Sequence[str]]
    #: (edge type, source node type, target node type) as written (two-way both ways round).
    writes: Sequence[tuple[str, str, str]]
    #: Optional properties per type, each with the values it may take.
    node_props: Mapping[str, Mapping[str, Sequence[Any]]]
    edge_props: Mapping[str, Mapping[str, Sequence[Any]]]
    times: Sequence[int]
    #: Edge filters (``where``) that queries try besides none.
    wheres: Sequence[Mapping[str, Any]]
    lookbacks: Sequence[int]

    @cached_property
    def ids(self) -> list[str]:
        return [n for pool in self.nodes.values() for n in pool]

    def __repr__(self) -> str:
        return self.name


def _ids(node_type: str, n: int) -> list[str]:
    return [f"{node_type}:{i}" for i in range(1, n + 1)]


def _of(*values: Any) -> tuple[Any, ...]:
    return values


DEMO = World(
    name="demo",
    schema=Schema.demo(),
    nodes={
        "account": _ids("account", 3),
        "profile": _ids("profile", 6),
        "device": _ids("device", 4),
        "title": _ids("title", 6),
        "genre": _ids("genre", 3),
        "game": _ids("game", 2),
    },
    writes=[
        ("has_profile", "account", "profile"),
        ("logged_in_from", "account", "device"),
        ("logged_in_from", "device", "account"),
        ("started_watching", "profile", "title"),
        ("browsed", "profile", "title"),
        ("streamed_from", "profile", "device"),
        ("plays", "profile", "game"),
        ("in_genre", "title", "genre"),
        ("in_genre", "game", "genre"),
    ],
    node_props={
        "account": {"country": _of("NL", "US"), "plan": _of("basic", "premium", None)},
        "profile": {
            "name": _of("ann", "bob"),
            "kids": _of(False, True),
            "language": _of("en", None),
        },
        "device": {"device_type": _of("tv", "mobile"), "os": _of("tvos", "android")},
        "title": {"name": _of("a", "b"), "kind": _of("movie", "show"), "year": _of(1999, 2024)},
        "genre": {"name": _of("drama", "comedy", None)},
        "game": {"name": _of("x", "y"), "platform": _of("tv", "mobile")},
    },
    edge_props={
        "logged_in_from": {"ip_country": _of("NL", "US")},
        "started_watching": {"position_s": _of(0, 30, 60), "device": _of("tv", "mobile")},
        "streamed_from": {"bitrate_kbps": _of(800, 3000)},
        "browsed": {"row": _of("top", "new"), "page": _of("home", "search")},
        "plays": {"minutes": _of(10, 60, 90), "device": _of("tv", "mobile")},
    },
    # Few distinct times so ties are common (repeats make a time likelier); 100 days is the
    # demo retention and lookback, so NOW - 100d sits exactly on the boundary (expired) and
    # NOW - 100d + 1 just inside it.
    times=[
        NOW + HOUR,
        NOW,
        NOW,
        NOW - HOUR,
        NOW - HOUR,
        NOW - 2 * HOUR,
        NOW - 100 * DAY + 1,
        NOW - 100 * DAY,
        NOW - 200 * DAY,
    ],
    wheres=[
        {"device": "tv"},
        {"device": {"ne": "tv"}},
        {"position_s": {"gte": 30}},
        {"position_s": {"gt": 0, "lte": 30}},
        {"ip_country": {"in": ["NL"]}},
        {"minutes": {"lt": 60}},
        {"row": "top"},
    ],
    lookbacks=[HOUR, 2 * HOUR, q.DEFAULT_LOOKBACK_US, q.DEFAULT_LOOKBACK_US, FOREVER_LOOKBACK],
)

SMALL = World(
    name="small",
    schema=Schema.from_dict(
        {
            "defaults": {"retention": "5h"},
            "nodes": {
                "user": {"retention": "2h", "props": {"name": "str", "score": "int"}},
                "item": {"retention": "forever", "props": {"name": "str"}},
                "tag": {"props": {"name": "str"}},
            },
            "edges": {
                "follows": {
                    "retention": "1h",
                    "props": {"w": "int"},
                    "mappings": [{"from": "user", "to": "user"}],
                },
                "friend": {
                    "retention": "3h",
                    "mappings": [{"from": "user", "to": "user", "two_way": True}],
                },
                "likes": {"props": {"stars": "int"}, "mappings": [{"from": "user", "to": "item"}]},
                "tagged": {"retention": "forever", "mappings": [{"from": "item", "to": "tag"}]},
            },
        },
        source="small",
    ),
    nodes={"user": _ids("user", 4), "item": _ids("item", 3), "tag": _ids("tag", 2)},
    writes=[
        ("follows", "user", "user"),
        ("friend", "user", "user"),
        ("likes", "user", "item"),
        ("tagged", "item", "tag"),
    ],
    node_props={
        "user": {"name": _of("ann", "bob"), "score": _of(1, 2, None)},
        "item": {"name": _of("x", "y")},
        "tag": {"name": _of("t", None)},
    },
    edge_props={"follows": {"w": _of(1, 2)}, "likes": {"stars": _of(1, 5)}},
    # Retentions are 1h, 2h, 3h, 5h and forever: each of these times is past some of them, and
    # NOW - 1h, - 2h, - 3h and - 5h sit exactly on a boundary.
    times=[
        NOW + 30 * MINUTE,
        NOW,
        NOW,
        NOW - 30 * MINUTE,
        NOW - 30 * MINUTE,
        NOW - HOUR,
        NOW - 2 * HOUR,
        NOW - 3 * HOUR,
        NOW - 5 * HOUR,
        NOW - 6 * HOUR,
    ],
    wheres=[{"w": 1}, {"stars": {"gte": 3}}, {"w": {"in": [2]}}, {"w": {"ne": 1}}],
    lookbacks=[30 * MINUTE, 2 * HOUR, q.DEFAULT_LOOKBACK_US],
)

WORLDS = {"demo": DEMO, "small": SMALL}


# -- graphs ------------------------------------------------------------------------------------


#: How often each kind of write is drawn (by repetition): mostly edges, as in a real stream.
EDGE_HEAVY = (
    "node",
    "edge",
    "edge",
    "edge",
    "edge",
    "edge",
    "edge_delete",
    "node_delete",
    "replay",
)
#: Mostly node writes and node deletes, so the per-property merges of one node collide often.
NODE_HEAVY = ("node", "node_delete", "node", "node", "node_delete", "edge", "replay")
#: Bytes that describe one mutation: kind, time, three choices, a property mask, three values.
CHUNK = 9


def _skewed(pool: Sequence[str], byte: int) -> str:
    """Pick from ``pool`` with a quadratic skew towards its first ids, so that writes collide on
    a few hot nodes (as members' writes do) instead of spreading thinly."""
    return pool[byte * byte * len(pool) >> 16]


def _pick_node(world: World, type_byte: int, id_byte: int) -> str:
    """A node type uniformly, then one of its ids with the skew of :func:`_skewed`."""
    types = sorted(world.nodes)
    return _skewed(world.nodes[types[type_byte % len(types)]], id_byte)


def _props(
    declared: Mapping[str, Sequence[Any]], mask: int, values: Sequence[int]
) -> dict[str, Any]:
    """The declared properties whose bit is set in ``mask``, each with a value picked by
    ``values``."""
    return {
        name: choices[values[j % len(values)] % len(choices)]
        for j, (name, choices) in enumerate(declared.items())
        if mask >> j & 1
    }


def _decode(world: World, kinds: Sequence[str], chunks: Sequence[bytes]) -> list[Mutation]:
    """Turn byte chunks into mutations (plain Python, so generation stays cheap; shrinking a
    byte towards 0 picks the first kind, time, node, property value).

    Equal chunks give equal mutations (an exact replay); a "replay" chunk copies an earlier one.
    """
    out: list[Mutation] = []
    upserts: list[EdgeUpsert] = []
    for chunk in chunks:
        k, t, a, b, c, mask, *values = chunk
        kind = kinds[k % len(kinds)]
        ts = world.times[t % len(world.times)]
        # The id comes from the chunk, not its position, so that deleting a chunk while
        # shrinking leaves the other writes' tie-break tokens as they were.
        mid = chunk.hex()

        if kind == "replay" and out:
            out.append(out[a % len(out)])
        elif kind == "node" or kind == "replay":
            node = _pick_node(world, a, b)
            out.append(
                NodeUpsert(node, ts, mid, _props(world.node_props[type_of(node)], mask, values))
            )
        elif kind == "node_delete":
            out.append(NodeDelete(_pick_node(world, a, b), ts, mid))
        elif kind == "edge_delete" and upserts and c & 1:
            target = upserts[a % len(upserts)]
            src, dst = target.src, target.dst
            if c & 2 and canonical(world.schema, dst, target.type, src) is not None:
                src, dst = dst, src  # a two-way edge may be deleted from either end
            out.append(EdgeDelete(src, target.type, dst, ts, mid))
        else:
            edge_type, src_type, dst_type = world.writes[a % len(world.writes)]
            src = _skewed(world.nodes[src_type], b)
            dst = _skewed([n for n in world.nodes[dst_type] if n != src], c)  # no self-loops
            if kind == "edge_delete":
                out.append(EdgeDelete(src, edge_type, dst, ts, mid))
            else:
                upsert = EdgeUpsert(
                    src,
                    edge_type,
                    dst,
                    ts,
                    mid,
                    _props(world.edge_props.get(edge_type, {}), mask, values),
                )
                upserts.append(upsert)
                out.append(upsert)
    return out


@st.composite
def mutation_sets(
    draw: st.DrawFn, world: World, kinds: Sequence[str] = EDGE_HEAVY
) -> list[Mutation]:
    # The count is drawn first: st.lists would keep most graphs too small to collide.
    chunk = st.binary(min_size=CHUNK, max_size=CHUNK)
    chunks = [draw(chunk) for _ in range(draw(st.integers(0, MAX_MUTATIONS)))]
    return _decode(world, kinds, chunks)


def _cut(seq: Sequence[Mutation], marks: bytes) -> list[list[Mutation]]:
    """``seq`` cut into consecutive batches (each one atomic apply): a cut follows every mark
    that is a multiple of 4, so batches hold about four mutations."""
    batches: list[list[Mutation]] = []
    current: list[Mutation] = []
    for m, mark in zip(seq, marks, strict=True):
        current.append(m)
        if mark % 4 == 0:
            batches.append(current)
            current = []
    return [*batches, current] if current else batches


@st.composite
def application_orders(
    draw: st.DrawFn, mutations: list[Mutation], node_deletes_last: bool
) -> list[list[Mutation]]:
    """The mutations shuffled and cut into batches; with ``node_deletes_last`` the node deletes
    come after everything else, in batches of their own.

    Every mutation draws a sort key and a cut mark (one byte each, all in one draw), so an
    order shrinks towards the order of generation in a single batch.
    """
    n = len(mutations)
    raw = draw(st.binary(min_size=2 * n, max_size=2 * n))
    order = [m for _, _, m in sorted(zip(raw[:n], range(n), mutations, strict=True))]
    marks = raw[n:]
    if not node_deletes_last:
        return _cut(order, marks)
    node_deletes = [m for m in order if isinstance(m, NodeDelete)]
    others = [m for m in order if not isinstance(m, NodeDelete)]
    return _cut(others, marks[: len(others)]) + _cut(node_deletes, marks[len(others) :])


@dataclass(frozen=True)
class Scenario:
    mutations: list[Mutation]
    batches: list[list[Mutation]]


@st.composite
def scenarios(
    draw: st.DrawFn, world: World, node_deletes_last: bool, kinds: Sequence[str] = EDGE_HEAVY
) -> Scenario:
    mutations = draw(mutation_sets(world, kinds))
    return Scenario(mutations, draw(application_orders(mutations, node_deletes_last)))


def _make_kv(backend: str, tmp: str) -> KVStore:
    if backend == "memory":
        return MemoryKV()
    return LmdbKV(Path(tmp) / "lmdb", sync=False)


@contextmanager
def open_graph(backend: str, world: World) -> Iterator[Graph]:
    """A fresh graph (with its node cache) on ``backend``; LMDB lives in a temporary dir."""
    with tempfile.TemporaryDirectory() as tmp:
        g = Graph.open(schema=world.schema, kv=_make_kv(backend, tmp), clock=lambda: NOW)
        try:
            yield g
        finally:
            g.close()


@contextmanager
def loaded(backend: str, world: World, scenario: Scenario) -> Iterator[Graph]:
    with open_graph(backend, world) as g:
        for batch in scenario.batches:
            g.apply(batch)
        yield g


# -- comparable forms --------------------------------------------------------------------------

Row = tuple[str, str, str, int, tuple[tuple[str, Any], ...]]


def row(e: Edge) -> Row:
    return (e.src, e.type, e.dst, e.ts, tuple(sorted(e.props.items())))


def rows(edges: Sequence[Edge]) -> list[Row]:
    return [row(e) for e in edges]


def orows(edges: Sequence[OEdge]) -> list[Row]:
    return [e.row() for e in edges]


def node_state(node: Node | None) -> tuple[int, dict[str, Any]] | None:
    return None if node is None else (node.ts, node.props)


def graph_state(g: Graph, world: World) -> dict[str, Any]:
    """Every node and the three stored edge indexes, read through the store."""
    with g.store.read(NOW) as r:
        nodes = {n: node_state(r.node(n)) for n in world.ids}
        out, in_, by_target = [], [], []
        for et, edge_type in world.schema.edges.items():
            src_types = {m.src_type for m in edge_type.mappings}
            dst_types = {m.dst_type for m in edge_type.mappings}
            for n in world.ids:
                if type_of(n) in src_types:
                    out += rows(list(r.edges(n, et, "out")))
                    by_target += rows(list(r.edges_by_target(n, et)))
                if type_of(n) in dst_types:
                    in_ += rows(list(r.edges(n, et, "in")))
    return {
        "nodes": {n: s for n, s in nodes.items() if s is not None},
        "out": sorted(out),
        "in": sorted(in_),
        "by_target": sorted(by_target),
    }


def oracle_state(o: Oracle, world: World) -> dict[str, Any]:
    nodes = {n: o.node(n) for n in world.ids}
    edges = sorted(orows(o.edges))
    return {
        "nodes": {n: (v.ts, v.props) for n, v in nodes.items() if v is not None},
        "out": edges,
        "in": edges,
        "by_target": edges,
    }


# -- query strategies --------------------------------------------------------------------------


# Strategies are built once per world (functools.cache): building one costs far more than
# drawing from it, and the query strategies draw hundreds of times per test.


@cache
def times(world: World) -> Strategy[int | None]:
    """Mostly None; else a generated time nudged by -1/0/+1 µs (windows are
    ``since <= ts < until``, so the nudges probe both edges of a bound)."""
    point = st.builds(int.__add__, st.sampled_from(world.times), st.sampled_from([-1, 0, 1]))
    return st.none() | st.none() | point


@cache
def _anywhere(world: World) -> Strategy[str]:
    return st.builds(_pick_node, st.just(world), st.integers(0, 255), st.integers(0, 255))


def nodes(world: World, focus: Sequence[str] = ()) -> Strategy[str]:
    """Any node, skewed like the writes towards the hot ids, or one of ``focus`` (the ends of
    the live edges, so that multi-hop queries find paths)."""
    return st.sampled_from(focus) | _anywhere(world) if focus else _anywhere(world)


def ends(o: Oracle) -> list[str]:
    """The nodes at either end of a live edge, in a stable order."""
    return sorted({n for e in o.edges for n in (e.src, e.dst)})


@cache
def edge_type_lists(world: World, node_type: str | None = None) -> Strategy[tuple[str, ...]]:
    """Often no types (= all); else some, in a random order (the order breaks ties), mostly
    ones that touch ``node_type``."""
    names = sorted(world.schema.edges)
    touching = [et for et in names if node_type is None or _touches(world, node_type, et)]
    some = st.lists(st.sampled_from(touching) | st.sampled_from(names), unique=True, max_size=3)
    return st.just(()) | some.map(tuple)


def _touches(world: World, node_type: str, edge_type: str) -> bool:
    return any(
        node_type in (m.src_type, m.dst_type) for m in world.schema.edges[edge_type].mappings
    )


#: "both" twice: it joins the most edges, so multi-hop queries go somewhere.
DIRECTIONS = st.sampled_from(("out", "in", "both", "both"))


@cache
def wheres(world: World) -> Strategy[Mapping[str, Any]]:
    """Mostly no filter (a filter on one type's property empties the other types' lists)."""
    return st.just({}) | st.just({}) | st.sampled_from(world.wheres)


@cache
def lookbacks(world: World) -> Strategy[int]:
    return st.sampled_from(world.lookbacks)


def _since(since: int | None, lookback: int) -> int:
    return since if since is not None else NOW - lookback


# -- LWW: the stored graph ---------------------------------------------------------------------

ORDERS = pytest.mark.parametrize(
    "node_deletes_last", [False, True], ids=["any order", "node deletes last"]
)


@pytest.mark.parametrize("backend", BACKENDS)
@ORDERS
@SETTINGS
@given(data=st.data())
def test_node_reads_equal_the_oracle_after_every_batch(
    backend: str, node_deletes_last: bool, data: st.DataObject
) -> None:
    scenario = data.draw(scenarios(DEMO, node_deletes_last, NODE_HEAVY))
    with open_graph(backend, DEMO) as g:
        applied: list[Mutation] = []
        for batch in scenario.batches:
            g.apply(batch)
            applied += batch
            o = Oracle(DEMO.schema, applied, NOW)
            # Through Graph.nodes, so the node cache must follow every write too.
            got = {n: node_state(v) for n, v in zip(DEMO.ids, g.nodes(DEMO.ids, NOW), strict=True)}
            want = {n: None if (v := o.node(n)) is None else (v.ts, v.props) for n in DEMO.ids}
            assert got == want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@ORDERS
@SETTINGS
@given(data=st.data())
def test_edge_indexes_equal_the_oracle_after_every_batch(
    backend: str, world_name: str, node_deletes_last: bool, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last))
    with open_graph(backend, world) as g:
        applied: list[Mutation] = []
        for batch in scenario.batches:
            g.apply(batch)
            applied += batch
            # Each index holds every live edge exactly once, at its newest surviving version.
            assert graph_state(g, world) == oracle_state(Oracle(world.schema, applied, NOW), world)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=st.data())
def test_the_stored_graph_does_not_depend_on_the_order_of_writes(
    backend: str, data: st.DataObject
) -> None:
    mutations = data.draw(mutation_sets(DEMO))
    states = []
    for _ in range(2):
        batches = data.draw(application_orders(mutations, node_deletes_last=False))
        with loaded(backend, DEMO, Scenario(mutations, batches)) as g:
            states.append(graph_state(g, DEMO))
    assert states[0] == states[1]


# -- neighbours --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeighboursQuery:
    node: str
    edge_types: tuple[str, ...]
    direction: str
    since: int | None
    until: int | None
    limit: int
    where: Mapping[str, Any]
    lookback: int

    def spec(self, selection: q.Selection) -> q.Neighbours:
        return q.Neighbours(
            self.node,
            self.edge_types,
            self.direction,
            selection,
            self.since,
            self.until,
            self.limit,
            q.parse_where(self.where),
            self.lookback,
        )

    def expected(self, o: Oracle) -> list[OEdge]:
        since = _since(self.since, self.lookback)
        return o.matching(self.node, self.edge_types, self.direction, since, self.until, self.where)


def neighbours_queries(world: World, focus: Sequence[str] = ()) -> Strategy[NeighboursQuery]:
    return _neighbours_queries(world, nodes(world, focus))


@st.composite
def _neighbours_queries(draw: st.DrawFn, world: World, node_st: Strategy[str]) -> NeighboursQuery:
    node = draw(node_st)
    return NeighboursQuery(
        node=node,
        edge_types=draw(edge_type_lists(world, type_of(node))),
        direction=draw(DIRECTIONS),
        since=draw(times(world)),
        until=draw(times(world)),
        limit=draw(st.integers(1, 4)),
        where=draw(wheres(world)),
        lookback=draw(lookbacks(world)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@SETTINGS
@given(data=st.data())
def test_latest_neighbours_are_the_oracles_newest_matching_edges_in_tie_order(
    backend: str, world_name: str, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    o = Oracle(world.schema, scenario.mutations, NOW)
    queries = data.draw(st.lists(neighbours_queries(world, ends(o)), min_size=1, max_size=8))
    with loaded(backend, world, scenario) as g:
        for query in queries:
            got = g.engine.neighbours(query.spec(q.Selection.LATEST), NOW)
            assert got.node == query.node
            assert rows(got.edges) == orows(query.expected(o)[: query.limit]), query


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@SETTINGS
@given(data=st.data())
def test_any_neighbours_are_as_many_distinct_matching_edges_as_the_limit_allows(
    backend: str, world_name: str, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    o = Oracle(world.schema, scenario.mutations, NOW)
    queries = data.draw(st.lists(neighbours_queries(world, ends(o)), min_size=1, max_size=8))
    with loaded(backend, world, scenario) as g:
        for query in queries:
            got = rows(g.engine.neighbours(query.spec(q.Selection.ANY), NOW).edges)
            matching = set(orows(query.expected(o)))
            assert len(set(got)) == len(got), query
            assert set(got) <= matching, query
            assert len(got) == min(query.limit, len(matching)), query


# -- traverse ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraverseQuery:
    starts: tuple[str, ...]
    hops: tuple[OHop, ...]
    since: int | None
    until: int | None
    lookback: int
    limits: OLimits

    def spec(self) -> q.Traverse:
        hops = tuple(q.Hop(h.edge_types, h.direction, q.parse_where(h.where)) for h in self.hops)
        limits = q.Limits(
            lookback_us=self.lookback,
            edges_per_hop=self.limits.edges_per_hop,
            per_depth=dict(self.limits.per_depth),
            per_edge_type=dict(self.limits.per_edge_type),
        )
        return q.Traverse(self.starts, hops, q.Selection.LATEST, self.since, self.until, limits)


def limits(world: World, small: bool) -> Strategy[OLimits]:
    if not small:
        return st.just(OLimits(UNBOUNDED))
    few = st.integers(1, 3)
    return st.builds(
        OLimits,
        edges_per_hop=few,
        per_depth=st.dictionaries(st.integers(1, 3), few, max_size=2),
        per_edge_type=st.dictionaries(st.sampled_from(sorted(world.schema.edges)), few, max_size=2),
    )


def traverse_queries(
    world: World, small_limits: bool, focus: Sequence[str] = ()
) -> Strategy[TraverseQuery]:
    hop = st.builds(OHop, edge_type_lists(world), DIRECTIONS, wheres(world))
    return st.builds(
        TraverseQuery,
        starts=st.lists(nodes(world, focus), min_size=1, max_size=3).map(tuple),
        hops=st.lists(hop, min_size=1, max_size=3).map(tuple),
        since=times(world),
        until=times(world),
        lookback=lookbacks(world),
        limits=limits(world, small_limits),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@pytest.mark.parametrize("small_limits", [False, True], ids=["limits not binding", "small limits"])
@SETTINGS
@given(data=st.data())
def test_traverse_reaches_the_oracles_nodes_at_the_oracles_depths(
    backend: str, world_name: str, small_limits: bool, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    o = Oracle(world.schema, scenario.mutations, NOW)
    queries = data.draw(
        st.lists(traverse_queries(world, small_limits, ends(o)), min_size=1, max_size=4)
    )
    with loaded(backend, world, scenario) as g:
        live = set(orows(o.edges))
        for query in queries:
            since = _since(query.since, query.lookback)
            got = g.engine.traverse(query.spec(), NOW)
            depths = {r.node: r.depth for r in got.nodes}
            assert not got.truncated
            assert len(depths) == len(got.nodes), "a node was reported twice"
            assert depths == o.traverse(query.starts, query.hops, since, query.until, query.limits)
            # Each node names a live, followable edge from a node one hop closer to the start.
            for r in got.nodes:
                assert r.via is not None
                prev = r.via.other(r.node)
                hop = query.hops[r.depth - 1]
                assert row(r.via) in live
                assert since <= r.via.ts and (query.until is None or r.via.ts < query.until)
                assert depths.get(prev, 0 if prev in query.starts else -1) == r.depth - 1
                assert r.via.type in o.plan(prev, hop.edge_types, hop.direction)
                oedge = OEdge(r.via.src, r.via.type, r.via.dst, r.via.ts, r.via.props)
                assert o.followable(prev, oedge, hop.direction) is not None
                assert where_holds(hop.where, r.via.props)


# -- journey -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JourneyQuery:
    account: str
    since: int | None
    until: int | None
    lookback: int
    edge_types: tuple[str, ...]
    page_size: int


def journey_queries(o: Oracle) -> Strategy[JourneyQuery]:
    """Mostly accounts that have a journey at all (so that pages and ties occur)."""
    journey = DEMO.schema.journey
    assert journey is not None
    accounts = DEMO.nodes["account"]
    busy = [a for a in accounts if o.journey(a, None, None, ())]
    some_types = st.lists(st.sampled_from(journey.interactions), unique=True, max_size=3)
    return st.builds(
        JourneyQuery,
        account=(st.sampled_from(busy) | st.sampled_from(accounts))
        if busy
        else st.sampled_from(accounts),
        since=times(DEMO),
        until=times(DEMO),
        lookback=lookbacks(DEMO),
        edge_types=st.just(()) | some_types.map(tuple),
        page_size=st.integers(1, 4),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=st.data())
def test_journey_pages_concatenate_to_the_oracles_ordered_journey(
    backend: str, data: st.DataObject
) -> None:
    scenario = data.draw(scenarios(DEMO, node_deletes_last=True))
    o = Oracle(DEMO.schema, scenario.mutations, NOW)
    queries = data.draw(st.lists(journey_queries(o), min_size=1, max_size=3))
    with loaded(backend, DEMO, scenario) as g:
        for jq in queries:
            since = _since(jq.since, jq.lookback)
            want = orows(o.journey(jq.account, since, jq.until, jq.edge_types))
            pages: list[list[Row]] = []
            cursor: str | None = None
            while len(pages) <= len(want):  # one page more than needed ends a runaway cursor
                spec = q.Journey(
                    jq.account, jq.since, jq.until, jq.page_size, cursor, jq.edge_types, jq.lookback
                )
                got = g.engine.journey(spec, NOW)
                assert got.node == jq.account
                assert sorted(got.members) == sorted(o.journey_members(jq.account)), jq
                pages.append(rows(got.entries))
                cursor = got.cursor
                if cursor is None:
                    break
            assert [r for page in pages for r in page] == want, jq
            # Every page but the last is full; the last holds the rest (or is the only, empty one).
            assert all(len(page) == jq.page_size for page in pages[:-1]), jq
            assert cursor is None and (len(pages[-1]) >= 1 or want == []), jq


# -- count, exists, shortest path --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@SETTINGS
@given(data=st.data())
def test_count_is_the_number_of_edges_the_oracle_finds_in_the_window(
    backend: str, world_name: str, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    o = Oracle(world.schema, scenario.mutations, NOW)
    queries = data.draw(st.lists(neighbours_queries(world, ends(o)), min_size=1, max_size=8))
    with loaded(backend, world, scenario) as g:
        for query in queries:
            spec = q.Count(
                query.node,
                query.edge_types,
                query.direction,
                query.since,
                query.until,
                query.lookback,
            )
            got = g.engine.count(spec, NOW)
            since = _since(query.since, query.lookback)
            want = o.count(query.node, query.edge_types, query.direction, since, query.until)
            assert (got.count, got.by_type) == (sum(want.values()), want), query


def _fitting(world: World, write: int, src: int, dst: int) -> tuple[str, str, str]:
    edge_type, src_type, dst_type = world.writes[write % len(world.writes)]
    return _skewed(world.nodes[src_type], src), edge_type, _skewed(world.nodes[dst_type], dst)


def edge_lookups(world: World, focus: Sequence[str] = ()) -> Strategy[tuple[str, str, str]]:
    """Mostly an edge the world can hold, either way round; sometimes any triple at all."""
    byte = st.integers(0, 255)
    fitting = st.builds(_fitting, st.just(world), byte, byte, byte)
    anything = st.tuples(
        nodes(world, focus),
        st.sampled_from(sorted(world.schema.edges)),
        nodes(world, focus),
    )
    return fitting | fitting | anything


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@SETTINGS
@given(data=st.data())
def test_exists_finds_exactly_the_oracles_live_edges(
    backend: str, world_name: str, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    o = Oracle(world.schema, scenario.mutations, NOW)
    lookups = data.draw(st.lists(edge_lookups(world, ends(o)), min_size=1, max_size=12))
    with loaded(backend, world, scenario) as g:
        for src, et, dst in lookups:
            got = g.engine.exists(q.Exists(src, et, dst), NOW)
            want = o.exists(src, et, dst)
            assert got.exists == (want is not None), (src, et, dst)
            assert (None if got.edge is None else row(got.edge)) == (
                None if want is None else want.row()
            )
            assert g.exists(src, et, dst, now=NOW) == got.exists


@dataclass(frozen=True)
class PathQuery:
    src: str
    dst: str
    max_hops: int
    edge_types: tuple[str, ...]
    direction: str
    since: int | None
    lookback: int


def path_queries(world: World, o: Oracle) -> Strategy[PathQuery]:
    """Half the time ``dst`` is in ``src``'s connected part, so that some paths exist."""
    return _path_queries(world, o, nodes(world, ends(o)))


@st.composite
def _path_queries(draw: st.DrawFn, world: World, o: Oracle, node_st: Strategy[str]) -> PathQuery:
    src = draw(node_st)
    return PathQuery(
        src=src,
        dst=draw(st.sampled_from(o.component(src)) | node_st),
        max_hops=draw(st.integers(1, 4)),
        edge_types=draw(edge_type_lists(world)),
        direction=draw(DIRECTIONS),
        since=draw(times(world)),
        lookback=draw(lookbacks(world)),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@SETTINGS
@given(data=st.data())
def test_shortest_path_is_found_iff_the_oracle_finds_one_and_is_as_short(
    backend: str, world_name: str, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    o = Oracle(world.schema, scenario.mutations, NOW)
    queries = data.draw(st.lists(path_queries(world, o), min_size=1, max_size=8))
    with loaded(backend, world, scenario) as g:
        live = set(orows(o.edges))
        for query in queries:
            since = _since(query.since, query.lookback)
            spec = q.ShortestPath(
                query.src,
                query.dst,
                query.max_hops,
                query.edge_types,
                query.direction,
                query.since,
                q.Limits(lookback_us=query.lookback),
            )
            got = g.engine.shortest_path(spec, NOW)
            dist = o.distance(query.src, query.dst, query.edge_types, query.direction, since)
            found = dist is not None and dist <= query.max_hops
            assert got.found == found, query
            if not found:
                assert (got.nodes, got.edges) == ([], [])
                continue
            assert got.hops == dist, query
            assert got.nodes[0] == query.src and got.nodes[-1] == query.dst
            assert len(got.nodes) == len(got.edges) + 1
            for a, b, e in zip(got.nodes, got.nodes[1:], got.edges, strict=False):
                oedge = OEdge(e.src, e.type, e.dst, e.ts, e.props)
                assert row(e) in live and e.ts >= since
                assert {a, b} == {e.src, e.dst}
                assert e.type in o.plan(a, query.edge_types, query.direction)
                assert o.followable(a, oedge, query.direction) is not None


# -- retention and sweep -----------------------------------------------------------------------


def answers(g: Graph, world: World) -> dict[tuple[Any, ...], Any]:
    """A battery of answers over the whole id space, read without the node cache."""
    engine = QueryEngine(g.store)
    out: dict[tuple[Any, ...], Any] = {}
    for node in world.ids:
        out["node", node] = node_state(engine.nodes([node], NOW)[0])
        for direction in q.DIRECTIONS:
            spec = q.Neighbours(
                node, (), direction, limit=q.MAX_RESULT, lookback_us=FOREVER_LOOKBACK
            )
            out["neighbours", node, direction] = rows(engine.neighbours(spec, NOW).edges)
            count = q.Count(node, (), direction, lookback_us=FOREVER_LOOKBACK)
            out["count", node, direction] = engine.count(count, NOW).by_type
    for et, src_type, dst_type in world.writes:
        for src in world.nodes[src_type]:
            for dst in world.nodes[dst_type]:
                edge = engine.exists(q.Exists(src, et, dst), NOW).edge
                out["exists", src, et, dst] = None if edge is None else row(edge)
    return out


def oracle_answers(o: Oracle, world: World) -> dict[tuple[Any, ...], Any]:
    out: dict[tuple[Any, ...], Any] = {}
    since = NOW - FOREVER_LOOKBACK
    for node in world.ids:
        n = o.node(node)
        out["node", node] = None if n is None else (n.ts, n.props)
        for direction in q.DIRECTIONS:
            out["neighbours", node, direction] = orows(o.matching(node, (), direction, since, None))
            out["count", node, direction] = o.count(node, (), direction, since, None)
    for et, src_type, dst_type in world.writes:
        for src in world.nodes[src_type]:
            for dst in world.nodes[dst_type]:
                edge = o.exists(src, et, dst)
                out["exists", src, et, dst] = None if edge is None else edge.row()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_name", sorted(WORLDS))
@SETTINGS
@given(data=st.data())
def test_expired_data_is_invisible_and_a_sweep_changes_no_answer(
    backend: str, world_name: str, data: st.DataObject
) -> None:
    world = WORLDS[world_name]
    scenario = data.draw(scenarios(world, node_deletes_last=True))
    with loaded(backend, world, scenario) as g:
        o = Oracle(world.schema, scenario.mutations, NOW)
        before = answers(g, world)
        assert before == oracle_answers(o, world)
        g.sweep(NOW)
        assert answers(g, world) == before


def test_the_generated_graphs_exercise_expiry_ties_replays_and_late_deletes() -> None:
    """Guards the generators: the cases the module docstring promises do occur."""
    seen: set[str] = set()

    @settings(max_examples=100, deadline=None, database=None)
    @given(scenarios(SMALL, node_deletes_last=False))
    def look(scenario: Scenario) -> None:
        muts = scenario.mutations
        o = Oracle(SMALL.schema, muts, NOW)
        if len(o.stored_edges) > len(o.edges):
            seen.add("expired edge")
        if any(o.node(n) is None for n in o.stored_nodes):
            seen.add("expired node")
        if len({(m.ts, m.id) for m in muts}) < len(muts):
            seen.add("replay")
        stamps = [m.ts for m in muts if isinstance(m, EdgeUpsert)]
        if len(set(stamps)) < len(stamps):
            seen.add("equal times")
        for d in muts:
            if isinstance(d, NodeDelete | EdgeDelete) and any(
                isinstance(m, EdgeUpsert) and m.ts > d.ts for m in muts
            ):
                seen.add("delete older than a write")

    look()
    assert seen == {
        "expired edge",
        "expired node",
        "replay",
        "equal times",
        "delete older than a write",
    }

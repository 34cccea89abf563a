"""Shared by the oracle tests: the worlds (schemas and id pools), the graph generators, the
application orders, and the query strategies (``test_engine_oracle.py`` describes them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
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
from query.oracle import OEdge, Oracle, canonical, type_of

BACKENDS = ["memory", "lmdb"]

#: The fixed "now" of every test (Nov 2023), so retention and lookback are deterministic.
NOW = 1_700_000_000_000_000
#: Enough examples per test to hit ties, replays and late deletes many times, while the whole
#: module stays well under a minute.
EXAMPLES = int(__import__("os").environ.get("HOPCAST_ORACLE_EXAMPLES", "100"))
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


def skewed(pool: Sequence[str], byte: int) -> str:
    """Pick from ``pool`` with a quadratic skew towards its first ids, so that writes collide on
    a few hot nodes (as members' writes do) instead of spreading thinly."""
    return pool[byte * byte * len(pool) >> 16]


def _pick_node(world: World, type_byte: int, id_byte: int) -> str:
    """A node type uniformly, then one of its ids with the skew of :func:`_skewed`."""
    types = sorted(world.nodes)
    return skewed(world.nodes[types[type_byte % len(types)]], id_byte)


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
            src = skewed(world.nodes[src_type], b)
            dst = skewed([n for n in world.nodes[dst_type] if n != src], c)  # no self-loops
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


#: Most edges one hub burst gives its node: well above the small caps the cut tests draw
#: (1..HUB_CAP), so hubs sit above their caps, and at or below them, often.
HUB_MAX = 10
#: The small caps the hub tests draw (per hop, per depth, per type, neighbours' limit).
HUB_CAP = 4
#: Extra ids per node type that hub bursts draw their far ends from; bursts share them, so
#: hubs connect and paths run through them.
HUB_POOL = 8


def hub_ids(node_type: str) -> list[str]:
    return [f"{node_type}:x{i}" for i in range(1, HUB_POOL + 1)]


@st.composite
def hub_bursts(draw: st.DrawFn, world: World) -> list[Mutation]:
    """One hub: a node with 1..HUB_MAX edges of one type to distinct far ends (from the
    world's pool and :func:`hub_ids`), at the world's times, with random properties."""
    edge_type, src_type, dst_type = draw(st.sampled_from(world.writes))
    hub_is_src = draw(st.booleans())
    hub_type, far_type = (src_type, dst_type) if hub_is_src else (dst_type, src_type)
    hub = draw(st.sampled_from([*world.nodes[hub_type], *hub_ids(hub_type)[:2]]))
    pool = [n for n in [*world.nodes[far_type], *hub_ids(far_type)] if n != hub]
    far = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=HUB_MAX, unique=True))
    declared = world.edge_props.get(edge_type, {})
    out: list[Mutation] = []
    for i, other in enumerate(far):
        ts = draw(st.sampled_from(world.times))
        seed = draw(st.integers(0, 255))
        props = _props(declared, seed, [i, i + 1, i + 2])
        src, dst = (hub, other) if hub_is_src else (other, hub)
        # The id names the content: two bursts that write one edge at one time with different
        # properties are two records (a replay of one record carries the same properties).
        mid = f"hub:{src}:{edge_type}:{dst}:{ts}:{seed}:{i}"
        out.append(EdgeUpsert(src, edge_type, dst, ts, mid, props))
    return out


@st.composite
def hub_scenarios(draw: st.DrawFn, world: World) -> Scenario:
    """A random graph (as :func:`scenarios`) plus one to three hubs, node deletes last."""
    mutations = draw(mutation_sets(world))
    for burst in draw(st.lists(hub_bursts(world), min_size=1, max_size=3)):
        mutations += burst
    return Scenario(mutations, draw(application_orders(mutations, node_deletes_last=True)))


def graphs(world: World, kind: str) -> Strategy[Scenario]:
    """``"random"``: :func:`scenarios` with node deletes last; ``"hubs"``: :func:`hub_scenarios`."""
    if kind == "hubs":
        return hub_scenarios(world)
    return scenarios(world, node_deletes_last=True)


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


def since_of(since: int | None, lookback: int) -> int:
    return since if since is not None else NOW - lookback

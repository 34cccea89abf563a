"""A brute-force reference for the graph and its queries, over plain Python lists and dicts.

The oracle is built from the *set* of mutations, never from a store, so it has no notion of the
order they were applied in. It implements the documented rules on its own:

* LWW (``hopcast.graph.mutations``): a write's version is ``(ts, token(id))``. A node's
  properties merge per property (the newest write of each property wins; a ``None`` value
  removes it). A ``NodeDelete`` at version ``d`` hides every upsert of that node with a version
  below ``d`` and every incident edge version below ``d``. An ``EdgeDelete`` hides the edge's
  versions below it. An edge's newest surviving upsert gives its time and its whole property
  map; a node's newest surviving upsert gives its last-seen time.
* Retention (``hopcast.graph.schema``): a node or edge whose last-seen time plus its type's
  retention is at or before ``now`` is invisible.
* Directions (``hopcast.graph.schema``): ``out`` follows an edge from its source, ``in`` from its
  target, ``both`` from either end; a two-way mapping is followed from both ends with ``out``
  and with ``in``.
* Ordering (``hopcast.query.engine``): newest first; equal times keep the order of the edge
  types asked for (schema order when none are), then the source end before the target end
  (the out-list before the in-list), then the neighbour id ascending. Journey entries are
  newest first, ties by ``(src, type, dst)``.
* Cuts (``hopcast.query.results``): the queries with caps return the capped answer *and* the
  places where a cap dropped a matching edge (:class:`Capped`); with every cap lifted they
  return the exact answer and no cut. A capped traversal expands, per node and edge type, the
  newest ``limits.edges_for(depth, type)`` matching edges; a neighbours query keeps ``limit``;
  a journey merges the account and its first ``max_members - 1`` members (member edges newest
  first, in the order of the schema's member types). Counts and paths are exact here: a path
  query's cap behaviour is checked through :meth:`Oracle.over_cap` and the cut it reports.

Self-loops are outside the model: a generator must not produce an edge from a node to itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert, token
from hopcast.graph.schema import Schema

Version = tuple[int, int]
#: Below every real version: generation times are never negative.
NO_VERSION: Version = (-1, -1)
#: Position of the stored list an edge is read from, for the tie rule "out before in".
FROM_SOURCE, FROM_TARGET = 0, 1


@dataclass(frozen=True)
class OEdge:
    """An edge in its stored orientation."""

    src: str
    type: str
    dst: str
    ts: int
    props: dict[str, Any] = field(default_factory=dict, compare=True, hash=False)

    def other(self, node: str) -> str:
        return self.dst if self.src == node else self.src

    def row(self) -> tuple[str, str, str, int, tuple[tuple[str, Any], ...]]:
        """A hashable, comparable form (the tests compare engine edges with these)."""
        return (self.src, self.type, self.dst, self.ts, tuple(sorted(self.props.items())))


@dataclass(frozen=True)
class ONode:
    id: str
    ts: int
    props: dict[str, Any]


@dataclass(frozen=True)
class OHop:
    edge_types: tuple[str, ...]
    direction: str
    where: Mapping[str, Any]


@dataclass(frozen=True)
class OLimits:
    """The layered per-node limits: per edge type, else per depth, else the default."""

    edges_per_hop: int
    per_depth: Mapping[int, int] = field(default_factory=dict)
    per_edge_type: Mapping[str, int] = field(default_factory=dict)

    def edges_for(self, depth: int, edge_type: str) -> int:
        if edge_type in self.per_edge_type:
            return self.per_edge_type[edge_type]
        return self.per_depth.get(depth, self.edges_per_hop)


#: Caps lifted: larger than any adjacency list a test graph has.
NO_LIMITS = OLimits(10**9)

T = TypeVar("T")


@dataclass(frozen=True)
class OCut:
    """A cap that dropped at least one matching edge: whose, of which type, at which hop (None
    for a one-hop query)."""

    node: str
    edge_type: str | None
    hop: int | None


@dataclass(frozen=True)
class Capped(Generic[T]):
    """An answer under caps, and every place a cap cut it (empty: the answer is exact)."""

    value: T
    cuts: tuple[OCut, ...]


def type_of(node_id: str) -> str:
    return node_id.split(":", 1)[0]


def version(m: Mutation) -> Version:
    return (m.ts, token(m.id))


def canonical(schema: Schema, src: str, edge_type: str, dst: str) -> tuple[str, str] | None:
    """The stored orientation ``(src, dst)`` of an edge, or None if no mapping fits."""
    st, dt = type_of(src), type_of(dst)
    mappings = schema.edges[edge_type].mappings
    for m in mappings:
        if (m.src_type, m.dst_type) == (st, dt):
            if m.two_way and st == dt and src > dst:
                return dst, src
            return src, dst
    for m in mappings:
        if m.two_way and (m.src_type, m.dst_type) == (dt, st):
            return dst, src
    return None


def _is_two_way(schema: Schema, edge_type: str, src_type: str, dst_type: str) -> bool:
    return any(
        m.two_way and (m.src_type, m.dst_type) == (src_type, dst_type)
        for m in schema.edges[edge_type].mappings
    )


def _holds(op: str, have: Any, want: Any) -> bool:
    try:
        if op == "eq":
            return bool(have == want)
        if op == "ne":
            return bool(have != want)
        if op == "in":
            return have in want
        if op == "gt":
            return bool(have > want)
        if op == "gte":
            return bool(have >= want)
        if op == "lt":
            return bool(have < want)
        if op == "lte":
            return bool(have <= want)
    except TypeError:
        return False
    raise AssertionError(f"unknown operator {op}")


def where_holds(where: Mapping[str, Any], props: Mapping[str, Any]) -> bool:
    """``{"prop": value}`` means equality, ``{"prop": {op: value}}`` a comparison; a missing
    property never matches, whatever the operator."""
    for prop, cond in where.items():
        conditions = cond.items() if isinstance(cond, Mapping) else [("eq", cond)]
        for op, want in conditions:
            if prop not in props or not _holds(op, props[prop], want):
                return False
    return True


def _in_window(ts: int, since: int | None, until: int | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


class Oracle:
    """The graph that a set of mutations describes, seen at ``now``."""

    def __init__(self, schema: Schema, mutations: Iterable[Mutation], now: int) -> None:
        self.schema = schema
        self.now = now
        muts = list(mutations)
        node_floor: dict[str, Version] = {}
        edge_floor: dict[tuple[str, str, str], Version] = {}
        node_writes: dict[str, list[NodeUpsert]] = {}
        edge_writes: dict[tuple[str, str, str], list[EdgeUpsert]] = {}
        for m in muts:
            if isinstance(m, NodeDelete):
                node_floor[m.node] = max(node_floor.get(m.node, NO_VERSION), version(m))
            elif isinstance(m, NodeUpsert):
                node_writes.setdefault(m.node, []).append(m)
            else:
                ends = canonical(schema, m.src, m.type, m.dst)
                assert ends is not None, f"the generator produced an invalid edge {m}"
                key = (ends[0], m.type, ends[1])
                if isinstance(m, EdgeDelete):
                    edge_floor[key] = max(edge_floor.get(key, NO_VERSION), version(m))
                else:
                    edge_writes.setdefault(key, []).append(m)

        # Every node and edge as LWW leaves it, before retention.
        self.stored_nodes: dict[str, ONode] = {}
        for node_id, ups in node_writes.items():
            floor = node_floor.get(node_id, NO_VERSION)
            alive = [u for u in ups if version(u) > floor]
            if not alive:
                continue
            props: dict[str, Any] = {}
            names = {name for u in alive for name in u.props}
            for name in names:
                winner = max((u for u in alive if name in u.props), key=version)
                if winner.props[name] is not None:
                    props[name] = winner.props[name]
            self.stored_nodes[node_id] = ONode(node_id, max(alive, key=version).ts, props)

        self.stored_edges: dict[tuple[str, str, str], OEdge] = {}
        for key, eups in edge_writes.items():
            src, edge_type, dst = key
            floor = max(
                edge_floor.get(key, NO_VERSION),
                node_floor.get(src, NO_VERSION),
                node_floor.get(dst, NO_VERSION),
            )
            alive_edges = [u for u in eups if version(u) > floor]
            if alive_edges:
                w = max(alive_edges, key=version)
                self.stored_edges[key] = OEdge(src, edge_type, dst, w.ts, dict(w.props))

        self.edges = [e for e in self.stored_edges.values() if self._edge_visible(e)]
        self._by_node: dict[str, list[OEdge]] = {}
        for e in self.edges:
            self._by_node.setdefault(e.src, []).append(e)
            self._by_node.setdefault(e.dst, []).append(e)

    # -- visibility ------------------------------------------------------------------------

    def _edge_visible(self, e: OEdge) -> bool:
        retention = self.schema.edges[e.type].retention_us
        return retention is None or e.ts + retention > self.now

    def node(self, node_id: str) -> ONode | None:
        n = self.stored_nodes.get(node_id)
        if n is None:
            return None
        retention = self.schema.nodes[type_of(node_id)].retention_us
        return n if retention is None or n.ts + retention > self.now else None

    # -- adjacency -------------------------------------------------------------------------

    def follows(self, node_type: str, edge_type: str, direction: str) -> bool:
        """Whether a node of this type has any edge of this type to follow in ``direction``."""
        for m in self.schema.edges[edge_type].mappings:
            from_src = m.src_type == node_type
            from_dst = m.dst_type == node_type
            if direction == "both" and (from_src or from_dst):
                return True
            if direction == "out" and (from_src or (m.two_way and from_dst)):
                return True
            if direction == "in" and (from_dst or (m.two_way and from_src)):
                return True
        return False

    def plan(self, node: str, edge_types: Sequence[str], direction: str) -> list[str]:
        """The edge types read for ``node``, in tie-break order."""
        types = list(edge_types) or list(self.schema.edges)
        return [et for et in types if self.follows(type_of(node), et, direction)]

    def followable(self, node: str, e: OEdge, direction: str) -> int | None:
        """Which end ``node`` follows ``e`` from (FROM_SOURCE / FROM_TARGET), or None."""
        two_way = _is_two_way(self.schema, e.type, type_of(e.src), type_of(e.dst))
        if node == e.src and (direction in ("out", "both") or two_way):
            return FROM_SOURCE
        if node == e.dst and (direction in ("in", "both") or two_way):
            return FROM_TARGET
        return None

    def steps(
        self,
        node: str,
        edge_type: str,
        direction: str,
        since: int | None,
        until: int | None,
        where: Mapping[str, Any] | None = None,
    ) -> list[OEdge]:
        """Visible edges of one type followed from ``node``, in the documented order."""
        ranked: list[tuple[int, int, str, OEdge]] = []
        for e in self._by_node.get(node, []):
            if e.type != edge_type or not _in_window(e.ts, since, until):
                continue
            if where and not where_holds(where, e.props):
                continue
            end = self.followable(node, e, direction)
            if end is not None:
                ranked.append((-e.ts, end, e.other(node), e))
        ranked.sort(key=lambda r: r[:3])
        return [r[3] for r in ranked]

    def matching(
        self,
        node: str,
        edge_types: Sequence[str],
        direction: str,
        since: int | None,
        until: int | None,
        where: Mapping[str, Any] | None = None,
    ) -> list[OEdge]:
        """Every edge a neighbours query may return, newest first (the LATEST order)."""
        ranked: list[tuple[int, int, int, OEdge]] = []
        for i, et in enumerate(self.plan(node, edge_types, direction)):
            for j, e in enumerate(self.steps(node, et, direction, since, until, where)):
                ranked.append((-e.ts, i, j, e))
        ranked.sort(key=lambda r: r[:3])
        return [r[3] for r in ranked]

    def component(self, node: str) -> list[str]:
        """Every node joined to ``node`` by live edges, whatever their direction or time (test
        generators use it to pick endpoints that a path query can reach)."""
        seen = {node}
        todo = [node]
        while todo:
            for e in self._by_node.get(todo.pop(), []):
                for n in (e.src, e.dst):
                    if n not in seen:
                        seen.add(n)
                        todo.append(n)
        return sorted(seen)

    # -- queries ---------------------------------------------------------------------------

    def neighbours(
        self,
        node: str,
        edge_types: Sequence[str],
        direction: str,
        since: int | None,
        until: int | None,
        limit: int,
        where: Mapping[str, Any] | None = None,
    ) -> Capped[list[OEdge]]:
        """The newest ``limit`` matching edges; a cut if more match."""
        every = self.matching(node, edge_types, direction, since, until, where)
        cuts = (OCut(node, None, None),) if len(every) > limit else ()
        return Capped(every[:limit], cuts)

    def traverse(
        self,
        starts: Sequence[str],
        hops: Sequence[OHop],
        since: int | None,
        until: int | None,
        limits: OLimits = NO_LIMITS,
    ) -> Capped[dict[str, int]]:
        """``{node: depth}`` of every node reached (start nodes excluded). Each node follows,
        per edge type, its newest ``limits.edges_for(depth, type)`` edges that pass the hop's
        filter; a node and type with more such edges is a cut."""
        seen = set(starts)
        frontier = set(starts)
        reached: dict[str, int] = {}
        cuts: list[OCut] = []
        for depth, hop in enumerate(hops, 1):
            found: set[str] = set()
            for node in frontier:
                for et in self.plan(node, hop.edge_types, hop.direction):
                    taken = self.steps(node, et, hop.direction, since, until, hop.where)
                    cap = limits.edges_for(depth, et)
                    if len(taken) > cap:
                        cuts.append(OCut(node, et, depth))
                    found.update(e.other(node) for e in taken[:cap])
            found -= seen
            for node in found:
                reached[node] = depth
            seen |= found
            frontier = found
        return Capped(reached, tuple(cuts))

    def journey_members(self, account: str, max_members: int = 10**9) -> Capped[list[str]]:
        """The account, then its members in the engine's order (member types in schema order,
        each newest first), at most ``max_members``; a cut if there are more."""
        journey = self.schema.journey
        assert journey is not None
        members = [account]
        for et in self.plan(account, journey.members, "out"):
            for e in self.steps(account, et, "out", None, None):
                other = e.other(account)
                if other in members:
                    continue
                if len(members) >= max_members:
                    return Capped(members, (OCut(account, None, None),))
                members.append(other)
        return Capped(members, ())

    def journey(
        self,
        account: str,
        since: int | None,
        until: int | None,
        edge_types: Sequence[str],
        max_members: int = 10**9,
    ) -> Capped[list[OEdge]]:
        """Every interaction of the account's (first ``max_members``) members in the window,
        newest first."""
        journey = self.schema.journey
        assert journey is not None
        interactions = list(edge_types) or list(journey.interactions)
        members = self.journey_members(account, max_members)
        entries: list[OEdge] = []
        for member in members.value:
            for et in self.plan(member, interactions, "out"):
                entries.extend(self.steps(member, et, "out", since, until))
        entries.sort(key=lambda e: (-e.ts, e.src, e.type, e.dst))
        return Capped(entries, members.cuts)

    def count(
        self,
        node: str,
        edge_types: Sequence[str],
        direction: str,
        since: int | None,
        until: int | None,
    ) -> dict[str, int]:
        return {
            et: len(self.steps(node, et, direction, since, until))
            for et in self.plan(node, edge_types, direction)
        }

    def exists(self, src: str, edge_type: str, dst: str) -> OEdge | None:
        ends = canonical(self.schema, src, edge_type, dst)
        if ends is None:
            return None
        e = self.stored_edges.get((ends[0], edge_type, ends[1]))
        return e if e is not None and self._edge_visible(e) else None

    def distance(
        self,
        src: str,
        dst: str,
        edge_types: Sequence[str],
        direction: str,
        since: int | None,
    ) -> int | None:
        """Fewest hops from ``src`` to ``dst`` over visible edges with ``ts >= since``."""
        dist = {src: 0}
        frontier = [src]
        while frontier and dst not in dist:
            nxt: list[str] = []
            for node in frontier:
                for et in self.plan(node, edge_types, direction):
                    for e in self.steps(node, et, direction, since, None):
                        other = e.other(node)
                        if other not in dist:
                            dist[other] = dist[node] + 1
                            nxt.append(other)
            frontier = nxt
        return dist.get(dst)

    def degree(self, node: str, edge_type: str, direction: str, since: int | None) -> int:
        """Edges of one type that ``node`` follows in ``direction`` with ``ts >= since``."""
        return len(self.steps(node, edge_type, direction, since, None))

    def over_cap(
        self,
        edge_types: Sequence[str],
        direction: str,
        since: int | None,
        limits: OLimits,
        max_hops: int,
    ) -> bool:
        """Whether any node follows more edges of one type than the smallest cap a search of
        ``max_hops`` could apply to it, from either end (a path search reads ``direction`` from
        ``src`` and its reverse from ``dst``). If not, no cap can cut a path query."""
        reverse = {"out": "in", "in": "out", "both": "both"}[direction]
        nodes = {n for e in self.edges for n in (e.src, e.dst)}
        for node in nodes:
            for d in (direction, reverse):
                for et in self.plan(node, edge_types, d):
                    cap = min(limits.edges_for(hop, et) for hop in range(1, max_hops + 1))
                    if self.degree(node, et, d, since) > cap:
                        return True
        return False

"""Query execution over a :class:`~hopcast.graph.store.GraphStore`.

Every query runs inside one read view (a consistent snapshot on LMDB) with ``now`` fixed.
Traversals are breadth-first with one round per hop: the whole frontier is expanded before the
next hop starts, adjacency lists are streamed (the KV layer reads them lazily in batches) and
filtered as they stream, and each list stops as soon as its limit is met.

Ordering rules (the oracle tests in ``tests/query`` hold the engine to them):

* ``latest``: newest first; equal times keep the order of the edge types asked for, then of the
  stored lists (out before in), then the neighbour id ascending.
* journey: newest first, ties by ``(src, type, dst)`` ascending.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from hopcast.errors import InvalidQuery
from hopcast.graph.store import Edge, GraphReader, GraphStore, KeyedEdge, Node, edge_of
from hopcast.query import spec as q
from hopcast.query.cache import NodeCache


@dataclass(slots=True)
class NeighboursResult:
    node: str
    edges: list[Edge]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "edges": [e.to_dict() | {"neighbour": e.other(self.node)} for e in self.edges],
        }


@dataclass(frozen=True, slots=True)
class Reached:
    """A node reached by a traversal: its depth and the edge it was first reached through."""

    node: str
    depth: int
    via: Edge | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "depth": self.depth,
            "via": None if self.via is None else self.via.to_dict(),
        }


@dataclass(slots=True)
class TraverseResult:
    nodes: list[Reached]
    work: int
    truncated: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [r.to_dict() for r in self.nodes],
            "work": self.work,
            "truncated": self.truncated,
            "reason": self.reason,
        }


@dataclass(slots=True)
class JourneyResult:
    node: str
    members: list[str]
    entries: list[Edge]
    cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "members": self.members,
            "entries": [e.to_dict() for e in self.entries],
            "cursor": self.cursor,
        }


@dataclass(slots=True)
class CountResult:
    node: str
    count: int
    by_type: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "count": self.count, "by_type": self.by_type}


@dataclass(slots=True)
class ExistsResult:
    exists: bool
    edge: Edge | None

    def to_dict(self) -> dict[str, Any]:
        return {"exists": self.exists, "edge": None if self.edge is None else self.edge.to_dict()}


@dataclass(slots=True)
class PathResult:
    found: bool
    nodes: list[str]
    edges: list[Edge]
    work: int
    truncated: bool = False

    @property
    def hops(self) -> int:
        return len(self.edges)

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "hops": self.hops if self.found else None,
            "nodes": self.nodes,
            "edges": [e.to_dict() for e in self.edges],
            "work": self.work,
            "truncated": self.truncated,
        }


#: Frontier nodes expanded per read round: bounds the edges held in memory before the work cap
#: is checked (HOP_CHUNK x edges per hop) while still amortising the round.
HOP_CHUNK = 256
#: Smallest first batch per list in a journey merge (most lists contribute only a few entries;
#: below this, extra read rounds cost more than the entries saved).
JOURNEY_MIN_BATCH = 4


def _matches(filters: tuple[q.Filter, ...], edge: Edge) -> bool:
    props = edge.props
    return all(f.matches(props) for f in filters)


class QueryEngine:
    """Runs query specs. Thread-safe: each call opens its own read view.

    Args:
        store: the graph.
        cache: optional node cache for :meth:`nodes` (invalidated by the store's writes).
        clock: "now" in µs when a call passes none (defaults to the store's clock).
    """

    def __init__(
        self,
        store: GraphStore,
        cache: NodeCache | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.schema = store.schema
        self.cache = cache
        self.clock = clock or store.clock
        self._plans: dict[tuple[str, tuple[str, ...], str], list[tuple[str, tuple[str, ...]]]] = {}
        if cache is not None:
            store.on_write(cache.invalidate)

    # -- planning ----------------------------------------------------------------------------

    def _plan(
        self, node: str, edge_types: tuple[str, ...], direction: str
    ) -> list[tuple[str, tuple[str, ...]]]:
        """[(edge type, physical lists)] to read for a node, cached per node type."""
        node_type = node.partition(":")[0]
        key = (node_type, edge_types, direction)
        plan = self._plans.get(key)
        if plan is None:
            types = edge_types or self.schema.edge_types_touching(node_type)
            plan = []
            for et in types:
                lists = self.schema.physical_lists(node_type, et, direction)
                if lists:
                    plan.append((et, lists))
            self._plans[key] = plan
        return plan

    @staticmethod
    def _stream(
        r: GraphReader,
        node: str,
        edge_type: str,
        lists: tuple[str, ...],
        since: int | None,
        until: int | None,
    ) -> Iterator[tuple[str, Edge]]:
        """(neighbour, edge) pairs of one edge type, newest first across its stored lists."""
        if len(lists) == 1:
            if lists[0] == "out":
                return ((e.dst, e) for e in r.edges(node, edge_type, "out", since, until))
            return ((e.src, e) for e in r.edges(node, edge_type, "in", since, until))
        outs = ((e.dst, e) for e in r.edges(node, edge_type, "out", since, until))
        ins = ((e.src, e) for e in r.edges(node, edge_type, "in", since, until))
        return heapq.merge(outs, ins, key=lambda pair: -pair[1].ts)

    def _take(
        self,
        r: GraphReader,
        node: str,
        edge_type: str,
        lists: tuple[str, ...],
        since: int | None,
        until: int | None,
        limit: int,
        where: tuple[q.Filter, ...],
        budget: int,
    ) -> tuple[list[tuple[str, Edge]], int, bool]:
        """The newest ``limit`` matching (neighbour, edge) pairs of one edge type.

        Reads at most ``budget`` edges. Returns ``(pairs, edges read, budget exhausted)``.
        """
        if not where and len(lists) == 1:
            # Fast path: one stored list, no filter — one bounded read.
            n = min(limit, budget)
            page = r.edges_list(node, edge_type, lists[0], since, until, n)
            if lists[0] == "out":
                pairs = [(e.dst, e) for e in page]
            else:
                pairs = [(e.src, e) for e in page]
            return pairs, len(page), n < limit and len(page) == n
        out: list[tuple[str, Edge]] = []
        read = 0
        for other, e in self._stream(r, node, edge_type, lists, since, until):
            if read >= budget:
                return out, read, True
            read += 1
            if where and not _matches(where, e):
                continue
            out.append((other, e))
            if len(out) >= limit:
                break
        return out, read, False

    @staticmethod
    def _expand(
        r: GraphReader,
        plans: list[tuple[str, list[tuple[str, tuple[str, ...]]]]],
        depth: int,
        hop: q.Hop,
        limits: q.Limits,
        since: int | None,
        until: int | None,
    ) -> dict[tuple[str, str], list[tuple[str, Edge]]]:
        """Read one hop's unfiltered single-list expansions for a chunk of the frontier in
        one round per (edge type, list); the rest is left to :meth:`_take`."""
        if hop.where:
            return {}
        groups: dict[tuple[str, str], list[str]] = {}
        for node, plan in plans:
            for et, lists in plan:
                if len(lists) == 1:
                    groups.setdefault((et, lists[0]), []).append(node)
        pages: dict[tuple[str, str], list[tuple[str, Edge]]] = {}
        for (et, physical), nodes in groups.items():
            expanded = r.expand(nodes, et, physical, since, until, limits.edges_for(depth, et))
            for node, edges in zip(nodes, expanded, strict=True):
                if physical == "out":
                    pages[(node, et)] = [(e.dst, e) for e in edges]
                else:
                    pages[(node, et)] = [(e.src, e) for e in edges]
        return pages

    def _now(self, now: int | None) -> int:
        return self.clock() if now is None else now

    # -- queries -----------------------------------------------------------------------------

    def nodes(self, ids: Iterable[str], now: int | None = None) -> list[Node | None]:
        """Nodes by id (None where absent or expired), served from the cache when possible."""
        ids = list(ids)
        if len(ids) > q.MAX_IDS:
            raise InvalidQuery(f"at most {q.MAX_IDS} ids per request")
        for node_id in ids:
            q.check_node(self.schema, node_id)
        t = self._now(now)
        out: list[Node | None] = []
        cache = self.cache
        with self.store.read(t) as r:
            for node_id in ids:
                if cache is not None:
                    hit, node = cache.get(node_id, t)
                    if hit:
                        out.append(node)
                        continue
                node = r.node(node_id)
                if cache is not None:
                    cache.put(node_id, node, t)
                out.append(node)
        return out

    def neighbours(self, spec: q.Neighbours, now: int | None = None) -> NeighboursResult:
        q.check(self.schema, spec)
        t = self._now(now)
        since = spec.since if spec.since is not None else t - spec.lookback_us
        plan = self._plan(spec.node, spec.edge_types, spec.direction)
        out: list[Edge] = []
        limit = spec.limit
        where = spec.where
        with self.store.read(t) as r:
            if len(plan) == 1:
                et, lists = plan[0]
                pairs = self._take(
                    r, spec.node, et, lists, since, spec.until, limit, where, 1 << 62
                )
                return NeighboursResult(spec.node, [e for _, e in pairs[0]])
            streams = [
                self._stream(r, spec.node, et, lists, since, spec.until) for et, lists in plan
            ]
            merged: Iterable[tuple[str, Edge]]
            if len(streams) == 1:
                merged = streams[0]
            elif spec.selection is q.Selection.LATEST:
                merged = heapq.merge(*streams, key=lambda pair: -pair[1].ts)
            else:
                merged = chain.from_iterable(streams)
            for _, e in merged:
                if where and not _matches(where, e):
                    continue
                out.append(e)
                if len(out) >= limit:
                    break
        return NeighboursResult(spec.node, out)

    def traverse(self, spec: q.Traverse, now: int | None = None) -> TraverseResult:
        q.check(self.schema, spec)
        t = self._now(now)
        limits = spec.limits
        since = spec.since if spec.since is not None else t - limits.lookback_us
        visited: dict[str, Reached] = {}
        for s in spec.start:
            visited.setdefault(s, Reached(s, 0, None))
        frontier = list(visited)
        reached: list[Reached] = []
        work = 0
        max_work = limits.max_work
        truncated: str | None = None
        with self.store.read(t) as r:
            for depth, hop in enumerate(spec.hops, 1):
                nxt: list[str] = []
                for lo in range(0, len(frontier), HOP_CHUNK):
                    chunk = frontier[lo : lo + HOP_CHUNK]
                    plans = [(n, self._plan(n, hop.edge_types, hop.direction)) for n in chunk]
                    pages = self._expand(r, plans, depth, hop, limits, since, spec.until)
                    for node, plan in plans:
                        for et, lists in plan:
                            budget = max_work - work
                            page = pages.get((node, et))
                            if page is not None:
                                limit = limits.edges_for(depth, et)
                                exhausted = budget < limit and len(page) >= budget
                                pairs = page[:budget] if exhausted else page
                                read = len(pairs)
                            else:
                                pairs, read, exhausted = self._take(
                                    r,
                                    node,
                                    et,
                                    lists,
                                    since,
                                    spec.until,
                                    limits.edges_for(depth, et),
                                    hop.where,
                                    budget,
                                )
                            work += read
                            for other, e in pairs:
                                if other not in visited:
                                    hit = Reached(other, depth, e)
                                    visited[other] = hit
                                    reached.append(hit)
                                    nxt.append(other)
                            if exhausted:
                                return TraverseResult(
                                    reached, work, True, f"max_work ({max_work}) reached"
                                )
                if len(nxt) > limits.max_frontier:
                    # Every node found stays in the result; only the first ones expand further.
                    del nxt[limits.max_frontier :]
                    truncated = f"max_frontier ({limits.max_frontier}) reached at depth {depth}"
                frontier = nxt
                if not frontier:
                    break
        return TraverseResult(reached, work, truncated is not None, truncated)

    def journey(self, spec: q.Journey, now: int | None = None) -> JourneyResult:
        q.check(self.schema, spec)
        journey = self.schema.journey
        assert journey is not None
        t = self._now(now)
        since = spec.since if spec.since is not None else t - spec.lookback_us
        until = spec.until
        after: tuple[int, str, str, str] | None = None
        if spec.cursor is not None:
            cts, csrc, cet, cdst = q.decode_cursor(spec.cursor)
            after = (-cts, csrc, cet, cdst)
            until = cts + 1 if until is None else min(until, cts + 1)
        interactions = spec.edge_types or journey.interactions
        with self.store.read(t) as r:
            members = [spec.node]
            seen = {spec.node}
            for et, lists in self._plan(spec.node, journey.members, "out"):
                for other, _ in self._stream(r, spec.node, et, lists, None, None):
                    if other not in seen:
                        seen.add(other)
                        members.append(other)
                        if len(members) >= q.MAX_IDS:
                            break
            entries, more = self._merge_lists(
                r, members, interactions, since, until, spec.limit, after
            )
        cursor = None
        if more:
            last = entries[-1]
            cursor = q.encode_cursor(last.ts, last.src, last.type, last.dst)
        return JourneyResult(spec.node, members, entries, cursor)

    def _merge_lists(
        self,
        r: GraphReader,
        members: list[str],
        interactions: tuple[str, ...],
        since: int | None,
        until: int | None,
        limit: int,
        after: tuple[int, str, str, str] | None,
    ) -> tuple[list[Edge], bool]:
        """Merge the members' interaction lists newest first; ``(entries, more)``.

        Steps:

        1. read a small first batch of every list, one round per (edge type, list) for all
           members together;
        2. everything up to the *horizon* — the oldest entry of the first list that may hold
           more — is in final order; if that yields ``limit + 1`` entries, stop;
        3. otherwise read the next, doubled batch of each list that may hold more *and* whose
           last entry read is newer than the current ``limit + 1``-th entry (no other list can
           change the page), and go to 2.
        """
        # (edge type, stored list) -> members whose list of that kind is merged
        groups: dict[tuple[str, str], list[str]] = {}
        for m in members:
            for et, lists in self._plan(m, interactions, "out"):
                for physical in lists:
                    groups.setdefault((et, physical), []).append(m)
        n_lists = sum(len(nodes) for nodes in groups.values())
        # An even share of the page per list: reading an entry costs more than another round.
        batch = min(limit + 1, max(JOURNEY_MIN_BATCH, (limit + 1) // max(1, n_lists) + 2))
        pool: list[KeyedEdge] = []
        # lists that may hold more: (member, edge type, list, last entry read, next batch size)
        open_lists: list[tuple[str, str, str, KeyedEdge, int]] = []
        for (et, physical), nodes in groups.items():
            pages = r.expand_keyed(nodes, et, physical, since, until, batch)
            for node, page in zip(nodes, pages, strict=True):
                pool.extend(page)
                if len(page) == batch:
                    open_lists.append((node, et, physical, page[-1], batch * 2))
        # A two-way interaction between two members sits in one's out-list and the other's
        # in-list: the merge sees it twice.
        twice = any(physical == "in" for _, physical in groups)
        while True:
            pool.sort()
            if twice:
                pool = [p for i, p in enumerate(pool) if i == 0 or p[:4] != pool[i - 1][:4]]
            if after is not None:
                pool = [p for p in pool if p[:4] > after]
            if not open_lists:
                return [edge_of(k) for k in pool[:limit]], len(pool) > limit
            horizon = min(last for _, _, _, last, _ in open_lists)
            final = bisect_right(pool, horizon)
            if final > limit:
                return [edge_of(k) for k in pool[:limit]], True
            # Only a list whose last entry read is newer than the current (limit+1)-th entry
            # can still change the page: read more of those, in growing batches.
            cutoff = pool[limit] if len(pool) > limit else None
            still_open: list[tuple[str, str, str, KeyedEdge, int]] = []
            for node, et, physical, last, size in open_lists:
                if cutoff is not None and last >= cutoff:
                    still_open.append((node, et, physical, last, size))
                    continue
                resume = last[5] + b"\x00"
                page = r.expand_keyed([node], et, physical, since, until, size, resume)[0]
                pool.extend(page)
                if len(page) == size:
                    still_open.append((node, et, physical, page[-1], min(size * 2, q.MAX_RESULT)))
            open_lists = still_open

    def count(self, spec: q.Count, now: int | None = None) -> CountResult:
        q.check(self.schema, spec)
        t = self._now(now)
        since = spec.since if spec.since is not None else t - spec.lookback_us
        by_type: dict[str, int] = {}
        with self.store.read(t) as r:
            for et, lists in self._plan(spec.node, spec.edge_types, spec.direction):
                by_type[et] = sum(r.count(spec.node, et, p, since, spec.until) for p in lists)
        return CountResult(spec.node, sum(by_type.values()), by_type)

    def exists(self, spec: q.Exists, now: int | None = None) -> ExistsResult:
        q.check(self.schema, spec)
        src, dst = spec.src, spec.dst
        et = self.schema.edges[spec.edge_type]
        found = et.mapping(src.partition(":")[0], dst.partition(":")[0])
        if found is None:
            return ExistsResult(False, None)
        mapping, swapped = found
        if swapped or (mapping.two_way and mapping.src_type == mapping.dst_type and src > dst):
            src, dst = dst, src
        with self.store.read(self._now(now)) as r:
            edge = r.edge(src, spec.edge_type, dst)
        return ExistsResult(edge is not None, edge)

    def shortest_path(self, spec: q.ShortestPath, now: int | None = None) -> PathResult:
        """Breadth-first search from ``src``; the first time ``dst`` is reached is a shortest
        path within the limits (each node expands its newest ``edges_for(depth)`` edges)."""
        q.check(self.schema, spec)
        t = self._now(now)
        limits = spec.limits
        since = spec.since if spec.since is not None else t - limits.lookback_us
        if spec.src == spec.dst:
            return PathResult(True, [spec.src], [], 0)
        parent: dict[str, tuple[str, Edge] | None] = {spec.src: None}
        frontier = [spec.src]
        work = 0
        truncated = False
        with self.store.read(t) as r:
            for depth in range(1, spec.max_hops + 1):
                nxt: list[str] = []
                for node in frontier:
                    for et, lists in self._plan(node, spec.edge_types, spec.direction):
                        pairs, read, exhausted = self._take(
                            r,
                            node,
                            et,
                            lists,
                            since,
                            None,
                            limits.edges_for(depth, et),
                            (),
                            limits.max_work - work,
                        )
                        work += read
                        for other, e in pairs:
                            if other not in parent:
                                parent[other] = (node, e)
                                if other == spec.dst:
                                    return self._path(parent, spec.dst, work)
                                nxt.append(other)
                        if exhausted:
                            return PathResult(False, [], [], work, True)
                if len(nxt) > limits.max_frontier:
                    del nxt[limits.max_frontier :]
                    truncated = True
                frontier = nxt
                if not frontier:
                    break
        return PathResult(False, [], [], work, truncated)

    @staticmethod
    def _path(parent: dict[str, tuple[str, Edge] | None], dst: str, work: int) -> PathResult:
        nodes = [dst]
        edges: list[Edge] = []
        step = parent[dst]
        while step is not None:
            prev, edge = step
            edges.append(edge)
            nodes.append(prev)
            step = parent[prev]
        nodes.reverse()
        edges.reverse()
        return PathResult(True, nodes, edges, work)

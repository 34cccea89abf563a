"""Query execution over a :class:`~hopcast.graph.store.GraphStore`.

Every query runs inside one read view (a consistent snapshot on LMDB) with ``now`` fixed.
Traversals are breadth-first with one round per hop: the whole frontier is expanded before the
next hop starts, adjacency lists are streamed (the KV layer reads them lazily in batches) and
filtered as they stream, and each list stops one edge past its limit (:mod:`hopcast.query.reads`):
that edge tells whether the limit cut, and every answer a limit cut says so (``truncated``,
``reason``; :mod:`hopcast.query.results` has the contract). Shortest paths are searched from both
ends (:mod:`hopcast.query.path`).

Ordering rules (the oracle tests in ``tests/query`` hold the engine to them):

* ``latest``: newest first; equal times keep the order of the edge types asked for, then of the
  stored lists (out before in), then the neighbour id ascending.
* journey: newest first, ties by ``(src, type, dst)`` ascending.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import chain

from hopcast.errors import InvalidQuery
from hopcast.graph.store import Edge, GraphReader, GraphStore, KeyedEdge, Node, edge_of
from hopcast.query import spec as q
from hopcast.query.cache import NodeCache
from hopcast.query.path import PathSearch
from hopcast.query.reads import (
    CUT,
    FILTER_LOOKAHEAD,
    SPENT,
    UNSURE,
    WHOLE,
    Reads,
    matches,
)
from hopcast.query.results import (
    CountResult,
    Cut,
    Cuts,
    ExistsResult,
    JourneyResult,
    NeighboursResult,
    PathResult,
    Reached,
    TraverseResult,
)

__all__ = [
    "CountResult",
    "Cut",
    "Cuts",
    "ExistsResult",
    "JourneyResult",
    "NeighboursResult",
    "PathResult",
    "QueryEngine",
    "Reached",
    "TraverseResult",
]

#: Frontier nodes expanded per read round: bounds the edges held in memory before the work cap
#: is checked (HOP_CHUNK x edges per hop) while still amortising the round.
HOP_CHUNK = 256
#: Smallest first batch per list in a journey merge (most lists contribute only a few entries;
#: below this, extra read rounds cost more than the entries saved).
JOURNEY_MIN_BATCH = 4


class QueryEngine:
    """Runs query specs. Thread-safe: each call opens its own read view.

    Args:
        store: the graph.
        cache: optional node cache for :meth:`nodes` (invalidated by the store's writes; its
            consistency model decides what else retires an entry).
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
        self.reads = Reads(store.schema)
        if cache is not None:
            store.on_write(cache.invalidate)

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
        if cache is None:
            with self.store.read(t) as r:
                return [r.node(node_id) for node_id in ids]
        # 1. the cache's epoch before the view opens: a local write in between makes the reads
        #    below too old to cache (see hopcast.query.cache); then the view's generation;
        epoch = cache.epoch
        with self.store.read(t) as r:
            generation = r.txn.generation()
            if not cache.usable(generation):
                return [r.node(node_id) for node_id in ids]
            # 2. each node from the cache if it holds this generation's, else from the view.
            for node_id in ids:
                hit, node = cache.get(node_id, t, generation)
                if not hit:
                    node = r.node(node_id)
                    cache.put(node_id, node, t, generation, epoch)
                out.append(node)
        return out

    def neighbours(self, spec: q.Neighbours, now: int | None = None) -> NeighboursResult:
        """The newest (or any) ``spec.limit`` matching edges; ``truncated`` if more match."""
        q.check(self.schema, spec)
        t = self._now(now)
        since = spec.since if spec.since is not None else t - spec.lookback_us
        plan = self.reads.plan(spec.node, spec.edge_types, spec.direction)
        out: list[Edge] = []
        limit = spec.limit
        where = spec.where
        cuts = Cuts()
        with self.store.read(t) as r:
            if len(plan) == 1 and len(plan[0][1]) == 1 and not where:
                # Fast path: one stored list, no filter — one read, one edge past the limit.
                et, (physical,) = plan[0]
                page = r.edges_list(spec.node, et, physical, since, spec.until, limit + 1)
                if len(page) > limit:
                    del page[limit:]
                    cuts.add(Cut("limit", limit, spec.node, et))
                return NeighboursResult(spec.node, page, cuts)
            if len(plan) == 1:
                et, lists = plan[0]
                pairs, _, status = self.reads.take(
                    r, spec.node, et, lists, since, spec.until, limit, where, 1 << 62
                )
                if status != WHOLE:
                    cuts.add(Cut("limit", limit, spec.node, et, unread=status == UNSURE))
                return NeighboursResult(spec.node, [e for _, e in pairs], cuts)
            streams = [
                self.reads.stream(r, spec.node, et, lists, since, spec.until) for et, lists in plan
            ]
            merged: Iterable[tuple[str, Edge]]
            if spec.selection is q.Selection.LATEST:
                merged = heapq.merge(*streams, key=lambda pair: -pair[1].ts)
            else:
                merged = chain.from_iterable(streams)
            read = 0
            stop_at = -1  # once the limit is met: where the look-ahead for one more match ends
            for _, e in merged:
                if stop_at >= 0 and read >= stop_at:
                    cuts.add(Cut("limit", limit, spec.node, unread=True))
                    break
                read += 1
                if where and not matches(where, e):
                    continue
                if len(out) >= limit:
                    cuts.add(Cut("limit", limit, spec.node))
                    break
                out.append(e)
                if len(out) == limit:
                    stop_at = read + max(read, FILTER_LOOKAHEAD) if where else read + 1
        return NeighboursResult(spec.node, out, cuts)

    def traverse(self, spec: q.Traverse, now: int | None = None) -> TraverseResult:
        """Breadth-first, one round per hop; every cap that drops an edge is a cut."""
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
        cuts = Cuts()
        reads = self.reads
        with self.store.read(t) as r:
            for depth, hop in enumerate(spec.hops, 1):
                nxt: list[str] = []
                for lo in range(0, len(frontier), HOP_CHUNK):
                    chunk = frontier[lo : lo + HOP_CHUNK]
                    plans = [(n, reads.plan(n, hop.edge_types, hop.direction)) for n in chunk]
                    pages = reads.expand(r, plans, depth, hop, limits, since, spec.until)
                    for node, plan in plans:
                        for et, lists in plan:
                            budget = max_work - work
                            limit = limits.edges_for(depth, et)
                            page = pages.get((node, et))
                            if page is not None:  # read one past the cap, like take()
                                status = WHOLE
                                if len(page) > budget:
                                    page, status = page[:budget], SPENT
                                elif len(page) > limit:
                                    status = CUT
                                read = len(page)
                                pairs = page[:limit] if read > limit else page
                            else:
                                pairs, read, status = reads.take(
                                    r, node, et, lists, since, spec.until, limit, hop.where, budget
                                )
                            work += read
                            for other, e in pairs:
                                if other not in visited:
                                    hit = Reached(other, depth, e)
                                    visited[other] = hit
                                    reached.append(hit)
                                    nxt.append(other)
                            if status == SPENT:
                                cut = Cut("limits.max_work", max_work, node, et, depth)
                                cuts.add(cut, first=True)
                                return TraverseResult(reached, work, cuts)
                            if status != WHOLE:
                                if cuts.full:  # a traversal through many hubs: count the rest
                                    cuts.count += 1
                                    continue
                                name = limits.name_of(depth, et)
                                unread = status == UNSURE
                                cuts.add(Cut(name, limit, node, et, depth, unread=unread))
                if len(nxt) > limits.max_frontier and depth < len(spec.hops):
                    # Every node found stays in the result; only the first ones expand further.
                    del nxt[limits.max_frontier :]
                    cuts.add(Cut("limits.max_frontier", limits.max_frontier, hop=depth))
                frontier = nxt
                if not frontier:
                    break
        return TraverseResult(reached, work, cuts)

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
        cuts = Cuts()
        with self.store.read(t) as r:
            members = self._members(r, spec, cuts)
            entries, more = self._merge_lists(
                r, members, interactions, since, until, spec.limit, after
            )
        cursor = None
        if more:
            last = entries[-1]
            cursor = q.encode_cursor(last.ts, last.src, last.type, last.dst)
        return JourneyResult(spec.node, members, entries, cursor, cuts)

    def _members(self, r: GraphReader, spec: q.Journey, cuts: Cuts) -> list[str]:
        """The account and its members (newest member edge first), at most ``max_members``."""
        journey = self.schema.journey
        assert journey is not None
        members = [spec.node]
        seen = {spec.node}
        for et, lists in self.reads.plan(spec.node, journey.members, "out"):
            for other, _ in self.reads.stream(r, spec.node, et, lists, None, None):
                if other in seen:
                    continue
                if len(members) >= spec.max_members:
                    cuts.add(Cut("max_members", spec.max_members, spec.node))
                    return members
                seen.add(other)
                members.append(other)
        return members

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
            for et, lists in self.reads.plan(m, interactions, "out"):
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
            for et, lists in self.reads.plan(spec.node, spec.edge_types, spec.direction):
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
        """A shortest path from ``src`` to ``dst`` within ``max_hops``, searched from both ends
        (:mod:`hopcast.query.path`); ``truncated`` if a cap may have hidden a shorter one, or,
        when none is found, one within ``max_hops``."""
        q.check(self.schema, spec)
        t = self._now(now)
        since = spec.since if spec.since is not None else t - spec.limits.lookback_us
        if spec.src == spec.dst:
            return PathResult(True, [spec.src], [], 0)
        with self.store.read(t) as r:
            return PathSearch(self.reads, r, spec, since).run()

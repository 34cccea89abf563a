"""Shortest path: a breadth-first search from both ends, and an honest account of what the
per-node caps may have hidden.

The search keeps a side per end: ``src`` follows the query's direction, ``dst`` the reverse.
Each round expands one whole level of the side with the smaller frontier (so a search between
a heavy member and a light one walks mostly from the light one), reading each node's newest
``limits.edges_for(level, type)`` edges, one past the cap to tell whether the cap cut. A node
discovered by one side that the other has already reached is a meeting point; a path's length
is the sum of the two depths.

Why the answer is exact unless ``truncated`` says otherwise. Let ``P`` be a shortest path, of
length ``L``. When the search stops at levels ``(a, b)``, either every edge of ``P`` within
``a`` hops of ``src`` and ``b`` hops of ``dst`` was read and kept -- then ``P`` met itself and
a path of length ``<= L`` was found -- or one was dropped by a cap at some level ``k`` of a side,
and then ``L >= k + 1`` (the dropped edge leads to a node at least one hop from the other end:
an edge straight to the other end is looked up by key whenever a cap cuts, and taken). A frontier
cut after level ``k`` gives the same bound; running out of work during level ``k`` gives ``k``.
Two more facts sharpen it: while no cap has cut, a level that meets nothing proves
``L > a + b``; and a side whose frontier empties without ever being cut has reached everything
the other end could be reached from, so there is no path at all. A cut is reported only if its
bound does not rule out a shorter path (or, when nothing was found, a path within
``max_hops``). And a search that has never been cut stops at the first meeting point: the
level-completion argument above makes it a shortest one.
"""

from __future__ import annotations

from hopcast.graph.store import Edge, GraphReader
from hopcast.query import spec as q
from hopcast.query.reads import REVERSE, SPENT, UNSURE, WHOLE, Reads
from hopcast.query.results import Cut, Cuts, PathResult


class _Side:
    """One end's search: what it reached, through which edge, and how far."""

    __slots__ = ("clean", "depth", "direction", "dist", "frontier", "parent", "root")

    def __init__(self, root: str, direction: str) -> None:
        self.root = root
        self.direction = direction
        # node -> (the node it was reached from, the edge between them); the root maps to None
        self.parent: dict[str, tuple[str, Edge] | None] = {root: None}
        self.dist: dict[str, int] = {root: 0}
        self.frontier = [root]
        self.depth = 0  # levels expanded
        self.clean = True  # no limit has cut this side

    def chain(self, node: str) -> tuple[list[str], list[Edge]]:
        """Nodes and edges from ``node`` back to the root."""
        nodes = [node]
        edges: list[Edge] = []
        step = self.parent[node]
        while step is not None:
            prev, edge = step
            edges.append(edge)
            nodes.append(prev)
            step = self.parent[prev]
        return nodes, edges


class PathSearch:
    """One shortest-path query inside one read view. Call :meth:`run` once.

    Args:
        reads: the engine's read plans and capped reads.
        r: the read view.
        spec: the query (already checked).
        since: the lower time bound (the query's ``since`` or now minus the lookback).
    """

    def __init__(self, reads: Reads, r: GraphReader, spec: q.ShortestPath, since: int) -> None:
        self.reads = reads
        self.r = r
        self.spec = spec
        self.since = since
        self.work = 0
        # (lower bound on the length of any path the cut may hide, the cut)
        self.cuts: list[tuple[int, Cut]] = []
        # every path is at least this long (proved by levels read before any cut)
        self.floor = 1
        self.best: tuple[int, str] | None = None  # (length, meeting node)

    def run(self) -> PathResult:
        spec = self.spec
        src, dst = _Side(spec.src, spec.direction), _Side(spec.dst, REVERSE[spec.direction])
        while src.depth + dst.depth < spec.max_hops:
            live = [s for s in (src, dst) if s.frontier]
            if not live:
                break
            side = min(live, key=lambda s: len(s.frontier))  # ties: src
            other = dst if side is src else src
            if not self._level(side, other):
                break  # out of work
            if self.best is not None:
                break
            if not self.cuts:
                self.floor = src.depth + dst.depth + 1
            if not side.frontier and side.clean:
                return PathResult(False, [], [], self.work)  # no path at all
        return self._answer(src, dst)

    def _level(self, side: _Side, other: _Side) -> bool:
        """Expand one level of ``side``; False if the work cap stopped it."""
        spec, limits, reads, r = self.spec, self.spec.limits, self.reads, self.r
        level = side.depth + 1
        exact = not self.cuts  # no cut so far: the first meeting point is a shortest path
        nxt: list[str] = []
        parent, dist, seen = side.parent, side.dist, other.dist
        for node in side.frontier:
            for et, lists in reads.plan(node, spec.edge_types, side.direction):
                limit = limits.edges_for(level, et)
                budget = limits.max_work - self.work
                pairs, read, status = reads.take(
                    r, node, et, lists, self.since, None, limit, (), budget
                )
                self.work += read
                for n, e in pairs:
                    if n in parent:
                        continue
                    parent[n] = (node, e)
                    dist[n] = level
                    nxt.append(n)
                    if n in seen:
                        self._meet(level + seen[n], n)
                if status == SPENT:
                    cut = Cut("limits.max_work", limits.max_work, node, et, level, side.root)
                    self.cuts.append((level, cut))
                    side.clean = False
                    return False
                if status != WHOLE:
                    side.clean = False
                    cut = Cut(
                        limits.name_of(level, et),
                        limit,
                        node,
                        et,
                        level,
                        side.root,
                        unread=status == UNSURE,
                    )
                    self.cuts.append((level + 1, cut))
                    # A dropped edge straight to the other end is a path of `level` hops:
                    # one key lookup finds it, so the cap cannot hide it.
                    if other.root not in parent:
                        link = reads.link(r, node, et, lists, other.root, self.since)
                        if link is not None:
                            parent[other.root] = (node, link)
                            dist[other.root] = level
                            self._meet(level, other.root)
                if exact and self.best is not None:
                    break
            if exact and self.best is not None:
                break
        side.depth = level
        if len(nxt) > limits.max_frontier:
            del nxt[limits.max_frontier :]
            side.clean = False
            cut = Cut("limits.max_frontier", limits.max_frontier, hop=level, origin=side.root)
            self.cuts.append((level + 1, cut))
        side.frontier = nxt
        return True

    def _meet(self, length: int, node: str) -> None:
        if self.best is None or length < self.best[0]:
            self.best = (length, node)

    def _answer(self, src: _Side, dst: _Side) -> PathResult:
        spec = self.spec
        cuts = Cuts()
        if self.best is None:
            # A path within max_hops could hide behind a cut whose bound allows one.
            if self.floor <= spec.max_hops:
                for bound, cut in self.cuts:
                    if bound <= spec.max_hops:
                        cuts.add(cut, first=cut.limit == "limits.max_work")
            return PathResult(False, [], [], self.work, cuts)
        length, meet = self.best
        if self.floor < length:
            for bound, cut in self.cuts:
                if bound < length:
                    cuts.add(cut, first=cut.limit == "limits.max_work")
        head, head_edges = src.chain(meet)
        tail, tail_edges = dst.chain(meet)
        head.reverse()
        head_edges.reverse()
        return PathResult(True, head + tail[1:], head_edges + tail_edges, self.work, cuts)

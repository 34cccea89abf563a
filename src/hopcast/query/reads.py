"""The adjacency reads every query is made of, and how a capped read tells that it cut.

A capped read asks for one edge more than its cap: if that edge exists the cap dropped some,
and the read says so (:data:`CUT`); a list that fits its cap is :data:`WHOLE`. With a ``where``
filter the edge past the cap must also match, so a read that meets its cap looks ahead a bounded
number of edges (:data:`FILTER_LOOKAHEAD`) for one more match before giving up (:data:`UNSURE`:
edges were left unread). A read stopped by the caller's work budget before it could tell is
:data:`SPENT`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from hopcast.graph.schema import Schema
from hopcast.graph.store import Edge, GraphReader
from hopcast.query import spec as q

#: How a capped read ended (:meth:`Reads.take`): every matching edge was returned ...
WHOLE = 0
#: ... the cap dropped matching edges (one more was seen) ...
CUT = 1
#: ... the cap was met and the look-ahead ended with edges left unread (a filtered read) ...
UNSURE = 2
#: ... or the work budget ran out before the read could tell.
SPENT = 3

#: A filtered read that meets its cap reads at most this many more edges (or as many as it
#: has read, if more) looking for one more match: a read through a filter that rarely matches
#: costs at most about twice what it did without the check, and short lists are told exactly.
FILTER_LOOKAHEAD = 64

#: A logical direction seen from the other end of the edge (a path search's ``dst`` side).
REVERSE = {"out": "in", "in": "out", "both": "both"}

Plan = list[tuple[str, tuple[str, ...]]]


def matches(filters: tuple[q.Filter, ...], edge: Edge) -> bool:
    props = edge.props
    return all(f.matches(props) for f in filters)


class Reads:
    """Read plans per node type (cached) and the capped adjacency reads built on them."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._plans: dict[tuple[str, tuple[str, ...], str], Plan] = {}

    def plan(self, node: str, edge_types: tuple[str, ...], direction: str) -> Plan:
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
    def stream(
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

    def take(
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
    ) -> tuple[list[tuple[str, Edge]], int, int]:
        """The newest ``limit`` matching (neighbour, edge) pairs of one edge type.

        Reads at most ``budget`` edges. Returns ``(pairs, edges read, how the read ended)``:
        :data:`WHOLE`, :data:`CUT`, :data:`UNSURE` or :data:`SPENT`.
        """
        if budget <= 0:
            return [], 0, SPENT  # nothing may be read: whatever the list holds is unread
        if not where and len(lists) == 1:
            # Fast path: one stored list, no filter — one bounded read, one edge past the cap.
            n = min(limit + 1, budget)
            page = r.edges_list(node, edge_type, lists[0], since, until, n)
            if lists[0] == "out":
                pairs = [(e.dst, e) for e in page]
            else:
                pairs = [(e.src, e) for e in page]
            if len(page) > limit:
                return pairs[:limit], len(page), CUT
            if len(page) == n and n <= limit:  # the budget, not the list, ended the read
                return pairs, len(page), SPENT
            return pairs, len(page), WHOLE
        out: list[tuple[str, Edge]] = []
        read = 0
        stop_at = -1  # once the cap is met: where the look-ahead for one more match ends
        for other, e in self.stream(r, node, edge_type, lists, since, until):
            if read >= budget:
                return out, read, SPENT
            if stop_at >= 0 and read >= stop_at:
                return out, read, UNSURE
            read += 1
            if where and not matches(where, e):
                continue
            if len(out) >= limit:
                return out, read, CUT
            out.append((other, e))
            if len(out) == limit:
                stop_at = read + max(read, FILTER_LOOKAHEAD)
        return out, read, WHOLE

    @staticmethod
    def expand(
        r: GraphReader,
        plans: list[tuple[str, Plan]],
        depth: int,
        hop: q.Hop,
        limits: q.Limits,
        since: int | None,
        until: int | None,
    ) -> dict[tuple[str, str], list[tuple[str, Edge]]]:
        """Read one hop's unfiltered single-list expansions for a chunk of the frontier in
        one round per (edge type, list), each one edge past its cap; the rest is left to
        :meth:`take`."""
        if hop.where:
            return {}
        groups: dict[tuple[str, str], list[str]] = {}
        for node, plan in plans:
            for et, lists in plan:
                if len(lists) == 1:
                    groups.setdefault((et, lists[0]), []).append(node)
        pages: dict[tuple[str, str], list[tuple[str, Edge]]] = {}
        for (et, physical), nodes in groups.items():
            limit = limits.edges_for(depth, et) + 1
            expanded = r.expand(nodes, et, physical, since, until, limit)
            for node, edges in zip(nodes, expanded, strict=True):
                if physical == "out":
                    pages[(node, et)] = [(e.dst, e) for e in edges]
                else:
                    pages[(node, et)] = [(e.src, e) for e in edges]
        return pages

    @staticmethod
    def link(
        r: GraphReader,
        node: str,
        edge_type: str,
        lists: tuple[str, ...],
        other: str,
        since: int | None,
    ) -> Edge | None:
        """The edge of ``edge_type`` that ``node`` follows (through ``lists``) to ``other``, with
        ``ts >= since``, or None: one key lookup per list, whatever the list's length."""
        for physical in lists:
            e = (
                r.edge(node, edge_type, other)
                if physical == "out"
                else r.edge(other, edge_type, node)
            )
            if e is not None and (since is None or e.ts >= since):
                return e
        return None

"""What queries return, and how an answer says that a limit cut it.

Every answer that a limit can make incomplete carries ``truncated`` and ``reason``:

* ``truncated: false`` is a guarantee: the answer is exactly what the same query returns with
  every limit lifted (same nodes, depths, edges, path length, counts).
* ``truncated: true`` means a limit stopped a read while edges were left that could belong in
  the answer; ``reason`` names the limit (as the caller sets it), where it cut (node, edge type,
  hop) and how to lift it. Without a ``where`` filter this is exact (the engine reads one edge
  past each cap to tell a list that fits from one that does not); with a filter, a read that
  meets its cap stops after a bounded look-ahead, so ``true`` may then only mean "edges were
  left unread".

Which limits cut, and which are filters (:mod:`hopcast.query.spec`): the per-node caps
(``limits.edges_per_hop``, ``limits.per_depth``, ``limits.per_edge_type``), the frontier cap
(``limits.max_frontier``), the work cap (``limits.max_work``), a neighbours query's ``limit``
and a journey's member bound cut. The lookback window (``limits.lookback``, ``since``,
``until``), ``where`` and a journey page's ``limit`` (it returns a cursor) are part of the
question, not cuts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hopcast.graph.store import Edge

#: Cuts an answer keeps in full (the rest are only counted): enough to show where limits bind,
#: and bounded however many capped nodes a traversal meets.
KEPT_CUTS = 16


class Cut(NamedTuple):
    """One place where a limit dropped edges from an answer (a tuple: cheap to build on the
    read path).

    Attributes:
        limit: the parameter that set the limit, named as the caller sets it
            (``limits.edges_per_hop``, ``limits.per_depth[2]``, ``limits.per_edge_type[browsed]``,
            ``limits.max_frontier``, ``limits.max_work``, ``limit``, ``max_members``).
        value: the limit's value.
        node: the node whose edges were dropped (None for a frontier or work cut).
        edge_type: the type of the dropped edges (None when not one type).
        hop: the hop (1-based) whose read was cut; in a path search counted from ``origin``.
        origin: the end a path search was expanding from when it cut (its ``src`` or ``dst``).
        unread: the cap was met with edges left that were not checked against ``where`` (they
            may or may not match); otherwise more matching edges were seen.
    """

    limit: str
    value: int
    node: str | None = None
    edge_type: str | None = None
    hop: int | None = None
    origin: str | None = None
    unread: bool = False

    def describe(self) -> str:
        """One sentence: which limit, where, and how to lift it."""
        at = "" if self.hop is None else f"hop {self.hop}"
        if at and self.origin:
            at += f" from {self.origin}"
        edges = (
            f"{self.node}'s {self.edge_type} edges" if self.edge_type else f"{self.node}'s edges"
        )
        left = "edges left unread (not checked against where)" if self.unread else "more matching"
        if self.limit == "limits.max_work":
            return (
                f"limits.max_work ({self.value}) reached at {at or 'the first read'}, reading "
                f"{edges}; raise limits.max_work to lift it"
            )
        if self.limit == "limits.max_frontier":
            return (
                f"limits.max_frontier ({self.value}) cut the frontier after {at}: the nodes "
                "found beyond it were not expanded; raise limits.max_frontier to lift it"
            )
        if self.limit == "max_members":
            return (
                f"max_members ({self.value}) reached: {self.node} has more members, whose "
                "interactions are not merged; raise max_members (up to its bound) or query "
                "the other members with neighbours"
            )
        if self.limit == "limit":
            return f"limit ({self.value}) reached with {left}: {edges}; raise limit to lift it"
        lift = self.limit
        if self.limit == "limits.edges_per_hop" and self.hop is not None:
            lift += f" (or limits.per_depth[{self.hop}], limits.per_edge_type[{self.edge_type}])"
        return f"{self.limit} ({self.value}) cut {edges} at {at}, {left}; raise {lift}"


class Cuts:
    """The cuts of one answer: the first :data:`KEPT_CUTS` in full, all of them counted."""

    __slots__ = ("count", "kept")

    def __init__(self) -> None:
        self.kept: list[Cut] = []
        self.count = 0

    def add(self, cut: Cut, *, first: bool = False) -> None:
        """Record ``cut``; ``first`` puts it ahead of the others (the limit that stopped the
        query, which the reason should name)."""
        self.count += 1
        if first:
            self.kept.insert(0, cut)
            del self.kept[KEPT_CUTS:]
        elif len(self.kept) < KEPT_CUTS:
            self.kept.append(cut)

    @property
    def full(self) -> bool:
        """Whether another cut would only be counted (so a caller can skip building it)."""
        return len(self.kept) >= KEPT_CUTS

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[Cut]:
        return iter(self.kept)

    def __len__(self) -> int:
        return self.count

    def reason(self) -> str | None:
        """The ``reason`` of an answer: the first cut, and how many others there were."""
        if not self.kept:
            return None
        text = self.kept[0].describe()
        if self.count > 1:
            text += f" (+{self.count - 1} more cut{'s' if self.count > 2 else ''})"
        return text

    def __repr__(self) -> str:
        return f"Cuts({self.count}: {self.kept!r})"


class _CutAnswer:
    """What every answer that a limit can cut says about it: ``truncated`` (a limit dropped
    something) and ``reason`` (which, from :attr:`cuts`)."""

    __slots__ = ()
    cuts: Cuts

    @property
    def truncated(self) -> bool:
        return bool(self.cuts)

    @property
    def reason(self) -> str | None:
        return self.cuts.reason()


@dataclass(slots=True)
class NeighboursResult(_CutAnswer):
    node: str
    edges: list[Edge]
    cuts: Cuts = field(default_factory=Cuts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "edges": [e.to_dict() | {"neighbour": e.other(self.node)} for e in self.edges],
            "truncated": self.truncated,
            "reason": self.reason,
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
class TraverseResult(_CutAnswer):
    nodes: list[Reached]
    work: int
    cuts: Cuts = field(default_factory=Cuts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [r.to_dict() for r in self.nodes],
            "work": self.work,
            "truncated": self.truncated,
            "reason": self.reason,
        }


@dataclass(slots=True)
class JourneyResult(_CutAnswer):
    node: str
    members: list[str]
    entries: list[Edge]
    cursor: str | None
    cuts: Cuts = field(default_factory=Cuts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "members": self.members,
            "entries": [e.to_dict() for e in self.entries],
            "cursor": self.cursor,
            "truncated": self.truncated,
            "reason": self.reason,
        }


@dataclass(slots=True)
class CountResult:
    """Counts read every edge in the window: a count is never truncated (the fields are there
    so that every query answer has the same two)."""

    node: str
    count: int
    by_type: dict[str, int] = field(default_factory=dict)

    truncated = False
    reason = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "count": self.count,
            "by_type": self.by_type,
            "truncated": False,
            "reason": None,
        }


@dataclass(slots=True)
class ExistsResult:
    exists: bool
    edge: Edge | None

    def to_dict(self) -> dict[str, Any]:
        return {"exists": self.exists, "edge": None if self.edge is None else self.edge.to_dict()}


@dataclass(slots=True)
class PathResult(_CutAnswer):
    found: bool
    nodes: list[str]
    edges: list[Edge]
    work: int
    cuts: Cuts = field(default_factory=Cuts)

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
            "reason": self.reason,
        }


__all__ = [
    "CountResult",
    "Cut",
    "Cuts",
    "ExistsResult",
    "JourneyResult",
    "NeighboursResult",
    "PathResult",
    "Reached",
    "TraverseResult",
]

"""Query specifications: pure values, validated against a schema before they run.

Every query kind is a frozen dataclass. :func:`check` turns a spec that cannot run (unknown edge
type, malformed id, a limit above its bound) into :class:`~hopcast.errors.InvalidQuery` with a
precise message, before any read happens.

Limits are layered (Netflix RDG's defaults): a lookback window (100 days) and a number of edges
read per node per hop (300), overridable per depth and per edge type; on top, every traversal has
a hard cap on total edges read (``max_work``) and on frontier size, so no query can exhaust
memory.

Cuts and filters. The lookback window, ``since``/``until`` and ``where`` are part of the
question: an edge outside them is not in the exact answer either. The per-node caps
(``edges_per_hop``, ``per_depth``, ``per_edge_type``), ``max_frontier``, ``max_work``, a
neighbours query's ``limit`` and a journey's ``max_members`` are cuts: an answer that any of them
made differ from the unlimited answer comes back with ``truncated=True`` and a ``reason`` naming
the limit, where it cut and the parameter that lifts it (:mod:`hopcast.query.results`).
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from hopcast.durations import DAY
from hopcast.errors import InvalidCursor, InvalidNodeId, InvalidQuery
from hopcast.graph.mutations import Props, split_node_id
from hopcast.graph.schema import Schema

#: Netflix RDG's default lookback: interactions older than 100 days are not traversed.
DEFAULT_LOOKBACK_US = 100 * DAY
#: Netflix RDG's default fan-out per hop; bounds a traversal through a celebrity node.
DEFAULT_EDGES_PER_HOP = 300
#: Largest result a single query may return (bounds response size and memory).
MAX_RESULT = 10_000
#: Default and maximum total edges one traversal may read.
DEFAULT_MAX_WORK = 100_000
MAX_WORK = 1_000_000
#: Default and maximum nodes in one BFS frontier.
DEFAULT_MAX_FRONTIER = 10_000
#: Deepest traversal / longest path accepted; beyond ~6 hops everything reaches everything.
MAX_DEPTH = 6
#: Most start nodes / node ids in one request.
MAX_IDS = 1_000
#: Most members (the account, its profiles and devices) one journey merges: the merge reads a
#: few entries of every member's lists per round, so this bounds a round like ``MAX_IDS`` does.
MAX_JOURNEY_MEMBERS = MAX_IDS


class Selection(enum.StrEnum):
    """Which edges a limited read keeps: the newest (``latest``) or any, in storage order."""

    LATEST = "latest"
    ANY = "any"


DIRECTIONS = ("out", "in", "both")
OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in")


@dataclass(frozen=True, slots=True)
class Filter:
    """A property predicate: ``props[prop] <op> value``. A missing property never matches."""

    prop: str
    op: str
    value: Any

    def matches(self, props: Props) -> bool:
        if self.prop not in props:
            return False
        v = props[self.prop]
        op = self.op
        try:
            if op == "eq":
                return bool(v == self.value)
            if op == "ne":
                return bool(v != self.value)
            if op == "in":
                return v in self.value
            if op == "gt":
                return bool(v > self.value)
            if op == "gte":
                return bool(v >= self.value)
            if op == "lt":
                return bool(v < self.value)
            if op == "lte":
                return bool(v <= self.value)
        except TypeError:
            return False
        return False


def parse_where(where: Mapping[str, Any] | None) -> tuple[Filter, ...]:
    """``{"device_type": "tv", "minutes": {"gte": 30}}`` → filters.

    Raises:
        InvalidQuery: for an unknown operator.
    """
    if not where:
        return ()
    if not isinstance(where, Mapping):
        raise InvalidQuery("'where' must be an object of property -> value or {op: value}")
    out: list[Filter] = []
    for prop, cond in where.items():
        if isinstance(cond, Mapping):
            for op, value in cond.items():
                if op not in OPS:
                    raise InvalidQuery(f"where.{prop}: unknown operator {op!r} (use {OPS})")
                if op == "in" and not isinstance(value, list | tuple):
                    raise InvalidQuery(f"where.{prop}: 'in' needs a list")
                out.append(Filter(prop, op, value))
        else:
            out.append(Filter(prop, "eq", cond))
    return tuple(out)


@dataclass(frozen=True)
class Limits:
    """Layered limits. The most specific applies: per edge type, else per depth, else default.

    A shortest-path search expands from both ends; there ``per_depth`` counts hops from the end
    being expanded (1 = the edges of ``src`` or of ``dst`` themselves).
    """

    lookback_us: int = DEFAULT_LOOKBACK_US
    edges_per_hop: int = DEFAULT_EDGES_PER_HOP
    per_depth: Mapping[int, int] = field(default_factory=dict)
    per_edge_type: Mapping[str, int] = field(default_factory=dict)
    max_frontier: int = DEFAULT_MAX_FRONTIER
    max_work: int = DEFAULT_MAX_WORK

    def edges_for(self, depth: int, edge_type: str) -> int:
        """Edges read per node for ``edge_type`` at ``depth`` (1-based)."""
        limit = self.per_edge_type.get(edge_type)
        if limit is None:
            limit = self.per_depth.get(depth, self.edges_per_hop)
        return limit

    def name_of(self, depth: int, edge_type: str) -> str:
        """The parameter that sets :meth:`edges_for` there, as a caller names it."""
        if edge_type in self.per_edge_type:
            return f"limits.per_edge_type[{edge_type}]"
        if depth in self.per_depth:
            return f"limits.per_depth[{depth}]"
        return "limits.edges_per_hop"


@dataclass(frozen=True)
class Neighbours:
    node: str
    edge_types: tuple[str, ...] = ()
    direction: str = "out"
    selection: Selection = Selection.LATEST
    since: int | None = None
    until: int | None = None
    limit: int = 20
    where: tuple[Filter, ...] = ()
    lookback_us: int = DEFAULT_LOOKBACK_US


@dataclass(frozen=True)
class Hop:
    edge_types: tuple[str, ...] = ()
    direction: str = "out"
    where: tuple[Filter, ...] = ()


@dataclass(frozen=True)
class Traverse:
    start: tuple[str, ...]
    hops: tuple[Hop, ...]
    selection: Selection = Selection.LATEST
    since: int | None = None
    until: int | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Journey:
    node: str
    since: int | None = None
    until: int | None = None
    limit: int = 100
    cursor: str | None = None
    edge_types: tuple[str, ...] = ()
    lookback_us: int = DEFAULT_LOOKBACK_US
    #: Members merged at most (the account first, then its member edges newest first).
    max_members: int = MAX_JOURNEY_MEMBERS


@dataclass(frozen=True)
class Count:
    node: str
    edge_types: tuple[str, ...] = ()
    direction: str = "out"
    since: int | None = None
    until: int | None = None
    lookback_us: int = DEFAULT_LOOKBACK_US


@dataclass(frozen=True)
class Exists:
    src: str
    edge_type: str
    dst: str


@dataclass(frozen=True)
class ShortestPath:
    src: str
    dst: str
    max_hops: int = 3
    edge_types: tuple[str, ...] = ()
    direction: str = "both"
    since: int | None = None
    limits: Limits = field(default_factory=Limits)


QuerySpec = Neighbours | Traverse | Journey | Count | Exists | ShortestPath


# -- validation --------------------------------------------------------------------------------


def check_node(schema: Schema, node_id: str, what: str = "node") -> str:
    try:
        node_type = split_node_id(node_id)[0]
    except InvalidNodeId as exc:
        raise InvalidQuery(f"{what}: {exc}") from None
    if node_type not in schema.nodes:
        raise InvalidQuery(
            f"{what}: unknown node type {node_type!r} (known: {', '.join(sorted(schema.nodes))})"
        )
    return node_type


def check_edge_types(schema: Schema, edge_types: tuple[str, ...]) -> None:
    for e in edge_types:
        if e not in schema.edges:
            raise InvalidQuery(
                f"unknown edge type {e!r} (known: {', '.join(sorted(schema.edges))})"
            )


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InvalidQuery(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidQuery(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _check_limits(limits: Limits) -> None:
    _check_range("limits.edges_per_hop", limits.edges_per_hop, 1, MAX_RESULT)
    _check_range("limits.max_work", limits.max_work, 1, MAX_WORK)
    _check_range("limits.max_frontier", limits.max_frontier, 1, MAX_RESULT * 10)
    _check_range("limits.lookback_us", limits.lookback_us, 1, 1 << 62)
    for depth, n in limits.per_depth.items():
        _check_range(f"limits.per_depth[{depth}]", n, 1, MAX_RESULT)
    for et, n in limits.per_edge_type.items():
        _check_range(f"limits.per_edge_type[{et}]", n, 1, MAX_RESULT)


def check(schema: Schema, spec: QuerySpec) -> None:
    """Raise :class:`InvalidQuery` if ``spec`` cannot run against ``schema``."""
    if isinstance(spec, Neighbours):
        check_node(schema, spec.node)
        check_edge_types(schema, spec.edge_types)
        _check_direction(spec.direction)
        _check_range("limit", spec.limit, 1, MAX_RESULT)
    elif isinstance(spec, Traverse):
        if not spec.start or len(spec.start) > MAX_IDS:
            raise InvalidQuery(f"start needs 1 to {MAX_IDS} node ids")
        for s in spec.start:
            check_node(schema, s, "start")
        if not 1 <= len(spec.hops) <= MAX_DEPTH:
            raise InvalidQuery(f"a traversal needs 1 to {MAX_DEPTH} hops, got {len(spec.hops)}")
        for hop in spec.hops:
            check_edge_types(schema, hop.edge_types)
            _check_direction(hop.direction)
        _check_limits(spec.limits)
    elif isinstance(spec, Journey):
        node_type = check_node(schema, spec.node)
        if schema.journey is None:
            raise InvalidQuery("this schema defines no journey (add a 'journey' section)")
        if node_type != schema.journey.root:
            raise InvalidQuery(f"a journey starts at a {schema.journey.root!r} node")
        check_edge_types(schema, spec.edge_types)
        _check_range("limit", spec.limit, 1, MAX_RESULT)
        _check_range("max_members", spec.max_members, 1, MAX_JOURNEY_MEMBERS)
        if spec.cursor is not None:
            decode_cursor(spec.cursor)
    elif isinstance(spec, Count):
        check_node(schema, spec.node)
        check_edge_types(schema, spec.edge_types)
        _check_direction(spec.direction)
    elif isinstance(spec, Exists):
        check_node(schema, spec.src, "src")
        check_node(schema, spec.dst, "dst")
        check_edge_types(schema, (spec.edge_type,))
    elif isinstance(spec, ShortestPath):
        check_node(schema, spec.src, "src")
        check_node(schema, spec.dst, "dst")
        check_edge_types(schema, spec.edge_types)
        _check_direction(spec.direction)
        _check_range("max_hops", spec.max_hops, 1, MAX_DEPTH)
        _check_limits(spec.limits)
    else:  # pragma: no cover - exhaustive
        raise InvalidQuery(f"unknown query {type(spec).__name__}")


# -- journey cursors ---------------------------------------------------------------------------

_cursor_encoder = msgspec.msgpack.Encoder()
_cursor_decoder = msgspec.msgpack.Decoder(tuple[int, str, str, str])


def encode_cursor(ts: int, src: str, edge_type: str, dst: str) -> str:
    """An opaque, URL-safe cursor naming the last journey entry returned."""
    raw = _cursor_encoder.encode((ts, src, edge_type, dst))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str, str, str]:
    """Raises :class:`InvalidCursor` for anything :func:`encode_cursor` did not produce."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}") from exc

"""Standing-query patterns: the YAML language, checked against the graph schema.

A pattern file sits beside the schema and the mappings; each pattern is a small connected shape
of typed nodes and edges, with property predicates, time constraints between its edges, and
optionally an aggregate over them::

    version: 1
    patterns:
      live_join_from_title_page:
        description: browsed a live event's title page, then joined it within 5 minutes
        nodes: {p: profile, e: live_event}     # or e: {type: live_event, where: {sport: x}}
        edges:
          b: {type: browsed, from: p, to: e, where: {page: title}}
          j: {type: watched_live, from: p, to: e}
        time:
          - {first: b, then: j, within: 5m}          # b.ts <= j.ts <= b.ts + 5m
        cancel: true                                 # record a cancellation when it stops holding
      account_sharing_suspected:
        nodes: {a: account, d: device}
        edges: {l: {type: logged_in_from, from: a, to: d}}
        count: {distinct: l.ip_country, per: [a], over: l, within: 1h, at_least: 4}

Rules (each refusal names the file, the path inside it and its line, like a mapping's):

* names: a pattern, a node variable or an edge alias is ``[a-z][a-z0-9_]{0,63}``; variables
  and aliases share one namespace per pattern;
* ``nodes``: every variable has a node type of the schema; ``where`` names properties of that
  type, each equal to a value (a scalar, or a list: any of them) of the property's type;
* ``edges``: 1 to :data:`MAX_EDGES` aliases, each of an edge type of the schema between the
  types of its ``from`` and ``to`` variables (a ``two_way`` mapping also reads reversed);
  ``where`` as for nodes, on the edge's properties; every variable is used by an edge and the
  edges connect them all (one shape, not two);
* ``time``: ``{first: A, then: B, within: D}`` holds when ``A.ts <= B.ts <= A.ts + D`` (no
  ``within``: order only); ``{between: [A, B], within: D}`` when ``|A.ts - B.ts| <= D``; ``D``
  is a positive duration no longer than either edge type's retention (an edge older than that
  is gone, so the constraint could never hold);
* ``count``: ``distinct`` is a variable or ``alias.property``; ``per`` lists the variables a
  match is counted for (they identify it); ``over`` is the edge alias whose time the window
  ``within`` reads (default: the only edge); ``at_least`` is 2 to :data:`MAX_AT_LEAST`. Every
  variable in ``per`` is a node variable, and ``distinct`` is not in ``per``.

The language is pure data (:class:`Pattern`); evaluation lives elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hopcast.durations import parse_duration
from hopcast.errors import SchemaError
from hopcast.graph.schema import Schema
from hopcast.stream.mapping import _collect_lines

#: Most edges in one pattern: matching is a join per edge, anchored on the edge that arrived;
#: four keeps a match's reads to a few adjacency lists per batch (the issue's "up to ~4").
MAX_EDGES = 4
#: Most patterns in one file: each is evaluated for every batch that touches its edge types.
MAX_PATTERNS = 100
#: Largest ``at_least`` of a count: a threshold over distinct values of a node's edges; beyond a
#: thousand the window would hold more than a node's adjacency list is read for.
MAX_AT_LEAST = 1_000
#: Largest file read (bytes): a hundred patterns fit in a few tens of KiB.
MAX_FILE_BYTES = 1 << 20
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class PatternError(SchemaError):
    """A pattern file is malformed: the file, the path inside it with its line, the problem."""


@dataclass(frozen=True, slots=True)
class NodeVar:
    """A node variable: its type and the properties it must have (``where``)."""

    name: str
    type: str
    where: Mapping[str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class EdgeVar:
    """An edge alias: its type, the variables at its ends (as declared: ``src`` is ``from``),
    and the properties it must have."""

    name: str
    type: str
    src: str
    dst: str
    where: Mapping[str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class TimeConstraint:
    """``first``/``then`` ordered (``ordered``), or a pair in either order; ``within_us`` None:
    order only."""

    first: str
    then: str
    within_us: int | None
    ordered: bool


@dataclass(frozen=True, slots=True)
class Count:
    """A count of distinct ``distinct`` values (a variable, or ``(alias, property)``) per the
    ``per`` variables, among the bindings whose ``over`` edge lies in a window of ``within_us``."""

    distinct: str | tuple[str, str]
    per: tuple[str, ...]
    over: str
    within_us: int
    at_least: int


@dataclass(frozen=True, slots=True)
class Pattern:
    name: str
    description: str
    nodes: Mapping[str, NodeVar]
    edges: Mapping[str, EdgeVar]
    time: tuple[TimeConstraint, ...]
    count: Count | None
    cancel: bool
    source: str

    @property
    def edge_types(self) -> frozenset[str]:
        """The edge types a batch must touch for this pattern to change."""
        return frozenset(e.type for e in self.edges.values())


def load(path: str | Path, schema: Schema) -> dict[str, Pattern]:
    """The patterns of a file, by name.

    Raises:
        PatternError: the file cannot be read, is not YAML, or breaks a rule.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PatternError(
                str(p), "", f"{size} bytes; a pattern file has at most {MAX_FILE_BYTES}"
            )
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PatternError(str(p), "", f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PatternError(str(p), "", f"not UTF-8: {exc}") from exc
    return from_yaml(text, schema, source=str(p))


def from_yaml(text: str, schema: Schema, source: str = "<yaml>") -> dict[str, Pattern]:
    """The patterns of a YAML document (see :func:`load`)."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PatternError(source, "", f"not valid YAML: {exc}") from exc
    lines: dict[str, int] = {}
    if root is not None:
        _collect_lines(root, "", lines)  # a mapping file's: a key's own line
    return _Builder(source, lines, schema).build(data)


class _Builder:
    def __init__(self, source: str, lines: dict[str, int], schema: Schema) -> None:
        self.source = source
        self.lines = lines
        self.schema = schema

    def fail(self, path: str, problem: str) -> PatternError:
        # the line of the path, else of its nearest ancestor (a shorthand like `p: profile`
        # stands for `p: {type: profile}`, whose `type` has no line of its own)
        here = path
        while here and here not in self.lines:
            here = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", here)
        line = self.lines.get(here)
        return PatternError(
            self.source, f"{path} (line {line})" if line and path else path, problem
        )

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {type(value).__name__}")
        return value

    def only(self, doc: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        known = set(allowed)
        for key in doc:
            if key not in known:
                raise self.fail(
                    f"{path}.{key}", f"unknown key {key!r} (known: {', '.join(sorted(known))})"
                )

    def name(self, value: Any, path: str, what: str) -> str:
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise self.fail(path, f"a {what} is [a-z][a-z0-9_]{{0,63}}, got {value!r}")
        return value

    def duration(self, value: Any, path: str) -> int:
        try:
            us = parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None
        if us <= 0:
            raise self.fail(path, "must be a positive duration")
        return us

    def build(self, data: Any) -> dict[str, Pattern]:
        doc = self.mapping(data, "")
        self.only(doc, "", ("version", "patterns"))
        if doc.get("version") != 1:
            raise self.fail("version", f"must be 1, got {doc.get('version')!r}")
        patterns = self.mapping(doc.get("patterns"), "patterns")
        if not 1 <= len(patterns) <= MAX_PATTERNS:
            raise self.fail("patterns", f"1 to {MAX_PATTERNS} patterns, got {len(patterns)}")
        out: dict[str, Pattern] = {}
        for name, body in patterns.items():
            path = f"patterns.{name}"
            out[self.name(name, path, "pattern name")] = self.pattern(name, body, path)
        return out

    def pattern(self, name: str, body: Any, path: str) -> Pattern:
        doc = self.mapping(body, path)
        self.only(doc, path, ("description", "nodes", "edges", "time", "count", "cancel"))
        description = doc.get("description", "")
        if not isinstance(description, str) or len(description) > 512:
            raise self.fail(f"{path}.description", "a text of at most 512 characters")
        nodes = self.nodes(doc.get("nodes"), f"{path}.nodes")
        edges = self.edges(doc.get("edges"), f"{path}.edges", nodes)
        self.connected(nodes, edges, path)
        time = tuple(
            self.time(item, f"{path}.time[{i}]", edges)
            for i, item in enumerate(self.sequence(doc.get("time", []), f"{path}.time"))
        )
        count = None
        if "count" in doc:
            count = self.count(doc["count"], f"{path}.count", nodes, edges)
        cancel = doc.get("cancel", False)
        if not isinstance(cancel, bool):
            raise self.fail(f"{path}.cancel", f"true or false, got {cancel!r}")
        return Pattern(name, description, nodes, edges, time, count, cancel, self.source)

    def sequence(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {type(value).__name__}")
        return value

    def nodes(self, value: Any, path: str) -> dict[str, NodeVar]:
        doc = self.mapping(value, path)
        if not doc:
            raise self.fail(path, "at least one node variable")
        out = {}
        for var, spec in doc.items():
            here = f"{path}.{var}"
            self.name(var, here, "node variable")
            if isinstance(spec, str):
                spec = {"type": spec}
            spec = self.mapping(spec, here)
            self.only(spec, here, ("type", "where"))
            kind = spec.get("type")
            if not isinstance(kind, str) or kind not in self.schema.nodes:
                known = ", ".join(sorted(self.schema.nodes))
                raise self.fail(f"{here}.type", f"unknown node type {kind!r} (known: {known})")
            props = self.schema.nodes[kind].props.props
            where = self.where(spec.get("where", {}), f"{here}.where", props, f"node type {kind!r}")
            out[var] = NodeVar(var, kind, where)
        return out

    def where(
        self, value: Any, path: str, props: Mapping[str, Any], owner: str
    ) -> dict[str, tuple[Any, ...]]:
        doc = self.mapping(value, path)
        out = {}
        for prop, wanted in doc.items():
            here = f"{path}.{prop}"
            spec = props.get(prop)
            if spec is None:
                known = ", ".join(sorted(props)) or "none"
                raise self.fail(here, f"{owner} has no property {prop!r} (known: {known})")
            values = tuple(wanted) if isinstance(wanted, list) else (wanted,)
            if not values:
                raise self.fail(here, "an empty list matches nothing")
            for v in values:
                if v is None or isinstance(v, (dict, list)) or spec.check(v) is not None:
                    raise self.fail(here, f"must be a {spec.type} (or a list of them), got {v!r}")
            out[prop] = values
        return out

    def edges(self, value: Any, path: str, nodes: Mapping[str, NodeVar]) -> dict[str, EdgeVar]:
        doc = self.mapping(value, path)
        if not 1 <= len(doc) <= MAX_EDGES:
            raise self.fail(path, f"1 to {MAX_EDGES} edges, got {len(doc)}")
        out = {}
        for alias, spec in doc.items():
            here = f"{path}.{alias}"
            self.name(alias, here, "edge alias")
            if alias in nodes:
                raise self.fail(here, f"{alias!r} is already a node variable")
            spec = self.mapping(spec, here)
            self.only(spec, here, ("type", "from", "to", "where"))
            kind = spec.get("type")
            if not isinstance(kind, str) or kind not in self.schema.edges:
                known = ", ".join(sorted(self.schema.edges))
                raise self.fail(f"{here}.type", f"unknown edge type {kind!r} (known: {known})")
            ends: list[str] = []
            for end in ("from", "to"):
                var = spec.get(end)
                if not isinstance(var, str) or var not in nodes:
                    raise self.fail(
                        f"{here}.{end}", f"{var!r} is not a node variable of this pattern"
                    )
                ends.append(var)
            src, dst = ends
            if src == dst:
                raise self.fail(here, "an edge joins two different node variables")
            edge_type = self.schema.edges[kind]
            if edge_type.mapping(nodes[src].type, nodes[dst].type) is None:
                allowed = ", ".join(f"{m.src_type} → {m.dst_type}" for m in edge_type.mappings)
                raise self.fail(
                    here,
                    f"{kind!r} does not join {nodes[src].type} → {nodes[dst].type} "
                    f"(the schema's: {allowed})",
                )
            where = self.where(
                spec.get("where", {}), f"{here}.where", edge_type.props.props, f"edge type {kind!r}"
            )
            out[alias] = EdgeVar(alias, kind, src, dst, where)
        return out

    def connected(
        self, nodes: Mapping[str, NodeVar], edges: Mapping[str, EdgeVar], path: str
    ) -> None:
        used = {v for e in edges.values() for v in (e.src, e.dst)}
        for var in nodes:
            if var not in used:
                raise self.fail(f"{path}.nodes.{var}", f"{var!r} is on no edge of the pattern")
        seen = {next(iter(nodes))}
        grew = True
        while grew:
            grew = False
            for e in edges.values():
                if (e.src in seen) != (e.dst in seen):
                    seen |= {e.src, e.dst}
                    grew = True
        if seen != set(nodes):
            apart = ", ".join(sorted(set(nodes) - seen))
            raise self.fail(f"{path}.edges", f"the edges do not connect {apart} to the rest")

    def retention_bound(self, aliases: Iterable[str], edges: Mapping[str, EdgeVar]) -> int | None:
        kept = [self.schema.edges[edges[a].type].retention_us for a in aliases]
        finite = [k for k in kept if k is not None]
        return min(finite) if finite else None

    def time(self, value: Any, path: str, edges: Mapping[str, EdgeVar]) -> TimeConstraint:
        doc = self.mapping(value, path)
        self.only(doc, path, ("first", "then", "between", "within"))
        if "between" in doc:
            if "first" in doc or "then" in doc:
                raise self.fail(path, "either first/then (ordered) or between (either order)")
            pair = self.sequence(doc["between"], f"{path}.between")
            if len(pair) != 2:
                raise self.fail(f"{path}.between", "two edge aliases")
            first, then, ordered = pair[0], pair[1], False
        else:
            first, then, ordered = doc.get("first"), doc.get("then"), True
        for alias, key in ((first, "first"), (then, "then")):
            if alias not in edges:
                where = f"{path}.between" if not ordered else f"{path}.{key}"
                raise self.fail(where, f"{alias!r} is not an edge alias of this pattern")
        if first == then:
            raise self.fail(path, "a time constraint relates two different edges")
        within = None
        if "within" in doc:
            within = self.duration(doc["within"], f"{path}.within")
            bound = self.retention_bound((first, then), edges)
            if bound is not None and within > bound:
                raise self.fail(
                    f"{path}.within",
                    f"longer than the edges' retention ({bound // 1_000_000} s): it could never "
                    "hold",
                )
        elif not ordered:
            raise self.fail(path, "between needs a within")
        return TimeConstraint(first, then, within, ordered)

    def count(
        self,
        value: Any,
        path: str,
        nodes: Mapping[str, NodeVar],
        edges: Mapping[str, EdgeVar],
    ) -> Count:
        doc = self.mapping(value, path)
        self.only(doc, path, ("distinct", "per", "over", "within", "at_least"))
        raw = doc.get("distinct")
        distinct: str | tuple[str, str]
        if isinstance(raw, str) and raw in nodes:
            distinct = raw
        elif isinstance(raw, str) and raw.count(".") == 1:
            alias, prop = raw.split(".")
            if alias not in edges:
                raise self.fail(f"{path}.distinct", f"{alias!r} is not an edge alias")
            props = self.schema.edges[edges[alias].type].props.props
            if prop not in props:
                raise self.fail(
                    f"{path}.distinct", f"edge type {edges[alias].type!r} has no property {prop!r}"
                )
            distinct = (alias, prop)
        else:
            raise self.fail(f"{path}.distinct", f"a node variable or alias.property, got {raw!r}")
        per_raw = doc.get("per")
        per = tuple(self.sequence(per_raw, f"{path}.per"))
        if not per:
            raise self.fail(f"{path}.per", "at least one node variable: what a match is for")
        for i, var in enumerate(per):
            if var not in nodes:
                raise self.fail(f"{path}.per[{i}]", f"{var!r} is not a node variable")
        if len(set(per)) != len(per):
            raise self.fail(f"{path}.per", "a variable is listed twice")
        if distinct in per:
            raise self.fail(f"{path}.distinct", "counted per itself: always 1")
        over = doc.get("over")
        if over is None:
            if len(edges) != 1:
                raise self.fail(path, "over: which edge's time the window reads")
            over = next(iter(edges))
        if over not in edges:
            raise self.fail(f"{path}.over", f"{over!r} is not an edge alias")
        within = self.duration(doc.get("within"), f"{path}.within")
        bound = self.retention_bound((over,), edges)
        if bound is not None and within > bound:
            raise self.fail(f"{path}.within", "longer than the edge's retention: never full")
        at_least = doc.get("at_least")
        if (
            not isinstance(at_least, int)
            or isinstance(at_least, bool)
            or not 2 <= at_least <= MAX_AT_LEAST
        ):
            raise self.fail(f"{path}.at_least", f"an integer from 2 to {MAX_AT_LEAST}")
        return Count(distinct, per, over, within, at_least)


__all__ = [
    "MAX_EDGES",
    "Count",
    "EdgeVar",
    "NodeVar",
    "Pattern",
    "PatternError",
    "TimeConstraint",
    "from_yaml",
    "load",
]

"""The typed property-graph schema: node types, edge types, edge mappings, retention.

A schema is loaded from YAML (format documented in README.md, "Schema format")::

    version: 1
    defaults: {retention: 100d}
    nodes:
      account:
        retention: 400d
        props: {country: str, plan: {type: str, required: false}}
    edges:
      logged_in_from:
        props: {ip_country: str}
        mappings:
          - {from: account, to: device, two_way: true}
    journey:
      root: account
      members: [has_profile, logged_in_from]
      interactions: [started_watching, browsed]

Rules:

* Property types: ``str``, ``int``, ``float`` (accepts ints), ``bool``, ``list``, ``map``, ``any``.
  Properties are optional unless ``required: true``. Undeclared properties are rejected unless the
  type says ``additional_props: true``.
* An edge type has one or more mappings ``(from, to, two_way)``. A write whose endpoint types match
  no mapping is rejected. A one-way mapping may not share a node type with a two-way mapping of
  the same edge type (their edges would share one adjacency list). A **two-way** mapping is
  traversable from both ends with ``direction="out"``; it is stored once, so ``(a)-[e]-(b)`` and
  ``(b)-[e]-(a)`` are the same edge (for ``from == to`` the smaller id is stored as the source).
* Retention applies to the last-seen generation time of a node or edge; expired data is invisible
  to reads and is removed by the sweep.

Errors name the source file, the path inside it and the line, e.g.
``schema.yaml: edges.plays.mappings[0].to (line 31): unknown node type 'gmae'``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hopcast.durations import DAY, parse_duration
from hopcast.errors import InvalidNodeId, OutOfBounds, SchemaError, SchemaViolation
from hopcast.graph.keys import MAX_TS
from hopcast.graph.limits import (
    MAX_INT,
    MAX_MUTATION_ID_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_PROPS_BYTES,
    MAX_SEQ,
    MIN_INT,
    PROPS_BOUND_PER_ENTRY,
    id_problem,
    props_problem,
    ts_problem,
    value_problem,
)
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    PropValue,
    split_node_id,
)

#: Netflix RDG keeps 100 days of member interactions; the same is our default retention.
DEFAULT_RETENTION_US = 100 * DAY

PROP_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "list": (list,),
    "map": (dict,),
    "any": (object,),
}

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclass(frozen=True, slots=True)
class PropSpec:
    name: str
    type: str
    required: bool = False

    def check(self, value: PropValue) -> str | None:
        """Return why ``value`` does not fit, or None."""
        if value is None:
            return f"property {self.name!r} is required" if self.required else None
        allowed = PROP_TYPES[self.type]
        if isinstance(value, bool) and self.type in ("int", "float"):
            return f"property {self.name!r} must be {self.type}, got bool"
        if not isinstance(value, allowed):
            return f"property {self.name!r} must be {self.type}, got {type(value).__name__}"
        return None


@dataclass(frozen=True, slots=True)
class _PropsSpec:
    props: Mapping[str, PropSpec]
    additional: bool
    # property name -> the exact value type last seen to fit: the validation fast path is one
    # dict lookup per property instead of isinstance checks (exact types, so bool never passes
    # for int). Only declared properties enter it, so it stays as small as the schema.
    _fits: dict[str, type] = field(default_factory=dict, compare=False, repr=False)
    #: Whether any property is required (read on every write).
    has_required: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "has_required", any(p.required for p in self.props.values()))

    @property
    def required(self) -> bool:
        return any(p.required for p in self.props.values())

    def check(self, props: Mapping[str, PropValue], partial: bool) -> str | None:
        specs = self.props
        fits = self._fits
        for name, value in props.items():
            if fits.get(name) is type(value):
                continue
            spec = specs.get(name)
            if spec is None:
                if not self.additional:
                    return (
                        f"undeclared property {name!r} (declared: {sorted(self.props) or 'none'})"
                    )
                continue
            problem = spec.check(value)
            if problem:
                return problem
            if value is not None and spec.type != "any":
                fits[name] = type(value)
        if not partial:
            for spec in self.props.values():
                if spec.required and spec.name not in props:
                    return f"property {spec.name!r} is required"
        return None


@dataclass(frozen=True, slots=True)
class NodeType:
    name: str
    retention_us: int | None
    props: _PropsSpec


@dataclass(frozen=True, slots=True)
class EdgeMapping:
    src_type: str
    dst_type: str
    two_way: bool = False


@dataclass(frozen=True, slots=True)
class EdgeType:
    name: str
    retention_us: int | None
    props: _PropsSpec
    mappings: tuple[EdgeMapping, ...]

    def mapping(self, src_type: str, dst_type: str) -> tuple[EdgeMapping, bool] | None:
        """Return ``(mapping, swapped)`` for an edge between these types, or None."""
        for m in self.mappings:
            if m.src_type == src_type and m.dst_type == dst_type:
                return m, False
        for m in self.mappings:
            if m.two_way and m.src_type == dst_type and m.dst_type == src_type:
                return m, True
        return None


@dataclass(frozen=True, slots=True)
class Journey:
    """How an account's journey is assembled: root type, member edges, interaction edges."""

    root: str
    members: tuple[str, ...]
    interactions: tuple[str, ...]


@dataclass(frozen=True)
class Schema:
    """A validated schema. Build it with :meth:`load`, :meth:`from_yaml` or :meth:`from_dict`."""

    nodes: Mapping[str, NodeType]
    edges: Mapping[str, EdgeType]
    journey: Journey | None = None
    source: str = "<schema>"
    _lists: dict[tuple[str, str, str], tuple[str, ...]] = field(default_factory=dict, repr=False)
    _plans: dict[tuple[str, str, str], tuple[EdgeType, bool, bool]] = field(
        default_factory=dict, repr=False
    )

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Load a schema from a YAML file.

        Raises:
            SchemaError: naming the file, the path inside it, the line and the problem.
        """
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise SchemaError(str(p), "", f"cannot read: {exc.strerror or exc}") from exc
        return cls.from_yaml(text, source=str(p))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<yaml>") -> Schema:
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            raise SchemaError(source, "", f"not valid YAML: {exc}") from exc
        lines: dict[str, int] = {}
        if root is not None:
            _collect_lines(root, "", lines)
        data = yaml.safe_load(text)
        return _Builder(source, lines).build(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Schema:
        return _Builder(source, {}).build(data)

    @classmethod
    def demo(cls) -> Schema:
        """The demo company's schema, shipped with the package."""
        return cls.load(Path(__file__).with_name("demo_schema.yaml"))

    # -- lookups ---------------------------------------------------------------------------

    def node_type(self, name: str) -> NodeType:
        try:
            return self.nodes[name]
        except KeyError:
            raise SchemaViolation(
                f"unknown node type {name!r} (known: {', '.join(sorted(self.nodes))})"
            ) from None

    def edge_type(self, name: str) -> EdgeType:
        try:
            return self.edges[name]
        except KeyError:
            raise SchemaViolation(
                f"unknown edge type {name!r} (known: {', '.join(sorted(self.edges))})"
            ) from None

    def physical_lists(self, node_type: str, edge_type: str, direction: str) -> tuple[str, ...]:
        """Which stored adjacency lists (``"out"``/``"in"``) a logical direction reads.

        ``direction="out"`` reads the out-list if ``node_type`` is a source of ``edge_type``, and
        also the in-list if it is the target end of a two-way mapping. ``"in"`` is the mirror
        image; ``"both"`` reads both lists.
        """
        key = (node_type, edge_type, direction)
        cached = self._lists.get(key)
        if cached is not None:
            return cached
        et = self.edges[edge_type]
        out = in_ = False
        for m in et.mappings:
            if direction in ("out", "both"):
                out |= m.src_type == node_type
                in_ |= m.two_way and m.dst_type == node_type
            if direction in ("in", "both"):
                in_ |= m.dst_type == node_type
                out |= m.two_way and m.src_type == node_type
        lists = tuple(name for name, on in (("out", out), ("in", in_)) if on)
        self._lists[key] = lists
        return lists

    def retention_of(self, mutation: Mutation) -> int | None:
        """The retention (µs, None = forever) of the type a valid mutation writes."""
        if isinstance(mutation, (NodeUpsert, NodeDelete)):
            return self.nodes[_type_of(mutation.node)].retention_us
        return self.edges[mutation.type].retention_us

    def edge_types_touching(self, node_type: str) -> tuple[str, ...]:
        """Edge types with a mapping that starts or ends at ``node_type``."""
        return tuple(
            name
            for name, et in self.edges.items()
            if any(node_type in (m.src_type, m.dst_type) for m in et.mappings)
        )

    # -- validation ------------------------------------------------------------------------

    def validate(self, mutation: Mutation) -> Mutation:
        """Check a mutation against the schema and return its canonical form.

        The canonical form of an edge write on a two-way mapping stored the other way round has
        ``src`` and ``dst`` swapped.

        Raises:
            SchemaViolation: with the reason.
        """
        if type(mutation) is EdgeUpsert:
            # Fast path: endpoint types already resolved for this edge type, short ASCII ids.
            src, dst = mutation.src, mutation.dst
            st, _, skey = src.partition(":")
            dt, _, dkey = dst.partition(":")
            plan = self._plans.get((mutation.type, st, dt)) if skey and dkey else None
            if (
                plan is not None
                and len(src) <= MAX_NODE_ID_BYTES
                and len(dst) <= MAX_NODE_ID_BYTES
                and src.isascii()
                and dst.isascii()
            ):
                _check_write(mutation)
                et, two_way_same, swapped = plan
                if mutation.props:
                    _check_props(
                        et.props, mutation.props, False, f"{src} -[{mutation.type}]-> {dst}"
                    )
                elif et.props.required:
                    return self._validate_slow(mutation)
                if swapped or (two_way_same and src > dst):
                    return EdgeUpsert(
                        dst, mutation.type, src, mutation.ts, mutation.id, mutation.props,
                        mutation.seq,
                    )  # fmt: skip
                return mutation
        return self._validate_slow(mutation)

    def _validate_slow(self, mutation: Mutation) -> Mutation:
        if not isinstance(mutation, (NodeUpsert, NodeDelete, EdgeUpsert, EdgeDelete)):
            raise SchemaViolation(f"not a mutation: {type(mutation).__name__}")
        _check_write(mutation)
        if isinstance(mutation, (NodeUpsert, NodeDelete)):
            _check_id(mutation.node)
            nt = self.node_type(_type_of(mutation.node))
            if isinstance(mutation, NodeUpsert):
                _check_props(nt.props, mutation.props, True, _clip(mutation.node))
            return mutation
        if isinstance(mutation, (EdgeUpsert, EdgeDelete)):
            if type(mutation.type) is not str:
                raise SchemaViolation(f"edge type must be a string, got {mutation.type!r}")
            _check_id(mutation.src)
            _check_id(mutation.dst)
            et = self.edge_type(mutation.type)
            st, dt = _type_of(mutation.src), _type_of(mutation.dst)
            self.node_type(st)
            self.node_type(dt)
            found = et.mapping(st, dt)
            if found is None:
                allowed = ", ".join(
                    f"{m.src_type}->{m.dst_type}{' (two-way)' if m.two_way else ''}"
                    for m in et.mappings
                )
                raise SchemaViolation(
                    f"edge {mutation.type!r} does not connect {st} -> {dt} (allowed: {allowed})"
                )
            mapping, swapped = found
            two_way_same = mapping.two_way and mapping.src_type == mapping.dst_type
            self._plans[(mutation.type, st, dt)] = (et, two_way_same, swapped)
            if (
                not swapped
                and mapping.two_way
                and mapping.src_type == mapping.dst_type
                and mutation.src > mutation.dst
            ):
                swapped = True
            if isinstance(mutation, EdgeUpsert):
                _check_props(
                    et.props,
                    mutation.props,
                    False,
                    f"{mutation.src} -[{mutation.type}]-> {mutation.dst}",
                )
                if swapped:
                    return EdgeUpsert(
                        mutation.dst,
                        mutation.type,
                        mutation.src,
                        mutation.ts,
                        mutation.id,
                        mutation.props,
                        mutation.seq,
                    )
            elif swapped:
                return EdgeDelete(
                    mutation.dst,
                    mutation.type,
                    mutation.src,
                    mutation.ts,
                    mutation.id,
                    mutation.seq,
                )
            return mutation
        raise AssertionError("unreachable")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (served by the HTTP API at ``/v1/schema``)."""

        def props(ps: _PropsSpec) -> dict[str, Any]:
            return {n: {"type": p.type, "required": p.required} for n, p in ps.props.items()} | (
                {"*": {"type": "any"}} if ps.additional else {}
            )

        return {
            "nodes": {
                n: {"retention_us": t.retention_us, "props": props(t.props)}
                for n, t in self.nodes.items()
            },
            "edges": {
                n: {
                    "retention_us": t.retention_us,
                    "props": props(t.props),
                    "mappings": [
                        {"from": m.src_type, "to": m.dst_type, "two_way": m.two_way}
                        for m in t.mappings
                    ],
                }
                for n, t in self.edges.items()
            },
            "journey": None
            if self.journey is None
            else {
                "root": self.journey.root,
                "members": list(self.journey.members),
                "interactions": list(self.journey.interactions),
            },
        }


def _check_props(spec: _PropsSpec, props: Mapping[str, Any], partial: bool, where: str) -> None:
    """Raise SchemaViolation if ``props`` do not fit the type, OutOfBounds if they break a
    bound of :mod:`hopcast.graph.limits`.

    One loop for both on the ingest hot path: a declared property whose value type was seen to
    fit before costs a dict lookup and, for strings and integers, the bound check inline.
    Declared names fit every name bound (the schema allows ``[a-z0-9_]+``); undeclared names
    (``additional_props``) and other value types take the general checks.
    """
    if type(props) is not dict:
        raise SchemaViolation(f"{where}: properties must be a map, got {type(props).__name__}")
    fits = spec._fits
    chars = 0
    general = False
    for name, value in props.items():
        t = type(value)
        if fits.get(name) is t:
            if t is str:
                if not value.isascii() and value_problem(value):
                    raise OutOfBounds(f"{where}: property {name!r}: not valid Unicode")
                chars += len(value)
                continue
            if t is int:
                if not MIN_INT <= value <= MAX_INT:
                    raise OutOfBounds(f"{where}: {value_problem(value, f'property {name!r}')}")
                continue
            if t is bool:
                continue
        general = True
        break
    if general:  # anything else: the schema's check, then every bound
        problem = spec.check(props, partial=partial)
        if problem:
            raise SchemaViolation(f"{where}: {problem}")
        problem = props_problem(props)
        if problem:
            raise OutOfBounds(f"{where}: {problem}")
        return
    if (
        not partial
        and spec.has_required
        and any(p.required and p.name not in props for p in spec.props.values())
    ):
        problem = spec.check(props, partial=False)
        if problem:
            raise SchemaViolation(f"{where}: {problem}")
    if 4 * chars + PROPS_BOUND_PER_ENTRY * len(props) > MAX_PROPS_BYTES:
        problem = props_problem(props)
        if problem:
            raise OutOfBounds(f"{where}: {problem}")


def _check_write(m: Mutation) -> None:
    """The bounds every write shares: its time, idempotency id and source order (a value of
    the wrong type is a SchemaViolation, one out of range an OutOfBounds)."""
    ts, mid, seq = m.ts, m.id, m.seq
    if (
        type(ts) is int
        and 0 <= ts <= MAX_TS
        and type(mid) is str
        and 0 < len(mid) <= MAX_MUTATION_ID_BYTES
        and mid.isascii()
        and (seq is None or (type(seq) is int and 0 <= seq <= MAX_SEQ))
    ):
        return  # the common case, in one expression
    if type(ts) is not int or type(mid) is not str:
        raise SchemaViolation(ts_problem(ts) or id_problem(mid, "idempotency id") or "")
    if seq is not None and type(seq) is not int:
        raise SchemaViolation(f"seq must be an integer, got {type(seq).__name__}")
    problem = (
        ts_problem(ts)
        or id_problem(mid, "idempotency id", MAX_MUTATION_ID_BYTES)
        or (None if seq is None or 0 <= seq <= MAX_SEQ else f"seq {seq} is outside [0, 2**63)")
    )
    if problem:
        raise OutOfBounds(problem)


def _check_id(node_id: object) -> None:
    problem = id_problem(node_id)
    if problem:
        raise OutOfBounds(problem) if type(node_id) is str else SchemaViolation(problem)


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "…"


def _type_of(node_id: str) -> str:
    try:
        return split_node_id(node_id)[0]
    except InvalidNodeId as exc:
        raise SchemaViolation(str(exc)) from None


def _collect_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            _collect_lines(value_node, f"{path}.{key}" if path else key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, f"{path}[{i}]", out)


class _Builder:
    """Turns the parsed document into a :class:`Schema`, raising precise :class:`SchemaError`s."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: str, problem: str) -> SchemaError:
        line = self.lines.get(path)
        where = f"{path} (line {line})" if line else path
        return SchemaError(self.source, where, problem)

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"must be a mapping, got {type(value).__name__}")
        return value

    def name(self, value: Any, path: str, what: str) -> str:
        if not isinstance(value, str) or not value or not set(value) <= _NAME_OK:
            raise self.fail(path, f"{what} name {value!r} must be lowercase letters, digits or _")
        return value

    def retention(self, value: Any, path: str, default: int | None) -> int | None:
        if value is None and path not in self.lines:
            return default
        if value is None or value == "forever":
            return None
        try:
            us = parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None
        if us <= 0:
            raise self.fail(path, "retention must be positive (or 'forever')")
        return us

    def props(self, doc: Mapping[str, Any], path: str) -> _PropsSpec:
        raw = self.mapping(doc.get("props"), f"{path}.props")
        specs: dict[str, PropSpec] = {}
        for pname, pdef in raw.items():
            ppath = f"{path}.props.{pname}"
            self.name(pname, ppath, "property")
            required = False
            if isinstance(pdef, Mapping):
                unknown = set(pdef) - {"type", "required"}
                if unknown:
                    raise self.fail(ppath, f"unknown key(s) {sorted(unknown)}")
                required = pdef.get("required", False)
                if not isinstance(required, bool):
                    raise self.fail(f"{ppath}.required", "must be true or false")
                pdef = pdef.get("type")
            if pdef not in PROP_TYPES:
                raise self.fail(
                    ppath, f"unknown property type {pdef!r} (use one of {', '.join(PROP_TYPES)})"
                )
            specs[pname] = PropSpec(pname, pdef, required)
        additional = doc.get("additional_props", False)
        if not isinstance(additional, bool):
            raise self.fail(f"{path}.additional_props", "must be true or false")
        return _PropsSpec(specs, additional)

    def build(self, data: Any) -> Schema:
        doc = self.mapping(data, "")
        unknown = set(doc) - {"version", "defaults", "nodes", "edges", "journey"}
        if unknown:
            first = sorted(unknown)[0]
            raise self.fail(
                first,
                f"unknown top-level key(s) {sorted(unknown)} "
                "(allowed: version, defaults, nodes, edges, journey)",
            )
        version = doc.get("version", 1)
        if version != 1:
            raise self.fail("version", f"unsupported schema version {version!r} (expected 1)")
        defaults = self.mapping(doc.get("defaults"), "defaults")
        default_retention = self.retention(
            defaults.get("retention", "100d"), "defaults.retention", DEFAULT_RETENTION_US
        )

        nodes: dict[str, NodeType] = {}
        raw_nodes = self.mapping(doc.get("nodes"), "nodes")
        if not raw_nodes:
            raise self.fail("nodes", "a schema needs at least one node type")
        for tname, tdoc in raw_nodes.items():
            path = f"nodes.{tname}"
            self.name(tname, path, "node type")
            tdoc = self.mapping(tdoc, path)
            self._no_unknown(tdoc, path, {"retention", "props", "additional_props"})
            nodes[tname] = NodeType(
                tname,
                self.retention(tdoc.get("retention"), f"{path}.retention", default_retention),
                self.props(tdoc, path),
            )

        edges: dict[str, EdgeType] = {}
        for ename, edoc in self.mapping(doc.get("edges"), "edges").items():
            path = f"edges.{ename}"
            self.name(ename, path, "edge type")
            edoc = self.mapping(edoc, path)
            self._no_unknown(edoc, path, {"retention", "props", "additional_props", "mappings"})
            raw_maps = edoc.get("mappings")
            if not isinstance(raw_maps, list) or not raw_maps:
                raise self.fail(f"{path}.mappings", "needs a list of {from, to[, two_way]} entries")
            mappings: list[EdgeMapping] = []
            for i, mdoc in enumerate(raw_maps):
                mpath = f"{path}.mappings[{i}]"
                mdoc = self.mapping(mdoc, mpath)
                self._no_unknown(mdoc, mpath, {"from", "to", "two_way"})
                ends = []
                for end in ("from", "to"):
                    t = mdoc.get(end)
                    if t not in nodes:
                        raise self.fail(
                            f"{mpath}.{end}",
                            f"unknown node type {t!r} (declared: {', '.join(sorted(nodes))})",
                        )
                    ends.append(t)
                two_way = mdoc.get("two_way", False)
                if not isinstance(two_way, bool):
                    raise self.fail(f"{mpath}.two_way", "must be true or false")
                mapping = EdgeMapping(ends[0], ends[1], two_way)
                for other in mappings:
                    same = (other.src_type, other.dst_type) == (mapping.src_type, mapping.dst_type)
                    mirrored = (other.two_way or mapping.two_way) and (
                        other.src_type,
                        other.dst_type,
                    ) == (mapping.dst_type, mapping.src_type)
                    if same or mirrored:
                        raise self.fail(mpath, "duplicates an earlier mapping of this edge type")
                mappings.append(mapping)
            two_way_types = {t for m in mappings if m.two_way for t in (m.src_type, m.dst_type)}
            for i, m in enumerate(mappings):
                if not m.two_way and {m.src_type, m.dst_type} & two_way_types:
                    # Adjacency lists are per edge type, so a two-way read of that node type
                    # would also return these one-way edges from the wrong end.
                    raise self.fail(
                        f"{path}.mappings[{i}]",
                        "a one-way mapping cannot share a node type with a two-way mapping of "
                        "the same edge type; use two edge types",
                    )
            edges[ename] = EdgeType(
                ename,
                self.retention(edoc.get("retention"), f"{path}.retention", default_retention),
                self.props(edoc, path),
                tuple(mappings),
            )

        journey = None
        if doc.get("journey") is not None:
            jdoc = self.mapping(doc["journey"], "journey")
            self._no_unknown(jdoc, "journey", {"root", "members", "interactions"})
            root = jdoc.get("root")
            if root not in nodes:
                raise self.fail("journey.root", f"unknown node type {root!r}")
            members = self._edge_list(jdoc.get("members", []), "journey.members", edges)
            interactions = self._edge_list(jdoc.get("interactions"), "journey.interactions", edges)
            if not interactions:
                raise self.fail("journey.interactions", "list at least one edge type")
            journey = Journey(root, members, interactions)
        return Schema(nodes, edges, journey, self.source)

    def _edge_list(self, value: Any, path: str, edges: Mapping[str, EdgeType]) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, "must be a list of edge types")
        for i, e in enumerate(value):
            if e not in edges:
                raise self.fail(f"{path}[{i}]", f"unknown edge type {e!r}")
        return tuple(value)

    def _no_unknown(self, doc: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        unknown = set(doc) - set(allowed)
        if unknown:
            first = sorted(unknown)[0]
            raise self.fail(
                f"{path}.{first}" if path else first,
                f"unknown key(s) {sorted(unknown)} (allowed: {', '.join(sorted(allowed))})",
            )

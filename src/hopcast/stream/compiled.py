"""A mapping compiled into one Python function: the pipeline's fast path for ordinary records.

:meth:`Mapping.pipeline <hopcast.stream.mapping.Mapping.pipeline>` builds, once, a function
specialised for one mapping file and one schema (:func:`compile_mapping`): the rules' field
paths, templates, conditions, type conversions and the schema checks of every output's fixed
target type are resolved ahead of time and written out as straight-line Python source
(``compile()``), so per record there is one call, no generic dispatch and no intermediate
:class:`~hopcast.stream.record.Event`.

The interpreted pipeline (decoder, steps, :meth:`Schema.validate
<hopcast.graph.schema.Schema.validate>`) stays the reference. The compiled function returns a
result only for a record it can prove ordinary — decoded, matched by a rule, every field
present and convertible, every mutation within every bound of :mod:`hopcast.graph.limits` and
valid, canonical, for the schema — and otherwise ``None``: anything unusual (a missing or bad
field, a non-ASCII id, a hook, an unmatched event, a TRUNCATE, a huge value, an exception
anywhere) makes :meth:`Pipeline.process <hopcast.stream.operators.Pipeline.process>` run the
interpreted path on the record from scratch, which produces the mutations or the dead letter
with its reason and message. The compiled code reads but never writes shared state, so
running both costs time, never correctness. ``tests/stream/test_compiled.py`` runs both over
the demo records and randomised hostile ones and requires identical outputs.

Only mappings whose pipeline is *decode → map* are compiled (no ``prepare`` hook, changelog or
enrich step): the steps before the map may change side tables, which a re-run would repeat.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from functools import partial
from typing import Any

from hopcast.errors import OutOfBounds, SchemaViolation
from hopcast.graph.keys import MAX_TS
from hopcast.graph.limits import (
    MAX_INT,
    MAX_MUTATION_ID_BYTES,
    MAX_NODE_ID_BYTES,
    MAX_PROPS_BYTES,
    MIN_INT,
    PROPS_BOUND_PER_ENTRY,
    props_problem,
    value_problem,
)
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema, _check_props, _PropsSpec
from hopcast.stream import fields
from hopcast.stream.fields import CONVERTERS, Condition, Path, Template, TimeSpec, ValueSpec
from hopcast.stream.record import CDC_OPS, MISSING, Record, walk
from hopcast.stream.rules import MAX_EACH, MAX_ORDER, MAX_OUTPUTS, OUTPUT_BITS, OutputSpec, Rule

#: What a compiled mapping returns for an ordinary record: its valid, canonical mutations and
#: their oldest and newest generation time; None sends the record down the interpreted path.
FastResult = tuple[list[Mutation], int, int] | None
Fast = Callable[[Record], FastResult]


# -- helpers the generated code calls (each raises on anything unusual: the caller falls back) --


class _Unusual(Exception):
    """Raised by a helper for a value the interpreted path must handle (it reports it)."""


def _text(value: Any) -> str:
    """A placeholder's text, as :meth:`Template.render` makes it (non-str values only)."""
    if value is MISSING or value is None or isinstance(value, dict | list):
        raise _Unusual
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _has_container(*values: Any) -> bool:
    return any(isinstance(v, dict | list) for v in values)


def _props_ok(spec: _PropsSpec, props: dict[str, Any], partial: bool) -> bool:
    """Whether :func:`~hopcast.graph.schema._check_props` (the reference) accepts ``props``."""
    try:
        _check_props(spec, props, partial, "")
    except (SchemaViolation, OutOfBounds):
        return False
    return True


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UTC = dt.UTC
_ONE_US = dt.timedelta(microseconds=1)
_fromisoformat = dt.datetime.fromisoformat


def _iso_us(text: Any) -> int:
    """``to_us(text, "iso")``: :func:`~hopcast.durations.parse_iso` of the text with a
    trailing ``Z`` read as ``+00:00``, inlined (the same calls, without the layers of calls
    around them, which cost more than the parse)."""
    if type(text) is not str:
        return fields.to_us(text, "iso")
    when = _fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_UTC)
    return (when - _EPOCH) // _ONE_US


def _time_us(fmt: str) -> Callable[[Any], int]:
    return _iso_us if fmt == "iso" else partial(fields.to_us, fmt=fmt)


# -- the code generator ------------------------------------------------------------------------


_MUTATION_TYPES = (NodeUpsert, EdgeUpsert, NodeDelete, EdgeDelete)


class _Gen:
    """Writes the source of one mapping's function; constants go into its namespace."""

    def __init__(self, schema: Schema | None) -> None:
        self.schema = schema
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {
            "MISSING": MISSING,
            "_walk": walk,
            "_text": _text,
            "_has_container": _has_container,
            "_props_ok": _props_ok,
            "_value_problem": value_problem,
            "_min": min,
            "_max": max,
            "_new": object.__new__,
        }
        # A mutation is built by setting its slots, without its dataclass __init__ (frozen:
        # one object.__setattr__ call per field, the dearest part of an output); the
        # mutation classes have no __post_init__, so the result is the same object.
        for cls in _MUTATION_TYPES:
            self.ns[cls.__name__] = cls
            for name in cls.__slots__:
                self.ns[f"_{cls.__name__}_{name}"] = getattr(cls, name).__set__
        self.n = 0

    def append(self, depth: int, cls: type, *args: str) -> None:
        """Code appending ``cls(*args)`` to ``out``."""
        names: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
        assert len(names) == len(args)
        m = self.var("m")
        self.emit(depth, f"{m} = _new({cls.__name__})")
        for name, arg in zip(names, args, strict=True):
            self.emit(depth, f"_{cls.__name__}_{name}({m}, {arg})")
        self.emit(depth, f"out.append({m})")

    def const(self, value: Any, hint: str = "c") -> str:
        self.n += 1
        name = f"_{hint}{self.n}"
        self.ns[name] = value
        return name

    def var(self, hint: str = "v") -> str:
        self.n += 1
        return f"{hint}{self.n}"

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


class _Scope:
    """The path values already read into local variables in one block of the generated code.

    A block sees its parents' variables; an ``each`` loop binds its item, which shadows the
    document for paths starting with the item's name (as :meth:`Event.with_side` does).
    """

    def __init__(self, parent: _Scope | None, item: tuple[str, str] | None = None) -> None:
        self.parent = parent
        self.item = item  # (each_as name, the variable holding the item)
        self.vars: dict[Path, str] = {}

    def lookup(self, path: Path) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            got = scope.vars.get(path)
            if got is not None:
                return got
            if scope.item is not None and scope.item[0] == path[0]:
                return None  # read from this item, in this block
            scope = scope.parent
        return None

    def item_var(self, head: str) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            if scope.item is not None and scope.item[0] == head:
                return scope.item[1]
            scope = scope.parent
        return None


def _read(g: _Gen, scope: _Scope, path: Path, depth: int) -> str:
    """The variable holding ``event.get(path)`` in ``scope`` (read here if not read yet);
    a longer path reads on from its prefix's variable (one step of ``Event.get``'s loop)."""
    got = scope.lookup(path)
    if got is not None:
        return got
    v = g.var()
    if len(path) == 1:
        item = scope.item_var(path[0])
        g.emit(depth, f"{v} = {item if item is not None else f'data.get({path[0]!r}, MISSING)'}")
    else:
        p = _read(g, scope, path[:-1], depth)
        part = path[-1]
        one = g.const((part,), "p")
        g.emit(
            depth, f"{v} = {p}.get({part!r}, MISSING) if type({p}) is dict else _walk({p}, {one})"
        )
    scope.vars[path] = v
    return v


def _paths(o: OutputSpec) -> list[Path]:
    """Every path an output reads (conditions, templates, values)."""
    out = [p for p, _ in o.when.tests]
    for t in (o.node, o.src, o.dst):
        if t is not None:
            out += [p for p in t.parts if type(p) is tuple]
    for _, spec in o.props:
        if spec.source is not None:
            out += [p for p in spec.source.parts if type(p) is tuple]
    return out


# -- conditions --------------------------------------------------------------------------------


def _test_expr(g: _Gen, test: Callable[[Any], bool], v: str) -> str:
    """A Python expression equal to ``test(v)`` for the tests of :mod:`fields`."""
    if isinstance(test, partial) and not test.keywords:
        func, args = test.func, test.args
        if func is fields._all and len(args) == 1:
            parts = [_test_expr(g, t, v) for t in args[0]]
            return "(" + " and ".join(parts) + ")" if parts else "True"
        if len(args) == 1:
            arg = args[0]
            if func is fields._eq:
                return f"({v} is not MISSING and {v} == {g.const(arg)})"
            if func is fields._in:
                return f"({v} is not MISSING and {v} in {g.const(arg)})"
            if func is fields._ne:
                return f"({v} != {g.const(arg)})"
            if func is fields._not_in:
                return f"({v} not in {g.const(arg)})"
            if func is fields._exists:
                present = f"({v} is not MISSING and {v} is not None)"
                return present if arg else f"(not {present})"
            if func is fields._matches:
                return f"(type({v}) is str and {g.const(arg)}.search({v}) is not None)"
        if (
            func is fields._ordered
            and len(args) == 2
            and type(args[1]) in (int, float)
            and (type(args[1]) is int or math.isfinite(args[1]))
        ):
            op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
            for name, fn in fields._COMPARE.items():
                if fn is args[0]:
                    c = g.const(args[1])
                    return (
                        f"({v} {op[name]} {c} if type({v}) is int or type({v}) is float "
                        f"else {g.const(test, 't')}({v}))"
                    )
    return f"bool({g.const(test, 't')}({v}))"


def _condition(g: _Gen, scope: _Scope, cond: Condition, depth: int) -> str:
    if not cond.tests:
        return "True"
    exprs = [_test_expr(g, test, _read(g, scope, path, depth)) for path, test in cond.tests]
    return " and ".join(exprs)


# -- templates and values ----------------------------------------------------------------------


def _render(g: _Gen, scope: _Scope, t: Template, depth: int) -> str:
    """A variable holding ``t.render(event)`` (returns None from the function if it fails)."""
    vs = [_read(g, scope, p, depth) for p in t.parts if type(p) is tuple]
    out = g.var("s")
    pieces: list[str] = []
    k = 0
    for part in t.parts:
        if type(part) is str:
            if part:
                pieces.append(repr(part))
        else:
            v = vs[k]
            k += 1
            pieces.append(f"({v} if type({v}) is str else _text({v}))")
    g.emit(depth, f"{out} = {' + '.join(pieces) if pieces else repr('')}")
    return out


def _value(g: _Gen, scope: _Scope, spec: ValueSpec, depth: int) -> str:
    """A variable holding ``spec.read(event)`` (MISSING when the property is left out)."""
    out = g.var("x")
    if spec.source is None:
        g.emit(depth, f"{out} = {g.const(spec.constant)}")
        return out
    t = spec.source
    paths = [p for p in t.parts if type(p) is tuple]
    vs = [_read(g, scope, p, depth) for p in paths]
    missing = " or ".join(f"{v} is MISSING or {v} is None" for v in vs)
    single = t.is_single_field
    if missing:
        g.emit(depth, f"if {missing}:")
        if not single:  # a container placeholder before the missing one is a bad_value
            g.emit(depth + 1, f"if _has_container({', '.join(vs)}):")
            g.emit(depth + 2, "return None")
        if spec.default is not None:
            g.emit(depth + 1, f"{out} = {g.const(spec.default)}")
        elif spec.required:
            g.emit(depth + 1, "return None")
        else:
            g.emit(depth + 1, f"{out} = MISSING")
        g.emit(depth, "else:")
        depth += 1
    if single:
        raw = vs[0]
    else:
        raw = _render(g, scope, t, depth)
    conv = spec.type
    if conv == "any":
        g.emit(depth, f"{out} = {raw}")
    elif conv in ("str", "int"):
        fn = g.const(CONVERTERS[conv], "f")
        g.emit(depth, f"{out} = {raw} if type({raw}) is {conv} else {fn}({raw})")
    else:
        g.emit(depth, f"{out} = {g.const(CONVERTERS[conv], 'f')}({raw})")
    return out


# -- schema checks of one output's props -------------------------------------------------------

_FITS = {
    "str": ("str", "any"),
    "int": ("int", "float", "any"),
    "bool": ("bool", "any"),
}


def _props(
    g: _Gen,
    scope: _Scope,
    o: OutputSpec,
    spec: _PropsSpec | None,
    partial_check: bool,
    depth: int,
) -> str | None:
    """Code building the output's props (and checking them against ``spec`` if given);
    the variable, or None if the props can never pass the check."""
    props = g.var("props")
    chars = g.var("chars")
    general = g.var("general")
    g.emit(depth, f"{props} = {{}}")
    if spec is not None:
        g.emit(depth, f"{chars} = 0")
        g.emit(depth, f"{general} = False")
    names = {name for name, _ in o.props}
    if spec is not None and not partial_check:
        for req in spec.props.values():
            if req.required and req.name not in names:
                return None  # a required property this output never writes
    for name, vspec in o.props:
        x = _value(g, scope, vspec, depth)
        may_miss = vspec.source is not None and vspec.default is None and not vspec.required
        d = depth
        if may_miss:
            g.emit(d, f"if {x} is not MISSING:")
            d += 1
        declared = spec.props.get(name) if spec is not None else None
        if spec is not None:
            if declared is None and not spec.additional:
                g.emit(d, "return None")  # an undeclared property: a schema violation
            elif declared is None or props_problem({name: None}) is not None:
                g.emit(d, f"{general} = True")
            else:
                fits = [t for t, allowed in _FITS.items() if declared.type in allowed]
                first = True
                for t in ("str", "int", "bool"):
                    kw = "if" if first else "elif"
                    first = False
                    g.emit(d, f"{kw} type({x}) is {t}:")
                    if t not in fits:
                        g.emit(d + 1, "return None")
                    elif t == "str":
                        g.emit(d + 1, f"if not {x}.isascii() and _value_problem({x}):")
                        g.emit(d + 2, "return None")
                        g.emit(d + 1, f"{chars} += len({x})")
                    elif t == "int":
                        g.emit(d + 1, f"if not {MIN_INT} <= {x} <= {MAX_INT}:")
                        g.emit(d + 2, "return None")
                    else:
                        g.emit(d + 1, "pass")
                g.emit(d, "else:")
                g.emit(d + 1, f"{general} = True")
        g.emit(d, f"{props}[{name!r}] = {x}")
        if may_miss and spec is not None and declared is not None and declared.required:
            g.emit(depth, "else:")
            g.emit(depth + 1, "return None")  # a required property left out
    if spec is not None:
        bound = f"4 * {chars} + {PROPS_BOUND_PER_ENTRY} * len({props}) > {MAX_PROPS_BYTES}"
        sc = g.const(spec, "spec")
        g.emit(
            depth, f"if ({general} or {bound}) and not _props_ok({sc}, {props}, {partial_check}):"
        )
        g.emit(depth + 1, "return None")
    return props


def _id_ok(g: _Gen, s: str, static_type: str | None) -> str:
    """An expression: node id ``s`` (of a known type, if given) is within the bounds."""
    base = f"len({s}) <= {MAX_NODE_ID_BYTES} and {s}.isascii()"
    if static_type is not None:
        return f"len({s}) > {len(static_type) + 1} and {base}"
    return base


def _static_type(t: Template) -> str | None:
    prefix = t.static_prefix
    return prefix.split(":", 1)[0] if ":" in prefix else None


def _dynamic_type(g: _Gen, s: str, depth: int) -> str:
    """Code splitting node id ``s``: returns the variable of its type ("" if no key)."""
    t, k = g.var("t"), g.var("k")
    g.emit(depth, f"{t}, _, {k} = {s}.partition(':')")
    g.emit(depth, f"if not {k}:")
    g.emit(depth + 1, "return None")
    return t


# -- outputs -----------------------------------------------------------------------------------


def _emit_node(g: _Gen, scope: _Scope, o: OutputSpec, delete: bool, mid: str, depth: int) -> None:
    assert o.node is not None
    schema = g.schema
    node = _render(g, scope, o.node, depth)
    st = _static_type(o.node)
    nt_spec: _PropsSpec | None = None
    if schema is not None:
        if st is not None:
            nt = schema.nodes.get(st)
            if nt is None:
                g.emit(depth, "return None")
                return
            nt_spec = nt.props
            g.emit(depth, f"if not ({_id_ok(g, node, st)}):")
            g.emit(depth + 1, "return None")
        else:
            t = _dynamic_type(g, node, depth)
            known = g.const(frozenset(schema.nodes))
            g.emit(depth, f"if not ({_id_ok(g, node, None)}) or {t} not in {known}:")
            g.emit(depth + 1, "return None")
    if delete:
        g.append(depth, NodeDelete, node, "ts", mid, "seq + len(out)")
        return
    if schema is not None and nt_spec is None:  # a type known only now: check as a whole
        props = _props(g, scope, o, None, True, depth)
        specs = g.const({n: t.props for n, t in schema.nodes.items()}, "specs")
        g.emit(depth, f"if not _props_ok({specs}[{t}], {props}, True):")
        g.emit(depth + 1, "return None")
    else:
        props = _props(g, scope, o, nt_spec, True, depth)
    if props is None:
        g.emit(depth, "return None")
        return
    g.append(depth, NodeUpsert, node, "ts", mid, props, "seq + len(out)")


def _plans(schema: Schema, edge_type: str) -> dict[tuple[str, str], tuple[bool, bool]]:
    """``(src type, dst type) -> (two-way between one type, swapped)`` as
    :meth:`EdgeType.mapping <hopcast.graph.schema.EdgeType.mapping>` resolves them."""
    et = schema.edges[edge_type]
    out: dict[tuple[str, str], tuple[bool, bool]] = {}
    for st in schema.nodes:
        for dt_ in schema.nodes:
            found = et.mapping(st, dt_)
            if found is not None:
                m, swapped = found
                out[(st, dt_)] = (m.two_way and m.src_type == m.dst_type, swapped)
    return out


def _emit_edge(g: _Gen, scope: _Scope, o: OutputSpec, delete: bool, mid: str, depth: int) -> None:
    assert o.src is not None and o.dst is not None and o.edge_type is not None
    schema = g.schema
    src = _render(g, scope, o.src, depth)
    dst = _render(g, scope, o.dst, depth)
    etype = repr(o.edge_type)
    et_spec: _PropsSpec | None = None
    a, b = src, dst  # the canonical (src, dst) variables
    if schema is not None:
        et = schema.edges.get(o.edge_type)
        if et is None:
            g.emit(depth, "return None")
            return
        et_spec = et.props
        plans = _plans(schema, o.edge_type)
        s_t, d_t = _static_type(o.src), _static_type(o.dst)
        g.emit(depth, f"if not ({_id_ok(g, src, s_t)} and {_id_ok(g, dst, d_t)}):")
        g.emit(depth + 1, "return None")
        if s_t is not None and d_t is not None:
            plan = plans.get((s_t, d_t))
            if plan is None:
                g.emit(depth, "return None")
                return
            same, swapped = plan
            if swapped:
                a, b = dst, src
            elif same:
                a, b = g.var("a"), g.var("b")
                g.emit(depth, f"{a}, {b} = ({dst}, {src}) if {src} > {dst} else ({src}, {dst})")
        else:
            sv = repr(s_t) if s_t is not None else _dynamic_type(g, src, depth)
            dv = repr(d_t) if d_t is not None else _dynamic_type(g, dst, depth)
            plan_v = g.var("plan")
            g.emit(depth, f"{plan_v} = {g.const(plans, 'plans')}.get(({sv}, {dv}))")
            g.emit(depth, f"if {plan_v} is None:")
            g.emit(depth + 1, "return None")
            a, b = g.var("a"), g.var("b")
            g.emit(
                depth,
                f"{a}, {b} = ({dst}, {src}) if {plan_v}[1] or ({plan_v}[0] and {src} > {dst}) "
                f"else ({src}, {dst})",
            )
    if delete:
        g.append(depth, EdgeDelete, a, etype, b, "ts", mid, "seq + len(out)")
        return
    props = _props(g, scope, o, et_spec, False, depth)
    if props is None:
        g.emit(depth, "return None")
        return
    g.append(depth, EdgeUpsert, a, etype, b, "ts", mid, props, "seq + len(out)")


def _output(g: _Gen, scope: _Scope, o: OutputSpec, mid: str, depth: int) -> None:
    """The code of one output (after its ``each`` binding): ``_emit`` of :mod:`rules`."""
    g.emit(depth, f"if {_condition(g, scope, o.when, depth)}:")
    depth += 1
    scope = _Scope(scope)
    is_node = o.kind in ("node", "delete_node")
    emit = _emit_node if is_node else _emit_edge
    if o.kind in ("node", "edge") and o.on_delete != "upsert":
        if o.on_delete == "ignore":
            g.emit(depth, "if op != 'd':")
            emit(g, _Scope(scope), o, False, mid, depth + 1)
        else:
            g.emit(depth, "if op == 'd':")
            emit(g, _Scope(scope), o, True, mid, depth + 1)
            g.emit(depth, "else:")
            emit(g, _Scope(scope), o, False, mid, depth + 1)
        return
    emit(g, scope, o, o.kind.startswith("delete_"), mid, depth)


def _time(g: _Gen, scope: _Scope, spec: TimeSpec | None, depth: int) -> None:
    if spec is None:
        g.emit(depth, "ts = event_time")
    else:
        v = _read(g, scope, spec.path, depth)
        unit = {"us": 1, "ms": 1_000, "s": 1_000_000}.get(spec.format)
        fn = g.const(_time_us(spec.format), "time")
        g.emit(depth, f"if {v} is MISSING or {v} is None:")
        g.emit(depth + 1, "return None")
        if unit is not None:
            g.emit(depth, f"ts = {v} * {unit} if type({v}) is int else {fn}({v})")
        else:
            g.emit(depth, f"ts = {fn}({v})")
    g.emit(depth, f"if type(ts) is not int or not 0 <= ts <= {MAX_TS}:")
    g.emit(depth + 1, "return None")


def _rule(g: _Gen, scope: _Scope, rule: Rule, default_time: TimeSpec | None, depth: int) -> None:
    """The body of one rule (its ``when`` held): ``Rule._apply`` of :mod:`rules`."""
    if rule.hook is not None:
        g.emit(depth, "return None")  # hooks run on the interpreted path
        return
    if not rule.outputs:
        g.emit(depth, f"return [], {MAX_TS}, 0")
        return
    _time(g, scope, rule.time or default_time, depth)
    if rule.id is not None:
        base = _render(g, scope, rule.id, depth)
    else:
        base = g.var("base")
        g.emit(depth, f"{base} = f'{{source}}:{{position.partition}}:{{position.offset}}'")
    g.emit(depth, f"seq = _min(_max(order, 0), {MAX_ORDER}) << {OUTPUT_BITS}")
    g.emit(depth, "out = []")
    for o in rule.outputs:  # read once what every output reads outside an each item
        for path in _paths(o):
            if o.each is None or path[0] != o.each_as:
                _read(g, scope, path, depth)
    for o in rule.outputs:
        if o.each is None:
            mid = g.var("mid")
            g.emit(depth, f"{mid} = {base} + {':' + str(o.index)!r}")
            if g.schema is not None:
                g.emit(depth, f"if len({mid}) > {MAX_MUTATION_ID_BYTES} or not {mid}.isascii():")
                g.emit(depth + 1, "return None")
            _output(g, scope, o, mid, depth)
            continue
        items = _read(g, scope, o.each, depth)
        g.emit(depth, f"if {items} is not MISSING and {items} is not None:")
        d = depth + 1
        listed = g.var("items")
        to_list = g.const(CONVERTERS["list"], "f")
        g.emit(d, f"{listed} = {items} if type({items}) is list else {to_list}({items})")
        items = listed
        g.emit(d, f"if len({items}) > {MAX_EACH}:")
        g.emit(d + 1, "return None")
        i, item = g.var("i"), g.var("item")
        g.emit(d, f"for {i}, {item} in enumerate({items}):")
        mid = g.var("mid")
        g.emit(d + 1, f"{mid} = f'{{{base}}}:{o.index}.{{{i}}}'")
        if g.schema is not None:
            g.emit(d + 1, f"if len({mid}) > {MAX_MUTATION_ID_BYTES} or not {mid}.isascii():")
            g.emit(d + 2, "return None")
        _output(g, _Scope(scope, (o.each_as, item)), o, mid, d + 1)
        g.emit(d, f"if len(out) > {MAX_OUTPUTS}:")
        g.emit(d + 1, "return None")
    g.emit(depth, "return out, ts, ts")


# -- decoders (the ordinary records of decode_json / decode_debezium) -------------------------

_JSON_HEAD = """\
    value = record.value
    if not value or len(value) > {max_bytes}:
        return None
    data = _decode(value)
    if type(data) is not dict:
        return None
    op = None
    position = record.position
    order = position.offset
    event_time = record.event_time
    source = record.source
"""

_DEBEZIUM_HEAD = """\
    value = record.value
    if not value or len(value) > {max_bytes}:
        return None
    doc = _decode(value)
    if type(doc) is not dict or ("payload" in doc and "schema" in doc):
        return None
    op = doc.get("op")
    if op not in _CDC_OPS or op == "t":
        return None
    before = doc.get("before")
    after = doc.get("after")
    if before is not None and type(before) is not dict:
        return None
    if after is not None and type(after) is not dict:
        return None
    row = before if op == "d" else after
    if row is None:
        return None
    src = doc.get("source") or {{}}
    if type(src) is not dict:
        return None
    table = src.get("table")
    if type(table) is not str:
        table = None
    data = {{
        "op": op,
        "table": table,
        "before": before,
        "after": after,
        "row": row,
        "source": src,
        "ts_ms": doc.get("ts_ms"),
    }}
    event_time = _envelope_time(doc, src)
    if event_time is None:
        event_time = record.event_time
    position = record.position
    lsn = src.get("lsn")
    if type(lsn) is not int or lsn < 0 or op == "r" or src.get("snapshot") not in _STREAMED:
        order = position.offset
    else:
        order = lsn << 1 | (op == "c")
    source = record.source
"""


def compile_mapping(
    mapping: Any, schema: Schema | None, max_bytes: int, decode: Callable[[bytes], Any]
) -> Fast | None:
    """The fast path of ``mapping``'s pipeline (see the module docstring), or None if its
    pipeline has steps before the map (prepare, changelog, enrich) or an unknown format.

    Args:
        mapping: a :class:`~hopcast.stream.mapping.Mapping`.
        schema: the schema the pipeline validates against (None: only the ``ts`` check).
        max_bytes: the pipeline's record size bound.
        decode: the JSON decoder the interpreted decoders use (``bytes -> Any``).
    """
    from hopcast.stream import operators

    if mapping.prepare is not None or mapping.changelog or mapping.enrich:
        return None
    if mapping.format not in ("json", "debezium"):
        return None
    g = _Gen(schema)
    g.ns.update(
        _decode=decode,
        _CDC_OPS=CDC_OPS,
        _STREAMED=operators._STREAMED,
        _envelope_time=operators._envelope_time,
    )
    head = _JSON_HEAD if mapping.format == "json" else _DEBEZIUM_HEAD
    g.lines.append("def fast(record):")
    g.lines += head.format(max_bytes=max_bytes).rstrip("\n").split("\n")
    top = _Scope(None)
    for rule in mapping.rules:
        cond = _condition(g, top, rule.when, 1)
        g.emit(1, f"if {cond}:")
        _rule(g, _Scope(top), rule, mapping.time, 2)
    g.emit(1, "return None")  # unmatched: the interpreted path applies the policy
    source = "\n".join(g.lines) + "\n"
    code = compile(source, f"<compiled mapping {mapping.file}>", "exec")
    exec(code, g.ns)  # our own generated source, from a validated mapping
    fast: Fast = g.ns["fast"]
    fast.__doc__ = source  # the generated source, for debugging
    return fast

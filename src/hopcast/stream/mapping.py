"""Declarative mappings: one YAML file per source says how its records become graph mutations.

A new vertical needs a mapping file and a schema change, no code. The format::

    version: 1
    source: playback            # the source this file maps (its records' ``source``)
    format: debezium            # json (one object per record) or debezium (change events)
    max_bytes: 65536            # optional: bigger records are dead letters (default 1 MiB)
    unmatched: dead_letter      # or drop: an event no rule matches
    truncate: dead_letter       # a CDC TRUNCATE (op t): dead_letter, drop, or rules (map it)
    max_future: 1h              # a generation time further ahead is a future_time dead letter
                                # (default 1h; a duration, or none)
    expired: dead_letter        # or drop: a record older than its types' retention (always
                                # counted: hopcast_ingest_expired_total)
    time: {field: source.ts_ms, format: ms}   # optional default event time (us|ms|s|iso)
    changelog:                  # optional: keep side tables current from this source
      - {table: titles, key: "{row.title_id}", when: {table: titles}}
    enrich:                     # optional: join side tables (kept current by other sources)
      - {table: titles, key: "{row.title_id}", as: title, required: false}
    prepare: my_pkg.hooks:prepare   # optional hook: Event -> Event | None (None drops it)
    rules:                      # tried in order; the first whose `when` holds maps the event
      - name: watching
        when: {table: playback}                  # conditions: see fields.Condition
        time: {field: row.updated_at, format: iso}   # optional, overrides the default
        id: "{row.id}"          # optional idempotency id (default: source position)
        emit:
          - node: "title:{row.title_id}"
            props: {name: "{title.name}"}          # a missing field leaves the property out
          - edge: started_watching
            from: "profile:{row.profile_id}"
            to: "title:{row.title_id}"
            props:
              position_s: {field: row.position_s, type: int}
              device: "device:{row.device_id}"
            on_delete: delete   # CDC op d: emit an EdgeDelete (or: ignore, upsert)
          - edge: in_genre
            each: row.genres    # one output per list element, bound as `item` (or `as: x`)
            from: "title:{row.title_id}"
            to: "genre:{item}"
            when: {item: {ne: ""}}
        hook: my_pkg.hooks:extra    # optional: Event -> Iterable[Mutation], added to the outputs

The event time of a rule's mutations is its ``time``, else the file's, else the record's (for
Debezium: the commit time), else the record is a ``missing_time`` dead letter. Idempotency ids
are ``<rule id or source:partition:offset>:<output>[.<element>]``, so a replayed record
writes the same ids. A CDC delete (op ``d``) reads its fields from ``before`` (``row`` is
``after``, or ``before`` for a delete); ``on_delete`` says what a ``node`` or ``edge`` output
does then: ``ignore`` (the default), ``delete``, or ``upsert`` as for any other op.

A CDC ``TRUNCATE`` (``op: t``, from the PostgreSQL source or a Debezium topic) carries no row.
Changelogs clear their side table; then, by default, it becomes a dead letter with reason
``truncate`` — the graph keeps the nodes and edges the table's rows made, and the operator sees
that it happened — or is dropped (``truncate: drop``), or goes to the rules like any other
event (``truncate: rules``: a rule with ``when: {op: t}`` and a hook may act on it).

Outputs are ``node``, ``edge``, ``delete_node`` and ``delete_edge``. Values are constants,
templates (``"profile:{row.profile_id}"``; a template that is one placeholder keeps the field's
type) or ``{field | template, type, required, default}`` with types ``str``, ``int``, ``float``,
``bool``, ``list``, ``map``, ``any``; an absent or null field leaves an optional property out.
Conditions: see :class:`~hopcast.stream.fields.Condition`. (YAML reads bare ``yes``, ``no``,
``on`` and ``off`` as booleans: quote them in conditions on text fields.)

Every produced mutation is validated against the graph schema by the pipeline; a record that
fails anywhere becomes one dead letter (reason codes in :mod:`hopcast.stream.deadletter`).
Errors in the file raise :class:`~hopcast.errors.MappingError` naming the file, the path inside
it and the line: ``games.yaml: rules[0].emit[1].edge (line 14): unknown edge type 'plyas'``.

:meth:`Mapping.pipeline` also compiles the file, once, into one Python function specialised for
it and the schema (:mod:`hopcast.stream.compiled`): the pipeline's fast path for ordinary
records. The rules above, run by :mod:`hopcast.stream.rules`, stay the reference: any record
the compiled function does not prove ordinary takes them, and both give the same outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from hopcast.durations import parse_duration
from hopcast.errors import MappingError, RecordRejected
from hopcast.graph.limits import DEFAULT_MAX_FUTURE_US
from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import Schema
from hopcast.stream.compiled import compile_mapping
from hopcast.stream.deadletter import Reason
from hopcast.stream.fields import Condition, Template, TimeSpec, ValueSpec, parse_path
from hopcast.stream.operators import (
    DEFAULT_MAX_BYTES,
    Changelog,
    Enrich,
    Pipeline,
    SideTable,
    Step,
    StepOutput,
    _json_decode,
    decode_debezium,
    decode_json,
)
from hopcast.stream.record import Event
from hopcast.stream.rules import Hook, OutputSpec, PrepareStep, Rule, import_hook

#: The directory of the demo company's mappings, shipped with the package.
DEMO_MAPPINGS = Path(__file__).with_name("mappings")

_FORMATS = {"json": decode_json, "debezium": decode_debezium}
_TRUNCATE = ("dead_letter", "drop", "rules")
_OUTPUT_KINDS = ("node", "edge", "delete_node", "delete_edge")
_ON_DELETE = ("ignore", "delete", "upsert")


@dataclass(frozen=True, slots=True)
class _EnrichSpec:
    table: str
    key: Template
    into: str
    required: bool


@dataclass(frozen=True, slots=True)
class _ChangelogSpec:
    table: str
    key: Template
    when: Condition


class Mapping:
    """A loaded mapping file. Build it with :meth:`load` or :meth:`from_yaml`; run it with
    :meth:`pipeline` (or call :meth:`map` on decoded events)."""

    def __init__(
        self,
        file: str,
        source: str,
        format: str,
        max_bytes: int,
        unmatched: str,
        time: TimeSpec | None,
        changelog: tuple[_ChangelogSpec, ...],
        enrich: tuple[_EnrichSpec, ...],
        prepare: Hook | None,
        rules: tuple[Rule, ...],
        schema: Schema | None = None,
        truncate: str = "dead_letter",
        max_future_us: int | None = DEFAULT_MAX_FUTURE_US,
        expired: str = "dead_letter",
    ) -> None:
        self.file = file
        self.source = source
        self.format = format
        self.max_bytes = max_bytes
        self.unmatched = unmatched
        self.time = time
        self.changelog = changelog
        self.enrich = enrich
        self.prepare = prepare
        self.rules = rules
        #: The schema the file was checked against at load time (the pipeline's default).
        self.schema = schema
        self.truncate = truncate
        self.max_future_us = max_future_us
        self.expired = expired

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, schema: Schema | None = None) -> Mapping:
        """Load a mapping file; with ``schema``, node types, edge types and property names are
        checked against it where the file names them literally.

        Raises:
            MappingError: naming the file, the path inside it, the line and the problem.
        """
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise MappingError(str(p), "", f"cannot read: {exc.strerror or exc}") from exc
        return cls.from_yaml(text, source=str(p), schema=schema)

    @classmethod
    def from_yaml(
        cls, text: str, source: str = "<mapping>", schema: Schema | None = None
    ) -> Mapping:
        """Like :meth:`load`, from text; ``source`` names the file in errors."""
        try:
            root = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MappingError(source, "", f"not valid YAML: {exc}") from exc
        lines: dict[str, int] = {}
        if root is not None:
            _collect_lines(root, "", lines)
        return _Builder(source, lines, schema).build(data)

    @classmethod
    def load_dir(cls, directory: str | Path, schema: Schema | None = None) -> dict[str, Mapping]:
        """Every ``*.yaml`` mapping in a directory, by source name.

        Raises:
            MappingError: for the first bad file, or two files mapping the same source.
        """
        out: dict[str, Mapping] = {}
        for path in sorted(Path(directory).glob("*.yaml")):
            m = cls.load(path, schema)
            if m.source in out:
                raise MappingError(
                    str(path),
                    "source",
                    f"source {m.source!r} is also mapped by {out[m.source].file}",
                )
            out[m.source] = m
        return out

    # -- running ---------------------------------------------------------------------------

    @property
    def tables(self) -> set[str]:
        """Side tables this mapping reads or keeps current."""
        return {e.table for e in self.enrich} | {c.table for c in self.changelog}

    def pipeline(
        self,
        schema: Schema | None = None,
        tables: dict[str, SideTable] | None = None,
        compiled: bool = True,
    ) -> Pipeline:
        """The pipeline of this source: size check, decode, prepare, changelog, enrich, map,
        validate against ``schema``.

        Args:
            schema: validates and canonicalises every mutation; defaults to the schema the file
                was loaded with (without any, mutations are not validated: use one).
            tables: side tables by name, shared between the pipelines of one engine (the
                catalogue's pipeline fills ``titles``, the playback pipeline reads it). Tables
                this mapping needs and ``tables`` lacks are created and added to it.
            compiled: give the pipeline the mapping compiled into one function
                (:mod:`hopcast.stream.compiled`) as its fast path for ordinary records; the
                outputs are the same either way (False: the interpreted path only).
        """
        shared = tables if tables is not None else {}
        steps: list[Step] = []
        if self.prepare is not None:
            steps.append(PrepareStep(self.prepare))
        for c in self.changelog:
            table = shared.setdefault(c.table, SideTable(c.table))
            steps.append(Changelog(table, c.key, c.when))
        for e in self.enrich:
            table = shared.setdefault(e.table, SideTable(e.table))
            steps.append(Enrich(table, e.key, e.into, e.required))
        steps.append(_MapStep(self))
        schema = schema if schema is not None else self.schema
        fast = compile_mapping(self, schema, self.max_bytes, _json_decode) if compiled else None
        return Pipeline(
            _FORMATS[self.format],
            steps,
            schema=schema,
            max_bytes=self.max_bytes,
            mapping=self.file,
            unmatched=self.unmatched,
            max_future_us=self.max_future_us,
            expired=self.expired,
            fast=fast,
        )

    def map(self, event: Event) -> list[Mutation] | None:
        """The mutations of one decoded (and enriched) event; None if no rule matches.

        Raises:
            RecordRejected: with the dead-letter reason.
        """
        for rule in self.rules:
            if rule.when.holds(event):
                return rule.apply(event, self.time)
        return None


@dataclass(frozen=True, slots=True)
class _MapStep:
    mapping: Mapping
    name: str = "map"

    def __call__(self, event: Event) -> StepOutput:
        if event.op == "t" and self.mapping.truncate != "rules":
            if self.mapping.truncate == "drop":
                return ()
            raise RecordRejected(
                Reason.TRUNCATE,
                f"TRUNCATE of table {event.table!r}: the graph keeps the nodes and edges its "
                "rows made (set 'truncate: drop' or 'truncate: rules' in the mapping to change "
                "this)",
            )
        produced = self.mapping.map(event)
        if produced is None:
            return (event,)  # unmatched: the pipeline decides (dead letter or drop)
        return produced


# -- building ----------------------------------------------------------------------------------


def _collect_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    """Map every ``a.b[0].c`` path of a composed YAML document to its 1-based line (for a
    mapping entry, the line of its key)."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            _collect_lines(value_node, child, out)
            out[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _collect_lines(item, f"{path}[{i}]", out)


class _Builder:
    def __init__(self, file: str, lines: dict[str, int], schema: Schema | None) -> None:
        self.file = file
        self.lines = lines
        self.schema = schema

    def fail(self, path: str, problem: str) -> MappingError:
        line = self.lines.get(path)
        return MappingError(self.file, f"{path} (line {line})" if line and path else path, problem)

    def guard(self, path: str, build: Callable[[], Any]) -> Any:
        try:
            return build()
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None

    def mapping(self, value: Any, path: str) -> AbcMapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, AbcMapping):
            raise self.fail(path, f"must be a mapping, got {type(value).__name__}")
        return value

    def no_unknown(self, doc: AbcMapping[str, Any], path: str, allowed: Iterable[str]) -> None:
        unknown = set(doc) - set(allowed)
        if unknown:
            first = sorted(map(str, unknown))[0]
            raise self.fail(
                f"{path}.{first}" if path else first,
                f"unknown key(s) {sorted(map(str, unknown))} "
                f"(allowed: {', '.join(sorted(allowed))})",
            )

    def template(self, value: Any, path: str) -> Template:
        if value is None:
            raise self.fail(path, "is required")
        return self.guard(path, lambda: Template.parse(str(value)))  # type: ignore[no-any-return]

    def name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(path, "must be a non-empty name")
        return value

    def build(self, data: Any) -> Mapping:
        doc = self.mapping(data, "")
        self.no_unknown(
            doc,
            "",
            {
                "version",
                "description",
                "source",
                "format",
                "max_bytes",
                "unmatched",
                "truncate",
                "max_future",
                "expired",
                "time",
                "changelog",
                "enrich",
                "prepare",
                "rules",
            },
        )
        if doc.get("version", 1) != 1:
            raise self.fail(
                "version", f"unsupported mapping version {doc['version']!r} (expected 1)"
            )
        source = self.name(doc.get("source"), "source")
        fmt = doc.get("format", "json")
        if fmt not in _FORMATS:
            raise self.fail("format", f"unknown format {fmt!r} (use one of {', '.join(_FORMATS)})")
        max_bytes = doc.get("max_bytes", DEFAULT_MAX_BYTES)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise self.fail("max_bytes", "must be a positive number of bytes")
        unmatched = doc.get("unmatched", "dead_letter")
        if unmatched not in ("dead_letter", "drop"):
            raise self.fail("unmatched", "must be dead_letter or drop")
        truncate = doc.get("truncate", "dead_letter")
        if truncate not in _TRUNCATE:
            raise self.fail("truncate", f"must be one of {', '.join(_TRUNCATE)}")
        expired = doc.get("expired", "dead_letter")
        if expired not in ("dead_letter", "drop"):
            raise self.fail("expired", "must be dead_letter or drop")
        max_future: int | None = DEFAULT_MAX_FUTURE_US
        if "max_future" in doc:
            raw_future = doc["max_future"]
            if raw_future is None or raw_future == "none":
                max_future = None
            else:
                max_future = self.guard("max_future", partial(parse_duration, raw_future))
        time = None
        if doc.get("time") is not None:
            time = self.guard("time", lambda: TimeSpec.parse(doc["time"]))
        changelog = []
        raw_changelog = doc.get("changelog") or []
        if isinstance(raw_changelog, AbcMapping):
            raw_changelog = [raw_changelog]
        if not isinstance(raw_changelog, list):
            raise self.fail("changelog", "must be a list of {table, key[, when]}")
        for i, cdoc in enumerate(raw_changelog):
            path = f"changelog[{i}]" if isinstance(doc["changelog"], list) else "changelog"
            cdoc = self.mapping(cdoc, path)
            self.no_unknown(cdoc, path, {"table", "key", "when"})
            changelog.append(
                _ChangelogSpec(
                    self.name(cdoc.get("table"), f"{path}.table"),
                    self.template(cdoc.get("key"), f"{path}.key"),
                    self.guard(f"{path}.when", partial(Condition.parse, cdoc.get("when"))),
                )
            )
        enrich = []
        raw_enrich = doc.get("enrich") or []
        if not isinstance(raw_enrich, list):
            raise self.fail("enrich", "must be a list of {table, key, as[, required]}")
        for i, edoc in enumerate(raw_enrich):
            path = f"enrich[{i}]"
            edoc = self.mapping(edoc, path)
            self.no_unknown(edoc, path, {"table", "key", "as", "required"})
            required = edoc.get("required", False)
            if not isinstance(required, bool):
                raise self.fail(f"{path}.required", "must be true or false")
            into = self.name(edoc.get("as"), f"{path}.as")
            self.guard(f"{path}.as", partial(parse_path, into))
            enrich.append(
                _EnrichSpec(
                    self.name(edoc.get("table"), f"{path}.table"),
                    self.template(edoc.get("key"), f"{path}.key"),
                    into,
                    required,
                )
            )
        prepare = None
        if doc.get("prepare") is not None:
            prepare = self.guard("prepare", lambda: import_hook(doc["prepare"]))
        raw_rules = doc.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise self.fail("rules", "needs a list of rules (each with `emit`)")
        rules = tuple(self.rule(r, f"rules[{i}]", i) for i, r in enumerate(raw_rules))
        return Mapping(
            self.file,
            source,
            fmt,
            max_bytes,
            unmatched,
            time,
            tuple(changelog),
            tuple(enrich),
            prepare,
            rules,
            self.schema,
            truncate,
            max_future,
            expired,
        )

    def rule(self, value: Any, path: str, index: int) -> Rule:
        doc = self.mapping(value, path)
        self.no_unknown(doc, path, {"name", "when", "time", "id", "emit", "hook"})
        name = doc.get("name", f"rule {index}")
        if not isinstance(name, str):
            raise self.fail(f"{path}.name", "must be text")
        when = self.guard(f"{path}.when", lambda: Condition.parse(doc.get("when")))
        time = None
        if doc.get("time") is not None:
            time = self.guard(f"{path}.time", lambda: TimeSpec.parse(doc["time"]))
        rid = self.template(doc["id"], f"{path}.id") if doc.get("id") is not None else None
        emit = doc.get("emit")
        if emit is None:
            emit = []
        if not isinstance(emit, list):
            raise self.fail(f"{path}.emit", "must be a list of outputs (an empty list drops)")
        outputs = tuple(self.output(o, f"{path}.emit[{i}]", i) for i, o in enumerate(emit))
        hook = None
        if doc.get("hook") is not None:
            hook = self.guard(f"{path}.hook", lambda: import_hook(doc["hook"]))
        return Rule(name, when, time, rid, outputs, hook)

    def output(self, value: Any, path: str, index: int) -> OutputSpec:
        doc = self.mapping(value, path)
        kinds = [k for k in _OUTPUT_KINDS if k in doc]
        if len(kinds) != 1:
            raise self.fail(path, f"give exactly one of {', '.join(_OUTPUT_KINDS)}")
        kind = kinds[0]
        common = {"when", "each", "as"}
        if kind in ("node", "delete_node"):
            allowed = common | {kind} | ({"props", "on_delete"} if kind == "node" else set())
        else:
            allowed = (
                common
                | {kind, "from", "to"}
                | ({"props", "on_delete"} if kind == "edge" else set())
            )
        self.no_unknown(doc, path, allowed)
        when = self.guard(f"{path}.when", lambda: Condition.parse(doc.get("when")))
        each = None
        if doc.get("each") is not None:
            each = self.guard(f"{path}.each", lambda: parse_path(doc["each"]))
        each_as = doc.get("as", "item")
        if not isinstance(each_as, str) or not each_as.isidentifier():
            raise self.fail(f"{path}.as", "must be a name")
        on_delete = doc.get("on_delete", "ignore")
        if on_delete not in _ON_DELETE:
            raise self.fail(f"{path}.on_delete", f"must be one of {', '.join(_ON_DELETE)}")
        props_doc = self.mapping(doc.get("props"), f"{path}.props")
        props = tuple(
            (str(n), self.guard(f"{path}.props.{n}", partial(ValueSpec.parse, v)))
            for n, v in props_doc.items()
        )
        node = src = dst = None
        edge_type = None
        if kind in ("node", "delete_node"):
            node = self.template(doc[kind], f"{path}.{kind}")
            self.check_node(node, f"{path}.{kind}", props if kind == "node" else (), path)
        else:
            edge_type = self.name(doc[kind], f"{path}.{kind}")
            src = self.template(doc.get("from"), f"{path}.from")
            dst = self.template(doc.get("to"), f"{path}.to")
            self.check_edge(edge_type, src, dst, props, path, kind)
        return OutputSpec(
            index, kind, node, edge_type, src, dst, props, when, each, each_as, on_delete
        )

    # -- checks against the schema, where the file names types literally ------------------

    def _static_type(self, t: Template) -> str | None:
        prefix = t.static_prefix
        return prefix.split(":", 1)[0] if ":" in prefix else None

    def check_node(
        self, t: Template, path: str, props: tuple[tuple[str, ValueSpec], ...], out_path: str
    ) -> None:
        if self.schema is None:
            return
        node_type = self._static_type(t)
        if node_type is None:
            return
        nt = self.schema.nodes.get(node_type)
        if nt is None:
            known = ", ".join(sorted(self.schema.nodes))
            raise self.fail(path, f"unknown node type {node_type!r} (known: {known})")
        self._check_props(nt.props.props, nt.props.additional, props, out_path)

    def check_edge(
        self,
        edge_type: str,
        src: Template,
        dst: Template,
        props: tuple[tuple[str, ValueSpec], ...],
        path: str,
        kind: str,
    ) -> None:
        if self.schema is None:
            return
        et = self.schema.edges.get(edge_type)
        if et is None:
            known = ", ".join(sorted(self.schema.edges))
            raise self.fail(f"{path}.{kind}", f"unknown edge type {edge_type!r} (known: {known})")
        for end, t in (("from", src), ("to", dst)):
            node_type = self._static_type(t)
            if node_type is not None and node_type not in self.schema.nodes:
                known = ", ".join(sorted(self.schema.nodes))
                raise self.fail(
                    f"{path}.{end}", f"unknown node type {node_type!r} (known: {known})"
                )
        st, dt = self._static_type(src), self._static_type(dst)
        if st is not None and dt is not None and et.mapping(st, dt) is None:
            allowed = ", ".join(f"{m.src_type}->{m.dst_type}" for m in et.mappings)
            raise self.fail(
                path, f"edge {edge_type!r} does not connect {st} -> {dt} (allowed: {allowed})"
            )
        self._check_props(et.props.props, et.props.additional, props, path)

    def _check_props(
        self,
        declared: AbcMapping[str, Any],
        additional: bool,
        props: tuple[tuple[str, ValueSpec], ...],
        path: str,
    ) -> None:
        if additional:
            return
        for name, _ in props:
            if name not in declared:
                raise self.fail(
                    f"{path}.props.{name}",
                    f"undeclared property {name!r} (declared: {sorted(declared) or 'none'})",
                )

"""The compiled fast path of a mapping gives exactly the interpreted pipeline's outputs.

The interpreted path (decoder, steps, :meth:`Schema.validate`) is the reference: every test
here runs the same records through pipelines built with ``compiled=True`` and through the
reference (:meth:`Pipeline.process_steps`) and requires identical mutations and dead letters
(reason, message, stage), on the demo company's records and on randomised hostile ones.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from hopcast.demo.company import Company, CompanyConfig
from hopcast.demo.records import CompanyRecords
from hopcast.durations import DAY, SECOND
from hopcast.graph.schema import Schema
from hopcast.stream import operators
from hopcast.stream.compiled import _iso_us, compile_mapping
from hopcast.stream.fields import to_us
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import Pipeline, SideTable
from hopcast.stream.record import Position, Record

SCHEMA = Schema.demo()
NOW = 1_796_500_000_000_000  # within the demo records' activity window (Dec 2026)


def _pipelines(compiled: bool) -> dict[str, Pipeline]:
    mappings = Mapping.load_dir(DEMO_MAPPINGS, SCHEMA)
    tables: dict[str, SideTable] = {}
    return {n: m.pipeline(SCHEMA, tables=tables, compiled=compiled) for n, m in mappings.items()}


def _demo_records(n: int = 400) -> list[tuple[str, bytes]]:
    company = Company(CompanyConfig(accounts=60, titles=200, seed=7), NOW - 2 * DAY)
    recs = CompanyRecords(company)
    out = [(r.source, r.value) for r in recs.snapshot(NOW - DAY)]
    out += [(r.source, r.value) for r in recs.activity(n, NOW - DAY, NOW)]
    return out


def _assert_same(
    records: list[tuple[str, bytes]], now: int = NOW, decode: Any = None
) -> dict[str, int]:
    """Run ``records`` through both and compare; returns how many took the fast path.
    With ``decode``, the fast paths are compiled with it (the reference's is patched)."""
    fast = _pipelines(True)
    ref = _pipelines(False)
    if decode is not None:
        mappings = Mapping.load_dir(DEMO_MAPPINGS, SCHEMA)
        for name, pipe in fast.items():
            if pipe.fast is not None:
                pipe.fast = compile_mapping(mappings[name], SCHEMA, pipe.size.max_bytes, decode)
    took = {"fast": 0, "fallback": 0}
    for i, (source, value) in enumerate(records):
        record = Record(source, Position("p0", 1000 + i), value, event_time=now - SECOND)
        expected = ref[source].process_steps(record, now)
        got = fast[source].process(record, now)
        assert got == expected, f"record {i} ({source}): {value[:300]!r}"
        pipe = fast[source]
        if pipe.fast is not None:
            try:
                ordinary = pipe.fast(record) is not None
            except Exception:  # the pipeline then takes the interpreted path
                ordinary = False
            took["fast" if ordinary else "fallback"] += 1
    for name in fast:
        assert fast[name].expired == ref[name].expired, f"expired count of {name}"
    return took


def test_the_demo_records_give_the_same_outputs_and_mostly_take_the_fast_path() -> None:
    took = _assert_same(_demo_records())
    assert took["fast"] > 10 * took["fallback"], took


def test_every_demo_mapping_without_steps_before_its_rules_is_compiled() -> None:
    pipes = _pipelines(True)
    compiled = {n for n, p in pipes.items() if p.fast is not None}
    assert compiled == {"browse", "games", "live", "members", "playback"}
    assert pipes["catalogue"].fast is None  # its changelog keeps side tables current


# -- hostile records ---------------------------------------------------------------------------

_ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    0,
    -1,
    1 << 63,
    (1 << 63) - 1,
    -(1 << 63) - 1,
    1 << 70,
    10**40,
    1.5,
    -0.0,
    1e300,
    True,
    False,
    [],
    {},
    [1, 2],
    {"a": 1},
    "ü",
    "\u00e9t\u00e9",
    "\ud800x",
    "\udfff",
    float("nan"),
    float("inf"),
    "ascii",
    "x" * 300,
    "y" * 70_000,
    "a:b",
    ":",
    "title",
    "live_event",
    "genre",
    "profile",
    "12",
    "2026-12-05T17:34:25.284949Z",
    "2026-12-05T17:34:25Z",
    "2026-12-05T17:34:25.284949+01:00",
    "2026-13-05T17:34:25.284949Z",
    "2026-12-05T24:00:00.000000Z",
    "2026-12-05T23:59:60.000000Z",
    "2026-12-05 17:34:25.284949Z",
    "2026-W49-6T17:34:25.28494Z",
    "1969-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999Z",
    "２０２６-12-05T17:34:25.284949Z",
    "not a time",
    "1796500000000",
    "17965e5",
    NOW,
    NOW // 1000,
    NOW + 2 * 3600 * SECOND,
    (NOW + 2 * 3600 * SECOND) // 1000,
    NOW - 200 * DAY,
    (NOW - 200 * DAY) // 1000,
    1 << 62,
    -5,
    "c",
    "d",
    "r",
    "t",
    "u",
    "x",
    "playback",
    "accounts",
    "profiles",
    "devices",
    "/v1/browse",
    399,
    400,
    "200",
    "false",
    "first",
    '["1","2"]',
    "[1",
]


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _odd(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return _deep(rng.choice([3, 40, 200]))
    if roll < 0.08:
        return [{"type": "title", "id": str(i)} for i in range(rng.choice([2, 1001, 5000]))]
    if roll < 0.10:
        return [rng.choice(_ODD_VALUES) for _ in range(3)]
    return rng.choice(_ODD_VALUES)


def _mutate(doc: Any, rng: random.Random) -> Any:
    """``doc`` with one to three of its fields removed, replaced by odd values, or added."""
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.1:
                return _odd(rng)
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        roll = rng.random()
        if roll < 0.3 and isinstance(parent, dict):
            del parent[last]
        elif roll < 0.4 and isinstance(parent, dict):
            parent[rng.choice(["extra", "ü", "", "item"])] = _odd(rng)
        else:
            parent[last] = _odd(rng)
    return doc


def _hostile(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    base = _demo_records(200)
    out: list[tuple[str, bytes]] = []
    for _ in range(n):
        source, value = rng.choice(base)
        roll = rng.random()
        if roll < 0.03:
            out.append((source, rng.choice([b"", b"{", b"[1,2]", b"null", b'"x"', b"\xff\xfe"])))
            continue
        doc = json.loads(value)
        if roll < 0.06 and "op" in doc:
            doc = {"schema": {}, "payload": rng.choice([doc, None, 5])}
        elif roll < 0.08:
            doc = {**doc, "pad": "z" * 300_000}  # beyond browse's max_bytes
        else:
            doc = _mutate(doc, rng)
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.02:
            text = text.replace("ü", "\\ud800")  # a lone surrogate escape
        out.append((source, text.encode("utf-8", "surrogatepass")))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hostile_records_give_the_same_mutations_and_dead_letters(seed: int) -> None:
    _assert_same(_hostile(1500, seed))


def test_values_json_cannot_carry_are_checked_as_the_schema_checks_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # msgspec refuses lone surrogates, NaN and infinities in JSON; json.loads lets them
    # through, so with it both paths meet them in fields, ids and properties
    monkeypatch.setattr(operators, "_json_decode", json.loads)
    _assert_same(_hostile(1500, 5), decode=json.loads)


def test_records_near_the_arrival_bounds_give_the_same_outputs() -> None:
    records = _demo_records(150)
    # the same records seen from far in the past (all future_time) and from far ahead (expired)
    _assert_same(records, now=NOW - 3 * DAY)
    _assert_same(records, now=NOW + 150 * DAY)


def test_a_pipeline_without_a_schema_gives_the_same_outputs() -> None:
    mappings = Mapping.load_dir(DEMO_MAPPINGS)
    for source, value in _hostile(400, 9) + _demo_records(100):
        m = mappings[source]
        fast = m.pipeline(None, compiled=True)
        ref = m.pipeline(None, compiled=False)
        record = Record(source, Position("0", 5), value)
        assert fast.process(record, NOW) == ref.process(record, NOW), value[:200]


def test_the_iso_fast_path_equals_to_us_on_what_it_accepts() -> None:
    rng = random.Random(4)
    for _ in range(3000):
        text = (
            f"{rng.randint(1, 9999):04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}T"
            f"{rng.randint(0, 25):02d}:{rng.randint(0, 61):02d}:{rng.randint(0, 61):02d}."
            f"{rng.randint(0, 999_999):06d}Z"
        )
        if rng.random() < 0.3:  # any character anywhere: other shapes, zones, separators
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice("0Z+-:. T\u0663xW") + text[i + 1 :]
        try:
            expected: int | None = to_us(text, "iso")
        except ValueError:
            expected = None
        try:
            got: int | None = _iso_us(text)
        except ValueError:
            got = None
        assert got == expected, text


# -- every feature of the mapping format, on a schema with required and extra properties ------

_SCHEMA = Schema.from_yaml(
    """
version: 1
defaults: {retention: 30d}
nodes:
  user: {props: {name: {type: str, required: true}, score: float, vip: bool, tags: list}}
  item: {retention: forever, props: {meta: map, n: int}}
  blob: {additional_props: true}
edges:
  likes:
    props: {weight: {type: float, required: true}, note: str}
    mappings: [{from: user, to: item}]
  friend:
    props: {since: int}
    mappings: [{from: user, to: user, two_way: true}]
  linked:
    additional_props: true
    mappings: [{from: item, to: blob, two_way: true}]
"""
)

_MAPPINGS = {
    "json": """
version: 1
source: app
format: json
max_bytes: 4096
time: {field: t, format: ms}
rules:
  - name: like
    when: {kind: like, n: {gte: 1, lt: 1000}, tag: {ne: spam, not_in: [x, y]}}
    id: "like-{uid}-{iid}"
    emit:
      - node: "user:{uid}"
        props: {name: {field: name, required: true}, score: {field: score, type: float},
                vip: {field: vip, type: bool, default: false}, tags: {field: tags, type: list}}
      - edge: likes
        from: "user:{uid}"
        to: "item:{iid}"
        props: {weight: {field: w, type: float}, note: "{note} by {uid}"}
      - edge: friend
        each: friends
        as: f
        from: "user:{uid}"
        to: "user:{f}"
        props: {since: {field: n, type: int}}
        when: {f: {matches: "^[a-z0-9]+$"}}
      - edge: linked
        each: links
        from: "{item.kind}:{item.id}"
        to: "{item.tk}:{item.to}"
        props: {extra: "{item.extra}", n: {template: "{n}", type: int}, const: [1, 2], nil: null}
  - name: seconds
    when: {kind: sec, n: {gt: 0, lte: 5}}
    time: {field: t, format: s}
    emit:
      - node: "{type}:{uid}"
        props: {name: "{name}", meta: {field: meta, type: map}, n: {field: n, type: int}}
  - name: iso
    when: {kind: iso, tag: {exists: false}}
    time: {field: t, format: iso}
    emit:
      - delete_node: "user:{uid}"
      - delete_edge: friend
        from: "user:{uid}"
        to: "user:{other}"
  - name: micros
    when: {kind: [us, us2]}
    time: {field: t, format: us}
    emit:
      - node: "blob:{uid}"
        props: {"{weird}": 1, whatever: "{name}", flag: {field: vip, type: bool}}
  - name: hooked
    when: {kind: hook}
    hook: compiled_test_hooks:extra
    emit: []
""",
    "cdc": """
version: 1
source: db
format: debezium
rules:
  - name: users
    when: {table: users}
    emit:
      - node: "user:{row.id}"
        props: {name: "{row.name}", score: {field: row.score, type: float}}
        on_delete: delete
      - edge: friend
        from: "user:{row.id}"
        to: "user:{row.best}"
        on_delete: upsert
        props: {since: {field: row.since, type: int, default: 0}}
      - edge: likes
        from: "user:{row.id}"
        to: "item:{row.fav}"
        props: {weight: {field: row.w, type: float}}
  - name: likes without a weight
    when: {table: unweighted}
    emit:
      - edge: likes
        from: "user:{row.id}"
        to: "item:{row.fav}"
        props: {note: "{row.note}"}
  - name: items
    when: {table: items}
    time: {field: source.ts_ms, format: ms}
    emit:
      - edge: linked
        each: row.blobs
        from: "item:{row.id}"
        to: "blob:{item}"
        on_delete: delete
""",
}


_HOOKS = """
from hopcast.graph.mutations import NodeUpsert

def extra(event):
    return [NodeUpsert(f"user:{event.get(('uid',))}", event.event_time, "h", {"name": "h"})]
"""


def _feature_records(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    t_ms = NOW // 1000
    bases: list[tuple[str, dict[str, Any]]] = [
        ("app", {"kind": "like", "n": 3, "tag": "ok", "t": t_ms, "uid": "u1", "iid": "i9",
                 "name": "Ann", "score": 2, "vip": "yes", "tags": '["a","b"]', "w": 0.5,
                 "note": "nice", "friends": ["u2", "u0", "BAD!"],
                 "links": [{"kind": "item", "id": "i9", "tk": "blob", "to": "b1", "extra": "e"},
                           {"kind": "blob", "id": "b3", "tk": "item", "to": "i9", "extra": "f"}]}),
        ("app", {"kind": "sec", "n": 2, "t": NOW // 1_000_000, "type": "item", "uid": "i3",
                 "name": "Box", "meta": '{"a": 1}'}),
        ("app", {"kind": "iso", "t": "2026-12-06T17:00:00.000001Z", "uid": "u1", "other": "u0"}),
        ("app", {"kind": "us", "t": NOW, "uid": "b7", "weird": "w", "name": "x", "vip": 1}),
        ("app", {"kind": "hook", "t": t_ms, "uid": "u5"}),
        ("db", {"op": "u", "before": None, "after": {"id": "u3", "name": "Cy", "score": 1.5,
                 "best": "u1", "since": 4, "fav": "i1", "w": 2},
                "source": {"table": "users", "ts_ms": t_ms, "lsn": 77, "snapshot": "false"}}),
        ("db", {"op": "d", "before": {"id": "u3", "name": "Cy", "best": "u9", "fav": "i1",
                 "w": 1.0}, "after": None, "source": {"table": "users", "ts_us": NOW}}),
        ("db", {"op": "c", "after": {"id": "u4", "fav": "i1", "note": "n"},
                "source": {"table": "unweighted", "ts_ms": t_ms}}),
        ("db", {"op": "c", "after": {"id": "i4", "blobs": ["b1", "b2"]},
                "source": {"table": "items", "ts_ms": t_ms}}),
        ("db", {"op": "d", "before": {"id": "i4", "blobs": '["b1"]'},
                "source": {"table": "items", "ts_ms": t_ms}}),
    ]  # fmt: skip
    out = [(s, json.dumps(d).encode()) for s, d in bases]
    for _ in range(n):
        source, doc = rng.choice(bases)
        doc = _mutate(json.loads(json.dumps(doc)), rng)
        out.append((source, json.dumps(doc).encode()))
    return out


@pytest.mark.parametrize("with_schema", [True, False])
def test_every_mapping_feature_gives_the_same_outputs_on_hostile_records(
    with_schema: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "compiled_test_hooks.py").write_text(_HOOKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    schema = _SCHEMA if with_schema else None
    # loaded without a schema, so that properties the schema does not declare reach it
    mappings = {s: Mapping.from_yaml(text) for s, text in _MAPPINGS.items()}
    by_source = {m.source: m for m in mappings.values()}
    fast = {s: m.pipeline(schema, compiled=True) for s, m in by_source.items()}
    ref = {s: m.pipeline(schema, compiled=False) for s, m in by_source.items()}
    assert all(p.fast is not None for p in fast.values())
    rng = random.Random(11)
    took = 0
    for i, (source, value) in enumerate(_feature_records(rng, 3000)):
        partition = "p" * 1100 if i % 97 == 5 else "p0"  # ids beyond the id bound
        record = Record(source, Position(partition, i), value)
        expected = ref[source].process_steps(record, NOW)
        assert fast[source].process(record, NOW) == expected, value[:300]
        with contextlib.suppress(Exception):
            took += fast[source].fast(record) is not None  # type: ignore[misc]
    assert took > 100, took  # the fast path is taken, not only the fallback

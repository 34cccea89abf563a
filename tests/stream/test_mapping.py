"""YAML mappings: rules, outputs, times, ids, CDC deletes, hooks, file errors with lines, and a new
vertical that needs only YAML (a mapping and a schema change), no code."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hopcast.errors import MappingError
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.memory import MemoryKV
from hopcast.stream.deadletter import DeadLetter, Reason
from hopcast.stream.mapping import Mapping
from hopcast.stream.operators import Output, split
from hopcast.stream.record import Position, Record
from hopcast.stream.rules import MAX_EACH

NOW = 1_764_147_600_000_000
T0 = 1_764_147_600_000  # ms
DEMO = Schema.demo()
DEMO_SCHEMA_TEXT = (Path(__file__).parents[2] / "src/hopcast/graph/demo_schema.yaml").read_text()


def mapping(text: str, schema: Schema | None = DEMO, name: str = "m.yaml") -> Mapping:
    return Mapping.from_yaml(textwrap.dedent(text), source=name, schema=schema)


def rec(value: dict[str, Any] | bytes, offset: int = 0, source: str = "src") -> Record:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Record(source, Position("p", offset), raw)


def run(m: Mapping, *values: dict[str, Any] | bytes, schema: Schema | None = DEMO) -> list[Output]:
    p = m.pipeline(schema)
    return p.process_many([rec(v, i) for i, v in enumerate(values)], NOW)


def dead(outputs: list[Output]) -> DeadLetter:
    (d,) = outputs
    assert isinstance(d, DeadLetter), outputs
    return d


PLAYS = """
    version: 1
    source: games
    time: {field: ts_ms, format: ms}
    rules:
      - name: plays
        when: {event: end}
        emit:
          - edge: plays
            from: "profile:{profile}"
            to: "game:{game}"
            props:
              minutes: {field: minutes, type: int}
              device: "device:{device}"
"""


def test_a_rule_turns_fields_into_an_edge_with_typed_props_and_a_position_id() -> None:
    out = run(
        mapping(PLAYS),
        {
            "event": "end",
            "ts_ms": T0,
            "profile": "1-0",
            "game": 4,
            "minutes": "12",
            "device": "1-1",
        },
    )
    assert out == [
        EdgeUpsert(
            "profile:1-0",
            "plays",
            "game:4",
            T0 * 1000,
            "src:p:0:0",
            {"minutes": 12, "device": "device:1-1"},
            0,  # seq: the record's offset (0) << 12 | its first output
        )
    ]


def test_a_missing_optional_prop_is_left_out_and_a_replay_gives_identical_mutations() -> None:
    m = mapping(PLAYS)
    value = {"event": "end", "ts_ms": T0, "profile": "1-0", "game": 4, "device": "1-1"}
    (first,) = run(m, value)
    assert isinstance(first, EdgeUpsert) and first.props == {"device": "device:1-1"}
    assert run(m, value) == [first]


def test_the_first_matching_rule_wins_and_an_empty_emit_drops_on_purpose() -> None:
    m = mapping("""
        version: 1
        source: s
        time: {field: t, format: us}
        rules:
          - {when: {kind: skip}, emit: []}
          - emit: [{node: "game:{id}"}]
    """)
    assert run(m, {"kind": "skip", "t": 1, "id": 1}) == []
    assert run(m, {"kind": "x", "t": 1, "id": 1}) == [NodeUpsert("game:1", 1, "src:p:0:0", seq=0)]


def test_unmatched_events_are_dead_letters_unless_the_file_says_drop() -> None:
    text = """
        version: 1
        source: s
        unmatched: {u}
        rules: [{{when: {{kind: a}}, emit: []}}]
    """
    assert dead(run(mapping(text.format(u="dead_letter")), {})).reason == Reason.UNMATCHED
    assert run(mapping(text.format(u="drop")), {}) == []


def test_each_fans_one_event_out_to_many_edges_with_output_conditions() -> None:
    m = mapping("""
        version: 1
        source: browse
        time: {field: ts, format: iso}
        rules:
          - emit:
              - edge: browsed
                each: items
                as: it
                from: "profile:{profile}"
                to: "{it.type}:{it.id}"
                props: {row: "{row}"}
                when: {it.type: [title, live_event]}
    """)
    items = [{"type": "title", "id": i} for i in range(30)] + [{"type": "ad", "id": 1}]
    out = run(m, {"ts": "2025-11-26T09:00:00Z", "profile": "1-0", "row": "top", "items": items})
    assert len(out) == 30
    assert {o.dst for o in out if isinstance(o, EdgeUpsert)} == {f"title:{i}" for i in range(30)}
    assert len({o.id for o in out if isinstance(o, EdgeUpsert)}) == 30
    assert run(m, {"ts": "2025-11-26T09:00:00Z", "profile": "1-0", "row": "r"}) == []
    too_many = [{"type": "title", "id": 1}] * (MAX_EACH + 1)
    assert (
        dead(
            run(m, {"ts": "2025-11-26T09:00:00Z", "profile": "1", "row": "r", "items": too_many})
        ).reason
        == Reason.BAD_VALUE
    )
    assert (
        dead(
            run(m, {"ts": "2025-11-26T09:00:00Z", "profile": "1", "row": "r", "items": "x"})
        ).reason
        == Reason.BAD_VALUE
    )


def test_a_rule_id_template_makes_ids_independent_of_the_position() -> None:
    m = mapping("""
        version: 1
        source: s
        rules:
          - id: "evt-{event_id}"
            time: {field: t, format: s}
            emit: [{node: "game:{g}"}, {node: "team:{g}"}]
    """)
    out = run(m, {"event_id": "e1", "t": 2, "g": 1})
    assert [o.id for o in out if isinstance(o, NodeUpsert)] == ["evt-e1:0", "evt-e1:1"]
    assert [o.ts for o in out if isinstance(o, NodeUpsert)] == [2_000_000, 2_000_000]


CDC = """
    version: 1
    source: members
    format: debezium
    rules:
      - when: {table: profiles}
        emit:
          - node: "profile:{row.profile_id}"
            props: {name: "{row.name}"}
            on_delete: %s
          - edge: has_profile
            from: "account:{row.account_id}"
            to: "profile:{row.profile_id}"
            on_delete: %s
"""


def cdc(op: str, row: dict[str, Any], ts_ms: int = T0) -> dict[str, Any]:
    image = {"before": row, "after": None} if op == "d" else {"before": None, "after": row}
    return {**image, "op": op, "source": {"table": "profiles", "ts_ms": ts_ms}, "ts_ms": ts_ms}


ROW = {"profile_id": "1-0", "account_id": "1", "name": "Ana"}


def test_a_cdc_delete_becomes_deletes_only_where_the_output_says_so() -> None:
    ts = T0 * 1000
    deleting = mapping(CDC % ("delete", "delete"))
    assert run(deleting, cdc("d", ROW)) == [
        NodeDelete("profile:1-0", ts, "src:p:0:0", 0),
        EdgeDelete("account:1", "has_profile", "profile:1-0", ts, "src:p:0:1", 1),
    ]
    assert run(mapping(CDC % ("ignore", "delete")), cdc("d", ROW)) == [
        EdgeDelete("account:1", "has_profile", "profile:1-0", ts, "src:p:0:1", 0),
    ]
    assert run(mapping(CDC % ("upsert", "ignore")), cdc("d", ROW)) == [
        NodeUpsert("profile:1-0", ts, "src:p:0:0", {"name": "Ana"}, 0),
    ]
    for op in "cur":
        kinds = [o.kind for o in run(deleting, cdc(op, ROW)) if not isinstance(o, DeadLetter)]
        assert kinds == ["node_upsert", "edge_upsert"]


def test_an_event_without_any_time_is_a_dead_letter() -> None:
    m = mapping("""
        version: 1
        source: s
        rules: [{emit: [{node: "game:{g}"}]}]
    """)
    d = dead(run(m, {"g": 1}))
    assert (d.reason, d.stage, d.mapping) == (Reason.MISSING_TIME, "map", "m.yaml")


# -- hooks -------------------------------------------------------------------------------------

HOOKS = """
from hopcast.errors import RecordRejected
from hopcast.graph.mutations import NodeUpsert


def extra(event):
    if event.data.get("fail") == "boom":
        raise RuntimeError("boom")
    if event.data.get("fail") == "reject":
        raise RecordRejected("bad_value", "the hook says no")
    if event.data.get("fail") == "junk":
        return ["not a mutation"]
    return [NodeUpsert("team:" + str(event.data["g"]), event.event_time, "hook", {"name": "T"})]


def prepare(event):
    if event.data.get("skip"):
        return None
    if event.data.get("fail") == "prepare":
        return {"not": "an event"}
    return event.with_side("g", event.data["g"] * 10)
"""


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "stream_test_hooks.py").write_text(HOOKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "stream_test_hooks"


def test_hooks_add_mutations_and_reshape_events(hooks: str) -> None:
    m = mapping(f"""
        version: 1
        source: s
        time: {{field: t, format: us}}
        prepare: {hooks}:prepare
        rules:
          - emit: [{{node: "game:{{g}}"}}]
            hook: {hooks}.extra
    """)
    assert run(m, {"t": 5, "g": 1}) == [
        NodeUpsert("game:10", 5, "src:p:0:0", seq=0),
        NodeUpsert("team:1", 5, "hook", {"name": "T"}, seq=1),  # numbered after the outputs
    ]
    assert run(m, {"t": 5, "g": 1, "skip": True}) == []
    reasons = [dead(run(m, {"t": 5, "g": 1, "fail": f})) for f in ("boom", "reject", "junk")]
    assert [(d.reason, d.stage) for d in reasons] == [
        (Reason.HOOK_ERROR, "map"),
        (Reason.BAD_VALUE, "map"),
        (Reason.HOOK_ERROR, "map"),
    ]
    assert "RuntimeError: boom" in reasons[0].message
    d = dead(run(m, {"t": 5, "g": 1, "fail": "prepare"}))
    assert (d.reason, d.stage) == (Reason.HOOK_ERROR, "prepare")


# -- errors in the file name the file, the path and the line --------------------------------


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("version: 1\nsource: s\nrulez: []\n", "rulez (line 3)", "unknown key"),
        ("version: 2\nsource: s\nrules: []\n", "version (line 1)", "unsupported"),
        ("source: s\nformat: avro\nrules: []\n", "format (line 2)", "unknown format"),
        ("source: s\nrules: []\n", "rules (line 2)", "needs a list"),
        ("rules: [{emit: []}]\n", "source", "non-empty name"),
        (
            "source: s\nrules:\n  - emit:\n      - node: 'gmae:{id}'\n",
            "rules[0].emit[0].node (line 4)",
            "unknown node type 'gmae'",
        ),
        (
            "source: s\nrules:\n  - emit:\n      - node: 'game:{id'\n",
            "rules[0].emit[0].node (line 4)",
            "unbalanced",
        ),
        (
            "source: s\nrules:\n  - emit:\n      - {node: 'game:{id}'}\n"
            "      - {edge: plyas, from: 'profile:{p}', to: 'game:{g}'}\n",
            "rules[0].emit[1].edge (line 5)",
            "unknown edge type 'plyas'",
        ),
        (
            "source: s\nrules:\n  - emit:\n"
            "      - {edge: plays, from: 'game:{p}', to: 'game:{g}'}\n",
            "rules[0].emit[0] (line 4)",
            "does not connect game -> game",
        ),
        (
            "source: s\nrules:\n  - emit:\n      - node: 'game:{id}'\n"
            "        props: {colour: red}\n",
            "rules[0].emit[0].props.colour (line 5)",
            "undeclared property 'colour'",
        ),
        (
            "source: s\nrules:\n  - emit:\n      - node: 'game:{id}'\n"
            "        props: {name: {field: n, type: text}}\n",
            "rules[0].emit[0].props.name (line 5)",
            "unknown type 'text'",
        ),
        (
            "source: s\nrules:\n  - emit: [{node: 'game:{id}', edge: plays}]\n",
            "rules[0].emit[0] (line 3)",
            "exactly one of",
        ),
        (
            "source: s\nrules:\n  - emit: [{node: 'game:{id}', on_delete: drop}]\n",
            "rules[0].emit[0].on_delete (line 3)",
            "must be one of",
        ),
        (
            "source: s\ntime: {field: ts, format: fortnights}\nrules: [{emit: []}]\n",
            "time (line 2)",
            "unknown time format",
        ),
        (
            "source: s\nrules:\n  - when: {n: {around: 1}}\n    emit: []\n",
            "rules[0].when (line 3)",
            "unknown test",
        ),
        (
            "source: s\nrules:\n  - emit: []\n    hook: no_such_module_here:fn\n",
            "rules[0].hook (line 4)",
            "cannot import hook module",
        ),
        (
            "source: s\nrules:\n  - emit: []\n    hook: hopcast.errors:nothing\n",
            "rules[0].hook (line 4)",
            "has no function 'nothing'",
        ),
        (
            "source: s\nenrich: [{table: t, key: '{k}', as: x, required: maybe}]\n"
            "rules: [{emit: []}]\n",
            "enrich[0].required (line 2)",
            "true or false",
        ),
        ("source: s\nchangelog: 5\nrules: [{emit: []}]\n", "changelog (line 2)", "list"),
        ("source: s\nmax_bytes: -1\nrules: [{emit: []}]\n", "max_bytes (line 2)", "positive"),
        ("source: [unclosed\n", "", "not valid YAML"),
        ("- a list\n", "", "must be a mapping"),
    ],
)
def test_errors_in_a_mapping_file_name_the_file_the_path_and_the_line(
    text: str, where: str, problem: str
) -> None:
    with pytest.raises(MappingError) as info:
        Mapping.from_yaml(text, source="games.yaml", schema=DEMO)
    err = info.value
    assert err.source == "games.yaml"
    assert err.path == where
    assert problem in err.problem
    assert str(err).startswith("games.yaml: ")


def test_without_a_schema_types_are_only_checked_when_records_flow() -> None:
    m = mapping("source: s\ntime: t\nrules: [{emit: [{node: 'gmae:{id}'}]}]\n", schema=None)
    assert dead(run(m, {"t": 1, "id": 1})).reason == Reason.SCHEMA_VIOLATION


def test_loading_names_unreadable_files_and_sources_mapped_twice(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read"):
        Mapping.load(tmp_path / "absent.yaml")
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("source: s\nrules: [{emit: []}]\n")
    with pytest.raises(MappingError, match="also mapped by"):
        Mapping.load_dir(tmp_path)


# -- a new vertical: YAML only ---------------------------------------------------------------

PODCAST_SCHEMA = DEMO_SCHEMA_TEXT.replace(
    "\nedges:\n",
    """
  podcast:
    retention: forever
    props: {name: str, host: str}
  episode:
    props: {title: str, duration_s: int}

edges:
  listened_to:
    props: {seconds: int, completed: bool}
    mappings:
      - {from: profile, to: episode}
  part_of:
    retention: forever
    mappings:
      - {from: episode, to: podcast}
""",
    1,
)

PODCAST_MAPPING = """
# The podcasts service's listening log (JSON lines).
version: 1
source: podcasts
format: json
time: {field: at, format: iso}
rules:
  - name: listen
    when: {kind: listen, seconds: {gt: 0}}
    emit:
      - node: "podcast:{show.id}"
        props: {name: "{show.name}", host: "{show.host}"}
      - node: "episode:{episode.id}"
        props:
          title: "{episode.title}"
          duration_s: {field: episode.duration, type: int}
      - edge: part_of
        from: "episode:{episode.id}"
        to: "podcast:{show.id}"
      - edge: listened_to
        from: "profile:{profile}"
        to: "episode:{episode.id}"
        props:
          seconds: {field: seconds, type: int}
          completed: {field: done, type: bool, default: false}
  - name: other
    emit: []
"""


def test_a_new_vertical_needs_only_a_mapping_file_and_a_schema_change(tmp_path: Path) -> None:
    (tmp_path / "schema.yaml").write_text(PODCAST_SCHEMA)
    (tmp_path / "podcasts.yaml").write_text(PODCAST_MAPPING)
    # The old schema has no podcasts: the mapping is refused, naming what is unknown.
    with pytest.raises(MappingError, match="unknown node type 'podcast'"):
        Mapping.load(tmp_path / "podcasts.yaml", DEMO)

    schema = Schema.load(tmp_path / "schema.yaml")
    pipeline = Mapping.load(tmp_path / "podcasts.yaml", schema).pipeline(schema)
    show = {"id": "p7", "name": "Deep Dive", "host": "Ana"}

    def listen(profile: str, episode: int, seconds: int, at: str, **kw: Any) -> dict[str, Any]:
        ep = {"id": f"p7-{episode}", "title": f"Episode {episode}", "duration": "1800"}
        return {
            "kind": "listen",
            "profile": profile,
            "show": show,
            "episode": ep,
            "seconds": seconds,
            "at": at,
            **kw,
        }

    values = [
        listen("1-0", 1, 600, "2025-11-26T09:00:00Z"),
        listen("1-0", 2, 1800, "2025-11-26T09:30:00Z", done="true"),
        listen("2-0", 1, 0, "2025-11-26T09:31:00Z"),  # not a listen: dropped by the rule
        {"kind": "subscribe", "profile": "2-0"},  # matched by `other`: dropped
        b"not json",
    ]
    records = [
        Record("podcasts", Position("0", i), v if isinstance(v, bytes) else json.dumps(v).encode())
        for i, v in enumerate(values)
    ]
    mutations, dead_letters = split(pipeline.process_many(records, NOW))
    assert [d.reason for d in dead_letters] == [Reason.MALFORMED_JSON]
    assert len(mutations) == 8

    store = GraphStore(MemoryKV(), schema, clock=lambda: NOW)
    store.apply(mutations)
    with store.read(NOW) as r:
        listened = [(e.dst, e.props) for e in r.edges("profile:1-0", "listened_to", "out")]
        assert listened == [
            ("episode:p7-2", {"seconds": 1800, "completed": True}),
            ("episode:p7-1", {"seconds": 600, "completed": False}),
        ]
        assert [e.dst for e in r.edges("episode:p7-1", "part_of", "out")] == ["podcast:p7"]
        episode = r.node("episode:p7-2")
        assert episode is not None
        assert episode.props == {"title": "Episode 2", "duration_s": 1800}
        podcast = r.node("podcast:p7")
        assert podcast is not None and podcast.props == {"name": "Deep Dive", "host": "Ana"}


def test_a_pipeline_validates_against_the_schema_its_file_was_loaded_with() -> None:
    m = mapping("""
        version: 1
        source: s
        time: {field: t, format: us}
        rules:
          - name: titles
            emit: [{node: "title:{id}", props: {year: "{year}"}}]
    """)
    d = dead(m.pipeline().process(rec({"t": 1, "id": 5, "year": "MMIX"}), NOW))
    assert (d.reason, d.stage) == (Reason.SCHEMA_VIOLATION, "validate")
    assert "year" in d.message


def test_rejections_inside_a_rule_name_the_rule() -> None:
    d = dead(run(mapping(PLAYS), {"event": "end", "ts_ms": T0, "game": 4}))
    assert d.reason == Reason.MISSING_FIELD
    assert d.message == "rule 'plays': field 'profile' is missing or null"


def test_the_format_example_in_the_module_docstring_is_a_valid_mapping() -> None:
    import hopcast.stream.mapping as module

    doc = module.__doc__ or ""
    example = doc.split("::\n", 1)[1].split("\n\n", 1)[0]
    no_hooks = "\n".join(line for line in example.splitlines() if "my_pkg" not in line)
    m = Mapping.from_yaml(textwrap.dedent(no_hooks), source="doc", schema=DEMO)
    assert (m.source, m.format, len(m.rules[0].outputs)) == ("playback", "debezium", 3)
    row = {
        "id": 9,
        "profile_id": "1-0",
        "title_id": "5",
        "device_id": "1-1",
        "position_s": 3,
        "genres": ["kids", ""],
        "updated_at": "2025-11-26T09:00:00Z",
    }
    envelope = {"op": "c", "after": row, "source": {"table": "playback", "ts_ms": T0}}
    out = m.pipeline().process(rec(envelope), NOW)
    assert [o.kind for o in out if not isinstance(o, DeadLetter)] == [
        "node_upsert",
        "edge_upsert",
        "edge_upsert",
    ]
    deleted = {"op": "d", "before": row, "source": {"table": "playback", "ts_ms": T0}}
    assert [o.kind for o in m.pipeline().process(rec(deleted), NOW)] == ["edge_delete"]

"""Decoders (JSON, Debezium), filter/project/time, side tables and enrichment, and the pipeline's
promise: a record's mutations, or exactly one dead letter, never an exception."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from hopcast.errors import RecordRejected
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.stream.deadletter import DeadLetter, Reason
from hopcast.stream.fields import Condition, Template, TimeSpec
from hopcast.stream.operators import (
    Changelog,
    Enrich,
    Filter,
    Pipeline,
    Project,
    SetTime,
    SideTable,
    decode_debezium,
    decode_json,
    split,
)
from hopcast.stream.record import Event, Position, Record

NOW = 1_764_147_600_000_000


def rec(value: bytes | dict[str, Any], offset: int = 0, source: str = "s", **kw: Any) -> Record:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Record(source, Position("0", offset), raw, **kw)


# -- Debezium golden examples (shapes as Debezium's PostgreSQL connector writes them) ----------

SOURCE = {
    "version": "2.7.0.Final",
    "connector": "postgresql",
    "name": "catalogue",
    "ts_ms": 1764147600100,
    "snapshot": "false",
    "db": "catalogue",
    "schema": "public",
    "table": "titles",
    "txId": 771,
    "lsn": 24023128,
}
TITLE_V1 = {"title_id": "5", "name": "Up", "year": 2009}
TITLE_V2 = {"title_id": "5", "name": "Up (Remastered)", "year": 2009}

CREATE = {"before": None, "after": TITLE_V1, "source": SOURCE, "op": "c", "ts_ms": 1764147600200}
UPDATE = {
    "before": TITLE_V1,
    "after": TITLE_V2,
    "source": {**SOURCE, "ts_ms": 1764147601100, "lsn": 24023200},
    "op": "u",
    "ts_ms": 1764147601200,
}
DELETE = {
    "before": {"title_id": "5", "name": None, "year": None},
    "after": None,
    "source": {**SOURCE, "ts_ms": 1764147602100, "lsn": 24023300},
    "op": "d",
    "ts_ms": 1764147602200,
}
READ = {
    "before": None,
    "after": TITLE_V1,
    "source": {**SOURCE, "snapshot": "true", "ts_ms": 1764147500000},
    "op": "r",
    "ts_ms": 1764147500100,
}


@pytest.mark.parametrize(
    ("envelope", "op", "row", "event_time"),
    [
        (CREATE, "c", TITLE_V1, 1764147600100_000),
        (UPDATE, "u", TITLE_V2, 1764147601100_000),
        (DELETE, "d", DELETE["before"], 1764147602100_000),
        (READ, "r", TITLE_V1, 1764147500000_000),
    ],
)
def test_debezium_change_events_decode_to_op_table_images_and_commit_time(
    envelope: dict[str, Any], op: str, row: dict[str, Any], event_time: int
) -> None:
    for wire in (envelope, {"schema": {"type": "struct", "fields": []}, "payload": envelope}):
        event = decode_debezium(rec(wire, key=b'{"title_id":"5"}'))
        assert event is not None
        assert (event.op, event.table, event.event_time) == (op, "titles", event_time)
        assert event.data["row"] == row
        assert event.data["before"] == envelope["before"]
        assert event.data["after"] == envelope["after"]
        assert event.get(("source", "lsn")) == envelope["source"]["lsn"]
        assert event.key == b'{"title_id":"5"}'


def test_debezium_prefers_microsecond_commit_times_and_falls_back_to_the_record() -> None:
    precise = {**CREATE, "source": {**SOURCE, "ts_us": 1764147600100123}}
    event = decode_debezium(rec(precise))
    assert event is not None and event.event_time == 1764147600100123
    bare = {"op": "c", "after": TITLE_V1}
    event = decode_debezium(rec(bare, event_time=42))
    assert event is not None and (event.event_time, event.table) == (42, None)


def test_a_debezium_truncate_is_an_event_without_a_row() -> None:
    truncate = {"before": None, "after": None, "op": "t", "source": {"table": "titles"}}
    event = decode_debezium(rec(truncate, event_time=42))
    assert event is not None and (event.op, event.table, event.data["row"]) == ("t", "titles", None)


def test_a_debezium_tombstone_carries_no_change_and_yields_no_event() -> None:
    assert decode_debezium(rec(b"")) is None
    assert decode_debezium(rec({"schema": {}, "payload": None})) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{not json", Reason.MALFORMED_JSON),
        (b"\xff\xfe", Reason.MALFORMED_JSON),
        (b"[1, 2]", Reason.MALFORMED_JSON),
        ({"before": None, "after": TITLE_V1}, Reason.BAD_ENVELOPE),
        ({**CREATE, "op": "z"}, Reason.BAD_ENVELOPE),
        ({**CREATE, "after": None}, Reason.BAD_ENVELOPE),
        ({**UPDATE, "after": None}, Reason.BAD_ENVELOPE),
        ({**DELETE, "before": None}, Reason.BAD_ENVELOPE),
        ({**CREATE, "after": [1]}, Reason.BAD_ENVELOPE),
        ({**CREATE, "source": "pg"}, Reason.BAD_ENVELOPE),
        ({"schema": {}, "payload": [1]}, Reason.BAD_ENVELOPE),
    ],
)
def test_broken_change_events_are_rejected_with_a_reason(
    value: bytes | dict[str, Any], reason: str
) -> None:
    with pytest.raises(RecordRejected) as info:
        decode_debezium(rec(value))
    assert info.value.reason == reason


def test_json_records_decode_to_their_object() -> None:
    event = decode_json(rec({"a": 1}, offset=3, event_time=7))
    assert (event.data, event.op, event.event_time, event.position) == (
        {"a": 1},
        None,
        7,
        Position("0", 3),
    )
    with pytest.raises(RecordRejected, match="expected a JSON object"):
        decode_json(rec(b'"text"'))


# -- filter, project, time ---------------------------------------------------------------------


def one(out: Iterable[Event | Mutation]) -> Event:
    items = list(out)
    assert len(items) == 1 and isinstance(items[0], Event)
    return items[0]


def test_filter_keeps_matching_events_and_drops_the_rest() -> None:
    f = Filter.where({"status": {"lt": 400}})
    assert list(f(decode_json(rec({"status": 200})))) != []
    assert list(f(decode_json(rec({"status": 500})))) == []


def test_project_keeps_renamed_fields_and_leaves_missing_ones_out() -> None:
    p = Project.of({"profile": "request.profile_id", "gone": "nope"})
    assert one(p(decode_json(rec({"request": {"profile_id": "1-0"}, "x": 1})))).data == {
        "profile": "1-0"
    }


def test_set_time_normalises_the_event_time_and_falls_back_to_the_source_time() -> None:
    step = SetTime(TimeSpec.parse({"field": "ts", "format": "iso"}))
    assert one(step(decode_json(rec({"ts": "2025-11-26T09:00:00Z"})))).event_time == NOW
    assert one(step(decode_json(rec({}, event_time=5)))).event_time == 5
    strict = SetTime(TimeSpec.parse({"field": "ts", "format": "iso"}), fallback=False)
    with pytest.raises(RecordRejected) as info:
        list(strict(decode_json(rec({}, event_time=5))))
    assert info.value.reason == Reason.MISSING_TIME


# -- side tables and enrichment ----------------------------------------------------------------


def test_a_side_table_keeps_the_newest_change_per_key_and_remembers_deletes() -> None:
    t = SideTable("titles")
    assert t.upsert("5", {"v": 2}, version=20)
    assert not t.upsert("5", {"v": 1}, version=10)  # late and older: ignored
    assert t.get("5") == {"v": 2}
    assert t.delete("5", version=30)
    assert not t.upsert("5", {"v": 1}, version=25)  # older than the delete: stays deleted
    assert "5" not in t and len(t) == 0
    assert t.upsert("5", {"v": 3})  # no version: always applies
    assert t.get("5") == {"v": 3} and len(t) == 1


class _TitleNames:
    """A tiny map step for the tests: a watch event becomes an edge named after the title."""

    name = "map"

    def __call__(self, event: Event) -> Iterable[Event | Mutation]:
        title = event.get(("title",))
        props = {"device": title["name"]} if isinstance(title, dict) else {}
        row = event.data["row"]
        return [
            EdgeUpsert(
                f"profile:{row['profile_id']}",
                "started_watching",
                f"title:{row['title_id']}",
                event.event_time or 0,
                f"w:{event.position.offset}",
                props,
            )
        ]


def _playback(offset: int, profile: str = "1-0") -> Record:
    after = {"profile_id": profile, "title_id": "5"}
    source = {"table": "playback", "ts_ms": 1764147700000 + offset}
    return rec({"op": "c", "after": after, "source": source}, offset, source="playback")


def test_enrichment_sees_catalogue_updates_and_deletes_without_a_restart() -> None:
    titles = SideTable("titles")
    catalogue = Pipeline(
        decode_debezium, [Changelog(titles, Template.parse("{row.title_id}"), passthrough=False)]
    )
    playback = Pipeline(
        decode_debezium, [Enrich(titles, Template.parse("{row.title_id}"), "title"), _TitleNames()]
    )

    def watched(offset: int) -> dict[str, Any]:
        (m,) = playback.process(_playback(offset), NOW)
        assert isinstance(m, EdgeUpsert)
        return m.props

    assert watched(1) == {}  # the catalogue has not arrived yet: enrichment is optional
    assert catalogue.process(rec(CREATE, 1, source="catalogue"), NOW) == []
    assert watched(2) == {"device": "Up"}
    catalogue.process(rec(UPDATE, 2, source="catalogue"), NOW)
    assert watched(3) == {"device": "Up (Remastered)"}
    catalogue.process(rec(DELETE, 3, source="catalogue"), NOW)
    assert watched(4) == {}
    # A replay of the old create (older commit time) does not bring the row back.
    catalogue.process(rec(CREATE, 1, source="catalogue"), NOW)
    assert watched(5) == {}


def test_a_required_side_row_that_is_absent_makes_a_dead_letter() -> None:
    titles = SideTable("titles")
    step = Enrich(titles, Template.parse("{row.title_id}"), "title", required=True)
    (dead,) = Pipeline(decode_debezium, [step, _TitleNames()]).process(_playback(1), NOW)
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.stage) == (Reason.ENRICHMENT_MISSING, "enrich")


def test_a_changelog_step_applies_only_the_events_its_condition_selects() -> None:
    titles = SideTable("titles")
    step = Changelog(titles, Template.parse("{row.title_id}"), Condition.parse({"table": "x"}))
    event = decode_debezium(rec(CREATE))
    assert event is not None
    assert one(step(event)) is event and len(titles) == 0


# -- the pipeline ------------------------------------------------------------------------------


class _Boom:
    name = "boom"

    def __call__(self, event: Event) -> Iterable[Event | Mutation]:
        if event.data.get("boom"):
            raise KeyError("surprise")
        return [NodeUpsert("title:1", 1, "a", {"name": "A"}), NodeUpsert("title:2", 1, "b")]


def test_every_kind_of_failure_becomes_one_dead_letter_and_good_records_flow() -> None:
    pipeline = Pipeline(decode_json, [_Boom()], schema=Schema.demo(), max_bytes=64, mapping="m")
    records = [
        rec({"ok": 1}, 0),
        rec(b"{", 1),
        rec({"boom": True}, 2),
        rec({"pad": "x" * 80}, 3),
        rec({"ok": 2}, 4),
    ]
    mutations, dead = split(pipeline.process_many(records, NOW))
    assert len(mutations) == 4
    assert [(d.position.offset, d.reason, d.stage) for d in dead] == [
        (1, Reason.MALFORMED_JSON, "decode"),
        (2, Reason.INTERNAL_ERROR, "boom"),
        (3, Reason.OVERSIZE, "size"),
    ]
    assert dead[0].payload == b"{" and dead[0].time == NOW and dead[0].mapping == "m"
    assert "KeyError" in dead[1].message


def test_a_record_whose_mutations_do_not_fit_the_schema_is_dead_lettered_whole() -> None:
    class Mixed:
        name = "map"

        def __call__(self, event: Event) -> Iterable[Event | Mutation]:
            return [
                NodeUpsert("title:1", 1, "a", {"name": "A"}),
                NodeUpsert("title:2", 1, "b", {"year": "x"}),
            ]

    (dead,) = Pipeline(decode_json, [Mixed()], schema=Schema.demo()).process(rec({}), NOW)
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.stage) == (Reason.SCHEMA_VIOLATION, "validate")
    assert "year" in dead.message


def test_events_that_no_step_consumed_are_unmatched_unless_the_pipeline_drops_them() -> None:
    (dead,) = Pipeline(decode_json).process(rec({}), NOW)
    assert isinstance(dead, DeadLetter) and dead.reason == Reason.UNMATCHED
    assert Pipeline(decode_json, unmatched="drop").process(rec({}), NOW) == []
    with pytest.raises(ValueError):
        Pipeline(decode_json, unmatched="ignore")


def test_the_schema_puts_two_way_edges_in_canonical_orientation() -> None:
    class Login:
        name = "map"

        def __call__(self, event: Event) -> Iterable[Event | Mutation]:
            return [EdgeUpsert("device:1-0", "logged_in_from", "account:1", NOW, "x")]

    (m,) = Pipeline(decode_json, [Login()], schema=Schema.demo()).process(rec({}), NOW)
    assert isinstance(m, EdgeUpsert) and (m.src, m.dst) == ("account:1", "device:1-0")


@pytest.mark.parametrize("ts", [-1, 2**62, None, 1.5])
def test_a_mutation_time_the_store_cannot_hold_is_a_dead_letter_not_a_failed_batch(
    ts: Any,
) -> None:
    class Odd:
        name = "map"

        def __call__(self, event: Event) -> Iterable[Event | Mutation]:
            return [NodeUpsert("title:1", ts, "a")]

    for schema in (None, Schema.demo()):
        (dead,) = Pipeline(decode_json, [Odd()], schema=schema).process(rec({}), NOW)
        assert isinstance(dead, DeadLetter)
        assert (dead.reason, dead.stage) == (Reason.SCHEMA_VIOLATION, "validate")


def test_an_empty_value_is_named_as_such_not_a_truncated_input() -> None:
    (dead,) = Pipeline(decode_json, []).process(rec(b""), NOW)
    assert isinstance(dead, DeadLetter) and dead.reason == Reason.MALFORMED_JSON
    assert "no value" in dead.message and "truncated" not in dead.message

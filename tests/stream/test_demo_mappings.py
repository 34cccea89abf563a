"""The demo company's mappings (``hopcast/stream/mappings``): golden records for each source, the
generator's whole world written as records in the documented shapes and mapped back to the same
mutations, and bad input of every kind dead-lettered while good input flows."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from typing import Any

import pytest

from hopcast.demo.company import Company, CompanyConfig
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.stream.deadletter import Reason
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import Pipeline, SideTable, split
from hopcast.stream.record import Position, Record

SCHEMA = Schema.demo()
START = 1_764_147_600_000_000  # 2025-11-26T09:00:00Z
NOW = START + 10**9


class Demo:
    """One pipeline per demo source, sharing side tables, with an offset per source."""

    def __init__(self) -> None:
        self.tables: dict[str, SideTable] = {}
        self.pipelines: dict[str, Pipeline] = {
            name: m.pipeline(SCHEMA, self.tables)
            for name, m in Mapping.load_dir(DEMO_MAPPINGS, SCHEMA).items()
        }
        self.offsets: dict[str, int] = defaultdict(int)

    def record(self, source: str, value: dict[str, Any] | bytes) -> Record:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        self.offsets[source] += 1
        return Record(source, Position("0", self.offsets[source]), raw)

    def run(self, source: str, value: dict[str, Any] | bytes) -> list[Any]:
        return self.pipelines[source].process(self.record(source, value), NOW)


def cdc(table: str, row: dict[str, Any], op: str = "r", ts_us: int = START) -> dict[str, Any]:
    images = {"before": row, "after": None} if op == "d" else {"before": None, "after": row}
    source = {"connector": "postgresql", "table": table, "ts_us": ts_us, "ts_ms": ts_us // 1000}
    return {**images, "op": op, "source": source, "ts_ms": ts_us // 1000}


def iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat()


def key(node_id: str) -> str:
    return node_id.partition(":")[2]


def shape(m: Mutation) -> tuple[Any, ...]:
    """A mutation without its idempotency id and seq (mapped from source positions)."""
    fields = [getattr(m, f) for f in m.__slots__ if f not in ("id", "props", "seq")]
    return (m.kind, *fields, json.dumps(getattr(m, "props", {}), sort_keys=True))


def test_every_demo_mapping_loads_against_the_demo_schema() -> None:
    assert sorted(Demo().pipelines) == [
        "browse",
        "catalogue",
        "games",
        "live",
        "members",
        "playback",
    ]


def test_a_browse_log_line_becomes_one_edge_per_item_and_refreshes_the_login() -> None:
    line = {
        "ts": "2025-11-26T09:00:00.123456Z",
        "method": "GET",
        "path": "/v1/browse",
        "status": 200,
        "request": {
            "account_id": "17",
            "profile_id": "17-0",
            "device_id": "17-1",
            "ip_country": "US",
            "page": "home",
            "row": "trending",
        },
        "response": {
            "items": [
                {"type": "title", "id": "5"},
                {"type": "live_event", "id": "2"},
                {"type": "ad", "id": "x"},
            ]
        },
    }
    out = Demo().run("browse", line)
    ts = START + 123_456
    assert [shape(m) for m in out] == [
        shape(
            EdgeUpsert(
                "profile:17-0", "browsed", "title:5", ts, "", {"row": "trending", "page": "home"}
            )
        ),
        shape(
            EdgeUpsert(
                "profile:17-0",
                "browsed",
                "live_event:2",
                ts,
                "",
                {"row": "trending", "page": "home"},
            )
        ),
        shape(
            EdgeUpsert("account:17", "logged_in_from", "device:17-1", ts, "", {"ip_country": "US"})
        ),
    ]
    assert Demo().run("browse", {**line, "status": 503}) == []


def test_catalogue_rows_fill_side_tables_and_deletes_remove_nodes() -> None:
    demo = Demo()
    row = {"title_id": "5", "name": "Up", "kind": "movie", "year": "2009", "genres": '["kids"]'}
    out = demo.run("catalogue", cdc("titles", row, "c"))
    assert [shape(m) for m in out] == [
        shape(NodeUpsert("title:5", START, "", {"name": "Up", "kind": "movie", "year": 2009})),
        shape(EdgeUpsert("title:5", "in_genre", "genre:kids", START, "")),
    ]
    assert demo.tables["titles"].get("5") == row
    out = demo.run("catalogue", cdc("titles", {"title_id": "5"}, "d", START + 1))
    assert [shape(m) for m in out] == [shape(NodeDelete("title:5", START + 1, ""))]
    assert demo.tables["titles"].get("5") is None


def test_a_deleted_playback_row_leaves_the_history_and_a_deleted_device_goes() -> None:
    demo = Demo()
    row = {"id": 1, "profile_id": "1-0", "title_id": "5", "device_id": "1-1", "updated_at": START}
    assert demo.run("playback", cdc("playback", row, "d")) == []
    out = demo.run("members", cdc("devices", {"device_id": "1-1", "account_id": "1"}, "d"))
    assert [shape(m) for m in out] == [shape(NodeDelete("device:1-1", START, ""))]


# -- the generator's world, written as records and mapped back ---------------------------------

CONFIG = CompanyConfig(accounts=25, titles=60, games=6, live_events=3, teams=8, seed=11)


def catalogue_rows(mutations: list[Mutation]) -> list[tuple[str, dict[str, Any]]]:
    """The catalogue service's rows behind the generator's catalogue mutations."""
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    id_column = {
        "genre": "name",
        "title": "title_id",
        "game": "game_id",
        "team": "team_id",
        "live_event": "event_id",
    }
    for m in mutations:
        if isinstance(m, NodeUpsert):
            node_type, k = m.node.split(":", 1)
            row = {id_column[node_type]: k, **m.props}
            if node_type == "title":
                row["genres"] = []
            if node_type == "live_event":
                row["team_ids"] = []
            rows[m.node] = (f"{node_type}s", row)
        elif isinstance(m, EdgeUpsert):
            row = rows[m.src][1]
            if m.src.startswith("title:"):
                row["genres"].append(key(m.dst))
            elif m.type == "in_genre":
                row["genre"] = key(m.dst)
            else:
                row["team_ids"].append(key(m.dst))
    return list(rows.values())


def member_rows(mutations: list[Mutation]) -> list[tuple[str, dict[str, Any]]]:
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in mutations:
        if isinstance(m, NodeUpsert):
            node_type, k = m.node.split(":", 1)
            rows[m.node] = (f"{node_type}s", {f"{node_type}_id": k, **m.props})
        elif isinstance(m, EdgeUpsert):
            rows[m.dst][1]["account_id"] = key(m.src)
            if m.type == "logged_in_from":
                rows[m.dst][1]["ip_country"] = m.props["ip_country"]
    return list(rows.values())


@pytest.mark.parametrize(
    ("source", "rows"), [("catalogue", catalogue_rows), ("members", member_rows)]
)
def test_the_generators_catalogue_and_members_map_back_exactly(source: str, rows: Any) -> None:
    company = Company(CONFIG, START)
    expected = list(company.catalogue() if source == "catalogue" else company.members())
    demo = Demo()
    out: list[Any] = []
    for table, row in rows(expected):
        out += demo.run(source, cdc(table, row))
    mutations, dead = split(out)
    assert dead == []
    assert sorted(map(shape, mutations)) == sorted(shape(SCHEMA.validate(m)) for m in expected)


def activity_record(m: EdgeUpsert) -> tuple[str, dict[str, Any], EdgeUpsert]:
    """The record a demo service would have written for one activity edge, and the edge the
    mapping is expected to produce from it (games log milliseconds)."""
    profile = key(m.src)
    account = profile.split("-")[0]
    p = m.props
    if m.type == "browsed":
        item_type, item_id = m.dst.split(":")
        return (
            "browse",
            {
                "ts": iso(m.ts),
                "method": "GET",
                "path": "/v1/browse",
                "status": 200,
                "request": {
                    "account_id": account,
                    "profile_id": profile,
                    "device_id": f"{account}-0",
                    "ip_country": "US",
                    "page": p["page"],
                    "row": p["row"],
                },
                "response": {"items": [{"type": item_type, "id": item_id}]},
            },
            m,
        )
    if m.type in ("started_watching", "streamed_from"):
        watching = m.type == "started_watching"
        row = {
            "id": f"{profile}/{key(m.dst)}",
            "profile_id": profile,
            "title_id": key(m.dst) if watching else key(str(p["title"])),
            "device_id": key(str(p["device"])) if watching else key(m.dst),
            "updated_at": m.ts,
        }
        row |= {"position_s": p["position_s"]} if watching else {"bitrate_kbps": p["bitrate_kbps"]}
        return "playback", cdc("playback", row, "u", m.ts), m
    if m.type == "plays":
        ms = m.ts // 1000
        expected = EdgeUpsert(m.src, m.type, m.dst, ms * 1000, m.id, m.props)
        return (
            "games",
            {
                "event": "game_session_end",
                "ts_ms": ms,
                "profile_id": profile,
                "game_id": key(m.dst),
                "device_id": key(str(p["device"])),
                "minutes": p["minutes"],
            },
            expected,
        )
    if m.type == "watched_live":
        return (
            "live",
            {
                "type": "live_join",
                "ts_us": m.ts,
                "profile_id": profile,
                "event_id": key(m.dst),
                "device_id": key(str(p["device"])),
                "minutes": p["minutes"],
            },
            m,
        )
    assert m.type == "supports", m
    return (
        "live",
        {
            "type": "team_follow",
            "ts_us": m.ts,
            "profile_id": profile,
            "team_id": key(m.dst),
            "via": p["source"],
        },
        m,
    )


def test_every_kind_of_generated_activity_maps_from_its_services_records() -> None:
    company = Company(CONFIG, START)
    demo = Demo()
    seen: set[str] = set()
    edges = [
        m for m in company.activity(3000, START, START + 3_600_000_000) if isinstance(m, EdgeUpsert)
    ]
    for m in edges:
        source, value, expected = activity_record(m)
        mutations, dead = split(demo.run(source, value))
        assert dead == [], (m, dead)
        assert shape(expected) in {shape(x) for x in mutations}, (m, mutations)
        seen.add(m.type)
    assert seen == {
        "browsed",
        "started_watching",
        "streamed_from",
        "plays",
        "watched_live",
        "supports",
    }


# -- bad input of every kind, good input still flowing -------------------------------------------


def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason_and_good_input_flows() -> None:
    demo = Demo()
    good_game = {
        "event": "game_session_end",
        "ts_ms": 1764147600123,
        "profile_id": "3-0",
        "game_id": "4",
        "device_id": "3-1",
        "minutes": 12,
    }
    batch: list[tuple[str, dict[str, Any] | bytes, str | None]] = [
        ("games", good_game, None),
        ("games", b'{"event": "game_session_end", ', Reason.MALFORMED_JSON),
        ("games", {**good_game, "minutes": "twelve"}, Reason.BAD_VALUE),
        ("games", {k: v for k, v in good_game.items() if k != "ts_ms"}, Reason.MISSING_TIME),
        ("games", {k: v for k, v in good_game.items() if k != "game_id"}, Reason.MISSING_FIELD),
        ("games", {**good_game, "profile_id": ""}, Reason.SCHEMA_VIOLATION),
        ("games", {**good_game, "event": "achievement"}, Reason.UNMATCHED),
        ("browse", {"ts": "now", "path": "/v1/browse", "status": 200}, Reason.BAD_VALUE),
        ("browse", b'{"pad": "' + b"x" * 300_000 + b'"}', Reason.OVERSIZE),
        ("playback", {"after": {"id": 1}, "source": {"table": "playback"}}, Reason.BAD_ENVELOPE),
        ("playback", {"op": "c", "after": {"profile_id": "1-0"}}, Reason.UNMATCHED),
        (
            "live",
            {
                "type": "team_follow",
                "ts_us": START,
                "profile_id": "1-0",
                "team_id": "2",
                "via": "search",
            },
            None,
        ),
        ("games", {**good_game, "ts_ms": good_game["ts_ms"] + 1}, None),
    ]
    produced = 0
    for source, value, reason in batch:
        mutations, dead = split(demo.run(source, value))
        if reason is None:
            assert dead == [] and len(mutations) == 1
            produced += 1
        else:
            assert mutations == [] and [d.reason for d in dead] == [reason], (value, dead)
            (d,) = dead
            assert d.source == source and d.position.offset == demo.offsets[source]
            assert d.payload == (value if isinstance(value, bytes) else json.dumps(value).encode())
            assert d.mapping is not None and d.mapping.endswith(f"{source}.yaml")
    assert produced == 3

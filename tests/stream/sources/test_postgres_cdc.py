"""PostgreSQL CDC against a real server (the session's, from deploy/postgres.sh): change events
in Debezium's format, in commit order, resumed from hopcast's stored position, confirmed to the
slot only on commit; and the source contract."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hopcast.durations import now_us
from hopcast.errors import ConfigError, SourceError
from hopcast.graphdb import Graph
from hopcast.ports import PortReservation
from hopcast.stream.deadletter import DeadLetterStore
from hopcast.stream.engines import EmbeddedEngine, engine_for, stored_positions
from hopcast.stream.mapping import DEMO_MAPPINGS
from hopcast.stream.mapping import Mapping as MappingFile
from hopcast.stream.operators import decode_debezium
from hopcast.stream.record import Position, Record
from hopcast.stream.sources import build_source, check_source_contract
from hopcast.stream.sources.postgres_cdc import (
    PostgresCDCSource,
    from_spec,
    lsn_from_str,
    lsn_to_str,
    position_offset,
    split_offset,
)

_names = itertools.count()


@pytest.fixture
def db(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def tag(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A unique name for this test's tables, slot and publication; all dropped afterwards."""
    name = f"t{next(_names)}_{int(time.time() * 1000) % 100000}"
    yield name
    for (slot,) in db.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s", (f"%{name}%",)
    ).fetchall():
        for _ in range(100):  # a just closed stream may hold the slot for a moment
            try:
                db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.05)
    db.execute(f"DROP PUBLICATION IF EXISTS hopcast_{name}")


def _tables(db: psycopg.Connection[Any], tag: str) -> tuple[str, str]:
    members, playback = f"members_{tag}", f"playback_{tag}"
    db.execute(f"CREATE TABLE {members} (id int PRIMARY KEY, name text, joined timestamp)")
    db.execute(
        f"CREATE TABLE {playback} (id bigint PRIMARY KEY, profile_id text, title_id text,"
        " position_s int, paused boolean, rate float8)"
    )
    return members, playback


def _drain(source: PostgresCDCSource, want: int, timeout_s: float = 30.0) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += source.poll(100, 0.2)
    got += source.poll(100, 0.3)  # anything beyond `want` is a failure of the caller's check
    return got


def _changes(records: list[Record]) -> list[tuple[str, str, Any, Any]]:
    out = []
    for record in records:
        event = decode_debezium(record)
        assert event is not None
        out.append((event.table or "", event.op or "", event.data["before"], event.data["after"]))
    return out


def _confirmed(source: PostgresCDCSource) -> int:
    return int(source.slot_state()["confirmed_flush_lsn"])


#: Bound on the server taking a confirmation in (the walsender reads the standby status the
#: source sent); milliseconds normally.
CONFIRM_TIMEOUT_S = 30.0


def _wait_confirmed_at_least(source: PostgresCDCSource, lsn: int) -> int:
    """The slot's confirmed position once it reaches ``lsn`` (the caller checks how far)."""
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while (confirmed := _confirmed(source)) < lsn:
        assert time.monotonic() < deadline, f"the slot did not confirm {lsn} (at {confirmed})"
        time.sleep(0.05)
    return confirmed


def test_changes_on_several_tables_arrive_as_debezium_events_and_resume_exactly(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, playback = _tables(db, tag)
    source = PostgresCDCSource(
        "members", postgres_dsn, tables=[members, f"public.{playback}"], slot=f"hopcast_{tag}"
    )
    source.open({})
    created = _confirmed(source)

    db.execute(f"INSERT INTO {members} VALUES (1, 'ann', '2026-01-02 03:04:05.25')")
    with db.transaction():
        db.execute(f"INSERT INTO {playback} VALUES (10, 'p1', 't1', 0, false, 1.5)")
        db.execute(f"UPDATE {playback} SET position_s = 30 WHERE id = 10")
        db.execute(f"INSERT INTO {members} VALUES (2, 'bob', NULL)")
    db.execute(f"UPDATE {members} SET name = 'anne' WHERE id = 1")
    db.execute(f"DELETE FROM {playback} WHERE id = 10")

    first = _drain(source, 6)
    ann = {"id": 1, "name": "ann", "joined": 1767323045250000}  # µs since the epoch
    row10 = {"id": 10, "profile_id": "p1", "title_id": "t1", "paused": False, "rate": 1.5}
    key_only = {
        "id": 10,
        "profile_id": None,
        "title_id": None,
        "position_s": None,
        "paused": None,
        "rate": None,
    }
    assert _changes(first) == [
        (members, "c", None, ann),
        (playback, "c", None, {**row10, "position_s": 0}),
        (playback, "u", None, {**row10, "position_s": 30}),
        (members, "c", None, {"id": 2, "name": "bob", "joined": None}),
        (members, "u", None, {**ann, "name": "anne"}),
        (playback, "d", key_only, None),  # REPLICA IDENTITY DEFAULT: the key only
    ]
    offsets = [r.position.offset for r in first]
    assert offsets == sorted(offsets) and len(set(offsets)) == 6
    assert {r.position.partition for r in first} == {f"hopcast_{tag}"}
    assert [json.loads(r.key or b"") for r in first][:2] == [{"id": 1}, {"id": 10}]
    doc = json.loads(first[1].value)
    assert doc["source"]["table"] == playback and doc["source"]["schema"] == "public"
    assert doc["source"]["txId"] == json.loads(first[3].value)["source"]["txId"]
    assert doc["source"]["ts_us"] == first[1].event_time
    assert abs(doc["source"]["ts_ms"] - time.time() * 1000) < 60_000

    # Nothing confirmed until hopcast says it is durable; then up to the committed record.
    time.sleep(0.3)
    assert _confirmed(source) == created
    stored = first[3].position  # the last change of the three-change transaction
    source.commit({stored.partition: stored})
    after_commit = _wait_confirmed_at_least(source, created + 1)
    commit_lsn, _ = split_offset(stored.offset)
    assert after_commit > commit_lsn  # the end of that transaction
    assert after_commit < split_offset(first[4].position.offset)[0]  # not the next one
    source.close()

    # Changes while hopcast is away; resume from the stored position: exactly what is new.
    db.execute(f"INSERT INTO {members} VALUES (3, 'cy', NULL)")
    db.execute(f"DELETE FROM {members} WHERE id = 2")
    again = PostgresCDCSource("members", postgres_dsn, tables=[members], slot=f"hopcast_{tag}")
    again.open({stored.partition: stored})
    rest = _drain(again, 4)
    assert [r.value for r in rest[:2]] == [r.value for r in first[4:]]  # same bytes on replay
    assert _changes(rest[2:]) == [
        (members, "c", None, {"id": 3, "name": "cy", "joined": None}),
        (members, "d", {"id": 2, "name": None, "joined": None}, None),
    ]
    assert len(rest) == 4
    again.commit({rest[-1].position.partition: rest[-1].position})
    assert _wait_confirmed_at_least(again, after_commit + 1) > after_commit
    again.close()

    # Everything committed: a reopen at the last position delivers nothing.
    last = PostgresCDCSource("members", postgres_dsn, slot=f"hopcast_{tag}")
    last.open({rest[-1].position.partition: rest[-1].position})
    assert last.poll(100, 0.5) == []
    last.close()


def test_a_resume_inside_a_transaction_is_exact_and_confirms_only_whole_transactions(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, _ = _tables(db, tag)
    source = PostgresCDCSource("m", postgres_dsn, tables=[members], slot=f"hopcast_{tag}")
    source.open({})
    created = _confirmed(source)
    with db.transaction():
        for i in range(5):
            db.execute(f"INSERT INTO {members} VALUES ({i}, 'n{i}', NULL)")
    records = _drain(source, 5)
    assert len(records) == 5
    source.commit({records[2].position.partition: records[2].position})
    time.sleep(0.3)
    assert _confirmed(source) == created  # the transaction is not wholly written yet
    source.close()

    source.open({records[2].position.partition: records[2].position})
    assert [r.value for r in _drain(source, 2)] == [r.value for r in records[3:]]
    source.close()


def test_replica_identity_full_gives_the_whole_old_row(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, _ = _tables(db, tag)
    source = PostgresCDCSource(
        "m", postgres_dsn, tables=[members], slot=f"hopcast_{tag}", replica_identity_full=True
    )
    source.open({})
    db.execute(f"INSERT INTO {members} VALUES (1, 'ann', NULL)")
    db.execute(f"UPDATE {members} SET name = 'anne' WHERE id = 1")
    db.execute(f"DELETE FROM {members} WHERE id = 1")
    ann = {"id": 1, "name": "ann", "joined": None}
    assert _changes(_drain(source, 3)) == [
        (members, "c", None, ann),
        (members, "u", ann, {**ann, "name": "anne"}),
        (members, "d", {**ann, "name": "anne"}, None),
    ]
    source.close()


def test_the_source_contract_holds(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, playback = _tables(db, tag)
    slot = f"hopcast_{tag}"
    PostgresCDCSource("c", postgres_dsn, tables=[members, playback], slot=slot).open({})
    for i in range(4):
        db.execute(f"INSERT INTO {members} VALUES ({i}, 'm{i}', NULL)")
    with db.transaction():
        for i in range(5):
            db.execute(f"INSERT INTO {playback} VALUES ({i}, 'p', 't', {i}, true, 0)")
    db.execute(f"UPDATE {members} SET name = 'x' WHERE id < 3")

    def make() -> PostgresCDCSource:
        return PostgresCDCSource("c", postgres_dsn, slot=slot)

    probe = make()
    probe.open({})
    values = [r.value for r in _drain(probe, 12)]
    probe.close()
    assert len(values) == 12
    check_source_contract(make, values, max_records=5)


def test_missing_publication_or_slot_without_create_is_a_config_error(
    tag: str, postgres_dsn: str
) -> None:
    source = PostgresCDCSource("m", postgres_dsn, slot=f"hopcast_{tag}", create=False)
    with pytest.raises(ConfigError, match="does not exist"):
        source.open({})


def test_an_unreachable_server_is_a_source_error() -> None:
    source = PostgresCDCSource("m", "postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(SourceError, match="source 'm'"):
        source.open({})


def test_specs_build_sources() -> None:
    source = build_source(
        "pb", "postgres:postgresql://u@h:5/db#tables=a,s.b&slot=s1&replica_identity_full=yes"
    )
    assert isinstance(source, PostgresCDCSource)
    assert (source.dsn, source.tables, source.slot, source.publication) == (
        "postgresql://u@h:5/db",
        ["a", "s.b"],
        "s1",
        "s1",
    )
    assert source.replica_identity_full and source.create
    assert from_spec("My-Src", "dbname=x").slot == "hopcast_my_src"
    with pytest.raises(ConfigError, match="unknown postgres option"):
        from_spec("x", "dbname=x#tabels=a")
    with pytest.raises(ConfigError, match="not yes or no"):
        from_spec("x", "dbname=x#create=maybe")


def test_lsn_and_offset_forms() -> None:
    assert lsn_to_str(0x1_016B_3748) == "1/16B3748"
    assert lsn_from_str("1/16B3748") == 0x1_016B_3748
    offset = position_offset(0x1_016B_3748, 7)
    assert split_offset(offset) == (0x1_016B_3748, 7)
    # Every change of a transaction of any size has its own offset, and they grow.
    assert position_offset(5, 70_000) > position_offset(5, 65_535) > position_offset(5, 0)
    assert position_offset(6, 0) > position_offset(5, (1 << 40))
    for lsn, index in [(1, 0), ((1 << 64) - 1, (1 << 64) - 1), (0x1_016B_3748, 66_000)]:
        stored = Position("s", position_offset(lsn, index))
        assert Position.from_bytes(stored.to_bytes()) == stored
        assert split_offset(stored.offset) == (lsn, index)
    # Offsets stored by earlier versions ((commit LSN << 16) | index) still read.
    assert split_offset((0x1_016B_3748 << 16) | 7) == (0x1_016B_3748, 7)


def test_after_a_commit_the_slot_follows_unrelated_write_traffic(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, playback = _tables(db, tag)
    # the source tells the server where it is every second while polling
    source = PostgresCDCSource(
        "m", postgres_dsn, tables=[members], slot=f"hopcast_{tag}", status_interval_s=1.0
    )
    source.open({})
    db.execute(f"INSERT INTO {members} VALUES (1, 'ann', NULL)")
    records = _drain(source, 1)
    source.commit({records[0].position.partition: records[0].position})
    db.execute(f"INSERT INTO {playback} VALUES (1, 'p', 't', 0, false, 0)")  # not published
    (wal,) = db.execute("SELECT pg_current_wal_lsn()::text").fetchone()  # type: ignore[misc]
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while _confirmed(source) < lsn_from_str(wal):  # WAL is not pinned by an idle slot
        assert time.monotonic() < deadline, f"the idle slot stayed behind {wal}"
        assert source.poll(10, 0.2) == []
    source.close()


def test_a_server_without_wal_level_logical_is_refused_with_the_fix(
    reserved_port: PortReservation,
) -> None:
    script = Path(__file__).resolve().parents[3] / "deploy" / "postgres.sh"
    port = str(reserved_port.port)  # PostgreSQL binds it (SO_REUSEADDR); nothing else can
    directory = tempfile.mkdtemp(prefix="hopcast-postgres-replica-")
    env = {**os.environ, "PG_OPTS": "-c wal_level=replica"}
    cmd = [str(script), "start", "--port", port, "--dir", directory]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert started.returncode == 0, started.stderr
    try:
        dsn = started.stdout.strip().splitlines()[-1]
        with pytest.raises(ConfigError, match=r"wal_level=replica.*needs wal_level=logical"):
            PostgresCDCSource("m", dsn, tables=["x"]).open({})
    finally:
        cmd[1] = "stop"
        subprocess.run(cmd, capture_output=True, timeout=60, check=True)
        shutil.rmtree(directory, ignore_errors=True)


def test_polls_with_a_zero_timeout_never_block_and_still_deliver(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, _ = _tables(db, tag)
    # A poll that ignored its zero timeout would block in select() for the status interval:
    # make that long, so "did not block" is a bound no busy machine comes near.
    source = PostgresCDCSource(
        "m", postgres_dsn, tables=[members], slot=f"hopcast_{tag}", status_interval_s=60.0
    )
    source.open({})
    db.execute(f"INSERT INTO {members} VALUES (1, 'ann', NULL)")
    got: list[Record] = []
    deadline = time.monotonic() + 30
    while not got:
        assert time.monotonic() < deadline, "the insert did not arrive in 30 s of polls"
        began = time.monotonic()
        got = source.poll(10, 0)
        assert time.monotonic() - began < 30, "a poll with a zero timeout blocked"
        time.sleep(0.01)
    assert [json.loads(r.value)["after"]["name"] for r in got] == ["ann"]
    source.close()


def test_the_embedded_engine_maps_cdc_into_the_graph_and_resumes_from_its_checkpoint(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str, tmp_path: Path
) -> None:
    # The demo's playback mapping (source 'playback', table 'playback') over real CDC.
    schema = f"svc_{tag}"
    db.execute(f"CREATE SCHEMA {schema}")
    db.execute(
        f"CREATE TABLE {schema}.playback (id bigint PRIMARY KEY, profile_id text, title_id text,"
        " device_id text, position_s int, bitrate_kbps int, updated_at timestamp)"
    )
    slot = f"hopcast_{tag}"

    def run_engine(graph: Graph) -> EmbeddedEngine:
        source = PostgresCDCSource(
            "playback", postgres_dsn, tables=[f"{schema}.playback"], slot=slot
        )
        maps = MappingFile.load_dir(DEMO_MAPPINGS, graph.schema)
        engine = engine_for(graph, [source], {"playback": maps["playback"]}, batch_ms=50)
        engine.open()
        deadline = time.monotonic() + 10
        while engine.stats.events < want and time.monotonic() < deadline:
            engine.step()
        engine.run(until_idle=True)
        return engine

    def watching(graph: Graph, profile: str) -> dict[str, Any]:
        edges = graph.neighbours(f"profile:{profile}", "started_watching", now=now_us()).edges
        return {e.other(f"profile:{profile}"): e.props.get("position_s") for e in edges}

    def write(sql: str) -> None:
        db.execute(sql.replace("playback", f"{schema}.playback"))

    setup = PostgresCDCSource("playback", postgres_dsn, tables=[f"{schema}.playback"], slot=slot)
    setup.open({})  # publication and slot exist from here on: changes made now are captured
    setup.close()
    write("INSERT INTO playback VALUES (1, 'p1', 't1', 'd1', 10, 3000, now())")
    write("INSERT INTO playback VALUES (2, 'p1', 't2', 'd1', 0, 3000, now())")
    write("UPDATE playback SET position_s = 95, updated_at = now() WHERE id = 1")
    want = 3
    with Graph.open(tmp_path / "g") as graph:
        first = run_engine(graph)
        assert (first.stats.events, first.stats.dead_letters) == (3, 0)
        assert watching(graph, "p1") == {"title:t1": 95, "title:t2": 0}
        stored = stored_positions(graph.store, ["playback"])["playback"][slot]

    # The engine committed what it wrote: the slot is confirmed past the stored position.
    state = PostgresCDCSource("playback", postgres_dsn, slot=slot).slot_state()
    assert state["confirmed_flush_lsn"] > split_offset(stored.offset)[0]

    write("UPDATE playback SET position_s = 40, updated_at = now() WHERE id = 2")
    write("INSERT INTO playback VALUES (3, 'p2', 't1', 'd2', 5, 800, now())")
    want = 2
    with Graph.open(tmp_path / "g") as graph:
        second = run_engine(graph)
        assert (second.stats.events, second.stats.dead_letters) == (2, 0)  # only the new ones
        assert watching(graph, "p1") == {"title:t1": 95, "title:t2": 40}
        assert watching(graph, "p2") == {"title:t1": 5}


def test_values_follow_debeziums_defaults(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    table = f"kinds_{tag}"
    db.execute(
        f"CREATE TABLE {table} (id smallint PRIMARY KEY, big bigint, ok boolean, f4 real,"
        " f8 float8, n numeric(10, 2), t text, ts timestamp, tz timestamptz, d date, tm time,"
        " b bytea, j jsonb, u uuid, arr int[])"
    )
    source = PostgresCDCSource("k", postgres_dsn, tables=[table], slot=f"hopcast_{tag}")
    source.open({})
    db.execute(
        f"INSERT INTO {table} VALUES (1, 9007199254740993, true, 0.1, 'NaN', 12.50, 'ünï',"
        " '2026-03-04 05:06:07.089', '2026-03-04 07:06:07+02', '1970-01-11', '01:02:03.5',"
        " '\\x00ff', '{\"a\": [1]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,2}')"
    )
    db.execute(f"INSERT INTO {table} (id, ts, d) VALUES (2, 'infinity', '-infinity')")
    first, second = (json.loads(r.value)["after"] for r in _drain(source, 2))
    assert first == {
        "id": 1,
        "big": 9007199254740993,
        "ok": True,
        "f4": 0.1,
        "f8": "NaN",
        "n": "12.50",
        "t": "ünï",
        "ts": 1772600767089000,
        "tz": "2026-03-04T05:06:07.000000Z",
        "d": 10,
        "tm": 3723500000,
        "b": "AP8=",
        "j": '{"a": [1]}',
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "arr": "{1,2}",
    }
    assert (second["ts"], second["d"], second["ok"]) == ("infinity", "-infinity", None)
    source.close()


def test_tables_missing_from_an_existing_publication_are_added_or_refused(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, playback = _tables(db, tag)
    slot = f"hopcast_{tag}"
    first = PostgresCDCSource("m", postgres_dsn, tables=[members], slot=slot)
    first.open({})
    first.close()
    strict = PostgresCDCSource(
        "m", postgres_dsn, tables=[members, playback], slot=slot, create=False
    )
    with pytest.raises(ConfigError, match=f"does not include public.{playback}"):
        strict.open({})
    grown = PostgresCDCSource("m", postgres_dsn, tables=[members, playback], slot=slot)
    grown.open({})
    db.execute(f"INSERT INTO {playback} VALUES (1, 'p', 't', 0, false, 0)")
    assert _changes(_drain(grown, 1))[0][:2] == (playback, "c")
    grown.close()


def _ops(records: list[Record]) -> list[tuple[str, str, Any]]:
    return [(t, op, (after or before)["id"]) for t, op, before, after in _changes(records)]


def test_an_initial_snapshot_reads_existing_rows_then_streams_from_where_they_leave_off(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, playback = _tables(db, tag)
    db.execute(f"INSERT INTO {members} SELECT i, 'm' || i, NULL FROM generate_series(1, 5) i")
    db.execute(f"INSERT INTO {playback} VALUES (7, 'p', 't', 3, false, 1)")
    slot = f"hopcast_{tag}"

    def make() -> PostgresCDCSource:
        return PostgresCDCSource(
            "m", postgres_dsn, tables=[members, playback], slot=slot, snapshot=True
        )

    source = make()
    source.open({})
    db.execute(f"UPDATE {members} SET name = 'five' WHERE id = 5")  # after the snapshot's start
    got = _drain(source, 7)
    assert _ops(got) == [(members, "r", i) for i in range(1, 6)] + [
        (playback, "r", 7),
        (members, "u", 5),
    ]
    snap = [r for r in got if r.position.partition == source.snapshot_partition]
    assert [r.position.offset for r in snap] == [0, 1, 2, 3, 4, 5 | 1 << 62]
    docs = [json.loads(r.value) for r in snap]
    assert [d["source"]["snapshot"] for d in docs] == ["true"] * 5 + ["last"]
    assert docs[4]["after"] == {"id": 5, "name": "m5", "joined": None}  # as it was
    assert json.loads(snap[0].key or b"") == {"id": 1}
    source.close()

    # Everything stored: no snapshot again, only what is new.
    stored = {
        snap[-1].position.partition: snap[-1].position,
        got[-1].position.partition: got[-1].position,
    }
    db.execute(f"DELETE FROM {members} WHERE id = 1")
    again = make()
    again.open(stored)
    assert _ops(_drain(again, 1)) == [(members, "d", 1)]
    again.close()


def test_an_interrupted_snapshot_is_taken_again_after_the_stored_offset(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    members, _ = _tables(db, tag)
    db.execute(f"INSERT INTO {members} SELECT i, 'm' || i, NULL FROM generate_series(1, 4) i")
    slot = f"hopcast_{tag}"

    def make() -> PostgresCDCSource:
        return PostgresCDCSource("m", postgres_dsn, tables=[members], slot=slot, snapshot=True)

    source = make()
    source.open({})
    first = source.poll(2, 5)
    assert _ops(first) == [(members, "r", 1), (members, "r", 2)]
    source.close()  # hopcast stored the second row, then stopped
    db.execute(f"UPDATE {members} SET name = 'two' WHERE id = 2")
    db.execute(f"INSERT INTO {members} VALUES (9, 'm9', NULL)")

    again = make()
    again.open({first[-1].position.partition: first[-1].position})
    got = _drain(again, 7)
    # The tables as they are now, after the stored offset; then the slot's changes since its
    # creation (the same facts again: last-write-wins absorbs them).
    ops = _ops(got)
    assert sorted(ops[:5]) == [(members, "r", i) for i in (1, 2, 3, 4, 9)]  # in heap order
    assert ops[5:] == [(members, "u", 2), (members, "c", 9)]
    assert [r.position.offset for r in got[:5]] == [2, 3, 4, 5, 6 | 1 << 62]
    names = {row["id"]: row["name"] for _, _, _, row in _changes(got[:5])}
    assert names == {1: "m1", 2: "two", 3: "m3", 4: "m4", 9: "m9"}
    again.close()


# -- trust: transaction order, big transactions, key changes, TRUNCATE ------------------------

ACCOUNTS_SCHEMA = {
    "version": 1,
    "nodes": {"account": {"props": {"plan": "str", "seats": "int"}}},
    "edges": {},
}


def _accounts_mapping(table: str, source: str, extra: str = "") -> MappingFile:
    from hopcast.graph.schema import Schema

    return MappingFile.from_yaml(
        f"""
        version: 1
        source: {source}
        format: debezium
        {extra}
        rules:
          - when: {{table: {table}}}
            emit:
              - node: "account:{{row.id}}"
                props:
                  plan: "{{row.plan}}"
                  seats: {{field: row.seats, type: int}}
                on_delete: delete
        """.replace("\n        ", "\n"),
        schema=Schema.from_dict(ACCOUNTS_SCHEMA),
    )


def _ingest_until(graph: Graph, engine: EmbeddedEngine, done: Any, timeout_s: float = 60.0) -> None:
    """Run engine batches until ``done()`` holds (the server streams changes asynchronously)."""
    engine.open()
    deadline = time.monotonic() + timeout_s
    try:
        while not done():
            assert time.monotonic() < deadline, "the changes did not reach the graph in time"
            engine.step()
    finally:
        engine.close()


def _plans(graph: Graph, ids: range) -> dict[int, Any]:
    with graph.store.read() as r:
        out: dict[int, Any] = {}
        for i in ids:
            node = r.node(f"account:{i}")
            out[i] = None if node is None else node.props.get("plan")
        return out


@pytest.mark.parametrize("slot_name", ["a", "zzzz", "dbzn", "dbzs"])
def test_changes_in_one_transaction_resolve_in_commit_order_whatever_the_slot_is_called(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str, slot_name: str
) -> None:
    table = f"acc_{tag}"
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, plan text, seats int)")
    slot = f"{slot_name}_{tag}"
    source = PostgresCDCSource(
        slot_name, postgres_dsn, tables=[table], slot=slot, publication=f"hopcast_{tag}"
    )
    with Graph.open(None, Schema_from(ACCOUNTS_SCHEMA)) as graph:
        engine = engine_for(graph, [source], {slot_name: _accounts_mapping(table, slot_name)})
        engine.open()
        engine.close()  # the slot exists: capture starts here
        with db.transaction():
            for i in range(10):  # created basic and updated to premium in one transaction
                db.execute(f"INSERT INTO {table} VALUES ({i}, 'basic', 1)")
                db.execute(f"UPDATE {table} SET plan = 'premium' WHERE id = {i}")
        with db.transaction():
            for round_ in range(5):  # 20 rows updated 5 times in one transaction
                for i in range(10, 30):
                    if round_ == 0:
                        db.execute(f"INSERT INTO {table} VALUES ({i}, 'v0', 1)")
                    db.execute(f"UPDATE {table} SET plan = 'v{round_ + 1}' WHERE id = {i}")
        want = {i: "premium" for i in range(10)} | {i: "v5" for i in range(10, 30)}
        _ingest_until(graph, engine, lambda: _plans(graph, range(30)) == want)


def Schema_from(doc: dict[str, Any]) -> Any:
    from hopcast.graph.schema import Schema

    return Schema.from_dict(doc)


@pytest.mark.slow
def test_a_transaction_of_66000_changes_gives_every_change_its_own_position(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    table = f"acc_{tag}"
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, plan text, seats text)")
    source = PostgresCDCSource("big", postgres_dsn, tables=[table], slot=f"hopcast_{tag}")
    with Graph.open(None, Schema_from(ACCOUNTS_SCHEMA)) as graph:
        engine = engine_for(graph, [source], {"big": _accounts_mapping(table, "big")})
        engine.open()
        engine.close()
        with db.transaction():
            db.execute(
                f"INSERT INTO {table} SELECT g, 'basic', '1' FROM generate_series(1, 66000) g"
            )
            for i in (65990, 65991, 65992, 65993, 65994):  # the tail: updates past 65,535
                db.execute(f"UPDATE {table} SET plan = 'premium' WHERE id = {i}")
            for i in (65995, 65996, 65997):  # three bad rows: seats is not an integer
                db.execute(f"UPDATE {table} SET seats = 'many' WHERE id = {i}")
        letters = DeadLetterStore(graph.store.kv)

        def done() -> bool:
            return letters.count() >= 3 and _plans(graph, range(65994, 65995)) == {65994: "premium"}

        _ingest_until(graph, engine, done, timeout_s=180)
        assert _plans(graph, range(65990, 65995)) == dict.fromkeys(range(65990, 65995), "premium")
        bad = sorted(letters, key=lambda d: d.position)
        assert [d.reason for d in bad] == ["bad_value"] * 3
        offsets = [d.position.offset for d in bad]
        assert len(set(offsets)) == 3  # three positions, three stored dead letters
        assert [split_offset(o)[1] for o in offsets] == [66005, 66006, 66007]
        assert engine.stats.dead_letters == 3
        (stored,) = stored_positions(graph.store, ["big"])["big"].values()
        assert split_offset(stored.offset)[1] == 66007  # the last change of the transaction


@pytest.mark.parametrize("full", [False, True])
def test_a_primary_key_change_deletes_the_old_node_and_creates_the_new_one(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str, full: bool
) -> None:
    table = f"acc_{tag}"
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, plan text, seats int)")
    source = PostgresCDCSource(
        "keys", postgres_dsn, tables=[table], slot=f"hopcast_{tag}", replica_identity_full=full
    )
    db.execute(f"INSERT INTO {table} VALUES (1, 'basic', 1)")
    source.open({})  # creates the slot: capture starts here
    db.execute(f"UPDATE {table} SET plan = 'premium' WHERE id = 1")  # not a key change
    db.execute(f"UPDATE {table} SET id = 2 WHERE id = 1")
    records = _drain(source, 3)
    source.close()
    changes = [(op, (b or {}).get("id"), (a or {}).get("id")) for _, op, b, a in _changes(records)]
    assert changes == [("u", 1 if full else None, 1), ("d", 1, None), ("c", None, 2)]
    assert len({r.position.offset for r in records}) == 3
    with Graph.open(None, Schema_from(ACCOUNTS_SCHEMA)) as graph:  # the same stream, mapped
        engine = engine_for(graph, [source], {"keys": _accounts_mapping(table, "keys")})
        _ingest_until(graph, engine, lambda: _plans(graph, range(1, 3))[2] == "premium")
        assert _plans(graph, range(1, 3)) == {1: None, 2: "premium"}


def test_truncate_is_an_event_and_by_default_a_dead_letter_nothing_silent(
    db: psycopg.Connection[Any], tag: str, postgres_dsn: str
) -> None:
    table = f"acc_{tag}"
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, plan text, seats int)")
    source = PostgresCDCSource("tr", postgres_dsn, tables=[table], slot=f"hopcast_{tag}")
    with Graph.open(None, Schema_from(ACCOUNTS_SCHEMA)) as graph:
        engine = engine_for(graph, [source], {"tr": _accounts_mapping(table, "tr")})
        engine.open()
        engine.close()
        db.execute(f"INSERT INTO {table} VALUES (1, 'basic', 1)")
        db.execute(f"TRUNCATE {table}")
        letters = DeadLetterStore(graph.store.kv)
        _ingest_until(graph, engine, lambda: letters.count() == 1)
        (letter,) = letters
        assert letter.reason == "truncate" and table in letter.message, letter
        assert json.loads(letter.payload)["op"] == "t"
        assert _plans(graph, range(1, 2)) == {1: "basic"}  # the graph keeps what it had
        assert engine.stats.dead_by_reason == {"truncate": 1}

    # truncate=skip leaves it out with a count and a log line; fail stops the source.
    db.execute(f"INSERT INTO {table} VALUES (2, 'basic', 1)")
    db.execute(f"TRUNCATE {table}")
    skip = PostgresCDCSource("tr", postgres_dsn, slot=f"hopcast_{tag}", truncate="skip")
    fail = PostgresCDCSource("tr", postgres_dsn, slot=f"hopcast_{tag}", truncate="fail")
    skip.open({})
    ops = [json.loads(r.value)["op"] for r in _drain(skip, 2)]
    skip.close()
    assert "t" not in ops and skip.truncates_skipped >= 1
    fail.open({})
    with pytest.raises(SourceError, match="TRUNCATE"):
        _drain(fail, 10)
    fail.close()
    with pytest.raises(ConfigError, match="truncate"):
        from_spec("x", "dbname=x#truncate=sometimes")

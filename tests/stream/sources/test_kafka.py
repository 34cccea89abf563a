"""The Kafka source and sink against a real broker (the session's, from deploy/kafka.sh):
several partitions, restarts from hopcast's stored positions without loss or duplicates,
Debezium-format topics (PostgreSQL CDC relayed through Kafka decodes the same), new partitions,
errors; and the source contract."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from hopcast.durations import now_us
from hopcast.errors import ConfigError, SourceError
from hopcast.graphdb import Graph
from hopcast.stream.engines import EmbeddedEngine, engine_for, stored_positions
from hopcast.stream.mapping import DEMO_MAPPINGS
from hopcast.stream.mapping import Mapping as MappingFile
from hopcast.stream.operators import decode_debezium
from hopcast.stream.record import Position, Record
from hopcast.stream.sources import build_source, check_source_contract
from hopcast.stream.sources.kafka import KafkaSink, KafkaSource, from_spec, parse_partition
from hopcast.stream.sources.postgres_cdc import PostgresCDCSource

_serial = itertools.count()


@pytest.fixture
def sink(kafka_bootstrap: str) -> Iterator[KafkaSink]:
    out = KafkaSink(kafka_bootstrap)
    yield out
    out.close()


@pytest.fixture
def topic() -> str:
    return f"t{next(_serial)}-{uuid.uuid4().hex[:8]}"


def _produce(sink: KafkaSink, topic: str, values: list[bytes], partitions: int) -> None:
    for i, value in enumerate(values):
        sink.send(topic, value, key=f"k{i}".encode(), partition=i % partitions)
    sink.flush()


def _drain(source: KafkaSource, want: int, timeout_s: float = 30.0) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got += source.poll(50, 0.2)
    got += source.poll(50, 0.3)
    return got


def _by_partition(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for record in records:
        out.setdefault(record.position.partition, []).append(record)
    return out


def test_records_of_several_partitions_and_a_restart_from_stored_positions(
    sink: KafkaSink, topic: str, kafka_bootstrap: str
) -> None:
    sink.create_topic(topic, partitions=3)
    values = [f"v{i}".encode() for i in range(30)]
    _produce(sink, topic, values, 3)

    source = KafkaSource("clicks", kafka_bootstrap, [topic])
    source.open({})
    first = _drain(source, 30)
    assert sorted(r.value for r in first) == sorted(values)
    parts = _by_partition(first)
    assert sorted(parts) == [f"{topic}:0", f"{topic}:1", f"{topic}:2"]
    for partition, records in parts.items():
        number = parse_partition(partition)[1]
        assert [r.position.offset for r in records] == list(range(10))
        assert [r.value for r in records] == values[number::3]
    assert first[0].source == "clicks" and first[0].key is not None
    assert first[0].event_time is not None and abs(first[0].event_time / 1e6 - time.time()) < 60

    # hopcast stored: all of partition 0, half of partition 1, nothing of partition 2.
    stored = {
        f"{topic}:0": parts[f"{topic}:0"][-1].position,
        f"{topic}:1": parts[f"{topic}:1"][4].position,
    }
    source.commit(stored)
    source.close()
    more = [f"w{i}".encode() for i in range(6)]
    _produce(sink, topic, more, 3)

    again = KafkaSource("clicks", kafka_bootstrap, [topic])
    again.open(stored)
    rest = _drain(again, 5 + 10 + 6)
    want = parts[f"{topic}:1"][5:] + parts[f"{topic}:2"]
    assert sorted((r.position, r.value) for r in rest) == sorted(
        [(r.position, r.value) for r in want]
        + [(Position(f"{topic}:{i % 3}", 10 + i // 3), v) for i, v in enumerate(more)]
    )
    again.close()

    # The offsets committed to Kafka (monitoring) are the stored positions + 1.
    probe = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "hopcast-clicks"})
    committed = probe.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
    probe.close()
    assert [tp.offset for tp in committed] == [10, 5]


def test_the_source_contract_holds_with_several_partitions(
    sink: KafkaSink, topic: str, kafka_bootstrap: str
) -> None:
    sink.create_topic(topic, partitions=3)
    values = [f"c{i}".encode() for i in range(17)]
    _produce(sink, topic, values, 3)
    check_source_contract(lambda: KafkaSource("c", kafka_bootstrap, [topic]), values)


def test_a_debezium_topic_fed_by_postgres_cdc_decodes_like_the_cdc_source(
    sink: KafkaSink, topic: str, kafka_bootstrap: str, postgres_dsn: str
) -> None:
    table = f"titles_{topic.replace('-', '_')}"
    slot = f"hopcast_{table}"
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
        cdc = PostgresCDCSource("titles", postgres_dsn, tables=[table], slot=slot)
        cdc.open({})
        db.execute(f"INSERT INTO {table} VALUES (1, 'Up'), (2, 'Heat')")
        db.execute(f"UPDATE {table} SET name = 'Up!' WHERE id = 1")
        db.execute(f"DELETE FROM {table} WHERE id = 2")
        changes: list[Record] = []
        deadline = time.monotonic() + 10
        while len(changes) < 4 and time.monotonic() < deadline:
            changes += cdc.poll(10, 0.2)
        cdc.close()
        for _ in range(100):  # the closed stream's server process lets go of the slot soon
            try:
                db.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.05)
        db.execute(f"DROP PUBLICATION {slot}")
    assert len(changes) == 4

    # Relay as a Debezium connector would: key per row, a tombstone after the delete, and one
    # event in the JSON converter's schema+payload form.
    sink.create_topic(topic, partitions=2)
    wrapped = {"schema": {"type": "struct"}, "payload": json.loads(changes[1].value)}
    relay = [changes[0], replace(changes[1], value=json.dumps(wrapped).encode()), *changes[2:]]
    assert sink.send_records(topic, relay) == 4
    sink.send(topic, None, key=changes[-1].key)
    sink.flush()

    source = KafkaSource("titles", kafka_bootstrap, [topic])
    source.open({})
    relayed = _drain(source, 5)
    source.close()
    assert len(relayed) == 5
    assert sum(1 for r in relayed if r.value == b"") == 1  # the tombstone

    def decoded(records: list[Record]) -> list[tuple[Any, ...]]:
        events = [decode_debezium(r) for r in records]
        return sorted(
            (e.table, e.op, json.dumps(e.data["row"], sort_keys=True), e.event_time)
            for e in events
            if e is not None
        )

    assert decoded(relayed) == decoded(changes)


def test_partitions_added_while_running_are_read_from_the_start(
    sink: KafkaSink, topic: str, kafka_bootstrap: str
) -> None:
    sink.create_topic(topic, partitions=1)
    _produce(sink, topic, [b"a"], 1)
    source = KafkaSource("s", kafka_bootstrap, [topic], refresh_s=0.2)
    source.open({})
    assert [r.value for r in _drain(source, 1)] == [b"a"]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_partitions([NewPartitions(topic, 2)])[topic].result(timeout=10)
    deadline = time.monotonic() + 10
    while len(source.partitions()) < 2 and time.monotonic() < deadline:
        source.poll(10, 0.2)
    fresh = KafkaSink(kafka_bootstrap)  # the other one's metadata still says one partition
    fresh.send(topic, b"b", partition=1)
    fresh.close()
    got = _drain(source, 1)
    assert [(r.position, r.value) for r in got] == [(Position(f"{topic}:1", 0), b"b")]
    assert source.lag() == {f"{topic}:0": 0, f"{topic}:1": 0}
    source.close()


def test_start_latest_skips_what_is_there(
    sink: KafkaSink, topic: str, kafka_bootstrap: str
) -> None:
    sink.create_topic(topic, partitions=1)
    _produce(sink, topic, [b"old"], 1)
    source = KafkaSource("s", kafka_bootstrap, [topic], start="latest")
    source.open({})
    assert source.poll(10, 0.5) == []
    _produce(sink, topic, [b"new"], 1)
    assert [r.value for r in _drain(source, 1)] == [b"new"]
    source.close()


def test_a_missing_topic_or_an_unreachable_broker_is_a_source_error(kafka_bootstrap: str) -> None:
    source = KafkaSource("s", kafka_bootstrap, [f"missing-{uuid.uuid4().hex}"], timeout_s=5)
    with pytest.raises(SourceError, match="is not available"):
        source.open({})
    gone = KafkaSource("s", "127.0.0.1:1", ["x"], timeout_s=1)
    with pytest.raises(SourceError, match=r"127\.0\.0\.1:1"):
        gone.open({})
    with pytest.raises(SourceError, match="not open"):
        gone.poll(1, 0)


def test_specs_build_sources() -> None:
    source = build_source(
        "pb", "kafka:h1:9092,h2:9092/a,b#group=g&start=latest&commit=no&security.protocol=SSL"
    )
    assert isinstance(source, KafkaSource)
    assert (source.bootstrap, source.topics, source.group_id, source.start) == (
        "h1:9092,h2:9092",
        ["a", "b"],
        "g",
        "latest",
    )
    assert not source.commit_offsets and source.config == {"security.protocol": "SSL"}
    assert from_spec("x", "h:1/t").group_id == "hopcast-x"
    for bad in ("h:1", "h:1/t#colour=red", "h:1/t#start=middle", "h:1/t#commit=maybe"):
        with pytest.raises(ConfigError):
            from_spec("x", bad)


def test_the_embedded_engine_maps_a_debezium_topic_and_resumes_from_its_checkpoints(
    sink: KafkaSink, topic: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    sink.create_topic(topic, partitions=2)

    def change(row_id: int, profile: str, title: str, position_s: int, op: str = "c") -> bytes:
        at = now_us()
        row = {
            "id": row_id,
            "profile_id": profile,
            "title_id": title,
            "device_id": "d1",
            "position_s": position_s,
            "bitrate_kbps": 3000,
            "updated_at": at,
        }
        source = {"connector": "postgresql", "table": "playback", "ts_us": at}
        return json.dumps({"before": None, "after": row, "op": op, "source": source}).encode()

    def run_engine(graph: Graph, want: int) -> EmbeddedEngine:
        source = KafkaSource("playback", kafka_bootstrap, [topic])
        maps = MappingFile.load_dir(DEMO_MAPPINGS, graph.schema)
        engine = engine_for(graph, [source], {"playback": maps["playback"]}, batch_ms=50)
        engine.open()
        deadline = time.monotonic() + 15
        while engine.stats.events < want and time.monotonic() < deadline:
            engine.step()
        engine.run(until_idle=True)
        return engine

    def watching(graph: Graph, profile: str) -> dict[str, Any]:
        edges = graph.neighbours(f"profile:{profile}", "started_watching", now=now_us()).edges
        return {e.other(f"profile:{profile}"): e.props.get("position_s") for e in edges}

    sink.send(topic, change(1, "p1", "t1", 10), key=b"1", partition=0)
    sink.send(topic, change(2, "p2", "t1", 20), key=b"2", partition=1)
    sink.send(topic, change(1, "p1", "t1", 95, "u"), key=b"1", partition=0)
    sink.flush()
    with Graph.open(tmp_path / "g") as graph:
        first = run_engine(graph, 3)
        assert (first.stats.events, first.stats.dead_letters) == (3, 0)
        assert watching(graph, "p1") == {"title:t1": 95}
        stored = stored_positions(graph.store, ["playback"])["playback"]
        assert stored == {
            f"{topic}:0": Position(f"{topic}:0", 1),
            f"{topic}:1": Position(f"{topic}:1", 0),
        }

    sink.send(topic, change(2, "p2", "t1", 60, "u"), key=b"2", partition=1)
    sink.send(topic, change(3, "p1", "t2", 1), key=b"3", partition=0)
    sink.flush()
    with Graph.open(tmp_path / "g") as graph:
        second = run_engine(graph, 2)
        assert (second.stats.events, second.stats.dead_letters) == (2, 0)  # only the new ones
        assert watching(graph, "p1") == {"title:t1": 95, "title:t2": 1}
        assert watching(graph, "p2") == {"title:t1": 60}


def test_lag_counts_what_waits_beyond_the_last_polled_record(
    sink: KafkaSink, topic: str, kafka_bootstrap: str
) -> None:
    sink.create_topic(topic, partitions=1)
    _produce(sink, topic, [f"v{i}".encode() for i in range(10)], 1)
    source = KafkaSource("s", kafka_bootstrap, [topic])
    source.open({})
    got: list[Record] = []
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        got = source.poll(3, 0.2)
    assert [r.position.offset for r in got] == [0, 1, 2]
    assert source.lag() == {f"{topic}:0": 7}
    source.close()

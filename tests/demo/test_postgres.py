"""The demo's playback table on a real PostgreSQL: the changes captured by CDC map to the same
graph writes as the change events of the log, and ``hopcast run --postgres`` ingests them."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hopcast.demo.company import Company, CompanyConfig
from hopcast.demo.postgres import SLOT, PlaybackTable
from hopcast.demo.records import CompanyRecords
from hopcast.demo.run import DemoOptions, run_demo
from hopcast.durations import DAY
from hopcast.graph.schema import Schema
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetterStore
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import split
from hopcast.stream.record import Position, Record

SCHEMA = Schema.demo()
START = 1_764_147_600_000_000
#: The pipelines' clock: just after the records (a write older than its retention, or far
#: ahead of the clock, would be a dead letter).
NOW = START + 2 * DAY


def _shape(m: Any) -> tuple[Any, ...]:
    """A mutation without its idempotency id and seq (both come from source positions)."""
    fields = [getattr(m, f) for f in m.__slots__ if f not in ("id", "props", "seq")]
    return (m.kind, *fields, json.dumps(getattr(m, "props", {}), sort_keys=True))


def test_playback_changes_through_the_table_and_cdc_map_like_the_logged_ones(
    postgres_dsn: str,
) -> None:
    records = CompanyRecords(
        Company(CompanyConfig(accounts=40, titles=80, seed=9), START), bad_share=0.05
    )
    playback = [r for r in records.activity(6000, START, START + DAY) if r.source == "playback"]
    assert {json.loads(r.value)["op"] for r in playback if r.bad is None} == {"c", "u", "d"}
    pipeline = Mapping.load_dir(DEMO_MAPPINGS, SCHEMA)["playback"].pipeline(SCHEMA, {})
    logged: Counter[tuple[Any, ...]] = Counter()
    for i, r in enumerate(playback):
        record = Record("playback", Position("0", i), r.value)
        mutations, dead = split(pipeline.process(record, NOW))
        assert (dead == []) == (r.bad is None)
        logged.update(map(_shape, mutations))

    table = PlaybackTable(postgres_dsn, reset=True)
    source = table.source()
    try:
        source.open({})  # creates the slot: capture starts here
        for i in range(0, len(playback), 50):  # several transactions
            table.write(playback[i : i + 50])
        assert table.bad_left_out == sum(1 for r in playback if r.bad is not None)
        captured: list[Record] = []
        deadline = time.monotonic() + 30
        while len(captured) < table.changes and time.monotonic() < deadline:
            captured += source.poll(1000, 0.5)
        assert len(captured) == table.changes
        cdc: Counter[tuple[Any, ...]] = Counter()
        for r in captured:
            mutations, dead = split(pipeline.process(r, NOW))
            assert dead == [], dead
            cdc.update(map(_shape, mutations))
    finally:
        source.close()
        table.close()
    # The same writes, the same number of times (a delete of a row is no write either way).
    assert cdc == logged


@pytest.mark.slow
def test_hopcast_run_with_postgres_ingests_the_playback_table_by_cdc(
    postgres_dsn: str, tmp_path: Path
) -> None:
    data = tmp_path / "demo"
    started = time.time_ns() // 1000
    options = DemoOptions(
        data=data,
        port=0,  # the API and the gateway on free ports
        accounts=40,
        history=500,
        rate=300,
        duration=4,
        bad_share=0.05,
        progress=False,
        postgres=postgres_dsn,
    )
    assert run_demo(options) == 0
    with Graph.open(data / "graph") as graph:
        assert any(name.startswith(f"playback/{SLOT}") for name in graph.store.checkpoints())
        watched = [
            e
            for p in ("profile:0-0", "profile:1-0", "profile:2-0")
            for e in graph.neighbours(p, edge="started_watching", limit=50).edges
            if e.ts >= started
        ]
        letters = list(DeadLetterStore(graph.store.kv))
    assert watched  # heavy accounts watch several titles in four seconds
    assert letters and all(d.source != "playback" for d in letters)
    assert not (data / "logs" / "playback" / "playback.jsonl").stat().st_size

"""Side tables in the graph store, as the Flink engine's tasks share them, without a JVM: a
changelog task's rows reach an enriching task through the store within the check interval, a
missing row is an ``enrichment_missing`` dead letter, and replays change nothing."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from hopcast.graph.schema import Schema
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetter, Reason
from hopcast.stream.engines.buckets import BucketWriter, Totals, route
from hopcast.stream.engines.embedded import SIDE_NS, TrackedSideTable, load_side_tables
from hopcast.stream.engines.sidestore import (
    GEN_NS,
    SideRow,
    SideRowPipeline,
    StoreSideTable,
    StoreTablesMapping,
    side_extra,
)
from hopcast.stream.mapping import Mapping
from hopcast.stream.record import Position, Record

NOW = 1_764_147_600_000_000
DEMO = Schema.demo()
CHECK_MS = 100

CATALOGUE = """\
    version: 1
    source: cat
    format: json
    time: {field: ts, format: us}
    changelog:
      - {table: titles, key: "{title_id}", when: {op: {ne: delete}}}
    rules:
      - name: title
        emit:
          - node: "title:{title_id}"
            props: {name: "{name}"}
"""
PLAYBACK = """\
    version: 1
    source: play
    format: json
    time: {field: ts, format: us}
    enrich:
      - {table: titles, key: "{title_id}", as: title, required: true}
    rules:
      - name: watch
        emit:
          - edge: started_watching
            from: "profile:{profile_id}"
            to: "title:{title_id}"
            props: {device: "{title.name}"}
"""


class Clock:
    """Monotonic seconds the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def load(text: str) -> Mapping:
    return Mapping.from_yaml(textwrap.dedent(text), source="m.yaml", schema=DEMO)


class Task:
    """One Flink task: its own pipeline (own caches) and its own writer, on a shared store."""

    def __init__(self, graph: Graph, text: str, clock: Clock, **options: Any) -> None:
        mapping = StoreTablesMapping(load(text), graph.store.kv, clock=clock, **options)
        self.pipeline: SideRowPipeline = mapping.pipeline(DEMO)
        self.writer = BucketWriter(graph.store, f"hopcast-{mapping.source}", clock=lambda: NOW)
        self.offset = 0

    def process(self, *docs: dict[str, Any]) -> list[Any]:
        records = []
        for doc in docs:
            raw = json.dumps(doc).encode()  # the message timestamp versions a changelog row
            records.append(Record("src", Position("p", self.offset), raw, event_time=doc["ts"]))
            self.offset += 1
        return self.pipeline.process_many(records, NOW)

    def window(self, *docs: dict[str, Any]) -> list[Any]:
        """Process ``docs`` and write them as one window; returns the outputs."""
        outputs = self.process(*docs)
        self.writer.write(0, outputs, Totals())
        return outputs


def title(title_id: str, name: str, ts: int = NOW - 10) -> dict[str, Any]:
    return {"title_id": title_id, "name": name, "ts": ts}


def watch(title_id: str, ts: int = NOW - 5) -> dict[str, Any]:
    return {"profile_id": "1-0", "title_id": title_id, "ts": ts}


def device(graph: Graph, title_id: str) -> Any:
    (edge,) = graph.neighbours("profile:1-0", "started_watching", now=NOW).edges
    assert edge.dst == f"title:{title_id}"
    return edge.props.get("device")


def stored(graph: Graph, key: str) -> Any:
    tables = {"titles": TrackedSideTable("titles")}
    load_side_tables(graph.store.kv, tables)
    return tables["titles"].get(key)


@pytest.fixture
def graph() -> Any:
    with Graph.open(clock=lambda: NOW) as g:
        yield g


def test_an_enriching_task_reads_the_row_another_jobs_changelog_task_wrote_to_the_store(
    graph: Graph,
) -> None:
    clock = Clock()
    catalogue, playback = Task(graph, CATALOGUE, clock), Task(graph, PLAYBACK, clock)
    outputs = catalogue.window(title("5", "Dune"))
    assert SideRow("titles", "5", NOW - 10, {"title_id": "5", "name": "Dune", "ts": NOW - 10}) in (
        outputs
    )
    assert graph.node("title:5") is not None  # the node and the row in one write
    assert stored(graph, "5") == {"title_id": "5", "name": "Dune", "ts": NOW - 10}
    playback.window(watch("5"))
    assert device(graph, "5") == "Dune"


def test_a_reader_sees_a_stored_change_at_most_the_check_interval_after_it_is_written(
    graph: Graph,
) -> None:
    clock = Clock()
    catalogue = Task(graph, CATALOGUE, clock, check_ms=CHECK_MS)
    reader = StoreSideTable("titles", graph.store.kv, check_ms=CHECK_MS, clock=clock)
    catalogue.window(title("5", "Dune"))
    assert reader.get("5") == {"title_id": "5", "name": "Dune", "ts": NOW - 10}
    reads = reader.reads
    catalogue.window(title("5", "Dune: Part One", ts=NOW - 9))  # renamed, stored
    clock.t += CHECK_MS / 1000 * 0.99
    assert reader.get("5")["name"] == "Dune"  # cached: stale, but within the bound
    assert reader.reads == reads  # a cached read costs no store read
    clock.t += CHECK_MS / 1000 * 0.02
    assert reader.get("5")["name"] == "Dune: Part One"  # the table's token changed
    reads = reader.reads
    clock.t += CHECK_MS / 1000 * 5
    assert reader.get("5")["name"] == "Dune: Part One"
    assert reader.reads == reads + 1  # unchanged table: one token read, the row stays cached


def test_a_missing_required_row_is_an_enrichment_missing_dead_letter_until_the_row_is_stored(
    graph: Graph,
) -> None:
    clock = Clock()
    catalogue = Task(graph, CATALOGUE, clock)
    playback = Task(graph, PLAYBACK, clock, check_ms=CHECK_MS)
    (letter,) = playback.window(watch("7"))
    assert isinstance(letter, DeadLetter)
    assert letter.reason == Reason.ENRICHMENT_MISSING
    assert "no row '7' in side table 'titles'" in letter.message
    catalogue.window(title("7", "Arrival"))
    clock.t += CHECK_MS / 1000
    playback.window(watch("7"))
    assert device(graph, "7") == "Arrival"


def test_replaying_a_changelog_window_writes_no_side_row_and_an_older_change_never_wins(
    graph: Graph,
) -> None:
    clock = Clock()
    catalogue = Task(graph, CATALOGUE, clock)
    docs = (title("5", "Dune", NOW - 10), title("5", "Dune 2", NOW - 8))
    outputs = catalogue.window(*docs)
    token = graph.store.kv.get(GEN_NS, b"titles", b"g", NOW)
    assert token is not None
    rows = [o for o in outputs if isinstance(o, SideRow)]
    assert len(rows) == 2
    assert side_extra(graph.store, rows) == []  # a restored window: already stored
    # a replaying task restarts with empty caches and re-derives the same changes
    replayed = Task(graph, CATALOGUE, clock)
    replayed.offset = 0
    replayed.window(*docs)
    assert graph.store.kv.get(GEN_NS, b"titles", b"g", NOW) == token  # nothing written
    older = SideRow("titles", "5", NOW - 9, {"title_id": "5", "name": "Old"})
    assert side_extra(graph.store, [older]) == []
    catalogue.writer.write(0, [older], Totals())
    assert stored(graph, "5")["name"] == "Dune 2"


def test_a_task_sees_its_own_changes_before_their_window_is_written(graph: Graph) -> None:
    both = CATALOGUE + textwrap.indent(
        textwrap.dedent("""\
        enrich:
          - {table: titles, key: "{title_id}", as: t, required: true}
        """),
        "    ",
    )
    task = Task(graph, both, Clock())
    outputs = task.process(title("9", "Heat"))  # not written
    assert not [o for o in outputs if isinstance(o, DeadLetter)]
    assert stored(graph, "9") is None


def test_a_delete_is_stored_as_a_tombstone_that_an_older_upsert_cannot_undo(
    graph: Graph,
) -> None:
    clock = Clock()
    reader = StoreSideTable("titles", graph.store.kv, check_ms=0, clock=clock)
    writer = BucketWriter(graph.store, "hopcast-cat", clock=lambda: NOW)
    writer.write(0, [SideRow("titles", "5", 10, {"name": "a"})], Totals())
    writer.write(0, [SideRow("titles", "5", 20, None)], Totals())
    writer.write(0, [SideRow("titles", "5", 15, {"name": "b"})], Totals())
    assert reader.get("5") is None
    assert "5" not in reader


def test_a_truncate_deletes_every_stored_row(graph: Graph) -> None:
    clock = Clock()
    catalogue = Task(graph, CATALOGUE, clock)
    catalogue.window(title("1", "A"), title("2", "B"))
    table = StoreSideTable("titles", graph.store.kv, check_ms=0, clock=clock)
    assert len(table) == 2
    assert table.truncate(NOW) == 2
    catalogue.writer.write(0, table.take_changes(), Totals())
    assert stored(graph, "1") is None and stored(graph, "2") is None
    assert len(StoreSideTable("titles", graph.store.kv, clock=clock)) == 0


def test_rows_the_embedded_engine_stored_are_read_and_re_read_after_their_max_age(
    graph: Graph,
) -> None:
    clock = Clock()
    from hopcast.stream.engines.embedded import side_items

    tables = {"titles": TrackedSideTable("titles")}
    tables["titles"].upsert("5", {"name": "Dune"}, 1)
    graph.store.apply([], extra=side_items(tables))  # as the embedded engine writes them
    reader = StoreSideTable("titles", graph.store.kv, max_age_ms=1000, clock=clock)
    assert reader.get("5") == {"name": "Dune"}
    tables["titles"].upsert("5", {"name": "Dune 2"}, 2)
    graph.store.apply([], extra=side_items(tables))  # no token: the cache cannot tell
    clock.t += 0.5
    assert reader.get("5") == {"name": "Dune"}
    clock.t += 0.6
    assert reader.get("5") == {"name": "Dune 2"}
    items = graph.store.kv.get(SIDE_NS, b"titles", b"5", NOW)
    assert items is not None


def test_the_cache_keeps_at_most_max_rows(graph: Graph) -> None:
    reader = StoreSideTable("titles", graph.store.kv, max_rows=3, clock=Clock())
    for i in range(10):
        assert reader.get(str(i)) is None
    assert len(reader._cache) == 3


def test_every_change_of_one_row_goes_to_one_bucket() -> None:
    rows = [SideRow("titles", "5", v, {"v": v}) for v in range(20)]
    rows += [SideRow("live_events", "5", 1, {})]
    routed = route(rows[:20], 16)
    assert len(routed) == 1 and next(iter(routed.values())) == rows[:20]  # in order
    assert len(route(rows, 1 << 20)) == 2  # another table, another identity


def write_rows(graph: Graph, *rows: SideRow) -> None:
    graph.store.apply([], extra=side_extra(graph.store, rows))


def test_a_change_makes_the_other_tasks_re_read_only_the_rows_it_wrote(graph: Graph) -> None:
    clock = Clock()
    write_rows(graph, *(SideRow("titles", str(i), 1, {"name": f"t{i}"}) for i in range(5)))
    reader = StoreSideTable("titles", graph.store.kv, check_ms=CHECK_MS, clock=clock)
    assert [reader.get(str(i)) for i in range(5)] == [{"name": f"t{i}"} for i in range(5)]
    write_rows(graph, SideRow("titles", "3", 2, {"name": "renamed"}))
    clock.t += CHECK_MS / 1000
    reads = reader.reads
    assert reader.get("0") == {"name": "t0"}
    assert reader.reads == reads + 2  # the token and the log; row 0 stays cached
    assert reader.get("3") == {"name": "renamed"}
    assert reader.reads == reads + 3  # row 3 read again
    assert [reader.get(str(i)) for i in (1, 2, 4)] and reader.reads == reads + 3


def test_a_write_too_big_to_log_its_keys_drops_the_readers_whole_cache(
    graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hopcast.stream.engines import sidestore

    monkeypatch.setattr(sidestore, "MAX_LOGGED_KEYS", 2)
    clock = Clock()
    write_rows(graph, *(SideRow("titles", str(i), 1, {"name": f"t{i}"}) for i in range(5)))
    reader = StoreSideTable("titles", graph.store.kv, check_ms=CHECK_MS, clock=clock)
    assert reader.get("0") == {"name": "t0"}
    write_rows(graph, *(SideRow("titles", str(i), 2, {"name": f"u{i}"}) for i in range(1, 5)))
    clock.t += CHECK_MS / 1000
    reads = reader.reads
    assert reader.get("0") == {"name": "t0"}
    assert reader.reads == reads + 3  # token, log, and row 0 again: the cache was dropped


def test_a_reader_that_has_not_looked_for_half_the_log_life_drops_its_whole_cache(
    graph: Graph,
) -> None:
    from hopcast.stream.engines.sidestore import LOG_KEEP_S

    clock = Clock()
    write_rows(graph, SideRow("titles", "0", 1, {"name": "t0"}))
    reader = StoreSideTable("titles", graph.store.kv, check_ms=CHECK_MS, clock=clock)
    assert reader.get("0") == {"name": "t0"}
    write_rows(graph, SideRow("titles", "1", 1, {"name": "t1"}))
    clock.t += LOG_KEEP_S / 2 + 1  # what it missed may have been pruned
    reads = reader.reads
    assert reader.get("0") == {"name": "t0"}
    assert reader.reads == reads + 3


def test_writers_prune_change_log_entries_older_than_the_log_life(graph: Graph) -> None:
    import msgspec

    from hopcast.durations import now_us
    from hopcast.stream.engines.sidestore import LOG_KEEP_S

    old = now_us() - int(LOG_KEEP_S * 1e6) - 1
    graph.store.apply(
        [], extra=[(GEN_NS, b"titles", b"l-old", msgspec.msgpack.encode((old, ["x"])))]
    )
    write_rows(graph, SideRow("titles", "0", 1, {"name": "t0"}))
    with graph.store.kv.reader() as r:
        log = [i.key for i in r.scan(GEN_NS, b"titles", NOW, b"l", b"m")]
    assert len(log) == 1 and log[0] != b"l-old"

"""The embedded engine in process: a whole backlog, restarts that resume, convergence under
shuffling and duplicates, dead letters beside good input, storage failures, metrics, stop."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
from demo_records import demo_records, graph_dump
from prometheus_client import generate_latest

from hopcast.durations import HOUR, now_us
from hopcast.errors import SourceError, StorageError, StorageRefused
from hopcast.graphdb import Graph
from hopcast.kv.base import HEADER_SIZE
from hopcast.stream.deadletter import DeadLetterStore, Reason
from hopcast.stream.engines import EmbeddedEngine, engine_for, stored_positions
from hopcast.stream.engines.embedded import SIDE_NS
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import Pipeline
from hopcast.stream.record import Position
from hopcast.stream.sources import ListSource

RECORDS = demo_records(3000)


def run_all(graph: Graph, sources: list[ListSource], **options: Any) -> EmbeddedEngine:
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    engine = engine_for(graph, sources, maps, batch_ms=20, **options)
    engine.run(until_idle=True)
    return engine


def lists(records: dict[str, list[bytes]]) -> list[ListSource]:
    return [ListSource(name, values) for name, values in records.items()]


@pytest.fixture
def graph(tmp_path: Path) -> Any:
    with Graph.open(tmp_path / "g") as g:
        yield g


def test_a_backlog_is_written_with_its_positions_and_a_restart_reads_nothing_again(
    graph: Graph,
) -> None:
    engine = run_all(graph, lists(RECORDS), batch_records=500)
    assert engine.stats.events == 3000
    assert engine.stats.dead_letters == 0
    assert engine.stats.batches >= 6
    stored = stored_positions(graph.store, list(RECORDS))
    assert stored == {n: {"0": Position("0", len(v) - 1)} for n, v in RECORDS.items()}
    before = graph_dump(graph)
    sources = lists(RECORDS)
    again = run_all(graph, sources)
    assert again.stats.events == 0
    assert all(s.opened == 1 for s in sources)
    assert graph_dump(graph) == before


@pytest.mark.parametrize("coalesce", [False, True])
def test_a_restart_in_the_middle_resumes_exactly_where_the_last_batch_ended(
    tmp_path: Path, coalesce: bool
) -> None:
    with Graph.open(tmp_path / "clean") as clean:
        run_all(clean, lists(RECORDS))
        want = graph_dump(clean)
    with Graph.open(tmp_path / "steps") as g:
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        for _ in range(7):  # a few batches per engine, then a new engine (a restart)
            engine = engine_for(
                g, lists(RECORDS), maps, batch_records=137, batch_ms=10, coalesce=coalesce
            )
            engine.run(max_batches=3)
        run_all(g, lists(RECORDS))
        assert graph_dump(g) == want
        sources = lists(RECORDS)
        assert run_all(g, sources).stats.events == 0


@pytest.mark.parametrize("coalesce", [False, True])
def test_shuffled_and_duplicated_input_converges_to_the_same_graph(
    tmp_path: Path, coalesce: bool
) -> None:
    with Graph.open(tmp_path / "clean") as clean:
        run_all(clean, lists(RECORDS))
        want = graph_dump(clean)
    rng = random.Random(3)
    messy: dict[str, list[bytes]] = {}
    for name, values in RECORDS.items():
        doubled = values + rng.sample(values, len(values) // 3)
        rng.shuffle(doubled)
        messy[name] = doubled
    # Several partitions per source, interleaved differently.
    parts = {n: {str(i): v[i::3] for i in range(3)} for n, v in messy.items()}
    with Graph.open(tmp_path / "messy") as g:
        sources = [ListSource(n, p) for n, p in parts.items()]
        run_all(g, sources, batch_records=211, coalesce=coalesce)
        assert _graph_only(graph_dump(g)) == _graph_only(want)


def _graph_only(dump: dict[str, Any]) -> dict[str, Any]:
    """The dump without idempotency tokens (hashes of ids, which come from source positions):
    keys, times, flags and property values stay."""
    out: dict[str, Any] = {}
    for ns, items in dump.items():
        rows = []
        for k, v in items:
            header, payload = v[:8] + v[16:HEADER_SIZE], v[HEADER_SIZE:]
            if ns.startswith("n.") and payload:
                props = msgspec.msgpack.decode(payload)
                payload = repr(sorted((p, x[:2]) for p, x in props.items())).encode()
            rows.append((k, header, payload))
        out[ns] = rows
    return out


def _playback(**after: Any) -> bytes:
    """A playback change event with fields of its row replaced (None removes one)."""
    doc = json.loads(RECORDS["playback"][0])
    for k, v in after.items():
        if v is None:
            doc["after"].pop(k)
        else:
            doc["after"][k] = v
    return json.dumps(doc).encode()


BAD = {
    Reason.BAD_VALUE: _playback(position_s="abc"),
    Reason.MISSING_TIME: _playback(updated_at=None),
    Reason.UNMATCHED: json.dumps(
        {"op": "u", "before": None, "after": {"a": 1}, "source": {"table": "nope"}, "ts_ms": 1}
    ).encode(),
    Reason.MALFORMED_JSON: b"{not json",
    Reason.BAD_ENVELOPE: json.dumps({"op": "u", "after": None, "source": {"table": "x"}}).encode(),
    Reason.MISSING_FIELD: json.dumps(
        {
            "op": "u",
            "before": None,
            "after": {"id": "x", "title_id": "1", "device_id": "d", "updated_at": 1},
            "source": {"table": "playback", "ts_ms": 1},
            "ts_ms": 1,
        }
    ).encode(),
    Reason.OVERSIZE: b'{"x": "' + b"a" * 70_000 + b'"}',
}


def test_each_kind_of_bad_input_is_dead_lettered_while_good_input_flows(
    graph: Graph, tmp_path: Path
) -> None:
    good = RECORDS["playback"][:200]
    values = list(good)
    for i, bad in enumerate(BAD.values()):
        values.insert(20 + 40 * i, bad)
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    # playback's mapping allows 1 MiB: a small limit makes the oversize case.
    base = maps["playback"].pipeline(graph.schema)
    pipeline = Pipeline(base.decoder, base.steps, graph.schema, max_bytes=65_536)
    engine = EmbeddedEngine(graph, [(ListSource("playback", values), pipeline)], batch_ms=10)
    engine.run(until_idle=True)
    letters = list(DeadLetterStore(graph.store.kv))
    assert sorted(d.reason for d in letters) == sorted(BAD)
    assert {d.payload for d in letters} == set(BAD.values())
    assert engine.stats.events == len(values)
    with Graph.open(tmp_path / "clean") as clean:
        run_all(clean, [ListSource("playback", good)])
        assert _graph_only(graph_dump(graph)) == _graph_only(graph_dump(clean))
    text = generate_latest(engine.metrics.registry).decode()
    assert (
        'hopcast_ingest_dead_letters_total{reason="malformed_json",source="playback"} 1.0' in text
    )


class Crash(BaseException):
    """What a test raises for the process dying (no handler of the engine catches it)."""


class FlakyStore:
    """Wraps a GraphStore: the next ``fail`` applies raise (StorageError or a crash)."""

    def __init__(self, store: Any, fail: int, exc: type[BaseException]) -> None:
        self._store, self.fail, self.exc = store, fail, exc

    def apply(self, mutations: Any, checkpoints: Any = None, **options: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise self.exc("disk on fire")
        return self._store.apply(mutations, checkpoints, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_storage_errors_are_retried_and_a_crash_before_the_write_loses_and_doubles_nothing(
    graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hopcast.stream.engines.embedded.time.sleep", lambda s: None)
    values = [*RECORDS["playback"][:50], b"{bad", *RECORDS["playback"][50:100]]
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    flaky = FlakyStore(graph.store, 2, StorageError)
    engine = EmbeddedEngine(
        flaky,  # type: ignore[arg-type]
        [(ListSource("playback", values), maps["playback"].pipeline())],
        batch_ms=10,
    )
    engine.run(until_idle=True)
    assert stored_positions(graph.store, ["playback"])["playback"] == {"0": Position("0", 100)}
    # A crash after the dead letters were written and before the graph write: the restart
    # reads the same records again; the dead letter is stored once.
    with Graph.open(None) as g2:
        crash = FlakyStore(g2.store, 1, Crash)
        engine = EmbeddedEngine(
            crash,  # type: ignore[arg-type]
            [(ListSource("playback", values), maps["playback"].pipeline())],
            batch_ms=10,
        )
        with pytest.raises(Crash):
            engine.run(until_idle=True)
        assert DeadLetterStore(g2.store.kv).count() == 1
        assert g2.store.checkpoints() == {}
        engine = EmbeddedEngine(
            g2, [(ListSource("playback", values), maps["playback"].pipeline())], batch_ms=10
        )
        engine.run(until_idle=True)
        assert DeadLetterStore(g2.store.kv).count() == 1
        assert engine.stats.events == 101


def test_stop_from_another_thread_finishes_the_batch_and_closes_the_sources(
    graph: Graph,
) -> None:
    source = ListSource("playback", RECORDS["playback"][:10])
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    engine = engine_for(graph, [source], maps, batch_ms=20)
    threading.Timer(0.3, engine.stop).start()
    stats = engine.run()  # would run forever
    assert stats.events == 10
    assert source.committed == {"0": Position("0", 9)}
    with pytest.raises(RuntimeError, match="not open"):
        source.poll(1, 0)


def test_metrics_and_stats_describe_the_run(graph: Graph) -> None:
    engine = run_all(graph, lists(RECORDS))
    text = generate_latest(engine.metrics.registry).decode()
    for name in (
        'hopcast_ingest_events_total{source="browse"}',
        "hopcast_ingest_mutations_written_total",
        "hopcast_ingest_freshness_seconds_bucket",
        'hopcast_ingest_stage_seconds_count{stage="write"}',
        'hopcast_ingest_lag{source="browse"} 0.0',
    ):
        assert name in text
    events, mutations = engine.stats.rate(60)
    assert events > 0 and mutations > 0
    assert engine.stats.freshness_quantiles() is not None


def test_engine_arguments_are_checked(graph: Graph) -> None:
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    with pytest.raises(ValueError, match="no mapping"):
        engine_for(graph, [ListSource("nope")], maps)
    p = maps["browse"].pipeline()
    with pytest.raises(ValueError, match="unique"):
        EmbeddedEngine(graph, [(ListSource("a"), p), (ListSource("a"), p)])
    with pytest.raises(ValueError, match="batch_records"):
        EmbeddedEngine(graph, [], batch_records=0)


TITLES = """
version: 1
source: titles
format: json
time: {field: ts, format: us}
changelog:
  - {table: titles, key: "{title_id}"}
rules:
  - name: title
    emit:
      - node: "title:{title_id}"
        props: {name: "{name}"}
"""
PLAYS = """
version: 1
source: plays
format: json
time: {field: ts, format: us}
enrich:
  - {table: titles, key: "{title_id}", as: title, required: true}
rules:
  - name: play
    emit:
      - edge: started_watching
        from: "profile:{profile_id}"
        to: "title:{title.title_id}"
"""


def test_side_tables_survive_a_restart(graph: Graph) -> None:
    maps = {
        "titles": Mapping.from_yaml(TITLES, "titles.yaml", graph.schema),
        "plays": Mapping.from_yaml(PLAYS, "plays.yaml", graph.schema),
    }
    t = now_us() - HOUR  # inside the default lookback
    titles = [json.dumps({"title_id": str(i), "name": f"T{i}", "ts": t}).encode() for i in range(3)]
    titles.append(json.dumps({"title_id": "0", "name": "T0 (renamed)", "ts": t + 1}).encode())
    plays = [
        json.dumps({"profile_id": "p", "title_id": str(i), "ts": t + i}).encode() for i in range(4)
    ]
    first = engine_for(graph, [ListSource("titles", titles), ListSource("plays")], maps)
    first.run(until_idle=True)
    # Restart: the catalogue is not read again; the plays still find their titles.
    second = engine_for(
        graph,
        [ListSource("titles", titles), ListSource("plays", plays)],
        maps,
        batch_ms=10,
    )
    second.run(until_idle=True)
    assert second.stats.events == 4
    assert second.stats.dead_by_reason == {"enrichment_missing": 1}  # title 3 never existed
    assert {e.dst for e in graph.neighbours("profile:p", "started_watching").edges} == {
        "title:0",
        "title:1",
        "title:2",
    }
    assert second.tables["titles"].get("0") == {
        "title_id": "0",
        "name": "T0 (renamed)",
        "ts": t + 1,
    }


class FlakySource(ListSource):
    """Fails the polls numbered in ``fail_on`` (counting every poll) with a SourceError."""

    def __init__(self, name: str, values: list[bytes], fail_on: set[int]) -> None:
        super().__init__(name, values)
        self.fail_on, self.polls = fail_on, 0

    def poll(self, max_records: int, timeout_s: float) -> list[Any]:
        self.polls += 1
        if self.polls in self.fail_on:
            raise SourceError(f"{self.name}: broker away")
        return super().poll(max_records, timeout_s)


def test_a_failing_source_is_reopened_with_the_others_at_the_stored_positions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hopcast.stream.engines.embedded.SOURCE_BACKOFF_S", 0.001)
    with Graph.open(tmp_path / "clean") as clean:
        run_all(clean, lists(RECORDS))
        want = graph_dump(clean)
    with Graph.open(tmp_path / "g") as g:
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        sources = [FlakySource(n, v, {3, 4, 9}) for n, v in RECORDS.items()]
        engine = engine_for(g, sources, maps, batch_records=97, batch_ms=5)
        engine.run(until_idle=True)
        assert graph_dump(g) == want  # nothing lost, nothing twice
        assert all(s.opened >= 3 for s in sources)
        reg = engine.metrics.registry
        errors = [
            reg.get_sample_value("hopcast_ingest_source_errors_total", {"source": n}) or 0
            for n in RECORDS
        ]
        assert sum(errors) >= 3
        # Past source_retries failures in a row, the error stops the engine.
        always = FlakySource("browse", RECORDS["browse"], set(range(1, 100)))
        stubborn = engine_for(g, [always], maps, source_retries=2)
        with pytest.raises(SourceError, match="broker away"):
            stubborn.run(until_idle=True)


# -- no record stops the pipeline ---------------------------------------------------------------


def _game(profile: str, minutes: Any, ts: int, game: str = "1") -> bytes:
    """A games log line (the demo mapping: profile -[plays {minutes}]-> game)."""
    doc = {"event": "game_session_end", "ts_ms": ts // 1000, "profile_id": profile}
    return json.dumps(doc | {"game_id": game, "device_id": "d", "minutes": minutes}).encode()


def test_values_no_backend_can_store_are_dead_letters_and_the_batch_is_written(
    graph: Graph,
) -> None:
    t = now_us() - HOUR
    deep = json.dumps({"x": 1}).replace("1", "[" * 40 + "]" * 40)
    values = [
        _game("a", 5, t),
        _game("b", 2**70, t),  # beyond int64
        b'{"event": "game_session_end", "ts_ms": %d, "profile_id": "c", "game_id": "1", '
        b'"device_id": "d", "minutes": 1%s}' % (t // 1000, b"0" * 400),  # a 400-digit number
        _game("x" * 600, 5, t),  # a node id of 600+ bytes (LMDB keys hold 511)
        _game("e", 5, t, game=deep),  # odd, but a valid id: written
        b"[" * 100_000 + b"]" * 100_000,  # 100k-deep nesting
        _game("f", 7, t),
    ]
    engine = run_all(graph, [ListSource("games", values)])
    assert engine.stats.events == len(values)
    letters = {d.position.offset: d for d in DeadLetterStore(graph.store.kv)}
    assert {o: d.reason for o, d in letters.items()} == {
        1: "out_of_bounds",
        2: "out_of_bounds",
        3: "out_of_bounds",
        5: "out_of_bounds",
    }
    assert "signed 64-bit range" in letters[1].message
    assert "an integer of" in letters[2].message  # never 400 digits in a message
    assert "limit is 250" in letters[3].message
    assert letters[5].stage == "decode"
    assert {e.dst for e in graph.neighbours("profile:a", "plays").edges} == {"game:1"}
    assert {e.dst for e in graph.neighbours("profile:f", "plays").edges} == {"game:1"}
    assert {e.dst for e in graph.neighbours("profile:e", "plays").edges} == {f"game:{deep}"}
    assert stored_positions(graph.store, ["games"]) == {"games": {"0": Position("0", 6)}}


class RefusingStore:
    """Wraps a GraphStore whose backend refuses any write touching ``poison`` (what LMDB does
    to a key it cannot hold), and counts the writes."""

    def __init__(self, store: Any, poison: str | None, exc: Exception) -> None:
        self._store, self.poison, self.exc, self.writes = store, poison, exc, 0

    def apply(self, mutations: Any, checkpoints: Any = None, **options: Any) -> Any:
        self.writes += 1
        if self.poison is None or any(self.poison in repr(m) for m in mutations):
            raise self.exc
        return self._store.apply(mutations, checkpoints, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize(
    "exc",
    [StorageRefused("MDB_BAD_VALSIZE"), OverflowError("int too big to convert")],
    ids=["refused", "unexpected"],
)
def test_a_record_the_store_refuses_is_one_dead_letter_and_the_rest_of_its_batch_is_written(
    graph: Graph, exc: Exception
) -> None:
    t = now_us() - HOUR
    values = [_game(f"p{i}", i, t + i) for i in range(50)]
    values[17] = _game("poison", 1, t)
    values[33] = _game("poison", 2, t)
    refusing = RefusingStore(graph.store, "poison", exc)
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    engine = EmbeddedEngine(
        refusing,  # type: ignore[arg-type]
        [(ListSource("games", values), maps["games"].pipeline(graph.schema))],
        batch_records=100,
    )
    engine.run(until_idle=True)
    letters = sorted(DeadLetterStore(graph.store.kv), key=lambda d: d.position)
    assert [(d.position.offset, d.reason, d.stage) for d in letters] == [
        (17, "write_failed", "write"),
        (33, "write_failed", "write"),
    ]
    assert type(exc).__name__ in letters[0].message
    assert len(graph.neighbours("profile:p49", "plays").edges) == 1
    written = {f"profile:p{i}" for i in range(50) if i not in (17, 33)}
    assert all(graph.neighbours(p, "plays").edges for p in written)
    assert stored_positions(graph.store, ["games"]) == {"games": {"0": Position("0", 49)}}
    assert engine.stats.dead_letters == 2 and engine.stats.dead_by_reason == {"write_failed": 2}
    assert refusing.writes < 30  # halves, not one write per record


def test_a_store_that_fails_every_write_stops_the_engine_unharmed_instead_of_dead_lettering(
    graph: Graph,
) -> None:
    t = now_us() - HOUR
    broken = RefusingStore(graph.store, None, RuntimeError("disk on fire"))  # every write
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    engine = EmbeddedEngine(
        broken,  # type: ignore[arg-type]
        [(ListSource("games", [_game("a", 1, t)]), maps["games"].pipeline(graph.schema))],
    )
    with pytest.raises(RuntimeError, match="disk on fire"):
        engine.run(until_idle=True)
    assert DeadLetterStore(graph.store.kv).count() == 0
    assert graph.store.checkpoints() == {}


def test_writes_outside_the_clock_window_get_their_own_reasons_and_count(graph: Graph) -> None:
    now = now_us()
    values = [
        _game("a", 1, now - HOUR),
        _game("b", 1, now - 200 * 24 * HOUR),  # older than the plays' 100-day retention
        _game("c", 1, (9999 - 1970) * 365 * 24 * HOUR),  # the year 9999
        _game("d", 1, now + 2 * HOUR),  # beyond the default hour of clock skew
    ]
    engine = run_all(graph, [ListSource("games", values)])
    reasons = {d.position.offset: d.reason for d in DeadLetterStore(graph.store.kv)}
    assert reasons == {1: "expired", 2: "future_time", 3: "future_time"}
    assert engine.stats.expired == 1  # the one edge of the expired record
    text = generate_latest(engine.metrics.registry).decode()
    assert 'hopcast_ingest_expired_total{source="games"}' in text
    assert graph.neighbours("profile:b", "plays").edges == []


def test_a_corrupt_stored_position_of_its_own_stops_the_engine_with_a_clear_error(
    graph: Graph,
) -> None:
    t = now_us() - HOUR
    run_all(graph, [ListSource("games", [_game("a", 1, t)])])
    graph.store.apply([], {"games/0": b"\xc1garbage", "someone-else": b"\xc1"}, validated=True)
    # The next run refuses to read the source again from its start without a word.
    with pytest.raises(StorageError, match=r"stored position 'games/0' of source 'games'"):
        run_all(graph, [ListSource("games", [_game("a", 1, t), _game("b", 1, t)])])
    assert DeadLetterStore(graph.store.kv).count() == 0
    # Repaired: the engine resumes after the position it is given.
    graph.store.apply([], {"games/0": Position("0", 0).to_bytes()}, validated=True)
    again = run_all(graph, [ListSource("games", [_game("a", 1, t), _game("b", 1, t)])])
    assert again.stats.events == 1


def test_side_table_rows_are_stored_with_the_batch_that_changed_them(graph: Graph) -> None:
    maps = {
        "titles": Mapping.from_yaml(TITLES, "titles.yaml", graph.schema),
        "plays": Mapping.from_yaml(PLAYS, "plays.yaml", graph.schema),
    }
    t = now_us() - HOUR
    titles = [json.dumps({"title_id": "0", "name": "T0", "ts": t}).encode()]
    crashing = FlakyStore(graph.store, 1, Crash)
    engine = engine_for(crashing, [ListSource("titles", titles)], maps)  # type: ignore[arg-type]
    with pytest.raises(Crash):
        engine.run(until_idle=True)
    # The crash came before the batch's one write: no row, no node, no position.
    with graph.store.kv.reader() as r:
        assert list(r.scan(SIDE_NS, b"titles", 0)) == []
    assert graph.store.checkpoints() == {}
    engine = engine_for(graph, [ListSource("titles", titles)], maps)
    engine.run(until_idle=True)
    with graph.store.kv.reader() as r:
        assert [i.key for i in r.scan(SIDE_NS, b"titles", 0)] == [b"0"]


# -- source order decides ties -------------------------------------------------------------------

ACCOUNTS = """
version: 1
source: {source}
format: debezium
rules:
  - when: {{table: accounts}}
    emit:
      - node: "account:{{row.id}}"
        props: {{plan: "{{row.plan}}"}}
"""


def _change(op: str, row: dict[str, Any], commit_ms: int, lsn: int | None) -> bytes:
    source: dict[str, Any] = {"connector": "postgresql", "table": "accounts", "ts_ms": commit_ms}
    if lsn is not None:
        source["lsn"] = lsn
    images = {"before": None, "after": row}
    return json.dumps({**images, "op": op, "source": source, "ts_ms": commit_ms}).encode()


@pytest.mark.parametrize("with_lsn", [True, False], ids=["lsn", "offsets only"])
def test_one_transactions_changes_resolve_in_source_order_whatever_the_topic_is_called(
    tmp_path: Path, with_lsn: bool
) -> None:
    """Every change of a transaction shares its commit time: the change's LSN (or, without
    one, its offset) breaks the tie, never a hash of a name."""
    commit_ms = (now_us() - HOUR) // 1000
    changes: list[bytes] = []
    lsn = 1_000_000
    for i in range(20):  # created basic, updated 5 times, in one transaction
        changes.append(_change("c", {"id": i, "plan": "basic"}, commit_ms, lsn))
        for n in range(5):
            lsn += 40
            changes.append(_change("u", {"id": i, "plan": f"v{n}"}, commit_ms, lsn))
        lsn += 40
    graphs = []
    for name, partition in [("dbzs", "dbzs.public.accounts:0"), ("dbzn", "x:3"), ("a", "0")]:
        with Graph.open(tmp_path / name) as g:
            mapping = Mapping.from_yaml(ACCOUNTS.format(source=name), f"{name}.yaml", g.schema)
            values = changes if with_lsn else [_strip_lsn(v) for v in changes]
            engine_for(g, [ListSource(name, {partition: values})], {name: mapping}).run(
                until_idle=True
            )
            nodes = [g.node(f"account:{i}") for i in range(20)]
            assert [n.props["plan"] if n else None for n in nodes] == ["v4"] * 20, name
            graphs.append({ns: rows for ns, rows in graph_dump(g).items() if ns.startswith("n.")})
    assert graphs[0] == graphs[1] == graphs[2]  # the same history, the same graph (versions too)


def _strip_lsn(value: bytes) -> bytes:
    doc = json.loads(value)
    del doc["source"]["lsn"]
    return json.dumps(doc).encode()


class _CheckingSource(ListSource):
    """Fails the run if it is told a batch is done before the batch's positions are stored."""

    def __init__(self, name: str, values: list[bytes], store: Any) -> None:
        super().__init__(name, values)
        self._store, self.told = store, 0

    def commit(self, positions: Any) -> None:
        stored = stored_positions(self._store, [self.name])[self.name]
        for partition, pos in positions.items():
            held = stored.get(partition)
            assert held is not None and held.offset >= pos.offset, (
                f"told {pos} while the store holds {held}"
            )
        self.told += 1
        super().commit(positions)


@pytest.mark.parametrize("overlap", [True, False])
def test_a_source_is_told_a_batch_is_done_only_once_its_positions_are_stored(
    graph: Graph, overlap: bool, tmp_path: Path
) -> None:
    sources = [_CheckingSource(n, v, graph.store) for n, v in RECORDS.items()]
    maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
    engine = engine_for(graph, sources, maps, batch_records=113, overlap_writes=overlap)
    engine.run(until_idle=True)
    assert engine.stats.events == 3000
    assert sum(s.told for s in sources) >= 3000 // 113
    with Graph.open(tmp_path / "clean") as clean:
        run_all(clean, lists(RECORDS), overlap_writes=not overlap)
        assert graph_dump(clean) == graph_dump(graph)

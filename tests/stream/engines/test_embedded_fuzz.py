"""No record stops the pipeline: arbitrary bytes, JSON documents and change envelopes go through
the embedded engine into LMDB (the backend with the tightest limits) for each source format.

For every generated stream the engine must not raise; every record is counted once; every
record is either one stored dead letter (at its own position) or had its effect on the graph;
the stored position is the last record's.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hopcast.durations import HOUR, now_us
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, NodeDelete, NodeUpsert
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetterStore
from hopcast.stream.engines import engine_for, stored_positions
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import split
from hopcast.stream.record import Position, Record
from hopcast.stream.sources import ListSource

T = now_us() - HOUR

#: Numbers at and beyond every bound a backend has (int64, uint64, msgpack, JSON doubles).
EDGE_INTS = st.sampled_from(
    [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**70, 10**400]
)
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="ab:/\x00é😀", max_size=8),
    st.integers(min_value=240, max_value=700).map(lambda n: "x" * n),  # around the id bound
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    EDGE_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
#: Nesting far deeper than any decoder's recursion limit.
DEEP = st.integers(min_value=30, max_value=100_000).map(lambda n: b"[" * n + b"]" * n)


def _dumps(doc: Any) -> bytes:
    # json.dumps writes any int (even 400 digits) as JSON allows.
    return json.dumps(doc, allow_nan=False).encode()


@st.composite
def game_record(draw: Any) -> bytes:
    doc = {
        "event": draw(st.sampled_from(["game_session_end", "game_session_start", "x"])),
        "ts_ms": draw(st.one_of(st.just(T // 1000), EDGE_INTS, st.integers(), SCALARS)),
        "profile_id": draw(st.one_of(TEXT, SCALARS)),
        "game_id": draw(st.one_of(TEXT, SCALARS)),
        "device_id": draw(TEXT),
        "minutes": draw(st.one_of(st.integers(0, 500), EDGE_INTS, SCALARS)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2, unique=True)):
        del doc[key]
    return _dumps(doc)


@st.composite
def change_record(draw: Any) -> bytes:
    row = {
        "id": draw(TEXT),
        "profile_id": draw(st.one_of(TEXT, SCALARS)),
        "title_id": draw(st.one_of(TEXT, SCALARS)),
        "device_id": draw(TEXT),
        "position_s": draw(st.one_of(st.integers(0, 7200), EDGE_INTS, SCALARS)),
        "bitrate_kbps": draw(st.one_of(st.just(3000), EDGE_INTS, SCALARS)),
        "updated_at": draw(st.one_of(st.just(T), EDGE_INTS, SCALARS)),
    }
    op = draw(st.sampled_from(["c", "u", "d", "r", "t", "x", None]))
    images = draw(
        st.sampled_from(
            [{"before": None, "after": row}, {"before": row, "after": None}, {"before": row}]
        )
    )
    source = {"connector": "postgresql", "table": draw(st.sampled_from(["playback", "other"]))}
    source |= draw(st.sampled_from([{}, {"lsn": draw(st.integers(0, 2**40))}, {"lsn": "x"}]))
    doc: dict[str, Any] = {**images, "op": op, "source": source, "ts_ms": T // 1000}
    if draw(st.booleans()):
        doc = {"schema": {}, "payload": doc}
    return _dumps(doc)


def streams(shaped: Any) -> Any:
    """Lists of record values: mostly well-shaped records with hostile fields, plus arbitrary
    JSON, arbitrary bytes, deep nesting and empty values."""
    kinds = st.one_of(shaped, shaped, JSON.map(_dumps), st.binary(max_size=64), DEEP, st.just(b""))
    return st.lists(kinds, min_size=1, max_size=12)


def _check_stream(source: str, values: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp, Graph.open(f"{tmp}/g") as graph:
        maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
        engine = engine_for(graph, [ListSource(source, values)], maps, batch_records=5)
        stats = engine.run(until_idle=True)  # must not raise, whatever the values
        assert stats.events == len(values)
        letters = {d.position.offset: d for d in DeadLetterStore(graph.store.kv)}
        assert len(letters) == stats.dead_letters  # one stored letter per rejected record
        assert stored_positions(graph.store, [source]) == {
            source: {"0": Position("0", len(values) - 1)}
        }
        # Every other record had its effect: what its pipeline made of it is in the graph
        # (unless a delete in the same stream removed it, or its time has expired).
        pipeline = maps[source].pipeline(graph.schema)
        outputs = [
            split(pipeline.process(Record(source, Position("0", i), v), now_us()))
            for i, v in enumerate(values)
        ]
        deleted = {
            m.node if isinstance(m, NodeDelete) else (m.src, m.type, m.dst)
            for ms, _ in outputs
            for m in ms
            if isinstance(m, NodeDelete | EdgeDelete)
        }
        for i, (ms, dead) in enumerate(outputs):
            assert (i in letters) == bool(dead), (i, values[i][:200], dead, letters.get(i))
            for m in ms:
                if isinstance(m, NodeUpsert) and m.node not in deleted:
                    assert graph.node(m.node) is not None, m
                if isinstance(m, EdgeUpsert) and not {m.src, m.dst, (m.src, m.type, m.dst)} & (
                    deleted
                ):
                    assert graph.exists(m.src, m.type, m.dst), m


FUZZ = settings(
    max_examples=60,
    deadline=None,  # a busy machine: the bound is the example count, not the time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)


@FUZZ
@given(streams(game_record()))
def test_json_log_records_never_stop_the_engine_and_each_lands_once(values: list[bytes]) -> None:
    _check_stream("games", values)


@FUZZ
@given(streams(change_record()))
def test_change_events_never_stop_the_engine_and_each_lands_once(values: list[bytes]) -> None:
    _check_stream("playback", values)

"""The embedded engine's pipelines validate every mutation against the store's schema, and the
store then skips validating them again (``validated_by``): the engine stores and refuses the
same records as with the store's own validation on top."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from demo_records import demo_records, graph_dump

from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.graphdb import Graph
from hopcast.stream.deadletter import DeadLetterStore
from hopcast.stream.engines import EmbeddedEngine, engine_for
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.operators import Pipeline
from hopcast.stream.sources import ListSource

RECORDS = demo_records(1500, seed=11)


def _game(**fields: Any) -> bytes:
    doc = json.loads(RECORDS["games"][0]) | fields
    return json.dumps(doc).encode()


#: Records whose mutations the schema refuses (the pipeline dead-letters them), mixed into
#: good ones.
BAD = [
    _game(profile_id="p" * 300),  # a node id over the bound
    _game(minutes="many"),  # not an int
    _game(game_id=""),  # an empty node key
]


def _records() -> dict[str, list[bytes]]:
    records = {name: list(values) for name, values in RECORDS.items()}
    for i, bad in enumerate(BAD):
        records["games"].insert(10 + 25 * i, bad)
    return records


def _run(
    path: Path, monkeypatch: pytest.MonkeyPatch, store_validates: bool, **options: Any
) -> tuple[Any, list[tuple[Any, ...]], int]:
    """Ingest the records; returns the graph, the dead letters and how often the store
    validated a batch."""
    calls = [0]
    real = GraphStore.validate

    def counting(self: GraphStore, mutations: Any) -> list[Mutation]:
        calls[0] += 1
        return real(self, mutations)

    with monkeypatch.context() as m, Graph.open(path) as g:
        m.setattr(GraphStore, "validate", counting)
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        sources = [ListSource(n, v) for n, v in _records().items()]
        engine = engine_for(g, sources, maps, batch_ms=20, batch_records=300, **options)
        if store_validates:
            engine._validated_by = None  # what every caller without a proof gets
        engine.run(until_idle=True)
        letters = sorted(
            (d.source, d.position.offset, d.reason, d.payload) for d in DeadLetterStore(g.store.kv)
        )
        return graph_dump(g), letters, calls[0]


def test_the_engine_stores_and_refuses_the_same_records_whether_or_not_the_store_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trusted, trusted_letters, trusted_calls = _run(tmp_path / "a", monkeypatch, False)
    checked, checked_letters, checked_calls = _run(tmp_path / "b", monkeypatch, True)
    assert trusted_calls == 0, "the store validated mutations the pipelines had validated"
    assert checked_calls > 0
    assert {p for *_, p in trusted_letters} == set(BAD), "each bad record is one dead letter"
    assert trusted_letters == checked_letters
    assert trusted == checked


def test_the_engine_proves_validation_only_with_one_schema_and_no_coalescing(
    tmp_path: Path,
) -> None:
    with Graph.open(tmp_path / "g") as g:
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        sources = [ListSource(n, []) for n in RECORDS]
        assert engine_for(g, sources, maps)._validated_by is g.store.schema
        assert engine_for(g, sources, maps, coalesce=True)._validated_by is None
        pipelines = [(s, maps[s.name].pipeline(g.schema)) for s in sources]
        unchecked = [(s, Pipeline(p.decoder, p.steps, None)) for s, p in pipelines]
        assert EmbeddedEngine(g, unchecked)._validated_by is None
        (s0, p0), *rest = pipelines
        mixed = [(s0, Pipeline(p0.decoder, p0.steps, Schema.demo())), *rest]
        assert EmbeddedEngine(g, mixed)._validated_by is None

"""GraphStore.apply(validated_by=...): the store skips its own validation only for mutations
validated against its very schema; every other caller keeps every refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hopcast.durations import DAY
from hopcast.errors import OutOfBounds, SchemaViolation
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.lmdb import LmdbKV

NOW = 1_700_000_000_000_000
B = NOW - DAY

#: One mutation for each kind of refusal the schema makes (and its bounds).
BAD: dict[str, Mutation] = {
    "unknown node type": NodeUpsert("planet:1", B, "x"),
    "malformed node id": NodeUpsert("account", B, "x"),
    "unknown edge type": EdgeUpsert("profile:1", "likes", "title:1", B, "x"),
    "wrong endpoints": EdgeUpsert("account:1", "plays", "game:1", B, "x", {"minutes": 1}),
    "backwards one-way edge": EdgeUpsert("game:1", "plays", "profile:1", B, "x"),
    "undeclared property": NodeUpsert("title:1", B, "x", {"rating": 5}),
    "wrong property type": NodeUpsert("title:1", B, "x", {"year": "1999"}),
    "ts outside the storable range": NodeUpsert("account:1", 1 << 62, "x"),
    "negative ts": EdgeDelete("profile:1", "plays", "game:1", -1, "x"),
    "node id too long": NodeDelete("account:" + "a" * 300, B, "x"),
}

GOOD: list[Mutation] = [
    NodeUpsert("account:1", B, "a", {"plan": "basic"}),
    EdgeUpsert("profile:1", "plays", "game:1", B, "b", {"minutes": 3}),
]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    kv = LmdbKV(tmp_path / "g", sync=False)
    yield GraphStore(kv, Schema.demo(), clock=lambda: NOW)
    kv.close()


def _stored(store: GraphStore) -> tuple[Any, ...]:
    with store.read(NOW) as r:
        return (
            r.node("account:1"),
            r.edge("profile:1", "plays", "game:1"),
            store.checkpoints(),
        )


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("proof", ["none", "an equal schema", "a validated=False flag"])
def test_a_caller_without_the_stores_own_schema_as_proof_gets_every_refusal(
    store: GraphStore, case: str, proof: str
) -> None:
    options: dict[str, Any] = {
        "none": {},
        "an equal schema": {"validated_by": Schema.demo()},
        "a validated=False flag": {"validated": False},
    }[proof]
    with pytest.raises((SchemaViolation, OutOfBounds)) as info:
        store.apply([*GOOD, BAD[case]], {"s/0": b"1"}, **options)
    assert info.value.index == len(GOOD), "the refusal names the bad mutation"
    assert _stored(store) == (None, None, {}), "nothing of the refused batch is written"


def test_the_store_skips_its_validation_only_for_its_own_schema_object(
    store: GraphStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = GraphStore.validate

    def counting(self: GraphStore, mutations: Any) -> list[Mutation]:
        calls.append(1)
        return real(self, mutations)

    monkeypatch.setattr(GraphStore, "validate", counting)
    store.apply(GOOD, validated_by=store.schema)
    assert calls == [], "mutations validated against the store's schema are not validated again"
    store.apply(GOOD, validated_by=Schema.demo())
    store.apply(GOOD)
    assert calls == [1, 1], "any other caller is validated"
    assert _stored(store)[:2] != (None, None)

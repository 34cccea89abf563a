"""GraphStore on LMDB writes edge upserts through the backend's fused ``upsert_listed``; these
tests hold it to the generic per-edge loop (the one every other backend runs): the same items,
byte for byte, after the same batches."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lmdb
import pytest

from hopcast.durations import DAY
from hopcast.errors import StorageRefused
from hopcast.graph import store as store_module
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore, _ListedWriter
from hopcast.kv.lmdb import LmdbKV

NOW = 1_700_000_000_000_000
SCHEMA = Schema.demo()


@runtime_checkable
class _NoFusedWrite(Protocol):
    """Matches no write transaction: the store then runs its generic per-edge loop."""

    def no_backend_has_this(self) -> None: ...


def batches(seed: int) -> list[list[Mutation]]:
    """Random batches over a few members and titles: newer, older and tied versions of the
    same edges (within and across batches), edge deletes, node deletes and resurrections, and
    replays of earlier batches."""
    rng = random.Random(seed)
    profiles = [f"profile:p{i}" for i in range(6)]
    titles = [f"title:t{i}" for i in range(5)]
    out: list[list[Mutation]] = []
    for b in range(25):
        batch: list[Mutation] = []
        for i in range(rng.randint(1, 40)):
            ts = NOW - DAY + rng.randint(0, 30) * 1000
            mid = f"m{b}.{i}.{rng.randint(0, 3)}"
            p, t = rng.choice(profiles), rng.choice(titles)
            roll = rng.random()
            if roll < 0.6:
                edge_type = rng.choice(["browsed", "started_watching"])
                props: dict[str, Any] = (
                    {"row": rng.choice(["a", "b"]), "page": "home"}
                    if edge_type == "browsed"
                    else {"position_s": rng.randint(0, 99)}
                )
                batch.append(EdgeUpsert(p, edge_type, t, ts, mid, props))
            elif roll < 0.75:
                batch.append(EdgeDelete(p, "browsed", t, ts, mid))
            elif roll < 0.85:
                batch.append(NodeDelete(rng.choice([p, t]), ts, mid))
            else:
                batch.append(NodeUpsert(t, ts, mid, {"name": f"n{i}"}))
        out.append(batch)
        if b % 5 == 4:
            out.append(list(out[rng.randrange(len(out))]))  # a replay: every version ties
    return out


def dump(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every item of every named database of the LMDB environment at ``path``."""
    env = lmdb.open(str(path), max_dbs=256, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
            out = {}
            for name in names:
                db = env.open_db(name, txn=txn, create=False)
                out[name] = list(txn.cursor(db=db))
        return out
    finally:
        env.close()


def run(path: Path, seed: int) -> list[tuple[int, int]]:
    kv = LmdbKV(path)
    store = GraphStore(kv, SCHEMA, clock=lambda: NOW)
    try:
        results = []
        for batch in batches(seed):
            r = store.apply(batch, {"s/0": str(len(results)).encode()})
            results.append((r.applied, r.skipped))
        return results
    finally:
        kv.close()


@pytest.mark.parametrize("seed", range(6))
def test_the_fused_edge_write_stores_exactly_what_the_generic_loop_stores(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fused = run(tmp_path / "fused", seed)
    with monkeypatch.context() as m:
        m.setattr(store_module, "_ListedWriter", _NoFusedWrite)
        generic = run(tmp_path / "generic", seed)
    assert fused == generic, "applied/skipped counts differ"
    got, want = dump(tmp_path / "fused"), dump(tmp_path / "generic")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], f"namespace {name!r} differs"


def test_lmdb_takes_the_fused_edge_write(tmp_path: Path) -> None:
    kv = LmdbKV(tmp_path / "s")
    with kv.writer() as w:
        assert isinstance(w, _ListedWriter)
    kv.close()


def test_an_edge_id_too_long_to_store_is_refused_and_nothing_of_the_batch_is_written(
    tmp_path: Path,
) -> None:
    kv = LmdbKV(tmp_path / "s")
    store = GraphStore(kv, SCHEMA, clock=lambda: NOW)
    long_dst = "title:" + "x" * 70_000
    batch: list[Mutation] = [
        EdgeUpsert("profile:a", "browsed", "title:ok", NOW - DAY, "m1", {"row": "r"}),
        EdgeUpsert("profile:a", "browsed", long_dst, NOW - DAY, "m2", {"row": "r"}),
    ]
    with pytest.raises(StorageRefused):
        store.apply(batch, {"s/0": b"1"}, validated=True)
    assert store.checkpoints() == {}
    with store.read(NOW) as r:
        assert r.edge("profile:a", "browsed", "title:ok") is None
    kv.close()

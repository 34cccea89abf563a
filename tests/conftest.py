"""Shared fixtures. ``kv`` runs a test once per KV backend (the contract suite uses it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV

BACKENDS = ["memory", "lmdb"]


def make_kv(name: str, tmp_path: Path) -> KVStore:
    if name == "memory":
        return MemoryKV()
    if name == "lmdb":
        return LmdbKV(tmp_path / "lmdb", sync=False)
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    store = make_kv(request.param, tmp_path)
    yield store
    store.close()

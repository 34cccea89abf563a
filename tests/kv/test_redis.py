"""The Redis backend beyond the contract suite, on one server and on a Redis Cluster."""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path

import pytest

from hopcast.demo.company import Company, CompanyConfig
from hopcast.durations import DAY
from hopcast.graph import keys as graph_keys
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeDelete, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv import KVStore, open_kv
from hopcast.kv import redis as redis_kv
from hopcast.kv.base import Item, visible
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.redis import RedisKV

NOW = 1_000_000_000_000


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request: pytest.FixtureRequest, redis_prefix: str) -> RedisKV:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = "redis+cluster://" + request.getfixturevalue("redis_cluster_url").partition("://")[2]
    kv = RedisKV(url, prefix=redis_prefix)
    request.addfinalizer(kv.close)
    return kv


def reference_count(
    kv: KVStore, ns: str, rid: bytes, now: int, start: bytes | None, stop: bytes | None
) -> int:
    with kv.writer() as w:  # every stored item, tombstones and expired included
        items = list(w.scan(ns, rid, start, stop))
    return sum(1 for i in items if visible(i, now))


def test_count_runs_on_the_server_across_calls_and_matches_the_items(
    store: RedisKV, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting decides tombstones and expiry on the server; a record bigger than one call's
    share (pages x page size) is counted over several calls."""
    monkeypatch.setattr(redis_kv, "COUNT_BATCH", 7)
    monkeypatch.setattr(redis_kv, "COUNT_PAGES", 3)
    store.configure("ns", 1_000)
    rng = random.Random(5)
    with store.writer() as w:
        for i in range(400):
            key = i.to_bytes(2, "big")
            ts = rng.choice([NOW - 2_000, NOW - 1_000, NOW - 999, NOW, NOW + 5])
            ttl = rng.choice([None, None, 10**9, 1])
            w.put("ns", b"r", key, b"x" * rng.randrange(4), ts, i, ttl, tombstone=i % 11 == 0)
    ranges = [(None, None), (b"\x00\x10", None), (None, b"\x01\x00"), (b"\x00\x05", b"\x00\x06")]
    for now in (NOW - 5_000, NOW - 1, NOW, NOW + 1, NOW + 10**10):
        for start, stop in ranges:
            want = reference_count(store, "ns", b"r", now, start, stop)
            with store.reader() as r:
                assert r.count("ns", b"r", now, start, stop) == want, (now, start, stop)
    with store.reader() as r:
        assert r.count("ns", b"nobody", NOW) == 0


def test_an_item_expiring_at_now_is_not_counted(store: RedisKV) -> None:
    store.configure("ns", None)
    with store.writer() as w:
        w.put("ns", b"r", b"a", b"", 100, 0, ttl_us=50)  # expires at 150
        w.put("ns", b"r", b"b", b"", -(10**12), 0, ttl_us=10)  # a negative expiry
    with store.reader() as r:
        assert r.count("ns", b"r", 149) == 1
        assert r.count("ns", b"r", 150) == 0
        assert r.count("ns", b"r", -(10**13)) == 2


def test_pipelines_load_the_scripts_a_server_lost(store: RedisKV) -> None:
    """After SCRIPT FLUSH (what a restarted or newly promoted server looks like), pipelined
    reads and a Cluster's pipelined slot groups load the scripts again and go on."""
    store.configure("ns", None)
    rids = [b"r%d" % i for i in range(30)]
    store._r.script_flush()
    with store.writer() as w:
        for rid in rids:
            w.put("ns", rid, b"k", rid, 1, 0)
        w.set_checkpoint("src", b"1")
    store._r.script_flush()
    with store.reader() as r:
        pages = r.fetch_many("ns", rids, NOW, 5)
    assert [p[0].value for p in pages] == rids
    assert store.checkpoints() == {"src": b"1"}


def test_the_key_prefix_can_come_with_the_url(redis_url: str, redis_prefix: str) -> None:
    url = f"{redis_url}?socket_timeout=5&prefix={redis_prefix}url:"
    with open_kv(url) as kv:
        assert isinstance(kv, RedisKV) and kv.prefix == f"{redis_prefix}url:"
        kv.configure("ns", None)
        with kv.writer() as w:
            w.put("ns", b"r", b"k", b"v", 1, 0)
    with RedisKV(f"{redis_url}?prefix={redis_prefix}url:") as kv:
        assert kv.get("ns", b"r", b"k", NOW) is not None
    with RedisKV(url, prefix=f"{redis_prefix}other:") as kv:  # the argument wins
        assert kv.prefix == f"{redis_prefix}other:"
        assert kv.get("ns", b"r", b"k", NOW) is None


def test_on_one_server_a_reader_never_finds_a_batch_torn(redis_url: str, redis_prefix: str) -> None:
    """One server applies a batch as one script: a reader that reads one record after another
    while batches go in never finds an older batch in a record than in one it read before (a
    Redis Cluster can: ``test_redis_cluster.py``)."""
    writer = RedisKV(redis_url, prefix=redis_prefix)
    reader = RedisKV(redis_url, prefix=redis_prefix)
    writer.configure("ns", None)
    rids = [b"r%d" % i for i in range(40)]
    stop = threading.Event()
    sweeps: list[bool] = []  # per sweep: torn?

    def read() -> None:
        while not stop.is_set():
            values = [reader.get("ns", rid, b"k", NOW) for rid in rids]
            found = [-1 if v is None else int(v.value) for v in values]
            sweeps.append(any(b < a for a, b in itertools.pairwise(found)))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(300):
            with writer.writer() as w:
                for rid in rids:
                    w.put("ns", rid, b"k", b"%d" % i, i + 1, 0)
            if i % 20 == 0:
                time.sleep(0.001)  # let the reader in
    finally:
        stop.set()
        thread.join()
        writer.close()
        reader.close()
    assert sweeps, "the reader never finished a sweep"
    assert not any(sweeps)


def stored(kv: KVStore, records: set[tuple[str, bytes]]) -> dict[tuple[str, bytes], list[Item]]:
    """Every stored item (tombstones included) of ``records``."""
    with kv.writer() as w:
        return {(ns, rid): list(w.scan(ns, rid)) for ns, rid in sorted(records)}


def test_graph_batches_leave_the_items_lmdb_leaves(store: RedisKV, tmp_path: Path) -> None:
    """The demo company's records, then replays, older and newer rewrites of its edges, edge
    and node deletes, in batches through the graph store: Redis (one server and Cluster) ends
    with exactly LMDB's items, versions and tombstones included."""
    company = Company(CompanyConfig(accounts=20, titles=60, games=5, seed=3), start_ts=0)
    start = 1_700_000_000_000_000
    first = [*company.catalogue(), *company.members(), *company.activity(1500, start, start + DAY)]
    rng = random.Random(4)
    edges = [m for m in first if isinstance(m, EdgeUpsert)]
    nodes = sorted({m.node for m in first if isinstance(m, NodeUpsert)})
    later: list[Mutation] = list(rng.sample(first, 300))  # replays
    for e in rng.sample(edges, 300):
        shift = rng.choice([-5, 0, 7])
        ts = max(0, e.ts + shift)
        later.append(EdgeUpsert(e.src, e.type, e.dst, ts, f"{e.id}/{shift}", e.props))
    for e in rng.sample(edges, 60):
        later.append(
            EdgeDelete(e.src, e.type, e.dst, max(0, e.ts + rng.choice([-1, 1])), f"{e.id}/d")
        )
    for n in rng.sample(nodes, 8):
        later.append(NodeDelete(n, start + DAY // 2, f"{n}/d"))
    rng.shuffle(later)
    schema = Schema.demo()
    lmdb = LmdbKV(str(tmp_path / "lmdb"), sync=False)
    try:
        for kv in (lmdb, store):
            graph = GraphStore(kv, schema, clock=lambda: start)
            work = first + later
            for i in range(0, len(work), 250):
                graph.apply(work[i : i + 250], {"src": b"%d" % i})
        records: set[tuple[str, bytes]] = set()
        for m in first:
            if isinstance(m, NodeUpsert):
                records.add((graph_keys.node_ns(m.node.partition(":")[0]), m.node.encode()))
            elif isinstance(m, EdgeUpsert):
                records.add((graph_keys.out_ns(m.type), m.src.encode()))
                records.add((graph_keys.in_ns(m.type), m.dst.encode()))
                records.add((graph_keys.key_ns(m.type), m.src.encode()))
        want, got = stored(lmdb, records), stored(store, records)
        assert sum(map(len, want.values())) > 3000
        assert got == want
        assert store.checkpoints() == lmdb.checkpoints()
    finally:
        lmdb.close()

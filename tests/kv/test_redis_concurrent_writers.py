"""Several processes writing the same edges into one Redis (or Redis Cluster) at once.

Each writer is its own :class:`RedisKV` (its own connections, its own lock), as two API
replicas or the API beside an ingest engine are. Whatever the interleaving, every index of an
edge must end at the last-write-wins winner of all the writes of that edge: the ``key`` item,
exactly one entry in each time-ordered list (forward and reverse) at the winner's time, the
counts, and exactly one expiry-index entry per list entry.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from hopcast.graph import keys
from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, token_of
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore, decode_props
from hopcast.kv import KVStore
from hopcast.kv.base import time_key
from hopcast.kv.redis import RedisKV, _unmember

NOW = 1_700_000_000_000_000
EDGE = "started_watching"  # has a retention: its items carry expiry-index entries
SOURCES = [f"profile:{i}" for i in range(3)]
TARGETS = [f"title:{i}" for i in range(3)]
#: Writers and batches per writer: enough for many writes of one edge to meet between one
#: writer's read-ahead and its commit (each batch is small, so batches interleave finely).
WRITERS = 4
BATCHES = 60
#: How long a writer waits for the others at the start line.
START_TIMEOUT_S = 60.0


def _url(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "redis":
        return str(request.getfixturevalue("redis_url"))
    node = request.getfixturevalue("redis_cluster_url").partition("://")[2]
    return f"redis+cluster://{node}"


def _batches(seed: int) -> list[list[Mutation]]:
    rng = random.Random(seed)
    out: list[list[Mutation]] = []
    for b in range(BATCHES):
        batch: list[Mutation] = []
        for i in range(rng.randint(1, 4)):
            src, dst = rng.choice(SOURCES), rng.choice(TARGETS)
            ts = NOW + rng.randrange(40)  # a narrow window: versions cross often
            mid = f"w{seed}-{b}-{i}"
            if rng.random() < 0.25:
                batch.append(EdgeDelete(src, EDGE, dst, ts, mid))
            else:
                batch.append(EdgeUpsert(src, EDGE, dst, ts, mid, {"position_s": rng.randrange(99)}))
        out.append(batch)
    return out


def _winners(batches: list[list[Mutation]]) -> dict[tuple[str, str], Mutation]:
    """The oracle: per edge, the write with the greatest ``(ts, token)``."""
    best: dict[tuple[str, str], Mutation] = {}
    for batch in batches:
        for m in batch:
            assert isinstance(m, EdgeUpsert | EdgeDelete)
            k = (m.src, m.dst)
            cur = best.get(k)
            if cur is None or (m.ts, token_of(m)) > (cur.ts, token_of(cur)):
                best[k] = m
    return best


def _write_concurrently(url: str, prefix: str, schema: Schema) -> list[list[Mutation]]:
    plans = [_batches(seed) for seed in range(WRITERS)]
    start = threading.Barrier(WRITERS, timeout=START_TIMEOUT_S)
    errors: list[BaseException] = []

    def writer(plan: list[list[Mutation]]) -> None:
        kv = RedisKV(url, prefix=prefix)
        try:
            graph = GraphStore(kv, schema, clock=lambda: NOW)
            start.wait()
            for batch in plan:
                graph.apply(batch)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            kv.close()

    threads = [threading.Thread(target=writer, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, f"a writer failed: {errors[0]!r}"
    return [batch for plan in plans for batch in plan]


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_concurrent_writers_of_the_same_edges_leave_every_index_at_the_lww_winner(
    request: pytest.FixtureRequest, redis_prefix: str, backend: str
) -> None:
    url = _url(request, backend)
    schema = Schema.demo()
    batches = _write_concurrently(url, redis_prefix, schema)
    winners = _winners(batches)
    out_ns, in_ns, key_ns = keys.out_ns(EDGE), keys.in_ns(EDGE), keys.key_ns(EDGE)
    ttl = schema.edges[EDGE].retention_us
    assert ttl is not None
    kv = RedisKV(url, prefix=redis_prefix)
    request.addfinalizer(kv.close)
    graph = GraphStore(kv, schema, clock=lambda: NOW)

    problems: list[str] = []
    with kv.writer() as w:
        out_lists = {src: list(w.scan(out_ns, src.encode())) for src in SOURCES}
        in_lists = {dst: list(w.scan(in_ns, dst.encode())) for dst in TARGETS}
        key_items = {
            (s, d): w.get(key_ns, s.encode(), d.encode()) for s in SOURCES for d in TARGETS
        }
    for (src, dst), win in sorted(winners.items()):
        live = isinstance(win, EdgeUpsert)
        item = key_items[(src, dst)]
        if item is None or (item.ts, item.token, item.tombstone) != (
            win.ts,
            token_of(win),
            not live,
        ):
            problems.append(f"key item of {src}->{dst} is {item}, the winner is {win}")
        for name, entries, other in (
            ("out", out_lists[src], dst),
            ("in", in_lists[dst], src),
        ):
            mine = [i for i in entries if i.key[8:] == other.encode()]
            want = [keys.time_item(win.ts, other.encode())] if live else []
            if [i.key for i in mine] != want:
                problems.append(
                    f"{name} list of {src}->{dst} holds {[keys.ts_of(i.key) for i in mine]},"
                    f" the winner is {type(win).__name__} at {win.ts}"
                )
            elif live:
                assert isinstance(win, EdgeUpsert)
                got = mine[0]
                if (got.ts, got.token) != (win.ts, token_of(win)) or decode_props(
                    got.value
                ) != dict(win.props):
                    problems.append(f"{name} entry of {src}->{dst} is {got}, winner {win}")
    # Every list entry belongs to a winning upsert (none for edges never written).
    for src, entries in out_lists.items():
        for i in entries:
            if not isinstance(winners.get((src, i.key[8:].decode())), EdgeUpsert):
                problems.append(f"out list of {src} holds a stray {i}")
    for dst, entries in in_lists.items():
        for i in entries:
            if not isinstance(winners.get((i.key[8:].decode(), dst)), EdgeUpsert):
                problems.append(f"in list of {dst} holds a stray {i}")
    # Counts: as many edges as live winners, per source and per target.
    with graph.read(NOW) as r:
        for src in SOURCES:
            want_n = sum(1 for (s, _), m in winners.items() if s == src and type(m) is EdgeUpsert)
            got_n = r.count(src, EDGE, "out")
            if got_n != want_n:
                problems.append(f"count out of {src} is {got_n}, want {want_n}")
        for dst in TARGETS:
            want_n = sum(1 for (_, d), m in winners.items() if d == dst and type(m) is EdgeUpsert)
            got_n = r.count(dst, EDGE, "in")
            if got_n != want_n:
                problems.append(f"count in of {dst} is {got_n}, want {want_n}")
    # The expiry index: exactly one entry per list entry, scored at its expiry; none for list
    # entries that are gone.
    scored: Counter[tuple[str, bytes, bytes]] = Counter()
    scores: dict[tuple[str, bytes, bytes], float] = {}
    for exp_key in kv._exp_keys():
        for member, score in kv._r.zrange(exp_key, 0, -1, withscores=True):
            ns, rid, key = _unmember(member)
            if ns in (out_ns, in_ns) and key[:1] != b"\xff":  # list entries, not markers
                scored[(ns, rid, key)] += 1
                scores[(ns, rid, key)] = score
    expected = {
        (out_ns, src.encode(), keys.time_item(m.ts, dst.encode()))
        for (src, dst), m in winners.items()
        if type(m) is EdgeUpsert
    } | {
        (in_ns, dst.encode(), keys.time_item(m.ts, src.encode()))
        for (src, dst), m in winners.items()
        if type(m) is EdgeUpsert
    }
    if set(scored) != expected:
        problems.append(
            f"expiry index: {len(set(scored) - expected)} stale entries,"
            f" {len(expected - set(scored))} missing: {sorted(set(scored) - expected)[:3]}"
        )
    for k in expected & set(scored):
        if scores[k] != keys.ts_of(k[2]) + ttl:
            problems.append(f"expiry entry {k} scored {scores[k]}, want {keys.ts_of(k[2]) + ttl}")
    assert not problems, f"{len(problems)} index problems, first ones:\n" + "\n".join(problems[:12])


def test_time_key_is_the_graphs_inverted_time() -> None:
    for ts in (0, 1, NOW, keys.MAX_TS):
        assert time_key(ts) == keys.inv_ts(ts)


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_a_bulk_loaded_edge_rewritten_keeps_one_entry_and_the_sweep_leaves_no_marker(
    request: pytest.FixtureRequest, redis_prefix: str, backend: str
) -> None:
    """Edges written by ``load_edges`` have no list marker yet: the first indexed write finds
    their entries from what it read. Markers expire with their entries: after a sweep past
    every expiry, nothing of the edges is left in Redis."""
    url = _url(request, backend)
    schema = Schema.demo()
    kv = RedisKV(url, prefix=redis_prefix)
    request.addfinalizer(kv.close)
    graph = GraphStore(kv, schema, clock=lambda: NOW)
    graph.load_edges([EdgeUpsert("profile:1", EDGE, "title:1", NOW, "a")])
    graph.apply([EdgeUpsert("profile:1", EDGE, "title:1", NOW + 5, "b")])
    graph.apply([EdgeUpsert("profile:1", EDGE, "title:2", NOW + 1, "c")])
    graph.apply([EdgeDelete("profile:1", EDGE, "title:2", NOW + 2, "d")])
    with graph.read(NOW + 10) as r:
        assert [(e.dst, e.ts) for e in r.edges("profile:1", EDGE, "out")] == [("title:1", NOW + 5)]
        assert [(e.src, e.ts) for e in r.edges("title:1", EDGE, "in")] == [("profile:1", NOW + 5)]
    ttl = schema.edges[EDGE].retention_us
    assert ttl is not None
    graph.sweep(NOW + 5 + ttl)
    with kv.writer() as w:
        assert w.get(keys.key_ns(EDGE), b"profile:1", b"title:1") is None
    for ns, rid in (
        (keys.out_ns(EDGE), b"profile:1"),
        (keys.in_ns(EDGE), b"title:1"),
        (keys.in_ns(EDGE), b"title:2"),
    ):
        z, h = kv._keys(ns, rid)
        assert kv._r.exists(z) == 0 and kv._r.hgetall(h) == {}, f"{ns} {rid!r} left behind"


@pytest.mark.parametrize("backend", ["redis", "redis-cluster"])
def test_reads_in_the_block_see_the_list_entries_put_indexed_moves(
    request: pytest.FixtureRequest, redis_prefix: str, backend: str
) -> None:
    kv = RedisKV(_url(request, backend), prefix=redis_prefix)
    request.addfinalizer(kv.close)
    kv.configure_many({"k": None, "l": None})
    lists = [("l", b"r", b"x")]
    with kv.writer() as w:
        assert w.put_indexed("k", b"r", b"x", b"v1", 10, 1, lists)
    with kv.writer() as w:
        assert not w.put_indexed("k", b"r", b"x", b"old", 5, 1, lists)  # older: refused
        assert w.put_indexed("k", b"r", b"x", b"v2", 20, 1, lists)
        assert w.get("l", b"r", time_key(10) + b"x") is None
        assert [(i.key, i.value) for i in w.scan("l", b"r")] == [(time_key(20) + b"x", b"v2")]
    with kv.writer() as w:
        assert [(i.key, i.value) for i in w.scan("l", b"r")] == [(time_key(20) + b"x", b"v2")]
        assert w.put_indexed("k", b"r", b"x", b"", 30, 1, lists, tombstone=True)
        assert list(w.scan("l", b"r")) == []
    with kv.writer() as w:
        assert list(w.scan("l", b"r")) == []
        item = w.get("k", b"r", b"x")
        assert item is not None and item.tombstone and item.ts == 30


def test_put_indexed_keeps_one_list_entry_per_item_on_every_backend(kv: KVStore) -> None:
    """The contract on every backend: the entries follow the newest write; older writes and
    replays change nothing; a tombstone removes them."""
    kv.configure_many({"k": None, "l": None, "m": None})
    lists = [("l", b"a", b"x"), ("m", b"b", b"y")]

    def entries() -> list[tuple[str, bytes, int]]:
        with kv.writer() as w:
            return [
                (ns, i.key, i.ts) for ns, r in (("l", b"a"), ("m", b"b")) for i in w.scan(ns, r)
            ]

    with kv.writer() as w:
        assert w.put_indexed("k", b"r", b"x", b"v", 10, 1, lists)
    with kv.writer() as w:
        assert w.put_indexed("k", b"r", b"x", b"v", 30, 1, lists)
        assert not w.put_indexed("k", b"r", b"x", b"v", 20, 1, lists)
    with kv.writer() as w:
        assert not w.put_indexed("k", b"r", b"x", b"v", 30, 1, lists)  # a replay
    assert entries() == [("l", time_key(30) + b"x", 30), ("m", time_key(30) + b"y", 30)]
    with kv.writer() as w:
        assert w.put_indexed("k", b"r", b"x", b"", 40, 0, lists, tombstone=True)
    with kv.writer() as w:
        assert not w.put_indexed("k", b"r", b"x", b"v", 35, 9, lists)  # older than the delete
    assert entries() == []

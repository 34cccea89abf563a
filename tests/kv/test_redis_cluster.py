"""The Redis backend on a real Redis Cluster (3 masters): what the contract suite cannot show.

A batch spans hash slots, so it is applied as one script per slot and the checkpoint only after
all of them (see :mod:`hopcast.kv.redis`). These tests make the writer die after some of its
slot groups and check that the checkpoint did not move and that the batch still ends exactly as
a clean run -- also through the graph store, where replaying the mutations alone would not.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from hopcast import EdgeUpsert, Graph, NodeUpsert
from hopcast.errors import StorageError
from hopcast.graph import keys as graph_keys
from hopcast.graph.mutations import Mutation
from hopcast.kv import open_kv
from hopcast.kv.redis import RedisKV

NOW = 1_700_000_000_000_000
HOUR = 3_600_000_000

# A short grace: the journal entries these tests leave behind are known to be orphaned.
GRACE_MS = 100


@pytest.fixture
def url(redis_cluster_url: str) -> str:
    return "redis+cluster://" + redis_cluster_url.partition("://")[2]


@pytest.fixture
def client(redis_cluster_url: str) -> Iterator[Any]:
    rc = RedisCluster.from_url(redis_cluster_url)
    yield rc
    rc.close()


def fresh_prefix() -> str:
    return f"test:cluster:{os.urandom(4).hex()}:"


def dump(client: Any, prefix: str) -> dict[bytes, Any]:
    """Every key of a store (prefix removed) with its whole content, from every primary."""
    out: dict[bytes, Any] = {}
    p = prefix.encode()
    for key in client.scan_iter(match=p + b"*", count=1000):
        kind = client.type(key)
        name = key[len(p) :].replace(p, b"")  # the global keys' hash tag holds it too
        if kind == b"hash":
            out[name] = client.hgetall(key)
        elif kind == b"zset":
            out[name] = client.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError(f"unexpected key {key!r} of type {kind!r}")
    return out


def crash_after(kv: RedisKV, keep: Callable[[list[bytes]], bool]) -> None:
    """Make ``kv`` die half-way through its next multi-slot batch: only the slot groups whose
    KEYS ``keep`` accepts are applied, then the write fails as if the process had stopped."""
    real = kv._apply_groups

    def partial(groups: list[tuple[list[bytes], list[bytes | int]]]) -> None:
        chosen = [g for g in groups if keep(g[0])]
        assert 0 < len(chosen) < len(groups), "the injected crash must split the batch"
        real(chosen)
        raise StorageError("injected: the writer stopped after some slot groups")

    kv._apply_groups = partial  # type: ignore[method-assign]


def first_group_only() -> Callable[[list[bytes]], bool]:
    seen: list[bytes] = []

    def keep(keys: list[bytes]) -> bool:
        if not seen:
            seen.append(keys[0])
        return keys[0] == seen[0]

    return keep


def test_open_kv_takes_a_cluster_url_and_a_batch_reaches_every_primary(
    url: str, client: Any
) -> None:
    prefix = fresh_prefix()
    kv = open_kv(url, prefix=prefix)
    try:
        assert isinstance(kv, RedisKV) and kv.cluster
        kv.configure("ns", None)
        with kv.writer() as w:
            for i in range(60):
                w.put("ns", b"r%d" % i, b"k", b"v", 1, 0)
            w.set_checkpoint("src", b"1")
        holders = {
            client.get_node_from_key(k).name
            for k in client.scan_iter(match=prefix.encode() + b"h*", count=1000)
        }
        assert len(holders) == len(client.get_primaries()) == 3
        assert kv.checkpoints() == {"src": b"1"}
        assert [kv.get("ns", b"r%d" % i, b"k", NOW) is not None for i in range(60)] == [True] * 60
    finally:
        kv.close()


def test_a_single_server_url_is_not_a_cluster(redis_url: str, redis_prefix: str) -> None:
    kv = open_kv(redis_url, prefix=redis_prefix)
    try:
        assert isinstance(kv, RedisKV) and not kv.cluster
    finally:
        kv.close()


def test_an_unreachable_cluster_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot open Redis at redis\\+cluster://"):
        RedisKV("redis+cluster://127.0.0.1:1", retry=None, cluster_error_retry_attempts=1)


def batches(kv: RedisKV, crash: bool) -> None:
    """Batch 1 (checkpoint 1), then batch 2 (checkpoint 2) over 40 records in many slots,
    crashing half-way through batch 2 when asked."""
    kv.configure("ns", None)
    kv.configure("short", 10 * HOUR)
    with kv.writer() as w:
        for i in range(40):
            w.put("ns", b"r%d" % i, b"k", b"one", NOW, 1)
            w.put("short", b"r%d" % i, b"k", b"one", NOW, 1)
        w.set_checkpoint("src", b"1")
    if crash:
        crash_after(kv, first_group_only())
    with kv.writer() as w:
        for i in range(40):
            w.put_lww("ns", b"r%d" % i, b"k", b"two", NOW + 1, 1)
            w.put("short", b"r%d" % i, b"k", b"two", NOW + 1, 1)
            if i % 3 == 0:
                w.delete("ns", b"r%d" % i, b"gone") or w.put("ns", b"r%d" % i, b"x", b"", NOW, 1)
        w.set_checkpoint("src", b"2")


def test_a_crash_between_slot_groups_keeps_the_old_checkpoint_and_reopening_finishes_the_batch(
    url: str, client: Any
) -> None:
    clean_prefix, prefix = fresh_prefix(), fresh_prefix()
    clean = RedisKV(url, prefix=clean_prefix)
    batches(clean, crash=False)
    clean.close()

    kv = RedisKV(url, prefix=prefix)
    with pytest.raises(StorageError, match="injected"):
        batches(kv, crash=True)
    # The checkpoint did not move; some records have batch 2, some do not; the journal holds it.
    assert kv.checkpoints() == {"src": b"1"}
    values = [kv.get("ns", b"r%d" % i, b"k", NOW).value for i in range(40)]  # type: ignore[union-attr]
    assert 0 < values.count(b"two") < 40
    assert client.hlen(f"{prefix}{{{prefix}g}}jnl") == 1
    kv.close()  # the writer is gone

    # The restarted engine opens the store: the orphaned batch is rolled forward first.
    again = RedisKV(url, prefix=prefix, journal_grace_ms=GRACE_MS)
    try:
        assert again.checkpoints() == {"src": b"2"}
        assert dump(client, prefix) == dump(client, clean_prefix)
        # At-least-once: replaying batch 2 once more changes nothing.
        with again.writer() as w:
            for i in range(40):
                assert not w.put_lww("ns", b"r%d" % i, b"k", b"two", NOW + 1, 1)
                w.put("short", b"r%d" % i, b"k", b"two", NOW + 1, 1)
            w.set_checkpoint("src", b"2")
        assert dump(client, prefix) == dump(client, clean_prefix)
        assert again.sweep(NOW + 11 * HOUR) == 40  # the per-slot expiry indexes are whole
    finally:
        again.close()


def test_the_writer_finishes_its_half_applied_batch_before_its_next_one(
    url: str, client: Any
) -> None:
    prefix = fresh_prefix()
    kv = RedisKV(url, prefix=prefix)
    try:
        with pytest.raises(StorageError, match="injected"):
            batches(kv, crash=True)
        del kv._apply_groups  # the failure is over (e.g. the node is back)
        with kv.writer() as w:
            # Reads in the next batch already see batch 2 whole.
            assert [w.get("ns", b"r%d" % i, b"k").value for i in range(40)] == [b"two"] * 40  # type: ignore[union-attr]
            w.set_checkpoint("src", b"3")
        assert kv.checkpoints() == {"src": b"3"}
        assert client.hlen(f"{prefix}{{{prefix}g}}jnl") == 0
    finally:
        kv.close()


def test_a_late_roll_forward_never_moves_a_checkpoint_back(url: str, client: Any) -> None:
    prefix = fresh_prefix()
    kv = RedisKV(url, prefix=prefix)
    try:
        with pytest.raises(StorageError, match="injected"):
            batches(kv, crash=True)
        jnl = f"{prefix}{{{prefix}g}}jnl"
        (batch,) = client.hkeys(jnl)
        del kv._apply_groups
        with kv.writer() as w:
            w.set_checkpoint("src", b"3")
        # Another store that read the journal before the entry closed now rolls it forward:
        # its groups are re-applied (idempotent) but the checkpoint stays at 3.
        other = RedisKV(url, prefix=prefix)
        try:
            other._pending.append(batch)
            assert other._roll_forward([batch]) == 0  # the entry is gone: nothing to finish
        finally:
            other.close()
        assert kv.checkpoints() == {"src": b"3"}
    finally:
        kv.close()


#: Bound on opening a store beside a busy writer (waiting for the few batches it found in the
#: journal, finished in milliseconds): reached only by an opener that waits for new ones too.
OPEN_BOUND_S = 60.0


def test_opening_the_store_beside_a_busy_writer_does_not_wait_for_its_new_batches(url: str) -> None:
    """A store that opens waits for the journal entries it found (a live writer finishes them
    in milliseconds), not for the ones the writer keeps opening."""
    prefix = fresh_prefix()
    kv = RedisKV(url, prefix=prefix)
    kv.configure("ns", None)
    stop = threading.Event()
    written = [0]

    def write() -> None:
        while not stop.is_set():
            with kv.writer() as w:
                for i in range(30):
                    w.put("ns", b"r%d" % i, b"k", b"%d" % written[0], NOW, 1)
                w.set_checkpoint("src", b"%d" % written[0])
            written[0] += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        deadline = time.monotonic() + OPEN_BOUND_S
        while written[0] < 3:
            assert time.monotonic() < deadline, "the writer did not get going"
            time.sleep(0.01)
        # With a ten-minute grace, an opener that waited for the batches the writer keeps
        # opening would wait while it writes (for ever, here); one that waits only for what
        # it found is done as soon as those few batches are.
        opened = threading.Event()

        def open_store() -> None:
            RedisKV(url, prefix=prefix, journal_grace_ms=600_000).close()
            opened.set()

        threading.Thread(target=open_store, daemon=True).start()
        assert opened.wait(OPEN_BOUND_S), "the store waited for batches opened after it"
        assert written[0] > 3
    finally:
        stop.set()
        thread.join()
        kv.close()


# -- through the graph store --------------------------------------------------------------------

FIRST: list[Mutation] = [
    NodeUpsert("profile:1", NOW - 10 * HOUR, "n1", {"name": "Ann"}),
    NodeUpsert("title:10", NOW - 10 * HOUR, "n2", {"name": "Dark"}),
    EdgeUpsert(
        "profile:1", "started_watching", "title:10", NOW - 5 * HOUR, "e1", {"position_s": 0}
    ),
]
# Moves the edge to a newer time position: its old entries in the out/in lists must go.
SECOND: list[Mutation] = [
    EdgeUpsert("profile:1", "started_watching", "title:10", NOW - HOUR, "e2", {"position_s": 60}),
    EdgeUpsert("profile:2", "started_watching", "title:10", NOW - HOUR, "e3", {}),
    NodeUpsert("profile:1", NOW - HOUR, "n3", {"kids": False}),
]


def key_record_only(keys: list[bytes]) -> bool:
    """The slot group holding profile:1's ``key`` record (the edge's version), not its lists."""
    tag = (graph_keys.key_ns("started_watching").encode().hex() + ":" + b"profile:1".hex()).encode()
    return any(tag in k for k in keys)


def graph_run(url: str, prefix: str, crash: bool) -> Graph:
    graph = Graph.open(kv=RedisKV(url, prefix=prefix), clock=lambda: NOW)
    graph.apply(FIRST, {"src": b"1"})
    if crash:
        assert isinstance(graph.store.kv, RedisKV)
        crash_after(graph.store.kv, key_record_only)
        with pytest.raises(StorageError, match="injected"):
            graph.apply(SECOND, {"src": b"2"})
    else:
        graph.apply(SECOND, {"src": b"2"})
    return graph


def engine_restart(url: str, prefix: str) -> Graph:
    """What an engine does on restart: open the store, resume after its checkpoint (replaying
    batch 2 if the checkpoint says it was not applied, and once more anyway: at-least-once)."""
    graph = Graph.open(kv=RedisKV(url, prefix=prefix, journal_grace_ms=GRACE_MS), clock=lambda: NOW)
    if graph.store.kv.checkpoints() != {"src": b"2"}:
        graph.apply(SECOND, {"src": b"2"})
    graph.apply(SECOND, {"src": b"2"})
    return graph


def watched(graph: Graph) -> list[tuple[str, int]]:
    out = graph.neighbours("profile:1", "started_watching").edges
    into = graph.neighbours("title:10", "started_watching", direction="in").edges
    return [(e.dst, e.ts) for e in out] + [(e.src, e.ts) for e in into]


def test_a_graph_batch_cut_between_slot_groups_ends_as_a_clean_run(url: str, client: Any) -> None:
    clean_prefix, prefix = fresh_prefix(), fresh_prefix()
    graph_run(url, clean_prefix, crash=False).close()
    graph_run(url, prefix, crash=True).close()
    graph = engine_restart(url, prefix)
    try:
        assert graph.store.kv.checkpoints() == {"src": b"2"}
        assert sorted(watched(graph)) == [
            ("profile:1", NOW - HOUR),
            ("profile:2", NOW - HOUR),
            ("title:10", NOW - HOUR),
        ]
        node = graph.node("profile:1")
        assert node is not None and node.props == {"name": "Ann", "kids": False}
        assert dump(client, prefix) == dump(client, clean_prefix)
    finally:
        graph.close()


def test_without_the_journal_replaying_the_mutations_would_not_converge(
    url: str, client: Any
) -> None:
    """Why batches spanning slots are journaled: drop the journal entry the crash left (as if
    the batch had only been grouped by slot) and replay the mutations from the old checkpoint.
    The edge's ``key`` record already holds the new version, so the graph store skips the edge
    and its stale position in the lists is never removed."""
    clean_prefix, prefix = fresh_prefix(), fresh_prefix()
    graph_run(url, clean_prefix, crash=False).close()
    graph_run(url, prefix, crash=True).close()
    client.delete(f"{prefix}{{{prefix}g}}jnl", f"{prefix}{{{prefix}g}}jage")
    graph = engine_restart(url, prefix)
    try:
        assert graph.store.kv.checkpoints() == {"src": b"2"}
        assert ("title:10", NOW - 5 * HOUR) in watched(graph)  # the stale position survives
        assert dump(client, prefix) != dump(client, clean_prefix)
    finally:
        graph.close()


# -- a node going away ----------------------------------------------------------------------------


def test_a_node_down_is_a_storage_error_and_the_next_batch_finishes_the_cut_one(
    fresh_redis_cluster: Any,
) -> None:
    cluster = fresh_redis_cluster
    prefix = fresh_prefix()
    kv = RedisKV(f"redis+cluster://127.0.0.1:{cluster.port}", prefix=prefix)
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    try:
        kv.configure("ns", None)
        # A node that does not hold the journal and checkpoints (their slot stays up).
        keeper = client.get_node_from_key(f"{prefix}{{{prefix}g}}cp").port
        down = next(p for p in cluster.ports if p != keeper)
        subprocess.run(["redis-cli", "-p", str(down), "shutdown", "nosave"], check=True)
        started = time.monotonic()
        cut = pytest.raises(StorageError, match=r"Redis Cluster at redis\+cluster://")
        with cut as err, kv.writer() as w:
            for i in range(60):
                w.put("ns", b"r%d" % i, b"k", b"v", NOW, 1)
            w.set_checkpoint("src", b"1")
        # Retried with backoff (seconds, not minutes), then a clear error naming the node.
        assert 1 < time.monotonic() - started < 30
        assert f"127.0.0.1:{down}" in str(err.value)

        cluster.run("start", 60)  # the lost node is restarted into the cluster (empty)
        assert kv.checkpoints() == {}  # (the whole cluster was down meanwhile: full coverage)
        with kv.writer() as w:  # finishes the cut batch first, then writes this one
            w.set_checkpoint("src", b"2")
        assert kv.checkpoints() == {"src": b"2"}
        assert all(kv.get("ns", b"r%d" % i, b"k", NOW) is not None for i in range(60))
    finally:
        client.close()
        kv.close()


def owned(client: Any, port: int) -> int:
    """How many hash slots the node on ``port`` serves."""
    ranges = client.cluster_nodes()[f"127.0.0.1:{port}"]["slots"]
    return sum(int(hi) - int(lo) + 1 for lo, hi in ranges)


def test_batches_and_reads_go_on_while_slots_move(fresh_redis_cluster: Any) -> None:
    """`redis-cli --cluster reshard` moves 2,000 slots (MIGRATING/IMPORTING, ASK, TRYAGAIN)
    while a writer commits batches over 200 records and a reader reads them: no error reaches
    either, and the last batch and its checkpoint are whole at the end."""
    cluster = fresh_redis_cluster
    kv = RedisKV(f"redis+cluster://127.0.0.1:{cluster.port}", prefix=fresh_prefix())
    client = RedisCluster(host="127.0.0.1", port=cluster.port)
    ids = {n.port: client.cluster_myid(n) for n in client.get_primaries()}
    kv.configure("ns", None)
    stop = threading.Event()
    errors: list[str] = []
    batches_done = [0]
    rids = [b"r%d" % i for i in range(200)]

    def write() -> None:
        while not stop.is_set():
            n = batches_done[0]
            try:
                with kv.writer() as w:
                    for rid in rids:
                        w.put_lww("ns", rid, b"k", b"%d" % n, n + 1, 1)
                    w.set_checkpoint("src", b"%d" % n)
                batches_done[0] += 1
            except Exception as exc:  # any error is the finding
                errors.append(f"write: {exc!r}")
                return

    def read() -> None:
        while not stop.is_set():
            try:
                with kv.reader() as r:
                    pages = r.fetch_many("ns", rids[::7], NOW, 5)
                # a reader may see two consecutive batches at once, never more
                assert len({p[0].value for p in pages if p}) <= 2
            except Exception as exc:
                errors.append(f"read: {exc!r}")
                return

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    try:
        while batches_done[0] < 3 and not errors:
            time.sleep(0.01)
        src, dst = ids[cluster.ports[0]], ids[cluster.ports[1]]
        slots_before = owned(client, cluster.ports[1])
        reshard = ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{cluster.port}"]
        reshard += ["--cluster-from", src.decode(), "--cluster-to", dst.decode()]
        moved = subprocess.run(
            [*reshard, "--cluster-slots", "2000", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert moved.returncode == 0, moved.stderr
        before = batches_done[0]
        while batches_done[0] < before + 3 and not errors:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    try:
        assert errors == []
        assert owned(client, cluster.ports[1]) == slots_before + 2000  # the slots did move
        last = batches_done[0] - 1
        assert kv.checkpoints() == {"src": b"%d" % last}
        values = {kv.get("ns", rid, b"k", NOW).value for rid in rids}  # type: ignore[union-attr]
        assert values == {b"%d" % last}
    finally:
        client.close()
        kv.close()


def test_a_journal_left_by_the_release_before_sectioned_scripts_is_rolled_forward(
    url: str,
) -> None:
    """Journal entries hold the slot scripts' arguments; an entry written by the release whose
    scripts took 6-field operations still rolls forward after an upgrade."""
    from redis.crc import key_slot

    from hopcast.kv.base import HEADER
    from hopcast.kv.redis import _journal_encode, _member

    prefix = fresh_prefix()
    kv = RedisKV(url, prefix=prefix)
    kv.configure("ns", None)
    kv.configure("short", HOUR)
    groups = []
    for i in range(6):
        ns = "short" if i % 2 else "ns"
        expires_at = NOW + HOUR if i % 2 else 0
        z, h = kv._keys(ns, b"r%d" % i)
        blob = HEADER.pack(NOW, 1, expires_at, 0) + b"old"
        member = _member(ns, b"r%d" % i, b"k")
        groups.append(([kv._exp_of(key_slot(z)), z, h], [b"P", 2, b"k", blob, expires_at, member]))
    batch = b"legacy-batch"
    journal = _journal_encode(([("src", b"9")], groups))
    kv._begin(keys=[kv._jnl, kv._jage, kv._meta], args=[batch, journal])
    kv.close()
    again = RedisKV(url, prefix=prefix, journal_grace_ms=0)
    try:
        assert again.checkpoints() == {"src": b"9"}
        for i in range(6):
            item = again.get("short" if i % 2 else "ns", b"r%d" % i, b"k", NOW)
            assert item is not None and item.value == b"old", i
        assert again.sweep(NOW + HOUR) == 3  # the old scripts' expiry entries are swept
    finally:
        again.close()


def test_a_reader_between_slot_groups_sees_the_batch_torn_and_whole_once_the_block_returns(
    url: str,
) -> None:
    """The Cluster caveat, pinned: while a multi-slot batch is applied, a reader that reads
    one record after another can find the new batch in one record and the old one in a record
    read later (each record is whole); once the writer's block has returned, every record
    reads the new batch."""
    prefix = fresh_prefix()
    kv = RedisKV(url, prefix=prefix)
    reader = RedisKV(url, prefix=prefix)
    rids = [b"r%d" % i for i in range(40)]
    seen_between: list[list[bytes]] = []
    try:
        kv.configure("ns", None)
        with kv.writer() as w:
            for rid in rids:
                w.put("ns", rid, b"k", b"old", NOW, 0)
        real = kv._apply_groups

        def with_a_reader_between(groups: list[tuple[list[bytes], list[bytes | int]]]) -> None:
            real(groups[:1])
            seen_between.append([reader.get("ns", rid, b"k", NOW).value for rid in rids])  # type: ignore[union-attr]
            real(groups[1:])

        kv._apply_groups = with_a_reader_between  # type: ignore[method-assign]
        with kv.writer() as w:
            for rid in rids:
                w.put("ns", rid, b"k", b"new", NOW + 1, 0)
            w.set_checkpoint("src", b"1")
        (between,) = seen_between
        assert 0 < between.count(b"new") < len(rids), "a half-applied batch is visible"
        assert [reader.get("ns", rid, b"k", NOW).value for rid in rids] == [b"new"] * 40  # type: ignore[union-attr]
        assert reader.checkpoints() == {"src": b"1"}
    finally:
        kv.close()
        reader.close()

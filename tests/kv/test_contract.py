"""The KV contract: every backend must pass every test here (memory is the reference)."""

from __future__ import annotations

import threading

import pytest

from hopcast.errors import InvalidCursor, StoreClosed
from hopcast.kv import KVStore
from hopcast.kv.base import TOMBSTONE_GRACE_US

NOW = 1_000_000_000_000


def put(kv: KVStore, ns: str, rid: bytes, key: bytes, value: bytes = b"v", ts: int = 1) -> None:
    with kv.writer() as w:
        w.put(ns, rid, key, value, ts, 0)


def keys(items: list) -> list[bytes]:  # type: ignore[type-arg]
    return [i.key for i in items]


def test_an_item_written_can_be_read_back_with_its_version(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"r1", b"k", b"hello", 5, 9)
    item = kv.get("ns", b"r1", b"k", NOW)
    assert item is not None
    assert (item.key, item.value, item.ts, item.token) == (b"k", b"hello", 5, 9)
    assert kv.get("ns", b"r1", b"other", NOW) is None
    assert kv.get("ns", b"r2", b"k", NOW) is None
    assert kv.get("missing-ns", b"r1", b"k", NOW) is None


def test_items_scan_in_key_order_forward_and_backward(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        for k in [b"c", b"a", b"e", b"b", b"d"]:
            w.put("ns", b"r", k, k.upper(), 1, 0)
        w.put("ns", b"q", b"x", b"", 1, 0)  # a neighbouring record must not leak in
        w.put("ns", b"rr", b"x", b"", 1, 0)
    with kv.reader() as r:
        assert keys(list(r.scan("ns", b"r", NOW))) == [b"a", b"b", b"c", b"d", b"e"]
        assert keys(list(r.scan("ns", b"r", NOW, reverse=True))) == [b"e", b"d", b"c", b"b", b"a"]
        assert keys(list(r.scan("ns", b"r", NOW, start=b"b", stop=b"d"))) == [b"b", b"c"]
        assert keys(list(r.scan("ns", b"r", NOW, b"b", b"d", reverse=True))) == [b"c", b"b"]
        assert keys(list(r.scan("ns", b"r", NOW, start=b"bb"))) == [b"c", b"d", b"e"]
        assert r.count("ns", b"r", NOW) == 5
        assert r.count("ns", b"r", NOW, start=b"b", stop=b"e") == 3
        assert list(r.scan("ns", b"nobody", NOW)) == []


def test_long_scans_stream_across_batches_in_order(kv: KVStore) -> None:
    kv.configure("ns", None)
    want = [i.to_bytes(4, "big") for i in range(1000)]
    with kv.writer() as w:
        for k in want:
            w.put("ns", b"r", k, b"", 1, 0)
    with kv.reader() as r:
        assert keys(list(r.scan("ns", b"r", NOW))) == want
        assert keys(list(r.scan("ns", b"r", NOW, reverse=True))) == want[::-1]


def test_pages_resume_from_their_cursor_without_gaps_or_repeats(kv: KVStore) -> None:
    kv.configure("ns", None)
    want = [i.to_bytes(2, "big") for i in range(95)]
    with kv.writer() as w:
        for k in want:
            w.put("ns", b"r", k, b"", 1, 0)
    for reverse in (False, True):
        seen: list[bytes] = []
        cursor = None
        while True:
            page = kv.page("ns", b"r", NOW, limit=10, reverse=reverse, cursor=cursor)
            seen += keys(page.items)
            if page.cursor is None:
                break
            cursor = page.cursor
        assert seen == (want[::-1] if reverse else want)
    exact = kv.page("ns", b"r", NOW, limit=95)
    assert exact.cursor is None and len(exact.items) == 95


def test_a_cursor_outside_the_range_is_rejected(kv: KVStore) -> None:
    kv.configure("ns", None)
    put(kv, "ns", b"r", b"a")
    with pytest.raises(InvalidCursor):
        kv.page("ns", b"r", NOW, limit=1, stop=b"m", cursor=b"z")


def test_put_lww_keeps_the_newest_version_and_ignores_replays(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        assert w.put_lww("ns", b"r", b"k", b"v10", 10, 1)
        assert not w.put_lww("ns", b"r", b"k", b"v5", 5, 99)  # older never overwrites
        assert not w.put_lww("ns", b"r", b"k", b"again", 10, 1)  # same version: no-op
        assert w.put_lww("ns", b"r", b"k", b"v10b", 10, 2)  # tie broken by token
        assert not w.put_lww("ns", b"r", b"k", b"v10a", 10, 1)
    item = kv.get("ns", b"r", b"k", NOW)
    assert item is not None and item.value == b"v10b"


def test_tombstones_hide_items_and_block_older_writes(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"r", b"k", b"live", 5, 0)
        assert w.put_lww("ns", b"r", b"k", b"", 8, 0, tombstone=True)
        assert not w.put_lww("ns", b"r", b"k", b"late", 7, 0)
        stored = w.get("ns", b"r", b"k")
        assert stored is not None and stored.tombstone
    assert kv.get("ns", b"r", b"k", NOW) is None
    with kv.reader() as r:
        assert list(r.scan("ns", b"r", NOW)) == []
        assert r.count("ns", b"r", NOW) == 0
    with kv.writer() as w:
        assert w.put_lww("ns", b"r", b"k", b"reborn", 9, 0)
    item = kv.get("ns", b"r", b"k", NOW)
    assert item is not None and item.value == b"reborn"


def test_namespace_ttl_hides_expired_items_and_sweep_removes_them(kv: KVStore) -> None:
    kv.configure("short", 100)
    kv.configure("forever", None)
    with kv.writer() as w:
        w.put("short", b"r", b"old", b"", 1000, 0)  # expires at 1100
        w.put("short", b"r", b"new", b"", 2000, 0)  # expires at 2100
        w.put("short", b"r", b"pinned", b"", 1000, 0, ttl_us=10_000)  # per-item TTL wins
        w.put("forever", b"r", b"k", b"", 1000, 0)
    with kv.reader() as r:
        assert keys(list(r.scan("short", b"r", 1050))) == [b"new", b"old", b"pinned"]
        assert keys(list(r.scan("short", b"r", 1500))) == [b"new", b"pinned"]
        assert r.get("short", b"r", b"old", 1500) is None
        assert r.count("short", b"r", 1500) == 2
    assert kv.sweep(1500) == 1
    with kv.writer() as w:
        assert w.get("short", b"r", b"old") is None  # physically gone
        assert w.get("short", b"r", b"new") is not None
    assert kv.sweep(10**15) == 2
    assert kv.get("forever", b"r", b"k", 10**15) is not None


def test_tombstones_without_ttl_are_swept_after_the_grace_period(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"r", b"k", b"", 1000, 0, tombstone=True)
    assert kv.sweep(1000 + TOMBSTONE_GRACE_US - 1) == 0
    assert kv.sweep(1000 + TOMBSTONE_GRACE_US) == 1


def test_sweep_respects_its_limit(kv: KVStore) -> None:
    kv.configure("ns", 10)
    with kv.writer() as w:
        for i in range(50):
            w.put("ns", b"r", i.to_bytes(2, "big"), b"", 1, 0)
    assert kv.sweep(NOW, limit=20) == 20
    assert kv.sweep(NOW) == 30


def test_a_failed_write_leaves_no_trace(kv: KVStore) -> None:
    kv.configure("ns", None)
    put(kv, "ns", b"r", b"keep", b"before")
    with pytest.raises(RuntimeError), kv.writer() as w:
        w.put("ns", b"r", b"keep", b"after", 2, 0)
        w.put("ns", b"r", b"new", b"x", 2, 0)
        w.delete("ns", b"r", b"keep")
        w.set_checkpoint("src", b"42")
        raise RuntimeError("boom")
    item = kv.get("ns", b"r", b"keep", NOW)
    assert item is not None and item.value == b"before"
    assert kv.get("ns", b"r", b"new", NOW) is None
    assert kv.checkpoints() == {}


def test_checkpoints_commit_with_the_data(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"r", b"k", b"v", 1, 0)
        w.set_checkpoint("kafka:events/0", b"100")
        w.set_checkpoint("kafka:events/1", b"7")
    with kv.writer() as w:
        w.set_checkpoint("kafka:events/0", b"150")
    assert kv.checkpoints() == {"kafka:events/0": b"150", "kafka:events/1": b"7"}


def test_delete_removes_an_item_physically(kv: KVStore) -> None:
    kv.configure("ns", None)
    put(kv, "ns", b"r", b"a")
    put(kv, "ns", b"r", b"b")
    with kv.writer() as w:
        assert w.delete("ns", b"r", b"a")
        assert not w.delete("ns", b"r", b"a")
        assert not w.delete("ns", b"zz", b"a")
    with kv.reader() as r:
        assert keys(list(r.scan("ns", b"r", NOW))) == [b"b"]


def test_write_scans_see_tombstones_and_uncommitted_writes(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"r", b"a", b"", 1, 0, tombstone=True)
        w.put("ns", b"r", b"b", b"", 1, 0)
        assert [(i.key, i.tombstone) for i in w.scan("ns", b"r")] == [(b"a", True), (b"b", False)]


def test_binary_record_ids_and_keys_do_not_collide(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"a", b"\x00b", b"1", 1, 0)
        w.put("ns", b"a\x00", b"b", b"2", 1, 0)
        w.put("ns", b"", b"\xff\xff", b"3", 1, 0)
    with kv.reader() as r:
        assert [i.value for i in r.scan("ns", b"a", NOW)] == [b"1"]
        assert [i.value for i in r.scan("ns", b"a\x00", NOW)] == [b"2"]
        assert [i.value for i in r.scan("ns", b"", NOW)] == [b"3"]


def test_concurrent_readers_see_only_committed_writes(kv: KVStore) -> None:
    kv.configure("ns", None)
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with kv.reader() as r:
                got = [i.value for i in r.scan("ns", b"r", NOW)]
            # each writer batch writes the pair (a, b) with the same value
            if got and (len(got) != 2 or got[0] != got[1]):
                errors.append(repr(got))

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(200):
        with kv.writer() as w:
            w.put("ns", b"r", b"a", str(i).encode(), i, 0)
            w.put("ns", b"r", b"b", str(i).encode(), i, 0)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


def test_a_closed_store_refuses_use(kv: KVStore) -> None:
    kv.close()
    with pytest.raises(StoreClosed):
        kv.get("ns", b"r", b"k", NOW)


def test_fetch_returns_at_most_limit_visible_items_in_key_order(kv: KVStore) -> None:
    kv.configure("ns", 100)
    with kv.writer() as w:
        for i in range(10):
            w.put("ns", b"r", bytes([i]), bytes([i]), 1000 if i % 3 else 1, 0)  # 0,3,6,9 expire
        w.put("ns", b"r", b"\x05", b"", 1000, 0, tombstone=True)
    with kv.reader() as r:
        assert keys(r.fetch("ns", b"r", 500, 3)) == [b"\x01", b"\x02", b"\x04"]
        assert keys(r.fetch("ns", b"r", 500, 100, start=b"\x04", stop=b"\x08")) == [
            b"\x04",
            b"\x07",
        ]
        built = r.fetch("ns", b"r", 500, 2, make=lambda k, v, ts: (k, v, ts))
        assert built == [(b"\x01", b"\x01", 1000), (b"\x02", b"\x02", 1000)]
        assert r.fetch("ns", b"nobody", 500, 5) == []
        assert r.fetch("unknown-ns", b"r", 500, 5) == []


def test_fetch_many_answers_each_record_like_fetch(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        for rid in (b"a", b"b", b"d"):
            for i in range(5):
                w.put("ns", rid, bytes([i]), rid, i, 0)
    rids = [b"d", b"a", b"c", b"b"]
    with kv.reader() as r:
        many = r.fetch_many("ns", rids, NOW, 3, start=b"\x01")
        assert [keys(x) for x in many] == [
            keys(r.fetch("ns", rid, NOW, 3, b"\x01")) for rid in rids
        ]
        assert [len(x) for x in many] == [3, 3, 0, 3]
        made = r.fetch_many("ns", rids, NOW, 1, make=lambda i, k, v, ts: (i, v))
        assert made == [[(0, b"d")], [(1, b"a")], [], [(3, b"b")]]


def test_put_many_writes_every_item_with_its_namespace_ttl(kv: KVStore) -> None:
    kv.configure("a", 100)
    kv.configure("b", None)
    rows = [("a", b"r", b"k2", b"2", 1000, 1), ("b", b"s", b"k", b"x", 5, 2)]
    rows.append(("a", b"r", b"k1", b"1", 1000, 3))
    with kv.writer() as w:
        w.put_many(rows)
    with kv.reader() as r:
        got = [(i.key, i.value, i.ts, i.token, i.expires_at) for i in r.scan("a", b"r", 1050)]
        assert got == [(b"k1", b"1", 1000, 3, 1100), (b"k2", b"2", 1000, 1, 1100)]
        assert list(r.scan("a", b"r", 1100)) == []
        item = r.get("b", b"s", b"k", NOW)
        assert item is not None and (item.value, item.expires_at) == (b"x", 0)


def test_items_read_ahead_in_a_writer_read_as_without_and_see_its_own_writes(kv: KVStore) -> None:
    kv.configure("ns", None)
    put(kv, "ns", b"r1", b"a", b"stored", ts=3)
    with kv.writer() as w:
        w.put("ns", b"r1", b"b", b"mine", 4, 0)  # written before the read-ahead
        w.prefetch([("ns", b"r1", b"a"), ("ns", b"r1", b"b"), ("ns", b"r2", b"x")] * 2)
        a, b, x = w.get("ns", b"r1", b"a"), w.get("ns", b"r1", b"b"), w.get("ns", b"r2", b"x")
        assert a is not None and (a.value, a.ts) == (b"stored", 3)
        assert b is not None and b.value == b"mine"
        assert x is None
        w.put("ns", b"r1", b"a", b"new", 5, 0)  # written after it: the write wins
        got = w.get("ns", b"r1", b"a")
        assert got is not None and got.value == b"new"
        w.delete("ns", b"r1", b"a")
        gone = w.get("ns", b"r1", b"a")
        assert gone is None or gone.tombstone
    item = kv.get("ns", b"r1", b"b", NOW)
    assert item is not None and item.value == b"mine"


def test_discard_removes_an_item_whether_or_not_it_is_stored(kv: KVStore) -> None:
    kv.configure("ns", None)
    put(kv, "ns", b"r", b"a")
    put(kv, "ns", b"r", b"b")
    with kv.writer() as w:
        w.discard("ns", b"r", b"a")
        w.discard("ns", b"r", b"never")
        w.discard("ns", b"nobody", b"a")
        assert w.get("ns", b"r", b"a") is None  # the block sees its own discard
    with kv.reader() as r:
        assert keys(list(r.scan("ns", b"r", NOW))) == [b"b"]
        assert r.count("ns", b"r", NOW) == 1


def test_several_changes_of_one_item_in_a_block_end_as_the_last_one(kv: KVStore) -> None:
    """What a block does to an item is decided in order: a delete before a ``put_lww`` lets
    an older version in (the newer one is gone), a put after a ``put_lww`` wins regardless."""
    kv.configure("ns", None)
    with kv.writer() as w:
        for key in (b"a", b"b", b"c", b"d"):
            w.put("ns", b"r", key, b"stored", 10, 0)
    with kv.writer() as w:
        assert w.delete("ns", b"r", b"a")
        assert w.put_lww("ns", b"r", b"a", b"older", 5, 0)
        w.discard("ns", b"r", b"b")
        assert w.put_lww("ns", b"r", b"b", b"older", 5, 0)
        assert w.put_lww("ns", b"r", b"c", b"newer", 20, 0)
        w.put("ns", b"r", b"c", b"older", 5, 0)
        w.put("ns", b"r", b"d", b"gone", 30, 0)
        assert w.delete("ns", b"r", b"d")
        assert w.put_lww("ns", b"r", b"e", b"first", 5, 0)
        assert w.put_lww("ns", b"r", b"e", b"second", 6, 0)
    with kv.reader() as r:
        got = {i.key: (i.value, i.ts) for i in r.scan("ns", b"r", NOW)}
    assert got == {
        b"a": (b"older", 5),
        b"b": (b"older", 5),
        b"c": (b"older", 5),
        b"e": (b"second", 6),
    }


def test_a_rewrite_or_delete_of_an_expiring_item_changes_what_sweep_removes(kv: KVStore) -> None:
    kv.configure("ns", None)
    with kv.writer() as w:
        w.put("ns", b"r", b"kept", b"", 1000, 0, ttl_us=100)  # expires at 1100
        w.put("ns", b"r", b"later", b"", 1000, 0, ttl_us=100)
        w.put("ns", b"r", b"gone", b"", 1000, 0, ttl_us=100)
    with kv.writer() as w:
        w.put("ns", b"r", b"kept", b"", 1001, 0)  # now without expiry
        w.put("ns", b"r", b"later", b"", 1001, 0, ttl_us=1000)  # now expires at 2001
        assert w.delete("ns", b"r", b"gone")
    assert kv.sweep(1500) == 0
    with kv.reader() as r:
        assert keys(list(r.scan("ns", b"r", 1500))) == [b"kept", b"later"]
    assert kv.sweep(2001) == 1
    with kv.writer() as w:
        assert keys(list(w.scan("ns", b"r"))) == [b"kept"]

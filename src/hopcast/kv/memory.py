"""The reference KV backend: plain dicts and sorted lists, the spec in code.

Every other backend must behave exactly like this one (``tests/kv/test_contract.py``). It keeps
nothing on disk. Writers hold one lock for the whole transaction and keep an undo log, so an
exception inside ``writer()`` leaves no trace. Readers take the lock per batch: they see only
committed data but, unlike LMDB, not a snapshot across batches.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hopcast.errors import StoreClosed
from hopcast.kv.base import (
    CHECKPOINT_NS,
    SCAN_BATCH,
    Item,
    KVStore,
    ReadTxn,
    WriteTxn,
    expiry,
    visible,
)


class _Record:
    __slots__ = ("items", "keys")

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.items: dict[bytes, Item] = {}


class MemoryKV(KVStore):
    """In-process reference backend."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._data: dict[str, dict[bytes, _Record]] = {}
        self._ttls: dict[str, int | None] = {}
        self._checkpoints: dict[str, bytes] = {}
        self._closed = False
        # Write transactions ended (committed or rolled back): the read views' generation.
        self._generation = 0

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed("memory store is closed")

    def configure(self, ns: str, ttl_us: int | None) -> None:
        self._check()
        with self._lock:
            self._ttls[ns] = ttl_us
            self._data.setdefault(ns, {})

    def ttl(self, ns: str) -> int | None:
        return self._ttls.get(ns)

    def namespaces(self) -> list[str]:
        return sorted(self._ttls)

    @contextmanager
    def reader(self) -> Iterator[ReadTxn]:
        self._check()
        yield _MemoryRead(self)

    @contextmanager
    def writer(self) -> Iterator[WriteTxn]:
        self._check()
        with self._lock:
            txn = _MemoryWrite(self)
            try:
                yield txn
            except BaseException:
                txn.rollback()
                raise
            finally:
                self._generation += 1

    def sweep(self, now: int, limit: int | None = None) -> int:
        self._check()
        removed = 0
        with self._lock:
            for records in self._data.values():
                for rid in list(records):
                    rec = records[rid]
                    for key in list(rec.keys):
                        item = rec.items[key]
                        if item.expires_at and item.expires_at <= now:
                            if limit is not None and removed >= limit:
                                return removed
                            _remove(records, rid, key)
                            removed += 1
        return removed

    def close(self) -> None:
        self._closed = True

    # internal helpers used by the transactions ---------------------------------------------

    def _record(self, ns: str, rid: bytes) -> _Record | None:
        records = self._data.get(ns)
        return None if records is None else records.get(rid)


def _remove(records: dict[bytes, _Record], rid: bytes, key: bytes) -> Item | None:
    rec = records.get(rid)
    if rec is None or key not in rec.items:
        return None
    old = rec.items.pop(key)
    del rec.keys[bisect_left(rec.keys, key)]
    if not rec.keys:
        del records[rid]
    return old


def _iter_record(
    kv: MemoryKV,
    ns: str,
    rid: bytes,
    start: bytes | None,
    stop: bytes | None,
    reverse: bool,
    keep: Callable[[Item], bool],
) -> Iterator[Item]:
    """Stream a record in batches, re-seeking after the last key under the lock each time."""
    last: bytes | None = None
    while True:
        batch: list[Item] = []
        with kv._lock:
            rec = kv._record(ns, rid)
            if rec is None:
                return
            keys = rec.keys
            if not reverse:
                lo = start if last is None else last + b"\x00"
                i = 0 if lo is None else bisect_left(keys, lo)
                while i < len(keys) and len(batch) < SCAN_BATCH:
                    k = keys[i]
                    if stop is not None and k >= stop:
                        break
                    batch.append(rec.items[k])
                    i += 1
                done = i >= len(keys) or (stop is not None and keys[i] >= stop)
            else:
                hi = stop if last is None else last
                i = (len(keys) if hi is None else bisect_left(keys, hi)) - 1
                while i >= 0 and len(batch) < SCAN_BATCH:
                    k = keys[i]
                    if start is not None and k < start:
                        break
                    batch.append(rec.items[k])
                    i -= 1
                done = i < 0 or (start is not None and keys[i] < start)
        for item in batch:
            if keep(item):
                yield item
        if done or not batch:
            return
        last = batch[-1].key


class _MemoryRead(ReadTxn):
    def __init__(self, kv: MemoryKV) -> None:
        self._kv = kv

    def generation(self) -> int:
        return self._kv._generation

    def get(self, ns: str, rid: bytes, key: bytes, now: int) -> Item | None:
        with self._kv._lock:
            rec = self._kv._record(ns, rid)
            item = None if rec is None else rec.items.get(key)
        return item if item is not None and visible(item, now) else None

    def scan(
        self,
        ns: str,
        rid: bytes,
        now: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        return _iter_record(
            self._kv, ns, rid, start, stop, reverse, lambda item: visible(item, now)
        )

    def count(
        self, ns: str, rid: bytes, now: int, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        return sum(1 for _ in self.scan(ns, rid, now, start, stop))

    def checkpoints(self) -> dict[str, bytes]:
        with self._kv._lock:
            return dict(self._kv._checkpoints)


class _MemoryWrite(WriteTxn):
    def __init__(self, kv: MemoryKV) -> None:
        self._kv = kv
        # (ns, rid, key, previous item or None); replayed backwards on rollback.
        self._undo: list[tuple[str, bytes, bytes, Item | None]] = []
        self._undo_checkpoints: dict[str, bytes | None] = {}

    def get(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        rec = self._kv._record(ns, rid)
        return None if rec is None else rec.items.get(key)

    def put(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None = None,
        tombstone: bool = False,
    ) -> None:
        kv = self._kv
        if ns not in kv._ttls:
            kv.configure(ns, None)
        ttl = ttl_us if ttl_us is not None else kv._ttls[ns]
        item = Item(key, bytes(value), ts, token, expiry(ts, ttl, tombstone), tombstone)
        rec = kv._data[ns].setdefault(rid, _Record())
        old = rec.items.get(key)
        if old is None:
            insort(rec.keys, key)
        rec.items[key] = item
        self._undo.append((ns, rid, key, old))

    def delete(self, ns: str, rid: bytes, key: bytes) -> bool:
        records = self._kv._data.get(ns)
        if records is None:
            return False
        old = _remove(records, rid, key)
        if old is not None:
            self._undo.append((ns, rid, key, old))
        return old is not None

    def scan(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        return _iter_record(self._kv, ns, rid, start, stop, reverse, lambda item: True)

    def set_checkpoint(self, source: str, position: bytes) -> None:
        cps = self._kv._checkpoints
        self._undo_checkpoints.setdefault(source, cps.get(source))
        cps[source] = bytes(position)

    def rollback(self) -> None:
        kv = self._kv
        for ns, rid, key, old in reversed(self._undo):
            records = kv._data[ns]
            _remove(records, rid, key)
            if old is not None:
                rec = records.setdefault(rid, _Record())
                insort(rec.keys, key)
                rec.items[key] = old
        for source, position in self._undo_checkpoints.items():
            if position is None:
                kv._checkpoints.pop(source, None)
            else:
                kv._checkpoints[source] = position
        self._undo.clear()


__all__ = ["CHECKPOINT_NS", "MemoryKV"]

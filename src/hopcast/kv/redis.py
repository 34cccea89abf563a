"""The scale-out KV backend, on Redis (redis-py, synchronous, hiredis parser when installed).

Layout (every key starts with the store's ``prefix``)::

    <prefix>z{<ns hex>:<rid hex>}   sorted set: the record's item keys, score 0 (lexicographic)
    <prefix>h{<ns hex>:<rid hex>}   hash: item key -> header (base.HEADER) + value
    <prefix>meta                    hash: namespace -> TTL in µs ("" = none)
    <prefix>cp                      hash: source -> position (checkpoints)
    <prefix>exp                     sorted set: expiring items, score = expires_at (µs)

The ``{...}`` hash tag holds the namespace and record id in hex, so both keys of one record
live in one Redis Cluster slot and a record read is one single-slot script. Scans are
ZRANGEBYLEX / ZREVRANGEBYLEX pages of :data:`~hopcast.kv.base.SCAN_BATCH` keys plus an HMGET,
done in one Lua script so a page is atomic.

Writes: a :meth:`RedisKV.writer` block buffers its operations (reads inside it see them) and
sends them at exit as **one Lua script**, which Redis runs atomically: data, deletes, the expiry
index and checkpoints commit together or not at all; an exception in the block sends nothing.
``put_lww`` decides its return value from what the transaction sees (stored data plus its own
writes) and is *also* re-checked inside the script against the stored version, so a concurrent
writer in another process can never be overwritten by an older version: LWW holds on the
server, and the final state is the same in whatever order writers commit. Writers in one process
are serialised by a lock, as on the other backends.

Reads are not a snapshot across pages (like :mod:`hopcast.kv.memory`; unlike LMDB): each page
sees only committed batches, which is what the contract requires.

TTL: expiry is decided at read time from ``expires_at`` and the ``now`` passed in, exactly as
the reference does, and :meth:`RedisKV.sweep` removes expired items through the ``exp`` index.
Redis's own key expiry is not used: ``now`` is the caller's clock (tests and replays use
generation times far from the wall clock) and a record's keys hold items with different expiry
times, so a Redis EXPIRE could drop items a reader at an earlier ``now`` must still see.

Redis Cluster: per-record reads (``get``, ``scan``, ``fetch``, each ``fetch_many`` entry) are
single-slot. The batch script and ``sweep`` touch many records plus the global ``meta``/``cp``/
``exp`` keys, so today they need one Redis primary (replicas may serve nothing here yet); an
atomic batch across Cluster slots is not something Redis offers, and is left open.
Expiry-index scores are doubles: exact for ``expires_at`` below 2**53 µs (the year 2255).

Only this module imports ``redis``; its errors are translated to :class:`StorageError` here.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from hopcast.errors import ConfigError, StorageError, StoreClosed
from hopcast.kv.base import (
    CHECKPOINT_NS,
    FLAG_TOMBSTONE,
    HEADER,
    HEADER_SIZE,
    META_NS,
    SCAN_BATCH,
    Item,
    KVStore,
    ReadTxn,
    T,
    WriteTxn,
    expiry,
    visible,
)

try:
    import redis as _redis
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError("the Redis backend needs redis-py: pip install 'hopcast[redis]'") from exc

_header_unpack = HEADER.unpack_from
_header_pack = HEADER.pack
_LEN = struct.Struct(">H")

#: Keys read per round trip by ``count`` (it reads everything in range anyway).
COUNT_BATCH = 1000

#: Expired items removed per sweep script.
SWEEP_CHUNK = 1000

#: One page of a record: keys in lexicographic range (forward or reverse) and their values.
_PAGE = """
local ks
if ARGV[4] == '1' then
  ks = redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[2], ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
else
  ks = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
end
if #ks == 0 then return {ks, {}} end
return {ks, redis.call('HMGET', KEYS[2], unpack(ks))}
"""

#: One atomic write batch. KEYS[1..3] = exp, cp, meta; then (zset, hash) pairs. ARGV holds
#: operations of 6 fields each: op, key index, item key, blob, expires_at, index member.
#: 'P' put, 'L' put if newer (LWW on the header's (ts, token)), 'D' delete, 'C' checkpoint
#: (fields 2-3: source, position), 'N' declare a namespace if absent (fields 2-3: ns, ttl).
_COMMIT = """
local function newer(new, old)
  for i = 1, 16 do
    local a, b = string.byte(new, i), string.byte(old, i)
    if i == 1 or i == 9 then a = bit.bxor(a, 128); b = bit.bxor(b, 128) end
    if a ~= b then return a > b end
  end
  return false
end
local exp, cp, meta = KEYS[1], KEYS[2], KEYS[3]
local i = 1
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'C' then
    redis.call('HSET', cp, ARGV[i + 1], ARGV[i + 2])
  elseif op == 'N' then
    redis.call('HSETNX', meta, ARGV[i + 1], ARGV[i + 2])
  else
    local k = tonumber(ARGV[i + 1])
    local z, h, key, m = KEYS[k], KEYS[k + 1], ARGV[i + 2], ARGV[i + 5]
    if op == 'D' then
      if redis.call('HDEL', h, key) == 1 then
        redis.call('ZREM', z, key)
        redis.call('ZREM', exp, m)
      end
    else
      local blob = ARGV[i + 3]
      local write = true
      if op == 'L' then
        local old = redis.call('HGET', h, key)
        if old and not newer(blob, old) then write = false end
      end
      if write then
        redis.call('HSET', h, key, blob)
        redis.call('ZADD', z, 0, key)
        if ARGV[i + 4] == '0' then
          redis.call('ZREM', exp, m)
        else
          redis.call('ZADD', exp, ARGV[i + 4], m)
        end
      end
    end
  end
  i = i + 6
end
return 1
"""

#: Remove expired items. KEYS[1] = exp, then (zset, hash) pairs; ARGV[1] = now, then
#: (index member, item key) per pair. Re-checks the index score so a rewrite is not removed.
_SWEEP = """
local now = tonumber(ARGV[1])
local removed = 0
for j = 2, #KEYS, 2 do
  local m, key = ARGV[j], ARGV[j + 1]
  local s = redis.call('ZSCORE', KEYS[1], m)
  if s and tonumber(s) <= now then
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[j + 1], key)
    redis.call('ZREM', KEYS[j], key)
    removed = removed + 1
  end
end
return removed
"""


def _decode(key: bytes, blob: bytes) -> Item:
    ts, token, expires_at, flags = _header_unpack(blob)
    return Item(key, blob[HEADER_SIZE:], ts, token, expires_at, bool(flags & FLAG_TOMBSTONE))


def _encode(value: bytes, ts: int, token: int, expires_at: int, tombstone: bool) -> bytes:
    return _header_pack(ts, token, expires_at, FLAG_TOMBSTONE if tombstone else 0) + value


def _member(ns: str, rid: bytes, key: bytes) -> bytes:
    """The expiry index's name for an item: ``len(ns) ‖ ns ‖ len(rid) ‖ rid ‖ key``."""
    nsb = ns.encode()
    if len(nsb) > 0xFFFF or len(rid) > 0xFFFF:
        raise StorageError("namespace or record id too long (the limit is 65535 bytes)")
    return _LEN.pack(len(nsb)) + nsb + _LEN.pack(len(rid)) + rid + key


def _unmember(member: bytes) -> tuple[str, bytes, bytes]:
    (n,) = _LEN.unpack_from(member)
    ns = member[2 : 2 + n].decode()
    (r,) = _LEN.unpack_from(member, 2 + n)
    rid = member[4 + n : 4 + n + r]
    return ns, rid, member[4 + n + r :]


def _lex_bounds(
    start: bytes | None, stop: bytes | None, after: bytes | None, reverse: bool
) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX (min, max) for ``start <= key < stop``, resuming past ``after``."""
    lo = b"-" if start is None else b"[" + start
    hi = b"+" if stop is None else b"(" + stop
    if after is not None:
        if reverse:
            hi = b"(" + after
        else:
            lo = b"(" + after
    return lo, hi


class RedisKV(KVStore):
    """Redis-backed store.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS, ``unix://`` for a socket).
        prefix: prefix of every key, so several stores (or tests) share one Redis. It must not
            contain ``{`` or ``}`` (they would change the Cluster hash tag).
        options: further keyword arguments for ``redis.Redis.from_url``.
    """

    name = "redis"

    def __init__(self, url: str, prefix: str = "hopcast:", **options: Any) -> None:
        if "{" in prefix or "}" in prefix:
            raise ConfigError(f"Redis key prefix {prefix!r} must not contain '{{' or '}}'")
        self.url = url
        self._p = prefix.encode()
        self._closed = False
        self._lock = threading.RLock()
        try:
            client: Any = _redis.Redis.from_url(url, **options)
            self._r: Any = client
            self._page: Any = self._r.register_script(_PAGE)
            self._commit: Any = self._r.register_script(_COMMIT)
            self._sweep: Any = self._r.register_script(_SWEEP)
            raw: dict[bytes, bytes] = client.hgetall(self._p + b"meta")
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from exc
        except _redis.RedisError as exc:
            raise StorageError(f"cannot open Redis at {url}: {exc}") from exc
        self._ttls: dict[str, int | None] = {
            k.decode(): (int(v) if v else None) for k, v in raw.items()
        }

    # keys ----------------------------------------------------------------------------------

    def _keys(self, ns: str, rid: bytes) -> tuple[bytes, bytes]:
        tag = b"{" + ns.encode().hex().encode() + b":" + rid.hex().encode() + b"}"
        return self._p + b"z" + tag, self._p + b"h" + tag

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"Redis store at {self.url} is closed")

    # namespaces ----------------------------------------------------------------------------

    def configure(self, ns: str, ttl_us: int | None) -> None:
        self.configure_many({ns: ttl_us})

    def configure_many(self, ttls: dict[str, int | None]) -> None:
        self._check()
        if not ttls:
            return
        mapping = {ns: ("" if ttl is None else str(ttl)) for ns, ttl in ttls.items()}
        try:
            self._r.hset(self._p + b"meta", mapping=mapping)
        except _redis.RedisError as exc:
            raise StorageError(f"cannot configure namespaces: {exc}") from exc
        self._ttls.update(ttls)

    def _ns_ttl(self, ns: str) -> tuple[bool, int | None]:
        """(known, ttl), asking Redis when another process may have declared ``ns``."""
        if ns in self._ttls:
            return True, self._ttls[ns]
        try:
            raw = self._r.hget(self._p + b"meta", ns)
        except _redis.RedisError as exc:
            raise StorageError(f"cannot read namespace {ns!r}: {exc}") from exc
        if raw is None:
            return False, None
        ttl = int(raw) if raw else None
        self._ttls[ns] = ttl
        return True, ttl

    def ttl(self, ns: str) -> int | None:
        return self._ns_ttl(ns)[1]

    def namespaces(self) -> list[str]:
        self._check()
        try:
            raw: list[bytes] = self._r.hkeys(self._p + b"meta")
        except _redis.RedisError as exc:
            raise StorageError(f"cannot list namespaces: {exc}") from exc
        names = {k.decode() for k in raw}
        return sorted(names - {CHECKPOINT_NS, META_NS})

    # transactions --------------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[ReadTxn]:
        self._check()
        yield _RedisRead(self)

    @contextmanager
    def writer(self) -> Iterator[WriteTxn]:
        self._check()
        with self._lock:
            txn = _RedisWrite(self)
            yield txn
            txn.commit()

    def _page_of(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None,
        stop: bytes | None,
        after: bytes | None,
        reverse: bool,
        n: int,
    ) -> list[Item]:
        """Up to ``n`` stored items (tombstones and expired included), atomically."""
        z, h = self._keys(ns, rid)
        lo, hi = _lex_bounds(start, stop, after, reverse)
        try:
            ks, vs = self._page(keys=[z, h], args=[lo, hi, n, 1 if reverse else 0])
        except _redis.RedisError as exc:
            raise StorageError(f"cannot read {ns!r}: {exc}") from exc
        return [_decode(k, v) for k, v in zip(ks, vs, strict=True) if v is not None]

    def _stream(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None,
        stop: bytes | None,
        reverse: bool,
        batch: int = SCAN_BATCH,
    ) -> Iterator[Item]:
        after: bytes | None = None
        while True:
            self._check()
            items = self._page_of(ns, rid, start, stop, after, reverse, batch)
            yield from items
            if len(items) < batch:
                return
            after = items[-1].key

    def sweep(self, now: int, limit: int | None = None) -> int:
        self._check()
        removed = 0
        exp = self._p + b"exp"
        while limit is None or removed < limit:
            n = SWEEP_CHUNK if limit is None else min(SWEEP_CHUNK, limit - removed)
            try:
                members = self._r.zrangebyscore(exp, "-inf", now, start=0, num=n)
                if not members:
                    break
                keys: list[bytes] = [exp]
                args: list[bytes | int] = [now]
                for m in members:
                    ns, rid, key = _unmember(m)
                    keys += self._keys(ns, rid)
                    args += [m, key]
                removed += int(self._sweep(keys=keys, args=args))
            except _redis.RedisError as exc:
                raise StorageError(f"sweep failed: {exc}") from exc
        return removed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with suppress(_redis.RedisError):
            self._r.close()


class _RedisRead(ReadTxn):
    __slots__ = ("_kv",)

    def __init__(self, kv: RedisKV) -> None:
        self._kv = kv

    def get(self, ns: str, rid: bytes, key: bytes, now: int) -> Item | None:
        kv = self._kv
        kv._check()
        try:
            blob = kv._r.hget(kv._keys(ns, rid)[1], key)
        except _redis.RedisError as exc:
            raise StorageError(f"cannot read {ns!r}: {exc}") from exc
        if blob is None:
            return None
        item = _decode(key, blob)
        return item if visible(item, now) else None

    def scan(
        self,
        ns: str,
        rid: bytes,
        now: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        self._kv._check()
        return (i for i in self._kv._stream(ns, rid, start, stop, reverse) if visible(i, now))

    def fetch(
        self,
        ns: str,
        rid: bytes,
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        make: Callable[[bytes, bytes, int], T] | None = None,
    ) -> list[T]:
        kv = self._kv
        kv._check()
        if limit <= 0:
            return []
        first = kv._page_of(ns, rid, start, stop, None, False, limit)
        items = _finish(kv, ns, rid, now, limit, start, stop, first)
        if make is None:
            return items  # type: ignore[return-value]
        return [make(i.key, i.value, i.ts) for i in items]

    def fetch_many(
        self,
        ns: str,
        rids: list[bytes],
        now: int,
        limit: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        make: Callable[[int, bytes, bytes, int], T] | None = None,
    ) -> list[list[T]]:
        kv = self._kv
        kv._check()
        if limit <= 0 or not rids:
            return [[] for _ in rids]
        lo, hi = _lex_bounds(start, stop, None, False)
        try:
            pipe = kv._r.pipeline(transaction=False)
            for rid in rids:
                kv._page(keys=list(kv._keys(ns, rid)), args=[lo, hi, limit, 0], client=pipe)
            pages = pipe.execute()
        except _redis.RedisError as exc:
            raise StorageError(f"cannot read {ns!r}: {exc}") from exc
        out: list[list[T]] = []
        for i, (rid, (ks, vs)) in enumerate(zip(rids, pages, strict=True)):
            first = [_decode(k, v) for k, v in zip(ks, vs, strict=True) if v is not None]
            items = _finish(kv, ns, rid, now, limit, start, stop, first)
            if make is None:
                out.append(items)  # type: ignore[arg-type]
            else:
                out.append([make(i, it.key, it.value, it.ts) for it in items])
        return out

    def count(
        self, ns: str, rid: bytes, now: int, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        self._kv._check()
        stream = self._kv._stream(ns, rid, start, stop, False, COUNT_BATCH)
        return sum(1 for i in stream if visible(i, now))

    def checkpoints(self) -> dict[str, bytes]:
        kv = self._kv
        kv._check()
        try:
            raw = kv._r.hgetall(kv._p + b"cp")
        except _redis.RedisError as exc:
            raise StorageError(f"cannot read checkpoints: {exc}") from exc
        return {k.decode(): bytes(v) for k, v in raw.items()}


def _finish(
    kv: RedisKV,
    ns: str,
    rid: bytes,
    now: int,
    limit: int,
    start: bytes | None,
    stop: bytes | None,
    first: list[Item],
) -> list[Item]:
    """The visible items of a first page of ``limit`` stored items, topped up with further
    pages when tombstones or expired items left it short."""
    items = [i for i in first if visible(i, now)]
    page = first
    while len(items) < limit and len(page) == limit:
        page = kv._page_of(ns, rid, start, stop, page[-1].key, False, limit)
        items += [i for i in page if visible(i, now)]
    return items[:limit]


#: A buffered change: the item written, or None for a delete.
_Change = Item | None


class _RedisWrite(WriteTxn):
    def __init__(self, kv: RedisKV) -> None:
        self._kv = kv
        self._changes: dict[tuple[str, bytes, bytes], _Change] = {}
        self._slots: dict[tuple[str, bytes], int] = {}
        self._keys: list[bytes] = [kv._p + b"exp", kv._p + b"cp", kv._p + b"meta"]
        self._args: list[bytes | str | int] = []
        self._declared: set[str] = set()

    def _slot(self, ns: str, rid: bytes) -> int:
        k = self._slots.get((ns, rid))
        if k is None:
            k = len(self._keys) + 1  # Lua indices start at 1
            self._keys += self._kv._keys(ns, rid)
            self._slots[(ns, rid)] = k
        return k

    def _stored(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        kv = self._kv
        try:
            blob = kv._r.hget(kv._keys(ns, rid)[1], key)
        except _redis.RedisError as exc:
            raise StorageError(f"cannot read {ns!r}: {exc}") from exc
        return None if blob is None else _decode(key, blob)

    def get(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        k = (ns, rid, key)
        if k in self._changes:
            return self._changes[k]
        return self._stored(ns, rid, key)

    def _namespace_ttl(self, ns: str) -> int | None:
        if ns in self._declared:
            return None
        known, ttl = self._kv._ns_ttl(ns)
        if not known:
            self._declared.add(ns)
            self._args += [b"N", ns, b"", b"", b"", b""]
        return ttl

    def _write(
        self,
        op: bytes,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None,
        tombstone: bool,
    ) -> None:
        ns_ttl = self._namespace_ttl(ns)
        ttl = ttl_us if ttl_us is not None else ns_ttl
        expires_at = expiry(ts, ttl, tombstone)
        value = bytes(value)
        blob = _encode(value, ts, token, expires_at, tombstone)
        self._args += [
            op,
            self._slot(ns, rid),
            key,
            blob,
            expires_at,
            _member(ns, rid, key),
        ]
        self._changes[(ns, rid, key)] = Item(key, value, ts, token, expires_at, tombstone)

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
        self._write(b"P", ns, rid, key, value, ts, token, ttl_us, tombstone)

    def put_lww(
        self,
        ns: str,
        rid: bytes,
        key: bytes,
        value: bytes,
        ts: int,
        token: int,
        ttl_us: int | None = None,
        tombstone: bool = False,
    ) -> bool:
        old = self.get(ns, rid, key)
        if old is not None and (ts, token) <= (old.ts, old.token):
            return False
        # 'L': the script re-checks against the version stored at commit time.
        self._write(b"L", ns, rid, key, value, ts, token, ttl_us, tombstone)
        return True

    def put_many(self, items: Iterable[tuple[str, bytes, bytes, bytes, int, int]]) -> None:
        for ns, rid, key, value, ts, token in items:
            self._write(b"P", ns, rid, key, value, ts, token, None, False)

    def delete(self, ns: str, rid: bytes, key: bytes) -> bool:
        existed = self.get(ns, rid, key) is not None
        if existed:
            self._args += [b"D", self._slot(ns, rid), key, b"", b"", _member(ns, rid, key)]
            self._changes[(ns, rid, key)] = None
        return existed

    def scan(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        merged = {i.key: i for i in self._kv._stream(ns, rid, start, stop, reverse, COUNT_BATCH)}
        for (cns, crid, key), change in self._changes.items():
            if cns != ns or crid != rid:
                continue
            if (start is not None and key < start) or (stop is not None and key >= stop):
                continue
            if change is None:
                merged.pop(key, None)
            else:
                merged[key] = change
        return iter([merged[k] for k in sorted(merged, reverse=reverse)])

    def set_checkpoint(self, source: str, position: bytes) -> None:
        self._args += [b"C", source, bytes(position), b"", b"", b""]

    def commit(self) -> None:
        if not self._args:
            return
        try:
            self._kv._commit(keys=self._keys, args=self._args)
        except _redis.RedisError as exc:
            raise StorageError(f"commit failed: {exc}") from exc
        self._kv._ttls.update(dict.fromkeys(self._declared - self._kv._ttls.keys()))


__all__ = ["RedisKV"]

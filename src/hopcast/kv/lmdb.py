"""The embedded default KV backend, on LMDB (py-lmdb).

Layout: one LMDB environment (a directory); one named database per namespace; inside it the key
of an item is ``len(rid) (uint16 BE) ‖ rid ‖ item key``, so a record's items are contiguous and
sorted, and a record scan is one cursor seek plus sequential reads. Values carry the common
header of :mod:`hopcast.kv.base`. Source positions live in the ``__checkpoints__`` database and
commit in the same LMDB transaction as the data they describe.

Concurrency: one writer at a time (LMDB serialises write transactions); any number of readers,
in this process or others, each reading a consistent snapshot without blocking the writer.
LMDB forbids opening one environment twice in a process, so :class:`LmdbKV` shares one handle
per path inside a process.

Only this module imports ``lmdb``; its errors are translated to :class:`StorageError` here.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

from hopcast.errors import ConfigError, StorageError, StorageRefused, StoreClosed
from hopcast.kv.base import (
    CHECKPOINT_NS,
    FLAG_TOMBSTONE,
    HEADER,
    HEADER_SIZE,
    META_NS,
    TOMBSTONE_GRACE_US,
    Item,
    KVStore,
    ReadTxn,
    T,
    WriteTxn,
)

try:
    import lmdb as _lmdb
except ImportError as exc:  # pragma: no cover - lmdb is a core dependency
    raise ConfigError("the LMDB backend needs py-lmdb: pip install lmdb") from exc

#: Address space reserved for the map. LMDB files grow only as data is written, so a large
#: reservation costs nothing; 1 TiB keeps a 10M-edge benchmark (~5 GB) far from MapFullError.
DEFAULT_MAP_SIZE = 1 << 40

#: Named databases allowed in one environment: one per node type and three per edge type, so
#: a schema with ~80 edge types still fits.
MAX_DBS = 256

#: Concurrent read transactions across all processes (API workers, CLI, benchmark threads).
MAX_READERS = 512

#: Deletes per write transaction in a sweep, so the writer lock is released regularly.
SWEEP_CHUNK = 10_000

_LEN = struct.Struct(">H")
_pack_len = _LEN.pack
_header_unpack = HEADER.unpack_from
_header_pack = HEADER.pack
_first = itemgetter(0)
#: Builds an Item without NamedTuple's keyword-handling constructor (hot path).
_new_item = tuple.__new__

_registry: dict[str, tuple[Any, int]] = {}
_registry_lock = threading.Lock()


def _prefix(rid: bytes) -> bytes:
    if len(rid) > 0xFFFF:
        raise StorageRefused(f"record id too long ({len(rid)} bytes; the limit is 65535)")
    return _LEN.pack(len(rid)) + rid


def _successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None if unbounded)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class LmdbKV(KVStore):
    """LMDB-backed store at directory ``path``.

    Args:
        path: directory of the environment (created if missing).
        map_size: address space reserved for the data file.
        sync: fsync on every commit (durable). ``False`` trades the last commits on power loss
            for throughput; the process crashing still loses nothing.
        readonly: open for reading only (e.g. a query process beside the writer).
    """

    name = "lmdb"

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
        readonly: bool = False,
    ) -> None:
        self.path = str(Path(path).resolve())
        self._readonly = readonly
        self._closed = False
        with _registry_lock:
            shared = _registry.get(self.path)
            if shared is not None:
                env, refs = shared
                _registry[self.path] = (env, refs + 1)
            else:
                try:
                    if not readonly:
                        Path(self.path).mkdir(parents=True, exist_ok=True)
                    # One environment per path per process (an LMDB rule), so it is opened
                    # writable whenever the directory allows, and `readonly` is enforced by
                    # this class: a read-only and a writable LmdbKV can then share it.
                    env = _lmdb.open(
                        self.path,
                        map_size=map_size,
                        max_dbs=MAX_DBS,
                        max_readers=MAX_READERS,
                        sync=sync,
                        metasync=sync,
                        readahead=False,
                        readonly=not os.access(self.path, os.W_OK),
                        lock=True,
                    )
                except OSError as exc:
                    raise StorageError(f"cannot create LMDB directory {self.path}: {exc}") from exc
                except _lmdb.Error as exc:
                    raise StorageError(f"cannot open LMDB at {self.path}: {exc}") from exc
                _registry[self.path] = (env, 1)
        self._env = env
        self._dbs: dict[str, Any] = {}
        self._ttls: dict[str, int | None] = {}
        self._db_lock = threading.Lock()
        self._meta = self._open_db(META_NS, create=not readonly)
        self._cp = self._open_db(CHECKPOINT_NS, create=not readonly)
        self._load_meta()
        for ns in list(self._ttls):
            self._open_db(ns, create=False)

    # -- namespaces --------------------------------------------------------------------------

    def _open_db(self, ns: str, create: bool) -> Any:
        with self._db_lock:
            db = self._dbs.get(ns)
            if db is not None:
                return db
            try:
                db = self._env.open_db(ns.encode(), create=create)
            except _lmdb.NotFoundError:
                return None
            except _lmdb.Error as exc:
                raise StorageError(f"cannot open namespace {ns!r}: {exc}") from exc
            self._dbs[ns] = db
            return db

    def _load_meta(self) -> None:
        if self._meta is None:
            return
        with self._env.begin(db=self._meta) as txn:
            for key, value in txn.cursor():
                ttl = int(value)
                self._ttls[key.decode()] = None if ttl < 0 else ttl

    def _db(self, ns: str) -> Any:
        db = self._dbs.get(ns)
        if db is None:
            db = self._open_db(ns, create=False)
            if db is not None and ns not in self._ttls:
                self._load_meta()
        return db

    def configure(self, ns: str, ttl_us: int | None) -> None:
        self._check()
        if self._readonly:
            self._ttls[ns] = ttl_us
            self._open_db(ns, create=False)
            return
        self._open_db(ns, create=True)
        try:
            with self._env.begin(write=True, db=self._meta) as txn:
                txn.put(ns.encode(), str(-1 if ttl_us is None else ttl_us).encode())
        except _lmdb.Error as exc:
            raise StorageError(f"cannot configure namespace {ns!r}: {exc}") from exc
        self._ttls[ns] = ttl_us

    def configure_many(self, ttls: dict[str, int | None]) -> None:
        """Declare namespaces in one write transaction; a no-op when nothing changed (so
        opening an existing store costs no fsync)."""
        self._check()
        if self._readonly:
            self._ttls.update(ttls)
            for ns in ttls:
                self._open_db(ns, create=False)
            return
        todo = {
            ns: ttl
            for ns, ttl in ttls.items()
            if ns not in self._dbs or ns not in self._ttls or self._ttls[ns] != ttl
        }
        if not todo:
            return
        try:
            with self._db_lock, self._env.begin(write=True) as txn:
                for ns, ttl in todo.items():
                    if ns not in self._dbs:
                        self._dbs[ns] = self._env.open_db(ns.encode(), txn=txn, create=True)
                    txn.put(ns.encode(), str(-1 if ttl is None else ttl).encode(), db=self._meta)
        except _lmdb.Error as exc:
            raise StorageError(f"cannot configure namespaces: {exc}") from exc
        self._ttls.update(todo)

    def ttl(self, ns: str) -> int | None:
        return self._ttls.get(ns)

    def namespaces(self) -> list[str]:
        return sorted(self._ttls)

    # -- transactions ------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"LMDB store at {self.path} is closed")

    def reader(self) -> _LmdbRead:
        # A plain class, not @contextmanager: this runs once per query, so it is kept cheap.
        if self._closed:
            raise StoreClosed(f"LMDB store at {self.path} is closed")
        try:
            txn = self._env.begin(buffers=False)
        except _lmdb.Error as exc:
            raise StorageError(f"cannot begin read: {exc}") from exc
        return _LmdbRead(self, txn)

    @contextmanager
    def writer(self) -> Iterator[WriteTxn]:
        self._check()
        if self._readonly:
            raise StorageError(f"LMDB store at {self.path} was opened read-only")
        try:
            txn = self._env.begin(write=True)
        except _lmdb.Error as exc:
            raise StorageError(f"cannot begin write: {exc}") from exc
        try:
            yield _LmdbWrite(self, txn)
        except _lmdb.BadValsizeError as exc:
            txn.abort()
            raise StorageRefused(f"LMDB refused a key or value: {exc}") from exc
        except _lmdb.MapFullError as exc:
            txn.abort()
            raise StorageError(
                f"LMDB map is full at {self.path}; reopen with a larger map_size"
            ) from exc
        except _lmdb.Error as exc:
            txn.abort()
            raise StorageError(f"write failed: {exc}") from exc
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except _lmdb.MapFullError as exc:
            raise StorageError(
                f"LMDB map is full at {self.path}; reopen with a larger map_size"
            ) from exc
        except _lmdb.Error as exc:
            raise StorageError(f"commit failed: {exc}") from exc

    def sweep(self, now: int, limit: int | None = None) -> int:
        self._check()
        removed = 0
        for ns in self.namespaces():
            db = self._db(ns)
            if db is None:
                continue
            resume: bytes | None = None
            while True:
                expired: list[bytes] = []
                with self._env.begin(db=db) as txn:
                    cur = txn.cursor()
                    positioned = cur.set_range(resume) if resume is not None else cur.first()
                    if not positioned:
                        break
                    scanned = 0
                    for key, raw in cur:
                        scanned += 1
                        exp = _header_unpack(raw)[2]
                        if exp and exp <= now:
                            expired.append(key)
                            if len(expired) >= SWEEP_CHUNK:
                                break
                        if scanned >= 10 * SWEEP_CHUNK:
                            break
                    else:
                        key = None
                    resume = None if key is None else key + b"\x00"
                if limit is not None:
                    expired = expired[: max(0, limit - removed)]
                if expired:
                    with self._env.begin(write=True, db=db) as wtxn:
                        for key in expired:
                            raw = wtxn.get(key)
                            if raw is not None:
                                exp = _header_unpack(raw)[2]
                                if exp and exp <= now:
                                    wtxn.delete(key)
                                    removed += 1
                if (limit is not None and removed >= limit) or resume is None:
                    break
            if limit is not None and removed >= limit:
                break
        return removed

    def backup(self, path: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the store (its newest committed state) to the empty
        or missing directory ``path``, while readers and the writer go on.

        Raises:
            StorageError: if the copy cannot be written.
        """
        self._check()
        target = Path(path)
        try:
            target.mkdir(parents=True, exist_ok=True)
            self._env.copy(str(target))
        except (OSError, _lmdb.Error) as exc:
            raise StorageError(f"cannot back up {self.path} to {target}: {exc}") from exc

    def stats(self) -> dict[str, int]:
        """Entries per namespace, for metrics and ``hopcast info``."""
        out: dict[str, int] = {}
        with self._env.begin() as txn:
            for ns in self.namespaces():
                db = self._db(ns)
                if db is not None:
                    out[ns] = txn.stat(db)["entries"]
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _registry_lock:
            env, refs = _registry[self.path]
            if refs <= 1:
                del _registry[self.path]
                env.close()
            else:
                _registry[self.path] = (env, refs - 1)


class _LmdbRead(ReadTxn):
    __slots__ = ("_kv", "_txn")

    def __init__(self, kv: LmdbKV, txn: Any) -> None:
        self._kv = kv
        self._txn = txn

    def _late_db(self, ns: str) -> Any:
        """Open a namespace first seen by this process during a read.

        A handle opened after a snapshot began is invisible to that snapshot, so the snapshot is
        renewed; this happens once per namespace per process.
        """
        db = self._kv._db(ns)
        if db is not None:
            self._txn.abort()
            self._txn = self._kv._env.begin(buffers=False)
        return db

    def __enter__(self) -> _LmdbRead:
        return self

    def generation(self) -> int:
        """The snapshot's transaction id (LMDB counts committed write transactions)."""
        return int(self._txn.id())

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()

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
        db = self._kv._dbs.get(ns) or self._late_db(ns)
        if db is None:
            return []
        prefix = _prefix(rid)
        plen = len(prefix)
        hi = prefix + stop if stop is not None else _successor(prefix)
        cur = self._txn.cursor(db=db)
        if not cur.set_range(prefix + start if start else prefix):
            return []
        out: list[Any] = []
        unpack = _header_unpack
        append = out.append
        for k, raw in cur.iternext():
            if hi is not None and k >= hi:
                break
            ts, token, exp, flags = unpack(raw)
            if flags or (exp and exp <= now):
                continue
            if make is None:
                append(_new_item(Item, (k[plen:], raw[HEADER_SIZE:], ts, token, exp, False)))
            else:
                append(make(k[plen:], raw[HEADER_SIZE:], ts))
            if len(out) >= limit:
                break
        return out

    def get(self, ns: str, rid: bytes, key: bytes, now: int) -> Item | None:
        db = self._kv._dbs.get(ns) or self._late_db(ns)
        if db is None:
            return None
        raw = self._txn.get(_prefix(rid) + key, db=db)
        if raw is None:
            return None
        ts, token, exp, flags = _header_unpack(raw)
        if flags or (exp and exp <= now):
            return None
        return Item(key, raw[HEADER_SIZE:], ts, token, exp, False)

    def scan(
        self,
        ns: str,
        rid: bytes,
        now: int,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        if ns not in self._kv._dbs:
            self._late_db(ns)
        for item in _scan(self._kv, self._txn, ns, rid, start, stop, reverse):
            if not item.tombstone and (item.expires_at == 0 or item.expires_at > now):
                yield item

    def count(
        self, ns: str, rid: bytes, now: int, start: bytes | None = None, stop: bytes | None = None
    ) -> int:
        db = self._kv._dbs.get(ns) or self._late_db(ns)
        if db is None:
            return 0
        prefix = _prefix(rid)
        lo = prefix + (start or b"")
        hi = prefix + stop if stop is not None else _successor(prefix)
        cur = self._txn.cursor(db=db)
        if not cur.set_range(lo):
            return 0
        n = 0
        for k, raw in cur.iternext():
            if hi is not None and k >= hi:
                break
            _, _, exp, flags = _header_unpack(raw)
            if not flags and (exp == 0 or exp > now):
                n += 1
        return n

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
        db = self._kv._dbs.get(ns) or self._late_db(ns)
        if db is None:
            return [[] for _ in rids]
        cur = self._txn.cursor(db=db)
        unpack = _header_unpack
        pack_len = _LEN.pack
        result: list[list[Any]] = []
        for i, rid in enumerate(rids):
            prefix = pack_len(len(rid)) + rid
            plen = len(prefix)
            hi = prefix + stop if stop is not None else _successor(prefix)
            out: list[Any] = []
            result.append(out)
            if not cur.set_range(prefix + start if start else prefix):
                continue
            for k, raw in cur.iternext():
                if hi is not None and k >= hi:
                    break
                ts, token, exp, flags = unpack(raw)
                if flags or (exp and exp <= now):
                    continue
                if make is None:
                    out.append(
                        _new_item(Item, (k[plen:], raw[HEADER_SIZE:], ts, token, exp, False))
                    )
                else:
                    out.append(make(i, k[plen:], raw[HEADER_SIZE:], ts))
                if len(out) >= limit:
                    break
        return result

    def checkpoints(self) -> dict[str, bytes]:
        cp = self._kv._cp or self._kv._db(CHECKPOINT_NS)
        if cp is None:
            return {}
        return {k.decode(): bytes(v) for k, v in self._txn.cursor(db=cp)}


def _scan(
    kv: LmdbKV,
    txn: Any,
    ns: str,
    rid: bytes,
    start: bytes | None,
    stop: bytes | None,
    reverse: bool,
) -> Iterator[Item]:
    db = kv._dbs.get(ns)  # callers open a namespace they have not seen before
    if db is None:
        return
    prefix = _prefix(rid)
    plen = len(prefix)
    lo = prefix + (start or b"")
    hi = prefix + stop if stop is not None else _successor(prefix)
    cur = txn.cursor(db=db)
    unpack = _header_unpack
    if not reverse:
        if not cur.set_range(lo):
            return
        for k, raw in cur.iternext():
            if hi is not None and k >= hi:
                return
            ts, token, exp, flags = unpack(raw)
            yield Item(k[plen:], raw[HEADER_SIZE:], ts, token, exp, bool(flags))
    else:
        if hi is None:
            positioned = cur.last()
        elif cur.set_range(hi):
            positioned = cur.prev()
        else:
            positioned = cur.last()
        if not positioned:
            return
        for k, raw in cur.iterprev():
            if k < lo:
                return
            ts, token, exp, flags = unpack(raw)
            yield Item(k[plen:], raw[HEADER_SIZE:], ts, token, exp, bool(flags))


class _LmdbWrite(WriteTxn):
    __slots__ = ("_kv", "_txn")

    def __init__(self, kv: LmdbKV, txn: Any) -> None:
        self._kv = kv
        self._txn = txn

    def _find_db(self, ns: str) -> Any:
        """An existing namespace's handle, opened inside this write (None if absent)."""
        try:
            db = self._kv._env.open_db(ns.encode(), txn=self._txn, create=False)
        except _lmdb.NotFoundError:
            return None
        self._kv._dbs[ns] = db
        return db

    def _wdb(self, ns: str) -> Any:
        db = self._kv._dbs.get(ns)
        if db is None:
            db = self._find_db(ns)
            if db is None:
                # A namespace first seen inside a write: create it in this transaction.
                db = self._kv._env.open_db(ns.encode(), txn=self._txn, create=True)
                self._kv._dbs[ns] = db
                self._kv._ttls.setdefault(ns, None)
        return db

    def get(self, ns: str, rid: bytes, key: bytes) -> Item | None:
        # Once per edge of every write (the LWW check): the prefix and the Item are inlined.
        db = self._kv._dbs.get(ns) or self._find_db(ns)
        if db is None:
            return None
        n = len(rid)
        if n > 0xFFFF:
            raise StorageRefused(f"record id too long ({n} bytes; the limit is 65535)")
        raw = self._txn.get(_pack_len(n) + rid + key, db=db)
        if raw is None:
            return None
        ts, token, exp, flags = _header_unpack(raw)
        return _new_item(Item, (key, raw[HEADER_SIZE:], ts, token, exp, flags != 0))

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
        # The hot path of every graph write: encoding is inlined (see kv.base.encode_value).
        kv = self._kv
        db = kv._dbs.get(ns) or self._wdb(ns)
        ttl = ttl_us if ttl_us is not None else kv._ttls.get(ns)
        exp = (ts + TOMBSTONE_GRACE_US if tombstone else 0) if ttl is None else ts + ttl
        try:
            self._txn.put(
                _LEN.pack(len(rid)) + rid + key,
                _header_pack(ts, token, exp, FLAG_TOMBSTONE if tombstone else 0) + value,
                db=db,
            )
        except struct.error:
            raise StorageRefused(
                f"record id too long ({len(rid)} bytes; the limit is 65535)"
            ) from None
        except _lmdb.MapFullError as exc:
            raise StorageError(f"LMDB map is full at {kv.path}") from exc

    def put_many(self, items: Iterable[tuple[str, bytes, bytes, bytes, int, int]]) -> None:
        kv = self._kv
        ttls = kv._ttls
        by_ns: dict[str, list[tuple[bytes, bytes]]] = {}
        pack_len = _pack_len
        pack = _header_pack
        # Consecutive items usually share a namespace (the graph store writes an edge's
        # three items together), so the namespace's rows and TTL are looked up once per run.
        cur_ns: str | None = None
        rows: list[tuple[bytes, bytes]] = []
        append = rows.append
        ttl: int | None = None
        for ns, rid, key, value, ts, token in items:
            if ns != cur_ns:
                got = by_ns.get(ns)
                if got is None:
                    got = by_ns[ns] = []
                rows, append, ttl, cur_ns = got, got.append, ttls.get(ns), ns
            n = len(rid)
            if n > 0xFFFF:
                raise StorageRefused(f"record id too long ({n} bytes; the limit is 65535)")
            append(
                (
                    pack_len(n) + rid + key,
                    pack(ts, token, 0 if ttl is None else ts + ttl, 0) + value,
                )
            )
        for ns, rows in by_ns.items():
            rows.sort()
            cur = self._txn.cursor(db=kv._dbs.get(ns) or self._wdb(ns))
            try:
                cur.putmulti(rows)
            except _lmdb.MapFullError as exc:
                raise StorageError(f"LMDB map is full at {kv.path}") from exc

    def upsert_listed(
        self,
        key_ns: str,
        out_ns: str,
        in_ns: str,
        rows: list[tuple[bytes, bytes, int, int, bytes]],
        time_key: Callable[[int], bytes],
    ) -> int:
        """Last-write-wins upserts of keyed items listed in two time-ordered lists, fused into
        one loop over the LMDB transaction (the graph's edge write, see
        :mod:`hopcast.graph.keys`); returns how many rows were written.

        For each row ``(src, dst, ts, token, value)``, each ``(src, dst)`` at most once:

        1. read the item ``key_ns/src/dst``; if its version ``(ts, token)`` is newer or equal,
           skip the row (the stored item is the later write);
        2. if that item is live (not a tombstone), delete its entries
           ``out_ns/src/time_key(old ts) ‖ dst`` and ``in_ns/dst/time_key(old ts) ‖ src``;
        3. put ``key_ns/src/dst``, ``out_ns/src/time_key(ts) ‖ dst`` and
           ``in_ns/dst/time_key(ts) ‖ src`` with ``value``, the version and each namespace's
           TTL, in bulk, in key order, after every read of the call.

        The same items and headers as :meth:`get`, :meth:`delete` and :meth:`put_many` would
        write, with one key prefix, one header and one Python tuple per row and list.

        Raises:
            StorageRefused: if an id is longer than a record id can be (nothing of the row is
                written; the transaction must be aborted).
        """
        kv = self._kv
        txn = self._txn
        tget, tdel = txn.get, txn.delete
        key_db = kv._dbs.get(key_ns) or self._wdb(key_ns)
        out_db = kv._dbs.get(out_ns) or self._wdb(out_ns)
        in_db = kv._dbs.get(in_ns) or self._wdb(in_ns)
        ttls = kv._ttls
        ttl_key, ttl_out, ttl_in = ttls.get(key_ns), ttls.get(out_ns), ttls.get(in_ns)
        shared = ttl_key == ttl_out == ttl_in  # one edge type's lists: always
        pack_len, pack, unpack = _pack_len, _header_pack, _header_unpack
        key_rows: list[tuple[bytes, bytes]] = []
        out_rows: list[tuple[bytes, bytes]] = []
        in_rows: list[tuple[bytes, bytes]] = []
        key_add, out_add, in_add = key_rows.append, out_rows.append, in_rows.append
        written = 0
        try:
            for src, dst, ts, token, value in rows:
                psrc = pack_len(len(src)) + src
                kk = psrc + dst
                old = tget(kk, db=key_db)
                if old is not None:
                    old_ts, old_token, _, old_flags = unpack(old)
                    if old_ts > ts or (old_ts == ts and old_token >= token):
                        continue
                    if not old_flags:
                        old_inv = time_key(old_ts)
                        tdel(psrc + old_inv + dst, db=out_db)
                        tdel(pack_len(len(dst)) + dst + old_inv + src, db=in_db)
                inv = time_key(ts)
                if shared:
                    v = pack(ts, token, 0 if ttl_key is None else ts + ttl_key, 0) + value
                    key_add((kk, v))
                    out_add((psrc + inv + dst, v))
                    in_add((pack_len(len(dst)) + dst + inv + src, v))
                else:
                    key_add(
                        (kk, pack(ts, token, 0 if ttl_key is None else ts + ttl_key, 0) + value)
                    )
                    out_add(
                        (
                            psrc + inv + dst,
                            pack(ts, token, 0 if ttl_out is None else ts + ttl_out, 0) + value,
                        )
                    )
                    in_add(
                        (
                            pack_len(len(dst)) + dst + inv + src,
                            pack(ts, token, 0 if ttl_in is None else ts + ttl_in, 0) + value,
                        )
                    )
                written += 1
        except struct.error:
            for src, dst, *_ in rows:
                for rid in (src, dst):
                    if len(rid) > 0xFFFF:
                        raise StorageRefused(
                            f"record id too long ({len(rid)} bytes; the limit is 65535)"
                        ) from None
            raise
        for db, got in ((key_db, key_rows), (out_db, out_rows), (in_db, in_rows)):
            if got:
                got.sort(key=_first)  # keys are unique: no value is compared
                try:
                    txn.cursor(db=db).putmulti(got)
                except _lmdb.MapFullError as exc:
                    raise StorageError(f"LMDB map is full at {kv.path}") from exc
        return written

    def delete(self, ns: str, rid: bytes, key: bytes) -> bool:
        db = self._kv._dbs.get(ns) or self._find_db(ns)
        if db is None:
            return False
        n = len(rid)
        if n > 0xFFFF:
            raise StorageRefused(f"record id too long ({n} bytes; the limit is 65535)")
        return bool(self._txn.delete(_pack_len(n) + rid + key, db=db))

    def scan(
        self,
        ns: str,
        rid: bytes,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
    ) -> Iterator[Item]:
        if ns not in self._kv._dbs:
            self._find_db(ns)
        return _scan(self._kv, self._txn, ns, rid, start, stop, reverse)

    def set_checkpoint(self, source: str, position: bytes) -> None:
        self._txn.put(source.encode(), bytes(position), db=self._kv._cp)

"""GraphStore: applies mutation batches (with source positions) atomically; reads adjacency.

Writes go through :meth:`GraphStore.apply`, which

1. validates every mutation against the schema (nothing is written if one does not fit),
   unless the caller shows they were validated against this very schema (an ingest
   pipeline's ``validated_by``),
2. applies them in one atomic KV write under the LWW rules of :mod:`hopcast.graph.mutations`,
3. writes the given source positions (checkpoints) in that same write,
4. tells listeners (e.g. the node cache) which nodes changed.

Reads go through :meth:`GraphStore.read`, a consistent view (an LMDB snapshot) with ``now``
fixed for its whole life, so retention is judged once per query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol, runtime_checkable

import msgspec

from hopcast.durations import now_us
from hopcast.errors import SchemaViolation
from hopcast.graph import keys
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    Props,
    split_node_id,
    token_of,
)
from hopcast.graph.schema import Schema
from hopcast.kv.base import KVStore, ReadTxn, WriteTxn

#: First batch of a streamed adjacency read: a typical top-20 needs one round.
FIRST_BATCH = 32
#: Largest batch; bounds the memory of a read that streams through a celebrity's list.
MAX_BATCH = 1024

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def encode_props(props: Mapping[str, Any]) -> bytes:
    return _encode(props) if props else b""


def decode_props(raw: bytes) -> Props:
    return _decode(raw) if raw else {}


class Edge(tuple):  # type: ignore[type-arg]
    """One edge as read from an adjacency list: ``(src, type, dst, ts, raw props, item key)``.

    A tuple subclass because an adjacency read builds thousands of them per query; ``props``
    are decoded from the stored bytes on access.
    """

    __slots__ = ()

    def __new__(
        cls, src: str, type: str, dst: str, ts: int, raw: bytes = b"", key: bytes = b""
    ) -> Edge:
        return _new_tuple(cls, (src, type, dst, ts, raw, key))

    @property
    def src(self) -> str:
        return self[0]  # type: ignore[no-any-return]

    @property
    def type(self) -> str:
        return self[1]  # type: ignore[no-any-return]

    @property
    def dst(self) -> str:
        return self[2]  # type: ignore[no-any-return]

    @property
    def ts(self) -> int:
        return self[3]  # type: ignore[no-any-return]

    @property
    def props(self) -> Props:
        raw: bytes = self[4]
        return _decode(raw) if raw else {}

    @property
    def _key(self) -> bytes:
        return self[5]  # type: ignore[no-any-return]

    def other(self, node: str) -> str:
        """The end of this edge that is not ``node``."""
        return self[2] if self[0] == node else self[0]  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        return {"src": self[0], "type": self[1], "dst": self[2], "ts": self[3], "props": self.props}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Edge) and (
            self[:4] == other[:4] and (self[4] == other[4] or self.props == other.props)
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self[:4])

    def __repr__(self) -> str:
        return f"Edge({self[0]} -[{self[1]}]-> {self[2]} @ {self[3]})"


_new_tuple = tuple.__new__

#: ``(-ts, src, type, dst, props bytes, item key)``: an edge in journey sort order.
KeyedEdge = tuple[int, str, str, str, bytes, bytes]


def edge_of(k: KeyedEdge) -> Edge:
    """The :class:`Edge` of a :data:`KeyedEdge`."""
    return _new_tuple(Edge, (k[1], k[2], k[3], -k[0], k[4], k[5]))


@dataclass(frozen=True, slots=True)
class Node:
    """A node: its id, last-seen time and current properties."""

    id: str
    ts: int
    props: Props
    expires_at: int = 0

    @property
    def type(self) -> str:
        return self.id.partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "props": self.props}


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one :meth:`GraphStore.apply` did: writes that changed the graph, and writes that
    lost to a newer (or equal) version and so changed nothing."""

    applied: int
    skipped: int


# A node item's value: {prop: [value, ts, token]}; value None marks a deleted property.
_NodeValue = dict[str, list[Any]]
#: Reserved entry of a node value: the version of the node's newest delete, kept while the node
#: lives again so that writes older than that delete stay out. Property names never start
#: with NUL.
DELETED = "\x00deleted"
_DELETED_MARK = _encode(DELETED)


def _newest_per_edge(
    ops: list[EdgeUpsert | EdgeDelete],
) -> Iterator[tuple[EdgeUpsert | EdgeDelete, int]]:
    """The newest write (with its token) of each ``(type, src, dst)`` in key-sorted ``ops``.

    Under LWW the older writes of an edge in the same batch cannot change the outcome, so they
    are dropped here (and counted as skipped), and every edge is written once per batch.
    """
    best: EdgeUpsert | EdgeDelete | None = None
    best_tok = 0
    for m in ops:
        tok = token_of(m)
        if best is not None and best.src == m.src and best.dst == m.dst and best.type == m.type:
            if (m.ts, tok) > (best.ts, best_tok):
                best, best_tok = m, tok
            continue
        if best is not None:
            yield best, best_tok
        best, best_tok = m, tok
    if best is not None:
        yield best, best_tok


@runtime_checkable
class _ListedWriter(Protocol):
    """A write transaction with a fused edge upsert (LMDB's has one): the same reads, deletes
    and puts as the generic loop of :meth:`GraphStore._write_edges`, in one call per edge
    type."""

    def upsert_listed(
        self,
        key_ns: str,
        out_ns: str,
        in_ns: str,
        rows: list[tuple[bytes, bytes, int, int, bytes]],
        time_key: Callable[[int], bytes],
    ) -> int: ...


#: The graph's own bookkeeping namespace.
GRAPH_META_NS = "g.meta"
#: Record listing the node types that have had a NodeDelete (item key = node type).
NODE_DELETES = b"node-deletes"


#: Edges per transaction of :meth:`GraphStore.load_edges`: about 150 MB of rows in memory,
#: and few enough commits that their fsyncs do not count.
LOAD_CHUNK = 250_000

#: The sort key of edge writes, ``(type, src, dst, ts)`` (in C: no Python call per write).
_edge_key = attrgetter("type", "src", "dst", "ts")


class GraphStore:
    """The typed graph over a :class:`~hopcast.kv.base.KVStore`.

    Args:
        kv: the backend.
        schema: the schema; its namespaces are configured on the backend at start-up.
        clock: returns "now" in µs; only used when a caller passes no ``now``.
    """

    def __init__(self, kv: KVStore, schema: Schema, clock: Callable[[], int] = now_us) -> None:
        self.kv = kv
        self.schema = schema
        self.clock = clock
        self._listeners: list[Callable[[set[str]], None]] = []
        ttls: dict[str, int | None] = {
            keys.node_ns(name): nt.retention_us for name, nt in schema.nodes.items()
        }
        for name, et in schema.edges.items():
            for ns in (keys.out_ns(name), keys.in_ns(name), keys.key_ns(name)):
                ttls[ns] = et.retention_us
        ttls[GRAPH_META_NS] = None
        kv.configure_many(ttls)
        self._ns = {
            name: (keys.out_ns(name), keys.in_ns(name), keys.key_ns(name)) for name in schema.edges
        }

    def on_write(self, listener: Callable[[set[str]], None]) -> None:
        """Call ``listener(node_ids)`` after every committed write with the nodes it touched."""
        self._listeners.append(listener)

    # -- writes ------------------------------------------------------------------------------

    def validate(self, mutations: Iterable[Mutation]) -> list[Mutation]:
        """Return the canonical forms, or raise for the first mutation that does not fit.

        Raises:
            SchemaViolation: with the mutation's index in ``mutations`` (an
                :class:`~hopcast.errors.OutOfBounds` for a broken bound).
        """
        out: list[Mutation] = []
        validate = self.schema.validate
        for i, m in enumerate(mutations):
            try:
                out.append(validate(m))  # types and bounds too (hopcast.graph.limits)
            except SchemaViolation as exc:  # OutOfBounds stays OutOfBounds
                raise type(exc)(exc.reason, i) from None
        return out

    def partition(
        self, mutations: Iterable[Mutation]
    ) -> tuple[list[Mutation], list[tuple[Mutation, str]]]:
        """Split mutations into canonical valid ones and ``(rejected, reason)`` pairs."""
        valid: list[Mutation] = []
        rejected: list[tuple[Mutation, str]] = []
        for m in mutations:
            try:
                valid.extend(self.validate([m]))
            except SchemaViolation as exc:
                rejected.append((m, exc.reason))
        return valid, rejected

    def apply(
        self,
        mutations: Iterable[Mutation],
        checkpoints: Mapping[str, bytes] | None = None,
        *,
        validated: bool = False,
        validated_by: Schema | None = None,
        extra: Iterable[tuple[str, bytes, bytes, bytes]] = (),
    ) -> ApplyResult:
        """Validate, then apply mutations, checkpoints and ``extra`` items in one atomic write.

        ``validated=True`` skips the validation for a caller whose mutations are already the
        canonical forms that :meth:`validate` returns for this store's schema; anything else
        must not pass it.

        Args:
            validated_by: the schema whose ``validate`` produced ``mutations`` (an ingest
                pipeline's): the store skips its own validation only if that is this store's
                :attr:`schema` itself (the same object, not an equal one), so mutations
                validated against any other schema, or a schema loaded since, are validated
                here in full.
            extra: raw items ``(namespace, record id, item key, value)`` put unconditionally
                in the same write (the ingest engine's side-table rows, which must change
                exactly when the positions of the records that changed them are stored); their
                namespaces must be configured on the KV.

        Raises:
            SchemaViolation: if any mutation does not fit the schema (nothing is written).
            StorageRefused: if the backend cannot store an item (nothing is written).
            StorageError: if the backend fails (nothing is written).
        """
        if validated_by is not None and validated_by is self.schema:
            validated = True
        batch = mutations if validated and isinstance(mutations, list) else None
        if batch is None:
            batch = list(mutations) if validated else self.validate(mutations)
        applied = 0
        touched: set[str] = set()
        node_ops = [m for m in batch if type(m) is NodeUpsert or type(m) is NodeDelete]
        edge_ops: list[EdgeUpsert | EdgeDelete] = [
            m for m in batch if type(m) is EdgeUpsert or type(m) is EdgeDelete
        ]
        # LWW makes the outcome independent of order, so node writes go first (edges consult
        # node tombstones) and edges go in key order, which keeps B-tree writes local.
        edge_ops.sort(key=_edge_key)
        deleted: dict[str, tuple[int, int] | None] = {}
        with self.kv.writer() as w:
            # Node types that have ever seen a NodeDelete: only their endpoints need the
            # tombstone check on edge writes (one small read per batch saves one per edge).
            with_deletes = {i.key.decode() for i in w.scan(GRAPH_META_NS, NODE_DELETES)}
            w.prefetch(self._reads(node_ops, edge_ops, with_deletes))
            for m in node_ops:
                if type(m) is NodeUpsert:
                    changed = self._node_upsert(w, m)
                else:
                    assert isinstance(m, NodeDelete)
                    node_type = m.node.partition(":")[0]
                    if node_type not in with_deletes:
                        w.put(GRAPH_META_NS, NODE_DELETES, node_type.encode(), b"", 0, 0)
                        with_deletes.add(node_type)
                    changed = self._node_delete(w, m)
                if changed:
                    touched.add(m.node)
                    applied += 1
            applied += self._write_edges(w, edge_ops, deleted, with_deletes)
            for ns, rid, key, value in extra:
                w.put(ns, rid, key, value, 0, 0)
            for source, position in (checkpoints or {}).items():
                w.set_checkpoint(source, position)
        if touched:
            for listener in self._listeners:
                listener(touched)
        return ApplyResult(applied, len(batch) - applied)

    def load_edges(
        self,
        edges: Iterable[EdgeUpsert],
        *,
        chunk: int = LOAD_CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Bulk-write edges that the store does not hold yet; returns how many were written.

        Each edge is validated as by :meth:`apply`, then written without apply's
        last-write-wins reads: three unconditional puts, sorted per namespace, one transaction
        per ``chunk`` edges (each committed alone, without checkpoints). For loading a fresh
        store, or edges disjoint from the stored ones: an edge already stored, or given twice,
        would keep a stale entry in its time-ordered lists — write those with :meth:`apply`.

        Args:
            progress: called with the number of edges written so far after every chunk.

        Raises:
            SchemaViolation: if an edge does not fit the schema (the chunks before it stay).
            StorageRefused, StorageError: as :meth:`apply`.
        """
        written = 0
        batch: list[Mutation] = []
        for e in edges:
            batch.append(e)
            if len(batch) >= chunk:
                written += self._load_chunk(batch)
                batch = []
                if progress is not None:
                    progress(written)
        if batch:
            written += self._load_chunk(batch)
            if progress is not None:
                progress(written)
        return written

    def _load_chunk(self, batch: list[Mutation]) -> int:
        rows: list[tuple[str, bytes, bytes, bytes, int, int]] = []
        append = rows.append
        inv_ts = keys.inv_ts
        for m in self.validate(batch):
            if type(m) is not EdgeUpsert:
                raise SchemaViolation(f"load_edges takes edge upserts, not {type(m).__name__}")
            out_ns, in_ns, key_ns = self._ns[m.type]
            src, dst, ts, tok = m.src.encode(), m.dst.encode(), m.ts, token_of(m)
            raw = _encode(m.props) if m.props else b""
            inv = inv_ts(ts)
            append((out_ns, src, inv + dst, raw, ts, tok))
            append((in_ns, dst, inv + src, raw, ts, tok))
            append((key_ns, src, dst, raw, ts, tok))
        with self.kv.writer() as w:
            w.put_many(rows)
        return len(batch)

    def _reads(
        self,
        node_ops: list[NodeUpsert | NodeDelete],
        edge_ops: list[EdgeUpsert | EdgeDelete],
        with_deletes: set[str],
    ) -> Iterator[tuple[str, bytes, bytes]]:
        """The items the batch's LWW checks read: each node's item, each edge's key item, and
        the items of endpoints whose type has seen deletes."""
        for n in node_ops:
            yield keys.node_ns(n.node.partition(":")[0]), n.node.encode(), keys.NODE_ITEM
        for e in edge_ops:
            yield self._ns[e.type][2], e.src.encode(), e.dst.encode()
            if with_deletes and type(e) is EdgeUpsert:
                for end in (e.src, e.dst):
                    node_type = end.partition(":")[0]
                    if node_type in with_deletes:
                        yield keys.node_ns(node_type), end.encode(), keys.NODE_ITEM

    def _deleted_at(
        self, w: WriteTxn, node: str, cache: dict[str, tuple[int, int] | None]
    ) -> tuple[int, int] | None:
        """The version of the newest delete of ``node`` (tombstoned or since recreated)."""
        if node in cache:
            return cache[node]
        item = w.get(keys.node_ns(node.partition(":")[0]), node.encode(), keys.NODE_ITEM)
        version: tuple[int, int] | None = None
        if item is not None:
            if item.tombstone:
                version = (item.ts, item.token)
            elif _DELETED_MARK in item.value:
                mark = _decode(item.value).get(DELETED)
                version = None if mark is None else (mark[1], mark[2])
        cache[node] = version
        return version

    def _node_upsert(self, w: WriteTxn, m: NodeUpsert) -> bool:
        ns = keys.node_ns(m.node.partition(":")[0])
        rid = m.node.encode()
        tok = token_of(m)
        old = w.get(ns, rid, keys.NODE_ITEM)
        version = (m.ts, tok)
        props: _NodeValue = {}
        deleted: tuple[int, int] | None = None
        if old is not None and old.tombstone:
            deleted = (old.ts, old.token)
            if deleted >= version:
                return False  # deleted at a newer version: an older upsert cannot resurrect it
            props[DELETED] = [None, old.ts, old.token]
            old = None
        elif old is not None and old.value:
            props = _decode(old.value)
            mark = props.get(DELETED)
            if mark is not None:
                deleted = (mark[1], mark[2])
                if deleted >= version:
                    return False  # older than the node's last delete
        changed = old is None
        for name, value in m.props.items():
            cur = props.get(name)
            if cur is None or (cur[1], cur[2]) < version:
                props[name] = [value, m.ts, tok]
                changed = True
        if old is not None and (old.ts, old.token) < version:
            changed = True
        if not changed:
            return False
        if old is not None and (old.ts, old.token) > version:
            ts, tk = old.ts, old.token
        else:
            ts, tk = version
        w.put(ns, rid, keys.NODE_ITEM, _encode(props) if props else b"", ts, tk)
        return True

    def _write_edges(
        self,
        w: WriteTxn,
        edge_ops: list[EdgeUpsert | EdgeDelete],
        deleted: dict[str, tuple[int, int] | None],
        with_deletes: set[str],
    ) -> int:
        """Apply the newest write of each edge in key-sorted ``edge_ops``; returns how many
        changed the graph.

        An upsert that wins reads the edge's key item, deletes its old entries from both
        time-ordered lists and queues its three puts, written in bulk at the end (each edge
        appears once per batch, so nothing reads them before). The hottest loop of ingest:
        on a backend with :meth:`~_ListedWriter.upsert_listed` (LMDB) the upserts of each
        edge type go to it in one call; elsewhere everything per edge is inlined here.
        """
        if w.indexes_on_server:
            return self._write_edges_indexed(w, edge_ops, deleted, with_deletes)
        if isinstance(w, _ListedWriter):
            return self._write_edges_listed(w, w.upsert_listed, edge_ops, deleted, with_deletes)
        applied = 0
        pending: list[tuple[str, bytes, bytes, bytes, int, int]] = []
        append = pending.append
        get, discard = w.get, w.discard  # discard: a blind delete (no read on Redis)
        ns_of = self._ns
        inv_ts = keys.inv_ts
        for m, tok in _newest_per_edge(edge_ops):
            if type(m) is not EdgeUpsert:
                assert isinstance(m, EdgeDelete)
                applied += self._edge_delete(w, m)
                continue
            ts = m.ts
            if with_deletes and self._endpoint_deleted(w, m, (ts, tok), deleted, with_deletes):
                continue  # an endpoint was deleted after this edge was generated
            out_ns, in_ns, key_ns = ns_of[m.type]
            src, dst = m.src.encode(), m.dst.encode()
            old = get(key_ns, src, dst)
            if old is not None:
                old_ts = old[2]
                if old_ts > ts or (old_ts == ts and old[3] >= tok):
                    continue
                if not old[5]:  # not a tombstone: its list entries go
                    old_inv = inv_ts(old_ts)
                    discard(out_ns, src, old_inv + dst)
                    discard(in_ns, dst, old_inv + src)
            props = m.props
            raw = _encode(props) if props else b""
            inv = inv_ts(ts)
            append((out_ns, src, inv + dst, raw, ts, tok))
            append((in_ns, dst, inv + src, raw, ts, tok))
            append((key_ns, src, dst, raw, ts, tok))
            applied += 1
        w.put_many(pending)
        return applied

    def _write_edges_indexed(
        self,
        w: WriteTxn,
        edge_ops: list[EdgeUpsert | EdgeDelete],
        deleted: dict[str, tuple[int, int] | None],
        with_deletes: set[str],
    ) -> int:
        """:meth:`_write_edges` for a backend that moves the time-ordered list entries on the
        server (:meth:`WriteTxn.put_indexed`): concurrent writers of one edge in several
        processes then always end with the winner's entries only."""
        applied = 0
        put_indexed, get = w.put_indexed, w.get
        ns_of = self._ns
        for m, tok in _newest_per_edge(edge_ops):
            out_ns, in_ns, key_ns = ns_of[m.type]
            src, dst = m.src.encode(), m.dst.encode()
            lists = ((out_ns, src, dst), (in_ns, dst, src))
            if type(m) is EdgeUpsert:
                ts = m.ts
                if with_deletes and self._endpoint_deleted(w, m, (ts, tok), deleted, with_deletes):
                    continue  # an endpoint was deleted after this edge was generated
                raw = _encode(m.props) if m.props else b""
                applied += put_indexed(key_ns, src, dst, raw, ts, tok, lists)
            else:
                old = get(key_ns, src, dst)
                if put_indexed(key_ns, src, dst, b"", m.ts, tok, lists, tombstone=True):
                    applied += old is not None and not old.tombstone
        return applied

    def _write_edges_listed(
        self,
        w: WriteTxn,
        upsert: Callable[
            [str, str, str, list[tuple[bytes, bytes, int, int, bytes]], Callable[[int], bytes]],
            int,
        ],
        edge_ops: list[EdgeUpsert | EdgeDelete],
        deleted: dict[str, tuple[int, int] | None],
        with_deletes: set[str],
    ) -> int:
        """:meth:`_write_edges` through :meth:`_ListedWriter.upsert_listed`: the rows of each
        edge type (a run of the key-sorted ``edge_ops``) in one call; deletes as before (they
        touch other edges' items than the upserts, so the order between them is free)."""
        applied = 0
        rows: list[tuple[bytes, bytes, int, int, bytes]] = []
        add = rows.append
        ns_of = self._ns
        inv_ts = keys.inv_ts
        encode = _encode
        run_type = ""
        for m, tok in _newest_per_edge(edge_ops):
            if type(m) is not EdgeUpsert:
                assert isinstance(m, EdgeDelete)
                applied += self._edge_delete(w, m)
                continue
            if with_deletes and self._endpoint_deleted(w, m, (m.ts, tok), deleted, with_deletes):
                continue  # an endpoint was deleted after this edge was generated
            if m.type != run_type:
                if rows:
                    out_ns, in_ns, key_ns = ns_of[run_type]
                    applied += upsert(key_ns, out_ns, in_ns, rows, inv_ts)
                    rows = []
                    add = rows.append
                run_type = m.type
            props = m.props
            add((m.src.encode(), m.dst.encode(), m.ts, tok, encode(props) if props else b""))
        if rows:
            out_ns, in_ns, key_ns = ns_of[run_type]
            applied += upsert(key_ns, out_ns, in_ns, rows, inv_ts)
        return applied

    def _endpoint_deleted(
        self,
        w: WriteTxn,
        m: EdgeUpsert,
        version: tuple[int, int],
        deleted: dict[str, tuple[int, int] | None],
        with_deletes: set[str],
    ) -> bool:
        """Whether an endpoint of ``m`` was deleted at a newer version than ``m``."""
        for end in (m.src, m.dst):
            if end.partition(":")[0] not in with_deletes:
                continue
            gone = self._deleted_at(w, end, deleted)
            if gone is not None and gone > version:
                return True
        return False

    def _edge_delete(self, w: WriteTxn, m: EdgeDelete) -> bool:
        out_ns, in_ns, key_ns = self._ns[m.type]
        tok = token_of(m)
        src, dst = m.src.encode(), m.dst.encode()
        old = w.get(key_ns, src, dst)
        if old is not None:
            if (old.ts, old.token) >= (m.ts, tok):
                return False
            if not old.tombstone:
                w.discard(out_ns, src, keys.time_item(old.ts, dst))
                w.discard(in_ns, dst, keys.time_item(old.ts, src))
        w.put(key_ns, src, dst, b"", m.ts, tok, tombstone=True)
        return old is not None and not old.tombstone

    def _node_delete(self, w: WriteTxn, m: NodeDelete) -> bool:
        node_type = m.node.partition(":")[0]
        ns = keys.node_ns(node_type)
        rid = m.node.encode()
        tok = token_of(m)
        version = (m.ts, tok)
        changed = False
        old = w.get(ns, rid, keys.NODE_ITEM)
        if old is None or (old.ts, old.token) < version:
            changed = old is not None and not old.tombstone
            w.put(ns, rid, keys.NODE_ITEM, b"", m.ts, tok, tombstone=True)
        elif not old.tombstone:
            # The node was seen again after this delete: drop the properties older than it and
            # remember the delete, so older writes arriving later stay out.
            props: _NodeValue = _decode(old.value) if old.value else {}
            kept = {k: v for k, v in props.items() if k != DELETED and (v[1], v[2]) > version}
            mark = props.get(DELETED)
            if mark is None or (mark[1], mark[2]) < version:
                mark = [None, m.ts, tok]
            kept[DELETED] = mark
            if kept != props:
                changed = True
                w.put(ns, rid, keys.NODE_ITEM, _encode(kept), old.ts, old.token)
        # Incident edges older than the delete go too, from both time-ordered lists.
        for edge_type in self.schema.edge_types_touching(node_type):
            out_ns, in_ns, key_ns = self._ns[edge_type]
            for physical in self.schema.physical_lists(node_type, edge_type, "both"):
                ns_list = out_ns if physical == "out" else in_ns
                doomed = [
                    i for i in w.scan(ns_list, rid) if not i.tombstone and (i.ts, i.token) < version
                ]
                for item in doomed:
                    other = item.key[8:]
                    src, dst = (rid, other) if physical == "out" else (other, rid)
                    if w.indexes_on_server:  # the server moves the list entries
                        lists = ((out_ns, src, dst), (in_ns, dst, src))
                        if w.put_indexed(key_ns, src, dst, b"", m.ts, tok, lists, tombstone=True):
                            changed = True
                        continue
                    w.discard(out_ns, src, keys.time_item(item.ts, dst))
                    w.discard(in_ns, dst, keys.time_item(item.ts, src))
                    w.put(key_ns, src, dst, b"", m.ts, tok, tombstone=True)
                    changed = True
        return changed

    # -- reads -------------------------------------------------------------------------------

    def read(self, now: int | None = None) -> GraphReader:
        """A consistent read view with ``now`` fixed (defaults to the clock).

        Use it as a context manager: ``with store.read() as r: ...``; the view is released when
        the block exits.
        """
        return GraphReader(self, self.kv.reader(), self.clock() if now is None else now)

    def sweep(self, now: int | None = None, limit: int | None = None) -> int:
        """Physically remove nodes and edges past their retention; returns items removed."""
        return self.kv.sweep(self.clock() if now is None else now, limit)

    def checkpoints(self) -> dict[str, bytes]:
        """The stored source positions (written by :meth:`apply`)."""
        return self.kv.checkpoints()

    def close(self) -> None:
        self.kv.close()


class GraphReader:
    """Reads within one KV read view. Create with :meth:`GraphStore.read` (a context manager)."""

    __slots__ = ("_cm", "_ns", "now", "schema", "store", "txn")

    def __init__(self, store: GraphStore, view: AbstractContextManager[ReadTxn], now: int) -> None:
        self.store = store
        self.schema = store.schema
        self._cm = view
        self.txn = view.__enter__()
        self.now = now
        self._ns = store._ns

    def __enter__(self) -> GraphReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(None, None, None)

    def node(self, node_id: str) -> Node | None:
        """The node with its live properties, or None (never written, deleted or expired)."""
        node_type = split_node_id(node_id)[0]
        if node_type not in self.schema.nodes:
            return None
        item = self.txn.get(keys.node_ns(node_type), node_id.encode(), keys.NODE_ITEM, self.now)
        if item is None:
            return None
        raw: _NodeValue = _decode(item.value) if item.value else {}
        props = {k: v[0] for k, v in raw.items() if v[0] is not None and k != DELETED}
        return Node(node_id, item.ts, props, item.expires_at)

    def edges(
        self,
        node_id: str,
        edge_type: str,
        physical: str,
        since: int | None = None,
        until: int | None = None,
        batch: int = FIRST_BATCH,
    ) -> Iterator[Edge]:
        """Stream one stored adjacency list of ``node_id``, newest first.

        The list is read in batches that start at ``batch`` items and grow, so a caller that
        stops early (a limit, a filter satisfied) reads little more than it uses.

        Args:
            physical: ``"out"`` (edges whose source is the node) or ``"in"`` (whose target is).
            since, until: keep edges with ``since <= ts < until``.
        """
        start = keys.window(since, until)[0]
        while True:
            page = self.edges_list(node_id, edge_type, physical, since, until, batch, start)
            yield from page
            if len(page) < batch:
                return
            start = page[-1]._key + b"\x00"
            batch = min(batch * 4, MAX_BATCH)

    def edges_list(
        self,
        node_id: str,
        edge_type: str,
        physical: str,
        since: int | None,
        until: int | None,
        limit: int,
        start: bytes | None = None,
    ) -> list[Edge]:
        """Up to ``limit`` edges of one stored list, newest first, read in one call."""
        return self.expand([node_id], edge_type, physical, since, until, limit, start)[0]

    def expand(
        self,
        node_ids: list[str],
        edge_type: str,
        physical: str,
        since: int | None,
        until: int | None,
        limit: int,
        start: bytes | None = None,
    ) -> list[list[Edge]]:
        """:meth:`edges_list` for many nodes in one round (one hop of a traversal); ``start``
        (an item key) resumes a streamed read."""
        out_ns, in_ns, _ = self._ns[edge_type]
        lo, stop = keys.window(since, until)
        start = start or lo
        rids = [n.encode() for n in node_ids]
        new = _new_tuple
        if physical == "out":

            def make_out(i: int, k: bytes, v: bytes, ts: int) -> Edge:
                return new(Edge, (node_ids[i], edge_type, k[8:].decode(), ts, v, k))

            return self.txn.fetch_many(out_ns, rids, self.now, limit, start, stop, make_out)

        def make_in(i: int, k: bytes, v: bytes, ts: int) -> Edge:
            return new(Edge, (k[8:].decode(), edge_type, node_ids[i], ts, v, k))

        return self.txn.fetch_many(in_ns, rids, self.now, limit, start, stop, make_in)

    def expand_keyed(
        self,
        node_ids: list[str],
        edge_type: str,
        physical: str,
        since: int | None,
        until: int | None,
        limit: int,
        start: bytes | None = None,
    ) -> list[list[KeyedEdge]]:
        """Like :meth:`expand`, as ``(-ts, src, type, dst, props bytes, item key)`` tuples.

        A merge across lists (the journey) sorts many more entries than it returns; these
        tuples sort in journey order as they are and become :class:`Edge`\\s only when kept.
        """
        out_ns, in_ns, _ = self._ns[edge_type]
        lo, stop = keys.window(since, until)
        rids = [n.encode() for n in node_ids]
        if physical == "out":

            def make_out(i: int, k: bytes, v: bytes, ts: int) -> KeyedEdge:
                return (-ts, node_ids[i], edge_type, k[8:].decode(), v, k)

            return self.txn.fetch_many(out_ns, rids, self.now, limit, start or lo, stop, make_out)

        def make_in(i: int, k: bytes, v: bytes, ts: int) -> KeyedEdge:
            return (-ts, k[8:].decode(), edge_type, node_ids[i], v, k)

        return self.txn.fetch_many(in_ns, rids, self.now, limit, start or lo, stop, make_in)

    def edges_by_target(self, node_id: str, edge_type: str) -> Iterator[Edge]:
        """Stream the out-list of ``node_id`` ordered by target id (the ``key`` index)."""
        _, _, key_ns = self._ns[edge_type]
        for item in self.txn.scan(key_ns, node_id.encode(), self.now):
            yield Edge(node_id, edge_type, item.key.decode(), item.ts, item.value)

    def edge(self, src: str, edge_type: str, dst: str) -> Edge | None:
        """The edge ``src -[edge_type]-> dst`` (stored orientation), or None."""
        _, _, key_ns = self._ns[edge_type]
        item = self.txn.get(key_ns, src.encode(), dst.encode(), self.now)
        if item is None:
            return None
        return Edge(src, edge_type, dst, item.ts, item.value)

    def count(
        self,
        node_id: str,
        edge_type: str,
        physical: str,
        since: int | None = None,
        until: int | None = None,
    ) -> int:
        """Number of live edges in one stored list within ``since <= ts < until``."""
        out_ns, in_ns, _ = self._ns[edge_type]
        start, stop = keys.window(since, until)
        ns = out_ns if physical == "out" else in_ns
        return self.txn.count(ns, node_id.encode(), self.now, start, stop)

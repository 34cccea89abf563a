"""Peer systems that the graph benchmark runs side by side with hopcast.

Two peers, each the store a user would otherwise pick for the same workload:

* :class:`SqlitePeer` -- stdlib :mod:`sqlite3`, one ``WITHOUT ROWID`` edges table keyed by
  ``(src, etype, dst)`` with covering indexes ``(src, etype, ts DESC)`` and
  ``(dst, etype, ts DESC)``, plus a ``nodes`` table.
* :class:`LadybugPeer` -- the embedded Cypher graph database ``ladybug`` (the Kuzu successor),
  one node table per node type and one rel table per edge type.

Both implement the :class:`Peer` protocol with identical semantics (see its docstrings), so the
benchmark can compare answers as well as timings. Run ``python bench/peers.py --selftest`` to
check both peers against a brute-force oracle and print rough timings at ~200k edges.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import os
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

Edge = tuple[str, str, str, int]
"""``(src, etype, dst, ts)``; ``ts`` is microseconds since the epoch."""

NODE_TYPES: tuple[str, ...] = (
    "account",
    "profile",
    "device",
    "title",
    "genre",
    "game",
    "live_event",
)
"""Node types; a node id is ``"<type>:<key>"``."""

EDGE_TYPES: dict[str, tuple[str, str]] = {
    "has_profile": ("account", "profile"),
    "logged_in_from": ("account", "device"),
    "started_watching": ("profile", "title"),
    "browsed": ("profile", "title"),
    "plays": ("profile", "game"),
    "watched_live": ("profile", "live_event"),
    "streamed_from": ("profile", "device"),
    "in_genre": ("title", "genre"),
}
"""Edge type -> (source node type, destination node type)."""

DIRECTIONS = ("out", "in")
"""Edge directions seen from the anchored node: ``out`` follows src->dst, ``in`` dst->src."""


def node_type(node: str) -> str:
    """Return the type part of a ``"type:key"`` node id (the whole id if it has no colon)."""
    return node.partition(":")[0]


def edge_ends(etype: str) -> tuple[str, str]:
    """Return ``(source type, destination type)`` of ``etype``; :class:`ValueError` if unknown."""
    types = EDGE_TYPES.get(etype)
    if types is None:
        raise ValueError(f"unknown edge type {etype!r}")
    return types


def check_edge(src: str, etype: str, dst: str) -> None:
    """Raise :class:`ValueError` unless ``etype`` is known and fits its endpoints' types."""
    types = edge_ends(etype)
    if node_type(src) != types[0] or node_type(dst) != types[1]:
        raise ValueError(f"{etype} goes {types[0]}->{types[1]}, got {src!r}->{dst!r}")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'out' or 'in', got {direction!r}")


def dedupe_edges(edges: Iterable[Edge]) -> dict[tuple[str, str, str], int]:
    """Collapse edges to one per ``(src, etype, dst)``, keeping the newest (largest) ts."""
    latest: dict[tuple[str, str, str], int] = {}
    get = latest.get
    for src, etype, dst, ts in edges:
        key = (src, etype, dst)
        old = get(key)
        if old is None or ts > old:
            latest[key] = ts
    return latest


class Peer(Protocol):
    """What the benchmark needs from a peer system.

    Semantics shared by every implementation:

    * at most one edge per ``(src, etype, dst)``; writing an existing triple keeps the larger ts
      (a write with an older ts is a no-op);
    * time windows are half-open ``[since, until)``; ``since`` alone means ``ts >= since``;
    * "newest first" orders by ts descending and breaks ties by ascending neighbour id (for
      ``journey``: by ``(src, etype, dst)`` ascending), so answers are deterministic;
    * an edge type whose endpoint type does not match the node's type simply yields nothing,
      as do unknown nodes and ``limit``/``per_node`` <= 0; an unknown edge type or direction
      raises :class:`ValueError`.

    Instances are not safe for concurrent use: callers must serialize calls on one instance.
    """

    name: str

    def __init__(self, workdir: str) -> None:
        """Create an empty database under ``workdir`` (created if missing), replacing any
        database files a previous instance of the same peer left there."""
        ...

    def bulk_load(self, nodes: Iterable[str], edges: Iterable[Edge]) -> None:
        """Load a fresh peer; must be the first write and happen at most once."""
        ...

    def upsert_edge(self, src: str, etype: str, dst: str, ts: int) -> None:
        """Insert the edge or raise its ts, creating missing nodes; committed on return."""
        ...

    def one_hop_latest(
        self, node: str, etype: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        """Return ``[(dst, ts)]`` of ``node``'s out-edges of ``etype`` with ts >= since.

        Newest first, at most ``limit`` rows.
        """
        ...

    def three_hop(
        self,
        start: str,
        etypes: tuple[str, str, str],
        directions: tuple[str, str, str],
        since: int,
        per_node: int,
    ) -> dict[str, int]:
        """Breadth-first expansion, capped per frontier node; returns ``{node: depth}``.

        At hop ``i`` every frontier node contributes its newest ``per_node`` edges of
        ``etypes[i]`` in ``directions[i]`` with ts >= since; nodes never seen before form the
        next frontier and are recorded at depth ``i + 1``. ``start`` is not in the result.
        """
        ...

    def journey(
        self,
        account: str,
        member_edges: tuple[str, ...],
        interaction_edges: tuple[str, ...],
        since: int,
        until: int,
        limit: int,
    ) -> list[tuple[int, str, str, str]]:
        """Return the newest ``limit`` interactions ``(ts, src, etype, dst)`` of an account.

        Members are ``account`` plus its out-neighbours via ``member_edges`` (any ts); the
        interactions are members' out-edges of ``interaction_edges`` with since <= ts < until,
        ordered by ts descending, then ``(src, etype, dst)`` ascending.
        """
        ...

    def count(self, node: str, etype: str, direction: str, since: int, until: int) -> int:
        """Return how many ``etype`` edges at ``node`` in ``direction`` have ts in the window."""
        ...

    def close(self) -> None:
        """Release the database; the instance is unusable afterwards."""
        ...


# --------------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------------

SQLITE_FILE = "peer.sqlite3"
"""Database file name under the peer's workdir (plus SQLite's -wal/-shm companions)."""

SQLITE_CACHE_KIB = 262_144
"""Page cache of 256 MiB: a user tuning for speed keeps the whole benchmark graph cached."""

_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS edges ("
    " src TEXT NOT NULL, etype TEXT NOT NULL, dst TEXT NOT NULL, ts INTEGER NOT NULL,"
    " PRIMARY KEY (src, etype, dst)) WITHOUT ROWID",
)
# Created after the bulk insert (building an index once is cheaper than maintaining it per row).
# In a WITHOUT ROWID table each index also carries the primary key, so both are covering.
_SQLITE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS edges_out ON edges (src, etype, ts DESC)",
    "CREATE INDEX IF NOT EXISTS edges_in ON edges (dst, etype, ts DESC)",
)
_SQL_UPSERT = (
    "INSERT INTO edges (src, etype, dst, ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (src, etype, dst) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > edges.ts"
)
_SQL_NODE = "INSERT OR IGNORE INTO nodes (id) VALUES (?)"
_SQL_ONE_HOP = (
    "SELECT dst, ts FROM edges WHERE src = ? AND etype = ? AND ts >= ?"
    " ORDER BY ts DESC, dst LIMIT ?"
)
_SQL_COUNT = {
    "out": "SELECT count(*) FROM edges WHERE src = ? AND etype = ? AND ts >= ? AND ts < ?",
    "in": "SELECT count(*) FROM edges WHERE dst = ? AND etype = ? AND ts >= ? AND ts < ?",
}
# Newest neighbours of one node; run once per frontier node by three_hop. Measured at 200k edges,
# this prepared point query per node beat one statement per hop (a json_each frontier with either
# ROW_NUMBER() OVER (PARTITION BY ...) or a correlated LIMIT subquery) by ~2x at every frontier
# size from 1 to 400: each lookup is a short walk of a covering index.
_SQL_NEWEST = {
    "out": "SELECT dst FROM edges WHERE src = ? AND etype = ? AND ts >= ?"
    " ORDER BY ts DESC, dst LIMIT ?",
    "in": "SELECT src FROM edges WHERE dst = ? AND etype = ? AND ts >= ?"
    " ORDER BY ts DESC, src LIMIT ?",
}


class SqlitePeer:
    """The "just use SQLite" peer: one indexed edges table in WAL mode.

    Files: ``<workdir>/peer.sqlite3`` (and ``-wal``/``-shm``); existing ones are removed on
    construction so every instance starts empty. The connection is opened with
    ``check_same_thread=False`` so it may move between threads, but calls must not overlap.
    """

    name = "sqlite3"

    def __init__(self, workdir: str) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, SQLITE_FILE)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
        # isolation_level=None: autocommit, transactions only where we BEGIN them explicitly.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        self._db.execute("PRAGMA temp_store=MEMORY")
        for ddl in _SQLITE_SCHEMA:
            self._db.execute(ddl)
        self._loaded = False

    def bulk_load(self, nodes: Iterable[str], edges: Iterable[Edge]) -> None:
        """Load nodes and edges in one transaction, then build the indexes.

        Must be the first write, at most once. Edge endpoint types are not validated here (the
        caller is the benchmark's own generator); duplicate triples keep the newest ts.
        """
        if self._loaded:
            raise RuntimeError("bulk_load must be called once, on a fresh peer")
        self._loaded = True
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(_SQL_NODE, ((n,) for n in nodes))
            db.executemany(_SQL_UPSERT, edges)
            # Endpoints that were not listed as nodes still become nodes, as with upsert_edge.
            db.execute("INSERT OR IGNORE INTO nodes (id) SELECT src FROM edges")
            db.execute("INSERT OR IGNORE INTO nodes (id) SELECT dst FROM edges")
            for ddl in _SQLITE_INDEXES:
                db.execute(ddl)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("ANALYZE")

    def upsert_edge(self, src: str, etype: str, dst: str, ts: int) -> None:
        """Upsert one edge (and its endpoint nodes) in its own committed transaction."""
        check_edge(src, etype, dst)
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute(_SQL_NODE, (src,))
            db.execute(_SQL_NODE, (dst,))
            db.execute(_SQL_UPSERT, (src, etype, dst, ts))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._loaded = True

    def one_hop_latest(
        self, node: str, etype: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        """See :meth:`Peer.one_hop_latest`."""
        edge_ends(etype)
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"
            return []
        return self._db.execute(_SQL_ONE_HOP, (node, etype, since, limit)).fetchall()

    def three_hop(
        self,
        start: str,
        etypes: tuple[str, str, str],
        directions: tuple[str, str, str],
        since: int,
        per_node: int,
    ) -> dict[str, int]:
        """See :meth:`Peer.three_hop`; one indexed point query per frontier node."""
        for etype, direction in zip(etypes, directions, strict=True):
            edge_ends(etype)
            _check_direction(direction)
        execute = self._db.execute
        seen = {start}
        depth_of: dict[str, int] = {}
        frontier = [start]
        for depth, (etype, direction) in enumerate(zip(etypes, directions, strict=True), 1):
            if not frontier or per_node <= 0:
                break
            sql = _SQL_NEWEST[direction]
            rows = [
                row for node in frontier for row in execute(sql, (node, etype, since, per_node))
            ]
            nxt = []
            for (node,) in rows:
                if node not in seen:
                    seen.add(node)
                    depth_of[node] = depth
                    nxt.append(node)
            frontier = nxt
        return depth_of

    def journey(
        self,
        account: str,
        member_edges: tuple[str, ...],
        interaction_edges: tuple[str, ...],
        since: int,
        until: int,
        limit: int,
    ) -> list[tuple[int, str, str, str]]:
        """See :meth:`Peer.journey`; a single statement."""
        for etype in (*member_edges, *interaction_edges):
            edge_ends(etype)
        if not interaction_edges or limit <= 0:
            return []
        sql = _sql_journey(len(member_edges), len(interaction_edges))
        params = (account, *member_edges, *interaction_edges, since, until, limit)
        return self._db.execute(sql, params).fetchall()

    def count(self, node: str, etype: str, direction: str, since: int, until: int) -> int:
        """See :meth:`Peer.count`."""
        edge_ends(etype)
        _check_direction(direction)
        row = self._db.execute(_SQL_COUNT[direction], (node, etype, since, until)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite on last close)."""
        self._db.close()


_journey_sql_cache: dict[tuple[int, int], str] = {}


def _sql_journey(n_member: int, n_interaction: int) -> str:
    """Build (and memoise) the journey statement for the given numbers of edge types."""
    key = (n_member, n_interaction)
    sql = _journey_sql_cache.get(key)
    if sql is None:
        # Explicit ?N numbering: ?1 account, then member types, interaction types, window, limit.
        member_marks = ", ".join(f"?{i}" for i in range(2, 2 + n_member))
        first = 2 + n_member
        interaction_marks = ", ".join(f"?{i}" for i in range(first, first + n_interaction))
        nxt = first + n_interaction
        members = "SELECT ?1"
        if n_member:
            members += f" UNION SELECT dst FROM edges WHERE src = ?1 AND etype IN ({member_marks})"
        sql = (
            f"WITH m(id) AS ({members})"
            " SELECT e.ts, e.src, e.etype, e.dst FROM m JOIN edges e ON e.src = m.id"
            f" WHERE e.etype IN ({interaction_marks}) AND e.ts >= ?{nxt} AND e.ts < ?{nxt + 1}"
            f" ORDER BY e.ts DESC, e.src, e.etype, e.dst LIMIT ?{nxt + 2}"
        )
        _journey_sql_cache[key] = sql
    return sql


# --------------------------------------------------------------------------------------------
# Ladybug
# --------------------------------------------------------------------------------------------

LADYBUG_FILE = "peer.lbug"
"""Database file name under the peer's workdir (plus ladybug's ``.wal`` companion)."""

LADYBUG_QUERY_THREADS = 1
"""Threads per query after loading. Every benchmark query is a handful of index lookups, where
ladybug's morsel-parallel setup costs more than it saves: at 200k edges a windowed count took
0.29 ms with all (2) cores and 0.06 ms with one. COPY still runs with all cores."""

LADYBUG_IN_LIST_MIN = 64
"""Frontier size from which three_hop sends one ``a.id IN $ids`` query per hop instead of one
primary-key query per node. At 200k edges a per-node query costs ~0.05 ms flat, while the
IN-list query filters the whole anchor table: 2x slower for 5 ids, even at ~50, ~20% faster
from ~100 ids up. (``UNWIND $ids AS x MATCH (a {id: x})`` was 3-4x slower than both: it is
planned as a hash join over full table scans.)"""


def _q(name: str) -> str:
    """Backtick-quote an identifier: some type names (e.g. ``profile``) are Cypher keywords."""
    return f"`{name}`"


class LadybugPeer:
    """The embedded-graph-database peer: ladybug with a typed schema.

    Schema: a node table per node type (``id STRING`` primary key) and a rel table per edge type
    (``FROM src_type TO dst_type, ts INT64``). Files: ``<workdir>/peer.lbug`` (and ``.wal``);
    existing ones are removed on construction. Ladybug allows one read-write ``Database`` per
    file per process, and calls on one instance must not overlap.

    Query forms were chosen by measurement (see ``bench/peers.py`` constants): point queries by
    primary key without ``ORDER BY``/``LIMIT``, the newest-first cut done in Python, because
    ladybug's TOP_K operator cost 0.2-0.6 ms per query against ~0.06 ms for the lookup itself.
    """

    name = "ladybug"

    def __init__(self, workdir: str) -> None:
        import ladybug  # imported lazily so SqlitePeer works without the package

        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.path = os.path.join(workdir, LADYBUG_FILE)
        for suffix in ("", ".wal", ".shadow", ".tmp"):
            target = self.path + suffix
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
        self._db = ladybug.Database(self.path)
        self._conn = ladybug.Connection(self._db)
        for ntype in NODE_TYPES:
            self._conn.execute(f"CREATE NODE TABLE {_q(ntype)}(id STRING, PRIMARY KEY (id))")
        for etype, (src_type, dst_type) in EDGE_TYPES.items():
            self._conn.execute(
                f"CREATE REL TABLE {_q(etype)}(FROM {_q(src_type)} TO {_q(dst_type)}, ts INT64)"
            )
        self._conn.set_max_threads_for_exec(LADYBUG_QUERY_THREADS)
        self._loaded = False
        self.in_list_min = LADYBUG_IN_LIST_MIN  # the self-test forces each three_hop path
        self._upsert_sql = {etype: _cypher_upsert(etype) for etype in EDGE_TYPES}
        self._adjacent_sql = {
            (etype, d): _cypher_adjacent(etype, d) for etype in EDGE_TYPES for d in DIRECTIONS
        }
        self._adjacent_in_sql = {
            (etype, d): _cypher_adjacent_in(etype, d) for etype in EDGE_TYPES for d in DIRECTIONS
        }
        self._count_sql = {
            (etype, d): _cypher_count(etype, d) for etype in EDGE_TYPES for d in DIRECTIONS
        }

    def _rows(self, query: str, params: dict[str, Any]) -> list[list[Any]]:
        """Run one parameterised statement (prepared once, cached by ladybug); all its rows."""
        result = self._conn.execute(query, params)
        assert not isinstance(result, list)  # one statement -> one result
        return result.get_all()  # type: ignore[return-value]

    def bulk_load(self, nodes: Iterable[str], edges: Iterable[Edge]) -> None:
        """Write one CSV per table to a temp dir under workdir and ``COPY`` each one in.

        Must be the first write, at most once. Duplicate triples keep the newest ts; edge
        endpoints missing from ``nodes`` are created; a node or edge that does not fit the
        schema raises :class:`ValueError` before anything is loaded.
        """
        if self._loaded:
            raise RuntimeError("bulk_load must be called once, on a fresh peer")
        ids: dict[str, set[str]] = {ntype: set() for ntype in NODE_TYPES}
        for node in nodes:
            bucket = ids.get(node_type(node))
            if bucket is None:
                raise ValueError(f"unknown node type in {node!r}")
            bucket.add(node)
        by_etype: dict[str, list[tuple[str, str, int]]] = {etype: [] for etype in EDGE_TYPES}
        for (src, etype, dst), ts in dedupe_edges(edges).items():
            check_edge(src, etype, dst)
            by_etype[etype].append((src, dst, ts))
            src_type, dst_type = EDGE_TYPES[etype]
            ids[src_type].add(src)
            ids[dst_type].add(dst)
        self._loaded = True
        tables: list[tuple[str, Iterable[Sequence[Any]]]] = [
            *((ntype, [(node,) for node in members]) for ntype, members in ids.items()),
            *by_etype.items(),
        ]
        self._conn.set_max_threads_for_exec(0)  # 0 = all cores: COPY parallelises well
        try:
            with tempfile.TemporaryDirectory(prefix="lbug-csv-", dir=self.workdir) as tmp:
                for table, rows in tables:  # node tables first: rel rows reference them
                    path = os.path.join(tmp, f"{table}.csv")
                    with open(path, "w", newline="", encoding="utf-8") as fh:
                        csv.writer(fh).writerows(rows)
                    if os.path.getsize(path):
                        self._conn.execute(f'COPY {_q(table)} FROM "{path}" (HEADER=false)')
        finally:
            self._conn.set_max_threads_for_exec(LADYBUG_QUERY_THREADS)

    def upsert_edge(self, src: str, etype: str, dst: str, ts: int) -> None:
        """One ``MERGE`` statement (auto-committed): nodes and edge created if missing."""
        check_edge(src, etype, dst)
        self._conn.execute(self._upsert_sql[etype], {"src": src, "dst": dst, "ts": ts})
        self._loaded = True

    def _newest(
        self, node: str, etype: str, direction: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        """Newest ``limit`` ``(neighbour, ts)`` of one node (empty on a type mismatch)."""
        src_type, dst_type = edge_ends(etype)
        if limit <= 0 or node_type(node) != (src_type if direction == "out" else dst_type):
            return []
        rows = self._rows(self._adjacent_sql[etype, direction], {"id": node, "since": since})
        return [(nbr, -neg) for neg, nbr in _newest_first(((-ts, nbr) for nbr, ts in rows), limit)]

    def one_hop_latest(
        self, node: str, etype: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        """See :meth:`Peer.one_hop_latest`."""
        return self._newest(node, etype, "out", since, limit)

    def three_hop(
        self,
        start: str,
        etypes: tuple[str, str, str],
        directions: tuple[str, str, str],
        since: int,
        per_node: int,
    ) -> dict[str, int]:
        """See :meth:`Peer.three_hop`; per hop, one query per frontier node or, for a large
        frontier, one ``IN``-list query (see :data:`LADYBUG_IN_LIST_MIN`)."""
        for etype, direction in zip(etypes, directions, strict=True):
            edge_ends(etype)
            _check_direction(direction)
        seen = {start}
        depth_of: dict[str, int] = {}
        frontier = [start]
        for depth, (etype, direction) in enumerate(zip(etypes, directions, strict=True), 1):
            if not frontier or per_node <= 0:
                break
            reached: list[str] = []
            if len(frontier) < self.in_list_min:
                for node in frontier:
                    reached.extend(
                        n for n, _ in self._newest(node, etype, direction, since, per_node)
                    )
            else:
                src_type, dst_type = EDGE_TYPES[etype]
                here = src_type if direction == "out" else dst_type
                ids = [n for n in frontier if node_type(n) == here]
                if ids:
                    query = self._adjacent_in_sql[etype, direction]
                    groups: dict[str, list[tuple[int, str]]] = {}
                    for node, nbr, ts in self._rows(query, {"ids": ids, "since": since}):
                        groups.setdefault(node, []).append((-ts, nbr))
                    for cands in groups.values():
                        reached.extend(nbr for _, nbr in _newest_first(cands, per_node))
            nxt = []
            for node in reached:
                if node not in seen:
                    seen.add(node)
                    depth_of[node] = depth
                    nxt.append(node)
            frontier = nxt
        return depth_of

    def journey(
        self,
        account: str,
        member_edges: tuple[str, ...],
        interaction_edges: tuple[str, ...],
        since: int,
        until: int,
        limit: int,
    ) -> list[tuple[int, str, str, str]]:
        """See :meth:`Peer.journey`; one two-hop query per member node type plus one for the
        account's own interactions, merged and cut in Python."""
        for etype in (*member_edges, *interaction_edges):
            edge_ends(etype)
        if limit <= 0:
            return []
        params = {"id": account, "since": since, "until": until}
        rows: list[tuple[int, str, str, str]] = []
        for query in _cypher_journey(
            node_type(account), tuple(member_edges), tuple(interaction_edges)
        ):
            rows.extend((ts, src, etype, dst) for ts, src, etype, dst in self._rows(query, params))
        if len(rows) > limit:
            return heapq.nsmallest(limit, rows, key=lambda r: (-r[0], r[1], r[2], r[3]))
        rows.sort(key=lambda r: (-r[0], r[1], r[2], r[3]))
        return rows

    def count(self, node: str, etype: str, direction: str, since: int, until: int) -> int:
        """See :meth:`Peer.count`."""
        _check_direction(direction)
        src_type, dst_type = edge_ends(etype)
        if node_type(node) != (src_type if direction == "out" else dst_type):
            return 0
        params = {"id": node, "since": since, "until": until}
        return int(self._rows(self._count_sql[etype, direction], params)[0][0])

    def close(self) -> None:
        """Close the connection, then the database (which checkpoints its WAL)."""
        self._conn.close()
        self._db.close()


def _newest_first(cands: Iterable[tuple[int, str]], limit: int) -> list[tuple[int, str]]:
    """The ``limit`` smallest ``(-ts, neighbour)`` pairs, i.e. newest first, ties by id."""
    return heapq.nsmallest(limit, cands)


def _pattern(etype: str, direction: str, anchor: str) -> str:
    """``(a)-[e]-(b)`` for ``etype`` with ``a`` the node we start from in ``direction``."""
    src_type, dst_type = EDGE_TYPES[etype]
    if direction == "out":
        return f"(a:{_q(src_type)}{anchor})-[e:{_q(etype)}]->(b:{_q(dst_type)})"
    return f"(a:{_q(dst_type)}{anchor})<-[e:{_q(etype)}]-(b:{_q(src_type)})"


def _cypher_upsert(etype: str) -> str:
    src_type, dst_type = EDGE_TYPES[etype]
    return (
        f"MERGE (a:{_q(src_type)} {{id: $src}}) MERGE (b:{_q(dst_type)} {{id: $dst}})"
        f" MERGE (a)-[e:{_q(etype)}]->(b)"
        " ON CREATE SET e.ts = $ts"
        " ON MATCH SET e.ts = CASE WHEN $ts > e.ts THEN $ts ELSE e.ts END"
    )


def _cypher_adjacent(etype: str, direction: str) -> str:
    pattern = _pattern(etype, direction, " {id: $id}")
    return f"MATCH {pattern} WHERE e.ts >= $since RETURN b.id, e.ts"


def _cypher_adjacent_in(etype: str, direction: str) -> str:
    pattern = _pattern(etype, direction, "")
    return f"MATCH {pattern} WHERE a.id IN $ids AND e.ts >= $since RETURN a.id, b.id, e.ts"


def _cypher_count(etype: str, direction: str) -> str:
    pattern = _pattern(etype, direction, " {id: $id}")
    return f"MATCH {pattern} WHERE e.ts >= $since AND e.ts < $until RETURN count(*)"


_journey_cypher_cache: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[str]] = {}


def _cypher_journey(
    root_type: str, member_edges: tuple[str, ...], interaction_edges: tuple[str, ...]
) -> list[str]:
    """Queries whose union is the journey, each returning ``ts, src, etype, dst`` unordered.

    One two-hop query, anchored on the account's primary key, per node type that member edges
    lead to, and one for the account's own interactions. Edge types whose endpoint types cannot
    line up are dropped, so the binder never sees an impossible pattern.
    """
    key = (root_type, member_edges, interaction_edges)
    cached = _journey_cypher_cache.get(key)
    if cached is not None:
        return cached
    where = " WHERE e.ts >= $since AND e.ts < $until"
    queries: list[str] = []
    by_member_type: dict[str, list[str]] = {}
    for etype in sorted(set(member_edges)):
        src_type, dst_type = EDGE_TYPES[etype]
        if src_type == root_type:
            by_member_type.setdefault(dst_type, []).append(etype)
    for member_type, via in by_member_type.items():
        inter = sorted({t for t in interaction_edges if EDGE_TYPES[t][0] == member_type})
        if not inter:
            continue
        # Two member edge types reaching the same node would otherwise repeat its rows.
        distinct = "DISTINCT " if len(via) > 1 else ""
        queries.append(
            f"MATCH (a:{_q(root_type)} {{id: $id}})-[:{'|'.join(map(_q, via))}]->"
            f"(m:{_q(member_type)})-[e:{'|'.join(map(_q, inter))}]->(x){where}"
            f" RETURN {distinct}e.ts, m.id, label(e), x.id"
        )
    own = sorted({t for t in interaction_edges if EDGE_TYPES[t][0] == root_type})
    if own:
        queries.append(
            f"MATCH (m:{_q(root_type)} {{id: $id}})-[e:{'|'.join(map(_q, own))}]->(x){where}"
            " RETURN e.ts, m.id, label(e), x.id"
        )
    _journey_cypher_cache[key] = queries
    return queries


# --------------------------------------------------------------------------------------------
# Self-test: brute-force oracle, small exactness check, rough timings at scale
# --------------------------------------------------------------------------------------------

T0 = 1_700_000_000_000_000
"""Self-test epoch (2023-11-14, in microseconds): realistic magnitudes exercise INT64 paths."""

SPAN = 30 * 86_400 * 1_000_000
"""Self-test timestamps fall in 30 days after T0, the window a "recent activity" query spans."""


def make_graph(seed: int, n_accounts: int) -> tuple[list[str], list[Edge]]:
    """A deterministic streaming-service graph with distinct timestamps.

    About 115 edges per account. Titles are picked with a skew so a few are popular (large
    in-degree). ~5% of triples are repeated later in the list with a different (older or newer)
    ts, and a few isolated nodes are included, as are endpoints that only edges mention.
    """
    rng = random.Random(seed)
    used_ts: set[int] = set()

    def fresh_ts() -> int:
        while True:
            ts = T0 + rng.randrange(SPAN)
            if ts not in used_ts:
                used_ts.add(ts)
                return ts

    n_titles = max(60, 3 * n_accounts)
    titles = [f"title:{i}" for i in range(n_titles)]
    genres = [f"genre:{i}" for i in range(40)]
    games = [f"game:{i}" for i in range(max(10, n_accounts // 2))]
    lives = [f"live_event:{i}" for i in range(max(10, n_accounts // 5))]

    def popular_title() -> str:
        return titles[int(n_titles * rng.random() ** 2)]

    nodes: list[str] = [*titles, *genres, *games, *lives]
    edges: list[Edge] = []
    for t in titles:
        for g in rng.sample(genres, rng.randint(1, 3)):
            edges.append((t, "in_genre", g, fresh_ts()))
    for a in range(n_accounts):
        account = f"account:{a}"
        nodes.append(account)
        devices = [f"device:{a}-{j}" for j in range(rng.randint(1, 3))]
        nodes.extend(devices)
        for device in devices:
            edges.append((account, "logged_in_from", device, fresh_ts()))
        for j in range(rng.randint(1, 4)):
            profile = f"profile:{a}-{j}"
            nodes.append(profile)
            edges.append((account, "has_profile", profile, fresh_ts()))
            pools: tuple[tuple[str, int, int, list[str] | None], ...] = (
                ("started_watching", 3, 30, None),  # None: skewed towards popular titles
                ("browsed", 2, 25, None),
                ("plays", 0, 3, games),
                ("watched_live", 0, 2, lives),
                ("streamed_from", 1, 2, devices),
            )
            for etype, lo, hi, pool in pools:
                for _ in range(rng.randint(lo, hi)):
                    dst = popular_title() if pool is None else rng.choice(pool)
                    edges.append((profile, etype, dst, fresh_ts()))
    # Repeat some triples with another ts; dedupe_edges keeps the newest, whichever comes last.
    for src, etype, dst, _ in rng.sample(edges, len(edges) // 20):
        edges.append((src, etype, dst, fresh_ts()))
    nodes.extend(f"{t}:isolated-{i}" for i, t in enumerate(NODE_TYPES))
    rng.shuffle(nodes)
    del nodes[: len(nodes) // 50]  # endpoints that only edges mention must still become nodes
    return nodes, edges


class Oracle:
    """Brute-force reference implementation of the :class:`Peer` semantics over a dict."""

    name = "oracle"

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str, str], int] = {}

    def bulk_load(self, nodes: Iterable[str], edges: Iterable[Edge]) -> None:
        """Record the edges (nodes play no part in any query)."""
        for src, etype, dst, ts in edges:
            self.upsert_edge(src, etype, dst, ts)

    def upsert_edge(self, src: str, etype: str, dst: str, ts: int) -> None:
        """Keep the larger ts of the triple."""
        key = (src, etype, dst)
        if ts > self.edges.get(key, ts - 1):
            self.edges[key] = ts

    def _adjacent(self, node: str, etype: str, direction: str) -> list[tuple[str, int]]:
        if direction == "out":
            return [(d, ts) for (s, t, d), ts in self.edges.items() if s == node and t == etype]
        return [(s, ts) for (s, t, d), ts in self.edges.items() if d == node and t == etype]

    def _newest(
        self, node: str, etype: str, direction: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        hits = [(n, ts) for n, ts in self._adjacent(node, etype, direction) if ts >= since]
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits[: max(limit, 0)]

    def one_hop_latest(
        self, node: str, etype: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        """Sort everything, slice."""
        return self._newest(node, etype, "out", since, limit)

    def three_hop(
        self,
        start: str,
        etypes: tuple[str, str, str],
        directions: tuple[str, str, str],
        since: int,
        per_node: int,
    ) -> dict[str, int]:
        """Textbook BFS with a per-node cap."""
        depth_of: dict[str, int] = {}
        frontier = [start]
        for depth, (etype, direction) in enumerate(zip(etypes, directions, strict=True), 1):
            nxt = []
            for node in frontier:
                for n, _ in self._newest(node, etype, direction, since, per_node):
                    if n != start and n not in depth_of:
                        depth_of[n] = depth
                        nxt.append(n)
            frontier = nxt
        return depth_of

    def journey(
        self,
        account: str,
        member_edges: tuple[str, ...],
        interaction_edges: tuple[str, ...],
        since: int,
        until: int,
        limit: int,
    ) -> list[tuple[int, str, str, str]]:
        """Filter all edges by membership and window, sort, slice."""
        members = {account}
        for (s, t, d), _ in self.edges.items():
            if s == account and t in member_edges:
                members.add(d)
        hits = [
            (ts, s, t, d)
            for (s, t, d), ts in self.edges.items()
            if s in members and t in interaction_edges and since <= ts < until
        ]
        hits.sort(key=lambda h: (-h[0], h[1], h[2], h[3]))
        return hits[: max(limit, 0)]

    def count(self, node: str, etype: str, direction: str, since: int, until: int) -> int:
        """Count matching adjacent edges."""
        return sum(since <= ts < until for _, ts in self._adjacent(node, etype, direction))

    def close(self) -> None:
        """Nothing to release."""


THREE_HOP_SHAPES: tuple[tuple[tuple[str, str, str], tuple[str, str, str]], ...] = (
    # account -> profiles -> watched titles -> other profiles that watched them
    (("has_profile", "started_watching", "started_watching"), ("out", "out", "in")),
    # account -> profiles -> browsed titles -> genres
    (("has_profile", "browsed", "in_genre"), ("out", "out", "out")),
    # title -> watchers -> their accounts -> those accounts' devices
    (("started_watching", "has_profile", "logged_in_from"), ("in", "in", "out")),
    # genre -> titles -> browsers -> what else they browsed
    (("in_genre", "browsed", "browsed"), ("in", "in", "out")),
)
"""Three-hop shapes the self-test exercises (the start node's type matches the first hop)."""

MEMBER_EDGES = ("has_profile", "logged_in_from")
"""Self-test journey members: an account's profiles and devices."""

INTERACTION_EDGES = ("started_watching", "browsed", "plays", "watched_live", "logged_in_from")
"""Self-test journey interactions; ``logged_in_from`` makes the account's own edges count too."""


def _queries(
    rng: random.Random, edges: Sequence[Edge], n: int
) -> list[tuple[str, tuple[Any, ...]]]:
    """``n`` random calls of each query kind as ``(method, args)``, anchored on real nodes."""
    anchors = [e[0] for e in rng.sample(list(edges), n)] + [
        e[2] for e in rng.sample(list(edges), n)
    ]
    by_type: dict[str, list[str]] = {}
    for node in anchors:
        by_type.setdefault(node_type(node), []).append(node)
    etypes = sorted(EDGE_TYPES)
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def window() -> tuple[int, int]:
        a, b = sorted(T0 + rng.randrange(-SPAN // 10, SPAN + SPAN // 10) for _ in range(2))
        return a, b

    for _ in range(n):
        node = rng.choice(anchors)
        # Mostly the matching edge type, sometimes any (mismatches must yield nothing).
        fitting = [t for t in etypes if EDGE_TYPES[t][0] == node_type(node)] or etypes
        etype = rng.choice(fitting if rng.random() < 0.8 else etypes)
        calls.append(("one_hop_latest", (node, etype, window()[0], rng.choice([1, 3, 10, 50]))))
        shape, dirs = rng.choice(THREE_HOP_SHAPES)
        first_type = EDGE_TYPES[shape[0]][0 if dirs[0] == "out" else 1]
        start = rng.choice(by_type.get(first_type) or anchors)
        calls.append(("three_hop", (start, shape, dirs, window()[0], rng.choice([1, 2, 5, 20]))))
        account = rng.choice(by_type.get("account") or anchors)
        since, until = window()
        calls.append(
            (
                "journey",
                (account, MEMBER_EDGES, INTERACTION_EDGES, since, until, rng.choice([5, 50, 500])),
            )
        )
        direction = rng.choice(DIRECTIONS)
        fitting = [t for t in etypes if node_type(node) in EDGE_TYPES[t]] or etypes
        calls.append(("count", (node, rng.choice(fitting), direction, *window())))
    return calls


def _edge_cases(edges: Sequence[Edge]) -> list[tuple[str, tuple[Any, ...]]]:
    """Calls at the edges of the contract: empty limits, unknown nodes, odd edge-type mixes."""
    src, etype, _, ts = edges[0]
    account = next((e[0] for e in edges if node_type(e[0]) == "account"), "account:0")
    title = next((e[0] for e in edges if node_type(e[0]) == "title"), "title:0")
    shape, dirs = THREE_HOP_SHAPES[0]
    return [
        ("one_hop_latest", (src, etype, 0, 0)),
        ("one_hop_latest", (src, etype, 0, -1)),
        ("one_hop_latest", (src, etype, ts, 1)),  # since is inclusive
        ("one_hop_latest", (src, etype, ts + 1, 100)),
        ("one_hop_latest", ("profile:nope", "browsed", 0, 5)),
        ("count", (src, etype, "out", ts, ts + 1)),  # [since, until) holds exactly ts
        ("count", (src, etype, "out", ts + 1, ts + 1)),
        ("count", ("title:nope", "browsed", "in", 0, 2**62)),
        ("count", (title, "in_genre", "in", 0, 2**62)),  # wrong end for this type
        ("three_hop", (account, shape, dirs, 0, 0)),
        ("three_hop", (account, shape, dirs, 0, -3)),
        ("three_hop", (account, shape, dirs, T0 + 2 * SPAN, 5)),
        ("three_hop", ("account:nope", shape, dirs, 0, 5)),
        ("three_hop", (account, ("has_profile", "has_profile", "has_profile"), dirs, 0, 5)),
        ("journey", (account, MEMBER_EDGES, INTERACTION_EDGES, 0, 2**62, 0)),
        ("journey", (account, MEMBER_EDGES, INTERACTION_EDGES, 0, 2**62, -1)),
        ("journey", (account, (), INTERACTION_EDGES, 0, 2**62, 100)),
        ("journey", (account, MEMBER_EDGES, (), 0, 2**62, 100)),
        ("journey", (account, ("has_profile", "browsed"), ("has_profile", "plays"), 0, 2**62, 9)),
        ("journey", ("account:nope", MEMBER_EDGES, INTERACTION_EDGES, 0, 2**62, 100)),
    ]


def _check_against_oracle(
    peer: Peer, oracle: Oracle, calls: list[tuple[str, tuple[Any, ...]]]
) -> int:
    """Assert ``peer`` answers every call as the oracle does; return how many were non-empty."""
    non_empty = 0
    for method, args in calls:
        want = getattr(oracle, method)(*args)
        got = getattr(peer, method)(*args)
        if isinstance(want, list):
            got = [tuple(row) for row in got]
        assert got == want, f"{peer.name}.{method}{args}:\n got {got!r}\nwant {want!r}"
        non_empty += bool(want)
    return non_empty


def _check_errors(peer: Peer) -> None:
    """Unknown edge types and directions, and edges that break the schema, must raise."""
    shape, _ = THREE_HOP_SHAPES[0]
    bad: list[tuple[str, tuple[Any, ...]]] = [
        ("one_hop_latest", ("profile:1", "nope", 0, 5)),
        ("count", ("profile:1", "browsed", "sideways", 0, 1)),
        ("count", ("profile:1", "nope", "out", 0, 1)),
        ("three_hop", ("account:1", shape, ("out", "out", "up"), 0, 5)),
        ("journey", ("account:1", ("nope",), INTERACTION_EDGES, 0, 1, 5)),
        ("upsert_edge", ("profile:1", "has_profile", "account:1", T0)),
        ("upsert_edge", ("profile:1", "nope", "title:1", T0)),
    ]
    for method, args in bad:
        try:
            getattr(peer, method)(*args)
        except ValueError:
            continue
        raise AssertionError(f"{peer.name}.{method}{args} did not raise ValueError")


def _random_upserts(rng: random.Random, edges: Sequence[Edge], n: int) -> list[Edge]:
    """Upserts mixing brand-new nodes, new edges between known nodes, and newer/older ts."""
    out: list[Edge] = []
    for i in range(n):
        src, etype, dst, ts = rng.choice(edges)
        roll = rng.random()
        if roll < 0.25:  # new edge, maybe new destination node
            dst = f"{EDGE_TYPES[etype][1]}:new-{i}" if rng.random() < 0.5 else dst
            src = f"{EDGE_TYPES[etype][0]}:new-{i}" if rng.random() < 0.2 else src
            ts = T0 + SPAN + i * 7 + 1
        elif roll < 0.6:  # refresh: newer ts wins
            ts = T0 + SPAN + i * 7 + 3
        else:  # stale write: older ts must not win (odd offsets keep ts distinct)
            ts = T0 - i * 7 - 5
        out.append((src, etype, dst, ts))
    return out


def _exactness(workdir: str) -> None:
    """Both peers must reproduce the oracle exactly, before and after single upserts."""
    rng = random.Random(20240611)
    nodes, edges = make_graph(seed=7, n_accounts=30)
    before = Oracle()
    before.bulk_load(nodes, edges)
    after = Oracle()
    after.bulk_load(nodes, edges)
    upserts = _random_upserts(rng, edges, 150)
    for up in upserts:
        after.upsert_edge(*up)
    calls = _queries(rng, edges, 150) + _edge_cases(edges)
    calls_after = calls + _queries(rng, edges + upserts, 150) + _edge_cases(upserts + edges)
    hops = [call for call in calls_after if call[0] == "three_hop"]
    print(f"exactness: {len(edges)} edge tuples, {len(before.edges)} distinct edges")
    for cls in (SqlitePeer, LadybugPeer):
        peer = cls(os.path.join(workdir, f"exact-{cls.name}"))
        try:
            peer.bulk_load(iter(nodes), iter(edges))
            hits = _check_against_oracle(peer, before, calls)
            for up in upserts:
                peer.upsert_edge(*up)
            hits += _check_against_oracle(peer, after, calls_after)
            _check_errors(peer)
            checked = len(calls) + len(calls_after)
            if isinstance(peer, LadybugPeer):  # both three_hop strategies, not just the default
                for in_list_min in (1, 10**9):
                    peer.in_list_min = in_list_min
                    hits += _check_against_oracle(peer, after, hops)
                    checked += len(hops)
        finally:
            peer.close()
        print(f"  {cls.name}: {checked} answers match the oracle ({hits} non-empty)")


def _p50_ms(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> float:
    """Median wall time of ``fn(*args)`` over ``calls``, in milliseconds."""
    times = []
    for args in calls:
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


WEEK = 7 * 86_400 * 1_000_000
"""One week in microseconds: the "recent" window of the timing workload."""


def _timing_calls(rng: random.Random, nodes: Sequence[str], n: int) -> dict[str, list[Any]]:
    """``n`` typical calls per query kind, shaped like the benchmark's workload."""
    pick: dict[str, list[str]] = {}
    for node in nodes:
        pick.setdefault(node_type(node), []).append(node)
    end = T0 + SPAN
    shape, dirs = THREE_HOP_SHAPES[0]
    return {
        "one_hop_latest": [
            (p, "started_watching", end - WEEK, 20) for p in rng.choices(pick["profile"], k=n)
        ],
        "three_hop": [(a, shape, dirs, T0, 10) for a in rng.choices(pick["account"], k=n)],
        "journey": [
            (a, MEMBER_EDGES, INTERACTION_EDGES, end - WEEK, end, 50)
            for a in rng.choices(pick["account"], k=n)
        ],
        "count": [
            (t, "started_watching", "in", end - 2 * WEEK, end)
            for t in rng.choices(pick["title"], k=n)
        ],
    }


def _timings(workdir: str, n_accounts: int) -> None:
    """Print load rate, per-query p50 and single-upsert rate of each peer at scale."""
    rng = random.Random(99)
    nodes, edges = make_graph(seed=11, n_accounts=n_accounts)
    print(f"scale: {len(nodes)} listed nodes, {len(edges)} edge tuples")
    calls = _timing_calls(rng, nodes, 300)
    # Single upserts are slow on ladybug (a commit each); 500 is enough for a stable rate.
    for cls, n_upserts in ((SqlitePeer, 5000), (LadybugPeer, 500)):
        peer = cls(os.path.join(workdir, f"scale-{cls.name}"))
        try:
            t = time.perf_counter()
            peer.bulk_load(nodes, edges)
            load_s = time.perf_counter() - t
            p50s = [f"{m} {_p50_ms(getattr(peer, m), args):.3f}" for m, args in calls.items()]
            ups = _random_upserts(rng, edges, n_upserts)
            t = time.perf_counter()
            for up in ups:
                peer.upsert_edge(*up)
            upsert_rate = n_upserts / (time.perf_counter() - t)
        finally:
            peer.close()
        print(
            f"  {cls.name}: load {len(edges) / load_s:,.0f} edges/s ({load_s:.2f} s);"
            f" p50 ms: {', '.join(p50s)}; {n_upserts} single upserts: {upsert_rate:,.0f}/s"
        )


def _selftest(n_accounts: int) -> None:
    """Check both peers against the oracle on a small graph, then time them at scale."""
    root = "/tmp/peers_scratch" if os.path.isdir("/tmp/peers_scratch") else None
    workdir = tempfile.mkdtemp(prefix="peers-selftest-", dir=root)
    try:
        _exactness(workdir)
        _timings(workdir, n_accounts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("selftest OK")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--selftest", action="store_true", help="run the oracle check and timings")
    parser.add_argument(
        "--accounts", type=int, default=2000, help="timing graph size (~98 edges per account)"
    )
    cli = parser.parse_args()
    if cli.selftest:
        _selftest(cli.accounts)
    else:
        parser.print_help()

"""The peer of ``bench/mixed.py``: the same three routes as FastAPI over sqlite3.

What a competent user would write to serve a member graph from SQLite: FastAPI with plain
``def`` handlers (FastAPI runs them in its threadpool, the documented way to call a blocking
library), one sqlite3 connection per thread, WAL mode, ``synchronous=FULL`` (every commit is
durable before the answer, as hopcast's LMDB store with ``sync``), a 5 s busy timeout so that
concurrent writers queue on SQLite's lock, and covering indexes for the read paths:

* ``GET /v1/nodes/{node_id}/neighbours?edge=&since=&limit=`` -- newest edges of one type;
* ``GET /v1/nodes/{node_id}`` -- one node (404 if absent);
* ``POST /v1/mutations`` -- ``{"mutations": [...]}`` in hopcast's JSON form (``edge_upsert`` and
  ``node_upsert``), last-write-wins on ``ts``, one transaction per request; answers
  ``{"applied": n, "skipped": m}``.

:func:`load` bulk-loads a store (one transaction, indexes built after); running this file
serves one::

    python bench/mixed_peer.py --db peer.sqlite3 --port 8400
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel

#: Page cache per connection (64 MiB): the quick graph fits; at 1M edges the OS page cache
#: holds the rest, as it does for LMDB's memory map.
CACHE_KIB = 65_536
#: How long a writer waits for SQLite's write lock before failing with a 503; long enough that
#: the benchmark's writers queue rather than fail (5 s was not, under 2k writes/s).
BUSY_TIMEOUT_MS = 30_000

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS nodes (id TEXT PRIMARY KEY, ts INTEGER NOT NULL,"
    " props TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS edges (src TEXT NOT NULL, etype TEXT NOT NULL,"
    " dst TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (src, etype, dst)) WITHOUT ROWID",
)
# In a WITHOUT ROWID table an index carries the primary key too, so this one covers the 1-hop
# read (src, etype, newest first) without touching the table.
INDEXES = ("CREATE INDEX IF NOT EXISTS edges_out ON edges (src, etype, ts DESC)",)
UPSERT_EDGE = (
    "INSERT INTO edges (src, etype, dst, ts) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (src, etype, dst) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > edges.ts"
)
UPSERT_NODE = (
    "INSERT INTO nodes (id, ts, props) VALUES (?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET ts = excluded.ts, props = excluded.props"
    " WHERE excluded.ts > nodes.ts"
)
#: An edge's endpoints exist as nodes (as with hopcast's upsert_edge), without overwriting one.
TOUCH_NODE = "INSERT OR IGNORE INTO nodes (id, ts, props) VALUES (?, ?, '{}')"
ONE_HOP = (
    "SELECT dst, ts FROM edges WHERE src = ? AND etype = ? AND ts >= ? ORDER BY ts DESC LIMIT ?"
)
NODE = "SELECT ts, props FROM nodes WHERE id = ?"


class Mutation(BaseModel):
    kind: Literal["edge_upsert", "node_upsert"]
    id: str
    ts: int
    src: str | None = None
    type: str | None = None
    dst: str | None = None
    node: str | None = None
    props: dict[str, Any] = {}


class Mutations(BaseModel):
    mutations: list[Mutation]


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return db


def load(
    path: str,
    nodes: Iterable[tuple[str, int, str]],
    edges: Iterable[tuple[str, str, str, int]],
) -> None:
    """Create the store at ``path`` with ``(id, ts, props JSON)`` nodes and ``(src, type, dst,
    ts)`` edges in one transaction (last write wins), then build the index."""
    db = connect(path)
    try:
        for ddl in SCHEMA:
            db.execute(ddl)
        db.execute("BEGIN")
        db.executemany(UPSERT_NODE, nodes)
        db.executemany(UPSERT_EDGE, edges)
        db.execute("INSERT OR IGNORE INTO nodes (id, ts, props) SELECT src, 0, '{}' FROM edges")
        db.execute("INSERT OR IGNORE INTO nodes (id, ts, props) SELECT dst, 0, '{}' FROM edges")
        for ddl in INDEXES:
            db.execute(ddl)
        db.execute("COMMIT")
        db.execute("ANALYZE")
    finally:
        db.close()


def create_app(path: str) -> Any:
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="sqlite3 peer")
    local = threading.local()

    def db() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "db", None)
        if conn is None:
            conn = local.db = connect(path)
        return conn

    @app.get("/v1/nodes/{node_id}/neighbours")
    def neighbours(node_id: str, edge: str, since: int = 0, limit: int = 20) -> dict[str, Any]:
        rows = db().execute(ONE_HOP, (node_id, edge, since, limit)).fetchall()
        return {
            "edges": [{"src": node_id, "type": edge, "dst": d, "ts": ts} for d, ts in rows],
        }

    @app.get("/v1/nodes/{node_id}")
    def node(node_id: str) -> dict[str, Any]:
        row = db().execute(NODE, (node_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"node {node_id!r} does not exist")
        return {"id": node_id, "ts": row[0], "props": json.loads(row[1])}

    @app.post("/v1/mutations")
    def mutations(body: Mutations) -> dict[str, int]:
        conn = db()
        applied = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # still locked after the busy timeout
            raise HTTPException(503, f"the database is busy: {exc}") from None
        try:
            for m in body.mutations:
                if m.kind == "edge_upsert":
                    if not (m.src and m.type and m.dst):
                        raise HTTPException(422, "edge_upsert needs src, type and dst")
                    conn.execute(TOUCH_NODE, (m.src, m.ts))
                    conn.execute(TOUCH_NODE, (m.dst, m.ts))
                    cur = conn.execute(UPSERT_EDGE, (m.src, m.type, m.dst, m.ts))
                else:
                    if not m.node:
                        raise HTTPException(422, "node_upsert needs node")
                    cur = conn.execute(UPSERT_NODE, (m.node, m.ts, json.dumps(m.props)))
                applied += cur.rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return {"applied": applied, "skipped": len(body.mutations) - applied}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    # The same server stack as hopcast serve: uvloop, httptools, no access log.
    uvicorn.run(
        create_app(args.db),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The demo's playback service on a real PostgreSQL: rows written with SQL, captured by CDC.

``hopcast run --postgres DSN`` sends the playback changes of
:class:`~hopcast.demo.records.CompanyRecords` to the table ``hopcast_demo.playback`` instead
of the ``playback`` log, and the engine reads that table through
:class:`~hopcast.stream.sources.postgres_cdc.PostgresCDCSource` (logical replication, slot and
publication ``hopcast_demo_playback``). The change events the server produces have the shape the
demo writes into the log on the embedded default, so the same mapping (``playback.yaml``) maps
both. The server needs ``wal_level=logical`` (``deploy/postgres.sh`` starts one).

:meth:`PlaybackTable.write` applies a batch of change records in one transaction: ``c`` and
``u`` as an upsert of the row (a redelivered or late change is applied again: one more change
with its own ``updated_at``), ``d`` as a delete. Deliberately bad playback records cannot be
written to a table (the server only makes well-formed change events); they are left out.

A fresh start (``reset``) drops the schema, the slot and the publication of an earlier run, so
the slot does not replay changes a wiped graph never stored.

This module is the demo's PostgreSQL *client* (an application writing its table); it gets
psycopg through the CDC adapter's lazy loader (``postgres_cdc.driver``, the
``hopcast[postgres]`` extra) and turns its errors into :class:`~hopcast.errors.SourceError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

import msgspec

from hopcast.demo.records import DemoRecord
from hopcast.errors import SourceError
from hopcast.stream.sources.postgres_cdc import PostgresCDCSource, driver

SCHEMA = "hopcast_demo"
TABLE = f"{SCHEMA}.playback"
SLOT = "hopcast_demo_playback"
PUBLICATION = "hopcast_demo_playback"
_EPOCH = datetime(1970, 1, 1)
_COLUMNS = ("id", "profile_id", "title_id", "device_id", "position_s", "bitrate_kbps", "updated_at")
_UPSERT = (
    f"INSERT INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
    "ON CONFLICT (id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS[1:])
)
_DELETE = f"DELETE FROM {TABLE} WHERE id = %s"
_decode = msgspec.json.Decoder().decode


class PlaybackTable:
    """The playback table in PostgreSQL (see the module docstring)."""

    def __init__(self, dsn: str, *, reset: bool) -> None:
        self.dsn = dsn
        psycopg = driver()
        self._error: type[Exception] = psycopg.Error
        try:
            self._conn = psycopg.connect(dsn, autocommit=True)
            if reset:
                self._reset()
            self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, profile_id text NOT "
                "NULL, title_id text NOT NULL, device_id text NOT NULL, position_s integer, "
                "bitrate_kbps integer, updated_at timestamp NOT NULL)"
            )
        except self._error as exc:
            raise SourceError(f"PostgreSQL {dsn}: {exc}") from exc
        #: changes written (rows inserted, updated or deleted)
        self.changes = 0
        #: deliberately bad records left out, and deletes of rows that were not there
        self.bad_left_out = 0
        self.no_ops = 0

    def _reset(self) -> None:
        c = self._conn
        slot = c.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        ).fetchone()
        if slot is not None:
            if slot[0] is not None:
                c.execute("SELECT pg_terminate_backend(%s)", (slot[0],))
            c.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        c.execute(f"DROP PUBLICATION IF EXISTS {PUBLICATION}")
        c.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    def source(self, name: str = "playback") -> PostgresCDCSource:
        """The CDC source over the table (creates its publication and slot when missing)."""
        return PostgresCDCSource(name, self.dsn, tables=[TABLE], slot=SLOT, publication=PUBLICATION)

    def write(self, records: Iterable[DemoRecord]) -> int:
        """Apply the playback change records in one transaction; returns the changes made."""
        changes = 0
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                for r in records:
                    if r.bad is not None:
                        self.bad_left_out += 1
                        continue
                    doc = _decode(r.value)
                    if doc["op"] == "d":
                        cur.execute(_DELETE, (doc["before"]["id"],))
                    else:
                        row = doc["after"]
                        values = [row[c] for c in _COLUMNS[:-1]]
                        values.append(_EPOCH + timedelta(microseconds=row["updated_at"]))
                        cur.execute(_UPSERT, values)
                    if cur.rowcount:
                        changes += cur.rowcount
                    else:
                        self.no_ops += 1
        except self._error as exc:
            raise SourceError(f"PostgreSQL {self.dsn}: {exc}") from exc
        self.changes += changes
        return changes

    def close(self) -> None:
        self._conn.close()

"""PostgreSQL change-data capture by logical replication, as Debezium-format change events.

:class:`PostgresCDCSource` reads a replication slot through PostgreSQL's built-in ``pgoutput``
plugin (no server extension needed) for the tables of a publication, and turns every insert,
update and delete into the JSON change event Debezium's PostgreSQL connector writes::

    {"before": {...} | null, "after": {...} | null, "op": "c" | "u" | "d",
     "source": {"connector": "postgresql", "name": <source>, "db": ..., "schema": ...,
                "table": ..., "lsn": <the change's LSN>, "txId": ..., "ts_ms": ..., "ts_us": ...,
                "snapshot": "false"},
     "ts_ms": ..., "ts_us": ...}

so one mapping file (``format: debezium``) serves PostgreSQL CDC, Debezium topics on Kafka and
Debezium JSON lines alike. ``source.ts_us`` is the commit time and becomes the event time; the
envelope's ``ts_ms``/``ts_us`` are the commit time too (Debezium puts its processing time there),
so a replayed change is the same bytes as the first delivery.
The record key is the JSON of the row's replica-identity (primary key) columns.

Set-up (``create=True``, the default): the publication (``FOR TABLE`` the given tables, publishing
insert, update, delete) and the slot are created when missing, and given tables an existing
publication lacks are added to it (never removed; with ``create=False`` that is an error).
``wal_level`` must be ``logical``: :meth:`PostgresCDCSource.open` says so if not.

Initial snapshot (``snapshot=True``; off by default, when capture starts at the slot's creation
and rows that existed before are not emitted): before streaming, every table of the publication
is read in one REPEATABLE READ transaction and each row becomes an ``op: r`` event (``before``
null, ``source.snapshot`` ``"true"``, ``"last"`` on the final one, ``source.ts_us`` the time of
the snapshot), in partition ``<slot>/snapshot`` with offsets 0, 1, …; the last record's offset
also has bit 62 set, which marks the snapshot complete. When the source creates the slot it
reads the snapshot the slot exported, so the stream continues exactly where the rows leave
off. Later, a snapshot is taken only when no position is stored for the slot's partition and
no complete snapshot is: an interrupted snapshot (or one of an existing slot) is taken again,
of the tables as they are then, with offsets after the stored one. The stream then replays
from the slot's confirmed LSN changes that the rows may already show: the same facts once more,
which last-write-wins writes absorb, since a snapshot row's time is the snapshot's.

``before``: with ``REPLICA IDENTITY FULL`` (``replica_identity_full=True`` sets it on the tables)
updates and deletes carry the whole old row. With the ``DEFAULT`` identity, an update's
``before`` is null unless the primary key changed (then only the key columns are set), and a
delete's ``before`` holds the key columns with every other column null. An unchanged TOASTed
value (a large column an update did not touch) is left out of ``after`` unless ``before`` has it.

Values follow Debezium's defaults: integers, floats and booleans as JSON numbers and booleans;
``timestamp`` as µs since the epoch (MicroTimestamp); ``timestamptz`` as ISO-8601 text in UTC
(ZonedTimestamp); ``date`` as days since the epoch; ``time`` as µs since midnight; ``bytea`` as
base64; ``numeric``, ``json``/``jsonb``, ``uuid`` and everything else as text.

Positions: the partition is the slot name. Transactions arrive in commit order; the offset of
the ``i``-th change of a transaction is ``(commit LSN << 64) | i``, so offsets grow strictly,
every change of a transaction of any size has its own, and a resume inside a transaction is
exact. (Positions stored by earlier versions, ``(commit LSN << 16) | i``, are always below
2**64 and still read as such.) Ties in generation time — every change of a transaction shares
its commit time — are broken by the change's own LSN (``source.lsn``, see
:func:`~hopcast.stream.operators.decode_debezium`), so they resolve in the order the database
made them.

Key changes and truncation, as Debezium's connector does them: an update that changes the
primary key (replica identity) is emitted as a delete of the old key (``op: d``, ``before`` the
old key or row) followed by a create of the new row (``op: c``). A ``TRUNCATE`` (published: the
source creates publications with ``publish = 'insert, update, delete, truncate'`` and adds
``truncate`` to one it created before) is, per ``truncate``: ``emit`` (the default) one
``op: t`` event per table (no row; the mapping's ``truncate`` policy decides what it does),
``skip`` (a warning in the log and :attr:`PostgresCDCSource.truncates_skipped`), or ``fail``
(a :class:`~hopcast.errors.SourceError`: ingestion stops before the TRUNCATE, until someone
decides).
:meth:`~PostgresCDCSource.commit` confirms to the server (a standby status update: the slot's
``confirmed_flush_lsn``) the end of the last transaction that is wholly committed by hopcast, so
the server may recycle WAL only after hopcast has durably written what it produced. After one
``commit``, while everything delivered is committed, the server's keep-alive positions are
confirmed too, so unrelated write traffic does not pin WAL. Resuming needs nothing but the stored
position: the server resends from the slot's confirmed LSN and the source skips what is at or
before the resume position.
"""

from __future__ import annotations

import base64
import logging
import select
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec

from hopcast.errors import ConfigError, SourceError
from hopcast.stream.record import Position, Record

if TYPE_CHECKING:
    from psycopg.pq.abc import PGconn

log = logging.getLogger(__name__)

#: Bits of an offset below the commit LSN: the change's index in its transaction.
_INDEX_BITS = 64
_INDEX_MAX = (1 << _INDEX_BITS) - 1
#: Offsets stored before the index had 64 bits: ``(commit LSN << 16) | i``, always < 2**64
#: (a commit LSN is never 0), with index 65,535 shared by the tail of a bigger transaction.
_OLD_INDEX_BITS = 16
_OLD_INDEX_MAX = (1 << _OLD_INDEX_BITS) - 1
_TRUNCATE = ("emit", "skip", "fail")
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch
_UNIX_EPOCH_DATE = date(1970, 1, 1)
_OBJECT_IN_USE = "55006"  # SQLSTATE: the slot is active for another process
_INT16 = struct.Struct("!h").unpack_from
_INT32 = struct.Struct("!i").unpack_from
_json = msgspec.json.Encoder().encode
_SESSION_OPTIONS = "-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3"
#: Set in the offset of the initial snapshot's last record: the snapshot is complete.
_SNAPSHOT_DONE = 1 << 62


def lsn_to_str(lsn: int) -> str:
    """``0x16B3748`` → ``'0/16B3748'`` (PostgreSQL's text form of an LSN)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_from_str(text: str) -> int:
    """``'0/16B3748'`` → ``0x16B3748``."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def position_offset(commit_lsn: int, index: int) -> int:
    """The offset of the ``index``-th change of the transaction that commits at ``commit_lsn``."""
    return (commit_lsn << _INDEX_BITS) | index


def split_offset(offset: int) -> tuple[int, int]:
    """Inverse of :func:`position_offset`: ``(commit LSN, index)``; reads the offsets of
    earlier versions too (below 2**64, a 16-bit index)."""
    if offset < 1 << 64:
        return offset >> _OLD_INDEX_BITS, offset & _OLD_INDEX_MAX
    return offset >> _INDEX_BITS, offset & _INDEX_MAX


def driver() -> Any:
    """The ``psycopg`` module (imported on first use: the ``postgres`` extra).

    Raises:
        ConfigError: psycopg 3 is not installed.
    """
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "PostgreSQL CDC needs psycopg 3: pip install 'hopcast[postgres]'"
        ) from exc
    return psycopg


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    type_oid: int
    is_key: bool
    convert: Callable[[bytes], Any]


@dataclass(frozen=True, slots=True)
class _Relation:
    schema: str
    table: str
    columns: tuple[_Column, ...]


@dataclass(slots=True)
class _Txn:
    commit_lsn: int
    commit_us: int
    xid: int
    index: int = 0  # changes seen so far
    skip_upto: int = -1  # indexes <= this were delivered before the resume point


class _Reader:
    """Cursor over one pgoutput message."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def byte(self) -> int:
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def int16(self) -> int:
        (value,) = struct.unpack_from("!h", self.buf, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from("!i", self.buf, self.pos)
        self.pos += 4
        return int(value)

    def uint32(self) -> int:
        (value,) = struct.unpack_from("!I", self.buf, self.pos)
        self.pos += 4
        return int(value)

    def int64(self) -> int:
        (value,) = struct.unpack_from("!q", self.buf, self.pos)
        self.pos += 8
        return int(value)

    def uint64(self) -> int:
        (value,) = struct.unpack_from("!Q", self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        end = self.buf.index(0, self.pos)
        value = self.buf[self.pos : end].decode()
        self.pos = end + 1
        return value

    def tuple_data(self) -> list[tuple[int, bytes | None]]:
        """``[(kind, text)]`` per column; kind ``n`` null or ``u`` unchanged TOAST come with
        None, ``t`` with the value's text."""
        buf, pos = self.buf, self.pos
        (count,) = _INT16(buf, pos)
        pos += 2
        out: list[tuple[int, bytes | None]] = []
        append = out.append
        for _ in range(count):
            kind = buf[pos]
            pos += 1
            if kind in (_NULL, _UNCHANGED):
                append((kind, None))
            else:
                (length,) = _INT32(buf, pos)
                pos += 4
                append((kind, buf[pos : pos + length]))
                pos += length
        self.pos = pos
        return out


# -- values ---------------------------------------------------------------------------------

_BOOL, _BYTEA, _INT8, _INT2, _INT4, _OID = 16, 17, 20, 21, 23, 26
_FLOAT4, _FLOAT8 = 700, 701
_DATE, _TIME, _TIMESTAMP, _TIMESTAMPTZ = 1082, 1083, 1114, 1184
_NULL, _UNCHANGED = ord("n"), ord("u")


def _text(raw: bytes) -> Any:
    return raw.decode()


def _bool(raw: bytes) -> Any:
    return raw == b"t"


def _float(raw: bytes) -> Any:
    number = float(raw)
    return number if number == number and abs(number) != float("inf") else raw.decode()


def _timestamp(raw: bytes) -> Any:
    return _micros(datetime.fromisoformat(raw.decode()).replace(tzinfo=UTC))


def _timestamptz(raw: bytes) -> Any:
    moment = datetime.fromisoformat(raw.decode()).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _date(raw: bytes) -> Any:
    return (date.fromisoformat(raw.decode()) - _UNIX_EPOCH_DATE).days


def _time(raw: bytes) -> Any:
    hours, minutes, seconds = raw.decode().split(":")
    whole, _, fraction = seconds.partition(".")
    micros = int((fraction + "000000")[:6])
    return (int(hours) * 3600 + int(minutes) * 60 + int(whole)) * 1_000_000 + micros


def _bytea(raw: bytes) -> Any:
    if raw.startswith(b"\\x"):
        return base64.b64encode(bytes.fromhex(raw[2:].decode())).decode()
    return raw.decode()


#: pgoutput's text form → the JSON value Debezium's defaults give (see the module docstring).
_CONVERTERS: dict[int, Callable[[bytes], Any]] = {
    _INT2: int,
    _INT4: int,
    _INT8: int,
    _OID: int,
    _BOOL: _bool,
    _FLOAT4: _float,
    _FLOAT8: _float,
    _TIMESTAMP: _timestamp,
    _TIMESTAMPTZ: _timestamptz,
    _DATE: _date,
    _TIME: _time,
    _BYTEA: _bytea,
}


def _micros(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _row(
    relation: _Relation, data: list[tuple[int, bytes | None]], base: dict[str, Any] | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column, (kind, raw) in zip(relation.columns, data, strict=False):
        if raw is not None:
            try:
                row[column.name] = column.convert(raw)
            except ValueError:  # infinity, BC dates, …: the text form
                row[column.name] = raw.decode()
        elif kind == _NULL:
            row[column.name] = None
        elif kind == _UNCHANGED and base is not None and base.get(column.name) is not None:
            row[column.name] = base[column.name]  # unchanged TOAST: only the old image knows it
    return row


# -- the source ------------------------------------------------------------------------------


class PostgresCDCSource:
    """Change events of ``tables`` from the PostgreSQL at ``dsn``. See the module docstring.

    Args:
        name: the source name (records' ``source``).
        dsn: a libpq connection string or URL; the user needs the REPLICATION attribute (or
            superuser) and, to create them, the rights to create the publication and slot.
        tables: tables to capture (``schema.table`` or ``table`` for ``public``); used to
            create the publication. ``None`` with ``create`` makes it ``FOR ALL TABLES``.
        slot: replication slot name (default ``hopcast_<name>``); the records' partition.
        publication: publication name (default: the slot name).
        create: create the publication and slot when missing (else a missing one is an error).
        replica_identity_full: ``ALTER TABLE … REPLICA IDENTITY FULL`` on ``tables`` at open,
            so ``before`` holds whole old rows.
        snapshot: read the publication's tables first (``op: r``) when no position is stored
            (see the module docstring).
        status_interval_s: how often a standby status update is sent while polling.
        truncate: what a ``TRUNCATE`` becomes: ``emit`` (an ``op: t`` event per table),
            ``skip`` (logged and counted) or ``fail`` (a SourceError).
    """

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        tables: Sequence[str] | None = None,
        slot: str | None = None,
        publication: str | None = None,
        create: bool = True,
        replica_identity_full: bool = False,
        snapshot: bool = False,
        status_interval_s: float = 10.0,
        truncate: str = "emit",
    ) -> None:
        if truncate not in _TRUNCATE:
            raise ConfigError(
                f"source {name!r}: truncate={truncate!r} (use one of {', '.join(_TRUNCATE)})"
            )
        self.truncate = truncate
        #: TRUNCATEs of published tables left out (``truncate="skip"``), since the start.
        self.truncates_skipped = 0
        self.name = name
        self.dsn = dsn
        self.tables = list(tables) if tables is not None else None
        self.slot = slot or _identifier(f"hopcast_{name}")
        self.publication = publication or self.slot
        self.create = create
        self.replica_identity_full = replica_identity_full
        self.snapshot = snapshot
        #: The partition of the initial snapshot's records (``op: r``).
        self.snapshot_partition = f"{self.slot}/snapshot"
        self.status_interval_s = status_interval_s
        self._conn: PGconn | None = None
        self._snap: _SnapshotReader | None = None
        self._exporter: PGconn | None = None  # idle until the snapshot it exported is read
        self._database = ""
        self._relations: dict[int, _Relation] = {}
        self._primary_keys: dict[int, frozenset[str]] = {}  # by relation id (FULL identity)
        self._ready: deque[Record] = deque()
        self._txn: _Txn | None = None
        self._resume: tuple[int, int] | None = None
        self._resume_old = False
        # Transactions delivered but not yet confirmed: (commit LSN, last index, end LSN).
        self._open_txns: deque[tuple[int, int, int]] = deque()
        self._delivered = -1  # offset of the last record handed out by poll
        self._committed = -1  # the highest offset commit() was given
        self._flushed = 0  # the LSN last confirmed to the server
        self._last_status = 0.0

    # -- Source ---------------------------------------------------------------------------

    def open(self, resume: Mapping[str, Position]) -> None:
        """Ensure publication and slot, then stream from the slot, after ``resume[slot]``."""
        self.close()
        position = resume.get(self.slot)
        self._resume = split_offset(position.offset) if position is not None else None
        self._resume_old = position is not None and position.offset < 1 << 64
        missing, confirmed = self._prepare()
        if self.snapshot and missing:  # a new slot, and the snapshot of exactly its start
            exporter = self._connect_replication()
            try:
                lsn, exported = self._create_slot_exporting(exporter)
                self._snap = _SnapshotReader(self, exported, lsn, 0)
            except BaseException:
                exporter.finish()
                raise
            self._exporter = exporter
            return
        taken = resume.get(self.snapshot_partition)
        if self.snapshot and position is None and not (taken and taken.offset & _SNAPSHOT_DONE):
            # No change stored yet and no complete snapshot: read the tables as they are now.
            first = taken.offset + 1 if taken is not None else 0
            self._snap = _SnapshotReader(self, None, confirmed, first)
            return
        self._conn = self._start_replication()

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` change events; waits at most ``timeout_s`` for the first."""
        deadline = time.monotonic() + timeout_s
        if self._snap is not None:
            rows = self._snap.read(max_records)
            if rows:
                return rows
            self._snap.close()  # read to its end: stream from the slot now
            self._snap = None
            exporter, self._exporter = self._exporter, None
            self._conn = self._start_replication(exporter)
        conn = self._require_open()
        while len(self._ready) < max_records:
            if self._read_one(conn):
                continue
            self._consume(conn)  # what the socket holds, without blocking
            if self._read_one(conn):
                continue
            if self._ready:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._maybe_send_status(conn)
            select.select([conn.socket], [], [], min(remaining, self.status_interval_s))
            self._consume(conn)
        self._maybe_send_status(conn)
        out = [self._ready.popleft() for _ in range(min(max_records, len(self._ready)))]
        if out:
            self._delivered = out[-1].position.offset
        return out

    def commit(self, positions: Mapping[str, Position]) -> None:
        """Confirm to the server every transaction wholly at or before ``positions[slot]``."""
        position = positions.get(self.slot)
        if position is None:
            return
        self._committed = max(self._committed, position.offset)
        commit_lsn, index = split_offset(position.offset)
        flush = self._flushed
        while self._open_txns:
            txn_lsn, last_index, end_lsn = self._open_txns[0]
            if txn_lsn < commit_lsn or (txn_lsn == commit_lsn and last_index <= index):
                flush = max(flush, end_lsn)
                self._open_txns.popleft()
            else:
                break
        if flush > self._flushed and self._conn is not None:
            self._flushed = flush
            self._send_status(self._conn)

    def close(self) -> None:
        """End the replication stream (the slot stays, with what was confirmed)."""
        snap, self._snap = self._snap, None
        if snap is not None:
            snap.close()
        exporter, self._exporter = self._exporter, None
        if exporter is not None:
            exporter.finish()
        conn, self._conn = self._conn, None
        self._ready.clear()
        self._txn = None
        self._relations.clear()
        self._open_txns.clear()
        self._delivered = self._committed = -1
        if conn is None:
            return
        try:
            if self._flushed:
                self._send_status(conn)
            conn.put_copy_end()
            conn.flush()
        except Exception as exc:  # the connection may already be gone
            log.debug("closing the replication stream of %s: %s", self.name, exc)
        finally:
            conn.finish()

    # -- lag and inspection ---------------------------------------------------------------

    def slot_state(self) -> dict[str, Any]:
        """The slot's row in ``pg_replication_slots`` (LSNs as ints), or {} if it is missing."""
        psycopg = driver()
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT plugin, active, restart_lsn::text, confirmed_flush_lsn::text"
                    " FROM pg_replication_slots WHERE slot_name = %s",
                    (self.slot,),
                ).fetchone()
        except psycopg.Error as exc:
            raise self._error("reading the slot's state", exc) from exc
        if row is None:
            return {}
        plugin, active, restart, confirmed = row
        return {
            "plugin": plugin,
            "active": active,
            "restart_lsn": lsn_from_str(restart) if restart else None,
            "confirmed_flush_lsn": lsn_from_str(confirmed) if confirmed else None,
        }

    # -- set-up -----------------------------------------------------------------------------

    def _prepare(self) -> tuple[bool, int]:
        """Check the server, ensure the publication and (unless a snapshot is to be exported
        with it) the slot. Returns whether the slot was missing, and its confirmed LSN."""
        psycopg = driver()
        sql = psycopg.sql
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                (wal_level,) = conn.execute("SHOW wal_level").fetchone()
                if wal_level != "logical":
                    raise ConfigError(
                        f"source {self.name!r}: PostgreSQL has wal_level={wal_level}; change "
                        "data capture needs wal_level=logical (set it in postgresql.conf and "
                        "restart the server; deploy/postgres.sh does)"
                    )
                (self._database,) = conn.execute("SELECT current_database()").fetchone()
                tables = [_qualified(t) for t in self.tables or []]
                if self.replica_identity_full:
                    for schema, table in tables:
                        conn.execute(
                            sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                                sql.Identifier(schema, table)
                            )
                        )
                exists = conn.execute(
                    "SELECT puballtables, pubtruncate FROM pg_publication WHERE pubname = %s",
                    (self.publication,),
                ).fetchone()
                if exists is not None and not exists[1]:
                    if self.create:
                        conn.execute(
                            sql.SQL(
                                "ALTER PUBLICATION {} SET"
                                " (publish = 'insert, update, delete, truncate')"
                            ).format(sql.Identifier(self.publication))
                        )
                    else:
                        log.warning(
                            "source %s: publication %s does not publish TRUNCATE: a truncated "
                            "table's rows stay in the graph without a trace (ALTER PUBLICATION "
                            "… SET (publish = 'insert, update, delete, truncate'))",
                            self.name,
                            self.publication,
                        )
                if exists is not None and not exists[0] and tables:
                    published = set(
                        conn.execute(
                            "SELECT schemaname, tablename FROM pg_publication_tables"
                            " WHERE pubname = %s",
                            (self.publication,),
                        ).fetchall()
                    )
                    missing = [t for t in tables if t not in published]
                    if missing and not self.create:
                        names = ", ".join(f"{s}.{t}" for s, t in missing)
                        raise ConfigError(
                            f"source {self.name!r}: publication {self.publication!r} does not "
                            f"include {names} (ALTER PUBLICATION … ADD TABLE, or create=true)"
                        )
                    if missing:
                        conn.execute(
                            sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                                sql.Identifier(self.publication),
                                sql.SQL(", ").join(sql.Identifier(s, t) for s, t in missing),
                            )
                        )
                if exists is None:
                    if not self.create:
                        raise ConfigError(
                            f"source {self.name!r}: publication {self.publication!r} does not "
                            "exist (create it, or let the source: create=true)"
                        )
                    if tables:
                        target = sql.SQL("FOR TABLE {}").format(
                            sql.SQL(", ").join(sql.Identifier(s, t) for s, t in tables)
                        )
                    else:
                        target = sql.SQL("FOR ALL TABLES")
                    conn.execute(
                        sql.SQL(
                            "CREATE PUBLICATION {} {}"
                            " WITH (publish = 'insert, update, delete, truncate')"
                        ).format(sql.Identifier(self.publication), target)
                    )
                slot = conn.execute(
                    "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots"
                    " WHERE slot_name = %s",
                    (self.slot,),
                ).fetchone()
                if slot is None:
                    if not self.create:
                        raise ConfigError(
                            f"source {self.name!r}: replication slot {self.slot!r} does not "
                            "exist (create it, or let the source: create=true)"
                        )
                    if self.snapshot:
                        return True, 0  # created with the snapshot it exports
                    (created,) = conn.execute(
                        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                        (self.slot,),
                    ).fetchone()
                    return True, lsn_from_str(created)
                if slot[0] != "pgoutput" or slot[1] != self._database:
                    raise ConfigError(
                        f"source {self.name!r}: slot {self.slot!r} belongs to plugin {slot[0]!r}"
                        f" on database {slot[1]!r}; this source needs a pgoutput slot on "
                        f"{self._database!r}"
                    )
                return False, lsn_from_str(slot[2]) if slot[2] else 0
        except psycopg.Error as exc:
            raise self._error("setting up publication and slot", exc) from exc

    def _connect_replication(self) -> PGconn:
        psycopg = driver()
        pq = psycopg.pq
        conninfo = psycopg.conninfo.make_conninfo(
            self.dsn, replication="database", options=_SESSION_OPTIONS
        )
        conn: PGconn = pq.PGconn.connect(conninfo.encode())
        if conn.status != pq.ConnStatus.OK:
            message = conn.get_error_message()
            conn.finish()
            raise SourceError(
                f"source {self.name!r}: cannot open a replication connection: {message}"
            )
        return conn

    def _create_slot_exporting(self, conn: PGconn) -> tuple[int, str]:
        """Create the slot over ``conn``; its consistent LSN and the exported snapshot's name
        (valid while ``conn`` stays open and idle)."""
        pq = driver().pq
        command = f"CREATE_REPLICATION_SLOT {_quote_ident(self.slot)} LOGICAL pgoutput"
        result = conn.exec_((command + " EXPORT_SNAPSHOT").encode())
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise SourceError(
                f"source {self.name!r}: creating slot {self.slot!r} failed: "
                f"{conn.get_error_message()}"
            )
        lsn, exported = result.get_value(0, 1), result.get_value(0, 2)
        assert lsn is not None and exported is not None
        return lsn_from_str(lsn.decode()), exported.decode()

    def _start_replication(self, conn: PGconn | None = None) -> PGconn:
        """START_REPLICATION on ``conn`` (or a new replication connection)."""
        pq = driver().pq
        command = (
            f"START_REPLICATION SLOT {_quote_ident(self.slot)} LOGICAL 0/0 "
            f"(proto_version '1', publication_names {_quote_literal(self.publication)})"
        ).encode()
        deadline = time.monotonic() + 10.0
        while True:
            if conn is None:
                conn = self._connect_replication()
            conn.send_query(command)
            result = conn.get_result()
            if result is not None and result.status == pq.ExecStatus.COPY_BOTH:
                conn.nonblocking = 1
                self._last_status = time.monotonic()
                return conn
            state = result.error_field(pq.DiagnosticField.SQLSTATE) if result else None
            message = conn.get_error_message()
            conn.finish()
            conn = None
            # A slot stays active for a moment after the previous stream of it closed.
            if state == _OBJECT_IN_USE.encode() and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise SourceError(
                f"source {self.name!r}: START_REPLICATION on slot {self.slot!r} failed: {message}"
            )

    # -- the stream -------------------------------------------------------------------------

    def _require_open(self) -> PGconn:
        if self._conn is None:
            raise SourceError(f"source {self.name!r} is not open")
        return self._conn

    def _consume(self, conn: PGconn) -> None:
        try:
            conn.consume_input()
        except Exception as exc:
            raise SourceError(
                f"source {self.name!r}: replication connection failed: {exc}"
            ) from exc

    def _read_one(self, conn: PGconn) -> bool:
        """Handle one message if one is buffered; False when none is."""
        try:
            size, data = conn.get_copy_data(1)
        except Exception as exc:
            raise SourceError(f"source {self.name!r}: replication stream failed: {exc}") from exc
        if size == 0:
            return False
        if size < 0:
            raise SourceError(
                f"source {self.name!r}: the server ended the replication stream: "
                f"{conn.get_error_message()}"
            )
        message = bytes(data)
        kind = message[:1]
        if kind == b"w":
            start_lsn, _wal_end, _sent = struct.unpack_from("!QQq", message, 1)
            self._on_xlogdata(start_lsn, message[25:])
        elif kind == b"k":
            wal_end, _sent, reply = struct.unpack_from("!Qq?", message, 1)
            self._on_keepalive(conn, wal_end, reply)
        return True

    def _on_keepalive(self, conn: PGconn, wal_end: int, reply: bool) -> None:
        idle = (
            self._txn is None
            and not self._ready
            and self._committed >= 0
            and self._committed >= self._delivered
            and not self._open_txns
        )
        if idle and wal_end > self._flushed:
            self._flushed = wal_end
            reply = True
        if reply:
            self._send_status(conn)

    def _on_xlogdata(self, lsn: int, body: bytes) -> None:
        reader = _Reader(body)
        kind = chr(reader.byte())
        if kind == "B":
            final_lsn = reader.uint64()
            commit_time = reader.int64()
            xid = reader.uint32()
            txn = _Txn(final_lsn, commit_time + _PG_EPOCH_US, xid)
            if self._resume is not None:
                resume_lsn, resume_index = self._resume
                if final_lsn < resume_lsn:
                    txn.skip_upto = _INDEX_MAX
                elif final_lsn == resume_lsn:
                    # An old offset at its index ceiling was shared by the transaction's tail:
                    # replay that tail (idempotent writes absorb it).
                    old_ceiling = self._resume_old and resume_index == _OLD_INDEX_MAX
                    txn.skip_upto = resume_index - 1 if old_ceiling else resume_index
            self._txn = txn
        elif kind == "C":
            reader.byte()
            commit_lsn = reader.uint64()
            end_lsn = reader.uint64()
            done, self._txn = self._txn, None
            if done is None or done.commit_lsn != commit_lsn:
                raise SourceError(f"source {self.name!r}: a commit without its begin")
            if done.index == 0 or done.index - 1 <= done.skip_upto:
                # Nothing of it is handed out: confirm it with the next delivered transaction.
                self._open_txns.append((commit_lsn, -1, end_lsn))
            else:
                self._open_txns.append((commit_lsn, done.index - 1, end_lsn))
        elif kind == "R":
            rel_id = reader.uint32()
            schema = reader.string()
            table = reader.string()
            identity = chr(reader.byte())  # replica identity: d(efault), n, f(ull), i(ndex)
            columns = []
            for _ in range(reader.int16()):
                flags = reader.byte()
                column = reader.string()
                type_oid = reader.uint32()
                reader.int32()  # typmod
                convert = _CONVERTERS.get(type_oid, _text)
                columns.append(_Column(column, type_oid, bool(flags & 1), convert))
            if identity == "f":
                # FULL marks every column as identity: the key is the primary key (if any).
                primary = self._primary_key(rel_id)
                if primary:
                    columns = [
                        _Column(c.name, c.type_oid, c.name in primary, c.convert) for c in columns
                    ]
            self._relations[rel_id] = _Relation(schema or "public", table, tuple(columns))
        elif kind in ("I", "U", "D"):
            self._on_change(kind, lsn, reader)
        elif kind == "T":
            self._on_truncate(lsn, reader)
        # 'O' origin, 'Y' type, 'M' message: nothing to emit.

    def _on_change(self, kind: str, lsn: int, reader: _Reader) -> None:
        txn = self._txn
        if txn is None:
            raise SourceError(f"source {self.name!r}: a change outside a transaction")
        index = txn.index
        txn.index += 1
        if index <= txn.skip_upto:
            return
        relation = self._relations.get(reader.uint32())
        if relation is None:
            raise SourceError(f"source {self.name!r}: a change to an unannounced relation")
        before: dict[str, Any] | None = None
        after: dict[str, Any] | None = None
        if kind == "I":
            reader.byte()  # 'N'
            after = _row(relation, reader.tuple_data())
            op = "c"
        elif kind == "U":
            tag = chr(reader.byte())
            if tag in ("K", "O"):
                before = _row(relation, reader.tuple_data())
                reader.byte()  # 'N'
            after = _row(relation, reader.tuple_data(), before)
            op = "u"
            keys = [c.name for c in relation.columns if c.is_key]
            if before is not None and keys and any(before.get(k) != after.get(k) for k in keys):
                # The key changed: the old row is gone and a new one exists (as Debezium says
                # it: a delete of the old key, then a create). The delete takes this change's
                # index, the create the next one.
                self._emit(txn, index, relation, "d", before, None, lsn)
                index = txn.index
                txn.index += 1
                before, op = None, "c"
                if index <= txn.skip_upto:
                    return
        else:
            reader.byte()  # 'K' or 'O'
            before = _row(relation, reader.tuple_data())
            op = "d"
        self._emit(txn, index, relation, op, before, after, lsn)

    def _primary_key(self, rel_id: int) -> frozenset[str]:
        """The primary-key columns of relation ``rel_id`` (empty if it has none)."""
        cached = self._primary_keys.get(rel_id)
        if cached is not None:
            return cached
        psycopg = driver()
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                    " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                    " WHERE i.indrelid = %s AND i.indisprimary",
                    (rel_id,),
                ).fetchall()
        except psycopg.Error as exc:
            raise self._error("reading a table's primary key", exc) from exc
        key = frozenset(name for (name,) in rows)
        self._primary_keys[rel_id] = key
        return key

    def _on_truncate(self, lsn: int, reader: _Reader) -> None:
        txn = self._txn
        if txn is None:
            raise SourceError(f"source {self.name!r}: a TRUNCATE outside a transaction")
        count = reader.uint32()
        reader.byte()  # options: CASCADE, RESTART IDENTITY
        relations = [self._relations.get(reader.uint32()) for _ in range(count)]
        names = ", ".join(f"{r.schema}.{r.table}" for r in relations if r is not None)
        if self.truncate == "fail":
            raise SourceError(
                f"source {self.name!r}: TRUNCATE of {names} at {lsn_to_str(lsn)}; this source "
                "stops there (truncate=fail): decide what the graph should do, then restart "
                "with truncate=emit or truncate=skip"
            )
        if self.truncate == "skip":
            self.truncates_skipped += 1
            log.warning(
                "source %s: TRUNCATE of %s at %s left out (truncate=skip): the graph keeps "
                "the nodes and edges of the table's rows",
                self.name,
                names,
                lsn_to_str(lsn),
            )
            return
        for relation in relations:
            if relation is None:
                raise SourceError(f"source {self.name!r}: a TRUNCATE of an unannounced relation")
            index = txn.index
            txn.index += 1
            if index > txn.skip_upto:
                self._emit(txn, index, relation, "t", None, None, lsn)

    def _emit(
        self,
        txn: _Txn,
        index: int,
        relation: _Relation,
        op: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        lsn: int,
    ) -> None:
        if index > _INDEX_MAX:
            raise SourceError(
                f"source {self.name!r}: transaction {txn.xid} has more than 2**64 changes"
            )
        event = {
            "before": before,
            "after": after,
            "op": op,
            "source": {
                "connector": "postgresql",
                "name": self.name,
                "db": self._database,
                "schema": relation.schema,
                "table": relation.table,
                "lsn": lsn,
                "txId": txn.xid,
                "ts_ms": txn.commit_us // 1000,
                "ts_us": txn.commit_us,
                "snapshot": "false",
            },
            "ts_ms": txn.commit_us // 1000,
            "ts_us": txn.commit_us,
        }
        image = after if after is not None else before or {}
        key = {c.name: image.get(c.name) for c in relation.columns if c.is_key} if image else {}
        self._ready.append(
            Record(
                source=self.name,
                position=Position(self.slot, position_offset(txn.commit_lsn, index)),
                value=_json(event),
                key=_json(key) if key else None,
                event_time=txn.commit_us,
            )
        )

    # -- standby status -------------------------------------------------------------------

    def _maybe_send_status(self, conn: PGconn) -> None:
        if time.monotonic() - self._last_status >= self.status_interval_s:
            self._send_status(conn)

    def _send_status(self, conn: PGconn) -> None:
        """A standby status update: written = flushed = applied = the confirmed LSN."""
        now = time.time_ns() // 1000 - _PG_EPOCH_US
        flushed = self._flushed
        message = b"r" + struct.pack("!QQQqB", flushed, flushed, flushed, now, 0)
        try:
            conn.put_copy_data(message)
            deadline = time.monotonic() + 10.0
            while conn.flush() == 1:
                if time.monotonic() > deadline:
                    raise SourceError(f"source {self.name!r}: cannot send a status update")
                select.select([], [conn.socket], [], 0.1)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(
                f"source {self.name!r}: sending a status update failed: {exc}"
            ) from exc
        self._last_status = time.monotonic()

    def _error(self, doing: str, exc: Exception) -> SourceError:
        return SourceError(f"source {self.name!r}: {doing} failed: {exc}")


class _SnapshotReader:
    """The publication's tables read in one REPEATABLE READ transaction (``op: r`` events).

    With ``exported`` (the snapshot a new slot exported) the rows are exactly the state the
    slot's stream starts from; without, the tables as they are now. Records carry offsets
    ``first``, ``first + 1``, … in the source's snapshot partition, and the last one has
    :data:`_SNAPSHOT_DONE` set. Values are read as text and converted like the stream's.
    """

    def __init__(
        self, source: PostgresCDCSource, exported: str | None, lsn: int, first: int
    ) -> None:
        psycopg = driver()
        self.source = source
        self.lsn = lsn
        self.offset = first
        self.taken_us = time.time_ns() // 1000
        self.done = False
        self._tables: deque[tuple[str, str]] = deque()
        self._cursor: Any = None
        self._relation: _Relation | None = None
        self._rows: deque[tuple[_Relation, Sequence[bytes | None]]] = deque()
        self._pending: tuple[_Relation, Sequence[bytes | None]] | None = None
        try:
            self.conn = psycopg.connect(
                psycopg.conninfo.make_conninfo(source.dsn, options=_SESSION_OPTIONS)
            )
        except psycopg.Error as exc:
            raise source._error("connecting for the snapshot", exc) from exc
        try:
            self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self.conn.read_only = True
            if exported is not None:
                self.conn.execute(
                    psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        psycopg.sql.Literal(exported)
                    )
                )
            self._tables.extend(
                self.conn.execute(
                    "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
                    " ORDER BY 1, 2",
                    (source.publication,),
                ).fetchall()
            )
        except psycopg.Error as exc:
            self.conn.close()
            raise source._error("starting the snapshot", exc) from exc

    def read(self, max_records: int) -> list[Record]:
        """Up to ``max_records`` records; [] once every table is read."""
        out: list[Record] = []
        while len(out) < max_records and not self.done:
            row = self._next_row()
            if row is None:
                self.done = True
            if self._pending is not None:
                out.append(self._record(*self._pending, last=row is None))
            self._pending = row
        return out

    def close(self) -> None:
        self.conn.close()  # rolls the read-only transaction back

    def _next_row(self) -> tuple[_Relation, Sequence[bytes | None]] | None:
        psycopg = driver()
        try:
            while not self._rows:
                if self._cursor is not None:
                    batch = self._cursor.fetchmany(1000)
                    if batch:
                        assert self._relation is not None
                        self._rows.extend((self._relation, values) for values in batch)
                        continue
                    self._cursor.close()
                    self._cursor = None
                if not self._tables:
                    return None
                self._open_table(*self._tables.popleft())
        except psycopg.Error as exc:
            raise self.source._error("reading the snapshot", exc) from exc
        return self._rows.popleft()

    def _open_table(self, schema: str, table: str) -> None:
        psycopg = driver()
        sql = psycopg.sql
        name = sql.Identifier(schema, table)
        columns = self.conn.execute(
            "SELECT a.attname, a.atttypid::int, coalesce(a.attnum = ANY(i.indkey), false)"
            " FROM pg_attribute a LEFT JOIN pg_index i"
            " ON i.indrelid = a.attrelid AND i.indisprimary"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.attgenerated = '' ORDER BY a.attnum",
            (name.as_string(self.conn),),
        ).fetchall()
        self._relation = _Relation(
            schema,
            table,
            tuple(_Column(n, t, k, _CONVERTERS.get(t, _text)) for n, t, k in columns),
        )
        self._cursor = self.conn.cursor(name="hopcast_snapshot")
        raw = _raw_text_loader(psycopg)
        for _, type_oid, _ in columns:  # this cursor's values stay text, as pgoutput's are
            self._cursor.adapters.register_loader(type_oid, raw)
        self._cursor.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(n) for n, _, _ in columns), name
            )
        )

    def _record(self, relation: _Relation, values: Sequence[bytes | None], last: bool) -> Record:
        row: dict[str, Any] = {}
        for column, value in zip(relation.columns, values, strict=True):
            if value is None:
                row[column.name] = None
                continue
            try:
                row[column.name] = column.convert(value)
            except ValueError:
                row[column.name] = value.decode()
        source = self.source
        event = {
            "before": None,
            "after": row,
            "op": "r",
            "source": {
                "connector": "postgresql",
                "name": source.name,
                "db": source._database,
                "schema": relation.schema,
                "table": relation.table,
                "lsn": self.lsn,
                "txId": None,
                "ts_ms": self.taken_us // 1000,
                "ts_us": self.taken_us,
                "snapshot": "last" if last else "true",
            },
            "ts_ms": self.taken_us // 1000,
            "ts_us": self.taken_us,
        }
        key = {c.name: row.get(c.name) for c in relation.columns if c.is_key}
        offset = self.offset | (_SNAPSHOT_DONE if last else 0)
        self.offset += 1
        return Record(
            source=source.name,
            position=Position(source.snapshot_partition, offset),
            value=_json(event),
            key=_json(key) if key else None,
            event_time=self.taken_us,
        )


def _raw_text_loader(psycopg: Any) -> Any:
    """A psycopg loader that keeps a column's text form as bytes (converted like pgoutput's)."""

    class RawText(psycopg.adapt.Loader):  # type: ignore[misc]
        def load(self, data: Any) -> bytes:
            return bytes(data)

    return RawText


def _identifier(text: str) -> str:
    """A slot name from ``text``: lower case letters, digits and underscores."""
    cleaned = "".join(c if c.isalnum() else "_" for c in text.lower())
    return cleaned[:63]


def _qualified(table: str) -> tuple[str, str]:
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else ("public", table)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def from_spec(name: str, args: str) -> PostgresCDCSource:
    """``postgres:DSN[#OPTIONS]``, OPTIONS like ``tables=a,s.b&slot=S&snapshot=yes``.

    The part after ``#`` holds the source's options (the DSN itself never has one), in URL query
    form: ``tables``, ``slot``, ``publication``, ``create`` (default yes),
    ``replica_identity_full`` (no), ``snapshot`` (no), ``truncate`` (emit, skip or fail).
    """
    dsn, _, fragment = args.partition("#")
    if not dsn:
        raise ConfigError(f"source {name!r}: postgres spec needs a DSN: postgres:DSN[#options]")
    options = dict(parse_qsl(fragment, keep_blank_values=True))
    known = {
        "tables",
        "slot",
        "publication",
        "create",
        "replica_identity_full",
        "snapshot",
        "truncate",
    }
    unknown = set(options) - known
    if unknown:
        raise ConfigError(
            f"source {name!r}: unknown postgres option(s) {sorted(unknown)} "
            f"(known: {sorted(known)})"
        )
    tables = [t for t in options.get("tables", "").split(",") if t] or None
    return PostgresCDCSource(
        name,
        dsn,
        tables=tables,
        slot=options.get("slot") or None,
        publication=options.get("publication") or None,
        create=_flag(name, "create", options.get("create", "yes")),
        replica_identity_full=_flag(
            name, "replica_identity_full", options.get("replica_identity_full", "no")
        ),
        snapshot=_flag(name, "snapshot", options.get("snapshot", "no")),
        truncate=options.get("truncate", "emit"),
    )


def _flag(name: str, option: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"source {name!r}: {option}={text!r} is not yes or no")

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
There is no initial snapshot (no ``op: r`` events): capture starts when the slot is created, and
rows that existed before are not emitted.

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
the ``i``-th change of a transaction is ``(commit LSN << 16) | i``, so offsets grow strictly and
a resume inside a transaction is exact. (A transaction of more than 65,535 changes gives its
later changes the offset of the 65,535th: a resume there replays that tail, which the graph's
idempotent writes absorb. LSNs must stay below 2**48, 256 TiB of WAL.)
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

_INDEX_BITS = 16
_INDEX_MAX = (1 << _INDEX_BITS) - 1
_LSN_LIMIT = 1 << (64 - _INDEX_BITS)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in µs since the Unix epoch
_UNIX_EPOCH_DATE = date(1970, 1, 1)
_OBJECT_IN_USE = "55006"  # SQLSTATE: the slot is active for another process
_INT16 = struct.Struct("!h").unpack_from
_INT32 = struct.Struct("!i").unpack_from
_json = msgspec.json.Encoder().encode


def lsn_to_str(lsn: int) -> str:
    """``0x16B3748`` → ``'0/16B3748'`` (PostgreSQL's text form of an LSN)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_from_str(text: str) -> int:
    """``'0/16B3748'`` → ``0x16B3748``."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def position_offset(commit_lsn: int, index: int) -> int:
    """The offset of the ``index``-th change of the transaction that commits at ``commit_lsn``."""
    if commit_lsn >= _LSN_LIMIT:
        raise SourceError(f"LSN {lsn_to_str(commit_lsn)} is beyond what positions can hold")
    return (commit_lsn << _INDEX_BITS) | min(index, _INDEX_MAX)


def split_offset(offset: int) -> tuple[int, int]:
    """Inverse of :func:`position_offset`: ``(commit LSN, index)``."""
    return offset >> _INDEX_BITS, offset & _INDEX_MAX


def _driver() -> Any:
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
        status_interval_s: how often a standby status update is sent while polling.
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
        status_interval_s: float = 10.0,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.tables = list(tables) if tables is not None else None
        self.slot = slot or _identifier(f"hopcast_{name}")
        self.publication = publication or self.slot
        self.create = create
        self.replica_identity_full = replica_identity_full
        self.status_interval_s = status_interval_s
        self._conn: PGconn | None = None
        self._database = ""
        self._relations: dict[int, _Relation] = {}
        self._ready: deque[Record] = deque()
        self._txn: _Txn | None = None
        self._resume: tuple[int, int] | None = None
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
        self._prepare()
        self._conn = self._start_replication()

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` change events; waits at most ``timeout_s`` for the first."""
        conn = self._require_open()
        deadline = time.monotonic() + timeout_s
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
        psycopg = _driver()
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

    def _prepare(self) -> None:
        psycopg = _driver()
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
                    "SELECT puballtables FROM pg_publication WHERE pubname = %s",
                    (self.publication,),
                ).fetchone()
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
                            "CREATE PUBLICATION {} {} WITH (publish = 'insert, update, delete')"
                        ).format(sql.Identifier(self.publication), target)
                    )
                slot = conn.execute(
                    "SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s",
                    (self.slot,),
                ).fetchone()
                if slot is None:
                    if not self.create:
                        raise ConfigError(
                            f"source {self.name!r}: replication slot {self.slot!r} does not "
                            "exist (create it, or let the source: create=true)"
                        )
                    conn.execute(
                        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot,)
                    )
                elif slot[0] != "pgoutput" or slot[1] != self._database:
                    raise ConfigError(
                        f"source {self.name!r}: slot {self.slot!r} belongs to plugin {slot[0]!r}"
                        f" on database {slot[1]!r}; this source needs a pgoutput slot on "
                        f"{self._database!r}"
                    )
        except psycopg.Error as exc:
            raise self._error("setting up publication and slot", exc) from exc

    def _start_replication(self) -> PGconn:
        psycopg = _driver()
        pq = psycopg.pq
        conninfo = psycopg.conninfo.make_conninfo(
            self.dsn,
            replication="database",
            options="-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3",
        )
        command = (
            f"START_REPLICATION SLOT {_quote_ident(self.slot)} LOGICAL 0/0 "
            f"(proto_version '1', publication_names {_quote_literal(self.publication)})"
        ).encode()
        deadline = time.monotonic() + 10.0
        while True:
            conn: PGconn = pq.PGconn.connect(conninfo.encode())
            if conn.status != pq.ConnStatus.OK:
                message = conn.get_error_message()
                conn.finish()
                raise SourceError(
                    f"source {self.name!r}: cannot open a replication connection: {message}"
                )
            conn.send_query(command)
            result = conn.get_result()
            if result is not None and result.status == pq.ExecStatus.COPY_BOTH:
                conn.nonblocking = 1
                self._last_status = time.monotonic()
                return conn
            state = result.error_field(pq.DiagnosticField.SQLSTATE) if result else None
            message = conn.get_error_message()
            conn.finish()
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
                    txn.skip_upto = 1 << 62
                elif final_lsn == resume_lsn:
                    # At the index ceiling the tail shares one offset: replay it.
                    txn.skip_upto = resume_index if resume_index < _INDEX_MAX else _INDEX_MAX - 1
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
                self._open_txns.append((commit_lsn, min(done.index - 1, _INDEX_MAX), end_lsn))
        elif kind == "R":
            rel_id = reader.uint32()
            schema = reader.string()
            table = reader.string()
            reader.byte()  # replica identity setting
            columns = []
            for _ in range(reader.int16()):
                flags = reader.byte()
                column = reader.string()
                type_oid = reader.uint32()
                reader.int32()  # typmod
                convert = _CONVERTERS.get(type_oid, _text)
                columns.append(_Column(column, type_oid, bool(flags & 1), convert))
            self._relations[rel_id] = _Relation(schema or "public", table, tuple(columns))
        elif kind in ("I", "U", "D"):
            self._on_change(kind, lsn, reader)
        elif kind == "T":
            log.warning(
                "source %s: a TRUNCATE in the stream is not a row change and is not emitted "
                "(publish only 'insert, update, delete' to leave it out)",
                self.name,
            )
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
        else:
            reader.byte()  # 'K' or 'O'
            before = _row(relation, reader.tuple_data())
            op = "d"
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
        key = {c.name: image.get(c.name) for c in relation.columns if c.is_key}
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
    """``postgres:DSN[#tables=a,b&slot=S&publication=P&create=yes&replica_identity_full=no]``.

    The part after ``#`` holds the source's options (the DSN itself never has one).
    """
    dsn, _, fragment = args.partition("#")
    if not dsn:
        raise ConfigError(f"source {name!r}: postgres spec needs a DSN: postgres:DSN[#options]")
    options = dict(parse_qsl(fragment, keep_blank_values=True))
    known = {"tables", "slot", "publication", "create", "replica_identity_full"}
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
    )


def _flag(name: str, option: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(f"source {name!r}: {option}={text!r} is not yes or no")

"""The demo company's services, as the records they write: request logs and change events.

:class:`CompanyRecords` turns a :class:`~hopcast.demo.company.Company` into what its
microservices would emit: :class:`DemoRecord` s, each a source name and one JSON line, in the
shapes the demo mappings document at the top of ``hopcast/stream/mappings/<source>.yaml``:

* ``browse`` — the browse API's request/response log. A browse of a title or a live event is a
  ``GET /v1/browse`` line whose response lists the item opened (sometimes beside an ad, which the
  mapping skips); the request names the account, profile and device, so the line also refreshes
  ``logged_in_from``. A share of lines are other requests (search, failed browses) that the
  mapping drops: real logs are not all signal.
* ``playback`` — Debezium change events of the playback service's ``playback`` table, one row
  per (profile, title). A watch is one insert (``c``) or update (``u``) carrying the position,
  device and bitrate, which the mapping turns into ``started_watching`` *and* ``streamed_from``;
  continue-watching clean-ups delete rows (``d``), which remove nothing from the graph.
* ``games`` — game session events, times in milliseconds: a ``game_session_start`` (dropped by
  the mapping) and a ``game_session_end`` (``plays``) when a session is uploaded.
* ``live`` — ``live_join`` (``watched_live``) and ``team_follow`` (``supports``), times in µs.
* ``catalogue`` — Debezium change events of genres, titles, games, teams and live events: the
  snapshot (``r``), live events moving to their next broadcast, titles renamed and added (the
  ``titles`` side table follows them, so an enrichment sees catalogue updates at once).
* ``members`` — Debezium change events of accounts, profiles and devices: the snapshot, app
  updates, plan and language changes, new devices.

The activity comes from :meth:`Company.activity`, so it keeps the company's shape: Zipf title
popularity, heavy-tailed members (and ``heavy_accounts``), sessions interleaving, late events
and redeliveries — a redelivered interaction is the same record again, byte for byte. On top of
that, ``LATE_SHARE`` of the interactions' records arrive up to ``LATE_MAX_US`` late (a phone
uploading what it buffered offline), out of order in their log; and some devices' clocks are
off by seconds (``SKEWED_CLOCK_SHARE``), which the game and live events they report show. The
playback table writes the row once the stream runs, so a watch's record carries the time of
its ``streamed_from`` step.

A share ``bad_share`` of activity events is followed by one deliberately bad record (a cut line,
a wrong type, a missing field, an invalid id, an unknown event type, a broken change event, a
line without time): :data:`BAD_KINDS`. Its :attr:`DemoRecord.bad` names the dead-letter reason
the pipeline gives it, so tests and the demo can check that nothing is lost.

Everything is a pure function of the company, ``bad_share``, and the calls made (seeded by the
company's seed); no clock, no I/O. Times are µs since the epoch.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from hopcast.demo.company import Company
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeUpsert
from hopcast.stream.deadletter import Reason

#: The demo's sources, in the order their records are best ingested first (reference data).
SOURCES = ("catalogue", "members", "browse", "playback", "games", "live")

#: Share of activity events followed by one deliberately bad record (dead letters in the demo).
DEFAULT_BAD_SHARE = 0.003
#: Share of browses whose response also lists an ad (an item type the mapping skips).
AD_SHARE = 0.1
#: Share of browse-log lines followed by a request that maps to nothing (search, a 503).
OTHER_REQUEST_SHARE = 0.05
#: Per activity event: shares of the reference-data changes the services make meanwhile.
PLAN_CHANGE_SHARE = 0.0005
PROFILE_CHANGE_SHARE = 0.0003
NEW_DEVICE_SHARE = 0.0002
TITLE_CHANGE_SHARE = 0.0003
NEW_TITLE_SHARE = 0.0001
PLAYBACK_DELETE_SHARE = 0.002
#: Share of interactions whose records arrive late: a mobile client buffers them while offline
#: and uploads them later (they keep their event time). The company's own late events are late
#: by at most the window of one ``activity`` call, which is tiny when the demo runs live.
LATE_SHARE = 0.005
#: A late record arrives 1 µs..LATE_MAX_US after it happened (stream time).
LATE_MAX_US = 120 * 1_000_000
#: Share of devices whose clock is off, by up to CLOCK_SKEW_MAX_US either way: the game and live
#: events they report carry their time (event-time skew between sources; request logs and
#: change events carry the servers' time).
SKEWED_CLOCK_SHARE = 0.05
CLOCK_SKEW_MAX_US = 3_000_000
#: Redeliveries of the company's stream re-emit records remembered for this many interactions.
REMEMBERED = 1 << 13
#: Playback rows the generator keeps (the most recently written): one per (profile, title)
#: ever watched would grow for as long as the demo runs (~15k new rows a minute at 2,000
#: interactions/s, ~600 bytes each: the 9 MB/min that ``hopcast run`` used to grow by). 50,000
#: rows (~30 MB) cover every pair watched in the last few minutes; an older row watched again is
#: written as created (``op: c``), which the mapping and the PostgreSQL table (an upsert) take
#: exactly as an update.
MAX_PLAYBACK_ROWS = 50_000
#: Devices an account adds at most (a household's new phone or laptop, not hundreds); past it
#: the share of new devices changes a profile instead. Bounds the devices table.
MAX_NEW_DEVICES_PER_ACCOUNT = 4
#: New releases the catalogue adds at most (0.2 a second at 2,000 interactions/s: ~14 hours);
#: past it the share of new titles renames one instead. Bounds the titles table.
MAX_NEW_TITLES = 10_000
#: The connector version written in change events (cosmetic; the decoder does not read it).
DEBEZIUM_VERSION = "2.7.3.Final"

#: (source, dead-letter reason) of each kind of deliberately bad record.
BAD_KINDS: tuple[tuple[str, str], ...] = (
    ("browse", Reason.MALFORMED_JSON),  # a line cut short: the logger died mid-write
    ("browse", Reason.MISSING_TIME),  # a proxy's line without the request's time
    ("games", Reason.BAD_VALUE),  # minutes "n/a" from an old client
    ("games", Reason.MISSING_FIELD),  # a session end without its game
    ("live", Reason.SCHEMA_VIOLATION),  # an empty profile id: "profile:" is no node id
    ("live", Reason.UNMATCHED),  # an event type no rule knows yet
    ("playback", Reason.BAD_ENVELOPE),  # an update without its row image
)

#: Table of each node type, the column holding its key, and the source its changes go to.
_TABLES = {
    "genre": ("genres", "name", "catalogue"),
    "title": ("titles", "title_id", "catalogue"),
    "game": ("games", "game_id", "catalogue"),
    "team": ("teams", "team_id", "catalogue"),
    "live_event": ("live_events", "event_id", "catalogue"),
    "account": ("accounts", "account_id", "members"),
    "profile": ("profiles", "profile_id", "members"),
    "device": ("devices", "device_id", "members"),
}
_SOURCE_OF_TABLE = {table: source for table, _, source in _TABLES.values()} | {
    "playback": "playback"
}
#: Columns PostgreSQL stores as JSON (Debezium sends them as text).
_JSON_COLUMNS = frozenset({"genres", "team_ids"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class DemoRecord:
    """One record a demo service wrote.

    Attributes:
        source: the source (and mapping) name.
        value: one JSON line, without its newline.
        ts: when it happened (µs); the time the mapping reads from it, for a good record.
        bad: for a deliberately bad record, the dead-letter reason it must get; else None.
    """

    source: str
    value: bytes
    ts: int
    bad: str | None = None


def iso(ts: int) -> str:
    """``ts`` (µs since the epoch) as ISO 8601 in UTC with microseconds and a ``Z``."""
    return (_EPOCH + timedelta(microseconds=ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key(node_id: str) -> str:
    return node_id.partition(":")[2]


class CompanyRecords:
    """The records of a company's services (see the module docstring).

    Args:
        company: the company; its :meth:`~Company.activity` is consumed by :meth:`activity`.
        bad_share: share of activity events followed by one bad record (0 for none).
    """

    def __init__(self, company: Company, *, bad_share: float = DEFAULT_BAD_SHARE) -> None:
        if not 0.0 <= bad_share <= 1.0:
            raise ValueError(f"bad_share must be in [0, 1], got {bad_share}")
        self.company = company
        self.bad_share = bad_share
        self._rng = random.Random(f"{company.config.seed}:records")
        #: the services' tables: table → key → row (list columns kept as lists)
        self.rows: dict[str, dict[str, dict[str, Any]]] = {
            table: {} for table, _, _ in _TABLES.values()
        }
        self.rows["playback"] = {}
        self._load_rows(company.catalogue())
        self._load_rows(company.members())
        self._extra_devices: Counter[str] = Counter()
        self._new_titles = 0
        self._lsn = 0
        # Every table and cache below is bounded: the tables by MAX_PLAYBACK_ROWS,
        # MAX_NEW_DEVICES_PER_ACCOUNT and MAX_NEW_TITLES, the caches by the company's profiles
        # and devices, and the rest as commented.
        #: started_watching waiting for the streamed_from of the same watch (the company emits
        #: the stream step right after the start: a handful at any time)
        self._pending: dict[tuple[str, str, str], list[EdgeUpsert]] = {}
        #: records written for recent interactions (by mutation id), to redeliver them
        #: (REMEMBERED interactions)
        self._sent: dict[str, list[DemoRecord]] = {}
        self._recent_rows: deque[str] = deque(maxlen=1024)
        self._devices: dict[str, str] = {}  # profile → usual device (cache)
        self._skews: dict[str, int] = {}  # device → clock skew (cache)
        #: records held back to arrive late: (arrival ts, sequence, records); LATE_SHARE of
        #: the interactions of the last LATE_MAX_US
        self._late: list[tuple[int, int, list[DemoRecord]]] = []
        self._late_seq = 0
        #: bad records emitted so far, by reason
        self.bad_emitted: Counter[str] = Counter()

    # -- the tables ----------------------------------------------------------------------------

    def _load_rows(self, mutations: Iterable[Mutation]) -> None:
        rows = self.rows
        for m in mutations:
            if isinstance(m, NodeUpsert):
                node_type, key = m.node.split(":", 1)
                table, column, _ = _TABLES[node_type]
                row: dict[str, Any] = {column: key, **m.props}
                if table == "titles":
                    row["genres"] = []
                elif table == "live_events":
                    row["team_ids"] = []
                rows[table][key] = row
            elif isinstance(m, EdgeUpsert):
                src_type, src = m.src.split(":", 1)
                dst = _key(m.dst)
                if m.type == "in_genre" and src_type == "title":
                    rows["titles"][src]["genres"].append(dst)
                elif m.type == "in_genre":
                    rows[_TABLES[src_type][0]][src]["genre"] = dst
                elif m.type == "features":
                    rows["live_events"][src]["team_ids"].append(dst)
                elif m.type == "has_profile":
                    rows["profiles"][dst]["account_id"] = src
                elif m.type == "logged_in_from":
                    rows["devices"][dst]["account_id"] = src
                    rows["devices"][dst]["ip_country"] = m.props["ip_country"]

    def observe(self, mutations: Iterable[Mutation]) -> None:
        """Update the tables with node changes written to the graph directly (a history loaded
        in bulk), so that the snapshot and later changes carry the current rows."""
        for m in mutations:
            if isinstance(m, NodeUpsert):
                self._update_row(m)

    def _update_row(self, m: NodeUpsert) -> tuple[str, dict[str, Any]] | None:
        node_type, key = m.node.split(":", 1)
        table = _TABLES[node_type][0]
        row = self.rows[table].get(key)
        if row is None:
            return None
        row.update(m.props)
        return table, row

    # -- change events -------------------------------------------------------------------------

    def _change(
        self, table: str, op: str, row: dict[str, Any], ts: int, bad: str | None = None
    ) -> DemoRecord:
        """A Debezium change event (JSON converter, schemas off) of ``row`` in ``table``."""
        self._lsn += 1
        image = {k: (_encode(v).decode() if k in _JSON_COLUMNS else v) for k, v in row.items()}
        source = _SOURCE_OF_TABLE[table]
        doc = {
            "before": image if op == "d" else None,
            "after": None if op == "d" else image,
            "source": {
                "version": DEBEZIUM_VERSION,
                "connector": "postgresql",
                "name": "demo",
                "ts_ms": ts // 1000,
                "ts_us": ts,
                "snapshot": "true" if op == "r" else "false",
                "db": source,
                "schema": "public",
                "table": table,
                "txId": 1000 + self._lsn,
                "lsn": 0x1000000 + 64 * self._lsn,
            },
            "op": op,
            "ts_ms": ts // 1000,
            "transaction": None,
        }
        if bad == Reason.BAD_ENVELOPE:
            doc["after"] = None
        return DemoRecord(source, _encode(doc), ts, bad)

    def snapshot(self, ts: int) -> Iterator[DemoRecord]:
        """Every row of the catalogue and member tables as a snapshot read (``op: r``) at
        ``ts``: what a CDC connector emits first. Reference data first (genres before titles)."""
        for table, _, _ in _TABLES.values():
            for row in self.rows[table].values():
                yield self._change(table, "r", row, ts)

    # -- activity ------------------------------------------------------------------------------

    def activity(self, n: int, start_ts: int, end_ts: int) -> Iterator[DemoRecord]:
        """The records of the company's next ``n`` interactions over ``[start_ts, end_ts)``
        (:meth:`Company.activity`, same rules), with the reference-data changes, other requests
        and bad records that come with them."""
        return self._records(self.company.activity(n, start_ts, end_ts))

    def pending(self) -> int:
        """Watches started whose playback row is not written yet (it is with the stream)."""
        return sum(len(v) for v in self._pending.values())

    def held(self) -> list[DemoRecord]:
        """Records held back to arrive late, not yet emitted."""
        return [r for _, _, records in sorted(self._late) for r in records]

    def _records(self, mutations: Iterable[Mutation]) -> Iterator[DemoRecord]:
        rand = self._rng.random
        sent = self._sent
        late = self._late
        for m in mutations:
            while late and late[0][0] <= m.ts:
                yield from heapq.heappop(late)[2]
            if isinstance(m, NodeUpsert):
                changed = self._update_row(m)
                if changed is not None:
                    yield self._change(changed[0], "u", changed[1], m.ts)
                continue
            assert isinstance(m, EdgeUpsert)
            again = sent.get(m.id)
            if again is not None:  # the company redelivers: the same records again
                yield from again
                continue
            out = self._interaction(m)
            sent[m.id] = out
            if len(sent) > REMEMBERED:
                del sent[next(iter(sent))]
            if out and rand() < LATE_SHARE:
                arrival = m.ts + 1 + int(rand() * LATE_MAX_US)
                heapq.heappush(late, (arrival, self._late_seq, out))
                self._late_seq += 1
            else:
                yield from out
            if rand() < self.bad_share:
                yield self._bad(m)
            r = rand()
            if r < PLAN_CHANGE_SHARE + PROFILE_CHANGE_SHARE + NEW_DEVICE_SHARE:
                yield self._member_change(m, r)
            r = rand()
            if r < TITLE_CHANGE_SHARE + NEW_TITLE_SHARE:
                yield self._title_change(m.ts, r < NEW_TITLE_SHARE)
            if rand() < PLAYBACK_DELETE_SHARE and self._recent_rows:
                row_id = self._recent_rows[int(rand() * len(self._recent_rows))]
                row = self.rows["playback"].pop(row_id, None)
                if row is not None:
                    yield self._change("playback", "d", row, m.ts)

    def _interaction(self, m: EdgeUpsert) -> list[DemoRecord]:
        t = m.type
        if t == "browsed":
            return self._browse(m)
        if t == "started_watching":
            key = (m.src, m.dst, str(m.props["device"]))
            self._pending.setdefault(key, []).append(m)
            return []
        if t == "streamed_from":
            return [self._playback(m)]
        if t == "plays":
            return self._game(m)
        if t == "watched_live":
            device = _key(str(m.props["device"]))
            ts = m.ts + self._clock_skew(device)
            doc: dict[str, Any] = {
                "type": "live_join",
                "ts_us": ts,
                "profile_id": _key(m.src),
                "event_id": _key(m.dst),
                "device_id": device,
                "minutes": m.props["minutes"],
            }
            return [DemoRecord("live", _encode(doc), ts)]
        if t == "supports":
            ts = m.ts + self._clock_skew(self._device_of(m.src))
            doc = {
                "type": "team_follow",
                "ts_us": ts,
                "profile_id": _key(m.src),
                "team_id": _key(m.dst),
                "via": m.props["source"],
            }
            return [DemoRecord("live", _encode(doc), ts)]
        raise ValueError(f"the demo has no service that records {t!r}")

    def _clock_skew(self, device: str) -> int:
        """How far a device's clock is off (µs): events it reports carry its own time."""
        skew = self._skews.get(device)
        if skew is None:
            rng = random.Random(f"{self.company.config.seed}:clock:{device}")
            skew = 0
            if rng.random() < SKEWED_CLOCK_SHARE:
                skew = int((2 * rng.random() - 1) * CLOCK_SKEW_MAX_US)
            self._skews[device] = skew
        return skew

    def _device_of(self, profile_id: str) -> str:
        device = self._devices.get(profile_id)
        if device is None:
            device = self._devices[profile_id] = _key(self.company.usual_device_of(profile_id))
        return device

    def _browse_doc(self, m: EdgeUpsert, path: str, status: int) -> dict[str, Any]:
        profile = _key(m.src)
        device = self._device_of(m.src)
        row = self.rows["devices"][device]
        return {
            "ts": iso(m.ts),
            "method": "GET",
            "path": path,
            "status": status,
            "latency_ms": 5 + int(self._rng.random() * 120),
            "request": {
                "account_id": row["account_id"],
                "profile_id": profile,
                "device_id": device,
                "ip_country": row["ip_country"],
                "page": m.props.get("page", "home"),
                "row": m.props.get("row", "search_results"),
            },
        }

    def _browse(self, m: EdgeUpsert) -> list[DemoRecord]:
        rand = self._rng.random
        doc = self._browse_doc(m, "/v1/browse", 200)
        item_type, item_id = m.dst.split(":", 1)
        items = [{"type": item_type, "id": item_id}]
        if rand() < AD_SHARE:
            items.insert(int(rand() * 2), {"type": "ad", "id": f"promo-{int(rand() * 40)}"})
        doc["response"] = {"items": items}
        out = [DemoRecord("browse", _encode(doc), m.ts)]
        if rand() < OTHER_REQUEST_SHARE:
            other = (
                self._browse_doc(m, "/v1/search", 200)
                if rand() < 0.7
                else self._browse_doc(m, "/v1/browse", 503)
            )
            other["response"] = {"items": []}
            out.append(DemoRecord("browse", _encode(other), m.ts))
        return out

    def _playback(self, m: EdgeUpsert) -> DemoRecord:
        title = str(m.props["title"])
        waiting = self._pending.get((m.src, title, m.dst))
        started = waiting.pop(0) if waiting else None
        if waiting == []:
            del self._pending[(m.src, title, m.dst)]
        profile, title_key = _key(m.src), _key(title)
        row_id = f"{profile}/{title_key}"
        table = self.rows["playback"]
        op = "u" if table.pop(row_id, None) is not None else "c"  # reinserted below: newest last
        row = {
            "id": row_id,
            "profile_id": profile,
            "title_id": title_key,
            "device_id": _key(m.dst),
            "position_s": started.props["position_s"] if started is not None else 0,
            "bitrate_kbps": m.props["bitrate_kbps"],
            "updated_at": m.ts,
        }
        table[row_id] = row
        while len(table) > MAX_PLAYBACK_ROWS:
            del table[next(iter(table))]  # the least recently written
        self._recent_rows.append(row_id)
        record = self._change("playback", op, row, m.ts)
        if started is not None:
            self._sent[started.id] = [record]
        return record

    def _game(self, m: EdgeUpsert) -> list[DemoRecord]:
        minutes = m.props["minutes"]
        assert isinstance(minutes, int)
        device = _key(str(m.props["device"]))
        ms = (m.ts + self._clock_skew(device)) // 1000
        base = {"profile_id": _key(m.src), "game_id": _key(m.dst), "device_id": device}
        start = {"event": "game_session_start", "ts_ms": ms - minutes * 60_000, **base}
        end = {"event": "game_session_end", "ts_ms": ms, **base, "minutes": minutes}
        return [
            DemoRecord("games", _encode(start), m.ts),
            DemoRecord("games", _encode(end), ms * 1000),
        ]

    def _member_change(self, m: EdgeUpsert, r: float) -> DemoRecord:
        rng = self._rng
        profile = _key(m.src)
        account = self.rows["profiles"][profile]["account_id"]
        if r < PLAN_CHANGE_SHARE:
            row = self.rows["accounts"][account]
            row["plan"] = rng.choice(
                [p for p in ("basic", "standard", "premium") if p != row["plan"]]
            )
            return self._change("accounts", "u", row, m.ts)
        new_device = r >= PLAN_CHANGE_SHARE + PROFILE_CHANGE_SHARE
        if not new_device or self._extra_devices[account] >= MAX_NEW_DEVICES_PER_ACCOUNT:
            row = self.rows["profiles"][profile]
            row["language"] = rng.choice(("en", "es", "pt", "fr", "de", "ja", "hi"))
            return self._change("profiles", "u", row, m.ts)
        self._extra_devices[account] += 1
        n = len(self.company.devices_of(f"account:{account}")) + self._extra_devices[account] - 1
        device = f"{account}-{n}"
        usual = self.rows["devices"][self._device_of(m.src)]
        row = {
            "device_id": device,
            "device_type": "web",
            "os": rng.choice(("chrome", "safari", "firefox", "edge")),
            "app_version": usual["app_version"],
            "account_id": account,
            "ip_country": usual["ip_country"],
        }
        self.rows["devices"][device] = row
        return self._change("devices", "c", row, m.ts)

    def _title_change(self, ts: int, new: bool) -> DemoRecord:
        rng = self._rng
        titles = self.rows["titles"]
        if new and self._new_titles < MAX_NEW_TITLES:
            self._new_titles += 1
            key = str(self.company.config.titles + self._new_titles - 1)
            genres = self.rows["genres"]
            row = {
                "title_id": key,
                "name": f"New Release {self._new_titles}",
                "kind": "movie",
                "year": (_EPOCH + timedelta(microseconds=ts)).year,
                "genres": [rng.choice(list(genres))],
            }
            titles[key] = row
            return self._change("titles", "c", row, ts)
        key = str(int(rng.random() * self.company.config.titles))
        row = titles[key]
        name = str(row["name"])
        suffix = " (Remastered)"
        row["name"] = name[: -len(suffix)] if name.endswith(suffix) else name + suffix
        return self._change("titles", "u", row, ts)

    # -- bad records ---------------------------------------------------------------------------

    def _bad(self, m: EdgeUpsert) -> DemoRecord:
        rng = self._rng
        source, reason = BAD_KINDS[int(rng.random() * len(BAD_KINDS))]
        self.bad_emitted[reason] += 1
        profile = _key(m.src)
        ts = m.ts
        if source == "browse":
            doc = self._browse_doc(m, "/v1/browse", 200)
            doc["response"] = {"items": [{"type": "title", "id": "0"}]}
            if reason == Reason.MISSING_TIME:
                del doc["ts"]
                return DemoRecord(source, _encode(doc), ts, reason)
            line = _encode(doc)
            return DemoRecord(source, line[: len(line) // 2], ts, reason)
        if source == "games":
            game: dict[str, Any] = {
                "event": "game_session_end",
                "ts_ms": ts // 1000,
                "profile_id": profile,
                "game_id": "0",
                "device_id": self._device_of(m.src),
                "minutes": 12,
            }
            if reason == Reason.BAD_VALUE:
                game["minutes"] = "n/a"
            else:
                del game["game_id"]
            return DemoRecord(source, _encode(game), ts, reason)
        if source == "live":
            live: dict[str, Any] = {
                "type": "live_join",
                "ts_us": ts,
                "profile_id": profile,
                "event_id": "0",
                "device_id": self._device_of(m.src),
                "minutes": 3,
            }
            if reason == Reason.SCHEMA_VIOLATION:
                live["profile_id"] = ""
            else:
                live["type"] = "live_leave"
            return DemoRecord(source, _encode(live), ts, reason)
        row = {
            "id": f"{profile}/0",
            "profile_id": profile,
            "title_id": "0",
            "device_id": self._device_of(m.src),
            "position_s": 0,
            "bitrate_kbps": 750,
            "updated_at": ts,
        }
        return self._change("playback", "u", row, ts, bad=reason)

"""The operator console's routes, under ``/v1/console`` (contract: ``docs/console-api.md``).

* **dashboard** — connected devices (from the gateway in this process), prefetch coverage,
  the time-to-update CDF of the event's last trigger and the origin's prefetch request rate;
* **device reports** — what devices tell the console (``prefetched``, ``updated``): the gateway
  protocol has no acknowledgements, so coverage and time to update come from these;
* **recommendations** — materialise an event's rows from the graph
  (:mod:`hopcast.live.materialise`) and show its segments;
* **graph explorer** — find nodes, a node's neighbourhood shaped for drawing, a member's journey
  as a timeline across devices and verticals;
* **ingest status** — events/s, lag, freshness and dead letters of the pipeline running in this
  process (:class:`IngestStats`, e.g. the embedded engine's ``stats``), else what the store
  knows.

A thin adapter: the numbers come from pure helpers here (:func:`cdf`, :class:`RateMeter`,
:class:`DeviceReports`) fed with values; :func:`install` wires them into an app. The console's
state (reports, rate samples, the node directory) lives in memory and starts empty with the
process.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, Protocol

import msgspec
from fastapi import APIRouter, FastAPI, Path, Query, Request
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hopcast.api import bounds, jobs, openapi
from hopcast.api.bodies import NodeIdText, anchored, decode, edge_types, resolve_time
from hopcast.api.errors import ApiError
from hopcast.api.policy import policy
from hopcast.api.ratelimit import REPORTS
from hopcast.api.responses import JSON
from hopcast.auth.roles import Role
from hopcast.errors import InvalidInput, InvalidQuery, NotFound
from hopcast.graph.keys import MAX_TS
from hopcast.graph.limits import MAX_INT
from hopcast.graph.store import Edge
from hopcast.graphdb import Graph
from hopcast.live.fixtures import STAGE_KINDS
from hopcast.live.gateway import Gateway
from hopcast.live.materialise import MAX_SEGMENTS
from hopcast.live.producer import Trigger
from hopcast.live.schedule import LiveEvent, State
from hopcast.live.service import LiveService
from hopcast.query import spec as q
from hopcast.stream.deadletter import DeadLetterStore

#: Most reports in one POST: a device sends one or two at a time; a simulator batches.
MAX_REPORTS = 1000
#: Devices remembered per event and kind (beyond it, reports are counted but not kept).
MAX_DEVICES_PER_EVENT = 500_000
#: Events whose reports are kept (the oldest are forgotten first).
MAX_EVENTS = 64
#: Points of a CDF in an answer: enough for a smooth curve, few enough for a small response.
CDF_POINTS = 50
#: Rate samples kept, one a second: two minutes of history for the origin chart.
RATE_SAMPLES = 121
#: Seconds between rate samples taken in the background.
SAMPLE_EVERY_S = 1.0
#: Nodes in one neighbourhood answer at most (a drawing stays readable).
MAX_NEIGHBOURHOOD_NODES = 300
#: Ids per node type remembered by the directory.
MAX_DIRECTORY_IDS = 200_000

_PREFETCH_FAMILY = "hopcast_live_prefetch_responses"

#: Verticals of journey entries, by edge type (``browsed`` a live event counts as ``live``).
VERTICALS = {
    "started_watching": "streaming",
    "streamed_from": "streaming",
    "browsed": "browse",
    "plays": "games",
    "watched_live": "live",
}


# -- ingest stats ----------------------------------------------------------------------------------


class IngestStats(Protocol):
    """What the console reads of a running pipeline
    (:class:`~hopcast.stream.engines.embedded.EngineStats` has it)."""

    events: int
    mutations: int
    dead_letters: int
    dead_by_reason: dict[str, int]
    lag: dict[str, int]

    def rate(self, window_s: float = 5.0) -> tuple[float, float]: ...

    def freshness_quantiles(self) -> tuple[float, float] | None: ...


def ingest_doc(stats: IngestStats | None, stored_dead_letters: int) -> dict[str, Any]:
    """The JSON form of ``GET /v1/console/ingest``."""
    if stats is None:
        return {
            "engine": False,
            "events": 0,
            "mutations": 0,
            "events_per_s": 0.0,
            "mutations_per_s": 0.0,
            "lag_bytes": {},
            "lag_total_bytes": 0,
            "freshness_ms": None,
            "dead_letters": stored_dead_letters,
            "dead_by_reason": {},
        }
    events_s, mutations_s = stats.rate()
    quantiles = stats.freshness_quantiles()
    lag = dict(stats.lag)
    return {
        "engine": True,
        "events": stats.events,
        "mutations": stats.mutations,
        "events_per_s": round(events_s, 1),
        "mutations_per_s": round(mutations_s, 1),
        "lag_bytes": lag,
        "lag_total_bytes": sum(lag.values()),
        "freshness_ms": None
        if quantiles is None
        else {"p50": round(quantiles[0] * 1000, 1), "p99": round(quantiles[1] * 1000, 1)},
        "dead_letters": max(stats.dead_letters, stored_dead_letters),
        "dead_by_reason": dict(stats.dead_by_reason),
    }


# -- pure helpers ----------------------------------------------------------------------------------


def cdf(values_ms: Iterable[float], points: int = CDF_POINTS) -> list[dict[str, float]]:
    """An empirical CDF in at most ``points`` steps: ``[{ms, fraction}]``, fractions rising to
    1.0 (the k-th point is the smallest value at or above the k/points quantile)."""
    ordered = sorted(values_ms)
    n = len(ordered)
    if n == 0:
        return []
    out: list[dict[str, float]] = []
    last = -1
    for k in range(1, min(points, n) + 1):
        idx = math.ceil(k * n / min(points, n)) - 1
        if idx == last:
            continue
        last = idx
        out.append({"ms": round(ordered[idx], 3), "fraction": round((idx + 1) / n, 4)})
    return out


def quantile(ordered: Sequence[float], p: float) -> float:
    """The ``p`` quantile (nearest rank) of sorted values; 0.0 for none."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


class RateMeter:
    """Samples of a growing counter, ``(wall µs, monotonic s, total)``; rates over windows."""

    def __init__(self, size: int = RATE_SAMPLES) -> None:
        self._samples: deque[tuple[int, float, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def sample(self, wall_us: int, mono_s: float, total: float) -> None:
        """Record the counter's ``total`` at that moment (at most one sample per 0.2 s)."""
        with self._lock:
            if self._samples and mono_s - self._samples[-1][1] < 0.2:
                return
            self._samples.append((wall_us, mono_s, total))

    def rate(self, window_s: float) -> tuple[float, float]:
        """``(requests, requests per second)`` over the last ``window_s`` seconds of samples."""
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:
            return 0.0, 0.0
        end = samples[-1]
        start = samples[0]
        for s in samples:
            if end[1] - s[1] <= window_s:
                start = s
                break
        span = end[1] - start[1]
        done = end[2] - start[2]
        return done, (done / span if span > 0 else 0.0)

    def series(self) -> list[dict[str, float]]:
        """Per-interval rates, oldest first: ``[{t: wall µs, rps}]``."""
        with self._lock:
            samples = list(self._samples)
        out = []
        for (_, m0, c0), (w1, m1, c1) in itertools.pairwise(samples):
            if m1 > m0:
                out.append({"t": w1, "rps": round((c1 - c0) / (m1 - m0), 2)})
        return out


class DeviceReports:
    """What devices reported, per event: the stages each holds, and when each showed a
    ``(stage, version)``. Thread-safe; bounded (:data:`MAX_EVENTS` events,
    :data:`MAX_DEVICES_PER_EVENT` devices)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefetched: dict[str, dict[str, frozenset[str]]] = {}
        self._updated: dict[str, dict[tuple[str, int], dict[str, int]]] = {}
        self._triggers: dict[str, dict[tuple[str, int], int]] = {}
        self.received = 0

    def _event(self, event: str) -> None:
        """Make room for ``event`` (forget the oldest event beyond the bound)."""
        if event in self._prefetched:
            return
        if len(self._prefetched) >= MAX_EVENTS:
            oldest = next(iter(self._prefetched))
            for table in (self._prefetched, self._updated, self._triggers):
                table.pop(oldest, None)
        self._prefetched[event] = {}
        self._updated.setdefault(event, {})
        self._triggers.setdefault(event, {})

    def prefetched(self, device: str, event: str, stages: Iterable[str]) -> None:
        """``device`` holds the payloads of ``stages`` for ``event``."""
        with self._lock:
            self.received += 1
            self._event(event)
            held = self._prefetched[event]
            if device in held or len(held) < MAX_DEVICES_PER_EVENT:
                held[device] = held.get(device, frozenset()) | frozenset(stages)

    def updated(self, device: str, event: str, stage: str, version: int, at: int) -> None:
        """``device`` shows ``stage`` (schedule ``version``) of ``event`` since ``at`` (µs)."""
        with self._lock:
            self.received += 1
            self._event(event)
            by = self._updated[event].setdefault((stage, version), {})
            if device not in by and len(by) < MAX_DEVICES_PER_EVENT:
                by[device] = at

    def trigger(self, trigger: Trigger) -> None:
        """Remember when the server emitted ``(stage, version)`` (the first emission counts:
        re-announcements after a restart keep the original)."""
        with self._lock:
            self._event(trigger.event_id)
            self._triggers[trigger.event_id].setdefault(
                (trigger.stage.value, trigger.version), trigger.ts
            )

    def on_triggers(self, triggers: Sequence[Trigger]) -> None:
        """A live-service sink: :meth:`trigger` for each."""
        for t in triggers:
            self.trigger(t)

    def holding(self, event: str, stage: str) -> int:
        """Devices that reported holding ``stage`` of ``event``."""
        with self._lock:
            return sum(1 for s in self._prefetched.get(event, {}).values() if stage in s)

    def trigger_ts(self, event: str, stage: str, version: int) -> int | None:
        with self._lock:
            return self._triggers.get(event, {}).get((stage, version))

    def latencies_ms(self, event: str, stage: str, version: int, since: int) -> list[float]:
        """Time to update of every device that reported ``(stage, version)``: ``at - since``."""
        with self._lock:
            ats = list(self._updated.get(event, {}).get((stage, version), {}).values())
        return [max(0, at - since) / 1000 for at in ats]


def update_doc(reports: DeviceReports, event: LiveEvent, connected: int) -> dict[str, Any] | None:
    """The time-to-update block of the dashboard for the event's last stage change."""
    if event.state in (State.SCHEDULED,) and event.stage_version <= 1:
        return None
    stage, version = event.state.value, event.stage_version
    ts = reports.trigger_ts(event.id, stage, version) or event.stage_changed_at
    ordered = sorted(reports.latencies_ms(event.id, stage, version, ts))
    return {
        "event": event.id,
        "stage": stage,
        "version": version,
        "trigger_ts": ts,
        "devices": len(ordered),
        "connected": connected,
        "p50_ms": round(quantile(ordered, 0.5), 3),
        "p90_ms": round(quantile(ordered, 0.9), 3),
        "p99_ms": round(quantile(ordered, 0.99), 3),
        "max_ms": round(ordered[-1], 3) if ordered else 0.0,
        "cdf": cdf(ordered),
    }


def pick_event(events: Sequence[LiveEvent], now: int) -> LiveEvent | None:
    """The event a dashboard shows by default: the live one (latest to go live), else the next
    to start, else the latest created."""
    live = [e for e in events if e.state in (State.LIVE, State.INTERRUPTED)]
    if live:
        return max(live, key=lambda e: (e.went_live_at or 0, e.id))
    upcoming = [e for e in events if not e.terminal]
    if upcoming:
        return min(upcoming, key=lambda e: (e.starts_at, e.id))
    if events:
        return max(events, key=lambda e: (e.created_at, e.id))
    return None


def needed_stage(event: LiveEvent) -> str:
    """The stage whose payload devices need next: ``live`` before the start, else the current
    stage."""
    if event.state in (State.SCHEDULED, State.PREFETCHING):
        return State.LIVE.value
    return event.state.value


class NodeDirectory:
    """Known node ids per type, sorted, for prefix search (the KV cannot list record ids).

    Fed by the host (the demo adds its company's ids) and by every node the console shows.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, ids: Iterable[str]) -> None:
        """Remember ``ids`` (``type:key``; others are ignored)."""
        fresh: dict[str, set[str]] = {}
        for node_id in ids:
            kind, sep, key = node_id.partition(":")
            if sep and kind and key:
                fresh.setdefault(kind, set()).add(node_id)
        with self._lock:
            for kind, new in fresh.items():
                known = self._ids.setdefault(kind, [])
                if len(known) >= MAX_DIRECTORY_IDS:
                    continue
                merged = sorted(set(known) | new) if len(new) > 8 else known
                if merged is known:
                    for node_id in new:
                        i = bisect.bisect_left(known, node_id)
                        if i == len(known) or known[i] != node_id:
                            known.insert(i, node_id)
                self._ids[kind] = merged[:MAX_DIRECTORY_IDS]

    def search(self, prefix: str, kind: str | None, limit: int) -> tuple[list[str], bool]:
        """Ids starting with ``prefix`` (of ``kind`` if given), sorted; and whether more match."""
        with self._lock:
            kinds = [kind] if kind else sorted(self._ids)
            out: list[str] = []
            for k in kinds:
                ids = self._ids.get(k, [])
                full = prefix if prefix.startswith(f"{k}:") else f"{k}:{prefix}"
                if kind is None and ":" in prefix and not prefix.startswith(f"{k}:"):
                    continue
                i = bisect.bisect_left(ids, full)
                while i < len(ids) and ids[i].startswith(full):
                    if len(out) == limit:
                        return out, True
                    out.append(ids[i])
                    i += 1
            return out, False

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._ids.values())


# -- bodies ----------------------------------------------------------------------------------------


#: Longest device id in a report (a device names itself; ids are short tokens).
MAX_DEVICE_CHARS = 256
#: Most stages one report lists: the six stages, with room for duplicates a device may send.
MAX_REPORT_STAGES = 16

DeviceId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DEVICE_CHARS)]
EventIdText = Annotated[str, msgspec.Meta(pattern=anchored(bounds.EVENT_ID))]
StageName = Literal["scheduled", "prefetch", "live", "interrupted", "ended", "cancelled"]


class PrefetchedReport(
    msgspec.Struct, tag_field="kind", tag="prefetched", forbid_unknown_fields=True
):
    """A device holds the payloads of ``stages`` for ``event``."""

    device: DeviceId
    event: EventIdText
    stages: Annotated[list[StageName], msgspec.Meta(max_length=MAX_REPORT_STAGES)] = []


class UpdatedReport(msgspec.Struct, tag_field="kind", tag="updated", forbid_unknown_fields=True):
    """A device shows ``stage`` (schedule ``version``) of ``event`` since ``at`` (µs)."""

    device: DeviceId
    event: EventIdText
    stage: StageName
    version: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
    at: Annotated[int, msgspec.Meta(ge=0, le=MAX_TS)]


class ReportsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Device reports (at most MAX_REPORTS: more are a 413, too large)."""

    reports: list[PrefetchedReport | UpdatedReport]


class MaterialiseGraphRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Materialise from the graph: the event's node and the bound on segments (both optional)."""

    node: NodeIdText | None = None
    max_segments: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEGMENTS)] | None = None


_REPORTS_BODY = openapi.body(ReportsRequest)
# declared, and refused with a 413 (too large) rather than on decoding
openapi.BODIES["ReportsRequest"]["properties"]["reports"]["maxItems"] = MAX_REPORTS


def _ok(example: Any, *errors: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        200: {"description": "OK", "content": {"application/json": {"example": example}}}
    }
    texts = {
        400: "Malformed parameter",
        404: "No such node, event or materialisation",
        413: "Too many reports",
        422: "A body or parameter of the wrong shape",
    }
    for status in errors:
        out[status] = {
            "description": texts[status],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return out


# -- examples (docs/console-api.md has the full contract) ------------------------------------------

_T = 1_700_000_000_000_000

#: A graph materialisation's report, for the documentation.
GRAPH_MATERIALISED_EXAMPLE: dict[str, Any] = {
    "event": "final",
    "node": "live_event:4",
    "version": _T,
    "changed": True,
    "new_payloads": 12,
    "max_segments": 8,
    "cardinality": 12,
    "members": 412,
    "audience": 530,
    "segments": [
        {
            "key": "team.7",
            "label": "fans of Red Rovers",
            "members": 130,
            "rows": ["Popular with fans of Red Rovers", "Playing"],
        }
    ],
}
DASHBOARD_EXAMPLE = {
    "now": _T + 500_000,
    "event": {
        "id": "final",
        "title": "The Final",
        "state": "live",
        "version": 3,
        "starts_at": _T,
        "went_live_at": _T,
    },
    "devices": {"gateway": True, "connected": 300},
    "prefetch": {"stage": "live", "devices": 291, "connected": 300, "coverage_pct": 97.0},
    "time_to_update": {
        "event": "final",
        "stage": "live",
        "version": 3,
        "trigger_ts": _T,
        "devices": 298,
        "connected": 300,
        "p50_ms": 41.2,
        "p90_ms": 80.5,
        "p99_ms": 120.3,
        "max_ms": 133.0,
        "cdf": [{"ms": 12.0, "fraction": 0.01}, {"ms": 133.0, "fraction": 1.0}],
    },
    "origin": {"window_s": 10, "requests": 123, "rps": 12.3, "series": [{"t": _T, "rps": 11.0}]},
}
NODE_EXAMPLE = {"id": "title:301", "type": "title", "ts": _T, "props": {"name": "Harbour Lights"}}


# -- the router ------------------------------------------------------------------------------------


EventId = Annotated[
    str,
    Path(
        description="The live event's id: 1-64 of A-Z a-z 0-9 . _ : - starting with a letter "
        "or digit.",
        examples=["final"],
        pattern=bounds.EVENT_ID,
    ),
]
NodeId = Annotated[
    str,
    bounds.node_id_path(
        "Node id `type:key` (at most 250 bytes of UTF-8).", "profile:12-0", "node_id"
    ),
]
#: Where a timeline starts: a journey root (an account) or a profile (its account's timeline).
TimelineRoot = Annotated[
    str,
    bounds.node_id_path(
        "An account, or a profile (the timeline of its account); `type:key`.",
        "account:12",
        "timeline_root",
    ),
]


class Console:
    """The console's in-memory state for one app: device reports, the origin rate meter and the
    node directory (``app.state.console``)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.reports = DeviceReports()
        self.origin = RateMeter()
        self.directory = NodeDirectory()
        self._registry = registry

    def prefetch_total(self) -> float:
        """Prefetch responses so far (``hopcast_live_prefetch_responses_total``, all labels)."""
        if self._registry is None:
            return 0.0
        total = 0.0
        for family in self._registry.collect():
            if family.name == _PREFETCH_FAMILY:
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        return total

    def sample(self, now_us: int) -> None:
        self.origin.sample(now_us, time.monotonic(), self.prefetch_total())


def _node_doc(node: Any) -> dict[str, Any]:
    return {"id": node.id, "type": node.type, "ts": node.ts, "props": node.props}


def install(
    app: FastAPI,
    graph: Graph,
    registry: CollectorRegistry | None,
    *,
    live: LiveService | None = None,
    gateway: Gateway | None = None,
    ingest: IngestStats | None = None,
) -> Console:
    """Add the ``/v1/console`` routes to ``app``.

    ``app.state.console`` is the :class:`Console` (its ``directory`` takes node ids to search);
    ``app.state.ingest`` the ingest stats (a host may set it after the app is built).

    Args:
        registry: the app's metrics registry (the origin rate reads the live prefetch counter).
        live: the live service: the dashboard and the recommendation routes need it.
        gateway: the WebSocket gateway of this process, for the connected devices.
        ingest: the running pipeline's stats.
    """
    console = Console(registry)
    app.state.console = console
    app.state.ingest = ingest
    if live is not None:
        live.add_sink(console.reports.on_triggers)
    app.include_router(_router(graph, console, live, gateway))
    return console


def _router(
    graph: Graph, console: Console, live: LiveService | None, gateway: Gateway | None
) -> APIRouter:
    clock = live.clock if live is not None else graph.clock
    dead = DeadLetterStore(graph.store.kv)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sampler() -> None:
            while True:
                console.sample(clock())
                await asyncio.sleep(SAMPLE_EVERY_S)

        task = asyncio.create_task(sampler())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    router = APIRouter(prefix="/v1/console", tags=["console"], lifespan=lifespan)

    def connected() -> tuple[bool, int]:
        if gateway is None:
            return False, 0
        return True, int(gateway.stats().get("devices", 0))

    def need_live() -> LiveService:
        if live is None:
            raise NotFound("this server runs no live service")
        return live

    # -- reports and dashboard -----------------------------------------------------------------

    @router.post(
        "/reports",
        dependencies=[policy(Role.OPERATOR, device=True, limit=REPORTS)],
        summary="Device reports",
        description="Devices report what they hold (`prefetched`: the stages cached for an "
        "event) and what they show (`updated`: a stage and schedule version since `at`, µs). "
        f"At most {MAX_REPORTS} per request. The dashboard's coverage and time to update come "
        "from these. A device token reports for its own device only (403 otherwise); an "
        "operator key may relay a fleet's reports.",
        status_code=202,
        responses={
            202: {
                "description": "Accepted",
                "content": {"application/json": {"example": {"accepted": 2}}},
            },
            **{k: v for k, v in _ok(None, 400, 413, 422).items() if k != 200},
        },
        openapi_extra=_REPORTS_BODY,
    )
    async def reports(request: Request) -> Response:
        body = decode(await request.body(), ReportsRequest)
        if len(body.reports) > MAX_REPORTS:
            raise ApiError(
                413, "too_many_reports", f"{len(body.reports)} reports; at most {MAX_REPORTS}"
            )
        own = getattr(request.state, "device", None)
        if own is not None:
            # A device token speaks for its device: reports for others would let one token
            # fill an event's device bound with invented devices and skew the dashboard.
            for r in body.reports:
                if r.device != own:
                    raise ApiError(
                        403,
                        "forbidden",
                        f"a device token for {own!r} cannot report for device {r.device!r}",
                    )
        for r in body.reports:
            if isinstance(r, PrefetchedReport):
                console.reports.prefetched(r.device, r.event, r.stages)
            else:
                console.reports.updated(r.device, r.event, r.stage, r.version, r.at)
        return JSON({"accepted": len(body.reports)}, status_code=202)

    @router.get(
        "/dashboard",
        dependencies=[policy(Role.READER)],
        summary="Live dashboard",
        description="Connected devices, prefetch coverage of the stage devices need next, the "
        "time-to-update CDF of the event's last trigger, and the origin's prefetch requests per "
        "second. `event` defaults to the live event, else the next to start.",
        responses=_ok(DASHBOARD_EXAMPLE, 400, 404, 422),
    )
    async def dashboard(
        event: Annotated[
            str | None,
            Query(
                description="The event shown (its id); absent or empty: the live one, else the "
                "next to start.",
                pattern=bounds.OPTIONAL_EVENT_ID,
            ),
        ] = None,
        window: Annotated[
            int, Query(description="Seconds of the origin rate, 1 to 300.", ge=1, le=300)
        ] = 10,
    ) -> Response:
        if not 1 <= window <= 300:
            raise InvalidQuery(f"window must be between 1 and 300 seconds, got {window}")
        now = clock()
        console.sample(now)
        present, count = connected()
        chosen: LiveEvent | None = None
        if live is not None:
            chosen = live.get(event) if event else pick_event(live.events(), now)
        elif event:
            raise NotFound("this server runs no live service")
        requests, rps = console.origin.rate(window)
        doc: dict[str, Any] = {
            "now": now,
            "event": None,
            "devices": {"gateway": present, "connected": count},
            "prefetch": None,
            "time_to_update": None,
            "origin": {
                "window_s": window,
                "requests": int(requests),
                "rps": round(rps, 2),
                "series": console.origin.series(),
            },
        }
        if chosen is not None:
            stage = needed_stage(chosen)
            holding = console.reports.holding(chosen.id, stage)
            doc["event"] = {
                "id": chosen.id,
                "title": chosen.title,
                "state": chosen.state.value,
                "version": chosen.version,
                "starts_at": chosen.starts_at,
                "went_live_at": chosen.went_live_at,
            }
            doc["prefetch"] = {
                "stage": stage,
                "devices": holding,
                "connected": count,
                "coverage_pct": None if count == 0 else round(min(100.0, 100 * holding / count), 1),
            }
            doc["time_to_update"] = update_doc(console.reports, chosen, count)
        return JSON(doc)

    # -- recommendations -----------------------------------------------------------------------

    @router.post(
        "/events/{event_id}/materialise",
        dependencies=[policy(Role.OPERATOR, limit="operator")],
        summary="Materialise recommendations from the graph",
        description="Computes the event's recommendation rows from the graph (segments of "
        "members by affinity to the event, its teams and genres; rows ranked by co-watching and "
        "recency), publishes a content-addressed payload per stage and segment and stores the "
        "member → segment map that prefetch uses (`segment=<profile id>`). `node`: the event's "
        "graph node (default: the previous run's, else `live_event:<id>`, else the known "
        "`live_event` node named like the event's title, else the one with the largest "
        "audience); `max_segments` bounds the segments (default 8). A job: answers 202 with "
        "it (poll its `url`: progress in writes), or with `wait` the report (200) if the job "
        "finishes within that many seconds; 409 while the event has a job running, 429 "
        "`jobs_busy` when too much work is queued.",
        status_code=202,
        responses=jobs.responses(GRAPH_MATERIALISED_EXAMPLE)
        | _ok(
            GRAPH_MATERIALISED_EXAMPLE,
            400,
            404,
            422,
        ),
        openapi_extra=openapi.body(MaterialiseGraphRequest, required=False),
    )
    async def materialise(
        event_id: EventId, request: Request, wait: jobs.WaitParam = 0
    ) -> Response:
        service = need_live()
        raw = await request.body()
        body = (
            decode(raw, MaterialiseGraphRequest, "invalid_input")
            if raw.strip()
            else MaterialiseGraphRequest()
        )
        if body.node is not None:
            _known_type(graph, "node", body.node)
        service.get(event_id)  # 404 before anything is queued
        m = service.materialiser
        bound = body.max_segments or (m.max_segments if m is not None else 1)
        writes = bound * len(STAGE_KINDS) + 1  # a payload per stage and segment, the map

        def run(progress: Callable[[int, int], None]) -> dict[str, Any]:
            now = service.clock()
            node = body.node or _guess_node(graph, service, console.directory, event_id, now)
            try:
                report = service.materialise_graph(
                    event_id, now, node=node, max_segments=body.max_segments, progress=progress
                )
            except InvalidInput as exc:
                # The body fits its schema (node and max_segments are checked on decoding), so
                # what is left is the rule: without a node, one must be known for the event.
                raise ApiError(422, "no_graph_node", str(exc)) from None
            return report.to_dict()

        registry = jobs.jobs_of(request.app)
        job = registry.submit("materialise_graph", event_id, writes, run)
        return await jobs.answer(registry, job, wait)

    @router.get(
        "/events/{event_id}/segments",
        dependencies=[policy(Role.READER)],
        summary="Segments of a materialisation",
        description="The event's graph materialisation: segments with their rows, and with "
        "`member` that member's segment and the lookup's time.",
        responses=_ok(
            {
                "event": "final",
                "node": "live_event:4",
                "segments": [
                    {
                        "key": "team.7",
                        "label": "fans of Red Rovers",
                        "members": 130,
                        "rows": [
                            {
                                "title": "Popular with fans of Red Rovers",
                                "items": [{"id": "title:301", "name": "Harbour Lights"}],
                            }
                        ],
                    }
                ],
                "member": {"id": "profile:12-0", "segment": "team.7", "lookup_us": 3.1},
            },
            400,
            404,
        ),
    )
    async def segments(
        event_id: EventId,
        member: Annotated[
            str | None,
            Query(
                description="A member (profile id `type:key`) to look up; empty: none.",
                max_length=bounds.MAX_NODE_ID_CHARS,
                pattern=bounds.OPTIONAL_NODE_ID,
                json_schema_extra={bounds.MARK: "optional_node_id"},
            ),
        ] = None,
    ) -> Response:
        service = need_live()
        m = service.materialiser
        now = service.clock()
        state = None if m is None else m.state(event_id, now)
        if m is None or state is None:
            raise NotFound(f"live event {event_id!r} was never materialised from the graph")
        doc: dict[str, Any] = {
            "event": state.event,
            "node": state.node,
            "version": state.version,
            "max_segments": state.max_segments,
            "cardinality": state.cardinality,
            "members": state.members,
            "audience": state.audience,
            "segments": [
                {
                    "key": s.key,
                    "label": s.label,
                    "members": s.members,
                    "rows": [
                        {"title": r.title, "items": [{"id": i, "name": n} for i, n in r.items]}
                        for r in s.rows
                    ],
                }
                for s in state.segments
            ],
            "member": None,
        }
        if member:
            _known_type(graph, "member", member)
            started = time.perf_counter()
            found = m.segment_of(event_id, member, now)
            took = time.perf_counter() - started
            doc["member"] = {
                "id": member,
                "segment": found or "all",
                "lookup_us": round(took * 1e6, 2),
            }
        return JSON(doc)

    # -- graph explorer ------------------------------------------------------------------------

    @router.get(
        "/graph/search",
        dependencies=[policy(Role.READER)],
        summary="Find nodes",
        description="Nodes whose id starts with `q` (with `type`, `q` may omit the type). An "
        "exact id is always checked in the graph; prefixes are matched against the node "
        "directory (ids the host registered and every node the console has shown).",
        responses=_ok({"nodes": [NODE_EXAMPLE], "truncated": False}, 400, 422),
    )
    async def search(
        q_: Annotated[
            str,
            Query(
                alias="q",
                description="Id or id prefix (leading and trailing blanks ignored).",
                max_length=bounds.MAX_NODE_ID_CHARS,
            ),
        ] = "",
        type: Annotated[
            str | None,
            Query(
                description="Node type; absent or empty: every type.",
                pattern=bounds.OPTIONAL_NODE_TYPE,
                json_schema_extra={bounds.MARK: "optional_node_type"},
            ),
        ] = None,
        limit: Annotated[
            int, Query(description="Most nodes returned, 1 to 100.", ge=1, le=100)
        ] = 20,
    ) -> Response:
        if not 1 <= limit <= 100:
            raise InvalidQuery(f"limit must be between 1 and 100, got {limit}")
        kind = type or None
        if kind is not None and kind not in graph.schema.nodes:
            known = ", ".join(sorted(graph.schema.nodes))
            raise InvalidQuery(f"unknown node type {kind!r} (known: {known})")
        text = q_.strip()
        if kind is not None and ":" in text and not text.startswith(f"{kind}:"):
            return JSON({"nodes": [], "truncated": False})  # an id of another type: no match
        now = graph.clock()
        exact = text if ":" in text else (f"{kind}:{text}" if kind and text else None)
        ids: list[str] = []
        kind_, _, key_ = (exact or "").partition(":")
        known_type = kind_ in graph.schema.nodes and bool(key_)
        if exact is not None and known_type and graph.node(exact, now) is not None:
            ids.append(exact)
        found, truncated = console.directory.search(text, kind, limit)
        ids.extend(i for i in found if i != exact)
        ids = ids[:limit]
        nodes = [n for n in graph.nodes(ids, now) if n is not None] if ids else []
        return JSON({"nodes": [_node_doc(n) for n in nodes], "truncated": truncated})

    @router.get(
        "/graph/neighbourhood/{node_id:node_id}",
        dependencies=[policy(Role.READER)],
        summary="A node's neighbourhood",
        description="Nodes and edges within `depth` (1 or 2) hops in both directions, newest "
        f"edges first, `limit` edges per node, at most {MAX_NEIGHBOURHOOD_NODES} nodes; unique "
        "nodes and edges, ready to draw.",
        responses=_ok(
            {
                "center": "profile:12-0",
                "nodes": [{**NODE_EXAMPLE, "depth": 1}],
                "edges": [
                    {
                        "src": "profile:12-0",
                        "type": "started_watching",
                        "dst": "title:301",
                        "ts": _T,
                        "props": {},
                    }
                ],
                "truncated": False,
            },
            400,
            404,
            422,
        ),
    )
    async def neighbourhood(
        node_id: NodeId,
        depth: Annotated[int, Query(description="Hops, 1 or 2.", ge=1, le=2)] = 1,
        limit: Annotated[int, Query(description="Edges per node, 1 to 500.", ge=1, le=500)] = 50,
        edge: Annotated[
            str | None,
            Query(
                description="Edge types, comma-separated; absent or empty: all.",
                max_length=bounds.MAX_QUERY_CHARS,
                pattern=bounds.EDGES,
                json_schema_extra={bounds.MARK: "edges"},
            ),
        ] = None,
    ) -> Response:
        if depth not in (1, 2):
            raise InvalidQuery(f"depth must be 1 or 2, got {depth}")
        if not 1 <= limit <= 500:
            raise InvalidQuery(f"limit must be between 1 and 500, got {limit}")
        _known_type(graph, "node_id", node_id)
        types = edge_types(edge)
        now = graph.clock()
        center = graph.node(node_id, now)
        if center is None:
            raise NotFound(f"node {node_id!r} does not exist")
        depth_of = {node_id: 0}
        edges: dict[tuple[str, str, str], Edge] = {}
        frontier = [node_id]
        truncated = False
        for hop in range(1, depth + 1):
            following: list[str] = []
            for current in frontier:
                result = graph.neighbours(
                    current, types, direction="both", limit=limit, lookback="3650d", now=now
                )
                for e in result.edges:
                    other = e.other(current)
                    if other not in depth_of:
                        if len(depth_of) >= MAX_NEIGHBOURHOOD_NODES:
                            truncated = True
                            continue
                        depth_of[other] = hop
                        following.append(other)
                    edges.setdefault((e.src, e.type, e.dst), e)
            frontier = following
        ids = list(depth_of)
        console.directory.add(ids)
        found = dict(zip(ids, graph.nodes(ids, now), strict=True))
        nodes = []
        for nid in ids:
            n = found[nid]
            nodes.append(
                {
                    "id": nid,
                    "type": nid.partition(":")[0],
                    "depth": depth_of[nid],
                    "ts": None if n is None else n.ts,
                    "props": {} if n is None else n.props,
                }
            )
        return JSON(
            {
                "center": node_id,
                "nodes": nodes,
                "edges": [e.to_dict() for e in edges.values() if e.src in found and e.dst in found],
                "truncated": truncated,
            }
        )

    @router.get(
        "/graph/journey/{node_id:node_id}",
        dependencies=[policy(Role.READER)],
        summary="A member's journey as a timeline",
        description="The interactions of an account (or of a profile's account) across its "
        "profiles and devices, newest first, each with its vertical (`streaming`, `browse`, "
        "`games`, `live`), the device it happened on when known and the name of what it "
        "touched. Paged with `cursor`.",
        responses=_ok(
            {
                "account": "account:12",
                "members": ["account:12", "profile:12-0", "device:12-1"],
                "devices": ["device:12-1"],
                "verticals": ["streaming"],
                "entries": [
                    {
                        "ts": _T,
                        "type": "started_watching",
                        "src": "profile:12-0",
                        "dst": "title:301",
                        "dst_name": "Harbour Lights",
                        "device": "device:12-1",
                        "vertical": "streaming",
                        "props": {"position_s": 60, "device": "device:12-1"},
                    }
                ],
                "cursor": None,
            },
            400,
            404,
            422,
        ),
    )
    async def journey(
        node_id: TimelineRoot,
        since: Annotated[
            str | None,
            Query(
                description="µs since the epoch in [0, 2^62) or a duration such as `7d` before "
                "now; empty: the default lookback.",
                pattern=bounds.OPTIONAL_TIME_PATTERN,
            ),
        ] = None,
        limit: Annotated[
            int, Query(description=f"Entries per page, 1 to {q.MAX_RESULT}.", ge=1, le=q.MAX_RESULT)
        ] = 100,
        cursor: Annotated[
            str | None,
            Query(
                description="The previous page's cursor (opaque; one this server did not issue "
                "is a 422 `invalid_cursor`).",
                pattern=bounds.OPTIONAL_CURSOR,
            ),
        ] = None,
    ) -> Response:
        now = graph.clock()
        account = _account_of(graph, node_id, now)
        result = graph.journey(
            account,
            since=resolve_time("since", since, now),
            limit=limit,
            cursor=cursor or None,
            now=now,
        )
        targets = sorted({e.dst for e in result.entries})
        names = {}
        for nid, n in zip(targets, graph.nodes(targets, now) if targets else [], strict=True):
            name = None if n is None else n.props.get("name")
            if isinstance(name, str):
                names[nid] = name
        console.directory.add([account, *result.members, *targets])
        entries = [_entry(e, names) for e in result.entries]
        return JSON(
            {
                "account": account,
                "members": result.members,
                "devices": [m for m in result.members if m.startswith("device:")],
                "verticals": sorted({e["vertical"] for e in entries}),
                "entries": entries,
                "cursor": result.cursor,
            }
        )

    # -- ingest --------------------------------------------------------------------------------

    @router.get(
        "/ingest",
        dependencies=[policy(Role.READER)],
        summary="Ingest status",
        description="Events and mutations per second, lag per source, freshness (event time → "
        "queryable) and dead letters of the pipeline running in this process; `engine: false` "
        "when none runs here (dead letters are then counted in the store).",
        responses=_ok(
            {
                "engine": True,
                "events": 120345,
                "mutations": 480211,
                "events_per_s": 612.0,
                "mutations_per_s": 2440.5,
                "lag_bytes": {"playback": 0, "browse": 512},
                "lag_total_bytes": 512,
                "freshness_ms": {"p50": 38.1, "p99": 141.0},
                "dead_letters": 57,
                "dead_by_reason": {"decode": 31, "schema": 26},
            }
        ),
    )
    async def ingest(request: Request) -> Response:
        stats: IngestStats | None = getattr(request.app.state, "ingest", None)
        stored = await run_in_threadpool(dead.count)
        return JSON(ingest_doc(stats, stored))

    return router


#: Live-event nodes of the directory compared when guessing an event's node.
GUESS_CANDIDATES = 200


def _guess_node(
    graph: Graph, live: LiveService, directory: NodeDirectory, event_id: str, now: int
) -> str | None:
    """The graph node of an event created without one (e.g. from the console), when neither a
    previous materialisation nor ``live_event:<id>`` names it: among the ``live_event`` nodes
    of the directory, the one whose name is the event's title, else the one with the largest
    recent audience. None (the materialiser then asks for a node) when there is none."""
    m = live.materialiser
    if m is None or m.state(event_id, now) is not None:
        return None
    if graph.node(f"live_event:{event_id}", now) is not None:
        return None
    event = live.schedule.get(event_id)
    if event is None or "live_event" not in graph.schema.nodes:
        return None
    candidates, _ = directory.search("", "live_event", GUESS_CANDIDATES)
    nodes = [n for n in graph.nodes(candidates, now) if n is not None] if candidates else []
    if not nodes:
        return None
    title = event.title.strip().casefold()
    for node in nodes:
        name = node.props.get("name")
        if isinstance(name, str) and name.strip().casefold() == title:
            return node.id
    if "watched_live" not in graph.schema.edges:
        return None

    def audience(node_id: str) -> int:
        found = graph.count(node_id, "watched_live", direction="in", since="30d", now=now)
        return found.count

    return max((n.id for n in nodes), key=lambda n: (audience(n), n))


def _known_type(graph: Graph, name: str, node_id: str) -> None:
    """Raises InvalidQuery (400) unless ``node_id``'s type is in the graph's schema (the
    document narrows every node id pattern to those types)."""
    kind = node_id.partition(":")[0]
    if kind not in graph.schema.nodes:
        known = ", ".join(sorted(graph.schema.nodes))
        raise InvalidQuery(f"{name}: unknown node type {kind!r} (known: {known})")


def _account_of(graph: Graph, node_id: str, now: int) -> str:
    """The journey root of ``node_id``: itself for an account, a profile's account."""
    kind = node_id.partition(":")[0]
    root = graph.schema.journey.root if graph.schema.journey is not None else "account"
    if kind == root:
        return node_id
    if kind == "profile" and "has_profile" in graph.schema.edges:
        found = graph.neighbours(node_id, "has_profile", direction="in", limit=1, now=now)
        if found.edges:
            return found.edges[0].src
        raise NotFound(f"profile {node_id!r} belongs to no {root}")
    raise InvalidQuery(f"a journey starts at an {root} or a profile, not {node_id!r}")


def _entry(e: Edge, names: Mapping[str, str]) -> dict[str, Any]:
    props = e.props
    device = props.get("device")
    if e.type == "streamed_from":
        device = e.dst
    vertical = VERTICALS.get(e.type, "other")
    if e.type == "browsed" and e.dst.startswith("live_event:"):
        vertical = "live"
    return {
        "ts": e.ts,
        "type": e.type,
        "src": e.src,
        "dst": e.dst,
        "dst_name": names.get(e.dst),
        "device": device if isinstance(device, str) else None,
        "vertical": vertical,
        "props": props,
    }

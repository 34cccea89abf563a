"""The scripted live event of ``hopcast run``: scheduled, materialised from the graph, prefetched
by simulated devices, taken live on schedule, watched on the console's dashboard.

Steps (:class:`Scenario`):

1. :meth:`Scenario.schedule` — pick the demo company's live event with the largest audience in
   the graph, schedule it ``event_in_s`` from now (its prefetch window opening soon after, so
   prefetches are spread over most of the wait), and materialise its recommendation rows from
   the graph (:mod:`hopcast.live.materialise`) into at most ``max_segments`` segments;
2. :meth:`Scenario.start` — in a thread of its own (its own asyncio loop): ``devices`` light SDK
   clients (:class:`~hopcast.sdk.lightclient.LightClient`) connect to the gateway with
   development tokens, each on behalf of one member (profile); each prefetches the event's
   manifest for its member (``segment=<profile id>``: the graph segment) at its point of the
   window and applies the triggers as they come. What they do is reported to the console
   (:class:`~hopcast.api.console.DeviceReports`: ``prefetched``, ``updated``), so the dashboard
   shows coverage and the time-to-update CDF;
3. every ``refresh_s`` the live service re-materialises what changed materially in the graph
   (:meth:`~hopcast.live.service.LiveService.refresh_recommendations`) — the pipeline keeps
   filling it;
4. the live service's timers take the event live on schedule (the API's timer loop).

:meth:`Scenario.stop` closes the devices and stops the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from hopcast.api.console import DeviceReports
from hopcast.demo.company import Company
from hopcast.durations import SECOND, now_us
from hopcast.graphdb import Graph
from hopcast.live.materialise import MaterialState
from hopcast.live.messages import payload_ref
from hopcast.live.prefetch import window
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService
from hopcast.sdk.device import DeviceCore
from hopcast.sdk.lightclient import LightClient
from hopcast.sdk.origin import OriginError, OriginPool
from hopcast.sdk.protocol import DeviceEvent, TriggerApplied, Welcomed

logger = logging.getLogger("hopcast.demo")

#: Stages whose display needs the stage's payload (a device is updated once it has it).
DISPLAY_STAGES = frozenset({"live", "interrupted", "ended"})
#: Share of the wait before the start over which the prefetch window is open: it opens after a
#: fifth of the wait (the devices have connected), and closes before the start.
LEAD_SHARE = 0.8
#: Devices that connect per second (a gentle ramp, not a reconnect storm).
CONNECT_RATE = 200
#: Lifetime of the devices' tokens.
TOKEN_TTL = "12h"
#: Channel every device follows.
CHANNEL = "global"


@dataclass
class ScenarioOptions:
    """What the scripted event does (``hopcast run --event-in --devices --max-segments``)."""

    event_in_s: float = 180.0
    devices: int = 200
    max_segments: int = 8
    refresh_s: float = 15.0
    length_s: float = 600.0
    seed: int = 7


@dataclass
class ScenarioStats:
    """What the devices did so far (read by the display)."""

    connected: int = 0
    prefetched: int = 0
    prefetch_failures: int = 0
    updated: dict[str, int] = field(default_factory=dict)
    refreshes: int = 0
    republished: int = 0


def pick_event(graph: Graph, company: Company, now: int) -> str:
    """The company's live event with the most ``watched_live`` edges in the last 30 days."""
    ids = company.live_event_ids()
    if not ids:
        raise ValueError("the demo company has no live events")

    def audience(node: str) -> int:
        return graph.count(node, "watched_live", direction="in", since="30d", now=now).count

    return max(ids, key=lambda node: (audience(node), node))


class _Cache(dict[str, bytes]):
    """A device's payload cache that tells its device when a payload arrives."""

    def __init__(self, device: _Device) -> None:
        super().__init__()
        self._device = device

    def __setitem__(self, key: str, value: bytes) -> None:
        super().__setitem__(key, value)
        self._device.payload_arrived(key)


class _Device:
    """One simulated device on behalf of one member."""

    def __init__(self, fleet: _Fleet, index: int, member: str, token: str) -> None:
        self.fleet = fleet
        self.id = f"demo-{index:05d}"
        self.member = member
        self.token = token  # also the credential of its prefetch requests
        self.cache = _Cache(self)
        self.waiting: dict[str, tuple[str, int]] = {}  # payload ref -> (stage, version)
        self.client: DeviceCore = LightClient(
            fleet.gateway,
            token,
            [CHANNEL],
            rng=random.Random(fleet.seed * 1_000_003 + index),
            cache=self.cache,
            fetch=self.fetch_payload,
            on_event=self.on_event,
            refresh_token=self.refresh_token,
        )

    def on_event(self, event: DeviceEvent) -> None:
        match event:
            case Welcomed():
                self.fleet.stats.connected += 1
            case TriggerApplied(_, name, stage, version, _, payload):
                ref = payload or payload_ref(name, stage)
                if stage in DISPLAY_STAGES and ref not in self.cache:
                    self.waiting[ref] = (stage, version)  # shown once the payload arrives
                    return
                self.updated(name, stage, version)
            case _:
                pass

    def updated(self, event: str, stage: str, version: int) -> None:
        self.fleet.reports.updated(self.id, event, stage, version, now_us())
        stats = self.fleet.stats
        stats.updated[stage] = stats.updated.get(stage, 0) + 1

    def payload_arrived(self, ref: str) -> None:
        waiting = self.waiting.pop(ref, None)
        if waiting is not None:
            self.updated(ref.rpartition("/")[0], *waiting)

    async def fetch_payload(self, ref: str) -> bytes | None:
        """The SDK's fallback fetch of ``<event>/<stage>`` for this device's member."""
        event, _, stage = ref.rpartition("/")
        path = (
            f"/v1/live/events/{quote(event, safe='')}/payload"
            f"?stage={quote(stage, safe='')}&segment={quote(self.member, safe='')}"
        )
        answer = await self.fleet.pool.get(path, "payload", bearer=self.token)
        return answer.found(f"payload {ref}")

    async def fetch_manifest(self, path: str) -> bytes | None:
        answer = await self.fleet.pool.get(path, "manifest", bearer=self.token)
        return answer.found("manifest")

    async def refresh_token(self) -> str:
        self.token = await self.fleet.token(self.id)
        return self.token

    async def prefetch(self, event: str, opens_at: int, closes_at: int) -> None:
        path = (
            f"/v1/live/events/{quote(event, safe='')}/manifest"
            f"?segment={quote(self.member, safe='')}"
        )
        try:
            manifest = await self.client.prefetch(
                path,
                opens_at=opens_at,
                closes_at=closes_at,
                device_id=self.id,
                fetch=self.fetch_manifest,
            )
        except OriginError:
            self.fleet.stats.prefetch_failures += 1
            return
        if manifest is None:
            self.fleet.stats.prefetch_failures += 1
            return
        self.fleet.stats.prefetched += 1
        self.fleet.reports.prefetched(self.id, event, list(manifest.stages))


class _Fleet:
    """The devices of one scenario, on one asyncio loop."""

    def __init__(
        self,
        api: str,
        gateway: str,
        members: list[str],
        reports: DeviceReports,
        stats: ScenarioStats,
        seed: int,
    ) -> None:
        self.api = api
        self.gateway = gateway
        self.members = members
        self.reports = reports
        self.stats = stats
        self.seed = seed
        self.pool = OriginPool(api)

    async def token(self, device: str) -> str:
        body = json.dumps({"device": device, "channels": [CHANNEL], "ttl": TOKEN_TTL}).encode()
        answer = await self.pool.request("POST", "/v1/live/tokens", "token", body)
        if answer.status != 200:
            raise OriginError(f"token for {device}: HTTP {answer.status}")
        token: str = json.loads(answer.body)["token"]
        return token

    async def run(self, event: str, opens_at: int, closes_at: int, stop: asyncio.Event) -> None:
        """Connect the devices (at :data:`CONNECT_RATE`), prefetch, run until ``stop``."""
        tasks: list[asyncio.Task[None]] = []
        try:
            for index, member in enumerate(self.members):
                if stop.is_set():
                    break
                device = _Device(self, index, member, await self.token(f"demo-{index:05d}"))
                tasks.append(asyncio.create_task(device.client.run(stop)))
                tasks.append(asyncio.create_task(device.prefetch(event, opens_at, closes_at)))
                await asyncio.sleep(1 / CONNECT_RATE)
            await stop.wait()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pool.close()


class Scenario:
    """The scripted live event (see the module docstring).

    Args:
        options: what to run.
        graph: the graph the pipeline fills.
        service: the API's live service (its timers take the event live).
        reports: where device reports go (the console's).
        company: the demo company (its live events and members).
        api, gateway: the API's base URL and the gateway's WebSocket URL.
        say: prints a line for the operator.
    """

    def __init__(
        self,
        options: ScenarioOptions,
        graph: Graph,
        service: LiveService,
        reports: DeviceReports,
        company: Company,
        api: str,
        gateway: str,
        say: Callable[[str], None],
    ) -> None:
        self.options = options
        self.graph = graph
        self.service = service
        self.reports = reports
        self.company = company
        self.api = api
        self.gateway = gateway
        self.say = say
        self.stats = ScenarioStats()
        self.event_id: str | None = None
        self.state: MaterialState | None = None
        self._stop = threading.Event()
        self._loop_stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    def schedule(self, now: int) -> str:
        """Schedule the event and materialise its rows (step 1); returns the event id.

        Raises:
            HopcastError: the schedule or the materialisation failed.
        """
        opts = self.options
        node = pick_event(self.graph, self.company, now)
        found = self.graph.node(node, now)
        name = found.props.get("name") if found is not None else None
        title = name if isinstance(name, str) and name else node
        event_id = f"{node.replace(':', '-')}-{now // SECOND}"
        starts_at = now + int(opts.event_in_s * SECOND)
        lead = int(opts.event_in_s * LEAD_SHARE * SECOND)
        ends_at = starts_at + int(opts.length_s * SECOND)
        self.service.command(Create(event_id, title, starts_at, ends_at, lead), now)
        report = self.service.materialise_graph(
            event_id, now, node=node, max_segments=opts.max_segments
        )
        self.event_id, self.state = event_id, report.state
        s = report.state
        self.say(
            f"live event   {event_id} ({title}) goes live in {opts.event_in_s:g} s; "
            f"recommendations from the graph: {len(s.segments)} segments "
            f"(max {s.max_segments}), cardinality {s.cardinality} payloads, "
            f"{s.members:,} of {s.audience:,} members placed"
        )
        return event_id

    def members(self, count: int) -> list[str]:
        """The members the devices act for: placed members first (to show their segments),
        then other profiles."""
        assert self.event_id is not None
        materialiser = self.service.materialiser
        placed = []
        if materialiser is not None:
            placed = list(materialiser.assignments(self.event_id, now_us(), count // 2))
        rest = [p for p in self.company.profile_ids() if p not in set(placed)]
        rng = random.Random(self.options.seed)
        rng.shuffle(rest)
        return (placed + rest)[:count]

    def start(self) -> None:
        """Start the devices and the refresh loop (steps 2 and 3), each in a thread."""
        if self.event_id is None:
            raise RuntimeError("schedule the event first")
        event = self.service.get(self.event_id)
        opens_at, closes_at = window(
            event.starts_at, event.prefetch_lead_us, event.prefetch_opens_at
        )
        if self.options.devices:
            fleet = _Fleet(
                self.api,
                self.gateway,
                self.members(self.options.devices),
                self.reports,
                self.stats,
                self.options.seed,
            )
            ready = threading.Event()

            def devices() -> None:
                async def main() -> None:
                    self._loop = asyncio.get_running_loop()
                    self._loop_stop = asyncio.Event()
                    ready.set()
                    await fleet.run(self.event_id or "", opens_at, closes_at, self._loop_stop)

                try:
                    asyncio.run(main())
                except Exception:
                    logger.exception("the demo devices failed")
                finally:
                    ready.set()

            thread = threading.Thread(target=devices, name="demo-devices", daemon=True)
            thread.start()
            ready.wait(10)
            self._threads.append(thread)
        refresher = threading.Thread(target=self._refresh, name="demo-refresh", daemon=True)
        refresher.start()
        self._threads.append(refresher)

    def _refresh(self) -> None:
        while not self._stop.wait(self.options.refresh_s):
            try:
                reports = self.service.refresh_recommendations(now_us())
            except Exception:
                logger.exception("refreshing the recommendations failed")
                continue
            self.stats.refreshes += 1
            self.stats.republished += sum(1 for r in reports if r.changed)

    def status(self) -> str:
        """One line for the display: the event's state and what the devices did."""
        if self.event_id is None:
            return "-"
        event = self.service.get(self.event_id)
        st = self.stats
        updated = ", ".join(f"{k} {v}" for k, v in sorted(st.updated.items())) or "none yet"
        when = (event.starts_at - now_us()) / SECOND
        timing = f"starts in {when:,.0f} s" if when > 0 else event.state.value
        return (
            f"{self.event_id} {event.state.value} ({timing}); devices connected "
            f"{st.connected}/{self.options.devices}, prefetched {st.prefetched}, updated: "
            f"{updated}; recommendations refreshed {st.republished}x"
        )

    def stop(self) -> None:
        """Close the devices and stop the threads."""
        self._stop.set()
        loop, stop = self._loop, self._loop_stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just finished
                loop.call_soon_threadsafe(stop.set)
        for thread in self._threads:
            thread.join(timeout=30)

"""One simulator process: a fleet of real SDK devices, driven by the coordinator over queues.

:mod:`hopcast.sdk.simulator` starts several of these (:func:`main` in a subprocess), each
with its slice of the devices and its own loopback source address; commands come in and
messages go out as length-prefixed pickles on stdin and stdout (:class:`FramePipe`). A process:

1. starts its devices' client loops (:class:`~hopcast.sdk.lightclient.LightClient` or
   :class:`~hopcast.sdk.client.DeviceClient`) at ``connect_rate`` per second, each bound to
   ``local_host`` (one destination address:port takes ~28k connections from one source
   address) and round-robined over the gateway URLs;
2. on ``("plan", EventPlan)``: with prefetch, every device prefetches the event's manifest at
   its point of the prefetch window (the client's ``prefetch``); without, it waits;
3. applies triggers as they come (the SDK does); a device whose applied stage names a payload
   the cache lacks fetches it — the SDK's jittered fallback when the trigger names the payload,
   the same rule here when the gateway's triggers name none;
4. on ``("mark", µs)``: counts from then on which devices were welcomed again (a restart);
5. on ``("stop",)``: stops every device and sends back one :class:`DeviceRecord` per device
   and the origin request log.

Every ``PROGRESS_EVERY_S`` it sends a :class:`FleetProgress`. A device is *updated* to a stage
when the stage is applied and, for a stage that shows content (:data:`DISPLAY_STAGES`), its
payload is in the cache.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import pickle
import random
import sys
import threading
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import IO, Any, Protocol
from urllib.parse import quote

from hopcast.durations import HOUR, now_us
from hopcast.live import tokens
from hopcast.sdk.client import DeviceClient, payload_ref
from hopcast.sdk.device import DeviceCore
from hopcast.sdk.lightclient import LightClient
from hopcast.sdk.origin import OriginError, OriginPool
from hopcast.sdk.protocol import (
    DeviceEvent,
    Phase,
    TriggerApplied,
    Welcomed,
    fallback_fetch_delay,
)

#: Stages whose display needs the stage's payload (rows, artwork); the others (``prefetch``,
#: ``scheduled``, ``cancelled``) only change a badge.
DISPLAY_STAGES = frozenset({"live", "interrupted", "ended"})
#: How often a process reports its counts: smooth enough for a progress bar, cheap at 15k devices.
PROGRESS_EVERY_S = 0.25
#: Lifetime of the tokens the simulator signs: far longer than any run.
TOKEN_TTL_US = 6 * HOUR
#: How long stopping may take: each device closes its WebSocket (close timeout 1 s).
STOP_TIMEOUT_S = 30.0
#: Handshakes a process keeps in flight at most while connecting its devices: enough to fill a
#: gateway's accept loop, few enough that none waits out the 10 s open timeout.
MAX_PENDING_CONNECTS = 256
#: Connections started per pacing step (the launcher sleeps between steps).
_LAUNCH_STEP_S = 0.01
#: Cyclic-GC thresholds of a fleet process: collect young objects rarely (a trigger allocates
#: a few objects per device) and the old generation almost never; the devices themselves are
#: frozen once launched.
GC_THRESHOLDS = (100_000, 50, 1_000)
#: Tokens requested at once from a development token route (bounded by the origin pool anyway).
_TOKEN_BATCH = 256


class Queue(Protocol):
    """Where commands come from and messages go (the process's pipes, :class:`FramePipe`)."""

    def put(self, obj: Any) -> None: ...

    def get(self) -> Any: ...


def write_frame(stream: IO[bytes], obj: Any) -> None:
    """Write ``obj`` pickled, after its length (4 bytes, big-endian), and flush."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(4, "big") + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """Read one object written by :func:`write_frame` (between our own processes only: pickle
    trusts its input).

    Raises:
        EOFError: the stream ended.
    """
    header = stream.read(4)
    if len(header) < 4:
        raise EOFError("the stream ended")
    size = int.from_bytes(header, "big")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the stream ended inside a frame")
    return pickle.loads(data)


class FramePipe:
    """A :class:`Queue` over a pair of byte streams (``get`` reads, ``put`` writes)."""

    def __init__(self, reader: IO[bytes] | None, writer: IO[bytes] | None) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = threading.Lock()

    def get(self) -> Any:
        assert self._reader is not None
        return read_frame(self._reader)

    def put(self, obj: Any) -> None:
        assert self._writer is not None
        with self._lock:
            write_frame(self._writer, obj)


def main() -> None:
    """A fleet process's entry point (run with ``python -c``, so that the classes pickled keep
    this module's name): read a :class:`FleetSpec` frame from stdin, then
    commands; write progress and the result as frames to stdout. Anything printed goes to
    stderr, so stray output cannot corrupt the frames."""
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    frames_in = sys.stdin.buffer
    spec = read_frame(frames_in)
    fleet_main(spec, FramePipe(frames_in, None), FramePipe(None, frames_out))


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What one process simulates.

    Attributes:
        worker: the process's number (0-based).
        event: the id of the event the run creates; stages of other events (a running
            system's earlier ones, in the state sent on connect) are counted, not measured.
        first, count: its devices are ``first … first + count - 1`` of the whole fleet.
        gateways: WebSocket URLs; device ``i`` uses ``gateways[i % len(gateways)]``.
        api: the origin's ``http://host:port``.
        local_host: the source address of every socket (``None``: the kernel's choice).
        secret: signs device tokens here; ``None``: ask the API's development token route.
        connect_rate: device connections started per second by this process.
        segments: device ``i`` belongs to ``segments[i % len(segments)]``.
        fallback_window_s: a missing payload is fetched after a delay uniform in this window.
        pool_size: origin connections of the process.
        client: ``"light"`` (:class:`~hopcast.sdk.lightclient.LightClient`: the protocol core
            over a minimal WebSocket connection) or ``"sdk"``
            (:class:`~hopcast.sdk.client.DeviceClient` on ``websockets``).
        seed: seeds every device's RNG (with its index).
        channels: the channels every device follows.
    """

    worker: int
    event: str
    first: int
    count: int
    gateways: tuple[str, ...]
    api: str
    local_host: str | None
    secret: bytes | None
    connect_rate: float
    segments: tuple[str, ...]
    fallback_window_s: float
    pool_size: int
    seed: int
    client: str = "light"
    channels: tuple[str, ...] = ("global",)


@dataclass(frozen=True, slots=True)
class EventPlan:
    """The event the fleet follows, sent once it exists.

    Attributes:
        event: its id.
        opens_at, closes_at: its prefetch window, µs.
        prefetch: whether devices prefetch (else they fetch payloads at trigger time).
        spread: ``"hash"`` (each device's point from a hash of its id) or ``"rank"`` (the
            device's index in the fleet as its rank: the even golden-ratio spread).
    """

    event: str
    opens_at: int
    closes_at: int
    prefetch: bool = True
    spread: str = "hash"


@dataclass(frozen=True, slots=True)
class FleetProgress:
    """One process's counts at a moment (each ≤ its device count)."""

    worker: int
    open: int
    welcomed: int
    prefetched: int
    updated: dict[str, int]
    rewelcomed: int
    requests: int


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One stage a device applied: ``updated_at`` is ``None`` while its payload is missing."""

    version: int
    ts: int
    applied_at: int
    updated_at: int | None


@dataclass(slots=True)
class DeviceRecord:
    """Everything measured about one device (times in µs since the epoch)."""

    index: int
    gateway: int
    stages: dict[str, StageRecord]
    other_events: int
    applied_twice: int
    redelivered: int
    stale: int
    welcomes: list[int]
    connects: int
    connect_failures: int
    reconnects: int
    byes: int
    timeouts: int
    prefetched_at: int | None
    prefetch_failures: int
    payload_fetches: dict[str, int]
    fetch_failures: int


@dataclass(slots=True)
class FleetResult:
    """What a process sends back when stopped (``loop_lags_ms``: how late each progress tick
    woke, every :data:`PROGRESS_EVERY_S`)."""

    worker: int
    devices: list[DeviceRecord]
    requests: list[tuple[int, str]]
    request_failures: int
    token_failures: int = 0
    errors: list[str] = field(default_factory=list)
    loop_lags_ms: list[float] = field(default_factory=list)


def fleet_main(spec: FleetSpec, commands: Queue, out: Queue) -> None:
    """Run the fleet until stopped (the body of :func:`main`).

    Any error is reported as ``("error", worker, traceback)`` before the process exits.
    """
    try:
        _run_loop(_Fleet(spec, commands, out).run())
    except BaseException:
        out.put(("error", spec.worker, traceback.format_exc()))
        raise


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


class _Cache(dict[str, bytes]):
    """A device's payload cache that tells the device when a payload arrives."""

    __slots__ = ("device",)

    def __init__(self, device: _Device) -> None:
        super().__init__()
        self.device = device

    def __setitem__(self, key: str, value: bytes) -> None:
        super().__setitem__(key, value)
        self.device.payload_ready(key)


class _Device:
    """One simulated device: its SDK client and what the simulator observes of it."""

    def __init__(self, fleet: _Fleet, index: int, token: str) -> None:
        spec = fleet.spec
        self.fleet = fleet
        self.index = index
        self.token = token  # also the credential of its prefetch requests
        self.id = f"sim-{index:07d}"
        self.segment = spec.segments[index % len(spec.segments)]
        self.gateway = index % len(spec.gateways)
        self.rng = random.Random(spec.seed * 1_000_003 + index)
        self.cache = _Cache(self)
        self.stages: dict[str, StageRecord] = {}
        self.waiting: dict[str, str] = {}  # payload ref -> stage waiting for it
        self.versions: set[tuple[str, int]] = set()
        self.applied_twice = 0
        self.other_events = 0
        self.welcomes: list[int] = []
        self.prefetched_at: int | None = None
        self.prefetch_failures = 0
        self.payload_fetches: dict[str, int] = {}
        self.fetch_failures = 0
        self.own_fetches: set[str] = set()
        local = None if spec.local_host is None else (spec.local_host, 0)
        common: dict[str, Any] = {
            "rng": self.rng,
            "cache": self.cache,
            "fetch": self.fetch_payload,
            "on_event": self.on_event,
            "refresh_token": self.refresh_token,
            "fallback_window_s": spec.fallback_window_s,
        }
        url = spec.gateways[self.gateway]
        self.client: DeviceCore
        if spec.client == "sdk":
            options = {} if local is None else {"local_addr": local}
            self.client = DeviceClient(url, token, spec.channels, connect_options=options, **common)
        else:
            self.client = LightClient(url, token, spec.channels, local_addr=local, **common)

    # -- SDK callbacks -----------------------------------------------------------------------

    def on_event(self, event: DeviceEvent) -> None:
        now = now_us()
        match event:
            case Welcomed():
                if not self.welcomes:
                    self.fleet.first_welcomes += 1
                self.welcomes.append(now)
            case TriggerApplied(_, name, stage, version, ts, payload):
                if name == self.fleet.spec.event:
                    self.applied(name, stage, version, ts, payload, now)
                else:  # an older event on a running system: not part of this run
                    self.other_events += 1
            case _:
                pass

    async def fetch_payload(self, ref: str) -> bytes | None:
        """Fetch a stage payload by reference ``<event>/<stage>`` for this device's segment."""
        event, _, stage = ref.rpartition("/")
        ours = event == self.fleet.spec.event
        if ours:
            self.payload_fetches[stage] = self.payload_fetches.get(stage, 0) + 1
        path = (
            f"/v1/live/events/{quote(event, safe='')}/payload"
            f"?stage={quote(stage, safe='')}&segment={quote(self.segment, safe='')}"
        )
        answer = await self.fleet.pool.get(path, "payload" if ours else "other", bearer=self.token)
        return answer.found(f"payload {ref}")

    async def fetch_manifest(self, path: str) -> bytes | None:
        answer = await self.fleet.pool.get(path, "manifest", bearer=self.token)
        return answer.found("manifest")

    async def refresh_token(self) -> str:
        self.token = await self.fleet.token_for(self.id)
        return self.token

    # -- what the simulator observes ---------------------------------------------------------

    def applied(
        self, event: str, stage: str, version: int, ts: int, payload: str | None, now: int
    ) -> None:
        if (event, version) in self.versions:
            self.applied_twice += 1  # the SDK promises this never happens
        self.versions.add((event, version))
        ref = payload or payload_ref(event, stage)
        if stage not in DISPLAY_STAGES or ref in self.cache:
            self.stages[stage] = StageRecord(version, ts, now, now)
            self.fleet.count_updated(stage)
            return
        self.stages[stage] = StageRecord(version, ts, now, None)
        self.waiting[ref] = stage
        if payload is None and ref not in self.own_fetches:
            # The trigger names no payload: fetch it by the SDK's rule (jittered window).
            self.own_fetches.add(ref)
            self.fleet.spawn(self.fallback(ref))

    def payload_ready(self, ref: str) -> None:
        stage = self.waiting.pop(ref, None)
        if stage is None:
            return
        record = self.stages[stage]
        self.stages[stage] = StageRecord(record.version, record.ts, record.applied_at, now_us())
        self.fleet.count_updated(stage)

    async def fallback(self, ref: str) -> None:
        await asyncio.sleep(fallback_fetch_delay(self.rng, self.fleet.spec.fallback_window_s))
        if ref in self.cache:
            return
        try:
            body = await self.fetch_payload(ref)
        except OriginError:
            self.fetch_failures += 1
            return
        if body is None:
            self.fetch_failures += 1
            return
        self.cache[ref] = body

    async def prefetch(self, plan: EventPlan) -> None:
        path = (
            f"/v1/live/events/{quote(plan.event, safe='')}/manifest"
            f"?segment={quote(self.segment, safe='')}"
        )
        by_rank = plan.spread == "rank"
        try:
            manifest = await self.client.prefetch(
                path,
                opens_at=plan.opens_at,
                closes_at=plan.closes_at,
                device_id=None if by_rank else self.id,
                rank=self.index if by_rank else None,
                fetch=self.fetch_manifest,
            )
        except OriginError:
            self.prefetch_failures += 1
            return
        if manifest is None:
            self.prefetch_failures += 1
            return
        self.prefetched_at = now_us()
        self.fleet.prefetched += 1

    def record(self) -> DeviceRecord:
        stats = self.client.stats
        return DeviceRecord(
            index=self.index,
            gateway=self.gateway,
            stages=dict(self.stages),
            other_events=self.other_events,
            applied_twice=self.applied_twice,
            redelivered=stats.duplicates,
            stale=stats.stale,
            welcomes=self.welcomes,
            connects=stats.connects,
            connect_failures=stats.connect_failures,
            reconnects=stats.reconnects,
            byes=stats.byes,
            timeouts=stats.timeouts,
            prefetched_at=self.prefetched_at,
            prefetch_failures=self.prefetch_failures,
            payload_fetches=self.payload_fetches,
            fetch_failures=self.fetch_failures + stats.fallback_failures,
        )


class _Fleet:
    def __init__(self, spec: FleetSpec, commands: Queue, out: Queue) -> None:
        self.spec = spec
        self.commands = commands
        self.out = out
        self.devices: list[_Device] = []
        self.updated: dict[str, int] = {}
        self.prefetched = 0
        self.first_welcomes = 0
        self.mark: int | None = None
        self.token_failures = 0
        self.loop_lags_ms: list[float] = []
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.pool: OriginPool  # created in run(), on the loop

    def count_updated(self, stage: str) -> None:
        self.updated[stage] = self.updated.get(stage, 0) + 1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(repr(task.exception()))

    async def token_for(self, device_id: str) -> str:
        if self.spec.secret is not None:
            return tokens.issue(
                self.spec.secret, device_id, self.spec.channels, now_us(), TOKEN_TTL_US
            )
        body = json.dumps({"device": device_id, "channels": list(self.spec.channels)})
        answer = await self.pool.request("POST", "/v1/live/tokens", "token", body.encode())
        if answer.status != 200:
            self.token_failures += 1
            raise OriginError(f"token for {device_id}: HTTP {answer.status}")
        token: str = json.loads(answer.body)["token"]
        return token

    async def run(self) -> None:
        spec = self.spec
        gc.set_threshold(*GC_THRESHOLDS)
        self.pool = OriginPool(spec.api, local_host=spec.local_host, size=spec.pool_size)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        indexes = range(spec.first, spec.first + spec.count)
        for start in range(0, len(indexes), _TOKEN_BATCH):
            batch = indexes[start : start + _TOKEN_BATCH]
            issued = await asyncio.gather(*(self.token_for(f"sim-{i:07d}") for i in batch))
            self.devices += [
                _Device(self, i, token) for i, token in zip(batch, issued, strict=True)
            ]
        runs: list[asyncio.Task[None]] = []
        launcher = asyncio.ensure_future(self._launch(stop, runs))
        reporter = asyncio.ensure_future(self._report())
        try:
            while True:
                command = await loop.run_in_executor(None, self.commands.get)
                match command:
                    case ("plan", EventPlan() as plan):
                        if plan.prefetch:
                            for device in self.devices:
                                self.spawn(device.prefetch(plan))
                    case ("mark", int(at)):
                        self.mark = at
                    case ("stop",):
                        break
                    case _:
                        raise ValueError(f"unknown command {command!r}")
        finally:
            stop.set()
            launcher.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait_for(
                asyncio.gather(*runs, *self._tasks, return_exceptions=True), STOP_TIMEOUT_S
            )
            reporter.cancel()
            await self.pool.close()
        self.out.put(("progress", spec.worker, self.progress()))
        self.out.put(
            (
                "done",
                spec.worker,
                FleetResult(
                    worker=spec.worker,
                    devices=[device.record() for device in self.devices],
                    requests=self.pool.log,
                    request_failures=self.pool.failures,
                    token_failures=self.token_failures,
                    errors=self.errors[:20],
                    loop_lags_ms=self.loop_lags_ms,
                ),
            )
        )

    async def _launch(self, stop: asyncio.Event, runs: list[asyncio.Task[None]]) -> None:
        """Start the device loops at ``connect_rate`` per second, and never more than
        :data:`MAX_PENDING_CONNECTS` ahead of the devices welcomed: a gateway slower than the
        rate then sets the pace, instead of handshakes timing out and retrying."""
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        for i, device in enumerate(self.devices):
            due = started_at + i / self.spec.connect_rate
            if due > loop.time():
                await asyncio.sleep(max(due - loop.time(), _LAUNCH_STEP_S))
            while i - self.first_welcomes >= MAX_PENDING_CONNECTS:
                await asyncio.sleep(_LAUNCH_STEP_S)
            runs.append(asyncio.ensure_future(self._run_device(device, stop)))
        # Everything alive now lives until the end: keep full collections from walking it
        # (their pauses would be charged to the system's time to update).
        gc.collect()
        gc.freeze()

    async def _run_device(self, device: _Device, stop: asyncio.Event) -> None:
        try:
            await device.client.run(stop)
        except Exception as exc:  # a device's failure is measured, not fatal to the fleet
            self.errors.append(f"{device.id}: {exc!r}")

    async def _report(self) -> None:
        """Send the progress; and time how late each wake-up is: the event loop's lag, i.e.
        how far behind the devices of this process run (a busy simulator, not the system)."""
        loop = asyncio.get_running_loop()
        while True:
            self.out.put(("progress", self.spec.worker, self.progress()))
            due = loop.time() + PROGRESS_EVERY_S
            await asyncio.sleep(PROGRESS_EVERY_S)
            self.loop_lags_ms.append(round((loop.time() - due) * 1000, 1))

    def progress(self) -> FleetProgress:
        mark = self.mark
        return FleetProgress(
            worker=self.spec.worker,
            open=sum(1 for d in self.devices if d.client.protocol.phase is Phase.OPEN),
            welcomed=sum(1 for d in self.devices if d.welcomes),
            prefetched=self.prefetched,
            updated=dict(self.updated),
            rewelcomed=0
            if mark is None
            else sum(1 for d in self.devices if d.welcomes and d.welcomes[-1] >= mark),
            requests=len(self.pool.log) if hasattr(self, "pool") else 0,
        )


__all__ = [
    "DISPLAY_STAGES",
    "DeviceRecord",
    "EventPlan",
    "FleetProgress",
    "FleetResult",
    "FleetSpec",
    "FramePipe",
    "StageRecord",
    "fleet_main",
    "read_frame",
    "write_frame",
]

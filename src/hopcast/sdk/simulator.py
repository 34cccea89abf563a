"""The load harness: thousands of real SDK devices through a live event, measured.

``hopcast live simulate`` and :func:`simulate` run N simulated devices — each a real
:class:`~hopcast.sdk.client.DeviceClient` with its own WebSocket — spread over P processes
(:mod:`hopcast.sdk.fleet`), through one live event's timeline, and write a JSON report and PNG
charts (:mod:`hopcast.sdk.loadreport`).

Limits of the machine it is designed around: a process may hold 20,000 open files (hard limit),
so a process runs at most :data:`MAX_DEVICES_PER_PROCESS` devices; and one destination
address:port takes ~28k connections from one source address (the ephemeral port range), so each
process binds its sockets to its own loopback source address (``127.0.0.2``, ``127.0.0.3``, …)
when the system under test is on loopback.

The timeline of one run (:meth:`_Run.execute`):

1. start the system — by default an embedded one: ``hopcast serve --gateway-port`` in a
   subprocess on a temporary store, free loopback ports and a fresh ``$HOPCAST_LIVE_SECRET``;
   or a running one (``api`` and ``gateways``, tokens signed with ``secret`` or taken from the
   development token route);
2. start the processes; each connects its devices at its share of ``connect_rate``; wait until
   every device is connected;
3. create the event over HTTP: it starts ``window_s`` (plus :data:`SETUP_S`) from now with
   ``prefetch_lead = window_s``, and publish its payloads (``materialise``) for the devices'
   segments; the prefetch window is the schedule's (:func:`~hopcast.live.prefetch.window`);
4. with prefetch, every device fetches its manifest at its point of the window; without, none
   does and each fetches the stage payload when the trigger arrives (fallback window 0 unless
   set, i.e. the naive client whose spike prefetching avoids);
5. the schedule's timer broadcasts ``live``; wait until every device shows it;
6. with ``restart``: stop the server (SIGTERM: the gateway's ``bye restart`` with spread delays),
   start it again on the same store and ports (the schedule is persisted), and wait until every
   device is welcomed again;
7. end the event over HTTP (a second transition, after the restart if any, and at least
   :data:`END_GAP_S` after the start); wait until every
   device shows ``ended``;
8. stop the processes, gather their records, build the report.

Every wait has a deadline; a run that misses it still reports (as misses), it does not hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hopcast.durations import SECOND, now_us
from hopcast.errors import ConfigError, HopcastError
from hopcast.live.fixtures import demo_segmenter
from hopcast.live.prefetch import window
from hopcast.sdk.embedded import EmbeddedSystem, http_call, is_loopback
from hopcast.sdk.fleet import (
    DeviceRecord,
    EventPlan,
    FleetProgress,
    FleetResult,
    FleetSpec,
    FramePipe,
    read_frame,
)
from hopcast.sdk.loadreport import percentiles, run_report, ttu_values, write_charts, write_report
from hopcast.sdk.origin import DEFAULT_POOL_SIZE
from hopcast.sdk.protocol import FALLBACK_WINDOW_S

#: Devices per process: each holds a socket (one open file), under the 20,000 hard limit with
#: room for the origin pool, the interpreter and the event loop.
MAX_DEVICES_PER_PROCESS = 15_000
#: Connections started per second by the whole fleet, by default: what one gateway process
#: accepts while sharing two cores with the simulator (measured here, see the report's
#: ``connect.rate_per_s``); a real fleet connects far slower.
DEFAULT_CONNECT_RATE = 2_000.0
#: Segments the devices are spread over (round robin): a handful of distinct payloads, like a
#: real event's cardinality, without making ``materialise`` slow.
DEFAULT_SEGMENTS = 8
#: Set-up time between creating the event and opening its prefetch window: enough to publish
#: the payloads and tell every process the plan before the first device's point, on a server
#: busy with tens of thousands of connections (a late plan bunches the first points together).
SETUP_S = 2.0
#: Slack added to every wait beyond what the timeline itself needs.
DEFAULT_TIMEOUT_S = 60.0
#: Time for a process to start (spawn re-imports hopcast) and sign its tokens.
WORKER_START_TIMEOUT_S = 120.0
#: Least time between the start and the end: the two triggers' origin loads (without prefetch)
#: then fall in different seconds of the report's series.
END_GAP_S = 2.0
#: The stages every run drives, in order (the prefetch window's opening, the start, the end).
STAGES = ("prefetch", "live", "ended")
_POLL_S = 0.05


@dataclass(frozen=True)
class SimConfig:
    """One simulation's parameters.

    Attributes:
        devices: simulated devices (N).
        processes: simulator processes (P); ``devices / processes`` at most
            :data:`MAX_DEVICES_PER_PROCESS`.
        window_s: the prefetch lead time: the event starts this long after the prefetch window
            opens. The schedule closes the window before the start (half the lead, or a
            minute for leads over two minutes); devices spread their fetches over it.
        prefetch: devices prefetch in the window; otherwise they fetch at trigger time.
        restart: restart the server after the trigger (embedded system only).
        api: a running system's API (``http://host:port``); ``None`` starts an embedded one.
        gateways: that system's gateway URLs; devices are spread over them round robin.
        secret: signs device tokens for a running system; ``None``: its development token route.
        connect_rate: connections started per second, whole fleet.
        fallback_window_s: devices fetch a missing payload after a delay uniform in this window;
            ``None``: the SDK's default with prefetch, 0 without (fetch when the trigger comes).
        spread: ``"hash"`` (a device's point of the window from its id) or ``"rank"`` (its
            index as a server-given rank: the even golden-ratio spread).
        segments: how many of the demo segments the devices are spread over.
        pool_size: origin connections per process.
        client: ``"light"``: devices run the SDK's protocol core
            (:class:`~hopcast.sdk.protocol.DeviceProtocol`) over a minimal WebSocket connection
            (:mod:`hopcast.sdk.lightclient`), cheap enough for 15k per process; ``"sdk"``: each
            device is a full :class:`~hopcast.sdk.client.DeviceClient` on ``websockets``.
        source_hosts: the source address of each process; ``None``: ``127.0.0.2`` … when the
            system is on loopback, the kernel's choice otherwise.
        timeout_s: slack of every wait.
        seed: seeds every device's randomness.
        show_progress: progress bars on stderr.
    """

    devices: int = 1_000
    processes: int = 2
    window_s: float = 30.0
    prefetch: bool = True
    restart: bool = False
    api: str | None = None
    gateways: tuple[str, ...] = ()
    secret: bytes | None = None
    connect_rate: float = DEFAULT_CONNECT_RATE
    fallback_window_s: float | None = None
    spread: str = "hash"
    segments: int = DEFAULT_SEGMENTS
    pool_size: int = DEFAULT_POOL_SIZE
    client: str = "light"
    source_hosts: tuple[str, ...] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    seed: int = 1
    show_progress: bool = True

    def check(self) -> None:
        """Raises: ConfigError: for parameters that cannot run."""
        if self.devices < 1 or self.processes < 1:
            raise ConfigError("devices and processes must be at least 1")
        if self.processes > self.devices:
            raise ConfigError("more processes than devices")
        per = -(-self.devices // self.processes)
        if per > MAX_DEVICES_PER_PROCESS:
            least = -(-self.devices // MAX_DEVICES_PER_PROCESS)
            raise ConfigError(
                f"{per} devices per process is over {MAX_DEVICES_PER_PROCESS} (open-files limit "
                f"20,000 per process): use --processes {least} or more"
            )
        if self.window_s <= 0:
            raise ConfigError("the window must be positive")
        if self.connect_rate <= 0:
            raise ConfigError("the connect rate must be positive")
        if self.client not in ("light", "sdk"):
            raise ConfigError(f"client must be 'light' or 'sdk', got {self.client!r}")
        if self.spread not in ("hash", "rank"):
            raise ConfigError(f"spread must be 'hash' or 'rank', got {self.spread!r}")
        if (self.api is None) != (not self.gateways):
            raise ConfigError("give both the API URL and at least one gateway URL, or neither")
        if self.restart and self.api is not None:
            raise ConfigError("--restart needs the embedded system (it restarts the server)")
        if not 1 <= self.segments <= len(demo_segmenter().segments()):
            raise ConfigError("segments must be between 1 and the demo segmenter's count")
        if self.source_hosts is not None and len(self.source_hosts) < self.processes:
            raise ConfigError("give one source address per process")

    @property
    def mode(self) -> str:
        return "prefetch" if self.prefetch else "no_prefetch"

    def parameters(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("secret")
        doc.pop("show_progress")
        doc["gateways"] = list(self.gateways)
        doc["mode"] = self.mode
        doc["fallback_window_s"] = self.effective_fallback_window()
        return doc

    def effective_fallback_window(self) -> float:
        if self.fallback_window_s is not None:
            return self.fallback_window_s
        return FALLBACK_WINDOW_S if self.prefetch else 0.0


@dataclass
class SimRun:
    """One run: its report and every device's time to update per stage (for the CDF)."""

    report: dict[str, Any]
    times: dict[str, list[float]]


@dataclass
class SimResult:
    """What :func:`simulate` produced."""

    runs: list[SimRun]
    report_path: Path | None = None
    charts: list[Path] = field(default_factory=list)


def simulate(
    config: SimConfig, out: Path | None = None, *, compare_prefetch: bool = False
) -> SimResult:
    """Run the simulation (twice, with and without prefetch, if ``compare_prefetch``) and write
    ``report.json`` and the charts into ``out`` when given.

    Raises:
        ConfigError: parameters that cannot run.
        HopcastError: the system or a simulator process failed.
        ImportError: charts were asked for (``out``) and matplotlib is missing.
    """
    config.check()
    configs = [config]
    if compare_prefetch:
        configs = [replace(config, prefetch=True), replace(config, prefetch=False)]
    runs = [run_once(c) for c in configs]
    result = SimResult(runs)
    if out is not None:
        parameters = config.parameters()
        if compare_prefetch:
            parameters["mode"] = "compare"
        result.report_path = write_report(out, [r.report for r in runs], parameters)
        cdfs = {
            f"{r.report['mode']} {stage}": values
            for r in runs
            for stage, values in r.times.items()
            if stage != "prefetch"
        }
        result.charts = write_charts(out, [r.report for r in runs], cdfs)
    return result


def run_once(config: SimConfig) -> SimRun:
    """One run of the timeline (module docstring) with ``config``.

    Raises:
        ConfigError, HopcastError: as :func:`simulate`.
    """
    config.check()
    with _sigterm_exits(), _system(config) as system:
        run = _Run(config, system)
        try:
            return run.execute()
        finally:
            run.kill_processes()  # no-op after a clean stop


# -- the system under test ---------------------------------------------------------------------


@dataclass
class _Target:
    api: str
    gateways: tuple[str, ...]
    secret: bytes | None
    embedded: EmbeddedSystem | None = None


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While running, SIGTERM raises SystemExit (in the main thread), so the embedded server and
    the processes are stopped on the way out instead of being orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _system(config: SimConfig) -> Iterator[_Target]:
    if config.api is not None:
        yield _Target(config.api.rstrip("/"), config.gateways, config.secret)
        return
    with tempfile.TemporaryDirectory(prefix="hopcast-sim-") as tmp:
        system = EmbeddedSystem(Path(tmp), os.urandom(32))
        system.start()
        try:
            yield _Target(system.api, (system.gateway,), system.secret, system)
        finally:
            system.close()


# -- one run -------------------------------------------------------------------------------------


class _Run:
    def __init__(self, config: SimConfig, target: _Target) -> None:
        self.config = config
        self.target = target
        self.progress: dict[int, FleetProgress] = {}
        self.results: dict[int, FleetResult] = {}
        self.timeline: dict[str, int] = {}
        self.server_counts: list[int] = []
        self.notes: list[str] = []
        self.event = f"sim-{os.getpid()}-{now_us() % 10**9}"
        self._out: queue.Queue[tuple[str, int, Any]] = queue.Queue()
        self._procs: list[_Worker] = []
        self._bars: Progress | None = None
        self._bar_ids: dict[str, Any] = {}

    # -- steps ---------------------------------------------------------------------------------

    def execute(self) -> SimRun:
        config, n = self.config, self.config.devices
        event = self.event
        with self._progress_bars():
            # 2. processes and connections
            self.timeline["connect_started_at"] = now_us()
            self._start_processes()
            connect_budget = n / config.connect_rate + config.timeout_s
            self._wait("connect", lambda p: p["open"] >= n, connect_budget)
            # 3. the event and its payloads
            base = self._server_prefetch_count()
            created = now_us()
            lead = round(config.window_s * SECOND)
            starts_at = created + round(SETUP_S * SECOND) + lead
            doc = self._api(
                "POST",
                "/v1/live/events",
                {
                    "id": event,
                    "title": "Simulated event",
                    "starts_at": starts_at,
                    "prefetch_lead": lead,
                },
            )
            segments = self._segments()
            # wait for the job (hopcast.api.jobs): the devices prefetch what it publishes
            path = f"/v1/live/events/{event}/materialise?wait=60"
            self._api("POST", path, {"segments": segments})
            opens_at, closes_at = window(doc["starts_at"], lead, doc["prefetch_opens_at"])
            self.timeline |= {
                "created_at": created,
                "opens_at": opens_at,
                "closes_at": closes_at,
                "starts_at": starts_at,
            }
            # 4. prefetch (or not) in the window
            plan = EventPlan(event, opens_at, closes_at, config.prefetch, config.spread)
            self._send(("plan", plan))
            self.timeline["plan_sent_at"] = now_us()
            if self.timeline["plan_sent_at"] > opens_at:
                late = (self.timeline["plan_sent_at"] - opens_at) / SECOND
                self.notes.append(f"the plan reached the devices {late:.3f} s into the window")
            # 5. the trigger
            live_budget = (starts_at - now_us()) / SECOND + self._fetch_budget()
            self._wait("live", lambda p: p["updated"].get("live", 0) >= n, live_budget)
            self.timeline["live_ts"] = self._event(event).get("went_live_at") or starts_at
            # 6. the restart
            if config.restart:
                assert self.target.embedded is not None
                self.server_counts.append(self._server_prefetch_count() - base)
                base = 0  # the restarted server counts from zero
                mark = now_us()
                self.timeline["restart_at"] = mark
                self._send(("mark", mark))
                self.target.embedded.restart()
                self.timeline["restarted_at"] = now_us()
                self._wait("reconnect", lambda p: p["rewelcomed"] >= n, config.timeout_s)
            # 7. the end, apart from the start so their origin loads fall in different seconds
            time.sleep(max(0.0, (self.timeline["live_ts"] - now_us()) / SECOND + END_GAP_S))
            self._api("POST", f"/v1/live/events/{event}/end", {})
            self.timeline["ended_ts"] = self._event(event).get("ended_at") or now_us()
            self._wait("ended", lambda p: p["updated"].get("ended", 0) >= n, self._fetch_budget())
            self.server_counts.append(self._server_prefetch_count() - base)
            # 8. records
            self._stop_processes()
        records = [
            d for r in sorted(self.results.values(), key=lambda r: r.worker) for d in r.devices
        ]
        requests = sorted(req for r in self.results.values() for req in r.requests)
        parameters = config.parameters()
        if config.api is None:
            parameters["system"] = "embedded"
        report = run_report(
            mode=config.mode,
            parameters=parameters,
            timeline=self.timeline,
            records=records,
            requests=requests,
            stages=STAGES,
            server_requests=sum(self.server_counts) if self.server_counts else None,
            extra={
                "simulator": {
                    "request_failures": sum(r.request_failures for r in self.results.values()),
                    "token_failures": sum(r.token_failures for r in self.results.values()),
                    "errors": [e for r in self.results.values() for e in r.errors][:20],
                    "loop_lag_ms": percentiles(
                        [lag for r in self.results.values() for lag in r.loop_lags_ms]
                    ),
                    "notes": self.notes,
                }
            },
        )
        return SimRun(report, {s: ttu_values(records, s) for s in STAGES})

    def _fetch_budget(self) -> float:
        return self.config.effective_fallback_window() + self.config.timeout_s

    def _segments(self) -> list[str]:
        every = demo_segmenter().segments()
        step = len(every) / self.config.segments
        return [every[int(i * step)] for i in range(self.config.segments)]

    # -- processes -----------------------------------------------------------------------------

    def _start_processes(self) -> None:
        config = self.config
        self._out = queue.Queue()
        hosts = config.source_hosts
        if hosts is None and is_loopback(self.target.api):
            hosts = tuple(f"127.0.0.{2 + k}" for k in range(config.processes))
        per, extra = divmod(config.devices, config.processes)
        first = 0
        for k in range(config.processes):
            count = per + (1 if k < extra else 0)
            spec = FleetSpec(
                worker=k,
                event=self.event,
                first=first,
                count=count,
                gateways=self.target.gateways,
                api=self.target.api,
                local_host=None if hosts is None else hosts[k],
                secret=self.target.secret,
                connect_rate=config.connect_rate * count / config.devices,
                segments=tuple(self._segments()),
                fallback_window_s=config.effective_fallback_window(),
                pool_size=config.pool_size,
                seed=config.seed,
                client=config.client,
            )
            self._procs.append(_Worker.start(spec, self._out))
            first += count

    def _send(self, command: tuple[Any, ...]) -> None:
        for worker in self._procs:
            worker.send(command)

    def _stop_processes(self) -> None:
        self._send(("stop",))
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while len(self.results) < len(self._procs) and time.monotonic() < deadline:
            self._drain(0.2)
        for worker in self._procs:
            worker.finish()
        if len(self.results) < len(self._procs):
            raise HopcastError("a simulator process did not report back")

    def _drain(self, block_s: float) -> None:
        """Take every message the processes sent (waiting up to ``block_s`` for the first)."""
        try:
            message = self._out.get(timeout=block_s)
        except queue.Empty:
            return
        while True:
            kind, worker, body = message
            if kind == "progress":
                self.progress[worker] = body
            elif kind == "done":
                self.results[worker] = body
            elif kind == "error":
                self._abort()
                raise HopcastError(f"simulator process {worker} failed:\n{body}")
            elif kind == "eof" and worker not in self.results:
                self._abort()
                tail = self._procs[worker].log_tail()
                raise HopcastError(f"simulator process {worker} exited early:\n{tail}")
            try:
                message = self._out.get_nowait()
            except queue.Empty:
                break
        self._refresh_bars()

    def _abort(self) -> None:
        self.kill_processes()

    def kill_processes(self) -> None:
        for worker in self._procs:
            worker.kill()

    def _totals(self) -> dict[str, Any]:
        totals: dict[str, Any] = {"open": 0, "welcomed": 0, "prefetched": 0, "rewelcomed": 0}
        updated: dict[str, int] = {}
        for p in self.progress.values():
            totals["open"] += p.open
            totals["welcomed"] += p.welcomed
            totals["prefetched"] += p.prefetched
            totals["rewelcomed"] += p.rewelcomed
            for stage, count in p.updated.items():
                updated[stage] = updated.get(stage, 0) + count
        totals["updated"] = updated
        return totals

    def _wait(self, what: str, done: Callable[[dict[str, Any]], bool], budget_s: float) -> bool:
        """Pump progress until ``done(totals)`` or the budget runs out (noted, not raised)."""
        deadline = (
            time.monotonic() + budget_s + (WORKER_START_TIMEOUT_S if what == "connect" else 0)
        )
        while time.monotonic() < deadline:
            self._drain(_POLL_S)
            if len(self.progress) == len(self._procs) and done(self._totals()):
                return True
        self.notes.append(f"timed out waiting for {what} after {budget_s:.0f} s")
        return False

    # -- progress bars -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _progress_bars(self) -> Iterator[None]:
        if not self.config.show_progress:
            yield
            return
        bars = Progress(
            TextColumn("[bold]{task.description:>12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        n = self.config.devices
        names = ["connected"]
        if self.config.prefetch:
            names.append("prefetched")
        names.append("live")
        if self.config.restart:
            names.append("reconnected")
        names.append("ended")
        with bars:
            self._bars = bars
            self._bar_ids = {name: bars.add_task(name, total=n) for name in names}
            try:
                yield
            finally:
                self._refresh_bars()
                self._bars = None

    def _refresh_bars(self) -> None:
        if self._bars is None:
            return
        t = self._totals()
        values = {
            "connected": t["welcomed"],
            "prefetched": t["prefetched"],
            "live": t["updated"].get("live", 0),
            "reconnected": t["rewelcomed"],
            "ended": t["updated"].get("ended", 0),
        }
        for name, task in self._bar_ids.items():
            self._bars.update(task, completed=values[name])

    # -- HTTP ----------------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        status, data = http_call(method, self.target.api + path, body)
        if status >= 300:
            raise HopcastError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        doc: dict[str, Any] = json.loads(data)
        return doc

    def _event(self, event: str) -> dict[str, Any]:
        return self._api("GET", f"/v1/live/events/{event}")

    def _server_prefetch_count(self) -> int:
        """Prefetch responses the server counted so far (``/metrics``), all routes."""
        try:
            status, data = http_call("GET", self.target.api + "/metrics")
        except OSError:
            return 0
        if status != 200:
            return 0
        total = 0.0
        for line in data.decode().splitlines():
            if line.startswith("hopcast_live_prefetch_responses_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


class _Worker:
    """A fleet process (:func:`hopcast.sdk.fleet.main`) and the thread reading its frames."""

    def __init__(self, spec: FleetSpec, proc: subprocess.Popen[bytes], log: Any) -> None:
        self.spec = spec
        self.proc = proc
        self.log = log
        assert proc.stdin is not None
        self._pipe = FramePipe(None, proc.stdin)

    @classmethod
    def start(cls, spec: FleetSpec, out: queue.Queue[tuple[str, int, Any]]) -> _Worker:
        log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish(), with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", "from hopcast.sdk.fleet import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        worker = cls(spec, proc, log)
        worker.send(spec)
        threading.Thread(target=worker._read, args=(out,), daemon=True).start()
        return worker

    def _read(self, out: queue.Queue[tuple[str, int, Any]]) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                message = read_frame(self.proc.stdout)
            except (EOFError, OSError):
                out.put(("eof", self.spec.worker, None))
                return
            out.put(message)

    def send(self, obj: Any) -> None:
        with contextlib.suppress(OSError):  # a dead process is reported by its reader
            self._pipe.put(obj)

    def finish(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self.log.seek(0)
            return bytes(self.log.read()).decode(errors="replace")[-3000:]
        return "(no log)"


__all__ = [
    "MAX_DEVICES_PER_PROCESS",
    "STAGES",
    "DeviceRecord",
    "EmbeddedSystem",
    "SimConfig",
    "SimResult",
    "SimRun",
    "run_once",
    "simulate",
]

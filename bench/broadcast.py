"""Broadcast benchmark: time from a live trigger to every connected device, hopcast vs peers.

One run, one machine, servers and simulated devices sharing its cores. For each fleet size N,
each system gets its own server process(es), N devices spread over client processes, and
several trigger rounds:

* ``hopcast`` — the live gateway as shipped: signed-token ``hello``, ``subscribe``, per-channel
  sequence and history, heartbeats, GC freeze policy; devices speak the real wire protocol
  (sans-I/O ``DeviceProtocol``; every received trigger is checked to apply, in sequence);
* ``python-socketio`` — ``AsyncServer`` under uvicorn, ``emit`` to every client (the peer a
  Python user would pick); devices speak Engine.IO v4 / Socket.IO over a plain WebSocket;
* ``websockets`` — a bare ``websockets.broadcast()`` of the same frame: the floor.

Topology (each row's ``topology``): up to ``PER_SERVER`` connections in one server process
with the trigger published in that process; above it, ``ceil(N / PER_SERVER)`` processes share
one port (``SO_REUSEPORT``) and the trigger fans in through Redis pub/sub from a separate
publisher process (hopcast: ``Router(RedisTransport)`` → gateway nodes as ``hopcast live
gateway --workers`` runs them; socketio: ``AsyncRedisManager``; websockets: ``PUBLISH`` →
``broadcast``). The same topology
for every system at a given N; each row says which one it used. Devices connect from several
loopback source addresses (127.x.y.1): at most ~28k connections go from one source address to
one port, and a process holds at most 20,000 descriptors.

Measures, per system and N: time from trigger to 100% of devices (``t0`` is taken just before
the trigger is published, each device stamps ``time.time_ns()`` on receipt, same host clock;
p50 and p99 over rounds — with few rounds p99 is the worst one), per-device latency p50/p99
over all rounds, server memory per idle connection (RSS of all server processes after connect
minus before, / N), GC pauses in the servers (the gateway's ``GcMonitor``; the same monitor is
installed in the peers), connection rate and delivery.

Then the origin measure: the load harness (``hopcast live simulate --compare-prefetch``,
:func:`hopcast.sdk.simulator.simulate`: real SDK devices against an embedded ``hopcast serve``)
runs one live event with and without prefetch; rows give the origin's peak requests per second
in the prefetch window and overall, and the share of devices that hit the origin at trigger.

Writes ``bench/results/broadcast.jsonl`` (``broadcast-quick`` for ``--quick``; one JSON
object per system and measure), prints a table with ratios and saves a chart beside it.

    python bench/broadcast.py                   # N = 10k, 50k, 100k
    python bench/broadcast.py --sizes 20000     # any sizes
    python bench/broadcast.py --quick           # N = 2k, < 60 s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = (10_000, 50_000, 100_000)
QUICK_SIZES = (2_000,)
SYSTEMS = ("hopcast", "websockets", "socketio")
LABEL = {"hopcast": "hopcast", "socketio": "python-socketio", "websockets": "websockets"}
#: Connections per server process: the open-files hard limit is 20,000 per process and the
#: gateway keeps ~1,000 for itself (``DEFAULT_MAX_CONNECTIONS`` 19,000); 17,000 leaves room
#: for the kernel's uneven ``SO_REUSEPORT`` spread.
PER_SERVER = 17_000
#: Devices per client process (descriptors again), which also keeps each source address far
#: below the ~28k ports it has towards one destination.
PER_CLIENT = 17_000
#: Client processes at least: devices in one process would be received one after the other.
MIN_CLIENTS = 2
ROUNDS, QUICK_ROUNDS = 5, 3
#: A round ends when every device has the trigger or after this long (plus 1 s per 2,000
#: devices: python-socketio took ~8 s at 50k here).
ROUND_TIMEOUT_S = 20.0
ROUND_TIMEOUT_PER_S = 2_000
#: Pause between rounds, and after connecting before the memory is read.
ROUND_GAP_S = 1.0
SETTLE_S = 2.0
#: ``--quick`` waits half as long (it has 60 s for everything).
QUICK_PAUSES = 0.5
#: Connecting may take this long plus 1 s per 250 devices before the case is given up.
CONNECT_BASE_S = 60.0
CONNECT_PER_S = 250.0
#: The origin measure (``hopcast live simulate --compare-prefetch`` through its Python API):
#: devices and prefetch window, full run and ``--quick``.
PREFETCH_DEVICES, PREFETCH_WINDOW_S = 10_000, 30.0
QUICK_PREFETCH_DEVICES, QUICK_PREFETCH_WINDOW_S = 1_000, 5.0
SECRET = "bench-broadcast-secret-" + "0" * 32
SECRET_ENV = "HOPCAST_BENCH_SECRET"

console = Console(stderr=True)


# -- processes -------------------------------------------------------------------------------


class Dead(RuntimeError):
    pass


class Proc:
    """A child speaking one JSON object per line on stdout; stderr goes to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self._err: TextIO = log.open("w")
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            bufsize=1,
            env=env,
        )
        self.pid = self.p.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            if line.startswith("{"):
                self._lines.put(line)
        self._lines.put(None)

    def send(self, command: str) -> None:
        assert self.p.stdin is not None
        try:
            self.p.stdin.write(command + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise Dead(f"{self.name} is gone ({self.tail()})") from exc

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise Dead(f"{self.name}: no answer within {timeout:.0f} s") from None
        if line is None:
            self._lines.put(None)
            raise Dead(f"{self.name} exited ({self.p.wait()}): {self.tail()}")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        self.send(command)
        return self.read(timeout)

    def tail(self) -> str:
        self._err.flush()
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            try:
                self.send("quit")
                self.p.wait(timeout)
            except (Dead, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self._err.close()


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Redis:
    """A throwaway redis-server (no persistence) for the multi-process cases."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = (logs / "redis.log").open("w")
        self.p = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--maxclients", "1000"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), 2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(10)
        self._log.close()


# -- one case: one system at one N -----------------------------------------------------------


@dataclass
class Case:
    system: str
    n: int
    servers: int
    clients: int
    topology: str
    connected: int = 0
    connect_s: float = 0.0
    mem_per_conn: float | None = None
    client_mem_per_device: float | None = None
    rounds_tta_ms: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    delivered_min: float | None = None
    gc: dict[str, float] = field(default_factory=dict)
    problems: int = 0
    load_1m: float = 0.0
    lost: int = 0  # connections the servers closed after connect
    note: str = ""


def topology_of(servers: int) -> str:
    if servers == 1:
        return "1 process, in-process"
    return f"{servers} processes, Redis"


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def run_case(
    system: str,
    n: int,
    rounds: int,
    case_no: int,
    redis: Redis | None,
    logs: Path,
    pauses: float = 1.0,
) -> Case:
    servers = max(1, math.ceil(n / PER_SERVER))
    clients = max(MIN_CLIENTS, math.ceil(n / PER_CLIENT))
    case = Case(system, n, servers, clients, topology_of(servers), load_1m=os.getloadavg()[0])
    env = os.environ | {SECRET_ENV: SECRET, "PYTHONUNBUFFERED": "1"}
    py = sys.executable
    port = free_port()
    procs: list[Proc] = []
    tag = f"{system}-{n}"
    try:
        multi = servers > 1
        if multi:
            if redis is None:
                raise RuntimeError("needs Redis (redis-server not found)")
            redis.flush()
        publisher = None
        if multi:
            assert redis is not None
            publisher = Proc(
                f"{tag} publisher",
                [
                    *(py, str(HERE / "broadcast_servers.py"), "--system", system),
                    *("--role", "publisher", "--redis", redis.url),
                ],
                logs / f"{tag}-publisher.log",
                env,
            )
            procs.append(publisher)
            publisher.read(30)
        server_procs = []
        for i in range(servers):
            argv = [py, str(HERE / "broadcast_servers.py"), "--system", system]
            argv += ["--port", str(port), "--node-id", f"bench-{i}"]
            if multi:
                assert redis is not None
                argv += ["--redis", redis.url]
            proc = Proc(f"{tag} server {i}", argv, logs / f"{tag}-server{i}.log", env)
            procs.append(proc)
            server_procs.append(proc)
        for proc in server_procs:
            proc.read(60)
        trigger_to = publisher or server_procs[0]
        time.sleep(0.5)
        rss_before = sum(rss(p.pid) for p in server_procs)

        # Connect.
        client_procs = []
        first = 0
        for j, count in enumerate(split(n, clients)):
            source = f"127.{1 + case_no % 250}.{1 + j}.1"
            argv = [py, str(HERE / "broadcast_load.py"), "--system", system]
            argv += ["--port", str(port), "--source", source]
            argv += ["--count", str(count), "--first-id", str(first)]
            first += count
            proc = Proc(f"{tag} clients {j}", argv, logs / f"{tag}-clients{j}.log", env)
            procs.append(proc)
            client_procs.append(proc)
        started = time.perf_counter()
        deadline = started + CONNECT_BASE_S + n / CONNECT_PER_S
        ready = []
        try:
            for proc in client_procs:
                ready.append(proc.read(max(1.0, deadline - time.perf_counter())))
        except Dead:
            if any(p.p.poll() is not None for p in procs):
                raise
            # Too slow: how far did it get?
            opened = sum(r["ready"] for r in ready)
            for proc in client_procs[len(ready) :]:
                answer = proc.ask("status", 10)  # or its "ready" line, if it just finished
                opened += answer.get("status", answer.get("ready", 0))
            case.connected = opened
            raise Dead(
                f"connecting did not finish within {deadline - started:.0f} s "
                f"({opened:,} of {n:,} devices connected)"
            ) from None
        case.connect_s = time.perf_counter() - started
        case.connected = sum(r["ready"] for r in ready)
        failed = sum(r["failed"] for r in ready)
        case.client_mem_per_device = max(r["rss_per_device"] for r in ready)
        if failed:
            why: dict[str, int] = {}
            for r in ready:
                for k, v in r.get("retried", {}).items():
                    why[k] = why.get(k, 0) + v
            reasons = ", ".join(f"{k} x{v}" for k, v in sorted(why.items(), key=lambda kv: -kv[1]))
            case.note = (
                f"{failed} of {n} devices could not connect (failed attempts: {reasons}); "
                f"times are to all {n - failed:,} connected"
            )
        if not case.connected:
            raise RuntimeError("no device connected")
        time.sleep(SETTLE_S * pauses)
        rss_after = sum(rss(p.pid) for p in server_procs)
        case.mem_per_conn = (rss_after - rss_before) / case.connected
        gc_before = merge_gc([p.ask("stats")["gc"] for p in server_procs])

        # Trigger rounds.
        delivered = []
        timeout = ROUND_TIMEOUT_S + n / ROUND_TIMEOUT_PER_S
        for r in range(1, rounds + 1):
            for proc in client_procs:
                proc.send(f"arm {r} {timeout}")
            for proc in client_procs:
                proc.read(30)
            t0 = trigger_to.ask(f"trigger {r}", 30)["t0"]
            times: list[int] = []
            expected = lost = 0
            for proc in client_procs:
                res = proc.read(timeout + 30)
                times += res["times"]
                expected += res["expected"]
                lost += res["lost"]
            case.lost = max(case.lost, lost)
            delivered.append(len(times) / max(1, expected))
            case.latencies_ms += [(t - t0) / 1e6 for t in times]
            if len(times) >= expected:
                case.rounds_tta_ms.append((max(times) - t0) / 1e6)
            for proc in client_procs:
                case.problems += proc.ask("check", 60)["problems"]
            time.sleep(ROUND_GAP_S * pauses)
        case.delivered_min = min(delivered)
        if case.delivered_min < 1.0:
            missing = case.connected - round(case.delivered_min * case.connected)
            case.note = (case.note + "; " if case.note else "") + (
                f"worst round reached {case.delivered_min:.2%} ({missing} devices missing)"
            )
        if case.lost:
            case.note = (case.note + "; " if case.note else "") + (
                f"the server dropped {case.lost:,} connections after they were up"
            )
        stats = [p.ask("stats") for p in server_procs]
        case.gc = merge_gc([s["gc"] for s in stats])
        case.gc["rounds_full_collections"] = (
            case.gc["gc_collections_gen2"] - gc_before["gc_collections_gen2"]
        )
        case.gc["rounds_pause_total_s"] = (
            case.gc["gc_pause_total_s"] - gc_before["gc_pause_total_s"]
        )
        if case.problems:
            case.note = (case.note + "; " if case.note else "") + (
                f"{case.problems} triggers did not apply in sequence"
            )
    except (Dead, RuntimeError, OSError) as exc:
        case.note = (case.note + "; " if case.note else "") + f"failed: {exc}"
        console.print(f"[red]{tag}: {exc}[/red]")
    finally:
        for proc in reversed(procs):
            proc.stop()
    return case


def merge_gc(stats: Sequence[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in stats:
        for k, v in s.items():
            out[k] = (
                max(out.get(k, 0.0), v)
                if k.endswith(("_max_s", "_last_s"))
                else out.get(k, 0.0) + v
            )
    return out


# -- origin load with and without prefetch --------------------------------------------------


def prefetch_rows(devices: int, window_s: float, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Origin requests per second with and without prefetch, from the load harness (real SDK
    devices against an embedded ``hopcast serve``; :func:`hopcast.sdk.simulator.simulate`)."""
    base = {"n": devices, "window_s": window_s, "topology": "hopcast serve (embedded)"} | params
    try:
        from hopcast.sdk.simulator import SimConfig, simulate

        config = SimConfig(devices=devices, window_s=window_s, show_progress=False)
        result = simulate(config, compare_prefetch=True)
    except Exception as exc:  # a failed side measure is reported, not fatal
        console.print(f"[red]origin load: {exc!r}[/red]")
        return [
            {"system": "hopcast", "measure": "origin peak RPS, prefetch window", "unit": "req/s"}
            | {"value": None, "note": f"failed: {exc!r}"}
            | base
        ]
    rows = []
    for run in result.runs:
        origin, mode = run.report["origin"], run.report["mode"]
        extra = {
            "mode": mode,
            "target_peak_rps": origin["target_peak_rps"],
            "prefetch_window_s": origin["prefetch_window_s"],
            "origin_requests": origin["requests"],
        }
        if mode == "prefetch":
            rows.append(
                {"system": "hopcast", "measure": "origin peak RPS, prefetch window"}
                | {"unit": "req/s", "value": origin["peak_rps_in_window"]}
                | extra
                | base
            )
            rows.append(
                {"system": "hopcast", "measure": "devices hitting the origin at trigger"}
                | {"unit": "%", "value": origin["trigger_hit_pct"]}
                | extra
                | base
            )
        rows.append(
            {"system": "hopcast", "measure": f"origin peak RPS, {mode.replace('_', ' ')}"}
            | {"unit": "req/s", "value": origin["peak_rps"]}
            | extra
            | base
        )
    return rows


# -- results ---------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def rows_of(case: Case, params: dict[str, Any]) -> list[dict[str, Any]]:
    base = {
        "n": case.n,
        "connected": case.connected,
        "servers": case.servers,
        "client_processes": case.clients,
        "topology": case.topology,
        "load_1m_before": round(case.load_1m, 2),
        "connections_lost": case.lost,
    } | params
    if case.note:
        base["note"] = case.note
    system = LABEL[case.system]
    rows = []

    def latency(measure: str, values: list[float], **extra: Any) -> None:
        p50 = p99 = None
        if values:
            p50, p99 = round(statistics.median(values), 1), round(pct(values, 0.99), 1)
        rows.append(
            {"system": system, "measure": measure, "unit": "ms", "p50": p50, "p99": p99}
            | extra
            | base
        )

    def value(measure: str, v: float | None, unit: str, **extra: Any) -> None:
        rows.append(
            {"system": system, "measure": measure, "unit": unit}
            | {"value": None if v is None else round(v, 2)}
            | extra
            | base
        )

    latency(
        "time to all devices",
        case.rounds_tta_ms,
        rounds_ms=[round(t, 1) for t in case.rounds_tta_ms],
    )
    latency("device latency", case.latencies_ms)
    value("memory per idle connection", none_or(case.mem_per_conn, 1 / 1024), "KB")
    value(
        "GC pause, max",
        none_or(case.gc.get("gc_pause_max_s"), 1000),
        "ms",
        full_collections=case.gc.get("gc_collections_gen2"),
        full_collections_in_rounds=case.gc.get("rounds_full_collections"),
        pause_total_in_rounds_ms=round(case.gc.get("rounds_pause_total_s", 0.0) * 1000, 1),
        frozen_objects=case.gc.get("gc_frozen_objects"),
    )
    value(
        "connect rate",
        case.connected / case.connect_s if case.connect_s else None,
        "conn/s",
        client_bytes_per_device=case.client_mem_per_device,
    )
    value("delivered, worst round", none_or(case.delivered_min, 100), "%")
    return rows


def none_or(v: float | None, scale: float) -> float | None:
    return None if v is None else v * scale


def get(rows: list[dict[str, Any]], system: str, measure: str, n: int) -> dict[str, Any] | None:
    return next(
        (r for r in rows if r["system"] == system and r["measure"] == measure and r["n"] == n),
        None,
    )


def fmt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:,.1f}{unit}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, sizes: Sequence[int]) -> None:
    name = result_name(args, sizes)
    path = RESULTS / f"{name}.jsonl"
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    table = Table(title=f"broadcast benchmark — {os.cpu_count()} cores, servers and devices shared")
    for col in (
        "N",
        "system",
        "topology",
        "to all, p50 / worst",
        "device p50 / p99",
        "KB / conn",
        "GC max (full)",
        "conn/s",
        "delivered",
        "vs hopcast",
    ):
        table.add_column(col, justify="left" if col in ("system", "topology") else "right")
    systems = [LABEL[s] for s in args.systems]
    for n in sizes:
        h = get(rows, "hopcast", "time to all devices", n)
        for system in systems:
            tta = get(rows, system, "time to all devices", n)
            lat = get(rows, system, "device latency", n)
            mem = get(rows, system, "memory per idle connection", n)
            gcr = get(rows, system, "GC pause, max", n)
            rate = get(rows, system, "connect rate", n)
            dlv = get(rows, system, "delivered, worst round", n)
            if tta is None or lat is None or mem is None or gcr is None or rate is None:
                continue
            ratio = ""
            if system != "hopcast" and h and h["p50"] and tta["p50"]:
                ratio = f"{tta['p50'] / h['p50']:.2f}×"
                if not managed(rows, system, n):
                    ratio += " (incomplete)"
            full = gcr.get("full_collections")
            table.add_row(
                f"{n:,}",
                system,
                tta["topology"],
                f"{fmt(tta['p50'])} / {fmt(tta['p99'])} ms",
                f"{fmt(lat['p50'])} / {fmt(lat['p99'])} ms",
                fmt(mem["value"]),
                f"{fmt(gcr['value'], ' ms')} ({full:.0f})" if full is not None else "—",
                fmt(rate["value"]),
                fmt(dlv["value"] if dlv else None, " %"),
                ratio,
            )
    Console(width=max(console.width, 200)).print(table)
    for r in rows:
        if r.get("note") and r["measure"] == "time to all devices":
            console.print(f"note — {r['system']} at N={r['n']:,}: {r['note']}")
    origin = [r for r in rows if r["measure"].startswith(("origin", "devices hitting"))]
    if origin:
        t = Table(title="origin load during a live event (load harness, real SDK devices)")
        for col in ("N", "window", "measure", "value", "target"):
            t.add_column(col, justify="left" if col == "measure" else "right")
        for r in origin:
            target = ""
            if r["measure"] == "origin peak RPS, prefetch window":
                target = f"≤ {r.get('target_peak_rps', 0):,.0f} (1.2 × N / window)"
            elif r["measure"] == "devices hitting the origin at trigger":
                target = "≤ 1 %"
            t.add_row(
                f"{r['n']:,}",
                f"{r['window_s']:.0f} s",
                r["measure"],
                f"{fmt(r['value'])} {r['unit']}" if r["value"] is not None else r.get("note", "—"),
                target,
            )
        Console(width=max(console.width, 200)).print(t)
    for line in verdicts(rows, sizes):
        console.print(line)
    console.print(
        "time to all: p50 and p99 over rounds (p99 is the worst round); ratio = peer / hopcast "
        f"(> 1: hopcast is faster). Results: {path}"
    )
    chart(rows, RESULTS / f"{name}.png", sizes)


def managed(rows: list[dict[str, Any]], system: str, n: int) -> bool:
    """Every device connected and every round reached all of them."""
    tta = get(rows, system, "time to all devices", n)
    dlv = get(rows, system, "delivered, worst round", n)
    return bool(tta and tta["p50"] and tta["connected"] >= n and dlv and dlv["value"] == 100.0)


def verdicts(rows: list[dict[str, Any]], sizes: Sequence[int]) -> list[str]:
    """The targets of the issue, checked against this run's numbers."""
    out = []
    sio = [n for n in sizes if managed(rows, "python-socketio", n)]
    if sio:
        n = max(sio)
        h = get(rows, "hopcast", "time to all devices", n)
        p = get(rows, "python-socketio", "time to all devices", n)
        if h and p and h["p50"]:
            out.append(
                f"hopcast vs python-socketio at N={n:,} (the largest N it managed in full): "
                f"{p['p50'] / h['p50']:.1f}× faster (target ≥ 5×)"
            )
    pre = next((r for r in rows if r["measure"] == "origin peak RPS, prefetch window"), None)
    if pre and pre["value"] is not None:
        out.append(
            f"origin peak in the prefetch window: {pre['value']:,.0f} req/s for {pre['n']:,} "
            f"devices (target ≤ {pre['target_peak_rps']:,.0f})"
        )
        hit = next(
            (r for r in rows if r["measure"] == "devices hitting the origin at trigger"), None
        )
        naive = next((r for r in rows if r["measure"] == "origin peak RPS, no prefetch"), None)
        if hit:
            out.append(f"devices hitting the origin at trigger: {hit['value']} % (target ≤ 1 %)")
        if naive and naive["value"]:
            out.append(
                f"origin peak without prefetch: {naive['value']:,.0f} req/s "
                f"({naive['value'] / max(pre['value'], 1):.1f}× the peak with prefetch)"
            )
    for n in sizes:
        h = get(rows, "hopcast", "time to all devices", n)
        w = get(rows, "websockets", "time to all devices", n)
        if h and w and h["p50"] and w["p50"]:
            out.append(
                f"hopcast / bare websockets at N={n:,}: {h['p50'] / w['p50']:.2f}× (target ≤ 1.25×)"
            )
        if h and h["p50"]:
            out.append(
                f"hopcast time to all at N={n:,}: {h['p50']:,.0f} ms p50, {h['p99']:,.0f} ms worst "
                "(target ≤ 2,000 ms; stretch 1,000 ms)"
            )
        mem = get(rows, "hopcast", "memory per idle connection", n)
        if mem and mem["value"] is not None:
            out.append(
                f"hopcast memory per idle connection at N={n:,}: {mem['value']:.1f} KB "
                "(target ≤ 16 KB)"
            )
    return out


def result_name(args: argparse.Namespace, sizes: Sequence[int]) -> str:
    if args.quick:
        return "broadcast-quick"
    if tuple(sizes) == SIZES and tuple(args.systems) == SYSTEMS:
        return "broadcast"
    return "broadcast-" + "-".join(str(n) for n in sizes)


def chart(rows: list[dict[str, Any]], path: Path, sizes: Sequence[int]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("matplotlib not installed: no chart")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, system in enumerate(dict.fromkeys(r["system"] for r in rows)):
        pts = [  # only sizes the system managed in full (all connected, every round complete)
            (r["n"], r["p50"], r["p99"])
            for r in rows
            if r["system"] == system
            and r["measure"] == "time to all devices"
            and managed(rows, system, r["n"])
        ]
        if pts:
            ns, p50, p99 = zip(*pts, strict=True)
            ax1.plot(ns, p50, "o-", color=f"C{i}", label=f"{system} p50")
            ax1.plot(ns, p99, "x:", color=f"C{i}", alpha=0.6, label=f"{system} worst")
        mem = [
            (r["n"], r["value"])
            for r in rows
            if r["system"] == system
            and r["measure"] == "memory per idle connection"
            and r["value"] is not None
        ]
        if mem:
            ns, kb = zip(*mem, strict=True)
            ax2.plot(ns, kb, "o-", color=f"C{i}", label=system)
    ax1.set_xlabel("connected devices")
    ax1.set_ylabel("trigger → 100% of devices (ms)")
    ax1.set_yscale("log")
    ax1.set_title("time to update the fleet (lower is better)")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    ax2.set_xlabel("connected devices")
    ax2.set_ylabel("server RSS per idle connection (KB)")
    ax2.set_title("memory per connection")
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks(list(sizes))
        ax.set_xticklabels([f"{n // 1000}k" for n in sizes])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", help=f"fleet sizes (default {SIZES})")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    ap.add_argument("--rounds", type=int, help=f"triggers per case (default {ROUNDS})")
    ap.add_argument("--quick", action="store_true", help=f"N = {QUICK_SIZES[0]:,}, < 60 s")
    ap.add_argument(
        "--no-origin",
        action="store_true",
        help="skip the origin-load measure (load harness with and without prefetch)",
    )
    ap.add_argument("--workdir", default=str(RESULTS / "tmp" / "broadcast"))
    ap.add_argument("--table", action="store_true", help="print the last results again, no run")
    args = ap.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    if args.table:
        path = RESULTS / f"{result_name(args, sizes)}.jsonl"
        saved = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        report(saved, args, sizes)
        return 0
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    logs = Path(args.workdir)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    needs_redis = any(n > PER_SERVER for n in sizes)
    redis = Redis(logs) if needs_redis and shutil.which("redis-server") else None
    params = {"rounds": rounds, "quick": args.quick, "cores": os.cpu_count()}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        case_no = 0
        for n in sizes:
            for system in args.systems:
                case_no += 1
                free_gb = mem_available() / 2**30
                console.print(
                    f"[bold]{LABEL[system]}[/bold] N={n:,} "
                    f"({free_gb:.1f} GiB available, {time.perf_counter() - started:.0f} s in)"
                )
                pauses = QUICK_PAUSES if args.quick else 1.0
                case = run_case(system, n, rounds, case_no, redis, logs, pauses)
                rows += rows_of(case, params)
                tta = case.rounds_tta_ms
                console.print(
                    f"  connected {case.connected:,} in {case.connect_s:.1f} s; time to all "
                    f"{', '.join(f'{t:.0f}' for t in tta) or '—'} ms; "
                    f"{fmt(none_or(case.mem_per_conn, 1 / 1024))} KB/conn"
                    + (f"; {case.note}" if case.note else "")
                )
    finally:
        if redis is not None:
            redis.stop()
    if not args.no_origin:
        devices = QUICK_PREFETCH_DEVICES if args.quick else PREFETCH_DEVICES
        window_s = QUICK_PREFETCH_WINDOW_S if args.quick else PREFETCH_WINDOW_S
        console.print(
            f"[bold]origin load[/bold]: {devices:,} devices, {window_s:.0f} s prefetch window, "
            f"with and without prefetch ({time.perf_counter() - started:.0f} s in)"
        )
        rows += prefetch_rows(devices, window_s, params)
    report(rows, args, sizes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak benchmark: ``hopcast run`` for a long time, watching memory and freshness stay flat.

One run starts ``hopcast run`` (the demo company through the embedded engine into LMDB, the API,
the live gateway and ``--devices`` simulated devices taking a scripted live event) in a child
process on free loopback ports, waits until its API answers, and then every ``--every`` seconds
samples:

* the child's **anonymous memory** (``RssAnon`` in ``/proc/<pid>/status``: the Python heap and
  malloc arenas; LMDB's map is file-backed and not in it), plus ``RssFile``, threads and open
  file descriptors;
* **freshness** p50 / p99 (event time → queryable) over the last interval, from the
  ``hopcast_ingest_freshness_seconds`` histogram at ``/metrics`` (the difference of two
  scrapes, interpolated within a bucket: the buckets are 5, 10, 25, 50, 100, 200, 500 ms, so a
  quantile is exact to its bucket);
* the same from ``hopcast run``'s own progress line (exact quantiles of its last ~4,096
  samples, about the last second or two: finer than the buckets, noisier than the interval);
* events/s, the engine's mean store-write time and records per batch, dead letters and live
  triggers (``/metrics``); connected devices and the live
  event's state (the operator console's dashboard, polled as an open console would).

After ``--minutes`` it stops the child (SIGTERM: it drains and exits cleanly), writes every
sample and a summary to ``bench/results/soak.jsonl`` (``soak-quick.jsonl`` for ``--quick``) and
prints whether memory and freshness are **flat after warm-up**: the slope of a least-squares
line over the second half of the samples, in KB/min and ms/min, against
:data:`MAX_MEMORY_SLOPE_KB_MIN` and :data:`MAX_P99_SLOPE_MS_MIN`. The exit code is 0 when both
are flat, 1 when not, 2 when the run itself failed.

``--tracemalloc`` traces the child's allocations with :mod:`tracemalloc` from a minute after
its API answered (slower: read the rates and freshness of such a run with care) and prints the
allocation sites that grew most over the second half of the traced time: the way to find what
grows.

    python bench/soak.py                   # 30 minutes at 2,000 interactions/s, 1,000 devices
    python bench/soak.py --quick           # 2 minutes
    python bench/soak.py --minutes 10 --tracemalloc
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

#: Flat memory: at most 1 MB/min of anonymous memory growth over the second half (the issue's
#: leak grew 9 MB/min). A real run's allocator noise is a few MB up or down between samples, so a
#: smaller threshold would judge noise over a 15-minute window; 1 MB/min is still only 1.4 GB a
#: day, so a pass here says "no leak of the issue's size", and the slope itself is reported.
MAX_MEMORY_SLOPE_KB_MIN = 1024.0
#: Flat freshness: p99 rising at most 1 ms/min over the second half (the issue's rose ~20 ms/min;
#: 1 ms/min is 15 ms over the full run's second half, below one histogram bucket at 50-100 ms).
MAX_P99_SLOPE_MS_MIN = 1.0
#: How long the child's API may take to answer: it first loads 30 days of history (300k
#: interactions, about a minute on this machine when it is busy) and ingests the snapshot.
STARTUP_S = 600.0
#: How long the child may take to drain and stop after SIGTERM (the demo waits up to 15 s for
#: the engine, then stops the server and the devices).
STOP_S = 120.0
#: Timeout of one /metrics scrape: a scrape that takes longer is recorded as missing.
SCRAPE_TIMEOUT_S = 10.0
#: tracemalloc frames kept per allocation (deep enough to name the caller of a container).
TRACE_FRAMES = 8
#: With --tracemalloc, tracing starts this long after the API answered: the devices have
#: connected and the start-up garbage is gone, so what is traced is the steady state.
TRACE_AFTER_S = 60.0
#: Allocation sites shown by --tracemalloc.
TRACE_TOP = 25


# -- the child ---------------------------------------------------------------------------------


def free_port_pair(host: str = "127.0.0.1") -> int:
    """A port P with P and P+1 free now (``hopcast run`` serves the gateway on P+1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port >= 65534:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on loopback after 100 tries")


def run_args(opts: argparse.Namespace, data: Path, port: int) -> list[str]:
    """The ``hopcast run`` options of this soak."""
    return [
        "--data",
        str(data),
        "--port",
        str(port),
        "--rate",
        str(opts.rate),
        "--devices",
        str(opts.devices),
        "--event-in",
        str(opts.event_in),
        "--history",
        str(opts.history),
        "--no-progress",
        # The soak stops it with SIGTERM; the duration is a backstop if the soak itself dies.
        "--duration",
        str(opts.minutes * 60 + STARTUP_S + 60),
    ]


def child_main(argv: Sequence[str]) -> int:
    """``soak.py _child TRACE_DIR EVERY_S -- RUN_ARGS``: ``hopcast run`` that starts
    :mod:`tracemalloc` on SIGUSR1 (the soak sends it once the run has warmed up, so the history
    load is not traced: tracing slows every allocation) and then writes a snapshot every
    ``EVERY_S`` seconds to ``TRACE_DIR/<n>.snap``. Only what was allocated after the signal is
    traced: what keeps growing from snapshot to snapshot is what leaks."""
    import tracemalloc

    trace_dir, every = Path(argv[0]), float(argv[1])
    args = list(argv[3:])
    stop = threading.Event()
    go = threading.Event()
    signal.signal(signal.SIGUSR1, lambda signum, frame: go.set())

    def dump() -> None:
        go.wait()
        tracemalloc.start(TRACE_FRAMES)
        n = 0
        while not stop.wait(every):
            tracemalloc.take_snapshot().dump(str(trace_dir / f"{n:05d}.snap"))
            n += 1

    threading.Thread(target=dump, name="tracemalloc", daemon=True).start()
    from hopcast.demo.run import main

    try:
        return main(args)
    finally:
        stop.set()


# -- sampling ----------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile, VmRSS (KB) and Threads of ``pid``, and its open descriptors."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    with contextlib.suppress(OSError):
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """Every sample at ``url`` (Prometheus text), by sample name; None if it did not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return None
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def dashboard(url: str) -> dict[str, Any] | None:
    """The operator console's dashboard (connected devices, the live event), or None."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            doc: dict[str, Any] = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    return doc


_STATUS = re.compile(r"freshness p50 ([\d,.]+) (ms|s) p99 ([\d,.]+) (ms|s)")


def status_freshness(log: Path) -> tuple[float, float] | None:
    """p50 and p99 (ms) of the last progress line ``hopcast run`` printed (exact quantiles of
    its most recent 4,096 freshness samples, about the last second or two), or None."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16_384))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = _STATUS.findall(tail)
    if not found:
        return None
    p50, u50, p99, u99 = found[-1]

    def ms(value: str, unit: str) -> float:
        return float(value.replace(",", "")) * (1000 if unit == "s" else 1)

    return ms(p50, u50), ms(p99, u99)


def total(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    """The sum of a series over its labels (0 when absent)."""
    return sum(value for _, value in metrics.get(name, ()))


def labelled(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The value of the sample of ``name`` with ``labels`` (0 when absent)."""
    for have, value in metrics.get(name, ()):
        if all(have.get(k) == v for k, v in labels.items()):
            return value
    return 0.0


def buckets(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> list[float]:
    """A histogram's cumulative bucket counts, in ``le`` order (+Inf last)."""
    rows = [(float(labels["le"]), value) for labels, value in metrics.get(name + "_bucket", ())]
    return [value for _, value in sorted(rows)]


def bucket_bounds(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> list[float]:
    return sorted(float(labels["le"]) for labels, _ in metrics.get(name + "_bucket", ()))


def quantile(bounds: Sequence[float], counts: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of a histogram (cumulative ``counts`` per upper bound), interpolated
    linearly within its bucket; None when it holds nothing."""
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: report that bound
            inside = count - below
            share = (rank - below) / inside if inside else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


@dataclass
class Sample:
    """One observation of the child."""

    t_s: float  # since the API answered
    rss_anon_kb: int
    rss_file_kb: int
    threads: int
    fds: int
    events: float  # records ingested so far
    events_s: float | None  # over the last interval
    fresh_p50_ms: float | None  # over the last interval
    fresh_p99_ms: float | None
    fresh_samples: float  # histogram observations in the interval
    write_ms: float | None  # mean time of the engine's store write per batch, in the interval
    batch_records: float | None  # mean records per batch, in the interval
    status_p50_ms: float | None  # hopcast run's own progress line (its last second or two)
    status_p99_ms: float | None
    dead_letters: float
    devices: int  # connected to the gateway (the console's dashboard)
    event_state: str | None  # the scripted live event's
    triggers: float
    loadavg_1m: float


@dataclass
class Sampler:
    """Turns successive scrapes into interval samples."""

    pid: int
    base_url: str
    log: Path
    started: float
    last: dict[str, list[tuple[dict[str, str], float]]] | None = None
    last_t: float = 0.0
    samples: list[Sample] = field(default_factory=list)

    def sample(self) -> Sample | None:
        status = proc_status(self.pid)
        now = time.monotonic()
        metrics = scrape(self.base_url + "/metrics")
        if metrics is None:
            return None
        board = dashboard(self.base_url + "/v1/console/dashboard") or {}
        event = board.get("event") or {}
        name = "hopcast_ingest_freshness_seconds"
        bounds, counts = bucket_bounds(metrics, name), buckets(metrics, name)
        events = total(metrics, "hopcast_ingest_events_total")
        p50 = p99 = events_s = write_ms = per_batch = None
        fresh_n = 0.0
        if self.last is not None:
            last = self.last

            def grew(name: str, **labels: str) -> float:
                return labelled(metrics, name, **labels) - labelled(last, name, **labels)

            stage = "hopcast_ingest_stage_seconds"
            writes = grew(stage + "_count", stage="write")
            if writes > 0:
                write_ms = round(1000 * grew(stage + "_sum", stage="write") / writes, 2)
            batches = grew("hopcast_ingest_batch_records_count")
            if batches > 0:
                per_batch = round(grew("hopcast_ingest_batch_records_sum") / batches, 1)
            before = buckets(self.last, name)
            if len(before) == len(counts):
                delta = [a - b for a, b in zip(counts, before, strict=True)]
                fresh_n = delta[-1] if delta else 0.0
                q50, q99 = quantile(bounds, delta, 0.50), quantile(bounds, delta, 0.99)
                p50 = None if q50 is None else q50 * 1000
                p99 = None if q99 is None else q99 * 1000
            span = now - self.last_t
            if span > 0:
                events_s = (events - total(self.last, "hopcast_ingest_events_total")) / span
        self.last, self.last_t = metrics, now
        progress = status_freshness(self.log)
        s = Sample(
            t_s=round(now - self.started, 1),
            rss_anon_kb=status.get("RssAnon", 0),
            rss_file_kb=status.get("RssFile", 0),
            threads=status.get("Threads", 0),
            fds=status.get("fds", 0),
            events=events,
            events_s=None if events_s is None else round(events_s, 1),
            fresh_p50_ms=None if p50 is None else round(p50, 2),
            fresh_p99_ms=None if p99 is None else round(p99, 2),
            fresh_samples=fresh_n,
            write_ms=write_ms,
            batch_records=per_batch,
            status_p50_ms=None if progress is None else progress[0],
            status_p99_ms=None if progress is None else progress[1],
            dead_letters=total(metrics, "hopcast_ingest_dead_letters_total"),
            devices=int((board.get("devices") or {}).get("connected") or 0),
            event_state=event.get("state") if isinstance(event, dict) else None,
            triggers=total(metrics, "hopcast_live_triggers_total"),
            loadavg_1m=os.getloadavg()[0],
        )
        self.samples.append(s)
        return s


# -- analysis ----------------------------------------------------------------------------------


def slope_per_min(points: Iterable[tuple[float, float | None]]) -> float | None:
    """The least-squares slope of ``(seconds, value)`` points, per minute (None: < 3 points)."""
    pts = [(t, v) for t, v in points if v is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return None
    return 60 * sum((t - mt) * (v - mv) for t, v in pts) / var


def second_half(samples: Sequence[Sample]) -> list[Sample]:
    """The samples of the second half of the run: the first half is the warm-up (history
    load garbage, the devices connecting, the live event's prefetch and start)."""
    if not samples:
        return []
    middle = samples[-1].t_s / 2
    return [s for s in samples if s.t_s >= middle]


def summarise(samples: Sequence[Sample], opts: argparse.Namespace) -> dict[str, Any]:
    half = second_half(samples)
    mem = slope_per_min((s.t_s, s.rss_anon_kb) for s in half)
    p99 = slope_per_min((s.t_s, s.fresh_p99_ms) for s in half)
    p50 = slope_per_min((s.t_s, s.fresh_p50_ms) for s in half)
    status99 = slope_per_min((s.t_s, s.status_p99_ms) for s in half)
    write = slope_per_min((s.t_s, s.write_ms) for s in half)

    def mean(values: Iterable[float | None]) -> float | None:
        vs = [v for v in values if v is not None]
        return round(sum(vs) / len(vs), 2) if vs else None

    def at(index: int) -> int | None:
        return samples[index].rss_anon_kb if samples else None

    return {
        "kind": "summary",
        "minutes": opts.minutes,
        "samples": len(samples),
        "second_half_from_s": half[0].t_s if half else None,
        "rss_anon_kb_first": at(0),
        "rss_anon_kb_half": half[0].rss_anon_kb if half else None,
        "rss_anon_kb_last": at(-1),
        "rss_anon_kb_max": max((s.rss_anon_kb for s in samples), default=None),
        "memory_slope_kb_min": None if mem is None else round(mem, 1),
        "fresh_p50_ms_mean_second_half": mean(s.fresh_p50_ms for s in half),
        "fresh_p99_ms_mean_second_half": mean(s.fresh_p99_ms for s in half),
        "fresh_p99_ms_first_half_mean": mean(s.fresh_p99_ms for s in samples if s not in half),
        "fresh_p50_slope_ms_min": None if p50 is None else round(p50, 3),
        "fresh_p99_slope_ms_min": None if p99 is None else round(p99, 3),
        "status_p50_ms_mean_second_half": mean(s.status_p50_ms for s in half),
        "status_p99_ms_mean_second_half": mean(s.status_p99_ms for s in half),
        "status_p99_slope_ms_min": None if status99 is None else round(status99, 3),
        "write_ms_mean_first_half": mean(s.write_ms for s in samples if s not in half),
        "write_ms_mean_second_half": mean(s.write_ms for s in half),
        "write_ms_slope_ms_min": None if write is None else round(write, 3),
        "events_s_mean_second_half": mean(s.events_s for s in half),
        "loadavg_1m_mean": mean(s.loadavg_1m for s in samples),
        "events_total": samples[-1].events if samples else 0,
        "devices_last": samples[-1].devices if samples else 0,
        "memory_flat": mem is not None and mem <= opts.max_memory_slope,
        "freshness_flat": p99 is not None and p99 <= opts.max_p99_slope,
        "max_memory_slope_kb_min": opts.max_memory_slope,
        "max_p99_slope_ms_min": opts.max_p99_slope,
    }


def trace_report(trace_dir: Path) -> list[str]:
    """The allocation sites that grew most between the middle snapshot and the last one."""
    import tracemalloc

    snaps = sorted(trace_dir.glob("*.snap"))
    if len(snaps) < 2:
        return ["tracemalloc: fewer than two snapshots"]
    first = snaps[(len(snaps) - 1) // 2]
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    old = tracemalloc.Snapshot.load(str(first)).filter_traces(own)
    new = tracemalloc.Snapshot.load(str(snaps[-1])).filter_traces(own)
    stats = new.compare_to(old, "traceback")
    lines = [f"tracemalloc: growth from {first.name} to {snaps[-1].name}"]
    for stat in stats[:TRACE_TOP]:
        lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
        lines.extend(f"      {frame}" for frame in stat.traceback.format()[-2 * TRACE_FRAMES :])
    by_line = new.compare_to(old, "lineno")
    lines.append("by line:")
    lines.extend(f"  {stat}" for stat in by_line[:TRACE_TOP])
    return lines


# -- main --------------------------------------------------------------------------------------


def fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f} {unit}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def soak(opts: argparse.Namespace) -> int:
    name = opts.name or ("soak-quick" if opts.quick else "soak")
    RESULTS.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hopcast-soak-"))
    trace_dir = work / "trace"
    port = free_port_pair()
    args = run_args(opts, work / "data", port)
    if opts.tracemalloc:
        trace_dir.mkdir()
        cmd = [sys.executable, __file__, "_child", str(trace_dir), str(opts.every), "--", *args]
    else:
        cmd = [sys.executable, "-m", "hopcast.demo.run", *args]
    log_path = work / "run.log"
    print(f"soak: {' '.join(cmd)}\n      log {log_path}", flush=True)
    header = {
        "kind": "run",
        "commit": git_commit(),
        "command": "hopcast run " + " ".join(args),
        "rate": opts.rate,
        "devices": opts.devices,
        "minutes": opts.minutes,
        "every_s": opts.every,
        "tracemalloc": opts.tracemalloc,
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(log_path, "wb") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    samples: list[Sample] = []
    failed: str | None = None
    try:
        deadline = time.monotonic() + STARTUP_S
        while scrape(metrics_url) is None:
            if child.poll() is not None:
                failed = f"hopcast run exited with {child.returncode} before its API answered"
                break
            if time.monotonic() > deadline:
                failed = f"the API did not answer within {STARTUP_S:.0f} s"
                break
            time.sleep(1.0)
        if failed is None:
            print(f"soak: API up on port {port}; sampling every {opts.every:g} s", flush=True)
            sampler = Sampler(child.pid, f"http://127.0.0.1:{port}", log_path, time.monotonic())
            end = sampler.started + opts.minutes * 60
            next_at = sampler.started
            trace_at = sampler.started + TRACE_AFTER_S if opts.tracemalloc else math.inf
            while time.monotonic() < end:
                if time.monotonic() >= trace_at:
                    child.send_signal(signal.SIGUSR1)
                    trace_at = math.inf
                if child.poll() is not None:
                    failed = f"hopcast run exited with {child.returncode} during the soak"
                    break
                s = sampler.sample()
                if s is not None:
                    print(
                        f"{s.t_s:7.0f} s  anon {s.rss_anon_kb / 1024:7.1f} MB  "
                        f"fresh p50 {fmt(s.fresh_p50_ms, 'ms')}  p99 {fmt(s.fresh_p99_ms, 'ms')} "
                        f"(run {fmt(s.status_p50_ms, 'ms', 0)} / {fmt(s.status_p99_ms, 'ms', 0)})  "
                        f"{fmt(s.events_s, 'ev/s', 0)}  write {fmt(s.write_ms, 'ms')}  "
                        f"devices {s.devices}  "
                        f"event {s.event_state or '-'}  "
                        f"load {s.loadavg_1m:.1f}",
                        flush=True,
                    )
                next_at += opts.every
                time.sleep(max(0.0, next_at - time.monotonic()))
            samples = sampler.samples
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_S)
            except subprocess.TimeoutExpired:
                failed = failed or f"hopcast run did not stop within {STOP_S:.0f} s of SIGTERM"
                child.kill()
                child.wait()
    summary = summarise(samples, opts)
    summary["failed"] = failed
    summary["exit_code"] = child.returncode
    path = RESULTS / f"{name}.jsonl"
    with open(path, "w") as out:
        out.write(json.dumps(header) + "\n")
        for s in samples:
            out.write(json.dumps({"kind": "sample", **asdict(s)}) + "\n")
        out.write(json.dumps(summary) + "\n")
    print(
        f"\nsoak {name}: {summary['samples']} samples over {opts.minutes:g} min "
        f"(second half from {summary['second_half_from_s']} s)\n"
        f"  anonymous memory {fmt((summary['rss_anon_kb_first'] or 0) / 1024, 'MB')} → "
        f"{fmt((summary['rss_anon_kb_last'] or 0) / 1024, 'MB')}, slope over the second half "
        f"{fmt(summary['memory_slope_kb_min'], 'KB/min')} "
        f"({'flat' if summary['memory_flat'] else 'NOT flat'}, threshold "
        f"{opts.max_memory_slope:g})\n"
        f"  freshness p50 / p99, second half mean "
        f"{fmt(summary['fresh_p50_ms_mean_second_half'], 'ms')} / "
        f"{fmt(summary['fresh_p99_ms_mean_second_half'], 'ms')}; p99 slope "
        f"{fmt(summary['fresh_p99_slope_ms_min'], 'ms/min', 2)} "
        f"({'flat' if summary['freshness_flat'] else 'NOT flat'}, threshold "
        f"{opts.max_p99_slope:g})\n"
        f"  hopcast run's own progress lines (exact, last ~2 s): p50 / p99 second half mean "
        f"{fmt(summary['status_p50_ms_mean_second_half'], 'ms')} / "
        f"{fmt(summary['status_p99_ms_mean_second_half'], 'ms')}, p99 slope "
        f"{fmt(summary['status_p99_slope_ms_min'], 'ms/min', 2)}\n"
        f"  store write per batch, first / second half mean "
        f"{fmt(summary['write_ms_mean_first_half'], 'ms')} / "
        f"{fmt(summary['write_ms_mean_second_half'], 'ms')}\n"
        f"  {fmt(summary['events_s_mean_second_half'], 'events/s', 0)}, "
        f"{summary['events_total']:,.0f} records ingested; results in {path}",
        flush=True,
    )
    if opts.tracemalloc:
        for line in trace_report(trace_dir):
            print(line)
    if failed:
        print(f"soak FAILED: {failed} (log: {log_path})", file=sys.stderr)
        return 2
    if not opts.keep_data:
        shutil.rmtree(work / "data", ignore_errors=True)
    return 0 if summary["memory_flat"] and summary["freshness_flat"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return child_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 minutes (the default length: 30)")
    ap.add_argument("--minutes", type=float, help="how long to sample after the API answers")
    ap.add_argument("--rate", type=int, default=2000, help="interactions/s (default 2000)")
    ap.add_argument("--devices", type=int, default=1000, help="simulated devices (default 1000)")
    ap.add_argument("--history", type=int, help="interactions loaded first (300k; quick 50k)")
    ap.add_argument("--event-in", type=float, help="seconds until the live event (default: 1/6)")
    ap.add_argument("--every", type=float, help="seconds between samples (default 10; quick 5)")
    ap.add_argument("--max-memory-slope", type=float, default=MAX_MEMORY_SLOPE_KB_MIN)
    ap.add_argument("--max-p99-slope", type=float, default=MAX_P99_SLOPE_MS_MIN)
    ap.add_argument("--tracemalloc", action="store_true", help="find what grows (slower)")
    ap.add_argument("--keep-data", action="store_true", help="keep the child's data directory")
    ap.add_argument("--name", help="results file name (default soak / soak-quick)")
    opts = ap.parse_args(argv)
    opts.minutes = opts.minutes or (2.0 if opts.quick else 30.0)
    opts.every = opts.every or (5.0 if opts.quick else 10.0)
    if opts.history is None:
        opts.history = 50_000 if opts.quick else 300_000
    if opts.event_in is None:  # the live event early enough that it runs within the soak
        opts.event_in = max(30.0, opts.minutes * 60 / 6)
    return soak(opts)


if __name__ == "__main__":
    raise SystemExit(main())

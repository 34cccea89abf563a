"""Writes under read load: the TAO-like read mix over HTTP, alone and with concurrent writers.

One run, one machine, the same data for both systems:

* **hopcast** -- ``hopcast serve --insecure --rate-limit off`` on an LMDB store (fsync per
  commit; group commit of concurrent ``POST /v1/mutations``);
* **sqlite3 peer** -- FastAPI over sqlite3 in WAL mode with ``synchronous=FULL``, an indexed
  edges table and the same three routes (``bench/mixed_peer.py``).

Both are loaded with the demo company of ``bench/graph.py`` (``--edges`` interaction edges plus
the catalogue and members). A load generator in a separate process (asyncio, raw keep-alive
HTTP/1.1, so that the client costs little CPU) then runs, per system:

1. **read-only** -- ``--readers`` closed-loop clients, the read mix: 60% 1-hop newest top-20
   (``GET /v1/nodes/{profile}/neighbours?edge=browsed``; 10% of them on the heavy members) and
   40% node reads (``GET /v1/nodes/{id}`` of profiles, accounts and titles);
2. **mixed** -- the same readers plus ``--writers`` clients sending ``--write-rate`` edge upserts
   a second (``POST /v1/mutations`` with ``--batch`` mutations each, open loop on a schedule).

It reports read QPS (mixed vs read-only, and the ratio: the target is >= 0.8), read and write
latency p50/p99 (write target: p99 <= 20 ms), the achieved write rate, the server's CPU
seconds per phase (reads per server CPU-second is the figure that survives a shared machine)
and the machine's load average. Rows go to ``bench/results/mixed.jsonl``
(``mixed-quick.jsonl`` with ``--quick``), one per (system, phase, measure).

    python bench/mixed.py            # 1M edges, 20 s phases
    python bench/mixed.py --quick    # 50k edges, 6 s phases, < 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOPCAST = str(Path(sys.executable).parent / "hopcast")
#: The line ``hopcast serve`` prints once its socket is bound.
RUNNING = re.compile(r"hopcast API on http://127\.0\.0\.1:(\d+)")
#: Bound on a server's start-up on a loaded machine.
START_TIMEOUT_S = 90
#: Mutations per atomic write while loading (bench/graph.py's streaming batch).
LOAD_BATCH = 50_000
#: Share of neighbour reads in the read mix; the rest are node reads. TAO's published mix is
#: dominated by association range reads and object gets; these are their two routes here.
NEIGHBOUR_SHARE = 0.6
#: Share of neighbour reads on the heavy members (as bench/graph.py and scale_query.py pick).
HEAVY_SHARE = 0.1
DAY_US = 86_400_000_000
#: Untimed read load before the first phase: maps the pages and warms both servers alike.
WARMUP_S = 3.0


def now_us() -> int:
    return time.time_ns() // 1000


# -- data --------------------------------------------------------------------------------------


def build(workdir: Path, edges: int, seed: int, now: int) -> dict[str, Any]:
    """Load the hopcast store and the peer's sqlite file with the same graph; return the read
    and write targets (ids) for the load generator."""
    import mixed_peer
    from graph import company_for, generate
    from hopcast.graph.mutations import EdgeUpsert, NodeUpsert
    from hopcast.graphdb import Graph

    start = now - 90 * DAY_US

    def mutations() -> Iterator[Any]:
        company = company_for(edges, seed)
        company.start_ts = start
        return generate(company, edges, start, now - 60_000_000)

    t0 = time.perf_counter()
    graph = Graph.open(str(workdir / "hopcast"))
    batch: list[Any] = []
    count = 0
    for m in mutations():
        batch.append(m)
        if len(batch) == LOAD_BATCH:
            graph.apply(batch)
            count += len(batch)
            batch = []
    if batch:
        graph.apply(batch)
        count += len(batch)
    graph.close()
    hopcast_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    mixed_peer.load(
        str(workdir / "peer.sqlite3"),
        ((m.node, m.ts, json.dumps(m.props)) for m in mutations() if type(m) is NodeUpsert),
        ((m.src, m.type, m.dst, m.ts) for m in mutations() if type(m) is EdgeUpsert),
    )
    peer_s = time.perf_counter() - t0
    company = company_for(edges, seed)
    return {
        "mutations": count,
        "load_s": {"hopcast": round(hopcast_s, 1), "sqlite3": round(peer_s, 1)},
        "profiles": company.profile_ids(),
        "heavy": company.heavy_profile_ids(),
        "accounts": company.account_ids(),
        "titles": company.title_ids(),
    }


# -- servers -----------------------------------------------------------------------------------


def _wait_http(url: str, path: str, proc: subprocess.Popen[Any]) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering")
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer {path} within {START_TIMEOUT_S} s")


@contextmanager
def hopcast_server(store: Path, workers: int) -> Iterator[tuple[str, int]]:
    """``hopcast serve`` on ``store`` (port 0, read back from its start-up line)."""
    cmd = [HOPCAST, "--store", str(store), "serve", "--port", "0", "--insecure"]
    cmd += ["--rate-limit", "off", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port: list[int] = []
    ready = threading.Event()

    def pump() -> None:  # drain the pipe for as long as the server runs
        assert proc.stdout is not None
        for line in proc.stdout:
            if not port and (m := RUNNING.search(line)):
                port.append(int(m.group(1)))
                ready.set()
            elif "Traceback" in line or "ERROR" in line:
                print(f"  hopcast: {line.rstrip()}", file=sys.stderr)
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not ready.wait(START_TIMEOUT_S) or not port:
            raise RuntimeError("hopcast serve printed no address")
        url = f"http://127.0.0.1:{port[0]}"
        _wait_http(url, "/healthz", proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def peer_server(db: Path) -> Iterator[tuple[str, int]]:
    from graph import free_port

    port = free_port()
    script = str(Path(__file__).resolve().parent / "mixed_peer.py")
    proc = subprocess.Popen([sys.executable, script, "--db", str(db), "--port", str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, "/v1/nodes/account:0", proc)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    total, wanted = 0.0, {pid}
    changed = True
    while changed:  # descendants, in any order of discovery
        changed = False
        for p, (ppid, _) in stats.items():
            if ppid in wanted and p not in wanted:
                wanted.add(p)
                changed = True
    for p in wanted:
        if p in stats:
            total += stats[p][1]
    return total


# -- load generator (runs in its own process) --------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection; answers must carry a Content-Length."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, method: str, path: str, body: bytes | None = None) -> int:
        """The answer's status; 599 when the server dropped the connection (reopened next)."""
        try:
            return await self._call(method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            if self.writer is not None:
                self.writer.close()
            self.writer = None
            return 599

    async def _call(self, method: str, path: str, body: bytes | None) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", header)
        if m is None:
            raise RuntimeError(f"{path}: an answer without Content-Length: {header[:200]!r}")
        await self.reader.readexactly(int(m.group(1)))
        if re.search(rb"(?i)\r\nconnection:\s*close", header):
            self.writer.close()
            self.writer = None
        return status


def _pct(samples: list[int], q: float) -> float | None:
    if not samples:
        return None
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(len(s) * q))] / 1e6, 3)  # ns -> ms


async def _load(args: argparse.Namespace, targets: dict[str, Any]) -> dict[str, Any]:
    host, port = args.url.removeprefix("http://").split(":")
    rng = random.Random(args.seed)
    profiles, heavy = targets["profiles"], targets["heavy"]
    node_ids = targets["profiles"] + targets["accounts"] + targets["titles"]
    titles = targets["titles"]
    since = now_us() - 100 * DAY_US
    read_lat: list[int] = []
    write_lat: list[int] = []
    statuses: dict[str, int] = {}
    clock = time.perf_counter_ns
    start = time.monotonic()
    end = start + args.seconds
    writes = {"sent": 0, "late": 0, "mutations": 0}

    def count(kind: str, status: int) -> None:
        key = f"{kind} {status}"
        statuses[key] = statuses.get(key, 0) + 1

    async def reader() -> None:
        conn = Conn(host, int(port))
        while time.monotonic() < end:
            if rng.random() < NEIGHBOUR_SHARE:
                p = rng.choice(heavy) if rng.random() < HEAVY_SHARE else rng.choice(profiles)
                path = f"/v1/nodes/{p}/neighbours?edge=browsed&since={since}&limit=20"
            else:
                path = f"/v1/nodes/{rng.choice(node_ids)}"
            t0 = clock()
            status = await conn.call("GET", path)
            if args.record:
                read_lat.append(clock() - t0)
                count("read", status)

    async def writer(k: int) -> None:
        conn = Conn(host, int(port))
        interval = args.writers * args.batch / args.write_rate  # s between this writer's POSTs
        due = start + interval * k / args.writers
        n = 0
        while due < end:
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -interval:  # more than a slot behind: drop the slot, count it
                writes["late"] += 1
                due += interval
                continue
            ts = now_us()
            items = [
                {
                    "kind": "edge_upsert",
                    "src": rng.choice(profiles),
                    "type": "browsed",
                    "dst": rng.choice(titles),
                    "ts": ts,
                    "id": f"mixed:{args.seed}:{k}:{n}:{i}",
                    "props": {},
                }
                for i in range(args.batch)
            ]
            n += 1
            body = json.dumps({"mutations": items}).encode()
            t0 = clock()
            status = await conn.call("POST", "/v1/mutations", body)
            write_lat.append(clock() - t0)
            count("write", status)
            writes["sent"] += 1
            writes["mutations"] += args.batch
            due += interval

    tasks = [reader() for _ in range(args.readers)]
    if args.write_rate > 0:
        tasks += [writer(k) for k in range(args.writers)]
    t0 = time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    return {
        "seconds": round(elapsed, 2),
        "reads": len(read_lat),
        "read_qps": round(len(read_lat) / elapsed, 1),
        "read_p50_ms": _pct(read_lat, 0.5),
        "read_p99_ms": _pct(read_lat, 0.99),
        "write_requests": writes["sent"],
        "writes_per_s": round(writes["mutations"] / elapsed, 1),
        "write_slots_dropped": writes["late"],
        "write_p50_ms": _pct(write_lat, 0.5),
        "write_p99_ms": _pct(write_lat, 0.99),
        "statuses": statuses,
    }


def loadgen(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="mixed.py loadgen")
    ap.add_argument("--url", required=True)
    ap.add_argument("--targets", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--readers", type=int, required=True)
    ap.add_argument("--writers", type=int, default=0)
    ap.add_argument("--write-rate", type=float, default=0.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-record", dest="record", action="store_false")
    args = ap.parse_args(argv)
    targets = json.loads(Path(args.targets).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_load(args, targets))))
    return 0


def run_phase(url: str, pid: int, targets: Path, args: argparse.Namespace, **kw: Any) -> Any:
    """One load-generator process against ``url``; its report plus the server's CPU seconds."""
    cmd = [sys.executable, __file__, "loadgen", "--url", url, "--targets", str(targets)]
    cmd += ["--readers", str(args.readers), "--seed", str(args.seed)]
    for name, value in kw.items():
        if value is False:
            cmd.append(f"--no-{name}")
        else:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    cpu0 = tree_cpu_s(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = tree_cpu_s(pid) - cpu0
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed: {out.stderr[-2000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report["server_cpu_s"] = round(cpu, 2)
    report["load_avg"] = round(os.getloadavg()[0], 2)
    return report


# -- main --------------------------------------------------------------------------------------


#: Series of hopcast's /metrics read around each phase: how the group commit behaved.
_STAGES = ("wait", "write", "return")
_GROUP_SERIES = (
    "hopcast_write_group_requests_sum",
    "hopcast_write_group_requests_count",
    "hopcast_write_commit_seconds_sum",
    *(
        f'hopcast_write_stage_seconds_{part}{{stage="{stage}"}}'
        for stage in _STAGES
        for part in ("sum", "count")
    ),
)


def group_commit_stats(url: str) -> dict[str, float] | None:
    """The group-commit counters on ``url``'s /metrics (None: not a hopcast server)."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found = {}
    for name in _GROUP_SERIES:
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        if m is None:
            return None
        found[name] = float(m.group(1))
    return found


def group_commit_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> Any:
    """Commits in a phase, requests per commit and the mean commit time (ms), or None."""
    if before is None or after is None:
        return None
    d = {k: after[k] - before[k] for k in _GROUP_SERIES}
    commits = d["hopcast_write_group_requests_count"]
    if not commits:
        return None
    stages = {}
    for stage in _STAGES:  # the server's view of a write request's time, by stage (mean, ms)
        n = d[f'hopcast_write_stage_seconds_count{{stage="{stage}"}}']
        total = d[f'hopcast_write_stage_seconds_sum{{stage="{stage}"}}']
        stages[stage] = round(total / n * 1e3, 2) if n else None
    return {
        "commits": int(commits),
        "requests_per_commit": round(d["hopcast_write_group_requests_sum"] / commits, 2),
        "commit_ms_mean": round(d["hopcast_write_commit_seconds_sum"] / commits * 1e3, 2),
        "stage_ms_mean": stages,
    }


def measure(
    system: str, url: str, pid: int, targets: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    run_phase(url, pid, targets, args, seconds=WARMUP_S, record=False)
    rows = []
    for phase, kw in (
        ("read-only", {}),
        (
            "mixed",
            {"writers": args.writers, "write_rate": args.write_rate, "batch": args.batch},
        ),
    ):
        before = group_commit_stats(url) if system == "hopcast" else None
        report = run_phase(url, pid, targets, args, seconds=args.seconds, **kw)
        report["group_commit"] = group_commit_delta(
            before, group_commit_stats(url) if before is not None else None
        )
        report["reads_per_server_cpu_s"] = (
            round(report["reads"] / report["server_cpu_s"], 1) if report["server_cpu_s"] else None
        )
        rows.append({"system": system, "phase": phase} | report)
        print(f"  {system:8} {phase:9} {json.dumps(report)}", file=sys.stderr)
    return rows


def summary(rows: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Per system: read QPS mixed / read-only (target >= 0.8) and write p99 (target <= 20 ms);
    then hopcast vs the peer."""
    out = []
    by = {(r["system"], r["phase"]): r for r in rows}
    for system in ("hopcast", "sqlite3"):
        ro, mx = by.get((system, "read-only")), by.get((system, "mixed"))
        if ro is None or mx is None:
            continue
        out.append(
            {
                "system": system,
                "measure": "summary",
                "read_qps_read_only": ro["read_qps"],
                "read_qps_mixed": mx["read_qps"],
                "read_qps_ratio": round(mx["read_qps"] / ro["read_qps"], 3),
                "write_p50_ms": mx["write_p50_ms"],
                "write_p99_ms": mx["write_p99_ms"],
                "writes_per_s": mx["writes_per_s"],
                "group_commit": mx.get("group_commit"),
            }
            | params
        )
    if len(out) == 2:
        h, p = out
        out.append(
            {
                "system": "hopcast/sqlite3",
                "measure": "ratios",
                "read_qps_mixed": round(h["read_qps_mixed"] / p["read_qps_mixed"], 2),
                "read_qps_read_only": round(h["read_qps_read_only"] / p["read_qps_read_only"], 2),
                "write_p99": round(p["write_p99_ms"] / h["write_p99_ms"], 2)
                if h["write_p99_ms"]
                else None,
            }
            | params
        )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadgen"]:
        return loadgen(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edges", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each timed phase")
    ap.add_argument("--readers", type=int, default=16, help="closed-loop read clients")
    ap.add_argument("--writers", type=int, default=32, help="write clients (open loop)")
    ap.add_argument("--write-rate", type=float, default=2000.0, help="mutations per second")
    ap.add_argument("--batch", type=int, default=10, help="mutations per POST")
    ap.add_argument("--workers", type=int, default=1, help="hopcast serve --workers")
    ap.add_argument("--only", choices=("hopcast", "sqlite3"), help="run one system")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="50k edges, 6 s phases (< 60 s)")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/mixed.jsonl)")
    args = ap.parse_args(argv)
    if args.quick:
        args.edges, args.seconds = min(args.edges, 50_000), min(args.seconds, 6.0)
    out = args.out or RESULTS / ("mixed-quick.jsonl" if args.quick else "mixed.jsonl")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    params = {
        "edges": args.edges,
        "readers": args.readers,
        "writers": args.writers,
        "write_rate": args.write_rate,
        "batch": args.batch,
        "workers": args.workers,
        "seconds": args.seconds,
        "cores": os.cpu_count(),
        "commit": commit,
        "quick": args.quick,
        # the machine is shared: its load when the run started (1, 5, 15 min), as `uptime`
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    workdir = Path(tempfile.mkdtemp(prefix="hopcast-mixed-"))
    rows: list[dict[str, Any]] = []
    try:
        print(f"loading {args.edges:,} edges into both stores ...", file=sys.stderr)
        data = build(workdir, args.edges, args.seed, now_us())
        print(f"  loaded {data['mutations']:,} mutations: {data['load_s']}", file=sys.stderr)
        targets = workdir / "targets.json"
        targets.write_text(
            json.dumps(
                {k: data[k] for k in ("profiles", "heavy", "accounts")} | {"titles": data["titles"]}
            )
        )
        if args.only in (None, "hopcast"):
            with hopcast_server(workdir / "hopcast", args.workers) as (url, pid):
                rows += measure("hopcast", url, pid, targets, args)
        if args.only in (None, "sqlite3"):
            with peer_server(workdir / "peer.sqlite3") as (url, pid):
                rows += measure("sqlite3", url, pid, targets, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [r | params for r in rows] + summary(rows, params)
    report(rows)
    RESULTS.mkdir(exist_ok=True)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def report(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="writes under read load (read QPS, latency in ms)")
    for col in (
        "system",
        "phase",
        "read QPS",
        "read p50/p99",
        "writes/s",
        "write p50/p99",
        "reads per server CPU-s",
        "load avg",
        "non-200",
    ):
        table.add_column(col)
    for r in rows:
        if "phase" not in r:
            continue
        bad = {k: v for k, v in r["statuses"].items() if not k.endswith(" 200")}
        table.add_row(
            r["system"],
            r["phase"],
            f"{r['read_qps']:,.0f}",
            f"{r['read_p50_ms']} / {r['read_p99_ms']}",
            f"{r['writes_per_s']:,.0f}",
            f"{r['write_p50_ms']} / {r['write_p99_ms']}" if r["write_p50_ms"] else "",
            f"{r['reads_per_server_cpu_s']:,.0f}" if r["reads_per_server_cpu_s"] else "",
            str(r["load_avg"]),
            json.dumps(bad) if bad else "",
        )
    console = Console(stderr=True)
    console.print(table)
    for r in rows:
        if r.get("measure") in ("summary", "ratios"):
            keep = {k: v for k, v in r.items() if k not in ("commit", "cores", "quick")}
            console.print(json.dumps(keep))


if __name__ == "__main__":
    raise SystemExit(main())

"""Event-loop lag of a serving process while a fleet goes live and while a big materialise runs.

One ``hopcast serve``-shaped process (the API and the live gateway on one uvloop event loop, a
durable LMDB store) runs in this process's thread, so the benchmark reads the loop-lag monitor
(:mod:`hopcast.looplag`, 20 ms timer) directly per phase; N devices connect from client
processes (``bench/broadcast_load.py``, the real wire protocol, subscribed to ``global``).
Phases, each reporting the lag p50/p99/max the monitor saw:

* ``idle`` — the fleet connected, nothing happening;
* ``go-live`` — ``POST /v1/live/events/{id}/start`` for the whole fleet, several rounds: also the
  HTTP answer time of the command and the time until every device had the trigger. Run twice:
  ``chunked`` (the gateway's :class:`~hopcast.live.outbox.Outbox`, as shipped) and ``one-go``
  (the outbox's chunk set beyond the fleet: every socket written in one go, as before);
* ``materialise`` — ``POST .../materialise`` of ``--segments`` segments (a job, polled until
  done), while a prober sends ``GET /healthz`` every 20 ms: also the job's duration and the
  probes' latency.

Writes ``bench/results/looplag.jsonl`` (``looplag-quick`` for ``--quick``) and prints a table.

    python bench/looplag.py                 # 10,000 devices, 1,024 segments
    python bench/looplag.py --quick         # 2,000 devices, 256 segments, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from broadcast import SECRET, SECRET_ENV, Proc, free_port  # noqa: E402
from hopcast import Graph  # noqa: E402
from hopcast.api import create_app  # noqa: E402
from hopcast.api.live import GatewayBinding  # noqa: E402
from hopcast.live.fanout import InProcessTransport, Router  # noqa: E402
from hopcast.live.gateway import Gateway  # noqa: E402
from hopcast.live.outbox import CHUNK  # noqa: E402
from hopcast.live.service import LiveService  # noqa: E402
from hopcast.ports import listening_socket  # noqa: E402

RESULTS = HERE / "results"
HOST = "127.0.0.1"
#: Devices per client process (descriptors: each process holds at most 20,000).
PER_CLIENT = 5_000
#: Seconds of the idle phase: enough samples (every 20 ms) for a p99.
IDLE_S = 3.0
#: After the last device has its trigger, the lag is still sampled this long (the last chunk).
SETTLE_S = 0.3
#: Interval of the prober's ``GET /healthz`` during the materialise.
PROBE_EVERY_S = 0.02
#: Bound on connecting the fleet (a few thousand handshakes a second on this host).
CONNECT_TIMEOUT_S = 180.0

console = Console(stderr=True)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class Served:
    """The API and gateway on one loop in a thread, over an LMDB store in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.graph = Graph.open(str(directory / "store"))
        self.service = LiveService(self.graph.store.kv)
        router = Router(InProcessTransport(), payload_for=self.service.payload_for)
        self.service.add_sink(router.publish_all)
        secret = SECRET.encode()
        self.gateway = Gateway(router, secret, node_id="bench")
        self.gw_port = free_port()
        binding = GatewayBinding(self.gateway, HOST, self.gw_port, secret)
        self.app = create_app(self.graph, live=self.service, gateway=binding)
        self.lag = self.app.state.loop_lag
        config = uvicorn.Config(self.app, loop="uvloop", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.sock = listening_socket(HOST, 0)
        self.base = f"http://{HOST}:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        self.http = httpx.Client(base_url=self.base, timeout=120)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/healthz").status_code == 200 and self.gateway.node_id:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 30 s")
            time.sleep(0.05)

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(60)
        self.graph.close()


def phase(lag: Any, name: str, **extra: Any) -> dict[str, Any]:
    stats = lag.stats()
    return {
        "phase": name,
        "lag_p50_ms": ms(stats["p50"]),
        "lag_p99_ms": ms(stats["p99"]),
        "lag_max_ms": ms(stats["max"]),
        "samples": stats["samples"],
    } | extra


def connect(devices: int, port: int, logs: Path) -> list[Proc]:
    env = os.environ | {SECRET_ENV: SECRET, "PYTHONUNBUFFERED": "1"}
    procs = []
    first = 0
    for j in range(max(1, -(-devices // PER_CLIENT))):
        count = min(PER_CLIENT, devices - first)
        argv = [sys.executable, str(HERE / "broadcast_load.py"), "--system", "hopcast"]
        argv += ["--port", str(port), "--source", f"127.9.{1 + j}.1"]
        argv += ["--count", str(count), "--first-id", str(first)]
        procs.append(Proc(f"clients {j}", argv, logs / f"looplag-clients{j}.log", env))
        first += count
    ready = [p.read(CONNECT_TIMEOUT_S) for p in procs]
    opened = sum(r["ready"] for r in ready)
    if opened < devices:
        raise RuntimeError(f"only {opened:,} of {devices:,} devices connected")
    return procs


def go_live(s: Served, procs: list[Proc], rounds: int, mode: str) -> list[dict[str, Any]]:
    rows = []
    for r in range(rounds):
        event = f"{mode}-{r}"
        s.http.post("/v1/live/events", json={"id": event, "title": event, "starts_at": "1h"})
        time.sleep(0.5)  # the "scheduled" trigger is out before the round is armed
        for p in procs:
            p.send(f"arm {r} 120")
        for p in procs:
            assert "armed" in p.read(30)
        s.lag.reset_recent()
        t0 = time.time_ns()
        started = time.perf_counter()
        answer = s.http.post(f"/v1/live/events/{event}/start")
        answered_s = time.perf_counter() - started
        assert answer.status_code == 200, answer.text
        results = [p.read(150) for p in procs]
        time.sleep(SETTLE_S)
        times = [t for res in results for t in res["times"]]
        missing = sum(res["missing"] for res in results)
        rows.append(
            phase(
                s.lag,
                f"go-live ({mode})",
                round=r,
                devices=len(times),
                missing=missing,
                http_answer_ms=ms(answered_s),
                all_delivered_ms=ms((max(times) - t0) / 1e9) if times else None,
            )
        )
        for p in procs:
            p.ask("check", 60)
    return rows


def materialise(s: Served, segments: int) -> dict[str, Any]:
    s.http.post("/v1/live/events", json={"id": "big", "title": "Big", "starts_at": "1h"})
    wanted = [f"seg{i}.x" for i in range(segments)]
    probes: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=s.base, timeout=60) as http:
            while not stop.is_set():
                started = time.perf_counter()
                http.get("/healthz")
                probes.append(time.perf_counter() - started)
                stop.wait(PROBE_EVERY_S)

    prober = threading.Thread(target=probe)
    s.lag.reset_recent()
    prober.start()
    started = time.perf_counter()
    job = s.http.post("/v1/live/events/big/materialise", json={"segments": wanted})
    answered_s = time.perf_counter() - started
    assert job.status_code == 202, job.text
    doc = job.json()
    while doc["state"] in ("queued", "running"):
        time.sleep(0.2)
        doc = s.http.get(doc["url"]).json()
    took_s = time.perf_counter() - started
    stop.set()
    prober.join()
    assert doc["state"] == "done", doc
    probes.sort()
    return phase(
        s.lag,
        "materialise",
        segments=segments,
        writes=doc["progress"]["total"],
        http_answer_ms=ms(answered_s),
        job_s=round(took_s, 1),
        probe_p50_ms=ms(statistics.median(probes)),
        probe_p99_ms=ms(probes[min(len(probes) - 1, int(0.99 * len(probes)))]),
        probe_max_ms=ms(probes[-1]),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--segments", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 devices, 256 segments")
    args = ap.parse_args(argv)
    if args.quick:
        args.devices, args.segments, args.rounds = 2_000, 256, 2
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("looplag-quick.jsonl" if args.quick else "looplag.jsonl")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hopcast-looplag-") as tmp:
        directory = Path(tmp)
        s = Served(directory)
        procs: list[Proc] = []
        try:
            console.print(f"connecting {args.devices:,} devices …")
            procs = connect(args.devices, s.gw_port, directory)
            s.lag.reset_recent()
            time.sleep(IDLE_S)
            rows.append(phase(s.lag, "idle", devices=args.devices))
            console.print("going live (chunked) …")
            rows += go_live(s, procs, args.rounds, "chunked")
            s.gateway._outbox._chunk = 10**9  # every socket in one go, as before the outbox
            console.print("going live (one go) …")
            rows += go_live(s, procs, args.rounds, "one-go")
            s.gateway._outbox._chunk = CHUNK
            console.print(f"materialising {args.segments} segments …")
            rows.append(materialise(s, args.segments))
        finally:
            for p in procs:
                p.stop()
            s.close()
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "devices": args.devices,
    }
    with out.open("a") as f:
        for row in rows:
            f.write(json.dumps(meta | row) + "\n")
    table = Table(title=f"event-loop lag, {args.devices:,} devices (ms)")
    keys = ["phase", "lag_p50_ms", "lag_p99_ms", "lag_max_ms", "http_answer_ms"]
    keys += ["all_delivered_ms", "job_s", "probe_p99_ms", "probe_max_ms"]
    for key in keys:
        table.add_column(key.replace("_ms", "").replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(k) is None else str(row.get(k)) for k in keys))
    Console().print(table)
    console.print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scale-out in one run: the Flink engine's throughput against the embedded engine's on the same
input and machine, and query latency over Redis against LMDB (``bench/scale_query.py``).

Ingest: the demo company's records (snapshot + ``--events`` interactions, with its late,
duplicated and bad records) are put on a Kafka broker started for the run (``deploy/kafka.sh``,
free loopback port, 3 partitions a topic). The largest source topic (the browse log) is then
read to its end, from the same topic, by:

* ``embedded-lmdb``   the embedded engine (one thread) into LMDB, the default;
* ``embedded-redis``  the embedded engine into Redis (the store's cost, apart from the engine);
* ``flink-lmdb-p1``   the Flink job (``FlinkJob(bounded=True)``, local MiniCluster, thread mode)
  with parallelism 1 into LMDB: the engine's cost against ``embedded-lmdb``, same store;
* ``flink-redis-p1``  the same into Redis (against ``embedded-redis``);
* ``flink-redis-1tm-p1`` / ``flink-redis-2tm-p2``  a standalone Flink cluster started for the
  run (``deploy/flink.sh cluster-start --taskmanagers 2 --slots 1``): the job with parallelism 1
  runs in one TaskManager process, with parallelism 2 in both (in thread mode one TaskManager
  is one interpreter lock, so more cores need more TaskManagers).

Each is timed twice: ``wall`` from start to the last write (Flink's includes starting its JVM
and MiniCluster or submitting the job, 10-40 s), and ``steady`` without the start-up (the
embedded engine's from its sources being open, the Flink job's from the first window its store
shows): what a long-running job sustains. ``cpu`` is events per CPU-second over the steady
part: the embedded engine's process, or the Flink JVMs' (the MiniCluster's, or the cluster's
JobManager and TaskManagers) -- the figure that holds on a shared machine, where wall time does
not. Rates are events/s; ratio rows divide by ``embedded-lmdb``'s and by the same store's
embedded run. Every run's graph is checked against ``embedded-lmdb``'s (equal, or the run
fails).

Rows follow the benchmark contract (``system``, ``measure``, ``unit``, ``value`` or
``p50``/``p99``, the parameters); the table is printed from them and they are written to
``bench/results/scale.jsonl`` (``scale-quick.jsonl`` with ``--quick``).

    python bench/scale.py            # 100k events, 1M-edge query graph
    python bench/scale.py --quick    # small, < 60 s of work after start-up
    python bench/scale.py --ingest-only   # the ingest rows only (the file keeps its query rows)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scale_query
from graph import free_port
from hopcast.demo.kafka import demo_input, publish, topic_name
from hopcast.graphdb import Graph
from hopcast.stream.engines import engine_for
from hopcast.stream.engines.buckets import Totals
from hopcast.stream.engines.flink import FlinkJob, KafkaInput
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.sources.kafka import KafkaSource

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
KAFKA_SCRIPT = ROOT / "deploy" / "kafka.sh"
FLINK_SCRIPT = ROOT / "deploy" / "flink.sh"
#: The standalone cluster's TaskManagers (one slot each: a parallelism-2 job uses both).
TASKMANAGERS = 2
SOURCE = "browse"
QUICK_EVENTS = 20_000
FULL_EVENTS = 100_000

console = Console(stderr=True)


@contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka broker for the run (deploy/kafka.sh on free loopback ports), stopped after."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="hopcast-bench-kafka-")
    ctl = free_port()
    cmd = [str(KAFKA_SCRIPT), "start", "--port", str(port), "--controller-port", str(ctl)]
    cmd += ["--dir", directory]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run(
            [str(KAFKA_SCRIPT), "stop", "--port", str(port), "--dir", directory],
            check=False,
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def flink_cluster() -> Iterator[tuple[str, Path]]:
    """A standalone Flink cluster (deploy/flink.sh, free loopback ports, ``TASKMANAGERS``
    TaskManagers of one slot), stopped after: its REST ``host:port`` and its directory."""
    port, rpc = free_port(), free_port()
    directory = Path(tempfile.mkdtemp(prefix="hopcast-bench-flink-"))
    common = ["--port", str(port), "--dir", str(directory)]
    cmd = [str(FLINK_SCRIPT), "cluster-start", *common, "--rpc-port", str(rpc)]
    cmd += ["--taskmanagers", str(TASKMANAGERS), "--slots", "1", "--python", sys.executable]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    try:
        yield f"127.0.0.1:{port}", directory
    finally:
        subprocess.run(
            [str(FLINK_SCRIPT), "cluster-stop", *common],
            check=False,
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(directory, ignore_errors=True)


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far (gone ones count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _java_children() -> list[int]:
    """This process's child JVMs (PyFlink's gateway, which runs a local MiniCluster)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and name == "java":
            out.append(int(stat.parent.name))
    return out


def _cluster_jvms(directory: Path) -> list[int]:
    """The cluster's JobManager and TaskManager pids (deploy/flink.sh's pid files)."""
    pids: list[int] = []
    for f in directory.glob("*.pid"):
        pids += [int(line) for line in f.read_text().split() if line.strip().isdigit()]
    return pids


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def run_embedded(bootstrap: str, topic: str, store: str, records: int) -> dict[str, float]:
    """The embedded engine on the topic until every record is in; wall and steady seconds, and
    the CPU seconds of this process meanwhile (steady part)."""
    with Graph.open(store) as graph:
        source = KafkaSource(SOURCE, bootstrap, [topic], group_id=f"bench-{time.time_ns()}")
        maps = Mapping.load_dir(DEMO_MAPPINGS, graph.schema)
        engine = engine_for(graph, [source], {SOURCE: maps[SOURCE]})
        t0 = time.perf_counter()
        engine.open()
        opened = time.perf_counter()
        cpu0 = time.process_time()
        while engine.stats.events < records:
            engine.step()
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"embedded engine stalled at {engine.stats.events:,}")
        end = time.perf_counter()
        cpu = time.process_time() - cpu0
        engine.close()
    return {"wall": end - t0, "steady": end - opened, "cpu": cpu}


def run_flink(
    bootstrap: str,
    topic: str,
    store: str,
    parallelism: int,
    work: Path,
    cluster: tuple[str, Path] | None = None,
) -> dict[str, float]:
    """The Flink job on the topic, bounded, into ``store`` (on ``cluster``, or a local
    MiniCluster); wall and steady seconds (steady from the first write the store shows to the
    last), and the CPU seconds of the Flink JVMs over the steady part."""
    seen: list[float] = []
    jvms = (lambda: _cluster_jvms(cluster[1])) if cluster else _java_children

    def progress(status: str, totals: Totals) -> None:
        if totals.windows and not seen:
            seen.extend([time.perf_counter(), _cpu_of(jvms())])

    job = FlinkJob(
        SOURCE,
        KafkaInput.parse(SOURCE, f"kafka:{bootstrap}/{topic}#group=bench-{time.time_ns()}"),
        store,
        parallelism=parallelism,
        bounded=True,
        checkpoint_dir=work / f"chk-{time.time_ns()}",
        restore=None,
        jobmanager=cluster[0] if cluster else None,
    )
    t0 = time.perf_counter()
    status = job.execute(on_progress=progress, progress_every_s=0.2)
    end = time.perf_counter()
    cpu = _cpu_of(jvms())
    if status != "FINISHED":
        raise RuntimeError(f"the Flink job ended {status}")
    if not seen:
        raise RuntimeError("the Flink job finished before its progress was seen")
    return {"wall": end - t0, "steady": end - seen[0], "cpu": cpu - seen[1]}


def sample_nodes(values: list[bytes], n: int = 60) -> list[str]:
    """Profiles and accounts the browse records name (the nodes the graphs are compared on)."""
    out: set[str] = set()
    for v in values:
        try:
            request = json.loads(v)["request"]
            out.add(f"profile:{request['profile_id']}")
            out.add(f"account:{request['account_id']}")
        except (ValueError, KeyError, TypeError):
            continue  # a deliberately bad record
    return sorted(out)[:n]


def graph_of(store: str, nodes: list[str]) -> dict[tuple[str, str], Any]:
    """The browse mapping's edges of ``nodes`` with their times and properties: every engine
    must have built the same (a lost or doubled window shows here)."""
    out: dict[tuple[str, str], Any] = {}
    with Graph.open(store) as graph:
        for node in nodes:
            edge = "browsed" if node.startswith("profile:") else "logged_in_from"
            page = graph.neighbours(node, edge, limit=1000)
            out[(node, edge)] = sorted(
                (e.other(node), e.ts, sorted(e.props.items())) for e in page.edges
            )
    return out


def run_ingest(events: int, quick: bool, work: Path) -> list[dict[str, Any]]:
    params = {"events": events, "mode": "quick" if quick else "full", "source": SOURCE}
    rows: list[dict[str, Any]] = []
    data = demo_input(events, accounts=2000 if not quick else 400)
    records = [r for r in data.records() if r.source == SOURCE]
    nodes = sample_nodes([r.value for r in records])
    with kafka_broker() as bootstrap, scale_query.redis_server() as redis_url:
        console.print(f"kafka {bootstrap}, redis {redis_url}: publishing {len(data.records()):,}")
        publish(bootstrap, data.records(), prefix="bench.", partitions=3)
        topic = topic_name("bench.", SOURCE)
        n = len(records)
        runs: dict[str, dict[str, float]] = {}
        graphs: dict[str, Any] = {}
        lmdb = work / "lmdb"
        runs["embedded-lmdb"] = run_embedded(bootstrap, topic, str(lmdb), n)
        graphs["embedded-lmdb"] = graph_of(str(lmdb), nodes)
        flush_redis(redis_url)
        runs["embedded-redis"] = run_embedded(bootstrap, topic, redis_url, n)
        graphs["embedded-redis"] = graph_of(redis_url, nodes)
        flink_lmdb = work / "flink-lmdb"
        runs["flink-lmdb-p1"] = run_flink(bootstrap, topic, str(flink_lmdb), 1, work)
        graphs["flink-lmdb-p1"] = graph_of(str(flink_lmdb), nodes)
        flush_redis(redis_url)
        runs["flink-redis-p1"] = run_flink(bootstrap, topic, redis_url, 1, work)
        graphs["flink-redis-p1"] = graph_of(redis_url, nodes)
        with flink_cluster() as cluster:
            for name, p in (("flink-redis-1tm-p1", 1), (f"flink-redis-{TASKMANAGERS}tm-p2", 2)):
                flush_redis(redis_url)
                runs[name] = run_flink(bootstrap, topic, redis_url, p, work, cluster)
                graphs[name] = graph_of(redis_url, nodes)
        if not any(graphs["embedded-lmdb"].values()):
            raise RuntimeError("the comparison sample is empty")
        for name, g in graphs.items():
            if g != graphs["embedded-lmdb"]:
                raise RuntimeError(f"{name} built a different graph than embedded-lmdb")
        for name, times in runs.items():
            for measure, seconds in times.items():
                unit = "events/cpu-s" if measure == "cpu" else "events/s"
                rows.append(
                    {
                        "system": f"hopcast-{name}",
                        "measure": f"ingest {measure}",
                        "unit": unit,
                        "value": round(n / seconds, 1),
                        "seconds": round(seconds, 3),
                        "records": n,
                    }
                    | params
                )
                console.print(
                    f"{name:20} {measure:6} {n / seconds:10,.0f} {unit} ({seconds:.1f} s)"
                )
    by = {(r["system"], r["measure"]): r["value"] for r in rows}
    for r in list(rows):
        name = r["system"].removeprefix("hopcast-")
        peers = ["embedded-lmdb"]
        if name.startswith("flink-"):
            peers.append("embedded-" + name.split("-")[1])  # the same store's embedded run
        if name.startswith("flink-redis-") and name.endswith("-p2"):
            peers.append("flink-redis-1tm-p1")  # two TaskManagers against one
        for peer in dict.fromkeys(peers):
            if peer == name:
                continue
            rows.append(
                {
                    "system": f"{name}/{peer}",
                    "measure": r["measure"],
                    "unit": "x",
                    "value": round(r["value"] / by[(f"hopcast-{peer}", r["measure"])], 3),
                }
                | params
            )
    return rows


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(
        title=f"ingest: the {SOURCE} topic through each engine (events/s; ratios to "
        "embedded-lmdb and to the embedded engine on the same store)"
    )
    t.add_column("system")
    for m in ("wall", "steady", "cpu"):
        t.add_column(f"ingest {m}" if m != "cpu" else "events/cpu-s", justify="right")
        if m != "wall":
            t.add_column("/ lmdb", justify="right")
            t.add_column("/ same store", justify="right")
    by = {(r["system"], r["measure"]): r for r in rows}
    for system in dict.fromkeys(r["system"] for r in rows if r["unit"] == "events/s"):
        name = system.removeprefix("hopcast-")
        same = "embedded-" + name.split("-")[1]
        cells = [name]
        for m in ("wall", "steady", "cpu"):
            r = by[(system, f"ingest {m}")]
            cells.append(f"{r['value']:,.0f} ({r['seconds']:.1f} s)")
            if m == "wall":
                continue
            for peer in ("embedded-lmdb", same):
                ratio = by.get((f"{name}/{peer}", f"ingest {m}"))
                cells.append("" if ratio is None else f"{ratio['value']:.2f}x")
        t.add_row(*cells)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--events", type=int, help="interactions to generate")
    ap.add_argument("--edges", type=int, help="edges of the query graph")
    ap.add_argument(
        "--ingest-only",
        action="store_true",
        help="only the ingest rows (the results file keeps its query rows)",
    )
    args = ap.parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    edges = args.edges or (scale_query.QUICK_EDGES if args.quick else 1_000_000)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hopcast-bench-scale-"))
    try:
        rows = run_ingest(events, args.quick, work)
        if not args.ingest_only:
            rows += scale_query.run(edges, args.quick, http=not args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("scale-quick.jsonl" if args.quick else "scale.jsonl")
    if args.ingest_only and path.exists():  # keep the query rows of the last full run
        kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows += [r for r in kept if "ingest" not in r["measure"]]
    out = Console(width=200)
    out.print(table(rows))
    out.print(scale_query.table([r for r in rows if "ingest" not in r["measure"]]))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

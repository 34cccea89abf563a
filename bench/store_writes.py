"""Graph-store writes into Redis against LMDB, with the physical limit of Redis beside them.

One run, one machine, the same mutation batches (the demo company of ``bench/graph.py``: its
catalogue and members, then interactions with realistic skew; batches of
:data:`BATCH` mutations, the load of ``bench/scale_query.py``) written by:

* ``hopcast-lmdb``   ``GraphStore.apply`` over LMDB (``sync=False``, as ``bench/scale_query.py``
  loads it: the Redis server of the run has no persistence either);
* ``hopcast-redis``  ``GraphStore.apply`` over Redis (a server started for the run with
  ``deploy/redis.sh`` on a free loopback port, stopped at the end): the LWW reads, the
  script, the expiry index, the checkpoint of every batch;
* ``raw-redis``      the physical limit: the items the same batches write (every edge's three
  items and every node's item, with hopcast's key names, blob sizes and expiry-index
  entries, under another prefix), sent with redis-py as plain pipelined commands, one
  pipeline per batch, one variadic ``HSET`` and ``ZADD`` per record and one ``ZADD`` into the
  expiry index -- no reads, no script, no LWW. The commands are built before the clock
  starts, so this is Redis and the socket alone;
* ``raw-redis-no-expiry-index``  the same without the expiry index's ``ZADD``: what a layout
  without a per-item expiry index (e.g. one entry per record) could reach at best.

With ``--cluster`` a 3-node Redis Cluster (``deploy/redis.sh cluster-start``) adds
``hopcast-redis-cluster``. On a Cluster hopcast also keeps one marker per list entry (the
newest version written of it, so that concurrent writers of one edge converge in each list's
own slot; see ``hopcast.kv.redis``): items the raw rows do not write.

Rows follow the benchmark contract (``system``, ``measure``, ``unit``, ``value`` and the run's
parameters): ``writes/s`` (mutations per second of wall time; for ``raw-redis`` the mutations
its items stand for), the client's and the Redis server's CPU seconds (``INFO cpu``; the server
also reports its script time from ``INFO commandstats``) and ``writes/cpu-s`` (mutations per
CPU-second of client and server together: wall time is unreliable on a shared machine), plus
ratio rows ``redis/lmdb`` and ``hopcast-redis/raw-redis`` (unit ``x``). Written to
``bench/results/store_writes.jsonl`` (``store_writes-quick.jsonl`` with ``--quick``).

    python bench/store_writes.py             # 500k interactions (~570k mutations)
    python bench/store_writes.py --quick     # 30k interactions, < 60 s
    python bench/store_writes.py --quick --cluster
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis
import redis.cluster
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph import batches, company_for, generate
from hopcast.durations import DAY
from hopcast.graph import keys
from hopcast.graph.mutations import EdgeUpsert, Mutation, NodeUpsert, token_of
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore, encode_props
from hopcast.kv.base import HEADER, expiry
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.redis import RedisKV, _member
from scale_query import redis_cluster, redis_server

RESULTS = Path(__file__).resolve().parent / "results"
#: Mutations per atomic write: ``bench/scale_query.py``'s load batch (a Flink window or an
#: embedded micro-batch is of this order).
BATCH = 5_000
#: Interactions of a full and of a quick run. The full run's ~1.7M stored items take about
#: 1 GB in Redis; the quick one stays under a minute on a busy 2-core machine.
FULL_EDGES, QUICK_EDGES = 500_000, 30_000
#: A fixed "now", as in bench/graph.py, so runs are comparable.
NOW = 1_800_000_000_000_000

console = Console(stderr=True)


def mutation_batches(edges: int, seed: int) -> list[list[Mutation]]:
    company = company_for(edges, seed)
    return list(batches(generate(company, edges, NOW - 90 * DAY, NOW), BATCH))


def redis_cpu(client: Any) -> tuple[float, float]:
    """(server CPU seconds, script µs) so far, summed over every primary of a Cluster."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes = client.get_primaries()
        cpu = client.info("cpu", target_nodes=nodes)
        stats = client.info("commandstats", target_nodes=nodes)
        per_node = [(c, stats.get(n, {})) for n, c in cpu.items()]
    else:
        per_node = [(client.info("cpu"), client.info("commandstats"))]
    seconds = sum(c["used_cpu_user"] + c["used_cpu_sys"] for c, _ in per_node)
    script = sum(s.get("cmdstat_evalsha", {}).get("usec", 0) for _, s in per_node)
    return seconds, float(script)


class Timing:
    """Wall, client CPU and server CPU (and script time) of a block."""

    def __init__(self, server: Any | None) -> None:
        self.server = server
        self.wall = self.client = self.server_cpu = self.script_s = 0.0

    def __enter__(self) -> Timing:
        gc.collect()
        self._s0 = redis_cpu(self.server) if self.server is not None else (0.0, 0.0)
        self._w0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w0
        self.client = time.process_time() - self._c0
        if self.server is not None:
            s1 = redis_cpu(self.server)
            self.server_cpu = s1[0] - self._s0[0]
            self.script_s = (s1[1] - self._s0[1]) / 1e6


def load_store(store: GraphStore, work: list[list[Mutation]]) -> None:
    for i, batch in enumerate(work):
        store.apply(batch, {"bench": str(i).encode()})


def raw_commands(kv: RedisKV, schema: Schema, work: list[list[Mutation]]) -> list[list[Any]]:
    """Per batch, the pipelined commands that write its items plainly (see the module doc)."""
    ns_ttl: dict[str, int | None] = {}
    for name, nt in schema.nodes.items():
        ns_ttl[keys.node_ns(name)] = nt.retention_us
    for name, et in schema.edges.items():
        for ns in (keys.out_ns(name), keys.in_ns(name), keys.key_ns(name)):
            ns_ttl[ns] = et.retention_us
    exp = kv._exp
    out: list[list[Any]] = []
    for batch in work:
        records: dict[tuple[str, bytes], list[bytes]] = {}
        index: list[Any] = []

        def item(
            ns: str,
            rid: bytes,
            key: bytes,
            value: bytes,
            ts: int,
            tok: int,
            records: dict[tuple[str, bytes], list[bytes]] = records,
            index: list[Any] = index,
        ) -> None:
            expires_at = expiry(ts, ns_ttl[ns], False)
            records.setdefault((ns, rid), []).extend(
                (key, HEADER.pack(ts, tok, expires_at, 0) + value)
            )
            if expires_at:
                index.extend((expires_at, _member(ns, rid, key)))

        for m in batch:
            if type(m) is EdgeUpsert:
                src, dst, raw, tok = (
                    m.src.encode(),
                    m.dst.encode(),
                    encode_props(m.props),
                    token_of(m),
                )
                inv = keys.inv_ts(m.ts)
                item(keys.out_ns(m.type), src, inv + dst, raw, m.ts, tok)
                item(keys.in_ns(m.type), dst, inv + src, raw, m.ts, tok)
                item(keys.key_ns(m.type), src, dst, raw, m.ts, tok)
            elif type(m) is NodeUpsert:
                ns = keys.node_ns(m.node.partition(":")[0])
                item(ns, m.node.encode(), keys.NODE_ITEM, encode_props(m.props), m.ts, token_of(m))
        cmds: list[Any] = []
        for (ns, rid), pairs in records.items():
            z, h = kv._keys(ns, rid)
            cmds.append(("HSET", h, *pairs))
            zargs: list[Any] = []
            for key in pairs[::2]:
                zargs += (0, key)
            cmds.append(("ZADD", z, *zargs))
        if index:
            cmds.append(("ZADD", exp, *index))
        out.append(cmds)
    return out


def load_raw(client: Any, commands: list[list[Any]]) -> None:
    for cmds in commands:
        pipe = client.pipeline(transaction=False)
        for c in cmds:
            pipe.execute_command(*c)
        pipe.execute()


#: Records the atomicity probe writes in every batch: enough to land on every primary of a
#: 3-node Cluster many times over, few enough that one sequential read of all is quick.
PROBE_RECORDS = 48
#: Seconds the probe writes in a full and in a quick run.
PROBE_SECONDS, QUICK_PROBE_SECONDS = 20.0, 4.0


def atomicity_probe(url: str, seconds: float) -> dict[str, float]:
    """How often, and for how long, a reader sees a batch half-applied.

    For ``seconds``, a writer puts batch ``i`` into :data:`PROBE_RECORDS` records (item value
    ``i``, checkpoint ``i``), one batch after another; a reader process reads the records one
    by one, in order, over and over. Batches are applied in order, so a read that finds an
    older batch in a record than a record read *before* it saw a batch not yet whole: a torn
    read. On one server a batch is one script and a torn read cannot happen (the probe's own
    check); on a Cluster it is visible while the batch's slot groups are applied.

    Returns:
        batches, sweeps (reads of all records), torn sweeps (those that saw a torn batch),
        their share, and the writer's apply time per batch (p50, p99, max, ms): how long each
        batch is partly visible.
    """
    prefix = f"probe-{os.urandom(4).hex()}:"  # a fresh store: no batches of an earlier run
    writer = RedisKV(url, prefix=prefix)
    writer.configure("probe", None)
    ctx = multiprocessing.get_context("spawn")  # its own interpreter: no GIL shared with us
    stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=probe_reader, args=(url, prefix, stop, ready, results), daemon=True)
    reader.start()
    if not ready.wait(60):
        raise RuntimeError("the probe's reader process did not start within 60 s")
    apply_ms: list[float] = []
    try:
        end, i = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            i += 1
            t0 = time.perf_counter()
            with writer.writer() as w:
                for j in range(PROBE_RECORDS):
                    w.put("probe", b"p%d" % j, b"v", b"%d" % i, i + 1, 0)
                w.set_checkpoint("probe", b"%d" % i)
            apply_ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        stop.set()
        writer.close()
    sweeps, torn = results.get(timeout=60)
    reader.join(60)
    apply_ms.sort()
    return {
        "batches": len(apply_ms),
        "sweeps": sweeps,
        "torn sweeps": torn,
        "torn share": torn / max(1, sweeps),
        "apply p50 ms": apply_ms[len(apply_ms) // 2],
        "apply p99 ms": apply_ms[min(len(apply_ms) - 1, int(len(apply_ms) * 0.99))],
        "apply max ms": apply_ms[-1],
    }


def probe_reader(url: str, prefix: str, stop: Any, ready: Any, results: Any) -> None:
    """The probe's reader (a process of its own): sweeps until ``stop``, then puts
    (sweeps, torn sweeps) on ``results``."""
    reader = RedisKV(url, prefix=prefix)
    rids = [b"p%d" % i for i in range(PROBE_RECORDS)]
    sweeps = torn = 0
    ready.set()
    with reader.reader() as r:
        while not stop.is_set():
            seen, tore = -1, False
            for rid in rids:
                item = r.get("probe", rid, b"v", NOW)
                value = -1 if item is None else int(item.value)
                tore = tore or value < seen
                seen = max(seen, value)
            sweeps += 1
            torn += tore
    reader.close()
    results.put((sweeps, torn))


def run(edges: int, quick: bool, cluster: bool, seed: int) -> list[dict[str, Any]]:
    params = {"edges": edges, "batch": BATCH, "quick": quick, "seed": seed}
    params |= {"load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    rows: list[dict[str, Any]] = []

    def row(system: str, measure: str, value: float, unit: str) -> None:
        rows.append(
            {"system": system, "measure": measure, "unit": unit, "value": round(value, 3)} | params
        )

    with console.status("generating the batches"):
        work = mutation_batches(edges, seed)
    mutations = sum(len(b) for b in work)
    params["mutations"] = mutations
    gc.collect()
    gc.freeze()  # the batches are the benchmark's, not the stores': keep them out of the GC
    schema = Schema.demo()
    clock: Callable[[], int] = lambda: NOW  # noqa: E731

    def record(system: str, t: Timing, count: int) -> None:
        row(system, "writes/s", count / t.wall, "writes/s")
        row(system, "wall", t.wall, "s")
        row(system, "client cpu", t.client, "s")
        if t.server is not None:
            row(system, "server cpu", t.server_cpu, "s")
            row(system, "server script time", t.script_s, "s")
        row(system, "writes/cpu-s", count / (t.client + t.server_cpu), "writes/cpu-s")
        console.print(
            f"{system}: {count:,} mutations in {t.wall:.1f} s = {count / t.wall:,.0f}/s "
            f"(client cpu {t.client:.1f} s, server cpu {t.server_cpu:.1f} s, "
            f"script {t.script_s:.1f} s, load {os.getloadavg()[0]:.1f})"
        )

    with ExitStack() as stack:
        directory = tempfile.mkdtemp(prefix="hopcast-bench-store-writes-")
        stack.callback(shutil.rmtree, directory, True)
        with console.status("LMDB"):
            kv_lmdb = LmdbKV(str(Path(directory) / "lmdb"), sync=False)
            stack.callback(kv_lmdb.close)
            with Timing(None) as t:
                load_store(GraphStore(kv_lmdb, schema, clock=clock), work)
        record("hopcast-lmdb", t, mutations)
        lmdb_rate = mutations / t.wall

        url = stack.enter_context(redis_server())
        client = redis.Redis.from_url(url)
        stack.callback(client.close)
        with console.status("Redis through hopcast"):
            kv = RedisKV(url, prefix="hopcast:")
            stack.callback(kv.close)
            with Timing(client) as t:
                load_store(GraphStore(kv, schema, clock=clock), work)
        record("hopcast-redis", t, mutations)
        redis_rate = mutations / t.wall
        redis_cpu_s = t.client + t.server_cpu

        with console.status("Redis, raw pipelined commands"):
            raw_kv = RedisKV(url, prefix="raw:")
            stack.callback(raw_kv.close)
            commands = raw_commands(raw_kv, schema, work)
            with Timing(client) as t:
                load_raw(client, commands)
        record("raw-redis", t, mutations)
        raw_rate = mutations / t.wall
        raw_cpu_s = t.client + t.server_cpu

        with console.status("Redis, raw pipelined commands without the expiry index"):
            bare_kv = RedisKV(url, prefix="bare:")
            stack.callback(bare_kv.close)
            bare = [
                [c for c in b if c[1] != bare_kv._exp] for b in raw_commands(bare_kv, schema, work)
            ]
            del commands
            with Timing(client) as t:
                load_raw(client, bare)
            del bare
        record("raw-redis-no-expiry-index", t, mutations)

        probe_seconds = QUICK_PROBE_SECONDS if quick else PROBE_SECONDS

        def probe(system: str, target: str) -> None:
            with console.status(f"atomicity probe on {system}"):
                found = atomicity_probe(target, probe_seconds)
            for measure, value in found.items():
                unit = "ms" if measure.endswith("ms") else ("share" if "share" in measure else "n")
                row(system, f"probe: {measure}", value, unit)
            console.print(f"{system} atomicity probe: {found}")

        probe("hopcast-redis", url)
        row("redis/lmdb", "writes/s", redis_rate / lmdb_rate, "x")
        row("hopcast-redis/raw-redis", "writes/s", redis_rate / raw_rate, "x")
        row("hopcast-redis/raw-redis", "writes/cpu-s", raw_cpu_s / redis_cpu_s, "x")

        if cluster:
            curl = stack.enter_context(redis_cluster())
            plain = redis.cluster.RedisCluster.from_url("redis://" + curl.partition("://")[2])
            stack.callback(plain.close)
            with console.status("Redis Cluster through hopcast"):
                ckv = RedisKV(curl, prefix="hopcast:")
                stack.callback(ckv.close)
                with Timing(plain) as t:
                    load_store(GraphStore(ckv, schema, clock=clock), work)
            record("hopcast-redis-cluster", t, mutations)
            row("redis-cluster/lmdb", "writes/s", mutations / t.wall / lmdb_rate, "x")
            probe("hopcast-redis-cluster", curl)
    gc.unfreeze()
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"graph-store writes, batches of {BATCH}")
    for col in ("system", "measure", "value", "unit"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for r in rows:
        table.add_row(r["system"], r["measure"], f"{r['value']:,.3f}", r["unit"])
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--edges", type=int, default=None, help="interactions to generate")
    parser.add_argument("--cluster", action="store_true", help="add a 3-node Redis Cluster")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    edges = args.edges or (QUICK_EDGES if args.quick else FULL_EDGES)
    rows = run(edges, args.quick, args.cluster, args.seed)
    report(rows)
    RESULTS.mkdir(exist_ok=True)
    name = "store_writes-quick.jsonl" if args.quick else "store_writes.jsonl"
    with open(RESULTS / name, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

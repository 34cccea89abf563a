"""The Flink engine against a real Kafka broker, real Redis and Flink's MiniCluster (PyFlink,
thread mode): parity with the embedded engine, a killed job restored from its checkpoint, and a
Redis restart mid-stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flinkkit import (
    dead_letters,
    differences,
    dump,
    embedded_reference,
    enriching_mappings,
    seed,
    spec,
)

from hopcast.demo.kafka import DemoInput
from hopcast.demo.records import SOURCES
from hopcast.errors import ConfigError
from hopcast.graph.mutations import NodeUpsert
from hopcast.graphdb import Graph
from hopcast.ports import PortReservation
from hopcast.stream.deadletter import DeadLetter, Reason
from hopcast.stream.engines.buckets import BucketWriter, Totals, read_totals
from hopcast.stream.engines.flink import FlinkJob, KafkaInput, latest_checkpoint, load_mapping
from hopcast.stream.engines.sidestore import SideRow
from hopcast.stream.record import Position, Record

pytestmark = pytest.mark.slow

HOPCAST = str(Path(sys.executable).with_name("hopcast"))


@pytest.fixture
def prefix() -> str:
    return f"f{uuid.uuid4().hex[:8]}."


@pytest.fixture
def redis_store(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis database of the test's own (flushed before and after)."""
    import redis

    db = 8 + (abs(hash(request.node.name)) % 8)
    url = f"{redis_url.rstrip('/')}/{db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_flink_on_redis_and_the_embedded_engine_on_lmdb_build_identical_graphs(
    kafka_bootstrap: str, redis_store: str, prefix: str, tmp_path: Path
) -> None:
    """The demo mappings, with playback enriching from the catalogue's side table:
    under Flink the catalogue job writes the tables to the store and the other jobs read them
    (the reference reads the catalogue first, as the jobs run one after the other)."""
    data = seed(kafka_bootstrap, prefix, 2500)
    maps, schema = enriching_mappings(tmp_path / "maps")
    reference = embedded_reference(
        kafka_bootstrap, prefix, data, tmp_path / "lmdb",
        mappings=maps, schema=schema, first=("catalogue",),
    )  # fmt: skip
    try:
        for source in SOURCES:  # one job per source topic, as in production
            job = FlinkJob(
                source,
                KafkaInput.parse(source, spec(kafka_bootstrap, prefix, source)),
                redis_store,
                schema=str(schema),
                mappings=maps,
                parallelism=2,
                bounded=True,
                checkpoint_dir=tmp_path / "chk" / source,
                checkpoint_interval_ms=1000,
            )
            assert job.execute() == "FINISHED"
        with Graph.open(redis_store, schema) as flink_graph:
            want, got = dump(reference), dump(flink_graph)
            assert len(want) > 5000
            assert got == want, differences(want, got)
            letters = dead_letters(flink_graph)
            assert letters == dead_letters(reference)
            assert len(letters) == sum(1 for r in data.records() if r.bad is not None) > 10
            totals = sum(read_totals(flink_graph.store, f"hopcast-{s}").mutations for s in SOURCES)
            assert totals > 0
            assert enriched(flink_graph, data) > 20  # the watches read the catalogue's table
    finally:
        reference.close()


def enriched(graph: Graph, data: DemoInput) -> int:
    """How many watches' edges carry the kind of their title (from the side table)."""
    kinds = 0
    for r in data.records():
        if r.bad is not None or r.source != "playback":
            continue
        doc = json.loads(r.value)
        if doc.get("op") in ("c", "u", "r"):
            row = doc["after"]
            edges = graph.neighbours(
                f"profile:{row['profile_id']}", "started_watching", limit=1000, lookback="100d"
            ).edges
            kind = {e.dst: e.props.get("kind") for e in edges}.get(f"title:{row['title_id']}")
            kinds += kind in ("movie", "show", "documentary")
    return kinds


def _start_job(
    store: str,
    source_spec: str,
    checkpoints: Path,
    log: Path,
    *extra: str,
    schema: Path | None = None,
) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [
            HOPCAST,
            "--store",
            store,
            *(("--schema", str(schema)) if schema is not None else ()),
            "flink",
            "run",
            "--source",
            source_spec,
            "--checkpoint-dir",
            str(checkpoints),
            "--checkpoint-interval-ms",
            "500",
            "--progress",
            *extra,
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the JVM is a child: kill the whole group
    )


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM to the command (not its JVM): it stops the job with a savepoint, exits 0."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0, log.read_text()[-3000:]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the JVM dies with its group
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def test_a_job_killed_mid_stream_restores_its_checkpoint_and_ends_equal_to_a_clean_run(
    kafka_bootstrap: str, redis_store: str, prefix: str, tmp_path: Path
) -> None:
    source = "browse"
    data = seed(kafka_bootstrap, prefix, 6000)
    reference = embedded_reference(kafka_bootstrap, prefix, data, tmp_path / "lmdb", (source,))
    source_spec = f"{source}={spec(kafka_bootstrap, prefix, source)}"
    checkpoints = tmp_path / "chk"
    log = tmp_path / "job.log"
    want = dump(reference)
    reference.close()
    # one entry per write keeps the job busy long enough to be killed mid-stream
    proc = _start_job(redis_store, source_spec, checkpoints, log, "--max-batch", "1")
    try:
        with Graph.open(redis_store) as graph:

            def progressed() -> bool:
                return (
                    latest_checkpoint(checkpoints) is not None
                    and read_totals(graph.store, f"hopcast-{source}").written > 200
                )

            wait_until(progressed, 120, "a checkpoint and some writes")
            _kill_group(proc)
            partial = dump(graph)
            assert 0 < len(partial) < len(want)  # killed mid-stream
            assert latest_checkpoint(checkpoints) is not None
            proc = _start_job(redis_store, source_spec, checkpoints, log)
            wait_until(lambda: dump(graph) == want, 180, "the restored job to catch up")
            _stop(proc, log)
            assert dump(graph) == want, differences(want, dump(graph))
        assert "resuming from checkpoint" in log.read_text()  # the second run restored
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_an_enriching_job_killed_mid_stream_restores_and_ends_equal_to_a_clean_run(
    kafka_bootstrap: str, redis_store: str, prefix: str, tmp_path: Path
) -> None:
    """Playback enriching from the titles the catalogue job stored: killed with kill -9 and
    restored, its replayed records read the stored table again and the graph ends the same."""
    # 36k interactions make ~5.8k playback records: one per write, the job is still writing
    # when its first checkpoint is in (6k made 970, all written before it on a fast run; 36k
    # left 5.5k of 14.4k graph items written at the kill here)
    data = seed(kafka_bootstrap, prefix, 36000)
    maps, schema = enriching_mappings(tmp_path / "maps")
    names = ("catalogue", "playback")
    reference = embedded_reference(
        kafka_bootstrap, prefix, data, tmp_path / "lmdb", names,
        mappings=maps, schema=schema, first=("catalogue",),
    )  # fmt: skip
    want = dump(reference)
    reference.close()
    catalogue = FlinkJob(
        "catalogue",
        KafkaInput.parse("catalogue", spec(kafka_bootstrap, prefix, "catalogue")),
        redis_store,
        schema=str(schema),
        mappings=maps,
        bounded=True,
        checkpoint_dir=tmp_path / "chk-catalogue",
    )
    assert catalogue.execute() == "FINISHED"
    source_spec = f"playback={spec(kafka_bootstrap, prefix, 'playback')}"
    checkpoints = tmp_path / "chk"
    log = tmp_path / "job.log"
    args = ("--mappings", str(maps))
    proc = _start_job(
        redis_store, source_spec, checkpoints, log, *args, "--max-batch", "1", schema=schema
    )
    try:
        with Graph.open(redis_store, schema) as graph:

            def progressed() -> bool:
                return (
                    latest_checkpoint(checkpoints) is not None
                    and read_totals(graph.store, "hopcast-playback").written > 200
                )

            wait_until(progressed, 120, "a checkpoint and some writes")
            _kill_group(proc)
            assert 0 < len(dump(graph)) < len(want)  # killed mid-stream
            proc = _start_job(redis_store, source_spec, checkpoints, log, *args, schema=schema)
            wait_until(lambda: dump(graph) == want, 180, "the restored job to catch up")
            _stop(proc, log)
            assert dump(graph) == want, differences(want, dump(graph))
            assert enriched(graph, data) > 20
        assert "resuming from checkpoint" in log.read_text()
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_a_bounded_job_killed_after_its_input_ended_restores_and_finishes_equal_to_a_clean_run(
    kafka_bootstrap: str, redis_store: str, prefix: str, tmp_path: Path
) -> None:
    """kill -9 once the bounded input has been read into the job's windows and half of it is
    written; the next bounded run writes what was missing and ends with the clean run's graph,
    its dead letters and exact totals. From the end of input until its last window is written
    the writer holds its task, so no checkpoint completes in between: the restart resumes from
    one taken before the end, or from the start, and skips the records already written by the
    offsets stored with them (not counted twice: the totals prove it)."""
    source = "browse"
    data = seed(kafka_bootstrap, prefix, 6000)
    reference = embedded_reference(kafka_bootstrap, prefix, data, tmp_path / "lmdb", (source,))
    want, want_letters = dump(reference), dead_letters(reference)
    reference.close()
    records = sum(1 for r in data.records() if r.source == source)
    bad = sum(1 for r in data.records() if r.source == source and r.bad is not None)
    source_spec = f"{source}={spec(kafka_bootstrap, prefix, source)}"
    checkpoints = tmp_path / "chk"
    log = tmp_path / "job.log"
    # Windows of 10 s take the whole input (read in a second or two) into Flink state before
    # any is written; one record per write then keeps the job writing long enough to be killed.
    slow = ("--bounded", "--window-ms", "10000", "--max-batch", "1")
    proc = _start_job(redis_store, source_spec, checkpoints, log, *slow)
    job = f"hopcast-{source}"
    try:
        with Graph.open(redis_store) as graph:

            def half_written() -> bool:
                assert proc.poll() is None, "the job ended before it could be killed"
                return read_totals(graph.store, job).windows >= records // 2

            wait_until(half_written, 240, "half of the records written, one per write")
            _kill_group(proc)
            assert read_totals(graph.store, job).windows < records  # killed before the end
            # the same windows (the checkpoint holds them), written in large writes
            proc = _start_job(redis_store, source_spec, checkpoints, log, *slow[:3])
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
            assert dump(graph) == want, differences(want, dump(graph))
            assert dead_letters(graph) == want_letters
            totals = read_totals(graph.store, job)
            assert totals.dead_letters == bad > 0  # each bad record counted once
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_a_mapping_that_reads_side_tables_runs_on_the_tables_in_the_graph_store(
    tmp_path: Path,
) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "x.yaml").write_text(
        "version: 1\nsource: x\nformat: json\ntime: {field: ts, format: us}\n"
        "enrich:\n  - {table: titles, key: '{title_id}', as: title, required: true}\n"
        "rules:\n  - name: n\n    emit:\n"
        "      - node: 'title:{title_id}'\n        props: {name: '{title.name}'}\n"
    )
    job = FlinkJob(
        "x", KafkaInput.parse("x", "kafka:127.0.0.1:1/x"), str(tmp_path / "g"), mappings=maps
    )
    job.check()  # accepted: the side tables are the store's
    now = 1_764_147_600_000_000
    with Graph.open(tmp_path / "g") as graph:
        # what the catalogue job's window writer stores for a changelog row
        BucketWriter(graph.store, "hopcast-catalogue").write(
            0, [SideRow("titles", "5", now - 10, {"name": "Dune"})], Totals()
        )
        pipeline = load_mapping(job.spec(), graph).pipeline(graph.schema)

        def process(title_id: str) -> list[object]:
            value = json.dumps({"title_id": title_id, "ts": now - 5}).encode()
            return pipeline.process(Record("x", Position("x:0", 0), value), now)

        (upsert,) = process("5")
        assert isinstance(upsert, NodeUpsert) and upsert.props == {"name": "Dune"}
        (letter,) = process("6")
        assert isinstance(letter, DeadLetter) and letter.reason == Reason.ENRICHMENT_MISSING


def test_specs_other_than_kafka_are_refused_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="ingest run"):
        KafkaInput.parse("logs", "file:/var/log/x")
    with pytest.raises(ConfigError, match="HOST:PORT/TOPIC"):
        KafkaInput.parse("x", "kafka:localhost:9092")
    parsed = KafkaInput.parse("x", "kafka:h:1/a,b#group=g&security.protocol=SSL")
    assert parsed.topics == ("a", "b") and parsed.group == "g"
    assert parsed.client == (("security.protocol", "SSL"),)


def _redis_server(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """A Redis that keeps what it acknowledged (AOF, fsync on every write) across a kill -9, on
    ``port`` (reserved by the caller: Redis binds it with SO_REUSEADDR)."""
    import redis

    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)

    def answers() -> bool:
        assert proc.poll() is None, f"redis-server on port {port} exited with {proc.returncode}"
        return _pings(client)

    wait_until(answers, 60, f"redis on port {port} to answer PING")
    client.close()
    return proc


def write_retries(metrics_port: int) -> float:
    """The job's ``hopcast_write_retries`` on its Prometheus endpoint (0 while it does not
    answer yet)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=30) as r:
            scraped = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in scraped.splitlines()
        if "hopcast_write_retries" in line and not line.startswith("#")
    )


def _pings(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:
        return False


def test_redis_killed_and_restarted_mid_stream_the_job_backs_off_and_loses_nothing(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, reserved_port: PortReservation
) -> None:

    source = "playback"
    data = seed(kafka_bootstrap, prefix, 6000)
    reference = embedded_reference(kafka_bootstrap, prefix, data, tmp_path / "lmdb", (source,))
    want = dump(reference)
    reference.close()
    # Both ports are reserved for the whole test: Redis comes back on its port after the kill
    # (the job's store URL names it), and the job's metrics reporter binds the other; nothing
    # else can take either meanwhile (see hopcast.ports).
    metrics = PortReservation()
    port, metrics_port = reserved_port.port, metrics.port
    (tmp_path / "redis").mkdir()
    server = _redis_server(port, tmp_path / "redis")
    store = f"redis://127.0.0.1:{port}/0"
    log = tmp_path / "job.log"
    proc = _start_job(
        store,
        f"{source}={spec(kafka_bootstrap, prefix, source)}",
        tmp_path / "chk",
        log,
        "--max-batch",
        "1",
        "--metrics-port",
        str(metrics_port),
    )
    try:
        with Graph.open(store) as graph:
            wait_until(
                lambda: read_totals(graph.store, f"hopcast-{source}").written > 100,
                120,
                "some writes",
            )
        server.kill()  # mid-stream, no goodbye
        server.wait()
        # The job's writes fail meanwhile: it must wait, not drop them. Redis comes back once
        # the job's metrics show it retrying (counted before each back-off).
        wait_until(
            lambda: write_retries(metrics_port) >= 1,
            120,
            "the job to retry a write against the killed Redis (hopcast_write_retries)",
        )
        server = _redis_server(port, tmp_path / "redis")
        with Graph.open(store) as graph:
            wait_until(lambda: dump(graph) == want, 180, "the job to catch up after the restart")
            _stop(proc, log)
            assert dump(graph) == want, differences(want, dump(graph))
            assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        server.kill()
        server.wait()
        metrics.close()


#: Bound on deploy/flink.sh cluster-start: two JVMs on a loaded machine (the script itself
#: waits up to 180 s for the TaskManager to register).
CLUSTER_START_S = 240


def test_jobmanager_submits_jobs_to_a_standalone_cluster_of_two_taskmanagers(
    kafka_bootstrap: str,
    redis_store: str,
    prefix: str,
    tmp_path: Path,
    reserved_port: PortReservation,
    request: pytest.FixtureRequest,
) -> None:
    """deploy/flink.sh cluster-start runs a real JobManager and two TaskManager processes of one
    slot each; a parallelism-2 job runs on both (not on a MiniCluster in this process), a second
    job runs after it on the same TaskManagers, and each builds the embedded engine's graph."""
    import json
    import urllib.request

    script = Path(__file__).resolve().parents[3] / "deploy" / "flink.sh"
    rpc = PortReservation()  # the JobManager's RPC port, which the TaskManagers are told
    request.addfinalizer(rpc.close)
    port = reserved_port.port  # its REST port, which the jobs are submitted to
    directory = tmp_path / "cluster"
    common = ["--port", str(port), "--dir", str(directory)]
    start = [str(script), "cluster-start", *common, "--rpc-port", str(rpc.port)]
    started = subprocess.run(
        [*start, "--taskmanagers", "2", "--slots", "1", "--python", sys.executable],
        capture_output=True,
        text=True,
        timeout=CLUSTER_START_S,
    )
    assert started.returncode == 0, started.stderr + started.stdout

    def rest(path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
            return json.loads(r.read())

    try:
        assert len(rest("/taskmanagers")["taskmanagers"]) == 2
        sources = ("members", "playback")
        data = seed(kafka_bootstrap, prefix, 1500)
        reference = embedded_reference(kafka_bootstrap, prefix, data, tmp_path / "lmdb", sources)
        want = dump(reference)
        reference.close()
        for source in sources:  # the second job meets TaskManagers that ran the first
            done = subprocess.run(
                [HOPCAST, "--store", redis_store, "--json", "flink", "run", "--source",
                 f"{source}={spec(kafka_bootstrap, prefix, source)}", "--bounded",
                 "--parallelism", "2", "--jobmanager", f"127.0.0.1:{port}",
                 "--checkpoint-dir", str(tmp_path / "chk" / source), "--no-progress"],
                capture_output=True,
                text=True,
                timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr[-3000:]
        jobs = rest("/jobs/overview")["jobs"]
        assert sorted(j["name"] for j in jobs) == sorted(f"hopcast-{s}" for s in sources)
        assert {j["state"] for j in jobs} == {"FINISHED"}
        for job in jobs:  # each job's parallel tasks ran in both TaskManager processes
            ran_on = set()
            for vertex in rest(f"/jobs/{job['jid']}")["vertices"]:
                detail = rest(f"/jobs/{job['jid']}/vertices/{vertex['id']}/taskmanagers")
                if vertex["parallelism"] == 2:
                    ran_on |= {tm["taskmanager-id"] for tm in detail["taskmanagers"]}
            assert len(ran_on) == 2, (job["name"], ran_on)
        with Graph.open(redis_store) as graph:
            assert dump(graph) == want, differences(want, dump(graph))
    finally:
        subprocess.run([str(script), "cluster-stop", *common], capture_output=True, timeout=120)

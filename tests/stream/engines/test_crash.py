"""The engine as a process: kill -9 at random points during ingest and restart, again and again
→ the same graph as one clean run; SIGTERM finishes the batch and exits 0; a record the HTTP
route acknowledged survives a kill -9 of the server and is ingested after."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from demo_records import demo_records, graph_dump

from childproc import Child
from hopcast.graphdb import Graph
from hopcast.stream.engines import engine_for, stored_positions
from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping
from hopcast.stream.sources.journal import JournalSource

HOPCAST = [sys.executable, "-c", "from hopcast.cli import main; main()"]
#: Bound on a child's start and first batch on a loaded machine (imports, opening the store);
#: reached only if it hangs.
START_TIMEOUT_S = 120.0
#: Bound on ingesting a few thousand records once started; reached only if it hangs.
INGEST_TIMEOUT_S = 120.0


def write_logs(root: Path, records: dict[str, list[bytes]], part: slice) -> None:
    for name, values in records.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "current.log", "ab") as f:
            f.write(b"".join(v + b"\n" for v in values[part]))
            if part.start is None:
                f.write(b"{not json}\n")  # a dead letter among the good lines


def ingest(store: Path, logs: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [*HOPCAST, "--store", str(store), "ingest", "run", "--no-progress"]
    for name in ("browse", "playback", "members", "games"):
        args += ["--source", f"{name}=file:{logs / name}"]
    args += ["--batch-records", "300", "--batch-ms", "20", "--log-level", "warning", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def checkpoints(store: Path) -> dict[str, bytes]:
    if not store.exists():
        return {}
    with Graph.open(store) as g:
        return g.store.checkpoints()


def test_kill_9_at_random_points_and_restart_gives_the_graph_of_one_clean_run(
    tmp_path: Path,
) -> None:
    records = demo_records(24_000, seed=11)
    logs = tmp_path / "logs"
    half = {n: len(v) // 2 for n, v in records.items()}
    for name, values in records.items():
        write_logs(logs, {name: values}, slice(None, half[name]))
    rng = random.Random(5)
    store = tmp_path / "crashy"
    killed_midway = 0
    for i in range(12):
        if i == 6:  # the services keep logging meanwhile
            for name, values in records.items():
                write_logs(logs, {name: values}, slice(half[name], None))
        before = checkpoints(store)
        coalesce = ["--coalesce"] if i % 2 else []
        proc = ingest(store, logs, "--until-idle", "--batch-records", "100", *coalesce)
        # Wait for the first batch of this run to be written, then kill at a random moment.
        deadline = time.monotonic() + START_TIMEOUT_S
        while checkpoints(store) == before and proc.poll() is None:
            assert time.monotonic() < deadline, f"run {i} wrote no batch in {START_TIMEOUT_S} s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))  # short enough that runs rarely finish first
        if proc.poll() is None:
            killed_midway += 1
        proc.kill()
        proc.wait()
    final = ingest(store, logs, "--until-idle", "--json", "--batch-records", "5000")
    _, err = final.communicate(timeout=60)
    assert final.returncode == 0, err.decode()
    assert killed_midway >= 10
    clean_store = tmp_path / "clean"
    # One run, in batches of another size and without coalescing.
    clean = ingest(clean_store, logs, "--until-idle", "--json", "--batch-records", "5000")
    out_clean, err = clean.communicate(timeout=60)
    assert clean.returncode == 0, err.decode()
    assert json.loads(out_clean)["dead_letters"] == 4
    with Graph.open(store) as a, Graph.open(clean_store) as b:
        dump = graph_dump(a)
        assert sum(len(v) for v in dump.values()) > 50_000
        assert dump == graph_dump(b)  # every node, edge, property, time and id
        assert a.store.checkpoints() == b.store.checkpoints()
        from hopcast.stream.deadletter import DeadLetterStore

        letters_a = sorted(d.id for d in DeadLetterStore(a.store.kv))
        letters_b = sorted(d.id for d in DeadLetterStore(b.store.kv))
        assert letters_a == letters_b and len(letters_a) == 4


def test_sigterm_finishes_the_batch_flushes_and_exits_0(tmp_path: Path) -> None:
    records = demo_records(3000, seed=2)
    logs = tmp_path / "logs"
    write_logs(logs, records, slice(None, None))
    store = tmp_path / "g"
    proc = ingest(store, logs, "--json", "--log-level", "info")
    total = sum(len(v) + 1 for v in records.values())
    # A file's stored position is the offset just past its last ingested line: the engine has
    # everything once every position is at the end of its file. It keeps tailing them.
    sizes = {name: (logs / name / "current.log").stat().st_size for name in records}

    def offsets() -> dict[str, list[int]]:
        if not store.exists():
            return {}
        with Graph.open(store) as g:
            done = stored_positions(g.store, list(records))
        return {name: [p.offset for p in done[name].values()] for name in records}

    deadline = time.monotonic() + START_TIMEOUT_S + INGEST_TIMEOUT_S
    while (at := offsets()) != {name: [size] for name, size in sizes.items()}:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.monotonic() < deadline, f"not every file ingested: {at} of {sizes}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=INGEST_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["events"] == total
    assert b"engine stopped" in err


#: The ingest route alone in a process: its socket listens on a free port before the server
#: starts (requests wait in the backlog), and the port is the first line it prints.
SERVER = textwrap.dedent(
    """
    import sys, uvicorn
    from hopcast.api.ingest import ingest_app
    from hopcast.ports import listening_socket
    from hopcast.stream.sources.journal import Journal
    app = ingest_app({"playback": Journal(sys.argv[1])})
    sock = listening_socket("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    """
)


def test_a_record_acknowledged_with_202_survives_kill_9_and_is_ingested(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    server = Child([sys.executable, "-c", SERVER, str(journal)])
    try:
        (port,) = server.wait_for(r"^(\d+)$", "the ingest server's port")
        url = f"http://127.0.0.1:{port[1]}/v1/ingest/playback"
        lines = demo_records(400, seed=4)["playback"]
        response = httpx.post(url, content=b"\n".join(lines), timeout=INGEST_TIMEOUT_S)
        assert response.status_code == 202
        assert response.json()["accepted"] == len(lines)
    finally:
        server.kill()  # kill -9, right after the 202
    with Graph.open(tmp_path / "g") as g:
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        engine = engine_for(g, [JournalSource("playback", journal)], maps, batch_ms=10)
        stats = engine.run(until_idle=True)
        assert stats.events == len(lines)
        assert stats.dead_letters == 0
        assert stats.mutations > 0


def test_ingest_run_listens_for_http_records_and_serves_its_metrics(tmp_path: Path) -> None:
    args = [*HOPCAST, "--store", str(tmp_path / "g"), "ingest", "run", "--no-progress", "--json"]
    args += ["--source", f"playback=journal:{tmp_path / 'j'}", "--listen", "127.0.0.1:0"]
    args += ["--insecure"]  # loopback, a throw-away store
    proc = Child(args, capture_stdout=True)
    try:
        # it says on stderr where it serves (the free port it bound), once it does
        (listening,) = proc.wait_for(r"listening on (http://127\.0\.0\.1:\d+) ", "--listen")
        base = listening[1]
        lines = demo_records(300, seed=9)["playback"]
        r = httpx.post(base + "/v1/ingest/playback", content=b"\n".join(lines), timeout=30)
        assert r.status_code == 202
        want = f'hopcast_ingest_events_total{{source="playback"}} {float(len(lines))}'
        deadline = time.monotonic() + INGEST_TIMEOUT_S
        while want not in httpx.get(base + "/metrics", timeout=30).text:
            assert time.monotonic() < deadline, f"records not ingested in {INGEST_TIMEOUT_S} s"
            time.sleep(0.05)
    finally:
        code = proc.stop(timeout=INGEST_TIMEOUT_S)
    assert code == 0, proc.output
    assert json.loads(proc.stdout())["events"] == len(lines)

"""Group commit of ``POST /v1/mutations`` (:mod:`hopcast.api.groupcommit`).

Grouping is made deterministic by holding the writer thread in its first request's decoding
(a gate around the committer's ``prepare``) until the other requests are queued -- the
``/metrics`` queue depth says when -- so they are all taken as one group. The group-size
histogram on ``/metrics`` then shows how many requests shared each commit.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.test_workers_consistency import serving
from hopcast import Graph
from hopcast.api import create_app
from hopcast.api.groupcommit import GroupCommitter
from hopcast.durations import DAY, now_us
from hopcast.errors import StorageRefused
from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphStore
from hopcast.kv.base import KVStore

#: Bound on every wait for the writer thread or a queue depth (a loaded machine).
WAIT_S = 30.0


def edge(src: str, dst: str, ts: int, mid: str) -> dict[str, Any]:
    return {"kind": "edge_upsert", "src": src, "type": "browsed", "dst": dst, "ts": ts, "id": mid}


def body(*mutations: dict[str, Any]) -> bytes:
    return json.dumps({"mutations": list(mutations)}).encode()


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} is not on /metrics"
    return float(m.group(1))


class Gate:
    """Holds the committer's writer thread on its first group until released."""

    def __init__(self, committer: GroupCommitter) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        original = committer._handle
        first = [True]

        def handle(group: Any) -> None:
            if first[0]:
                first[0] = False
                self.entered.set()
                assert self.release.wait(WAIT_S), "the test never released the writer thread"
            original(group)

        committer._handle = handle  # type: ignore[method-assign]


async def in_one_group(
    client: httpx.AsyncClient,
    app: Any,
    plug: bytes,
    bodies: list[bytes],
    queued: int | None = None,
) -> tuple[httpx.Response, list[httpx.Response]]:
    """Send ``plug`` (committed alone), then ``bodies`` while the writer is held, so that they
    are queued together and taken as one group; return every answer. ``queued``: how many of
    them reach the queue (default all; a body refused on arrival does not)."""
    queued = len(bodies) if queued is None else queued
    gate = Gate(app.state.committer)
    first = asyncio.create_task(client.post("/v1/mutations", content=plug))
    assert await asyncio.to_thread(gate.entered.wait, WAIT_S), "the plug never reached the writer"
    rest = [asyncio.create_task(client.post("/v1/mutations", content=b)) for b in bodies]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        depth = metric((await client.get("/metrics")).text, "hopcast_write_queue_depth")
        if depth == queued:
            break
        assert loop.time() < deadline, f"{depth} requests queued, not {queued}"
        await asyncio.sleep(0.01)
    gate.release.set()
    return await first, list(await asyncio.gather(*rest))


@contextmanager
def app_over(kv: KVStore) -> Iterator[tuple[Any, Graph]]:
    graph = Graph(GraphStore(kv, Schema.demo()))
    app = create_app(graph)
    try:
        yield app, graph
    finally:
        app.state.committer.close()
        graph.store.close()


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def lmdb_kv(tmp_path: Path) -> KVStore:
    from hopcast.kv.lmdb import LmdbKV

    return LmdbKV(tmp_path / "graph")


@pytest.fixture(params=["lmdb", "redis"])
def store_kv(request: pytest.FixtureRequest, tmp_path: Path) -> KVStore:
    if request.param == "lmdb":
        return lmdb_kv(tmp_path)
    from hopcast.kv.redis import RedisKV

    return RedisKV(
        request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix")
    )


def test_requests_queued_together_share_one_commit_and_each_gets_its_own_answer(
    store_kv: KVStore,
) -> None:
    now = now_us()
    with app_over(store_kv) as (app, graph):

        async def scenario() -> tuple[httpx.Response, list[httpx.Response], str]:
            async with client_of(app) as client:
                first, rest = await in_one_group(
                    client,
                    app,
                    body(edge("profile:1", "title:1", now, "plug")),
                    [
                        # three new edges: all applied
                        body(*(edge("profile:2", f"title:{i}", now, f"new-{i}") for i in range(3))),
                        # an older version of the plug's edge: lost to the newer one
                        body(edge("profile:1", "title:1", now - 10, "older")),
                        # one past the retention (expired on arrival) and one fresh
                        body(
                            edge("profile:3", "title:1", now - 200 * DAY, "old"),
                            edge("profile:3", "title:2", now, "fresh"),
                        ),
                    ],
                )
                return first, rest, (await client.get("/metrics")).text

        first, (new, older, mixed), metrics = asyncio.run(scenario())
        assert first.status_code == 200 and first.json()["applied"] == 1, first.text
        assert new.json() == {
            "applied": 3,
            "skipped": 0,
            "skipped_by_reason": {"lost_to_newer": 0, "expired": 0},
            "expired": [],
        }
        assert older.json()["applied"] == 0 and older.json()["skipped_by_reason"] == {
            "lost_to_newer": 1,
            "expired": 0,
        }
        assert mixed.json()["applied"] == 1
        assert mixed.json()["skipped_by_reason"] == {"lost_to_newer": 0, "expired": 1}
        assert [e["id"] for e in mixed.json()["expired"]] == ["old"]
        # two commits: the plug alone, then the three requests together
        assert metric(metrics, "hopcast_write_group_requests_count") == 2
        assert metric(metrics, "hopcast_write_group_requests_sum") == 4
        assert metric(metrics, "hopcast_write_commit_seconds_count") == 2
        got = {e.dst for e in graph.neighbours("profile:2", "browsed").edges}
        assert got == {"title:0", "title:1", "title:2"}
        with graph.store.read() as view:
            plugged = view.edge("profile:1", "browsed", "title:1")
        assert plugged is not None and plugged.ts == now  # the newer version stayed


@pytest.mark.parametrize("inline", [True, False], ids=["decoded-on-arrival", "decoded-in-group"])
def test_a_bad_request_in_a_group_fails_alone_with_its_own_error(
    tmp_path: Path, inline: bool
) -> None:
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, graph):
        if not inline:  # every body decoded and validated on the writer thread, in its group
            app.state.committer.inline_prepare_bytes = 0

        async def scenario() -> list[httpx.Response]:
            async with client_of(app) as client:
                _, rest = await in_one_group(
                    client,
                    app,
                    body(edge("profile:1", "title:1", now, "plug")),
                    [
                        body(edge("profile:2", "title:1", now, "good-1")),
                        b'{"mutations": [',  # not JSON
                        body(  # the second mutation breaks the schema: an account is no title
                            edge("profile:4", "title:1", now, "fine"),
                            edge("profile:4", "account:1", now, "wrong"),
                        ),
                        body(edge("profile:5", "title:1", now + 400 * DAY, "future")),
                        body(edge("profile:2", "title:2", now, "good-2")),
                    ],
                    queued=2 if inline else 5,
                )
                return rest

        good1, malformed, violation, future, good2 = asyncio.run(scenario())
        assert (good1.status_code, good1.json()["applied"]) == (200, 1), good1.text
        assert (good2.status_code, good2.json()["applied"]) == (200, 1), good2.text
        assert malformed.status_code == 400, malformed.text
        assert violation.status_code == 422 and violation.json()["index"] == 1, violation.text
        assert future.status_code == 422 and future.json()["error"] == "future_time", future.text
        assert {e.dst for e in graph.neighbours("profile:2", "browsed").edges} == {
            "title:1",
            "title:2",
        }
        for node in ("profile:4", "profile:5"):  # nothing of the refused requests was written
            assert graph.neighbours(node, "browsed").edges == []


def test_a_store_refusal_reaches_only_the_request_that_caused_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = now_us()
    original = GraphStore.apply

    def refusing(self: GraphStore, mutations: Any, *args: Any, **kwargs: Any) -> Any:
        mutations = list(mutations)
        if any(m.id.startswith("refuse") for m in mutations):
            raise StorageRefused("the backend cannot store this item")
        return original(self, mutations, *args, **kwargs)

    monkeypatch.setattr(GraphStore, "apply", refusing)
    with app_over(lmdb_kv(tmp_path)) as (app, graph):
        app.state.committer.in_this_process()  # where the patched apply is

        async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
            async with client_of(app) as client:
                _, rest = await in_one_group(
                    client,
                    app,
                    body(edge("profile:1", "title:1", now, "plug")),
                    [
                        body(edge("profile:2", "title:1", now, "a")),
                        body(edge("profile:3", "title:1", now, "refuse-me")),
                        body(edge("profile:2", "title:2", now, "b")),
                    ],
                )
                alone = await client.post(
                    "/v1/mutations", content=body(edge("profile:3", "title:2", now, "refuse-2"))
                )
                return rest, alone

        (a, refused, b), alone = asyncio.run(scenario())
        assert (a.status_code, a.json()["applied"]) == (200, 1), a.text
        assert (b.status_code, b.json()["applied"]) == (200, 1), b.text
        assert refused.status_code >= 400
        # the answer a lone request with the same problem gets
        assert (refused.status_code, refused.json()["error"]) == (
            alone.status_code,
            alone.json()["error"],
        )
        assert graph.neighbours("profile:3", "browsed").edges == []
        assert len(graph.neighbours("profile:2", "browsed").edges) == 2


def test_a_full_write_queue_is_refused_with_503_and_retry_after(tmp_path: Path) -> None:
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, graph):
        app.state.committer.max_queued_requests = 2

        async def scenario() -> tuple[httpx.Response, list[httpx.Response], str]:
            async with client_of(app) as client:
                overflow: list[httpx.Response] = []

                async def after_queued() -> None:
                    overflow.append(
                        await client.post(
                            "/v1/mutations", content=body(edge("profile:9", "title:1", now, "x"))
                        )
                    )

                gate = Gate(app.state.committer)
                plug = asyncio.create_task(
                    client.post(
                        "/v1/mutations", content=body(edge("profile:1", "title:1", now, "p"))
                    )
                )
                assert await asyncio.to_thread(gate.entered.wait, WAIT_S)
                queued = [
                    asyncio.create_task(
                        client.post(
                            "/v1/mutations",
                            content=body(edge("profile:2", f"title:{i}", now, f"q{i}")),
                        )
                    )
                    for i in range(2)
                ]
                while metric((await client.get("/metrics")).text, "hopcast_write_queue_depth") < 2:
                    await asyncio.sleep(0.01)
                await after_queued()
                gate.release.set()
                answers = [await plug, *await asyncio.gather(*queued)]
                return overflow[0], answers, (await client.get("/metrics")).text

        refused, answers, metrics = asyncio.run(scenario())
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "write_queue_full"
        assert refused.headers["retry-after"] == "1"
        assert [r.status_code for r in answers] == [200, 200, 200]
        assert metric(metrics, "hopcast_write_queue_full_total") == 1
        assert graph.neighbours("profile:9", "browsed").edges == []  # nothing written


def test_each_request_is_answered_only_once_its_write_is_committed(tmp_path: Path) -> None:
    """At the moment a request is answered, a new read view (which sees committed writes only)
    already holds its write; the LMDB store fsyncs each commit, so it is durable too."""
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, graph):

        async def scenario() -> list[int]:
            async with client_of(app) as client:

                async def post(i: int) -> int:
                    r = await client.post(
                        "/v1/mutations",
                        content=body(edge(f"profile:{i}", "title:1", now, f"d{i}")),
                    )
                    assert r.status_code == 200, r.text
                    with graph.store.read() as view:  # before any other request is answered
                        seen = view.edge(f"profile:{i}", "browsed", "title:1")
                    assert seen is not None, f"request {i} was answered before its commit"
                    return i

                return list(await asyncio.gather(*(post(i) for i in range(20))))

        assert asyncio.run(scenario()) == list(range(20))


def test_two_serve_workers_commit_every_acknowledged_write(tmp_path: Path) -> None:
    store = tmp_path / "graph"
    with Graph.open(store):
        pass  # an empty store, with the demo schema's namespaces
    now = now_us()
    requests = 40

    with serving(str(store), "--rate-limit", "off") as base:

        def post(i: int) -> tuple[int, Any]:
            with httpx.Client(base_url=base, timeout=60) as http:
                r = http.post(
                    "/v1/mutations",
                    content=body(
                        edge(f"profile:{i}", "title:1", now, f"w{i}a"),
                        edge(f"profile:{i}", "title:2", now, f"w{i}b"),
                    ),
                    headers={"content-type": "application/json", "connection": "close"},
                )
                return r.status_code, r.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, range(requests)))
        assert all(status == 200 and got["applied"] == 2 for status, got in answers), answers
        # visible to another process while the server runs: committed when answered
        with Graph.open(store) as graph:
            for i in range(requests):
                dsts = {e.dst for e in graph.neighbours(f"profile:{i}", "browsed").edges}
                assert dsts == {"title:1", "title:2"}, f"profile:{i}: {dsts}"


def test_the_committer_refuses_bounds_below_one(tmp_path: Path) -> None:
    with app_over(lmdb_kv(tmp_path)) as (_, graph):
        from prometheus_client import CollectorRegistry

        prepare: Callable[[bytes], Any] = lambda raw: ([], [])  # noqa: E731
        with pytest.raises(ValueError, match=">= 1"):
            GroupCommitter(graph.store, prepare, CollectorRegistry(), max_queued_requests=0)


def test_writes_through_the_writer_process_are_read_back_at_once(tmp_path: Path) -> None:
    """On LMDB the groups are applied by a child process; the API process reads each write as
    soon as it is answered, node cache included."""
    now = now_us()
    with Graph.open(tmp_path / "graph") as graph:
        app = create_app(graph)
        assert app.state.committer._process is not None, "LMDB should use the writer process"

        async def scenario() -> None:
            async with client_of(app) as client:
                for i in range(5):
                    await client.get("/v1/nodes/account:1")  # cached, if it exists
                    upsert = {
                        "kind": "node_upsert",
                        "node": "account:1",
                        "ts": now + i,
                        "id": f"v{i}",
                        "props": {"plan": f"v{i}"},
                    }
                    r = await client.post("/v1/mutations", content=body(upsert))
                    assert r.status_code == 200 and r.json()["applied"] == 1, r.text
                    got = (await client.get("/v1/nodes/account:1")).json()
                    assert got["props"] == {"plan": f"v{i}"}, f"round {i}: read {got}"

        try:
            asyncio.run(scenario())
        finally:
            app.state.committer.close()


def test_a_writer_process_that_died_is_replaced_on_the_next_write(tmp_path: Path) -> None:
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, graph):
        committer = app.state.committer

        async def post(i: int) -> httpx.Response:
            async with client_of(app) as client:
                return await client.post(
                    "/v1/mutations", content=body(edge(f"profile:{i}", "title:1", now, f"k{i}"))
                )

        try:
            assert asyncio.run(post(1)).status_code == 200
            child = committer._process._proc
            assert child is not None and child.poll() is None, "no writer process runs"
            child.kill()
            child.wait()
            second = asyncio.run(post(2))
            assert second.status_code == 200, second.text
            assert committer._process._proc.pid != child.pid
            assert len(graph.neighbours("profile:2", "browsed").edges) == 1
        finally:
            committer.close()

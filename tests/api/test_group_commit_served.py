"""Group commit as served: many concurrent ``POST /v1/mutations`` through the route's fast front
(:mod:`hopcast.api.fastpath`) share commits, a full queue still answers 503, and a running app
shortens the interpreter's switch interval for its writer thread."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx

from api.seed import TestClient
from api.test_group_commit import WAIT_S, Gate, app_over, body, client_of, edge, lmdb_kv, metric
from hopcast.api.groupcommit import SWITCH_INTERVAL_S
from hopcast.durations import now_us

#: Concurrent write requests: far more than one commit's worth arrive while one commits.
CONCURRENT = 64


def _fronted(app: object, path: str) -> bool:
    return any(
        getattr(route, "path", None) == path
        and getattr(getattr(route, "app", None), "__qualname__", "") == "front.<locals>.app"
        for route in app.router.routes  # type: ignore[attr-defined]
    )


def test_concurrent_writes_through_the_fast_front_share_commits_and_all_land(
    tmp_path: Path,
) -> None:
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, graph):
        assert _fronted(app, "/v1/mutations"), "POST /v1/mutations has no fast front"

        async def scenario() -> tuple[list[httpx.Response], str]:
            async with client_of(app) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/mutations",
                            content=body(
                                edge(f"profile:{i}", "title:1", now, f"c{i}a"),
                                edge(f"profile:{i}", "title:2", now, f"c{i}b"),
                            ),
                        )
                        for i in range(CONCURRENT)
                    )
                )
                return list(answers), (await client.get("/metrics")).text

        answers, metrics = asyncio.run(scenario())
        assert [r.status_code for r in answers] == [200] * CONCURRENT, [
            r.text for r in answers if r.status_code != 200
        ]
        assert all(r.json()["applied"] == 2 for r in answers)
        commits = metric(metrics, "hopcast_write_group_requests_count")
        assert metric(metrics, "hopcast_write_group_requests_sum") == CONCURRENT
        assert commits < CONCURRENT, f"{CONCURRENT} requests took {commits} commits: none shared"
        for i in range(CONCURRENT):
            dsts = {e.dst for e in graph.neighbours(f"profile:{i}", "browsed").edges}
            assert dsts == {"title:1", "title:2"}, f"profile:{i}: {dsts}"


def test_a_full_write_queue_still_answers_503_through_the_fast_front(tmp_path: Path) -> None:
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, graph):
        assert _fronted(app, "/v1/mutations")
        app.state.committer.max_queued_requests = 1

        async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
            async with client_of(app) as client:

                def post(i: int) -> asyncio.Task[httpx.Response]:
                    content = body(edge(f"profile:{i}", "title:1", now, f"f{i}"))
                    return asyncio.create_task(client.post("/v1/mutations", content=content))

                gate = Gate(app.state.committer)
                held = post(1)
                assert await asyncio.to_thread(gate.entered.wait, WAIT_S), "writer never held"
                queued = post(2)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WAIT_S
                while metric((await client.get("/metrics")).text, "hopcast_write_queue_depth") < 1:
                    assert loop.time() < deadline, "the second request never reached the queue"
                    await asyncio.sleep(0.01)
                refused = await post(3)
                gate.release.set()
                return refused, [await held, await queued]

        refused, answered = asyncio.run(scenario())
        assert refused.status_code == 503 and refused.json()["error"] == "write_queue_full"
        assert refused.headers["retry-after"] == "1"
        assert [r.status_code for r in answered] == [200, 200]
        assert graph.neighbours("profile:3", "browsed").edges == []  # nothing written


def test_a_running_app_shortens_the_switch_interval_and_restores_it(tmp_path: Path) -> None:
    outer = sys.getswitchinterval()
    before = 0.005  # Python's default (another app of this test process may have run)
    sys.setswitchinterval(before)
    try:
        with app_over(lmdb_kv(tmp_path)) as (app, _):
            with TestClient(app):
                assert sys.getswitchinterval() == SWITCH_INTERVAL_S
            assert sys.getswitchinterval() == before
    finally:
        sys.setswitchinterval(outer)


def test_metrics_show_where_each_write_requests_time_went(tmp_path: Path) -> None:
    now = now_us()
    with app_over(lmdb_kv(tmp_path)) as (app, _):

        async def scenario() -> str:
            async with client_of(app) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(
                            "/v1/mutations",
                            content=body(edge(f"profile:{i}", "title:1", now, f"s{i}")),
                        )
                        for i in range(3)
                    )
                )
                assert [r.status_code for r in answers] == [200] * 3
                return (await client.get("/metrics")).text

        metrics = asyncio.run(scenario())
        for stage in ("wait", "write", "return"):
            series = f'hopcast_write_stage_seconds_count{{stage="{stage}"}}'
            assert metric(metrics, series) == 3, f"{series} did not count each request"
            total = metric(metrics, f'hopcast_write_stage_seconds_sum{{stage="{stage}"}}')
            assert total >= 0
        written = metric(metrics, 'hopcast_write_stage_seconds_sum{stage="write"}')
        assert written > 0, "a commit takes time: the write stage cannot be empty"

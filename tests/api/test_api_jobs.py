"""Materialise as a job over HTTP: 202 with the job at once, its progress and result at its
url, ``?wait`` for the old answer, one job per event (409), too much work (429 + Retry-After),
forgotten jobs (404)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.seed import NOW, TestClient
from hopcast import Graph
from hopcast.api import create_app
from hopcast.api.jobs import classify_failure
from hopcast.durations import MINUTE
from hopcast.live.jobs import Jobs
from hopcast.live.schedule import Create
from hopcast.live.service import LiveService

EVENTS = "/v1/live/events"
#: Bound on any wait for a job; a healthy run needs a fraction of a second.
WAIT_S = 30.0


class Stack:
    def __init__(self) -> None:
        self.graph = Graph.open(clock=lambda: NOW)
        self.service = LiveService(self.graph.store.kv, clock=lambda: NOW)
        for event in ("final", "semi"):
            self.service.command(Create(event, event, NOW + 10 * MINUTE, None, MINUTE), NOW)
        self.app = create_app(self.graph, live=self.service)
        self.client = TestClient(self.app)

    def until_done(self, url: str) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while True:
            doc: dict[str, Any] = self.client.get(url).json()
            if doc["state"] in ("done", "failed"):
                return doc
            assert time.monotonic() < deadline, f"job still {doc['state']}: {doc}"
            time.sleep(0.01)


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.graph.close()


def gated(stack: Stack) -> tuple[threading.Event, threading.Event]:
    """Make the service's fixture materialisation report progress, then wait for a gate."""
    started, gate = threading.Event(), threading.Event()
    real = stack.service.materialise

    def materialise(
        event_id: str,
        now: int,
        segments: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        if progress is not None:
            progress(1, 10)
        started.set()
        assert gate.wait(WAIT_S), "the test never opened the gate"
        return real(event_id, now, segments, progress)

    stack.service.materialise = materialise  # type: ignore[method-assign]
    return started, gate


def test_materialise_answers_202_with_a_job_whose_url_reports_progress_and_the_result(
    stack: Stack,
) -> None:
    started, gate = gated(stack)
    response = stack.client.post(
        f"{EVENTS}/final/materialise", json={"segments": ["adult.US.en.b0"]}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == job["url"] == f"/v1/live/jobs/{job['id']}"
    assert job["kind"] == "materialise" and job["event"] == "final"
    assert job["progress"]["total"] == 10  # 5 stages x (1 segment + the default one)
    assert started.wait(WAIT_S)
    running = stack.client.get(job["url"]).json()
    assert running["state"] == "running" and running["progress"] == {"done": 1, "total": 10}
    gate.set()
    done = stack.until_done(job["url"])
    assert done["state"] == "done" and done["progress"] == {"done": 10, "total": 10}
    assert done["result"]["entries"] == 10 and done["error"] is None


def test_wait_gives_the_result_as_the_route_answered_before_jobs(stack: Stack) -> None:
    response = stack.client.post(f"{EVENTS}/final/materialise?wait=60", json={"segments": []})
    assert response.status_code == 200
    assert response.json()["entries"] == 5


def test_an_unknown_event_is_refused_before_anything_is_queued(stack: Stack) -> None:
    response = stack.client.post(f"{EVENTS}/nope/materialise")
    assert response.status_code == 404
    assert stack.client.post(f"{EVENTS}/final/materialise?wait=61").status_code == 400


def test_an_event_with_a_job_running_refuses_another_with_409_naming_it(stack: Stack) -> None:
    started, gate = gated(stack)
    first = stack.client.post(f"{EVENTS}/final/materialise", json={"segments": []}).json()
    assert started.wait(WAIT_S)
    again = stack.client.post(f"{EVENTS}/final/materialise", json={"segments": []})
    assert again.status_code == 409
    assert again.json()["error"] == "job_running"
    assert again.json()["job"] == first["id"] and again.json()["url"] == first["url"]
    gate.set()
    stack.until_done(first["url"])


def test_too_much_work_queued_is_a_429_with_retry_after(stack: Stack) -> None:
    stack.app.state.jobs = Jobs(classify_failure, max_work=20)
    started, gate = gated(stack)
    stack.client.post(f"{EVENTS}/final/materialise", json={"segments": ["adult.US.en.b0"]})
    assert started.wait(WAIT_S)
    busy = stack.client.post(f"{EVENTS}/semi/materialise", json={"segments": ["a.b", "c.d"]})
    assert busy.status_code == 429
    assert busy.json()["error"] == "jobs_busy" and "work budget of 20" in busy.json()["message"]
    assert int(busy.headers["Retry-After"]) >= 1
    gate.set()


def test_a_failed_job_reports_the_error_the_request_would_have_had(stack: Stack) -> None:
    response = stack.client.post(
        "/v1/console/events/final/materialise?wait=60", json={"node": "live_event:9"}
    )
    assert response.status_code == 404
    assert response.json()["error"] == "not_found" and "job" in response.json()


def test_an_unknown_job_is_404_and_a_malformed_id_400(stack: Stack) -> None:
    assert stack.client.get("/v1/live/jobs/0123456789abcdef").status_code == 404
    assert stack.client.get("/v1/live/jobs/nope").status_code == 400

"""Jobs: bounded before they start (one per event, how many, how much work), bounded while they
run (the time budget, checked at each progress report), their outcome, and forgotten after a
while."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from hopcast.errors import InvalidInput, NotFound
from hopcast.live.jobs import JobConflict, Jobs, JobsBusy, JobState

#: Bound on any wait for a job; a healthy run needs milliseconds.
WAIT_S = 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def classify(exc: BaseException) -> tuple[int, str, str]:
    return (400, "invalid_input", str(exc)) if isinstance(exc, InvalidInput) else (500, "x", "")


class Gate:
    """Work that reports progress, then waits until the test opens the gate."""

    def __init__(self, total: int = 10) -> None:
        self.total = total
        self.started = threading.Event()
        self.open = threading.Event()

    def __call__(self, progress: Callable[[int, int], None]) -> dict[str, Any]:
        progress(3, self.total)
        self.started.set()
        assert self.open.wait(WAIT_S), "the test never opened the gate"
        progress(self.total, self.total)
        return {"ok": True}


def test_a_job_reports_progress_and_its_result() -> None:
    async def main() -> None:
        jobs = Jobs(classify)
        gate = Gate()
        job = jobs.submit("materialise", "final", 10, gate)
        assert job.state in (JobState.QUEUED, JobState.RUNNING)
        assert await asyncio.to_thread(gate.started.wait, WAIT_S)
        doc = jobs.get(job.id).doc(jobs.now())
        assert doc["state"] == "running" and doc["progress"] == {"done": 3, "total": 10}
        gate.open.set()
        await jobs.wait(job, WAIT_S)
        assert job.state is JobState.DONE and job.result == {"ok": True} and job.done == 10
        jobs.shutdown()

    asyncio.run(main())


def test_a_failed_job_keeps_the_error_its_request_would_have_had() -> None:
    async def main() -> None:
        jobs = Jobs(classify)

        def bad(progress: Callable[[int, int], None]) -> dict[str, Any]:
            raise InvalidInput("segment 'x y' is malformed")

        job = jobs.submit("materialise", "final", 5, bad)
        await jobs.wait(job, WAIT_S)
        assert job.state is JobState.FAILED
        assert job.error == {
            "status": 400,
            "error": "invalid_input",
            "message": "segment 'x y' is malformed",
        }
        jobs.shutdown()

    asyncio.run(main())


def test_an_event_has_one_active_job_and_another_event_is_not_held_up() -> None:
    async def main() -> None:
        jobs = Jobs(classify)
        gate = Gate()
        first = jobs.submit("materialise", "final", 10, gate)
        with pytest.raises(JobConflict) as refused:
            jobs.submit("materialise", "final", 10, gate)
        assert refused.value.job == first.id
        other = jobs.submit("materialise", "semi", 10, lambda p: {"semi": True})
        await jobs.wait(other, WAIT_S)
        assert other.state is JobState.DONE
        gate.open.set()
        await jobs.wait(first, WAIT_S)
        jobs.submit("materialise", "final", 10, lambda p: {})  # finished: a new one may start
        jobs.shutdown()

    asyncio.run(main())


def test_too_many_jobs_or_too_much_work_is_refused_with_a_retry_estimate() -> None:
    async def main() -> None:
        jobs = Jobs(classify, max_active=2, max_work=100)
        gates = [Gate(), Gate()]
        jobs.submit("materialise", "a", 10, gates[0])
        with pytest.raises(JobsBusy, match="work budget of 100 writes") as busy:
            jobs.submit("materialise", "b", 95, gates[1])
        assert busy.value.retry_after_s >= 1
        jobs.submit("materialise", "b", 10, gates[1])
        with pytest.raises(JobsBusy, match="2 jobs are queued or running"):
            jobs.submit("materialise", "c", 1, gates[1])
        for gate in gates:
            gate.open.set()
        jobs.shutdown()

    asyncio.run(main())


def test_a_job_past_its_time_budget_stops_at_its_next_progress_report() -> None:
    async def main() -> None:
        clock = FakeClock()
        jobs = Jobs(classify, max_job_s=60, clock=clock)
        reached: list[int] = []

        def slow(progress: Callable[[int, int], None]) -> dict[str, Any]:
            for done in range(1, 11):
                if done == 4:
                    clock.now += 61  # the store stalled
                progress(done, 10)
                reached.append(done)
            return {}

        job = jobs.submit("materialise", "final", 10, slow)
        await jobs.wait(job, WAIT_S)
        assert job.state is JobState.FAILED and reached == [1, 2, 3]
        assert job.error is not None and job.error["error"] == "work_budget_exceeded"
        assert "at 4 of 10 writes" in job.error["message"]
        jobs.shutdown()

    asyncio.run(main())


def test_finished_jobs_are_forgotten_after_a_while_and_beyond_a_count() -> None:
    async def main() -> None:
        clock = FakeClock()
        jobs = Jobs(classify, keep_s=600, max_finished=3, clock=clock)
        done = []
        for i in range(5):
            job = jobs.submit("materialise", f"e{i}", 1, lambda p: {})
            await jobs.wait(job, WAIT_S)
            done.append(job.id)
        jobs.get(done[-1])
        with pytest.raises(NotFound):
            jobs.get(done[0])  # beyond the count: the oldest went first
        assert [jobs.get(i).id for i in done[2:]] == done[2:]
        clock.now += 601
        with pytest.raises(NotFound, match="kept 600 s"):
            jobs.get(done[-1])
        jobs.shutdown()

    asyncio.run(main())

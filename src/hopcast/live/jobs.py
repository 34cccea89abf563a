"""Long operator work (materialising an event's payloads) as bounded jobs off the event loop.

Materialising 1,024 segments is ~5,000 payload writes, tens of seconds on a durable store: too
long for one HTTP request, and work a server must bound. :class:`Jobs` runs such work on a
small thread pool of its own and answers for it by id:

* **Bounded before it starts** (:meth:`Jobs.submit` refuses, nothing runs): one active job per
  event (:class:`JobConflict`, the running one's id given), at most :data:`MAX_ACTIVE` queued
  or running jobs, and at most :data:`MAX_OUTSTANDING_WORK` estimated writes among them
  (:class:`JobsBusy`). At most :data:`MAX_RUNNING` run at once; the others queue.
* **Bounded while it runs**: a job reports progress (``done``/``total`` writes) through the
  callback it is given; a job still running :data:`MAX_JOB_S` after it started is stopped at
  its next progress report and fails with ``work_budget_exceeded`` (what it published stays
  published: payloads are content-addressed and the index entries idempotent, so running it
  again finishes the work).
* **Forgotten**: a finished job is kept :data:`KEEP_FINISHED_S` for its caller to read, and at
  most :data:`MAX_FINISHED` of them (oldest out first); then :meth:`Jobs.get` says not found.

A job's work runs on a pool thread: it must not touch the event loop. Its outcome is a JSON
document (``result``) or an error (``error``: ``{"status", "error", "message"}``, the HTTP
answer the same failure would have had inline). :meth:`Jobs.wait` lets a handler wait for a
job without blocking the loop.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from hopcast.errors import HopcastError, NotFound

#: Jobs running at once. Materialising is mostly store writes, serialised by the store's one
#: writer (and the materialiser's lock): two keep the writer busy while one computes; more
#: would only wait on that lock while holding threads.
MAX_RUNNING: Final = 2
#: Jobs queued or running at once, overall: enough for an operator materialising a handful of
#: events at the same time; beyond it a caller is told to come back.
MAX_ACTIVE: Final = 8
#: Estimated writes among the queued and running jobs: about four of the largest jobs (1,024
#: segments x 5 stages), a few minutes of durable writes, so a queued job starts within minutes.
MAX_OUTSTANDING_WORK: Final = 20_500
#: Longest a job may run: the largest job takes ~35 s on a durable store on a busy host; ten
#: times that means the store is failing or stalled, and the job stops rather than hold a slot.
MAX_JOB_S: Final = 300.0
#: How long a finished job stays readable: a client polling every few seconds reads it well
#: within this even after a network blip.
KEEP_FINISHED_S: Final = 600.0
#: Finished jobs kept at most (each a few hundred bytes to a few KB of result).
MAX_FINISHED: Final = 256

#: Writes per second assumed before a running job has reported any: the issue's measurement,
#: 1,024 segments (~5,100 writes) in 35 s on a durable store.
UNMEASURED_WRITES_PER_S: Final = 150.0

#: A job's work: given a progress callback ``(done, total)``, returns the result document.
Work = Callable[[Callable[[int, int], None]], dict[str, Any]]
#: Turns an exception a job raised into ``(status, error, message)``.
Classify = Callable[[BaseException], tuple[int, str, str]]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobConflict(HopcastError):
    """The event already has a queued or running job (``job`` is its id)."""

    def __init__(self, message: str, job: str) -> None:
        super().__init__(message)
        self.job = job


class JobsBusy(HopcastError):
    """Too many jobs or too much work queued; ``retry_after_s`` estimates when to retry."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkBudgetExceeded(HopcastError):
    """A job ran past :data:`MAX_JOB_S`."""


@dataclass
class Job:
    """One job: what, for which event, its state and progress, and its outcome."""

    id: str
    kind: str
    event: str
    total: int
    created_at: float  # the Jobs clock (monotonic seconds)
    done: int = 0
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    _future: asyncio.Future[None] | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.state in (JobState.QUEUED, JobState.RUNNING)

    def doc(self, now: float) -> dict[str, Any]:
        """The JSON form (times: seconds since it was created or how long it ran)."""
        ran = None
        if self.started_at is not None:
            ran = (self.finished_at if self.finished_at is not None else now) - self.started_at
        return {
            "id": self.id,
            "kind": self.kind,
            "event": self.event,
            "state": self.state.value,
            "progress": {"done": self.done, "total": self.total},
            "age_s": round(now - self.created_at, 3),
            "running_s": None if ran is None else round(ran, 3),
            "result": self.result,
            "error": self.error,
        }


class Jobs:
    """The jobs of one process (see the module docstring). Call :meth:`submit`, :meth:`get`
    and :meth:`wait` from the event loop; the work runs on the pool's threads.

    Args:
        classify: maps a job's exception to its ``(status, error, message)``.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        classify: Classify,
        *,
        max_running: int = MAX_RUNNING,
        max_active: int = MAX_ACTIVE,
        max_work: int = MAX_OUTSTANDING_WORK,
        max_job_s: float = MAX_JOB_S,
        keep_s: float = KEEP_FINISHED_S,
        max_finished: int = MAX_FINISHED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._classify = classify
        self._max_running = max_running
        self._max_active = max_active
        self._max_work = max_work
        self._max_job_s = max_job_s
        self._keep_s = keep_s
        self._max_finished = max_finished
        self._clock = clock
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # oldest first
        self._lock = threading.Lock()  # progress and state change on pool threads
        self._pool: ThreadPoolExecutor | None = None

    # -- submit and read ---------------------------------------------------------------------

    def submit(self, kind: str, event: str, total: int, work: Work) -> Job:
        """Queue ``work`` as a job for ``event``, estimated at ``total`` writes.

        Raises:
            JobConflict: ``event`` has a job queued or running.
            JobsBusy: :data:`MAX_ACTIVE` jobs are active, or ``total`` would take the
                outstanding work past :data:`MAX_OUTSTANDING_WORK`.
        """
        now = self._clock()
        with self._lock:
            self._forget(now)
            active = [j for j in self._jobs.values() if j.active]
            for job in active:
                if job.event == event:
                    raise JobConflict(
                        f"live event {event!r} already has a {job.state.value} job {job.id!r}; "
                        "wait for it to finish",
                        job.id,
                    )
            outstanding = sum(j.total - j.done for j in active)
            if len(active) >= self._max_active:
                raise JobsBusy(
                    f"{len(active)} jobs are queued or running (at most {self._max_active}); "
                    "retry when one has finished",
                    self._estimate(active, outstanding),
                )
            if outstanding + total > self._max_work:
                raise JobsBusy(
                    f"this job's ~{total} writes on top of the {outstanding} queued would exceed "
                    f"the work budget of {self._max_work} writes; retry when running jobs have "
                    "finished",
                    self._estimate(active, outstanding),
                )
            job = Job(secrets.token_hex(8), kind, event, total, now)
            self._jobs[job.id] = job
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_running, thread_name_prefix="hopcast-job")
        future: Future[None] = self._pool.submit(self._run, job, work)
        job._future = asyncio.wrap_future(future)
        return job

    def get(self, job_id: str) -> Job:
        """The job.

        Raises:
            NotFound: no such job, or it finished longer ago than it is kept.
        """
        with self._lock:
            self._forget(self._clock())
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(
                f"no job {job_id!r} (finished jobs are kept {self._keep_s:g} s, at most "
                f"{self._max_finished})"
            )
        return job

    def now(self) -> float:
        return self._clock()

    async def wait(self, job: Job, timeout_s: float) -> Job:
        """Wait up to ``timeout_s`` for ``job`` to finish (without blocking the loop)."""
        if job._future is not None and timeout_s > 0:
            await asyncio.wait({job._future}, timeout=timeout_s)
        return job

    def shutdown(self) -> None:
        """Stop taking jobs from the queue (running ones finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- on a pool thread ----------------------------------------------------------------------

    def _run(self, job: Job, work: Work) -> None:
        with self._lock:
            job.state = JobState.RUNNING
            job.started_at = self._clock()
        deadline = job.started_at + self._max_job_s

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if self._clock() > deadline:
                raise WorkBudgetExceeded(
                    f"stopped after {self._max_job_s:g} s at {done} of {total} writes (the "
                    "store is slow or stalled); what was written stays, run it again to finish"
                )

        try:
            result = work(progress)
        except WorkBudgetExceeded as exc:
            outcome: dict[str, Any] = {
                "status": 503,
                "error": "work_budget_exceeded",
                "message": str(exc),
            }
            self._finish(job, None, outcome)
        except Exception as exc:  # the job's failure is its outcome, reported to its caller
            status, kind, message = self._classify(exc)
            self._finish(job, None, {"status": status, "error": kind, "message": message})
        else:
            self._finish(job, result, None)

    def _finish(
        self, job: Job, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        with self._lock:
            job.result, job.error = result, error
            job.state = JobState.DONE if error is None else JobState.FAILED
            if error is None:
                job.done = job.total
            job.finished_at = self._clock()

    # -- bookkeeping ---------------------------------------------------------------------------

    def _forget(self, now: float) -> None:
        """Drop finished jobs older than ``keep_s``, and the oldest beyond ``max_finished``."""
        finished = [j for j in self._jobs.values() if not j.active]
        excess = len(finished) - self._max_finished
        for job in finished:
            assert job.finished_at is not None
            if excess > 0 or now - job.finished_at > self._keep_s:
                del self._jobs[job.id]
                excess -= 1

    def _estimate(self, active: list[Job], outstanding: int) -> float:
        """Seconds until room is likely: the running jobs' observed rate over what is left."""
        now = self._clock()
        rates = [
            j.done / (now - j.started_at)
            for j in active
            if j.started_at is not None and now > j.started_at and j.done
        ]
        rate = sum(rates) if rates else UNMEASURED_WRITES_PER_S
        return max(1.0, min(self._max_job_s, outstanding / rate))

"""Jobs over HTTP: how a route answers with a job, and ``GET /v1/live/jobs/{job_id}``.

A route that starts a job (:mod:`hopcast.live.jobs`; the materialise routes) answers **202**
with the job's JSON form, its ``url`` and a ``Location`` header, as soon as the job is queued.
With ``?wait=<seconds>`` (at most :data:`MAX_WAIT_S`) it first waits that long, without
blocking the event loop, and if the job finished answers as the work would have inline:
**200** with the result, or the job's error status and body. Refusals before anything runs:
**409** ``job_running`` (the event has an active job; ``job`` and ``url`` name it) and **429**
``jobs_busy`` with ``Retry-After`` (too many jobs or too much work queued).

The job's document: ``{"id", "kind", "event", "state": queued|running|done|failed,
"progress": {"done", "total"}, "age_s", "running_s", "result", "error", "url"}``.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query, Request
from starlette.responses import Response

from hopcast.api import openapi
from hopcast.api.errors import INTERNAL_MESSAGE, ApiError, classify
from hopcast.api.policy import policy
from hopcast.api.responses import JSON, error
from hopcast.auth.roles import Role
from hopcast.errors import HopcastError
from hopcast.live.jobs import Job, JobConflict, Jobs, JobsBusy, JobState

logger = logging.getLogger("hopcast.api")

#: Longest a request may wait for its job (``?wait=``): the largest materialise takes ~35 s
#: on a durable store; a minute covers it on a busy host while bounding how long a client holds
#: a connection (the wait itself costs the loop nothing).
MAX_WAIT_S = 60.0

#: Where a job is read: ``JOBS_PATH + "/" + id``.
JOBS_PATH = "/v1/live/jobs"

WaitParam = Annotated[
    float,
    Query(
        description="Seconds to wait for the job to finish before answering (0 to "
        f"{MAX_WAIT_S:g}): finished within it → the work's own answer (200 with the result, or "
        "its error); else 202 with the job. Default 0: 202 at once.",
        ge=0,
        le=MAX_WAIT_S,
    ),
]

#: A job's JSON form, for the documentation.
JOB_EXAMPLE: dict[str, Any] = {
    "id": "3f2a9c0d11e54b7a",
    "kind": "materialise",
    "event": "final",
    "state": "running",
    "progress": {"done": 1200, "total": 5125},
    "age_s": 8.2,
    "running_s": 8.1,
    "result": None,
    "error": None,
    "url": f"{JOBS_PATH}/3f2a9c0d11e54b7a",
}


def classify_failure(exc: BaseException) -> tuple[int, str, str]:
    """A job's exception as the HTTP answer it would have had inline: ``(status, error,
    message)``; anything unexpected is logged and reported as a 500 without details."""
    if isinstance(exc, ApiError):
        return exc.status, exc.kind, exc.message
    if isinstance(exc, HopcastError):
        status, kind = classify(exc)
        if status < 500:
            return status, kind, str(exc)
    logger.error("a job failed", exc_info=exc)
    return 500, "internal_error", INTERNAL_MESSAGE


def jobs_of(app: FastAPI) -> Jobs:
    """The app's jobs (``app.state.jobs``), created on first use."""
    jobs: Jobs | None = getattr(app.state, "jobs", None)
    if jobs is None:
        jobs = app.state.jobs = Jobs(classify_failure)
    return jobs


def job_doc(jobs: Jobs, job: Job) -> dict[str, Any]:
    return job.doc(jobs.now()) | {"url": f"{JOBS_PATH}/{job.id}"}


async def answer(jobs: Jobs, job: Job, wait_s: float) -> Response:
    """The answer of a route that started ``job`` (see the module docstring)."""
    await jobs.wait(job, wait_s)
    if wait_s > 0 and job.state is JobState.DONE and job.result is not None:
        return JSON(job.result)
    if wait_s > 0 and job.state is JobState.FAILED and job.error is not None:
        err = job.error
        return error(err["status"], err["error"], err["message"], job=job.id)
    doc = job_doc(jobs, job)
    return JSON(doc, status_code=202, headers={"Location": doc["url"]})


def install(app: FastAPI) -> None:
    """Answer :class:`JobConflict` (409) and :class:`JobsBusy` (429 + ``Retry-After``)."""

    async def on_conflict(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobConflict)
        return error(409, "job_running", str(exc), job=exc.job, url=f"{JOBS_PATH}/{exc.job}")

    async def on_busy(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobsBusy)
        response = error(429, "jobs_busy", str(exc))
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response

    app.add_exception_handler(JobConflict, on_conflict)
    app.add_exception_handler(JobsBusy, on_busy)


def responses(result_example: Any) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers of a route that starts a job."""
    err = {"schema": {"$ref": "#/components/schemas/Error"}}
    return {
        200: {
            "description": "With `wait`: the job finished within it; the work's result.",
            "content": {"application/json": {"example": result_example}},
        },
        202: {
            "description": "The job is queued or running; poll its `url`.",
            "headers": {"Location": {"schema": {"type": "string"}}},
            "content": {"application/json": {"example": JOB_EXAMPLE}},
        },
        409: {"description": "The event has a job queued or running.", "content": {**_json(err)}},
        429: {
            "description": "Too many jobs or too much work queued; retry after `Retry-After`.",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": {**_json(err)},
        },
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": schema}


def jobs_router() -> APIRouter:
    """``GET /v1/live/jobs/{job_id}``."""
    router = APIRouter(tags=["live"])

    @router.get(
        JOBS_PATH + "/{job_id}",
        dependencies=[policy(Role.OPERATOR)],  # who may start jobs may follow them
        summary="A job",
        description="State (`queued`, `running`, `done`, `failed`), progress (`done` of "
        "`total` writes), and the outcome: `result` when done, `error` (`status`, `error`, "
        "`message`) when failed. Finished jobs are kept ten minutes (at most 256), then 404.",
        responses=openapi.responses(JOB_EXAMPLE, 404),
    )
    async def get_job(
        request: Request,
        job_id: Annotated[
            str, Path(description="The job's id (16 hex digits).", pattern=r"^[0-9a-f]{16}$")
        ],
    ) -> Response:
        jobs = jobs_of(request.app)
        return JSON(job_doc(jobs, jobs.get(job_id)))

    return router

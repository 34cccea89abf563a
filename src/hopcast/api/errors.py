"""How the HTTP API reports errors: one JSON shape, one status per kind of error.

Every error response is ``{"error": "<kind>", "message": "<what is wrong>"}``; a rejected
mutation adds ``index`` (its position in the request) and ``reason``, a request validation error
adds ``details`` (one entry per problem). A traceback never reaches the client.

The rule: **400** means the request is malformed: a value outside the bound the OpenAPI document
declares for it (bad node id, unknown edge type, bad direction or time, limit out of range) or
unparsable JSON; **422** means input that fits the declared shapes' syntax but not their meaning —
the graph schema (a mutation), a route's typed body, or a rule no JSON Schema can state (a cursor
this server did not issue, a start time already past); **409** means the target's state refuses
the request (a live-event command in the wrong state).

==========================================  ======  =======================
Cause                                       Status  ``error``
==========================================  ======  =======================
``InvalidQuery`` (bad id, edge type, time)   400    ``invalid_query``
``InvalidCursor`` (a cursor not issued)      422    ``invalid_cursor``
``IllegalTransition`` (live-event command)   409    ``illegal_transition``
``InvalidNodeId``                            400    ``invalid_node_id``
any other ``InvalidInput``                   400    ``invalid_input``
body is not valid JSON                       400    ``malformed_json``
``OutOfBounds`` (a bound of graph.limits)     422    ``out_of_bounds``
``SchemaViolation``                          422    ``schema_violation``
``InvalidMutation``                          422    ``invalid_mutation``
parameter or body field of the wrong type    422    ``validation_error``
``NotFound``                                 404    ``not_found``
no or bad credential (``WWW-Authenticate``)  401    ``unauthorized``
a key without the route's role               403    ``forbidden``
a cross-origin state-changing request        403    ``cross_origin``
a body that is not JSON                      415    ``unsupported_media_type``
a ``Host`` this server does not serve        421    ``unknown_host``
over the rate limit (``Retry-After``)        429    ``rate_limited``
the key file cannot be read                  503    ``keys_unavailable``
no such route                                404    ``not_found``
method not allowed on the route              405    ``method_not_allowed``
body larger than ``max_body_bytes``          413    ``body_too_large``
more mutations than ``max_mutations``        413    ``too_many_mutations``
``StorageRefused`` (data no store can hold)  422    ``storage_refused``
``StorageError``                             503    ``storage_unavailable``
anything else (a bug; logged)                500    ``internal_error``
==========================================  ======  =======================

Node ids inside queries are checked by the query engine, which reports a malformed id as
``InvalidQuery`` (so ``invalid_query``, not ``invalid_node_id``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from hopcast.api import bounds
from hopcast.api.responses import error
from hopcast.errors import (
    HopcastError,
    IllegalTransition,
    InvalidCursor,
    InvalidInput,
    InvalidMutation,
    InvalidNodeId,
    InvalidQuery,
    NotFound,
    OutOfBounds,
    SchemaViolation,
    StorageError,
    StorageRefused,
)

logger = logging.getLogger("hopcast.api")

#: Most specific first: the first class the exception is an instance of decides.
_BY_CLASS: tuple[tuple[type[HopcastError], int, str], ...] = (
    (OutOfBounds, 422, "out_of_bounds"),
    (SchemaViolation, 422, "schema_violation"),
    (InvalidMutation, 422, "invalid_mutation"),
    (InvalidCursor, 422, "invalid_cursor"),
    (IllegalTransition, 409, "illegal_transition"),
    (InvalidNodeId, 400, "invalid_node_id"),
    (InvalidQuery, 400, "invalid_query"),
    (InvalidInput, 400, "invalid_input"),
    (NotFound, 404, "not_found"),
    # The backend refused this data: a 503 would tell the client to retry what cannot succeed.
    (StorageRefused, 422, "storage_refused"),
    (StorageError, 503, "storage_unavailable"),
)

_BY_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}

INTERNAL_MESSAGE = "an unexpected error occurred; the server log has the details"
STORAGE_MESSAGE = "the graph store failed; the server log has the details"


class ApiError(Exception):
    """An error the API layer itself detects (not the graph): status, kind and message."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


class BodyTooLarge(HTTPException):
    """A request body exceeded the limit while it was being read (HTTP 413).

    An ``HTTPException`` on purpose: FastAPI re-raises those from its own body parsing instead
    of turning them into a 400, so the 413 survives whichever code reads the body.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")


class IndexedMutationError(InvalidMutation):
    """A mutation's JSON form is malformed; ``index`` is its position in the request."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"mutation #{index}: {reason}")
        self.index = index
        self.reason = reason


def classify(exc: HopcastError) -> tuple[int, str]:
    """``(status, kind)`` for a hopcast exception (500/``internal_error`` if none applies)."""
    for cls, status, kind in _BY_CLASS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def hopcast_error_response(exc: HopcastError, request: Request) -> Response:
    status, kind = classify(exc)
    if status >= 500:
        logger.error(
            "%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
        )
        return error(status, kind, STORAGE_MESSAGE if status == 503 else INTERNAL_MESSAGE)
    extra: dict[str, Any] = {}
    index = getattr(exc, "index", None)
    if index is not None:
        extra["index"] = index
        extra["reason"] = getattr(exc, "reason", str(exc))
    return error(status, kind, str(exc), **extra)


def _loc(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _message(problem: Mapping[str, Any]) -> str:
    """pydantic's message, with a declared pattern named by what it means."""
    ctx = problem.get("ctx") or {}
    if problem.get("type") == "string_pattern_mismatch" and "pattern" in ctx:
        text = f"must be {bounds.meaning(str(ctx['pattern']))}"
    else:
        text = str(problem.get("msg", ""))
    if problem.get("type") in _BOUND_ERRORS and isinstance(problem.get("input"), str):
        given = problem["input"]
        text += f", got {given[:60] + '…' if len(given) > 60 else given!r}"
    return text


def validation_error_response(exc: RequestValidationError) -> Response:
    problems = list(exc.errors())
    if any(p.get("type") == "json_invalid" for p in problems):
        return error(400, "malformed_json", "the request body is not valid JSON")
    details = [{"loc": _loc(p.get("loc", ())), "message": _message(p)} for p in problems]
    message = "; ".join(f"{d['loc']}: {d['message']}" for d in details) or "invalid request"
    if problems and all(_out_of_bounds(p) for p in problems):
        return error(400, "invalid_query", message, details=details)
    return error(422, "validation_error", message, details=details)


#: pydantic error types that mean "a parameter outside its declared bound" (a pattern, a
#: range, a length, a set of values), as opposed to a value of the wrong type or a missing one.
_BOUND_ERRORS = frozenset(
    {
        "string_pattern_mismatch",
        "string_too_long",
        "string_too_short",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "literal_error",
        "enum",
        "int_parsing_size",
    }
)


def _out_of_bounds(problem: Mapping[str, Any]) -> bool:
    """A query, path or header parameter outside its declared bound: a malformed query (400)."""
    loc = problem.get("loc") or ("",)
    return loc[0] in ("query", "path", "header") and problem.get("type") in _BOUND_ERRORS


def allowed_methods(request: Request, named: str = "") -> list[str]:
    """Every method the app accepts at the request's path, sorted: those ``named`` (Starlette's
    ``Allow``, the methods of the first route whose path matched) and those the OpenAPI
    document declares for every path template that matches (a path served by several routes,
    such as ``GET`` and ``POST /v1/live/events``, accepts the methods of all of them)."""
    methods = {m.strip().upper() for m in named.split(",") if m.strip()}
    app = request.app
    templates: list[tuple[re.Pattern[str], set[str]]] | None = getattr(
        app.state, "path_methods", None
    )
    if templates is None:
        templates = []
        for path, operations in app.openapi().get("paths", {}).items():
            template = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))
            declared = {m.upper() for m in operations if m in _HTTP_METHODS}
            templates.append((re.compile(template), declared))
        app.state.path_methods = templates
    for regex, declared in templates:
        if regex.fullmatch(request.url.path):
            methods |= declared
    return sorted(methods)


_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def install(app: FastAPI) -> None:
    """Register the handlers that give every error the shape above."""

    async def on_hopcast_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HopcastError)
        return hopcast_error_response(exc, request)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        response = error(exc.status, exc.kind, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        return response

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_error_response(exc)

    async def on_http_exception(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = _BY_STATUS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        response = error(exc.status_code, kind, message)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            named = (exc.headers or {}).get("Allow", "")
            response.headers["Allow"] = ", ".join(allowed_methods(request, named))
        return response

    app.add_exception_handler(HopcastError, on_hopcast_error)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_exception)

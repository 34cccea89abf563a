"""The hot routes without FastAPI's per-request parameter machinery, same answers.

Under the read mix, most of a read's CPU in the API process was FastAPI resolving each request's
dependencies and parameters (``solve_dependencies``: the route policy and its bearer scheme as
two nested dependencies, and every query parameter's annotation re-inspected per request), not
the graph read. The event loop serves reads and writes alike, so that overhead is also what a
write waits behind: one loop pass serves every reader in flight before the next step of a write.

:func:`install` gives the routes named in :data:`HOT` a front that, for a request whose
parameters are all plainly valid, enforces the route's own policy (the same
:mod:`hopcast.api.policy` check: authentication, role, rate-limit bucket) and calls the route's
own endpoint with the parsed values. Any other request -- a parameter missing, malformed, out of
bounds, repeated, or one this front does not parse -- goes to the route as FastAPI built it,
untouched, so every refusal (its status, error and message) is FastAPI's own, and the policy is
applied exactly once either way (the front decides before anything is charged). The checks
here only ever accept a subset of what the declared parameters accept (the declared patterns,
matched whole; integers as plain digits), so a value FastAPI would refuse never takes the fast
path. The OpenAPI document, the middleware (metrics, browser guard, body bounds) and the
exception handlers are the same for both paths: only the route's inner ASGI app is wrapped.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hopcast.api import bounds
from hopcast.api.policy import enforcer
from hopcast.query import spec as q

#: Parses a request's parameters into the endpoint's keyword arguments, or None: not plainly
#: valid (or not parsed here), so FastAPI handles it.
Parse = Callable[[Request], dict[str, Any] | None]

_NODE_ID: Final = re.compile(bounds.NODE_ID)
_EDGES: Final = re.compile(bounds.EDGES)
_TIME: Final = re.compile(bounds.OPTIONAL_TIME_PATTERN)
#: A positive integer as plain digits (no sign, spaces or underscores, which the declared
#: ``int`` would also take), short enough to convert cheaply; the bounds are checked after.
_COUNT: Final = re.compile(r"[1-9][0-9]{0,8}")
_DIRECTIONS: Final = frozenset({"out", "in", "both"})
_SELECTIONS: Final = frozenset({"latest", "any"})


def _node_id(request: Request) -> str | None:
    """The ``node_id`` path parameter, when it meets :func:`bounds.node_id_path`."""
    value = request.scope["path_params"].get("node_id")
    if (
        isinstance(value, str)
        and 3 <= len(value) <= bounds.MAX_NODE_ID_CHARS
        and _NODE_ID.fullmatch(value)
    ):
        return value
    return None


def _query(request: Request) -> dict[str, str] | None:
    """The query string as a dict, or None when a name is repeated (FastAPI's rule for a
    repeated single-valued parameter is left to FastAPI)."""
    raw = request.scope.get("query_string", b"")
    if not raw:
        return {}
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    out = dict(pairs)
    return out if len(out) == len(pairs) else None


def parse_node(request: Request) -> dict[str, Any] | None:
    """``GET /v1/nodes/{node_id}`` (it takes no query parameters)."""
    node_id = _node_id(request)
    return None if node_id is None else {"node_id": node_id}


def _optional_text(value: str | None, pattern: re.Pattern[str] | None) -> bool:
    if value is None:
        return True
    if len(value) > bounds.MAX_QUERY_CHARS:
        return False
    return pattern is None or pattern.fullmatch(value) is not None


def parse_neighbours(request: Request) -> dict[str, Any] | None:
    """``GET /v1/nodes/{node_id}/neighbours``: the parameters declared in
    :mod:`hopcast.api.app` (``edge``, ``direction``, ``selection``, ``since``, ``until``,
    ``limit``, ``where``)."""
    node_id = _node_id(request)
    params = _query(request)
    if node_id is None or params is None:
        return None
    args: dict[str, Any] = {"node_id": node_id}
    edge = params.get("edge")
    since, until, where = params.get("since"), params.get("until"), params.get("where")
    if not (
        _optional_text(edge, _EDGES)
        and _optional_text(since, _TIME)
        and _optional_text(until, _TIME)
        and _optional_text(where, None)
    ):
        return None
    args.update(edge=edge, since=since, until=until, where=where)
    if "direction" in params:
        if params["direction"] not in _DIRECTIONS:
            return None
        args["direction"] = params["direction"]
    if "selection" in params:
        if params["selection"] not in _SELECTIONS:
            return None
        args["selection"] = params["selection"]
    if "limit" in params:
        text = params["limit"]
        if _COUNT.fullmatch(text) is None or int(text) > q.MAX_RESULT:
            return None
        args["limit"] = int(text)
    return args


def parse_request(request: Request) -> dict[str, Any] | None:
    """A route whose endpoint takes only the request (``POST /v1/mutations``)."""
    return {"request": request}


#: The routes with a fast front: (method, path as declared) -> its parser.
HOT: Final[dict[tuple[str, str], Parse]] = {
    ("GET", "/v1/nodes/{node_id:node_id}"): parse_node,
    ("GET", "/v1/nodes/{node_id:node_id}/neighbours"): parse_neighbours,
    ("POST", "/v1/mutations"): parse_request,
}


def front(
    slow: ASGIApp,
    parse: Parse,
    enforce: Callable[[Request], Awaitable[None]],
    endpoint: Callable[..., Awaitable[Response]],
) -> ASGIApp:
    """The route's ASGI app: the fast path for plainly valid requests, else ``slow``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        args = parse(request)
        if args is None:
            await slow(scope, receive, send)
            return
        await enforce(request)  # its refusals go to the app's exception handlers, as FastAPI's
        response = await endpoint(**args)
        await response(scope, receive, send)

    return app


def install(app: FastAPI, hot: dict[tuple[str, str], Parse] | None = None) -> list[str]:
    """Give the routes of ``hot`` (default :data:`HOT`) their fast front; returns the paths
    done. A route is skipped (left to FastAPI alone) unless it is an async endpoint with a
    route policy and no other dependency."""
    hot = HOT if hot is None else hot
    done = []
    for route in app.router.routes:
        if not isinstance(route, APIRoute) or not inspect.iscoroutinefunction(route.endpoint):
            continue
        for method in route.methods or ():
            parse = hot.get((method, route.path))
            if parse is None:
                continue
            enforce = enforcer(route)
            if enforce is None:
                continue
            route.app = front(route.app, parse, enforce, route.endpoint)
            done.append(f"{method} {route.path}")
            break
    return done

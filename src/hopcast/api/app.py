"""The HTTP API over a :class:`hopcast.Graph`: read queries, writes, schema, health, metrics.

Build it with :func:`create_app`; serve it with :func:`hopcast.api.serve` (uvicorn). Every route
is versioned under ``/v1`` except the operational ones (``/healthz``, ``/metrics``); the OpenAPI
document is at ``/openapi.json`` and browsable at ``/docs``. Errors follow
:mod:`hopcast.api.errors` (one JSON shape; 400 malformed query, 422 schema violation, 404 absent,
413 too large).

Why the handlers look the way they do:

* Read handlers are ``async def`` and call the graph inline. An embedded read costs tens of
  microseconds (LMDB is memory-mapped, the memory store is a dict); a hop to the threadpool would
  cost more than the read. Writes are different: a durable LMDB commit waits for ``fsync``, so
  ``POST /v1/mutations`` hands its body to the app's group committer
  (:mod:`hopcast.api.groupcommit`), which applies the requests that arrived together in one
  commit off the event loop (a writer thread; on LMDB a writer process), and the event loop
  keeps serving reads.
* Handlers return :class:`~hopcast.api.responses.JSON` (msgspec-encoded) built from the results'
  ``to_dict()``, so FastAPI neither validates nor re-encodes responses.
* POST bodies are read as bytes (bounded by :class:`~hopcast.api.guard.RequestGuard`) and decoded
  by msgspec into typed structs (:mod:`hopcast.api.bodies`).
* Times in query strings are an integer (µs since the epoch) or a duration such as ``7d``
  meaning "7 days before now" (:func:`hopcast.graphdb.resolve_time`); an empty value means
  "not given".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, FastAPI, Query, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from hopcast.api import bounds, console, docs, errors, fastpath, jobs, openapi
from hopcast.api import policy as policies
from hopcast.api.bodies import (
    MutationsRequest,
    TraverseRequest,
    decode,
    edge_types,
    resolve_time,
    to_mutations,
)
from hopcast.api.browser import BrowserGuard
from hopcast.api.errors import ApiError
from hopcast.api.groupcommit import RETRY_AFTER_S, GroupCommitter
from hopcast.api.guard import RequestGuard
from hopcast.api.live import GatewayBinding, live_router
from hopcast.api.metrics import METRICS_CONTENT_TYPE, ApiMetrics, MetricsMiddleware
from hopcast.api.policy import Auth, Security, policy, public
from hopcast.api.ratelimit import RateLimits
from hopcast.api.ratelimit import install as install_rate_limits
from hopcast.api.responses import JSON
from hopcast.auth.roles import Role
from hopcast.durations import now_us
from hopcast.errors import InvalidQuery, NotFound
from hopcast.graph.limits import DEFAULT_MAX_FUTURE_US, EXPIRED, FUTURE_TIME, arrival_problem
from hopcast.graph.mutations import Mutation
from hopcast.graph.schema import EdgeType, NodeType, Schema
from hopcast.graphdb import Graph
from hopcast.live.jobs import Jobs
from hopcast.live.revocation import RevocationList, RevocationWatch
from hopcast.live.service import LiveService
from hopcast.looplag import LoopLag
from hopcast.query import spec as q

if TYPE_CHECKING:
    from hopcast.api.console import IngestStats
    from hopcast.stream.sources.journal import Journal

#: Largest request body accepted (1 MiB). Roughly 5-10k mutations in their JSON form — a batch
#: that commits in milliseconds — while a burst of oversized uploads cannot exhaust memory: a
#: body is refused before parsing, and while being read if its length was not declared.
MAX_BODY_BYTES = 1 << 20
#: Most mutations in one POST /v1/mutations. Bounds the size of one write transaction (how long
#: it holds the single LMDB writer lock) and matches the largest query result, MAX_RESULT.
MAX_MUTATIONS = q.MAX_RESULT

API_VERSION = "1.0.0"

_decode_json = msgspec.json.Decoder().decode

#: The static device page and operator console (``/web/device.html``, ``/web/console.html``).
WEB_DIR = FsPath(__file__).resolve().parent.parent / "web"

# -- parameters, documented once ----------------------------------------------------------------
# Each declares its bound (hopcast.api.bounds); values marked ``x-hopcast`` get the graph
# schema's node types or edge types in the OpenAPI document (hopcast.api.openapi), and the
# query engine refuses other types with a 400.


def _mark(kind: str) -> dict[str, Any]:
    return {bounds.MARK: kind}


_ID_TEXT = "Node id `type:key` (at most 250 bytes of UTF-8)."

NodeId = Annotated[str, bounds.node_id_path(_ID_TEXT, "profile:1", "node_id")]
EdgeParam = Annotated[
    str | None,
    Query(
        description="Edge type(s), comma-separated. Absent or empty: every edge type touching "
        "the node.",
        examples=["started_watching,browsed"],
        max_length=bounds.MAX_QUERY_CHARS,
        pattern=bounds.EDGES,
        json_schema_extra=_mark("edges"),
    ),
]
DirectionParam = Annotated[
    Literal["out", "in", "both"],
    Query(
        description="`out` (edges leaving the node; two-way edges count from both ends), `in` or "
        "`both`.",
    ),
]
_TIME_FORMS = (
    "µs since the epoch in [0, 2^62), or a duration such as `7d` meaning 7 days before now "
    "(a number and a unit: us, ms, s, m, h, d, w; at most 2^62 µs; a duration reaching before "
    "the epoch starts at the epoch). Empty: not given."
)
SinceParam = Annotated[
    str | None,
    Query(
        description=f"Keep edges with `ts >= since`: {_TIME_FORMS} Default: the 100-day lookback.",
        examples=["7d"],
        pattern=bounds.OPTIONAL_TIME_PATTERN,
    ),
]
UntilParam = Annotated[
    str | None,
    Query(
        description=f"Keep edges with `ts < until`: {_TIME_FORMS}",
        examples=["1700000000000000"],
        pattern=bounds.OPTIONAL_TIME_PATTERN,
    ),
]


AccountId = Annotated[
    str, bounds.node_id_path("The account (journey root) id.", "account:1", "journey_root")
]
IdsParam = Annotated[
    str,
    Query(
        description=f"1 to {q.MAX_IDS} node ids, comma-separated (keys without commas); at "
        f"most {bounds.MAX_QUERY_CHARS} characters in all. An id no node can have (too long) "
        "is answered `null` like any absent node.",
        examples=["account:1,profile:9"],
        max_length=bounds.MAX_QUERY_CHARS,
        pattern=bounds.NODE_IDS,
        json_schema_extra=_mark("node_ids"),
    ),
]
SelectionParam = Annotated[
    Literal["latest", "any"],
    Query(description="`latest` (newest first) or `any` (storage order, cheaper)."),
]
NeighboursLimit = Annotated[
    int, Query(description=f"Most edges returned, 1 to {q.MAX_RESULT}.", ge=1, le=q.MAX_RESULT)
]
JourneyLimit = Annotated[
    int, Query(description=f"Entries per page, 1 to {q.MAX_RESULT}.", ge=1, le=q.MAX_RESULT)
]
WhereParam = Annotated[
    str | None,
    Query(
        description='Property filter, a JSON object: `{"prop": value}` (equals) or '
        f'`{{"prop": {{"op": value}}}}` with op one of {", ".join(q.OPS)} (`in` takes a list). '
        f"At most {bounds.MAX_QUERY_CHARS} characters and {bounds.MAX_JSON_DEPTH} levels of "
        "nesting.",
        examples=['{"position_s": {"gte": 60}}'],
        max_length=bounds.MAX_QUERY_CHARS,
        json_schema_extra=_mark("where"),
    ),
]
CursorParam = Annotated[
    str | None,
    Query(
        description="The `cursor` of the previous page (opaque; a cursor this server did not "
        "issue is a 400 `invalid_cursor`).",
        pattern=bounds.OPTIONAL_CURSOR,
    ),
]
InteractionsParam = Annotated[
    str | None,
    Query(
        description="Interaction edge types, comma-separated. Absent or empty: all of them.",
        max_length=bounds.MAX_QUERY_CHARS,
        pattern=bounds.EDGES,
        json_schema_extra=_mark("edges"),
    ),
]


def _node_query(description: str, example: str) -> Any:
    return Query(
        description=f"{description} {_ID_TEXT}",
        examples=[example],
        min_length=3,
        max_length=bounds.MAX_NODE_ID_CHARS,
        pattern=bounds.NODE_ID,
        json_schema_extra=_mark("node_id"),
    )


ExistsSrc = Annotated[str, _node_query("Source node id.", "account:1")]
ExistsEdge = Annotated[
    str,
    Query(
        description="Edge type.",
        examples=["has_profile"],
        pattern=bounds.EDGE,
        json_schema_extra=_mark("edge"),
    ),
]
ExistsDst = Annotated[str, _node_query("Target node id.", "profile:1")]
PathSrc = Annotated[str, _node_query("Start node id.", "profile:1")]
PathDst = Annotated[str, _node_query("Target node id.", "profile:2")]
MaxHops = Annotated[
    int,
    Query(description=f"Longest path searched, 1 to {q.MAX_DEPTH} hops.", ge=1, le=q.MAX_DEPTH),
]


def _time(name: str, value: str | None, now: int) -> int | None:
    return resolve_time(name, value, now)


def _where(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    depth = bounds.json_too_deep(text)
    if depth is not None:
        raise InvalidQuery(f"where: nests {depth} levels deep; at most {bounds.MAX_JSON_DEPTH}")
    try:
        where = _decode_json(text)
    except msgspec.DecodeError as exc:
        raise InvalidQuery(f"where: not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidQuery(f"where: nests deeper than {bounds.MAX_JSON_DEPTH} levels") from None
    if not isinstance(where, dict):
        raise InvalidQuery("where: must be a JSON object of property -> value or {op: value}")
    return where


def whole_numbers_of(item: Any, schema: Schema) -> Any:
    """A mutation's JSON form with a whole float (``5.0``) as an integer wherever the document
    declares an integer: ``ts``, ``seq`` and properties of type ``int`` (JSON Schema counts
    ``5.0`` as an integer). Other properties keep the number as written."""
    if not isinstance(item, dict):
        return item
    props = item.get("props")
    if (
        not isinstance(item.get("ts"), float)
        and not isinstance(item.get("seq"), float)
        and not (isinstance(props, dict) and any(isinstance(v, float) for v in props.values()))
    ):
        return item  # no float anywhere it could matter: as written (the common case)
    out = dict(item)
    for name in ("ts", "seq"):
        out[name] = _whole(out.get(name))
    props = out.get("props")
    kind = out.get("kind")
    spec: NodeType | EdgeType | None = None
    if isinstance(kind, str) and kind.startswith("node"):
        node = out.get("node")
        if isinstance(node, str):
            spec = schema.nodes.get(node.partition(":")[0])
    elif isinstance(kind, str) and kind.startswith("edge"):
        edge = out.get("type")
        if isinstance(edge, str):
            spec = schema.edges.get(edge)
    if spec is not None and isinstance(props, dict):
        declared = spec.props.props
        out["props"] = {
            k: _whole(v) if k in declared and declared[k].type == "int" else v
            for k, v in props.items()
        }
    return {k: v for k, v in out.items() if v is not None or k in item}


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: Why a valid mutation changed nothing: a newer (or equal) version was already stored.
LOST_TO_NEWER = "lost_to_newer"


def _arrivals(
    batch: list[Mutation], graph: Graph, max_future_us: int | None
) -> tuple[list[Mutation], list[dict[str, Any]]]:
    """Split validated mutations into those to write and those expired on arrival (reported,
    not written: they would be invisible the moment they were stored).

    Raises:
        ApiError: 422 ``future_time`` naming the first mutation whose ``ts`` lies more than
            ``max_future_us`` past the server's clock (nothing is written).
    """
    now = graph.clock()
    schema = graph.schema
    kept: list[Mutation] = []
    expired: list[dict[str, Any]] = []
    for i, mu in enumerate(batch):
        problem = arrival_problem(mu.ts, now, schema.retention_of(mu), max_future_us)
        if problem is None:
            kept.append(mu)
        elif problem[0] == FUTURE_TIME:
            raise ApiError(
                422,
                FUTURE_TIME,
                f"mutation #{i} ({mu.id[:60]!r}): {problem[1]}",
                index=i,
                reason=problem[1],
            )
        else:
            expired.append({"index": i, "id": mu.id, "message": problem[1]})
    return kept, expired


#: The 503 answers of POST /v1/mutations: the write queue is full, or the store failed.
_WRITE_503: dict[str, Any] = {
    "description": "The write queue is full (`write_queue_full`: retry after `Retry-After` "
    "seconds; nothing was written) or the graph store is unavailable (`storage_unavailable`).",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before retrying (with `write_queue_full`).",
            "schema": {"type": "integer", "example": RETRY_AFTER_S},
        }
    },
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/Error"},
            "example": {
                "error": "write_queue_full",
                "message": "1024 write requests are waiting for the store; retry after 1 s "
                "(nothing was written)",
            },
        }
    },
}


def _loop_lag_router(monitor: LoopLag) -> APIRouter:
    """No routes: a lifespan that runs the event-loop lag monitor while the app is up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        monitor.start()
        try:
            yield
        finally:
            await monitor.stop()

    return APIRouter(lifespan=lifespan)


def _revocation_router(watch: RevocationWatch) -> APIRouter:
    """No routes: a lifespan that reads the device-token revocation list before the app serves
    (a list that cannot be read refuses the start) and polls it while the app is up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await watch.start()
        try:
            yield
        finally:
            await watch.stop()

    return APIRouter(lifespan=lifespan)


def create_app(
    graph: Graph,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_mutations: int = MAX_MUTATIONS,
    title: str = "hopcast",
    live: LiveService | None = None,
    gateway: GatewayBinding | None = None,
    journals: Mapping[str, Journal] | None = None,
    ingest: IngestStats | None = None,
    console_routes: bool | None = None,
    max_future_us: int | None = DEFAULT_MAX_FUTURE_US,
    security: Security | None = None,
    rate_limits: RateLimits | None = None,
) -> FastAPI:
    """Build the API app over ``graph``.

    The app does not own ``graph``: closing it stays the caller's job (after the server stops).

    Args:
        graph: the graph to query and write.
        max_body_bytes: largest request body; bigger ones get a 413 before being parsed.
        max_mutations: most mutations per ``POST /v1/mutations``; more get a 413.
        title: the OpenAPI title.
        live: a live-event service: adds the ``/v1/live`` routes (:mod:`hopcast.api.live`),
            which resume it and run its timers while the app is up. Not owned by the app.
        gateway: a WebSocket gateway to run beside the live routes (needs ``live``).
        journals: ingest journals by source name: adds ``POST /v1/ingest/{source}``
            (:mod:`hopcast.api.ingest`). Not owned by the app.
        ingest: the stats of a pipeline running in this process, for the console's ingest
            status (:mod:`hopcast.api.console`; settable later as ``app.state.ingest``).
        console_routes: serve the operator console's ``/v1/console`` routes; default: when
            there is a live service or ingest stats.
        max_future_us: how far past the server's clock a mutation's ``ts`` may lie (default
            an hour); later ones are refused with a 422 ``future_time``. None: no bound.
        security: API keys, allowed hosts and CORS origins (:class:`~hopcast.api.policy.
            Security`). Default: **no authentication** and any ``Host`` — for tests and for
            embedding behind a door of one's own; every ``hopcast`` command that serves
            requires keys or an explicit ``--insecure`` on loopback. Every route declares its
            policy either way (:mod:`hopcast.api.policy`), and the browser protections of
            :mod:`hopcast.api.browser` (JSON bodies only, ``Origin`` checked, security
            headers) are always on.
        rate_limits: per-key rate limits of the write, ingest and operator routes
            (:mod:`hopcast.api.ratelimit`), as ``app.state.rate_limits``; None: no limits.
            ``hopcast serve`` passes the defaults.

    Raises:
        ValueError: for a negative ``max_body_bytes`` or ``max_mutations < 1``.

    Returns:
        A FastAPI app with its own metrics registry (``app.state.metrics``).
    """
    if max_mutations < 1:
        raise ValueError(f"max_mutations must be >= 1, got {max_mutations}")
    if max_body_bytes < 0:
        raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
    backend = graph.store.kv.name
    metrics = ApiMetrics(backend)
    app = FastAPI(
        title=title,
        version=API_VERSION,
        summary="Real-time member graph: neighbours, traversals, journeys, counts, paths, writes.",
        description=openapi.DESCRIPTION,
        default_response_class=JSON,
        openapi_tags=openapi.TAGS,
        docs_url=None,  # docs.install serves the page with installed assets instead of a CDN
        redoc_url=None,
    )
    security = security if security is not None else Security()
    device_secret = security.device_secret
    if device_secret is None and gateway is not None:
        device_secret = gateway.secret
    app.state.graph = graph
    app.state.metrics = metrics
    # The gateway's revocation list (polled from the shared one) also bars revoked device
    # tokens from the HTTP routes devices call; without a gateway, the app polls the list itself.
    revoked: Callable[[], RevocationList] | None = None
    if gateway is not None:
        revoked = lambda: gateway.gateway.revocations  # noqa: E731
    elif device_secret is not None and security.revocations is not None:
        watch = RevocationWatch(security.revocations, now_us)
        revoked = watch.current
        app.include_router(_revocation_router(watch))
    app.state.auth = Auth(security.keys, device_secret, revoked=revoked)
    app.state.rate_limits = None  # a limiter with .check(subject, bucket) may be set here
    errors.install(app)
    install_rate_limits(app, rate_limits, metrics.registry)
    app.state.loop_lag = LoopLag(metrics.registry)
    app.include_router(_loop_lag_router(app.state.loop_lag))
    openapi.install(
        app,
        graph.schema,
        clock=graph.clock,
        max_future_us=max_future_us,
        max_mutations=max_mutations,
    )
    docs.install(app)
    policies.install(app)
    # Outermost last: metrics count every answer; the browser guard refuses foreign hosts and
    # cross-site writes before anything else runs and adds its headers to every answer (413s
    # and 500s included); CORS (when configured) answers preflights; RequestGuard bounds bodies.
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)
    if security.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(security.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "if-none-match", "idempotency-key"],
            expose_headers=["etag", "retry-after", "x-hopcast-worker"],
        )
    app.add_middleware(
        BrowserGuard, allowed_hosts=security.allowed_hosts, cors_origins=security.cors_origins
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 413s and 500s
    schema_json = JSON(graph.schema.to_dict()).body

    # -- nodes ---------------------------------------------------------------------------------
    # A node id may hold any character, "/" too (sent as %2F, which servers decode): the id
    # path parameters match across slashes ("{node_id:node_id}"), and GET /v1/nodes/{node_id} is
    # registered after the routes below it (/neighbours, /journey, /count) so that they match
    # first.

    async def get_node(node_id: NodeId) -> Response:
        node = graph.node(node_id)
        if node is None:
            raise NotFound(
                f"node {node_id!r} does not exist (never written, deleted or past its retention)"
            )
        return JSON(node.to_dict())

    @app.get(
        "/v1/nodes",
        dependencies=[policy(Role.READER)],
        tags=["nodes"],
        summary="Several nodes",
        description=f"Nodes in the order asked; `null` where absent. At most {q.MAX_IDS} ids.",
        responses=openapi.responses(openapi.NODES, 400, 422),
    )
    async def get_nodes(
        ids: IdsParam,
    ) -> Response:
        found = graph.nodes(ids.split(","))  # the declared pattern: 1 to MAX_IDS ids
        return JSON({"nodes": [None if n is None else n.to_dict() for n in found]})

    # -- queries -------------------------------------------------------------------------------

    @app.get(
        "/v1/nodes/{node_id:node_id}/neighbours",
        dependencies=[policy(Role.READER)],
        tags=["queries"],
        summary="Neighbours (one hop)",
        description="Edges of the node, newest first (`selection=latest`) or in storage order "
        "(`any`), filtered by time window and properties, cut at `limit`.",
        responses=openapi.responses(openapi.NEIGHBOURS, 400, 422),
    )
    async def neighbours(
        node_id: NodeId,
        edge: EdgeParam = None,
        direction: DirectionParam = "out",
        selection: SelectionParam = "latest",
        since: SinceParam = None,
        until: UntilParam = None,
        limit: NeighboursLimit = 20,
        where: WhereParam = None,
    ) -> Response:
        now = graph.clock()
        result = graph.neighbours(
            node_id,
            edge,
            direction=direction,
            selection=selection,
            since=_time("since", since, now),
            until=_time("until", until, now),
            limit=limit,
            where=_where(where),
            now=now,
        )
        return JSON(result.to_dict())

    @app.post(
        "/v1/query/traverse",
        dependencies=[policy(Role.READER)],
        tags=["queries"],
        summary="k-hop traversal",
        description="Breadth-first, one round per hop, under layered limits (per depth, per edge "
        "type, total work, frontier size). A traversal that hits a limit returns what it found "
        "with `truncated: true` and the reason.",
        responses=openapi.responses(openapi.TRAVERSE, 400, 413, 422),
        openapi_extra=openapi.request_body("TraverseRequest", openapi.TRAVERSE_REQUESTS),
    )
    async def traverse(request: Request) -> Response:
        body = decode(await request.body(), TraverseRequest, "invalid_query")
        now = graph.clock()
        return JSON(graph.engine.traverse(body.to_spec(now), now).to_dict())

    @app.get(
        "/v1/nodes/{node_id:node_id}/journey",
        dependencies=[policy(Role.READER)],
        tags=["queries"],
        summary="A member's journey",
        description="Interactions of the account, its profiles and devices, newest first, paged: "
        "pass the returned `cursor` to get the next page (`null` on the last one).",
        responses=openapi.responses(openapi.JOURNEY, 400, 422),
    )
    async def journey(
        node_id: AccountId,
        since: SinceParam = None,
        until: UntilParam = None,
        limit: JourneyLimit = 100,
        cursor: CursorParam = None,
        edge: InteractionsParam = None,
    ) -> Response:
        now = graph.clock()
        result = graph.journey(
            node_id,
            since=_time("since", since, now),
            until=_time("until", until, now),
            limit=limit,
            cursor=cursor or None,
            edge=edge_types(edge),
            now=now,
        )
        return JSON(result.to_dict())

    @app.get(
        "/v1/nodes/{node_id:node_id}/count",
        dependencies=[policy(Role.READER)],
        tags=["queries"],
        summary="Count edges",
        description="Live edges of the node in the time window, in total and per edge type.",
        responses=openapi.responses(openapi.COUNT, 400, 422),
    )
    async def count(
        node_id: NodeId,
        edge: EdgeParam = None,
        direction: DirectionParam = "out",
        since: SinceParam = None,
        until: UntilParam = None,
    ) -> Response:
        now = graph.clock()
        result = graph.count(
            node_id,
            edge,
            direction=direction,
            since=_time("since", since, now),
            until=_time("until", until, now),
            now=now,
        )
        return JSON(result.to_dict())

    app.get(
        "/v1/nodes/{node_id:node_id}",
        dependencies=[policy(Role.READER)],
        tags=["nodes"],
        summary="One node",
        description="The node's last-seen time and current properties.",
        responses=openapi.responses(openapi.NODE, 400, 404, 422),
    )(get_node)

    @app.get(
        "/v1/edges/exists",
        dependencies=[policy(Role.READER)],
        tags=["queries"],
        summary="Does an edge exist?",
        description="Whether `src -[edge]-> dst` exists (either way round for a two-way edge), "
        "and the edge if so.",
        responses=openapi.responses(openapi.EXISTS, 400, 422),
    )
    async def exists(
        src: ExistsSrc,
        edge: ExistsEdge,
        dst: ExistsDst,
    ) -> Response:
        return JSON(graph.engine.exists(q.Exists(src, edge, dst)).to_dict())

    @app.get(
        "/v1/path",
        dependencies=[policy(Role.READER)],
        tags=["queries"],
        summary="Shortest path",
        description="Breadth-first search from `src`; the first path found to `dst` is a "
        "shortest one within the limits. `found: false` if none within `max_hops`.",
        responses=openapi.responses(openapi.PATH, 400, 422),
    )
    async def path(
        src: PathSrc,
        dst: PathDst,
        max_hops: MaxHops = 3,
        edge: EdgeParam = None,
        direction: DirectionParam = "both",
        since: SinceParam = None,
    ) -> Response:
        now = graph.clock()
        result = graph.shortest_path(
            src,
            dst,
            max_hops=max_hops,
            edge=edge,
            direction=direction,
            since=_time("since", since, now),
            now=now,
        )
        return JSON(result.to_dict())

    # -- writes --------------------------------------------------------------------------------

    def prepare(raw: bytes) -> tuple[list[Mutation], list[dict[str, Any]]]:
        """Decode and validate a mutations body: what to write, and what expired on arrival
        (see :class:`GroupCommitter` for the thread it runs on)."""
        body = decode(raw, MutationsRequest)
        if len(body.mutations) > max_mutations:
            raise ApiError(
                413,
                "too_many_mutations",
                f"{len(body.mutations)} mutations in one request; at most {max_mutations}",
            )
        items = [whole_numbers_of(item, graph.schema) for item in body.mutations]
        batch = graph.store.validate(to_mutations(items))
        return _arrivals(batch, graph, max_future_us)

    committer = GroupCommitter(graph.store, prepare, metrics.registry)
    app.state.committer = committer
    app.include_router(committer.router())

    @app.post(
        "/v1/mutations",
        dependencies=[policy(Role.WRITER, limit="mutations")],
        tags=["writes"],
        summary="Apply mutations",
        description="Validates every mutation against the schema, then applies them in one "
        "atomic write (last-write-wins on `ts`, idempotent on `id`). The write is committed — "
        "durable, on a store opened with `sync` — before the response. If any mutation is "
        "malformed or violates the schema nothing is written and the 422 names its `index`; "
        "so does a `ts` more than the allowed skew (default an hour) past the server's clock "
        "(`future_time`: it would win every comparison until the clock caught up). "
        "`skipped` counts the writes that changed nothing, by reason: `lost_to_newer` (a newer "
        "or equal version is stored) and `expired` (older than the type's retention on arrival: "
        "invisible once written, so not written; each is listed in `expired` with its index). "
        f"At most {max_mutations} mutations per request. Concurrent requests share one "
        "commit (group commit); each gets its own answer. 503 `write_queue_full` (with "
        "`Retry-After`, nothing written) when too many writes are waiting; 503 "
        "`storage_unavailable` when the store fails.",
        responses=openapi.responses(openapi.MUTATIONS, 400, 413, 422) | {503: _WRITE_503},
        openapi_extra=openapi.request_body("MutationsRequest", openapi.MUTATIONS_REQUESTS),
    )
    async def mutations(request: Request) -> Response:
        # Decoding and validating a full body (~6,500 mutations in 1 MiB) took 120-160 ms of
        # the event loop: a body over 16 KiB is decoded on the committer's thread, a small one
        # on arrival (groupcommit.INLINE_PREPARE_BYTES); the commit never runs on the loop.
        done = await committer.submit(await request.body())
        result, expired = done.result, done.expired
        metrics.mutations_applied.inc(result.applied)
        metrics.mutations_skipped.inc(result.skipped + len(expired))
        return JSON(
            {
                "applied": result.applied,
                "skipped": result.skipped + len(expired),
                "skipped_by_reason": {LOST_TO_NEWER: result.skipped, EXPIRED: len(expired)},
                "expired": expired,
            }
        )

    # -- schema and operations -----------------------------------------------------------------

    @app.get(
        "/v1/schema",
        dependencies=[public("the graph's types, which the public OpenAPI document lists too")],
        tags=["schema"],
        summary="The graph schema",
        description="Node types, edge types with their mappings, retention and the journey.",
        responses=openapi.responses(openapi.SCHEMA),
    )
    async def schema() -> Response:
        return Response(schema_json, media_type=JSON.media_type)

    @app.get(
        "/healthz",
        dependencies=[public("liveness: holds no data")],
        tags=["operations"],
        summary="Health",
        description="200 if the graph store answers a read; 503 otherwise.",
        responses=openapi.responses({"status": "ok", "backend": "lmdb"}, 503),
    )
    async def healthz() -> Response:
        with graph.store.read():
            pass
        return JSON({"status": "ok", "backend": backend})

    @app.get(
        "/metrics",
        dependencies=[policy(Role.READER)],
        tags=["operations"],
        summary="Prometheus metrics",
        description="Request counts and latency per route template and status, mutations "
        "applied and skipped, and the store backend, in the Prometheus text format.",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)

    if live is not None:
        app.state.live = live
        app.state.jobs = Jobs(jobs.classify_failure)  # materialise jobs (hopcast.api.jobs)
        jobs.install(app)
        app.include_router(live_router(live, metrics.registry, binding=gateway))
        app.include_router(jobs.jobs_router())
        if live.materialiser is None:
            live.use_graph(graph)
    wanted = live is not None or ingest is not None
    if console_routes or (console_routes is None and wanted):
        console.install(
            app,
            graph,
            metrics.registry,
            live=live,
            gateway=None if gateway is None else gateway.gateway,
            ingest=ingest,
        )
    if journals:
        from hopcast.api.ingest import ingest_router

        app.include_router(ingest_router(journals, metrics.registry))
    if WEB_DIR.is_dir():
        app.mount("/web", StaticFiles(directory=WEB_DIR, html=True), name="web")

        @app.get("/", include_in_schema=False, dependencies=[public("a redirect to the pages")])
        async def home() -> Response:
            return RedirectResponse("/web/")

    # The hot routes (node and neighbour reads, mutations) skip FastAPI's per-request
    # dependency solving when their parameters are plainly valid; same policy, same answers.
    fastpath.install(app)
    return app

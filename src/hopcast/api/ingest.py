"""``POST /v1/ingest/{source}``: records over HTTP into a durable journal, answered 202.

The body is either a JSON array (each element one record, re-encoded compactly) or JSON lines
(each non-empty line one record, kept byte for byte). Every record must be a JSON object. The
records are appended to the source's journal (:class:`~hopcast.stream.sources.journal.Journal`)
and ``fsync``\\ ed before the answer, so **a 202 means the records will be ingested**, whatever
crashes afterwards; concurrent requests share one ``fsync`` (group commit). The engine reads the
journal as a ``journal:DIR`` source.

==========================================  ======  ==========================
Outcome                                     Status  ``error``
==========================================  ======  ==========================
appended (``{"accepted", "position"}``)      202
a retry of a keyed request (nothing new)     202    (``"replayed": true``)
an ``Idempotency-Key`` reused, other body    422    ``idempotency_key_reused``
no journal for this source                   404    ``not_found``
body larger than ``max_body_bytes``          413    ``body_too_large``
more records than ``max_records``            413    ``too_many_records``
empty body                                   400    ``empty_body``
not JSON (names the line or the element)     400    ``malformed_json``
a record that is not a JSON object           400    ``not_an_object``
body nested deeper than the bound           400    ``too_deep``
the journal's disk failed                    503    ``storage_unavailable``
==========================================  ======  ==========================

**Retries.** A client that may retry (a timeout, a connection reset: it cannot know whether the
first attempt was journaled) sends an ``Idempotency-Key`` header, 1 to 255 printable ASCII
characters, unique per request (a UUID). A retry with the same key and the same records is
answered like the first attempt (same ``position``, ``"replayed": true``) and appends nothing,
so its records are not ingested twice and a bad record among them does not become a second
dead letter; a retry that arrives while the first attempt is still being written waits for it.
The journal remembers the last 10,000 keys (:data:`~hopcast.stream.sources.journal.MAX_KEYS`)
and, after a restart, the keys of its active segment (up to 64 MiB of records): retry within
minutes, not days. Without the header every POST appends.

Wire it into the API with ``create_app(graph, journals={...})``, or run it alone with
:func:`ingest_app` (what ``hopcast ingest run --listen`` does, beside the engine's ``/metrics``).

Metrics: ``hopcast_ingest_http_records_total{source}``, ``hopcast_ingest_http_bytes_total{source}``,
``hopcast_ingest_http_rejected_total{source,error}``, ``hopcast_ingest_journal_fsyncs_total``
(fewer than requests under load: group commit) and ``hopcast_ingest_append_seconds`` (histogram:
the wait for the durable append).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, FastAPI, Header, Path, Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from hopcast.api import bounds, docs, errors, openapi
from hopcast.api.browser import BrowserGuard
from hopcast.api.errors import ApiError
from hopcast.api.guard import RequestGuard
from hopcast.api.metrics import METRICS_CONTENT_TYPE
from hopcast.api.policy import Auth, Security, policy
from hopcast.api.policy import install as policy_install
from hopcast.api.ratelimit import RateLimits
from hopcast.api.ratelimit import install as install_rate_limits
from hopcast.api.responses import JSON
from hopcast.auth.roles import Role
from hopcast.errors import NotFound
from hopcast.stream.sources.journal import MAX_KEY_BYTES, Journal, KeyReused

#: Largest body (4 MiB): thousands of log lines in one request, bounded memory per request.
MAX_BODY_BYTES = 4 << 20
#: Most records per request.
MAX_RECORDS = 50_000
#: A source name: what a journal is registered under (a path segment).
SOURCE = "^[A-Za-z0-9._-]{1,128}$"

IdempotencyKey = Annotated[
    str | None,
    Header(
        description="Makes a retry safe: a request with a key already seen (and the same "
        "records) is answered like the first one and appends nothing. 1 to "
        f"{MAX_KEY_BYTES} printable ASCII characters, e.g. a UUID.",
        pattern=f"^[\\x21-\\x7e]{{1,{MAX_KEY_BYTES}}}$",
    ),
]

#: Deepest nesting of one record (the record object is level 1): a record's properties may nest
#: MAX_JSON_DEPTH levels, as in a mutation; thousands of levels would exhaust the recursive
#: decoders downstream.
MAX_RECORD_DEPTH = bounds.MAX_JSON_DEPTH

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


class _JournalCollector(Collector):
    def __init__(self, journals: Mapping[str, Journal]) -> None:
        self.journals = journals

    def collect(self) -> Any:
        fsyncs = CounterMetricFamily(
            "hopcast_ingest_journal_fsyncs", "Journal fsyncs (group commits)", labels=["source"]
        )
        for name, journal in self.journals.items():
            fsyncs.add_metric([name], journal.stats().fsyncs)
        yield fsyncs


def parse_body(body: bytes) -> list[bytes]:
    """The records of a request body (see the module docstring).

    Raises:
        ApiError: 400 for an empty body, bad JSON or a record that is not an object.
    """
    text = body.strip()
    if not text:
        raise ApiError(400, "empty_body", "the body is empty: send JSON lines or a JSON array")
    if text.startswith(b"["):
        depth = bounds.json_too_deep(text, MAX_RECORD_DEPTH + 1)
        if depth is not None:
            raise ApiError(
                400,
                "too_deep",
                f"the body nests {depth} levels deep; a record may nest at most {MAX_RECORD_DEPTH}",
            )
        try:
            items = _decode(text)
        except msgspec.DecodeError as exc:
            raise ApiError(
                400, "malformed_json", f"the JSON array is not valid JSON: {exc}"
            ) from None
        except RecursionError:  # unreachable after the depth check; still a 400
            raise ApiError(400, "too_deep", "the body nests too deep") from None
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError(400, "not_an_object", f"element {i}: a record must be an object")
            out.append(_encode(item))
        return out
    out = []
    for n, line in enumerate(text.split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        # per line, not over the whole body: a short line is a cheap count, and one long scan
        # of the body held the interpreter (and the event loop beside it) ~90 ms per MiB
        depth = bounds.json_too_deep(line, MAX_RECORD_DEPTH)
        if depth is not None:
            raise ApiError(
                400,
                "too_deep",
                f"line {n} nests {depth} levels deep; a record may nest at most {MAX_RECORD_DEPTH}",
            )
        try:
            doc = _decode(line)
        except msgspec.DecodeError as exc:
            raise ApiError(400, "malformed_json", f"line {n} is not valid JSON: {exc}") from None
        except RecursionError:  # unreachable after the depth check; still a 400
            raise ApiError(400, "too_deep", f"line {n} nests too deep") from None
        if not isinstance(doc, dict):
            raise ApiError(400, "not_an_object", f"line {n}: a record must be a JSON object")
        out.append(line)
    return out


def ingest_router(
    journals: Mapping[str, Journal],
    registry: CollectorRegistry,
    *,
    max_records: int = MAX_RECORDS,
) -> APIRouter:
    """The route over ``journals`` (by source name); metrics go to ``registry``."""
    records_in = Counter(
        "hopcast_ingest_http_records", "Records accepted over HTTP", ["source"], registry=registry
    )
    bytes_in = Counter(
        "hopcast_ingest_http_bytes",
        "Record bytes accepted over HTTP",
        ["source"],
        registry=registry,
    )
    rejected = Counter(
        "hopcast_ingest_http_rejected",
        "Requests refused (4xx)",
        ["source", "error"],
        registry=registry,
    )
    append_s = Histogram(
        "hopcast_ingest_append_seconds",
        "Durable journal append (write + fsync, shared by concurrent requests)",
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        registry=registry,
    )
    replays = Counter(
        "hopcast_ingest_http_replays",
        "Retried requests answered from their Idempotency-Key, appending nothing",
        ["source"],
        registry=registry,
    )
    registry.register(_JournalCollector(journals))
    router = APIRouter()
    # the document lists the sources served (another name is a 404)
    source_param = Path(
        description="The source's name: one of the journals this server has.",
        pattern=SOURCE,
        json_schema_extra={"enum": sorted(journals)},
    )

    @router.post(
        "/v1/ingest/{source}",
        dependencies=[policy(Role.WRITER, limit="ingest")],
        tags=["ingest"],
        summary="Ingest records",
        status_code=202,
        description="JSON lines or a JSON array of objects; appended durably to the source's "
        "journal before the 202, so an accepted record is never lost. 400 for a malformed body "
        "(the message names the line) or header, 404 for an unknown source, 413 when too "
        "large, 422 for an Idempotency-Key reused with another body.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "description": "A JSON array of records, or JSON lines (one record per line; a "
                "single record is one line). Every record is a JSON object nested at most "
                f"{MAX_RECORD_DEPTH} levels deep.",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                {
                                    "type": "array",
                                    "items": {"type": "object"},
                                    "maxItems": max_records,  # beyond: a 413 (too large)
                                },
                                {"type": "object"},
                            ]
                        }
                    }
                },
            }
        },
        responses={
            202: {"description": "Journaled", "content": {"application/json": {}}},
            **{
                status: {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for status, text in (
                    (400, "Malformed body or header"),
                    (404, "No journal for this source"),
                    (413, "Body too large or too many records"),
                    (422, "Idempotency-Key reused with another body"),
                    (503, "The journal's disk failed"),
                )
            },
        },
    )
    async def ingest(
        request: Request,
        source: str = source_param,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        journal = journals.get(source)
        if journal is None:
            known = ", ".join(sorted(journals)) or "none"
            raise NotFound(f"no ingest journal for source {source!r} (journals: {known})")
        try:
            body = await request.body()
            # parsing costs ~170 ms of CPU per MiB of JSON lines: off the event loop
            values = await run_in_threadpool(parse_body, body)
            if len(values) > max_records:
                raise ApiError(
                    413,
                    "too_many_records",
                    f"{len(values)} records in one request; at most {max_records}",
                )
        except ApiError as exc:
            rejected.labels(source, exc.kind).inc()
            raise
        t0 = time.perf_counter()
        if idempotency_key is None:
            position = await run_in_threadpool(journal.append, values)
            accepted, replayed = len(values), False
        else:
            try:
                done = await run_in_threadpool(journal.append_once, values, idempotency_key)
            except KeyReused as exc:
                rejected.labels(source, "idempotency_key_reused").inc()
                raise ApiError(422, "idempotency_key_reused", str(exc)) from None
            position, accepted, replayed = done.position, done.count, done.replayed
        append_s.observe(time.perf_counter() - t0)
        if replayed:
            replays.labels(source).inc()
        else:
            records_in.labels(source).inc(len(values))
            bytes_in.labels(source).inc(sum(len(v) for v in values))
        return JSON(
            {
                "accepted": accepted,
                "position": {"partition": position.partition, "offset": position.offset},
                "replayed": replayed,
            },
            status_code=202,
        )

    return router


def ingest_app(
    journals: Mapping[str, Journal],
    registry: CollectorRegistry | None = None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_records: int = MAX_RECORDS,
    security: Security | None = None,
    rate_limits: RateLimits | None = None,
) -> FastAPI:
    """A small app: the ingest route and ``GET /metrics`` (``registry``, e.g. the engine's).

    ``security`` and ``rate_limits`` as for :func:`hopcast.api.create_app` (default: no
    authentication, no limits; ``hopcast ingest run --listen`` passes the default rates, so
    the ingest route draws from each key's ``ingest`` bucket)."""
    reg = registry if registry is not None else CollectorRegistry()
    security = security if security is not None else Security()
    app = FastAPI(
        title="hopcast ingest", default_response_class=JSON, docs_url=None, redoc_url=None
    )
    app.state.auth = Auth(security.keys)
    errors.install(app)
    install_rate_limits(app, rate_limits, reg)
    openapi.install(app)
    docs.install(app)
    policy_install(app)
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)
    app.add_middleware(
        BrowserGuard, allowed_hosts=security.allowed_hosts, cors_origins=security.cors_origins
    )
    app.include_router(ingest_router(journals, reg, max_records=max_records))

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        dependencies=[policy(Role.READER)],
    )
    async def metrics() -> Response:
        return Response(generate_latest(reg), media_type=METRICS_CONTENT_TYPE)

    return app

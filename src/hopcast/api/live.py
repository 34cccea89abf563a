"""The live-event routes: operator commands, the prefetch endpoints and cardinality.

A thin adapter around :class:`~hopcast.live.service.LiveService`: handlers parse, call the
service with its clock, and shape the answer; the schedule, the producer and the prefetch
handlers decide. :func:`hopcast.api.create_app` includes :func:`live_router` when it is given a
service.

* Commands answer the event's JSON form (:func:`~hopcast.live.service.event_doc`) plus
  ``triggers``, what the command broadcast. A command the event's state does not accept is a
  **409** ``illegal_transition`` whose message lists the commands accepted now; malformed times
  or ids are **400**, a body of the wrong shape **422**, an unknown event **404**.
* Handlers are ``async`` and call the service on the event loop thread, so the trigger sinks
  run there too (see :mod:`hopcast.live.service`). A command is one small KV write and
  returns once its triggers are queued (the gateway writes them to devices in chunks,
  :mod:`hopcast.live.outbox`); the fixture materialisation, thousands of writes, is a job
  (:mod:`hopcast.api.jobs`) on a bounded pool of its own.
* Prefetch answers come from :mod:`hopcast.live.prefetch` as they are (ETag, 304 on
  ``If-None-Match``, jittered ``Cache-Control``); their 404s get the usual error body and keep
  ``Cache-Control: no-store``.
* The router's lifespan resumes the service (re-arming timers, re-announcing current stages)
  and runs :func:`~hopcast.live.service.run_timers` while the app is up.

Metrics, on the app's registry: ``hopcast_live_commands_total{command, outcome}`` (outcome
``applied``, ``unchanged``, ``illegal``, ``invalid``, ``not_found``, ``error``) for commands
received over HTTP, ``hopcast_live_triggers_total{stage}`` for every trigger the service emits
(timers included), ``hopcast_live_prefetch_responses_total{route, status}``, and the trigger
sinks' delivery (``hopcast_live_sink_failures_total{sink}``, ``hopcast_live_triggers_pending``,
``…_dropped_total``; :mod:`hopcast.live.sinks`). With a gateway in the process, its
``hopcast_gateway_*`` series are served on the same registry (:class:`RegistryBridge`).

With a gateway that has a revocation list, ``POST /v1/live/tokens/revoke`` adds an entry (by
token id or subject) to the shared list and closes the matching connections of this process at
once; gateways in other processes see it at their next poll (within a second).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from starlette.responses import Response

from hopcast.api import bounds, jobs, openapi
from hopcast.api.bodies import anchored, decode
from hopcast.api.errors import ApiError
from hopcast.api.policy import policy, public
from hopcast.api.responses import JSON, error
from hopcast.auth.roles import Role
from hopcast.durations import parse_duration
from hopcast.errors import HopcastError, IllegalTransition, InvalidInput, NotFound
from hopcast.live.fixtures import demo_segmenter, fixture_entries
from hopcast.live.gateway import Gateway
from hopcast.live.payloads import DEFAULT_SEGMENT, MAX_PAYLOAD_BYTES
from hopcast.live.prefetch import DEFAULT_LEAD_US, PrefetchResponse
from hopcast.live.producer import Trigger
from hopcast.live.revocation import DEFAULT_RETENTION_US, RevocationSource, revocation
from hopcast.live.schedule import (
    MAX_PREFETCH_LEAD_US,
    MAX_TIME_US,
    MAX_TITLE_CHARS,
    Cancel,
    Create,
    EndNow,
    InputKind,
    Interrupt,
    Resume,
    StartNow,
    apply,
)
from hopcast.live.service import (
    KEEP,
    CommandResult,
    LiveService,
    event_doc,
    parse_delay,
    parse_instant,
    parse_lead,
    result_doc,
    run_timers,
)
from hopcast.live.tokens import issue as issue_token
from hopcast.live.tokens import new_token_id

T = TypeVar("T")

#: Most segments one materialise request may name: the demo segmenter's largest sensible
#: configuration (payloads.DEFAULT_MAX_SEGMENTS), so one request stays a bounded batch of writes.
MAX_MATERIALISE_SEGMENTS = 1024


# -- request bodies --------------------------------------------------------------------------------


#: A live event's id in a body.
EventIdText = Annotated[str, msgspec.Meta(pattern=anchored(bounds.EVENT_ID))]
#: A title: 1 to MAX_TITLE_CHARS characters, not all blank (it is stored stripped).
TitleText = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_TITLE_CHARS, pattern=bounds.NOT_BLANK)
]
#: A schedule time: µs since the epoch in [0, 2**62), or text: digits, a duration from now or
#: ISO-8601 (:data:`~hopcast.api.bounds.SCHEDULE_TIME_PATTERN`).
ScheduleTime = (
    Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_US)]
    | Annotated[str, msgspec.Meta(pattern=anchored(bounds.SCHEDULE_TIME_PATTERN))]
)
#: How long before the start the prefetch window opens: 0 to a day, in µs or as a duration.
Lead = (
    Annotated[int, msgspec.Meta(ge=0, le=MAX_PREFETCH_LEAD_US)]
    | Annotated[str, msgspec.Meta(pattern=anchored(bounds.duration_at_most(MAX_PREFETCH_LEAD_US)))]
)
#: A delay: µs or a duration (``-5m`` brings the event forward).
Delay = (
    Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME_US)]
    | Annotated[str, msgspec.Meta(pattern=anchored(bounds.DELAY_PATTERN))]
)
#: A segment key of the payload store.
SegmentName = Annotated[str, msgspec.Meta(pattern=anchored(bounds.NAME))]


class CreateEventRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Schedule a new live event. Times: µs since the epoch, ISO-8601 (UTC without a zone), or
    a duration from now (``10m``); ``prefetch_lead``: µs or a duration, at most a day."""

    id: EventIdText
    title: TitleText
    starts_at: ScheduleTime
    ends_at: ScheduleTime | None = None
    prefetch_lead: Lead = DEFAULT_LEAD_US


class RescheduleRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Move an event: new ``starts_at`` and/or ``ends_at`` (``null`` removes the end), or a
    ``delay`` that shifts both (only the end once the event is live; ``-5m`` brings it
    forward). Give times or a delay, not both."""

    starts_at: ScheduleTime | msgspec.UnsetType = msgspec.UNSET
    ends_at: ScheduleTime | msgspec.UnsetType | None = msgspec.UNSET
    delay: Delay | msgspec.UnsetType = msgspec.UNSET


class MaterialiseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Publish fixture payloads for these segment keys (absent: the demo segmenter's)."""

    segments: (
        Annotated[list[SegmentName], msgspec.Meta(max_length=MAX_MATERIALISE_SEGMENTS)] | None
    ) = None


def _reschedule_schema() -> dict[str, Any]:
    """The reschedule body: times (at least one) or a delay, never both."""
    _, components = msgspec.json.schema_components([RescheduleRequest])
    props = components["RescheduleRequest"]["properties"]
    times = {k: props[k] for k in ("starts_at", "ends_at")}
    return {
        "title": "RescheduleRequest",
        "description": RescheduleRequest.__doc__,
        "oneOf": [
            {
                "title": "New times",
                "type": "object",
                "properties": times,
                "minProperties": 1,
                "additionalProperties": False,
            },
            {
                "title": "A delay",
                "type": "object",
                "properties": {"delay": props["delay"]},
                "required": ["delay"],
                "additionalProperties": False,
            },
        ],
    }


# -- metrics ---------------------------------------------------------------------------------------


class LiveMetrics:
    """The live routes' series (see the module docstring), on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter(
            "hopcast_live_commands",
            "Live-event commands received over HTTP, by command and outcome.",
            ("command", "outcome"),
            registry=registry,
        )
        self.triggers = Counter(
            "hopcast_live_triggers",
            "Triggers the live service emitted (commands, timers, re-announcements), by stage.",
            ("stage",),
            registry=registry,
        )
        self.prefetch = Counter(
            "hopcast_live_prefetch_responses",
            "Prefetch responses, by route (manifest, payload, stage_payload) and status.",
            ("route", "status"),
            registry=registry,
        )

    def count_triggers(self, triggers: Sequence[Trigger]) -> None:
        """A trigger sink: count each trigger by stage."""
        for trigger in triggers:
            self.triggers.labels(trigger.stage.value).inc()


# -- OpenAPI ---------------------------------------------------------------------------------------

_T = 1_700_000_000_000_000
_MINUTE = 60_000_000


def _example_event() -> dict[str, Any]:
    """A real event's JSON form: created, its window opened, then live."""
    event, _ = apply(None, Create("final", "The Final", _T + 30 * _MINUTE, None, 10 * _MINUTE), _T)
    event, _ = apply(event, StartNow("final"), _T + 25 * _MINUTE)
    return event_doc(event) | {
        "triggers": [{"event": "final", "stage": "live", "version": 2, "ts": event.went_live_at}]
    }


EVENT_EXAMPLE = _example_event()
MATERIALISED_EXAMPLE = {
    "event": "final",
    "version": _T,
    "stages": ["ended", "interrupted", "live", "prefetch", "scheduled"],
    "segments": 177,
    "entries": 885,
    "cardinality": 42,
}

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "Malformed id, time or segment",
        {"error": "invalid_input", "message": "starts_at 1700000000 is in the past (...)"},
    ),
    404: ("No such event or payload", {"error": "not_found", "message": "no live event 'x'"}),
    409: (
        "The event's state does not accept the command",
        {
            "error": "illegal_transition",
            "message": "live event 'final' cannot start_now while ended (accepted now: nothing)",
            "event": "final",
            "state": "ended",
            "command": "start_now",
        },
    ),
    422: (
        "A body field of the wrong type",
        {"error": "validation_error", "message": "body: Expected `str`, got `int` - at `$.id`"},
    ),
}


def _responses(example: Any, *statuses: int, ok: int = 200) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        ok: {"description": "OK", "content": {"application/json": {"example": example}}}
    }
    for status in statuses:
        description, body = _ERRORS[status]
        content = {"schema": {"$ref": "#/components/schemas/Error"}, "example": body}
        out[status] = {"description": description, "content": {"application/json": content}}
    return out


def _prefetch_responses(description: str) -> dict[int | str, dict[str, Any]]:
    cache = {
        "ETag": {"schema": {"type": "string"}},
        "Cache-Control": {"schema": {"type": "string"}},
    }
    return {
        200: {
            "description": description,
            "headers": cache,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        304: {"description": "Not modified: If-None-Match matched the ETag.", "headers": cache},
        400: _responses(None, 400)[400],
        404: {
            "description": "Nothing published (Cache-Control: no-store).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }


EventId = Annotated[
    str,
    Path(
        description="The live event's id: 1-64 of A-Z a-z 0-9 . _ : - starting with a letter "
        "or digit.",
        examples=["final"],
        pattern=bounds.EVENT_ID,
    ),
]
SegmentParam = Annotated[
    str,
    Query(
        description="The device's segment key (e.g. `adult.US.en.b0`), or a member's profile "
        "id for the segment the graph placed it in; lookups fall back part by part to "
        f"`{DEFAULT_SEGMENT}`. 1-128 of A-Z a-z 0-9 _ . : - starting with a letter or digit.",
        pattern=bounds.NAME,
    ),
]
IfNoneMatch = Annotated[
    str | None, Header(description="ETags the device has; a match answers 304.")
]


# -- the router ------------------------------------------------------------------------------------


class RegistryBridge:
    """A collector serving another registry's series (the gateway's, on the app's /metrics)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


@dataclass(frozen=True)
class GatewayBinding:
    """A WebSocket gateway the app runs beside its routes (same process, same event loop).

    Attributes:
        gateway: the gateway (its router must be a sink of the live service).
        host, port: where it listens (port 0: any free port).
        secret: the device-token key it verifies with.
        dev_tokens: serve ``POST /v1/live/tokens``, which hands a token to anyone who asks:
            for the demo and development only; in production a login service issues tokens
            with :func:`hopcast.live.tokens.issue` and the same secret.
        ssl_context: serve the gateway as ``wss://`` with this context.
        revocations: the revocation list the gateway polls; with it, the app serves
            ``POST /v1/live/tokens/revoke``.
    """

    gateway: Gateway
    host: str
    port: int
    secret: bytes
    dev_tokens: bool = False
    ssl_context: ssl.SSLContext | None = None
    revocations: RevocationSource | None = None


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    device: str
    channels: list[str]
    ttl: str | int = "1h"


class RevokeRequest(msgspec.Struct, forbid_unknown_fields=True):
    token_id: str | None = None
    subject: str | None = None
    keep: str | int = DEFAULT_RETENTION_US
    note: str = ""


#: Why the content-addressed payloads are public: a payload is immutable and named by a
#: 128-bit hash of its body (nobody guesses one), served ``Cache-Control: public`` so a CDN can
#: hold it; the manifest that tells a device which ids to fetch needs a token or a key.
_PAYLOADS_PUBLIC = "content-addressed and immutable, cacheable by a CDN; ids come from manifests"
#: Why the development token route is public: it exists only with ``dev_tokens`` (the demo and
#: development, never `hopcast serve`), and handing a device token to anyone who asks is its
#: whole purpose; a device token passes only on the routes devices call.
_DEV_TOKENS_PUBLIC = "development only (dev_tokens): issues device tokens to anyone by design"

#: Longest dev token; a demo device reconnects for longer than a match, shorter than a day.
MAX_DEV_TOKEN_TTL_US = 24 * 3600 * 1_000_000


def live_router(
    service: LiveService,
    registry: CollectorRegistry | None = None,
    *,
    timers: bool = True,
    binding: GatewayBinding | None = None,
) -> APIRouter:
    """The ``/v1/live`` routes over ``service``.

    Args:
        service: the process's live service (its clock times the commands).
        registry: where the live metrics go (the app's); default a registry of their own.
        timers: resume the service and run its timer loop for the app's lifetime. Turn off
            when another component of the process drives :func:`run_timers`.

    Returns:
        A router to ``include_router`` into the app.
    """
    registry = registry if registry is not None else CollectorRegistry()
    metrics = LiveMetrics(registry)
    service.add_sink(metrics.count_triggers)
    registry.register(service.sink_metrics)  # what each trigger sink took, failed, dropped
    if binding is not None:  # the gateway's series on the app's /metrics, in every mode
        registry.register(RegistryBridge(binding.gateway.metrics_registry))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server = None
        if binding is not None:
            server = await binding.gateway.serve(
                binding.host, binding.port, ssl_context=binding.ssl_context
            )
            app.state.gateway_url = f"{server.scheme}://{binding.host}:{server.port}"
        try:
            if not timers:
                yield
                return
            service.resume(service.clock())
            stop = asyncio.Event()
            task = asyncio.create_task(run_timers(service, stop=stop))
            try:
                yield
            finally:
                stop.set()
                await task
        finally:
            jobs.jobs_of(app).shutdown()  # queued jobs are dropped; running ones finish
            if server is not None:
                await server.close()

    router = APIRouter(prefix="/v1/live", tags=["live"], lifespan=lifespan)

    def parse(kind: InputKind, raw: bytes, struct: type[T]) -> T:
        """Decode a command's body (a value outside its declared bound is a 400
        ``invalid_input``); a body refused counts as an ``invalid`` command."""
        try:
            body = decode(raw, struct, "invalid_input")
            if isinstance(body, RescheduleRequest):
                times = [v for v in (body.starts_at, body.ends_at) if v is not msgspec.UNSET]
                if body.delay is not msgspec.UNSET and times:
                    raise InvalidInput("give either a delay or new times, not both")
                if body.delay is msgspec.UNSET and not times:
                    raise InvalidInput("give starts_at, ends_at or a delay")
        except (ApiError, InvalidInput):
            metrics.commands.labels(kind.value, "invalid").inc()
            raise
        return body

    def run(
        name: str, action: Callable[[], CommandResult], status: int = 200, *, rules: bool = False
    ) -> Response:
        """Run a command, count its outcome, answer the event; IllegalTransition → 409. With
        ``rules`` (the body fits its declared schema), an InvalidInput is a schedule rule the
        body broke (a start already past, an end before the start): 422 ``invalid_schedule``."""
        try:
            result = action()
        except IllegalTransition as exc:
            metrics.commands.labels(name, "illegal").inc()
            raise ApiError(
                409,
                "illegal_transition",
                str(exc),
                event=exc.event_id,
                state=exc.state,
                command=exc.kind,
            ) from None
        except NotFound:
            metrics.commands.labels(name, "not_found").inc()
            raise
        except InvalidInput as exc:  # after IllegalTransition, one of its subclasses
            metrics.commands.labels(name, "invalid").inc()
            if rules:
                raise ApiError(422, "invalid_schedule", str(exc)) from None
            raise
        except Exception:
            metrics.commands.labels(name, "error").inc()
            raise
        outcome = "applied" if result.changed else "unchanged"
        metrics.commands.labels(name, outcome).inc()
        return JSON(result_doc(result), status_code=status)

    def answer(route: str, response: PrefetchResponse, missing: str) -> Response:
        metrics.prefetch.labels(route, str(response.status)).inc()
        if response.status == 404:
            refused = error(404, "not_found", missing)
            refused.headers.update(response.headers)
            return refused
        return Response(response.body or b"", response.status, response.headers)

    # -- schedule ----------------------------------------------------------------------------------

    @router.post(
        "/events",
        dependencies=[policy(Role.OPERATOR, limit="operator")],
        summary="Schedule a live event",
        description="Creates the event in `scheduled`; its prefetch window opens `prefetch_lead` "
        "before `starts_at` (default 30m, at most a day), so an event created less than that "
        "ahead starts in `prefetch` (its window opens at once). Times are µs since the epoch, "
        "ISO-8601 (UTC without a zone) or a duration from now such as `10m`. A start at now goes "
        "live at once; one already past is a 422 `invalid_schedule` (create it, then start it).",
        status_code=201,
        responses=_responses(EVENT_EXAMPLE, 400, 409, 422, ok=201),
        openapi_extra=openapi.body(
            CreateEventRequest,
            examples={
                "later": {
                    "summary": "Starts in two hours, ends two hours later",
                    "value": {
                        "id": "cup-final",
                        "title": "The Cup Final",
                        "starts_at": "2h",
                        "ends_at": "4h",
                        "prefetch_lead": "30m",
                    },
                },
                "at": {
                    "summary": "At a time (ISO-8601, UTC), no end",
                    "value": {
                        "id": "derby",
                        "title": "The Derby",
                        "starts_at": "2099-05-01T19:45Z",
                    },
                },
            },
        ),
    )
    async def create_event(request: Request) -> Response:
        body = parse(InputKind.CREATE, await request.body(), CreateEventRequest)
        now = service.clock()

        def create() -> CommandResult:
            starts_at = parse_instant(body.starts_at, now)
            ends_at = None if body.ends_at is None else parse_instant(body.ends_at, now)
            lead = parse_lead(body.prefetch_lead)
            return service.command(Create(body.id, body.title, starts_at, ends_at, lead), now)

        return run(InputKind.CREATE.value, create, status=201, rules=True)

    @router.get(
        "/events",
        dependencies=[policy(Role.READER, device=True)],
        summary="Every live event",
        description="All stored events, by id, in their JSON form.",
        responses=_responses({"events": [event_doc_example()]}),
    )
    async def list_events() -> Response:
        return JSON({"events": [event_doc(e) for e in service.events()]})

    @router.get(
        "/events/{event_id}",
        dependencies=[policy(Role.READER, device=True)],
        summary="One live event",
        description="State, version, times, `delay_us`, the commands accepted now, the pending "
        "timer and the history of transitions.",
        responses=_responses(event_doc_example(), 404),
    )
    async def get_event(event_id: EventId) -> Response:
        return JSON(event_doc(service.get(event_id)))

    @router.post(
        "/events/{event_id}/reschedule",
        dependencies=[policy(Role.OPERATOR, limit="operator")],
        summary="Reschedule or delay",
        description="New `starts_at` and/or `ends_at` (`null` removes the end), or a `delay` "
        "(`5m`; `-5m` brings the event forward) that shifts the start and the end — only the "
        "end once the event is live. The prefetch window moves with the start until it opens.",
        responses=_responses(EVENT_EXAMPLE, 400, 404, 409, 422),
        openapi_extra=openapi.body(
            schema=_reschedule_schema(),
            name="RescheduleRequest",
            examples={
                "delay": {"summary": "Five minutes later", "value": {"delay": "5m"}},
                "times": {
                    "summary": "New times",
                    "value": {"starts_at": "3h", "ends_at": "5h"},
                },
            },
        ),
    )
    async def reschedule(event_id: EventId, request: Request) -> Response:
        body = parse(InputKind.RESCHEDULE, await request.body(), RescheduleRequest)
        now = service.clock()

        def move() -> CommandResult:
            starts: Any = KEEP
            ends: Any = KEEP
            if not isinstance(body.starts_at, msgspec.UnsetType):
                starts = parse_instant(body.starts_at, now)
            if not isinstance(body.ends_at, msgspec.UnsetType):
                ends = None if body.ends_at is None else parse_instant(body.ends_at, now)
            delay = None
            if not isinstance(body.delay, msgspec.UnsetType):
                delay = parse_delay(body.delay)
            return service.reschedule(event_id, now, starts_at=starts, ends_at=ends, delay_us=delay)

        return run(InputKind.RESCHEDULE.value, move, rules=True)

    def simple(path: str, kind: InputKind, make: Callable[[str], Any], summary: str) -> None:
        async def handler(event_id: EventId) -> Response:
            now = service.clock()
            return run(kind.value, lambda: service.command(make(event_id), now))

        router.add_api_route(
            f"/events/{{event_id}}/{path}",
            handler,
            methods=["POST"],
            dependencies=[policy(Role.OPERATOR, limit="operator")],
            summary=summary,
            description=f"{summary}. 409 when the event's state does not accept `{kind.value}`.",
            responses=_responses(EVENT_EXAMPLE, 404, 409),
            name=f"live_{path}",
        )

    simple("start", InputKind.START_NOW, StartNow, "Start now (go live before the start time)")
    simple("end", InputKind.END_NOW, EndNow, "End now (an early end)")
    simple("cancel", InputKind.CANCEL, Cancel, "Cancel the event")
    simple("interrupt", InputKind.INTERRUPT, Interrupt, "Interrupt a live event")
    simple("resume", InputKind.RESUME, Resume, "Resume an interrupted event")

    # -- payloads ----------------------------------------------------------------------------------

    @router.post(
        "/events/{event_id}/materialise",
        dependencies=[policy(Role.OPERATOR, limit="operator")],
        summary="Publish fixture payloads (a job)",
        description="Starts a job that puts and publishes the demo payloads of every stage for "
        "the given segments (default: the demo segmenter's; at most "
        f"{MAX_MATERIALISE_SEGMENTS}) through the real payload store, until recommendation rows "
        "come from the graph; answers 202 with the job (poll its `url`: progress in writes). "
        "With `wait`, answers the result (200: the entries written and the resulting "
        "cardinality) if the job finishes within that many seconds. 409 while the event has a "
        "job running; 429 `jobs_busy` when too much work is queued.",
        status_code=202,
        responses=_responses(MATERIALISED_EXAMPLE, 400, 404, 422)
        | jobs.responses(MATERIALISED_EXAMPLE),
        openapi_extra=openapi.body(MaterialiseRequest, required=False),
    )
    async def materialise(
        event_id: EventId, request: Request, wait: jobs.WaitParam = 0
    ) -> Response:
        raw = await request.body()
        body = (
            decode(raw, MaterialiseRequest, "invalid_input")
            if raw.strip()
            else MaterialiseRequest()
        )
        service.get(event_id)  # 404 before anything is queued
        segments = body.segments
        count = len(demo_segmenter().segments()) if segments is None else len(set(segments))
        now = service.clock()

        def work(progress: Callable[[int, int], None]) -> dict[str, Any]:
            return service.materialise(event_id, now, segments, progress)

        registry = jobs.jobs_of(request.app)
        job = registry.submit("materialise", event_id, fixture_entries(count), work)
        return await jobs.answer(registry, job, wait)

    @router.get(
        "/events/{event_id}/cardinality",
        dependencies=[policy(Role.READER)],
        summary="Cardinality",
        description="Distinct payloads the origin serves for the event, against the `(stage, "
        "segment)` entries that point at them, overall and per stage.",
        responses=_responses(
            {
                "event": "final",
                "cardinality": 42,
                "entries": 885,
                "stages": {"live": {"segments": 177, "payloads": 14}},
            },
            400,
        ),
    )
    async def cardinality(event_id: EventId) -> Response:
        return JSON(service.cardinality(event_id, service.clock()))

    @router.get(
        "/events/{event_id}/manifest",
        dependencies=[policy(Role.READER, device=True)],
        summary="Prefetch manifest",
        description="Everything a device of `segment` prefetches for the event in one request: "
        "stage → payload id, the payload bodies inline, and the prefetch window (`opens_at`, "
        "`closes_at`) to place the fetch in. ETag = hash of the body; `If-None-Match` → 304; "
        "`Cache-Control: public, max-age` jittered ±20% around 5 minutes.",
        responses=_prefetch_responses("The manifest."),
        response_class=Response,
    )
    async def manifest(
        event_id: EventId,
        segment: SegmentParam = DEFAULT_SEGMENT,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        response = service.manifest(event_id, segment, if_none_match, service.clock())
        return answer("manifest", response, f"nothing published for {event_id!r} / {segment!r}")

    @router.get(
        "/events/{event_id}/payload",
        dependencies=[policy(Role.READER, device=True)],
        summary="One stage's payload",
        description="The payload of `stage` (default: the event's current stage) for `segment`, "
        "through the segment fallbacks: a device's fallback fetch when a trigger names a stage "
        "it has not cached. ETag = payload id; jittered `Cache-Control` (the mapping can change).",
        responses=_prefetch_responses("The payload."),
        response_class=Response,
    )
    async def stage_payload(
        event_id: EventId,
        stage: Annotated[
            str | None,
            Query(
                description="Stage name (`prefetch`, `live`, `ended`, …); absent or empty: the "
                "event's current stage.",
                pattern=bounds.OPTIONAL_NAME,
            ),
        ] = None,
        segment: SegmentParam = DEFAULT_SEGMENT,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        response = service.stage_payload(
            event_id, stage or None, segment, if_none_match, service.clock()
        )
        what = f"no payload for {event_id!r} stage {stage!r} / {segment!r}"
        return answer("stage_payload", response, what)

    @router.get(
        "/payloads/{payload_id}",
        dependencies=[public(_PAYLOADS_PUBLIC)],
        summary="A payload by id",
        description="Content-addressed and immutable: `Cache-Control: public, max-age=<a year>, "
        f"immutable`, ETag = the id; at most {MAX_PAYLOAD_BYTES} bytes.",
        responses=_prefetch_responses("The payload's canonical JSON."),
        response_class=Response,
    )
    async def payload(
        payload_id: Annotated[
            str,
            Path(description="32 lowercase hex digits (BLAKE2b-128).", pattern=bounds.PAYLOAD_ID),
        ],
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        response = service.payload(payload_id, if_none_match, service.clock())
        return answer("payload", response, f"no payload {payload_id!r}")

    if binding is not None and binding.dev_tokens:
        secret = binding.secret

        @router.post(
            "/tokens",
            dependencies=[public(_DEV_TOKENS_PUBLIC)],
            summary="A device token (development only)",
            description="Issues a signed device token for `device` and `channels` to anyone who "
            "asks, with its id (`token_id`, for revocation) and the gateway's WebSocket URL. "
            "Enabled only in development and the demo; "
            "in production a login service issues tokens with the same secret.",
        )
        async def dev_token(request: Request) -> Response:
            body = decode(await request.body(), TokenRequest)
            now = service.clock()
            try:
                ttl = parse_duration(body.ttl)
            except ValueError as exc:
                raise InvalidInput(f"ttl: {exc}") from None
            if not 0 < ttl <= MAX_DEV_TOKEN_TTL_US:
                raise InvalidInput(f"ttl must be positive and at most {MAX_DEV_TOKEN_TTL_US} µs")
            token_id = new_token_id()  # answered, so the token can be revoked by id
            token = issue_token(
                secret, body.device, tuple(body.channels), now, ttl, token_id=token_id
            )
            url = getattr(request.app.state, "gateway_url", None)
            return JSON({"token": token, "token_id": token_id, "expires_at": now + ttl, "url": url})

    if binding is not None and binding.revocations is not None:
        source, gateway = binding.revocations, binding.gateway

        # Revoking devices is an incident action on the whole fleet: admin keys only.
        @router.post(
            "/tokens/revoke",
            dependencies=[policy(Role.ADMIN, limit="operator")],
            summary="Revoke device tokens",
            description="Adds a revocation by `token_id` (a token's `jti` claim) or `subject` "
            "(every token of that device issued until now) to the list every gateway polls, "
            "kept for `keep` (default 7d). Connections of this process using a revoked token "
            "get `bye revoked` at once; other gateway processes within a second. Answers the "
            "entry, how many entries the list holds and how many connections this process "
            "closed.",
        )
        async def revoke_tokens(request: Request) -> Response:
            body = decode(await request.body(), RevokeRequest)
            if (body.token_id is None) == (body.subject is None):
                raise InvalidInput("name exactly one of token_id and subject")
            try:
                keep = parse_duration(body.keep)
            except ValueError as exc:
                raise InvalidInput(f"keep: {exc}") from None
            now = service.clock()
            kind, value = (
                ("token_id", body.token_id)
                if body.token_id is not None
                else ("subject", body.subject)
            )
            assert value is not None
            entry = revocation(kind, value, now, retention_us=keep, note=body.note)
            try:
                revoked = await source.add(entry, now)
            except InvalidInput:
                raise  # the list is full: the caller's to resolve (400)
            except HopcastError as exc:
                # The list cannot be read or written (a corrupt file, a full disk, Redis down):
                # nothing was revoked, and the operator must hear why, not a bare 500.
                raise ApiError(503, "revocation_list_unavailable", str(exc)) from None
            closed = gateway.apply_revocations(revoked)
            return JSON(
                {
                    "kind": kind,
                    "value": value,
                    "revoked_at": entry.revoked_at,
                    "until": entry.until,
                    "entries": len(revoked),
                    "closed": closed,
                }
            )

    return router


def event_doc_example() -> dict[str, Any]:
    """:data:`EVENT_EXAMPLE` without the ``triggers`` a command adds."""
    return {k: v for k, v in EVENT_EXAMPLE.items() if k != "triggers"}

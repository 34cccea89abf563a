"""The JSON schemas of the API's responses, and which route answers which.

Handlers return pre-encoded JSON (:class:`~hopcast.api.responses.JSON`), so FastAPI cannot infer
what a route answers and would document every success as ``"string"``. :data:`COMPONENTS` states
each shape once, :data:`SUCCESS` names the component of every JSON success response by route, and
:func:`hopcast.api.openapi.install` puts both into the document; a JSON route missing from
:data:`SUCCESS` makes the document fail to build, so none can go undocumented. The schema
contract test (``tests/api/test_contract.py``) checks real answers against these.

Schemas list the fields a client may rely on (``required``) and allow more, so that a field
added later is not a breaking change.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Schema], *optional: str, title: str | None = None) -> Schema:
    out: Schema = {
        "type": "object",
        "required": [k for k in props if k not in optional],
        "properties": props,
    }
    if title:
        out["title"] = title
    return out


_INT: Schema = {"type": "integer"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
_TS: Schema = {"type": "integer", "minimum": 0, "description": "µs since the Unix epoch"}
_STR: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}
_NUM: Schema = {"type": "number"}
_PROPS: Schema = {"type": "object", "description": "Properties (any JSON values)."}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _list(schema: Schema) -> Schema:
    return {"type": "array", "items": schema}


def _map(schema: Schema) -> Schema:
    return {"type": "object", "additionalProperties": schema}


_EDGE = _obj({"src": _STR, "type": _STR, "dst": _STR, "ts": _TS, "props": _PROPS}, title="Edge")
_NODE = _obj({"id": _STR, "ts": _TS, "props": _PROPS}, title="Node")
_EVENT = _obj(
    {
        "id": _STR,
        "title": _STR,
        "state": {"enum": ["scheduled", "prefetch", "live", "interrupted", "ended", "cancelled"]},
        "version": _COUNT,
        "starts_at": _TS,
        "ends_at": _nullable(_TS),
        "delay_us": _INT,
        "prefetch_lead_us": _COUNT,
        "prefetch_opens_at": _TS,
        "created_at": _TS,
        "updated_at": _TS,
        "terminal": _BOOL,
        "accepts": _list(_STR),
        "history": _list(_PROPS),
    },
    title="LiveEvent",
)

COMPONENTS: dict[str, Schema] = {
    "Edge": _EDGE,
    "Node": _NODE,
    "Nodes": _obj({"nodes": _list(_nullable(_ref("Node")))}),
    "Neighbours": _obj(
        {"node": _STR, "edges": _list({"allOf": [_ref("Edge")], **_obj({"neighbour": _STR})})}
    ),
    "Traversal": _obj(
        {
            "nodes": _list(_obj({"node": _STR, "depth": _COUNT, "via": _nullable(_ref("Edge"))})),
            "work": _COUNT,
            "truncated": _BOOL,
            "reason": _nullable(_STR),
        }
    ),
    "Journey": _obj(
        {
            "node": _STR,
            "members": _list(_STR),
            "entries": _list(_ref("Edge")),
            "cursor": _nullable(_STR),
        }
    ),
    "Count": _obj({"node": _STR, "count": _COUNT, "by_type": _map(_COUNT)}),
    "Exists": _obj({"exists": _BOOL, "edge": _nullable(_ref("Edge"))}),
    "Path": _obj(
        {
            "found": _BOOL,
            "hops": _nullable(_COUNT),
            "nodes": _list(_STR),
            "edges": _list(_ref("Edge")),
            "work": _COUNT,
            "truncated": _BOOL,
        }
    ),
    "MutationsApplied": _obj(
        {
            "applied": _COUNT,
            "skipped": _COUNT,
            "skipped_by_reason": _obj({"lost_to_newer": _COUNT, "expired": _COUNT}),
            "expired": _list(_obj({"index": _COUNT, "id": _STR, "message": _STR})),
        }
    ),
    "GraphSchema": _obj(
        {"nodes": _map(_PROPS), "edges": _map(_PROPS), "journey": _nullable(_PROPS)}
    ),
    "Health": _obj({"status": {"const": "ok"}, "backend": _STR}),
    "LiveEvent": _EVENT,
    "LiveEvents": _obj({"events": _list(_ref("LiveEvent"))}),
    "LiveCommand": {
        "allOf": [_ref("LiveEvent")],
        **_obj({"triggers": _list(_obj({"event": _STR, "stage": _STR, "version": _COUNT}))}),
    },
    "Materialised": _obj(
        {
            "event": _STR,
            "version": _INT,
            "stages": _list(_STR),
            "segments": _COUNT,
            "entries": _COUNT,
            "cardinality": _COUNT,
        }
    ),
    "Cardinality": _obj(
        {
            "event": _STR,
            "cardinality": _COUNT,
            "entries": _COUNT,
            "stages": _map(_obj({"segments": _COUNT, "payloads": _COUNT})),
        }
    ),
    "Prefetched": {"type": "object", "description": "The payload's or manifest's JSON."},
    "DevToken": _obj({"token": _STR, "expires_at": _TS, "url": _nullable(_STR)}),
    "ReportsAccepted": _obj({"accepted": _COUNT}),
    "Dashboard": _obj(
        {
            "now": _TS,
            "event": _nullable(_PROPS),
            "devices": _obj({"gateway": _BOOL, "connected": _COUNT}),
            "prefetch": _nullable(_PROPS),
            "time_to_update": _nullable(_PROPS),
            "origin": _obj(
                {"window_s": _COUNT, "requests": _COUNT, "rps": _NUM, "series": _list(_PROPS)}
            ),
        }
    ),
    "GraphMaterialised": _obj(
        {"event": _STR, "node": _STR, "segments": _list(_PROPS), "cardinality": _COUNT}
    ),
    "Segments": _obj(
        {"event": _STR, "node": _STR, "segments": _list(_PROPS), "member": _nullable(_PROPS)}
    ),
    "NodeSearch": _obj(
        {
            "nodes": _list(_obj({"id": _STR, "type": _STR, "ts": _TS, "props": _PROPS})),
            "truncated": _BOOL,
        }
    ),
    "Neighbourhood": _obj(
        {
            "center": _STR,
            "nodes": _list(
                _obj(
                    {
                        "id": _STR,
                        "type": _STR,
                        "depth": _COUNT,
                        "ts": _nullable(_TS),
                        "props": _PROPS,
                    }
                )
            ),
            "edges": _list(_ref("Edge")),
            "truncated": _BOOL,
        }
    ),
    "Timeline": _obj(
        {
            "account": _STR,
            "members": _list(_STR),
            "devices": _list(_STR),
            "verticals": _list(_STR),
            "entries": _list(_PROPS),
            "cursor": _nullable(_STR),
        }
    ),
    "IngestStatus": _obj(
        {
            "engine": _BOOL,
            "events": _COUNT,
            "mutations": _COUNT,
            "events_per_s": _NUM,
            "mutations_per_s": _NUM,
            "lag_bytes": _map(_COUNT),
            "lag_total_bytes": _COUNT,
            "freshness_ms": _nullable(_obj({"p50": _NUM, "p99": _NUM})),
            "dead_letters": _COUNT,
            "dead_by_reason": _map(_COUNT),
        }
    ),
    "Ingested": _obj(
        {
            "accepted": _COUNT,
            "position": _obj({"partition": _STR, "offset": _COUNT}),
            "replayed": _BOOL,
        }
    ),
    "Job": _obj(
        {
            "id": _STR,
            "kind": _STR,
            "event": _STR,
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
            "progress": _obj({"done": _COUNT, "total": _COUNT}),
            "age_s": _NUM,
            "running_s": _nullable(_NUM),
            "result": _nullable(_PROPS),
            "error": _nullable(_obj({"status": _INT, "error": _STR, "message": _STR})),
            "url": _STR,
        }
    ),
}

#: The component of each route's JSON success response: ``(method, path) -> name``.
SUCCESS: dict[tuple[str, str], str] = {
    ("get", "/v1/nodes/{node_id}"): "Node",
    ("get", "/v1/nodes"): "Nodes",
    ("get", "/v1/nodes/{node_id}/neighbours"): "Neighbours",
    ("post", "/v1/query/traverse"): "Traversal",
    ("get", "/v1/nodes/{node_id}/journey"): "Journey",
    ("get", "/v1/nodes/{node_id}/count"): "Count",
    ("get", "/v1/edges/exists"): "Exists",
    ("get", "/v1/path"): "Path",
    ("post", "/v1/mutations"): "MutationsApplied",
    ("get", "/v1/schema"): "GraphSchema",
    ("get", "/healthz"): "Health",
    ("get", "/v1/live/events"): "LiveEvents",
    ("post", "/v1/live/events"): "LiveCommand",
    ("get", "/v1/live/events/{event_id}"): "LiveEvent",
    ("post", "/v1/live/events/{event_id}/reschedule"): "LiveCommand",
    ("post", "/v1/live/events/{event_id}/start"): "LiveCommand",
    ("post", "/v1/live/events/{event_id}/end"): "LiveCommand",
    ("post", "/v1/live/events/{event_id}/cancel"): "LiveCommand",
    ("post", "/v1/live/events/{event_id}/interrupt"): "LiveCommand",
    ("post", "/v1/live/events/{event_id}/resume"): "LiveCommand",
    ("post", "/v1/live/events/{event_id}/materialise"): "Materialised",
    ("get", "/v1/live/events/{event_id}/cardinality"): "Cardinality",
    ("get", "/v1/live/events/{event_id}/manifest"): "Prefetched",
    ("get", "/v1/live/events/{event_id}/payload"): "Prefetched",
    ("get", "/v1/live/payloads/{payload_id}"): "Prefetched",
    ("post", "/v1/live/tokens"): "DevToken",
    ("post", "/v1/console/reports"): "ReportsAccepted",
    ("get", "/v1/console/dashboard"): "Dashboard",
    ("post", "/v1/console/events/{event_id}/materialise"): "GraphMaterialised",
    ("get", "/v1/console/events/{event_id}/segments"): "Segments",
    ("get", "/v1/console/graph/search"): "NodeSearch",
    ("get", "/v1/console/graph/neighbourhood/{node_id}"): "Neighbourhood",
    ("get", "/v1/console/graph/journey/{node_id}"): "Timeline",
    ("get", "/v1/console/ingest"): "IngestStatus",
    ("post", "/v1/ingest/{source}"): "Ingested",
    ("get", "/v1/live/jobs/{job_id}"): "Job",
}

#: Where one status of a route answers another shape than :data:`SUCCESS` says:
#: ``(method, path, status) -> name`` (a route that starts a job answers 202 with the job).
SUCCESS_BY_STATUS: dict[tuple[str, str, str], str] = {
    ("post", "/v1/live/events/{event_id}/materialise", "202"): "Job",
    ("post", "/v1/console/events/{event_id}/materialise", "202"): "Job",
}


def document(doc: dict[str, Any]) -> None:
    """Put the response schemas into an OpenAPI document, in place.

    Raises:
        RuntimeError: for a route whose JSON success response has no entry in :data:`SUCCESS`.
    """
    doc.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if not str(status).startswith("2"):
                    continue
                content = response.get("content", {}).get("application/json")
                if content is None:
                    continue
                name = SUCCESS_BY_STATUS.get((method, path, str(status))) or SUCCESS.get(
                    (method, path)
                )
                if name is None:
                    raise RuntimeError(f"{method.upper()} {path}: no response schema declared")
                content["schema"] = _ref(name)

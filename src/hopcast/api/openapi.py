"""The OpenAPI document's extras: examples, the error schema, the request-body schemas.

FastAPI builds the document from the routes; this module adds what it cannot infer because the
handlers return pre-encoded responses and read their bodies themselves: an example response per
route, the shared ``Error`` schema with an example per status, and the request-body schemas
generated from the msgspec structs in :mod:`hopcast.api.bodies`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import FastAPI

from hopcast.api import bounds, schemas
from hopcast.api.bodies import MutationsRequest, TraverseRequest
from hopcast.graph.keys import MAX_TS
from hopcast.graph.limits import (
    MAX_INT,
    MAX_MUTATION_ID_BYTES,
    MAX_PROP_NAME_BYTES,
    MAX_SEQ,
    MIN_INT,
)
from hopcast.graph.schema import Schema
from hopcast.query import spec as q

DESCRIPTION = """\
Query and write the member graph.

* Node ids are `type:key` (`account:1`, `profile:1`, `title:10`).
* Times are integers in **microseconds since the Unix epoch**; in query strings a duration such
  as `7d` means "7 days before now".
* Every error is `{"error": "<kind>", "message": "..."}`: **400** a value outside its declared
  bound (bad id, unknown edge type, bad direction or time, limit out of range) or unparsable
  JSON, **422** input of the wrong type or that fits the declared shapes but not their meaning
  (the graph schema; a rule no schema can state, listed per operation in `x-hopcast-rules` on
  the response that refuses it: a cursor this server did not issue, a time already past),
  **409** a live event's state refuses the command, **404** absent, **405** method not allowed
  (`Allow` lists the path's methods), **413** request too large, **503** store unavailable.
* An integer may be written as a whole float (`5.0`), as JSON Schema counts it.
"""

TAGS = [
    {"name": "nodes", "description": "Nodes by id."},
    {"name": "queries", "description": "Relationship queries, newest first."},
    {"name": "writes", "description": "Mutations: upserts and deletes of nodes and edges."},
    {"name": "schema", "description": "The typed graph schema."},
    {"name": "operations", "description": "Health and metrics."},
]

# -- example responses (the demo schema; ts in µs) ---------------------------------------------

_T = 1_700_000_000_000_000
_DAY = 86_400_000_000

NODE: dict[str, Any] = {
    "id": "profile:1",
    "ts": _T - 30 * _DAY,
    "props": {"name": "Ann", "kids": False},
}
NODES: dict[str, Any] = {"nodes": [{"id": "account:1", "ts": _T - 30 * _DAY, "props": {}}, None]}
_WATCHED = {
    "src": "profile:1",
    "type": "started_watching",
    "dst": "title:11",
    "ts": _T - _DAY,
    "props": {"position_s": 120, "device": "device:tv1"},
}
NEIGHBOURS: dict[str, Any] = {"node": "profile:1", "edges": [_WATCHED | {"neighbour": "title:11"}]}
TRAVERSE: dict[str, Any] = {
    "nodes": [
        {
            "node": "profile:1",
            "depth": 1,
            "via": {
                "src": "account:1",
                "type": "has_profile",
                "dst": "profile:1",
                "ts": _T - 30 * _DAY,
                "props": {},
            },
        },
        {"node": "title:11", "depth": 2, "via": _WATCHED},
    ],
    "work": 3,
    "truncated": False,
    "reason": None,
}
JOURNEY: dict[str, Any] = {
    "node": "account:1",
    "members": ["account:1", "profile:1", "device:tv1"],
    "entries": [_WATCHED],
    "cursor": "lM8ABgoP-kbgAKlwcm9maWxlOjGwc3RhcnRlZF93YXRjaGluZ6h0aXRsZToxMQ",
}
COUNT: dict[str, Any] = {"node": "profile:1", "count": 2, "by_type": {"started_watching": 2}}
EXISTS: dict[str, Any] = {
    "exists": True,
    "edge": {
        "src": "account:1",
        "type": "has_profile",
        "dst": "profile:1",
        "ts": _T - 30 * _DAY,
        "props": {},
    },
}
PATH: dict[str, Any] = {
    "found": True,
    "hops": 2,
    "nodes": ["profile:1", "account:1", "profile:2"],
    "edges": [
        {
            "src": "account:1",
            "type": "has_profile",
            "dst": "profile:1",
            "ts": _T - 30 * _DAY,
            "props": {},
        },
        {
            "src": "account:1",
            "type": "has_profile",
            "dst": "profile:2",
            "ts": _T - 29 * _DAY,
            "props": {},
        },
    ],
    "work": 3,
    "truncated": False,
}
MUTATIONS: dict[str, Any] = {"applied": 2, "skipped": 0}
SCHEMA: dict[str, Any] = {
    "nodes": {"account": {"retention_us": None, "props": {"country": {"type": "str"}}}},
    "edges": {
        "has_profile": {
            "retention_us": None,
            "props": {},
            "mappings": [{"from": "account", "to": "profile", "two_way": False}],
        }
    },
    "journey": {"root": "account", "members": ["has_profile"], "interactions": ["browsed"]},
}

# -- example requests --------------------------------------------------------------------------

TRAVERSE_REQUESTS: dict[str, dict[str, Any]] = {
    "short": {
        "summary": "Titles the account's profiles started watching",
        "value": {"start": "account:1", "hops": ["has_profile", "started_watching"]},
    },
    "full": {
        "summary": "Per-hop direction and filter, time window, layered limits",
        "value": {
            "start": ["account:1"],
            "hops": [
                {"edge": ["has_profile"], "direction": "out"},
                {"edge": "started_watching", "where": {"position_s": {"gte": 60}}},
            ],
            "since": "30d",
            "limits": {
                "edges_per_hop": 100,
                "per_depth": {"2": 50},
                "per_edge_type": {"started_watching": 20},
                "max_work": 10_000,
                "max_frontier": 1_000,
                "lookback": "100d",
            },
        },
    },
}
MUTATIONS_REQUESTS: dict[str, dict[str, Any]] = {
    "upserts": {
        "summary": "A profile and what it started watching",
        "value": {
            "mutations": [
                {
                    "kind": "node_upsert",
                    "node": "profile:1",
                    "ts": _T,
                    "id": "evt-1",
                    "props": {"name": "Ann"},
                },
                {
                    "kind": "edge_upsert",
                    "src": "profile:1",
                    "type": "started_watching",
                    "dst": "title:11",
                    "ts": _T,
                    "id": "evt-2",
                    "props": {"position_s": 0, "device": "device:tv1"},
                },
            ]
        },
    },
    "deletes": {
        "summary": "Delete an edge and a node",
        "value": {
            "mutations": [
                {
                    "kind": "edge_delete",
                    "src": "profile:1",
                    "type": "started_watching",
                    "dst": "title:11",
                    "ts": _T,
                    "id": "evt-3",
                },
                {"kind": "node_delete", "node": "device:tv1", "ts": _T, "id": "evt-4"},
            ]
        },
    },
}

# -- errors ------------------------------------------------------------------------------------

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "The kind of error (see the API description)."},
        "message": {"type": "string", "description": "What is wrong, precisely."},
        "index": {"type": "integer", "description": "Position of the rejected mutation."},
        "reason": {"type": "string", "description": "Why that mutation was rejected."},
        "details": {
            "type": "array",
            "description": "Each request validation problem: where and what.",
            "items": {
                "type": "object",
                "properties": {"loc": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "Malformed query",
        {
            "error": "invalid_query",
            "message": "unknown edge type 'watched' (known: browsed, features, has_profile, ...)",
        },
    ),
    404: (
        "Absent",
        {"error": "not_found", "message": "node 'profile:9' does not exist (...)"},
    ),
    413: (
        "Request too large",
        {"error": "body_too_large", "message": "the request body exceeds 1048576 bytes"},
    ),
    422: (
        "Input that does not fit the schema or a parameter's type",
        {
            "error": "schema_violation",
            "message": "mutation #0: edge 'has_profile' does not connect profile -> account "
            "(allowed: account->profile)",
            "index": 0,
            "reason": "edge 'has_profile' does not connect profile -> account "
            "(allowed: account->profile)",
        },
    ),
    503: (
        "The graph store is unavailable",
        {
            "error": "storage_unavailable",
            "message": "the graph store failed; the server log has the details",
        },
    ),
}


def responses(example: Any, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: a 200 example and the listed error statuses."""
    out: dict[int | str, dict[str, Any]] = {
        200: {"description": "OK", "content": {"application/json": {"example": example}}}
    }
    for status in statuses:
        description, body = _ERRORS[status]
        out[status] = {
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"},
                    "example": body,
                }
            },
        }
    return out


#: Request-body schemas routers registered (:func:`body`), added to the document's components.
BODIES: dict[str, dict[str, Any]] = {}


def body(
    struct: type[msgspec.Struct] | None = None,
    *,
    schema: dict[str, Any] | None = None,
    name: str | None = None,
    required: bool = True,
    examples: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``openapi_extra=`` of a route whose JSON body is ``struct`` (or ``schema``, named
    ``name``): a reference to a component that :func:`install` adds to the document, and the
    named ``examples`` (``{name: {"summary", "value"}}``).

    The schema goes into the components after FastAPI builds the document, not through
    ``openapi_extra``, because FastAPI turns the numbers of an ``openapi_extra`` into floats:
    ``2**62 - 1`` would become ``4.611686018427388e18``, another bound.
    """
    if struct is not None:
        _, components = msgspec.json.schema_components(
            [struct], ref_template="#/components/schemas/{name}"
        )
        for key, value in components.items():
            BODIES.setdefault(key, value)
        name = struct.__name__
    else:
        assert schema is not None and name is not None
        BODIES.setdefault(name, schema)
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{name}"}}
    if examples:
        media["examples"] = examples
    return {"requestBody": {"required": required, "content": {"application/json": media}}}


def request_body(name: str, examples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``openapi_extra=`` of a POST route whose body is the struct ``name``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{name}"},
                    "examples": examples,
                }
            },
        }
    }


def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [TraverseRequest, MutationsRequest], ref_template="#/components/schemas/{name}"
    )
    components["HopRequest"]["properties"]["where"] = {
        "anyOf": [{"$ref": "#/components/schemas/Where"}, {"type": "null"}]
    }
    return {**BODIES, **components, "Error": ERROR_SCHEMA, "Where": WHERE}


# -- property filters -----------------------------------------------------------------------------

#: A property filter, exactly what :func:`hopcast.query.spec.parse_where` accepts: an object of
#: property -> value (equals) or property -> ``{op: value}`` (``in`` takes a list).
WHERE: dict[str, Any] = {
    "title": "Where",
    "type": "object",
    "description": 'Property filter: `{"prop": value}` (equals) or `{"prop": {"op": value}}` '
    f"with op one of {', '.join(q.OPS)} (`in` takes a list); every condition must hold. At most "
    f"{bounds.MAX_JSON_DEPTH} levels of nesting.",
    "additionalProperties": {
        "anyOf": [
            {"type": ["string", "number", "boolean", "null", "array"]},
            {
                "type": "object",
                "properties": {op: {"type": "array"} if op == "in" else {} for op in q.OPS},
                "additionalProperties": False,
            },
        ]
    },
}


def json_parameters(doc: dict[str, Any]) -> None:
    """Declare the ``where`` query parameters (marked ``x-hopcast: where``) as JSON content with
    the :data:`WHERE` schema, in place: a query string carries the filter as JSON text."""
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if schema.get(bounds.MARK) == "where":
                    del parameter["schema"]
                    parameter["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Where"}}
                    }


# -- rules the schemas cannot state ---------------------------------------------------------------

#: Rules a request can break while fitting every declared schema, by operation: the error kind
#: of the answer that names the broken rule, its status and the rule. They depend on the
#: server's clock, on what it issued or stored, or on sizes JSON Schema does not measure (bytes
#: of UTF-8 or of the whole body, nesting).
RULES: dict[tuple[str, str], dict[str, tuple[int, str]]] = {
    ("get", "/v1/nodes/{node_id}/journey"): {
        "invalid_cursor": (422, "the cursor was not issued by this server (cursors are opaque)"),
    },
    ("get", "/v1/console/graph/journey/{node_id}"): {
        "invalid_cursor": (422, "the cursor was not issued by this server (cursors are opaque)"),
    },
    ("post", "/v1/mutations"): {
        "out_of_bounds": (
            422,
            "a bound of the store that JSON Schema does not measure: a node id of more than 250 "
            "bytes of UTF-8, an id of more than 1,024, an integer literal beyond 64 bits inside "
            "a property, properties nested more than 32 deep or larger than 64 KiB encoded, a "
            "property name of more than 256 bytes",
        ),
        "future_time": (
            422,
            "a `ts` more than the allowed skew past the server's clock at arrival (the document "
            "states the bound for the moment it was served)",
        ),
        "body_too_large": (413, "the body is larger than the server's limit (1 MiB by default)"),
        "storage_refused": (
            422,
            "the storage backend refused a key or value the bounds above let through (a safety "
            "net: retrying the same write cannot succeed; nothing of the request was written)",
        ),
    },
    ("post", "/v1/live/events"): {
        "invalid_schedule": (
            422,
            "a start already past, an end not after the start or not in the future, or a "
            "duration from now that ends beyond 2^62 µs",
        ),
    },
    ("post", "/v1/live/events/{event_id}/reschedule"): {
        "invalid_schedule": (
            422,
            "a start already past (before the event went live), a new start for an event "
            "already live, an end not after the start or not in the future, a delay of a live "
            "event without an end, or times beyond 2^62 µs after the delay",
        ),
    },
    ("post", "/v1/console/events/{event_id}/materialise"): {
        "no_graph_node": (
            422,
            "no `node` given and none known for the event (no earlier run, no "
            "`live_event:<id>` node, no `live_event` node named like the event)",
        ),
    },
    ("post", "/v1/ingest/{source}"): {
        "idempotency_key_reused": (
            422,
            "the Idempotency-Key was used before with other records",
        ),
        "body_too_large": (413, "the body is larger than the server's limit (4 MiB by default)"),
    },
}

#: The extension of an error response listing its rules (``{kind: rule}``).
RULES_EXTENSION = "x-hopcast-rules"

_STATUS_TEXT = {
    400: "A value outside its declared bound, or a body that is not JSON",
    413: "Request too large",
    422: "Input of the wrong type or shape",
}


def _error_response(text: str) -> dict[str, Any]:
    return {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document_errors(doc: dict[str, Any]) -> None:
    """Declare the errors every operation can answer, in place: 400 and 422 where it takes
    parameters or a body (a value outside its bound, of the wrong type, missing), 413 where it
    takes a body; and each operation's :data:`RULES` on the response of their status."""
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            statuses = []
            if operation.get("parameters") or operation.get("requestBody"):
                statuses += [400, 422]
            if operation.get("requestBody"):
                statuses.append(413)
            for status in statuses:
                responses.setdefault(str(status), _error_response(_STATUS_TEXT[status]))
            for kind, (status, rule) in RULES.get((method, path), {}).items():
                response = responses.setdefault(str(status), _error_response("A broken rule"))
                response["description"] += f". Rule `{kind}`: {rule}"
                response.setdefault(RULES_EXTENSION, {})[kind] = rule


# -- links between operations ---------------------------------------------------------------------

_EVENT_COMMANDS = ("start", "end", "cancel", "interrupt", "resume")


def _event_links(event: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """Links to what can be done with the event whose id the expression ``event`` gives."""
    at = {"event_id": event}
    out = {
        "GetEvent": ("get", "/v1/live/events/{event_id}", at),
        "Reschedule": ("post", "/v1/live/events/{event_id}/reschedule", at),
        "Materialise": ("post", "/v1/live/events/{event_id}/materialise", at),
        "Cardinality": ("get", "/v1/live/events/{event_id}/cardinality", at),
        "MaterialiseRecommendations": ("post", "/v1/console/events/{event_id}/materialise", at),
        "Segments": ("get", "/v1/console/events/{event_id}/segments", at),
        "Dashboard": ("get", "/v1/console/dashboard", {"event": event}),
    }
    for command in _EVENT_COMMANDS:
        out[command.capitalize()] = ("post", f"/v1/live/events/{{event_id}}/{command}", at)
    return out


def _command_links() -> dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]]:
    links: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
        ("post", "/v1/live/events", "201"): _event_links("$response.body#/id"),
        ("get", "/v1/live/events", "200"): _event_links("$response.body#/events/0/id"),
    }
    for command in (*_EVENT_COMMANDS, "reschedule"):
        links[("post", f"/v1/live/events/{{event_id}}/{command}", "200")] = _event_links(
            "$response.body#/id"
        )
    return links


#: The document's links: ``(method, path, status) -> {name: (method, path, parameters)}``,
#: parameters as OpenAPI runtime expressions. A created event leads to its commands and
#: payloads, a published payload set to the manifests, a write to what it wrote, a journey
#: page to the next one.
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    **_command_links(),
    ("post", "/v1/live/events/{event_id}/materialise", "200"): {
        "Manifest": (
            "get",
            "/v1/live/events/{event_id}/manifest",
            {"event_id": "$response.body#/event"},
        ),
        "Payload": (
            "get",
            "/v1/live/events/{event_id}/payload",
            {"event_id": "$response.body#/event"},
        ),
        "Cardinality": (
            "get",
            "/v1/live/events/{event_id}/cardinality",
            {"event_id": "$response.body#/event"},
        ),
        "GetEvent": ("get", "/v1/live/events/{event_id}", {"event_id": "$response.body#/event"}),
    },
    ("get", "/v1/live/events/{event_id}/manifest", "200"): {
        "LivePayload": (
            "get",
            "/v1/live/payloads/{payload_id}",
            {"payload_id": "$response.body#/stages/live"},
        ),
        "StagePayload": (
            "get",
            "/v1/live/events/{event_id}/payload",
            {"event_id": "$response.body#/event", "segment": "$response.body#/segment"},
        ),
    },
    ("post", "/v1/console/events/{event_id}/materialise", "200"): {
        "Segments": (
            "get",
            "/v1/console/events/{event_id}/segments",
            {"event_id": "$response.body#/event"},
        ),
        "Neighbourhood": (
            "get",
            "/v1/console/graph/neighbourhood/{node_id}",
            {"node_id": "$response.body#/node"},
        ),
    },
    ("post", "/v1/mutations", "200"): {
        "GetNode": ("get", "/v1/nodes/{node_id}", {"node_id": "$request.body#/mutations/0/node"}),
        "Neighbours": (
            "get",
            "/v1/nodes/{node_id}/neighbours",
            {"node_id": "$request.body#/mutations/0/src"},
        ),
        "Count": (
            "get",
            "/v1/nodes/{node_id}/count",
            {"node_id": "$request.body#/mutations/0/src"},
        ),
        "EdgeExists": (
            "get",
            "/v1/edges/exists",
            {
                "src": "$request.body#/mutations/0/src",
                "edge": "$request.body#/mutations/0/type",
                "dst": "$request.body#/mutations/0/dst",
            },
        ),
        "Neighbourhood": (
            "get",
            "/v1/console/graph/neighbourhood/{node_id}",
            {"node_id": "$request.body#/mutations/0/node"},
        ),
    },
    ("get", "/v1/nodes/{node_id}/journey", "200"): {
        "NextPage": (
            "get",
            "/v1/nodes/{node_id}/journey",
            {"node_id": "$request.path.node_id", "cursor": "$response.body#/cursor"},
        ),
    },
    ("get", "/v1/console/graph/journey/{node_id}", "200"): {
        "NextPage": (
            "get",
            "/v1/console/graph/journey/{node_id}",
            {"node_id": "$request.path.node_id", "cursor": "$response.body#/cursor"},
        ),
    },
}


def operation_ref(method: str, path: str) -> str:
    """The JSON pointer of an operation in the document (``operationRef``)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def add_links(doc: dict[str, Any]) -> None:
    """Put :data:`LINKS` into the document's responses, in place; links whose source or target
    operation the app does not serve are left out."""
    paths = doc.get("paths", {})
    for (method, path, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for name, (to_method, to_path, parameters) in links.items():
            if to_method in paths.get(to_path, {}):
                response.setdefault("links", {})[name] = {
                    "operationRef": operation_ref(to_method, to_path),
                    "parameters": dict(parameters),
                }


def install(
    app: FastAPI,
    graph: Schema | None = None,
    *,
    clock: Callable[[], int] | None = None,
    max_future_us: int | None = None,
    max_mutations: int | None = None,
) -> None:
    """Make ``app.openapi()`` complete: the request and response schemas the routes refer to,
    the graph schema's node and edge types in every id and edge pattern, the mutation shapes it
    accepts (with ``ts`` bounded by ``clock() + max_future_us`` each time the document is
    served, at most ``max_mutations`` of them), the rules no schema can state (:data:`RULES`)
    and the links between operations (:data:`LINKS`).

    Raises:
        RuntimeError: (when the document is built) a JSON route without a response schema.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()  # FastAPI caches it in app.openapi_schema; we extend it once
        schemas_ = doc.setdefault("components", {}).setdefault("schemas", {})
        if "Error" not in schemas_:
            schemas_.update(_components())
            schemas.document(doc)
            json_parameters(doc)
            document_errors(doc)
            add_links(doc)
            if graph is not None:
                schemas_["Mutation"] = mutation_schema(graph)
                listed = schemas_["MutationsRequest"]["properties"]["mutations"]
                listed["items"] = {"$ref": "#/components/schemas/Mutation"}
                if max_mutations is not None:
                    listed["maxItems"] = max_mutations
                narrow(doc, graph)
        if graph is not None and clock is not None:
            refresh_clock_bounds(doc, clock(), max_future_us)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


# -- the graph's schema in the document -----------------------------------------------------------

_INT64 = {"type": "integer", "minimum": MIN_INT, "maximum": MAX_INT}
_PROP_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": _INT64,
    "float": {"anyOf": [_INT64, {"type": "number"}]},
    "bool": {"type": "boolean"},
    "list": {"type": "array"},
    "map": {"type": "object"},
    "any": {},
}


def _props(spec: Any, *, partial: bool) -> dict[str, Any]:
    properties = {}
    for name, p in spec.props.items():
        one = _PROP_TYPES[p.type]
        properties[name] = one if p.required and not partial else {"anyOf": [one, {"type": "null"}]}
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if not spec.additional:
        out["additionalProperties"] = False
    else:  # names of 1..256 bytes not starting with NUL (the store's own); bytes: a rule
        out["propertyNames"] = {
            "minLength": 1,
            "maxLength": MAX_PROP_NAME_BYTES,
            "pattern": "^[^\\x00]",
        }
    required = [n for n, p in spec.props.items() if p.required and not partial]
    if required:
        out["required"] = required
    return out


def _write(kind: str, fields: dict[str, Any], title: str) -> dict[str, Any]:
    common = {
        "kind": {"const": kind},
        "ts": {"type": "integer", "minimum": 0, "maximum": MAX_TS, "x-hopcast": "ts"},
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_MUTATION_ID_BYTES},
        "seq": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_SEQ}, {"type": "null"}]},
    }
    props = {**common, **fields}
    required = [k for k in props if k not in ("seq", "props")]
    return {
        "title": title,
        "type": "object",
        "required": required,
        "properties": props,
        "additionalProperties": False,
    }


def mutation_schema(graph: Schema) -> dict[str, Any]:
    """One mutation as the graph's schema accepts it: a ``oneOf`` per kind and type (and per
    mapping of an edge type, both ways round for a two-way one)."""
    ids = {"type": "string", "maxLength": bounds.MAX_NODE_ID_CHARS}
    choices: list[dict[str, Any]] = []
    for name, nt in graph.nodes.items():
        node = ids | {"pattern": bounds.node_id_pattern([name])}
        choices.append(
            _write("node_upsert", {"node": node, "props": _props(nt.props, partial=True)}, name)
        )
        choices.append(_write("node_delete", {"node": node}, f"delete {name}"))
    for name, et in graph.edges.items():
        ends = set()
        for m in et.mappings:
            ends.add((m.src_type, m.dst_type))
            if m.two_way:
                ends.add((m.dst_type, m.src_type))
        for src, dst in sorted(ends):
            fields = {
                "src": ids | {"pattern": bounds.node_id_pattern([src])},
                "type": {"const": name},
                "dst": ids | {"pattern": bounds.node_id_pattern([dst])},
            }
            title = f"{src} -[{name}]-> {dst}"
            props = _props(et.props, partial=False)
            choices.append(_write("edge_upsert", fields | {"props": props}, title))
            choices.append(_write("edge_delete", fields, f"delete {title}"))
    return {"oneOf": choices}


def narrow(doc: dict[str, Any], graph: Schema) -> None:
    """Replace every marked value's generic pattern by the graph schema's types, in place."""
    types = sorted(graph.nodes)
    edges = sorted(graph.edges)
    root = [graph.journey.root] if graph.journey is not None else types
    # a timeline starts at the journey root or at a profile (console._account_of)
    timeline = (
        [*root, "profile"]
        if {"has_profile"} <= set(graph.edges) and "profile" in graph.nodes
        else root
    )
    patterns = {
        "node_id": bounds.node_id_pattern(types),
        "node_ids": bounds.id_list_pattern(types),
        "optional_node_id": bounds.optional_node_id_pattern(types),
        "optional_node_type": bounds.optional_type_pattern(types),
        "journey_root": bounds.node_id_pattern(root),
        "timeline_root": bounds.node_id_pattern(timeline),
        "edge": bounds.edge_pattern(edges),
        "edges": bounds.edge_list_pattern(edges),
    }
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind = item.get(bounds.MARK)
            if kind in patterns:
                item["pattern"] = patterns[kind]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def refresh_clock_bounds(doc: dict[str, Any], now: int, max_future_us: int | None) -> None:
    """Set the latest ``ts`` a mutation may carry (the server's clock plus the allowed skew)."""
    if max_future_us is None:
        return
    latest = min(MAX_TS, now + max_future_us)
    for choice in doc["components"]["schemas"].get("Mutation", {}).get("oneOf", []):
        choice["properties"]["ts"]["maximum"] = latest

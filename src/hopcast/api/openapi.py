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
from hopcast.graph.limits import MAX_INT, MAX_MUTATION_ID_BYTES, MAX_SEQ, MIN_INT
from hopcast.graph.schema import Schema

DESCRIPTION = """\
Query and write the member graph.

* Node ids are `type:key` (`account:1`, `profile:1`, `title:10`).
* Times are integers in **microseconds since the Unix epoch**; in query strings a duration such
  as `7d` means "7 days before now".
* Every error is `{"error": "<kind>", "message": "..."}`: **400** a malformed query (bad id,
  unknown edge type, bad direction or time, limit out of range, corrupt cursor, unparsable JSON),
  **422** input that does not fit a declared shape (the graph schema, or a parameter's type),
  **404** absent, **413** request too large, **503** store unavailable.
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
    return {**components, "Error": ERROR_SCHEMA}


def install(
    app: FastAPI,
    graph: Schema | None = None,
    *,
    clock: Callable[[], int] | None = None,
    max_future_us: int | None = None,
) -> None:
    """Make ``app.openapi()`` complete: the request and response schemas the routes refer to,
    the graph schema's node and edge types in every id and edge pattern, and the mutation
    shapes it accepts (with ``ts`` bounded by ``clock() + max_future_us`` each time the
    document is served).

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
            if graph is not None:
                schemas_["Mutation"] = mutation_schema(graph)
                schemas_["MutationsRequest"]["properties"]["mutations"]["items"] = {
                    "$ref": "#/components/schemas/Mutation"
                }
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
    patterns = {
        "node_id": bounds.node_id_pattern(types),
        "journey_root": bounds.node_id_pattern(root),
        "node_ids": bounds.id_list_pattern(types),
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

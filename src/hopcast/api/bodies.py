"""Request bodies of the POST routes: typed msgspec structs, decoded straight from bytes.

msgspec decodes and type-checks in one pass (no intermediate dicts, no pydantic models) and its
messages name the JSON path of the problem (``Expected `int`, got `str` - at `$.limits.max_work```).
:func:`decode` turns unparsable JSON into a 400 and a type mismatch into a 422, both in the API's
error shape; :meth:`TraverseRequest.to_spec` and :func:`to_mutations` build the core's values.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, TypeVar

import msgspec
import msgspec.inspect as mi

from hopcast.api import bounds
from hopcast.api.errors import ApiError, IndexedMutationError
from hopcast.durations import format_duration, parse_duration
from hopcast.errors import InvalidMutation, InvalidQuery
from hopcast.graph import mutations as m
from hopcast.graph.keys import MAX_TS
from hopcast.query import spec as q

T = TypeVar("T")


def anchored(pattern: str) -> str:
    """``pattern`` for msgspec, which uses ``re.search``: Python's ``$`` also matches before a
    final newline, JSON Schema's does not, so refuse one explicitly (ECMA 262 reads the
    lookahead the same way)."""
    return pattern + "(?!\\n)" if pattern.endswith("$") else pattern


#: A node id as the body carries it (the types of the graph's schema are checked by the query
#: engine and named in the OpenAPI document's pattern).
NodeIdText = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=bounds.MAX_NODE_ID_CHARS,
        pattern=anchored(bounds.NODE_ID),
        extra_json_schema={bounds.MARK: "node_id"},
    ),
]
#: An edge type name (the graph's schema says which exist).
EdgeName = Annotated[
    str, msgspec.Meta(pattern=anchored(bounds.EDGE), extra_json_schema={bounds.MARK: "edge"})
]
EdgeTypes = (
    Annotated[
        str,
        msgspec.Meta(
            max_length=bounds.MAX_QUERY_CHARS,
            pattern=anchored(bounds.EDGES),
            extra_json_schema={bounds.MARK: "edges"},
        ),
    ]
    | Annotated[list[EdgeName], msgspec.Meta(max_length=1024)]
)
#: A time in a body: µs in [0, 2**62) or a duration text (the same bounds as in a query).
TimeValue = (
    Annotated[str, msgspec.Meta(pattern=anchored(bounds.TIME_PATTERN))]
    | Annotated[int, msgspec.Meta(ge=0, le=MAX_TS)]
)
Lookback = (
    Annotated[str, msgspec.Meta(pattern=anchored(bounds.DURATION_PATTERN))]
    | Annotated[int, msgspec.Meta(ge=1, le=MAX_TS)]
)
PerHop = Annotated[int, msgspec.Meta(ge=1, le=q.MAX_RESULT)]
#: A depth as a JSON object key: 1 to MAX_DEPTH, written as a string (JSON keys are strings).
DepthKey = Annotated[
    str,
    msgspec.Meta(
        pattern=anchored("^(?:" + "|".join(str(d) for d in range(1, q.MAX_DEPTH + 1)) + ")$")
    ),
]
Direction = Annotated[str, msgspec.Meta(pattern=anchored("^(?:out|in|both)$"))]


class HopRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One hop: edge type(s) to follow, direction, and an optional property filter."""

    edge: EdgeTypes | None = None
    direction: Direction | None = None
    where: dict[str, Any] | None = None


class LimitsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Layered traversal limits (see :class:`hopcast.query.spec.Limits`); keys of ``per_depth``
    are 1-based depths written as strings, as JSON requires."""

    edges_per_hop: PerHop = q.DEFAULT_EDGES_PER_HOP
    per_depth: dict[DepthKey, PerHop] = msgspec.field(default_factory=dict)
    per_edge_type: dict[EdgeName, PerHop] = msgspec.field(default_factory=dict)
    max_work: Annotated[int, msgspec.Meta(ge=1, le=q.MAX_WORK)] = q.DEFAULT_MAX_WORK
    max_frontier: Annotated[int, msgspec.Meta(ge=1, le=q.MAX_RESULT * 10)] = q.DEFAULT_MAX_FRONTIER
    lookback: Lookback = format_duration(q.DEFAULT_LOOKBACK_US)

    def to_limits(self) -> q.Limits:
        """Raises :class:`InvalidQuery` for a malformed ``lookback``."""
        try:
            lookback = parse_duration(self.lookback)
        except ValueError as exc:
            raise InvalidQuery(f"limits.lookback: {exc}") from None
        return q.Limits(
            # A duration the document's pattern allows but that is under 1 µs ("0w", "0.5us")
            # is the shortest lookback there is, not an error the document does not state.
            lookback_us=max(1, lookback),
            edges_per_hop=self.edges_per_hop,
            per_depth={int(depth): n for depth, n in self.per_depth.items()},
            per_edge_type=dict(self.per_edge_type),
            max_frontier=self.max_frontier,
            max_work=self.max_work,
        )


class TraverseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A k-hop traversal. A hop written as a string or a list of strings names edge types and
    uses the top-level ``direction``."""

    start: (
        NodeIdText | Annotated[list[NodeIdText], msgspec.Meta(min_length=1, max_length=q.MAX_IDS)]
    )
    hops: Annotated[
        list[EdgeTypes | HopRequest],
        msgspec.Meta(min_length=1, max_length=q.MAX_DEPTH),
    ]
    direction: Direction = "out"
    since: TimeValue | None = None
    until: TimeValue | None = None
    limits: LimitsRequest | None = None

    def to_spec(self, now: int) -> q.Traverse:
        """The query spec, with times resolved against ``now``.

        Raises:
            InvalidQuery: for a malformed time, ``where`` or ``lookback`` (the engine checks the
                rest when it runs the spec).
        """
        hops = []
        for i, hop in enumerate(self.hops):
            if isinstance(hop, HopRequest):
                try:
                    where = q.parse_where(hop.where)
                except InvalidQuery as exc:
                    raise InvalidQuery(f"hops[{i}]: {exc}") from None
                hops.append(q.Hop(edge_types(hop.edge), hop.direction or self.direction, where))
            else:
                hops.append(q.Hop(edge_types(hop), self.direction))
        return q.Traverse(
            (self.start,) if isinstance(self.start, str) else tuple(self.start),
            tuple(hops),
            q.Selection.LATEST,
            _time("since", self.since, now),
            _time("until", self.until, now),
            self.limits.to_limits() if self.limits is not None else q.Limits(),
        )


class MutationsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A batch of mutations in their JSON form (``hopcast.graph.mutations.to_dict``)."""

    mutations: list[Any]


def edge_types(value: EdgeTypes | None) -> tuple[str, ...]:
    """``"a,b"`` or ``["a", "b"]`` → ``("a", "b")``; None or empty → ``()`` (every type)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(e.strip() for e in value.split(",") if e.strip())
    return tuple(value)


def resolve_time(name: str, value: str | int | None, now: int) -> int | None:
    """A bounded time (see :mod:`hopcast.api.bounds`) as µs: digits or an int as they are, a
    duration as that long before ``now`` (never before the epoch); None or empty: None.

    Raises:
        InvalidQuery: naming ``name``, for a value outside the declared bounds (the declared
            schema normally refuses it first).
    """
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_TS:
            return value
    elif isinstance(value, str):
        if _INSTANT.fullmatch(value):
            return int(value)
        if _DURATION.fullmatch(value):
            return max(0, now - parse_duration(value))
    raise InvalidQuery(
        f"{name}: {str(value)[:40]!r} is not a time: use µs since the epoch in [0, 2**62) or "
        "a duration such as 7d (units us, ms, s, m, h, d, w)"
    )


_INSTANT = re.compile(bounds.INSTANT)
_DURATION = re.compile(bounds.DURATION)


def _time(name: str, value: str | int | None, now: int) -> int | None:
    return resolve_time(name, value, now)


def too_deep(depth: int) -> ApiError:
    """The 400 for JSON nested deeper than :data:`~hopcast.api.bounds.MAX_JSON_DEPTH`."""
    return ApiError(
        400,
        "too_deep",
        f"the JSON nests {depth} levels deep; at most {bounds.MAX_JSON_DEPTH} are accepted",
    )


def decode(body: bytes, type: type[T], out_of_bounds: str = "validation_error") -> T:
    """Decode a JSON body into ``type``.

    The nesting depth is checked before parsing (:func:`~hopcast.api.bounds.json_too_deep`), so
    no body can exhaust the decoder's recursion.

    Args:
        out_of_bounds: the error kind of a field outside its declared bound (a range, length or
            pattern): ``validation_error`` (422) by default; a query's body passes
            ``invalid_query`` and a command's ``invalid_input`` (400: a malformed request).

    Raises:
        ApiError: 400 ``malformed_json`` if the body is not JSON, 400 ``too_deep`` if it nests
            deeper than the bound, 422 ``validation_error`` if it does not fit ``type``, and
            ``out_of_bounds`` for a field outside its bound (the message names the JSON path).
    """
    depth = bounds.json_too_deep(body)
    if depth is not None:
        raise too_deep(depth)
    try:
        raw = _decode_any(body)
        return msgspec.convert(whole_numbers(raw, _info(type)), type)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        text = str(exc)
        kind = out_of_bounds if _BOUND.match(text) else "validation_error"
        status = 422 if kind == "validation_error" else 400
        raise ApiError(status, kind, f"body: {readable(text)}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON: {_hint(body, exc)}"
        ) from None
    except RecursionError:  # the scan above makes this unreachable; keep the answer a 400
        raise too_deep(bounds.MAX_JSON_DEPTH + 1) from None


_decode_any = msgspec.json.Decoder().decode


@functools.cache
def _info(type: Any) -> mi.Type:
    return mi.type_info(type)


def whole_numbers(value: Any, info: mi.Type) -> Any:
    """``value`` (decoded JSON) with every whole float where ``info`` expects an integer (and no
    float) replaced by that integer; the rest unchanged.

    JSON Schema (draft 6 on, so OpenAPI 3.1) counts ``2.0`` as the integer 2, and so must a
    server whose document says ``integer``; msgspec alone refuses a float for an ``int``. Values
    typed ``Any`` (properties, filters) keep the number as it was written.
    """
    if isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.AnyType):  # kept as written, nested values too (each mutation)
        return value
    if isinstance(value, float):
        if value.is_integer() and _takes_int_not_float(info):
            return int(value)
        return value
    if isinstance(value, dict):
        target = _object_type(value, info)
        if isinstance(target, mi.StructType):
            fields = {f.encode_name: f.type for f in target.fields}
            return {k: whole_numbers(v, fields[k]) if k in fields else v for k, v in value.items()}
        if isinstance(target, mi.DictType):
            return {k: whole_numbers(v, target.value_type) for k, v in value.items()}
        return value
    if isinstance(value, list):
        target = _one_of(info, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType))
        if target is not None:
            return [whole_numbers(v, target.item_type) for v in value]
        return value
    return value


def _members(info: mi.Type) -> tuple[mi.Type, ...]:
    members = info.types if isinstance(info, mi.UnionType) else (info,)
    return tuple(m.type if isinstance(m, mi.Metadata) else m for m in members)


def _takes_int_not_float(info: mi.Type) -> bool:
    members = _members(info)
    return any(isinstance(m, mi.IntType) for m in members) and not any(
        isinstance(m, mi.FloatType | mi.AnyType) for m in members
    )


def _one_of(info: mi.Type, kinds: tuple[type[mi.Type], ...]) -> Any:  # a member of ``kinds``
    for member in _members(info):
        if isinstance(member, kinds):
            return member
    return None


def _object_type(value: dict[str, Any], info: mi.Type) -> mi.Type | None:
    """The struct (its tag matching ``value``'s, for a tagged union) or dict type in ``info``."""
    structs = [m for m in _members(info) if isinstance(m, mi.StructType)]
    for struct in structs:
        if struct.tag_field is None or value.get(struct.tag_field) == struct.tag:
            return struct
    found: mi.Type | None = _one_of(info, (mi.DictType,))
    return found


def readable(message: str) -> str:
    """A msgspec validation message with each declared pattern named by what it means."""
    return _REGEX.sub(lambda m: f"`str`: {bounds.meaning(m.group(1))}", message)


#: msgspec's message for a constraint (``Expected `int` <= 10``, ``... of length >= 1``,
#: ``... matching regex``), as opposed to a wrong type (``Expected `int`, got `str```).
_BOUND = re.compile(r"Expected `[^`]+` (?!, got)(?:<|>|of length|matching regex)")
_REGEX = re.compile(r"`str` matching regex '(.*?)'(?= - at |$)")


def _hint(body: bytes, exc: msgspec.DecodeError) -> str:
    """msgspec's message, and why when it is a lone surrogate escape (``\\ud800``), which JSON
    text cannot carry into valid UTF-8 (msgspec calls it truncated input)."""
    text = str(exc)
    if _SURROGATE.search(body):
        text += " (a \\uD800-\\uDFFF escape that is not a surrogate pair is not valid Unicode)"
    return text


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def to_mutations(items: list[Any]) -> list[m.Mutation]:
    """Build mutations from their JSON forms.

    Raises:
        IndexedMutationError: naming the first malformed one by its index.
    """
    out: list[m.Mutation] = []
    for i, item in enumerate(items):
        try:
            out.append(m.from_dict(item))
        except InvalidMutation as exc:
            raise IndexedMutationError(i, str(exc)) from None
    return out

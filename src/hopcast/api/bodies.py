"""Request bodies of the POST routes: typed msgspec structs, decoded straight from bytes.

msgspec decodes and type-checks in one pass (no intermediate dicts, no pydantic models) and its
messages name the JSON path of the problem (``Expected `int`, got `str` - at `$.limits.max_work```).
:func:`decode` turns unparsable JSON into a 400 and a type mismatch into a 422, both in the API's
error shape; :meth:`TraverseRequest.to_spec` and :func:`to_mutations` build the core's values.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from hopcast.api.errors import ApiError, IndexedMutationError
from hopcast.durations import format_duration, parse_duration
from hopcast.errors import InvalidMutation, InvalidQuery
from hopcast.graph import mutations as m
from hopcast.graphdb import resolve_time
from hopcast.query import spec as q

T = TypeVar("T")

EdgeTypes = str | list[str]
TimeValue = str | int


class HopRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One hop: edge type(s) to follow, direction, and an optional property filter."""

    edge: EdgeTypes | None = None
    direction: str | None = None
    where: dict[str, Any] | None = None


class LimitsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Layered traversal limits (see :class:`hopcast.query.spec.Limits`); keys of ``per_depth``
    are 1-based depths written as strings, as JSON requires."""

    edges_per_hop: int = q.DEFAULT_EDGES_PER_HOP
    per_depth: dict[int, int] = msgspec.field(default_factory=dict)
    per_edge_type: dict[str, int] = msgspec.field(default_factory=dict)
    max_work: int = q.DEFAULT_MAX_WORK
    max_frontier: int = q.DEFAULT_MAX_FRONTIER
    lookback: TimeValue = format_duration(q.DEFAULT_LOOKBACK_US)

    def to_limits(self) -> q.Limits:
        """Raises :class:`InvalidQuery` for a malformed ``lookback``."""
        try:
            lookback = parse_duration(self.lookback)
        except ValueError as exc:
            raise InvalidQuery(f"limits.lookback: {exc}") from None
        return q.Limits(
            lookback_us=lookback,
            edges_per_hop=self.edges_per_hop,
            per_depth=dict(self.per_depth),
            per_edge_type=dict(self.per_edge_type),
            max_frontier=self.max_frontier,
            max_work=self.max_work,
        )


class TraverseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A k-hop traversal. A hop written as a string or a list of strings names edge types and
    uses the top-level ``direction``."""

    start: str | list[str]
    hops: list[str | list[str] | HopRequest]
    direction: str = "out"
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


def _time(name: str, value: TimeValue | None, now: int) -> int | None:
    try:
        return resolve_time(value, now)
    except InvalidQuery as exc:
        raise InvalidQuery(f"{name}: {exc}") from None


def decode(body: bytes, type: type[T]) -> T:
    """Decode a JSON body into ``type``.

    Raises:
        ApiError: 400 ``malformed_json`` if the body is not JSON, 422 ``validation_error`` if it
            does not fit ``type`` (the message names the JSON path).
    """
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "validation_error", f"body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON: {exc}"
        ) from None


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

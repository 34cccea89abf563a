"""``hopcast.Graph``: the embedded graph as a Python object.

>>> import hopcast
>>> g = hopcast.Graph.open()                       # in memory, demo schema
>>> g.upsert_edge("account:1", "has_profile", "profile:1")
>>> [e.dst for e in g.neighbours("account:1", "has_profile").edges]
['profile:1']

``Graph.open("data/graph")`` opens (or creates) an LMDB store in that directory instead; several
processes may open the same directory and read while one of them writes. Reads see every write
acknowledged before them, whichever process made it (``consistency="read-your-writes"``, the
default; ``"bounded"`` lets node reads lag other processes' writes by up to a second for fewer
store reads: :mod:`hopcast.query.cache`).

Times: every ``ts``/``since``/``until`` accepts an int (µs since the epoch), a
:class:`datetime.datetime`, or a duration string like ``"7d"`` meaning "that long before now".
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hopcast.durations import datetime_us, now_us, parse_duration
from hopcast.errors import ConfigError, InvalidQuery
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    Props,
)
from hopcast.graph.schema import Schema
from hopcast.graph.store import ApplyResult, GraphStore, Node
from hopcast.kv import open_kv
from hopcast.kv.base import KVStore
from hopcast.query import spec as q
from hopcast.query.cache import DEFAULT_CONSISTENCY, Consistency, NodeCache
from hopcast.query.engine import (
    CountResult,
    JourneyResult,
    NeighboursResult,
    PathResult,
    QueryEngine,
    TraverseResult,
)

TimeLike = int | str | dt.datetime | None
_ids = itertools.count()


def resolve_time(value: TimeLike, now: int) -> int | None:
    """int → as is; datetime → µs; ``"7d"`` → ``now - 7 days``; None → None.

    Raises:
        InvalidQuery: for anything else.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidQuery(f"not a time: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        return datetime_us(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            return now - parse_duration(text)
        except ValueError as exc:
            raise InvalidQuery(str(exc)) from None
    raise InvalidQuery(f"not a time: {value!r}")


def _types(edge: str | Sequence[str] | None) -> tuple[str, ...]:
    if edge is None:
        return ()
    if isinstance(edge, str):
        return tuple(e for e in edge.split(",") if e)
    return tuple(edge)


class Graph:
    """An embedded graph: apply mutations, run every query kind.

    Build with :meth:`open`. Thread-safe; use as a context manager or call :meth:`close`.
    """

    def __init__(self, store: GraphStore, cache: NodeCache | None = None) -> None:
        self.store = store
        self.schema = store.schema
        self.engine = QueryEngine(store, cache)
        self.clock = store.clock

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        schema: Schema | str | os.PathLike[str] | None = None,
        *,
        kv: KVStore | None = None,
        sync: bool = True,
        cache: bool = True,
        clock: Any = None,
        consistency: Consistency | str = DEFAULT_CONSISTENCY,
    ) -> Graph:
        """Open a graph.

        Args:
            path: LMDB directory or store URL (``memory://``, ``lmdb:///dir``); None = memory.
            schema: a :class:`Schema` or a YAML path; None = the demo company's schema.
            kv: an already-open backend (overrides ``path``).
            sync: fsync every commit (LMDB).
            cache: keep a node cache in front of node reads.
            clock: a callable returning now in µs (tests pass a fixed clock).
            consistency: what node reads may miss: ``"read-your-writes"`` (nothing acknowledged
                before the read, by any process) or ``"bounded"`` (other processes' writes of
                the last second). See :mod:`hopcast.query.cache`.

        Raises:
            ConfigError: for an unknown ``consistency``.
        """
        try:
            model = Consistency(consistency)
        except ValueError:
            known = ", ".join(c.value for c in Consistency)
            raise ConfigError(f"consistency must be one of {known}, got {consistency!r}") from None
        if schema is None:
            schema = Schema.demo()
        elif not isinstance(schema, Schema):
            schema = Schema.load(Path(schema))
        if kv is None:
            url = "memory://" if path is None else os.fspath(path)
            kv = open_kv(url, **({} if url.startswith("memory") else {"sync": sync}))
        store = GraphStore(kv, schema, clock or now_us)
        return cls(store, NodeCache(consistency=model) if cache else None)

    # -- writes ------------------------------------------------------------------------------

    def apply(
        self, mutations: Iterable[Mutation], checkpoints: Mapping[str, bytes] | None = None
    ) -> ApplyResult:
        """Apply a batch atomically (see :meth:`GraphStore.apply`)."""
        return self.store.apply(mutations, checkpoints)

    def _ts_id(self, ts: TimeLike, id: str | None) -> tuple[int, str]:
        now = self.clock()
        t = resolve_time(ts, now)
        return (now if t is None else t), (id or f"py:{os.getpid()}:{now}:{next(_ids)}")

    def upsert_node(
        self, node: str, props: Props | None = None, ts: TimeLike = None, id: str | None = None
    ) -> ApplyResult:
        t, i = self._ts_id(ts, id)
        return self.apply([NodeUpsert(node, t, i, dict(props or {}))])

    def upsert_edge(
        self,
        src: str,
        type: str,
        dst: str,
        props: Props | None = None,
        ts: TimeLike = None,
        id: str | None = None,
    ) -> ApplyResult:
        t, i = self._ts_id(ts, id)
        return self.apply([EdgeUpsert(src, type, dst, t, i, dict(props or {}))])

    def delete_node(self, node: str, ts: TimeLike = None, id: str | None = None) -> ApplyResult:
        t, i = self._ts_id(ts, id)
        return self.apply([NodeDelete(node, t, i)])

    def delete_edge(
        self, src: str, type: str, dst: str, ts: TimeLike = None, id: str | None = None
    ) -> ApplyResult:
        t, i = self._ts_id(ts, id)
        return self.apply([EdgeDelete(src, type, dst, t, i)])

    # -- queries -----------------------------------------------------------------------------

    def node(self, node_id: str, now: int | None = None) -> Node | None:
        return self.engine.nodes([node_id], now)[0]

    def nodes(self, ids: Iterable[str], now: int | None = None) -> list[Node | None]:
        return self.engine.nodes(ids, now)

    def neighbours(
        self,
        node: str,
        edge: str | Sequence[str] | None = None,
        *,
        direction: str = "out",
        selection: str = "latest",
        since: TimeLike = None,
        until: TimeLike = None,
        limit: int = 20,
        where: Mapping[str, Any] | None = None,
        lookback: str | int = q.DEFAULT_LOOKBACK_US,
        now: int | None = None,
    ) -> NeighboursResult:
        """Neighbours of ``node`` via ``edge`` (one type, several, or None for all)."""
        t = self.clock() if now is None else now
        spec = q.Neighbours(
            node,
            _types(edge),
            direction,
            _selection(selection),
            resolve_time(since, t),
            resolve_time(until, t),
            limit,
            q.parse_where(where),
            _duration(lookback),
        )
        return self.engine.neighbours(spec, t)

    def traverse(
        self,
        start: str | Sequence[str],
        hops: Sequence[str | Sequence[str] | q.Hop],
        *,
        direction: str = "out",
        since: TimeLike = None,
        until: TimeLike = None,
        limits: q.Limits | None = None,
        now: int | None = None,
    ) -> TraverseResult:
        """Breadth-first k-hop traversal; ``hops`` lists each hop's edge type(s) or a Hop."""
        t = self.clock() if now is None else now
        hop_specs = tuple(h if isinstance(h, q.Hop) else q.Hop(_types(h), direction) for h in hops)
        spec = q.Traverse(
            (start,) if isinstance(start, str) else tuple(start),
            hop_specs,
            q.Selection.LATEST,
            resolve_time(since, t),
            resolve_time(until, t),
            limits or q.Limits(),
        )
        return self.engine.traverse(spec, t)

    def journey(
        self,
        node: str,
        *,
        since: TimeLike = None,
        until: TimeLike = None,
        limit: int = 100,
        cursor: str | None = None,
        edge: str | Sequence[str] | None = None,
        now: int | None = None,
    ) -> JourneyResult:
        """An account's interactions across its profiles and devices, newest first, paged."""
        t = self.clock() if now is None else now
        spec = q.Journey(
            node,
            resolve_time(since, t),
            resolve_time(until, t),
            limit,
            cursor,
            _types(edge),
        )
        return self.engine.journey(spec, t)

    def count(
        self,
        node: str,
        edge: str | Sequence[str] | None = None,
        *,
        direction: str = "out",
        since: TimeLike = None,
        until: TimeLike = None,
        now: int | None = None,
    ) -> CountResult:
        t = self.clock() if now is None else now
        spec = q.Count(
            node, _types(edge), direction, resolve_time(since, t), resolve_time(until, t)
        )
        return self.engine.count(spec, t)

    def exists(self, src: str, edge: str, dst: str, now: int | None = None) -> bool:
        return self.engine.exists(q.Exists(src, edge, dst), now).exists

    def shortest_path(
        self,
        src: str,
        dst: str,
        *,
        max_hops: int = 3,
        edge: str | Sequence[str] | None = None,
        direction: str = "both",
        since: TimeLike = None,
        limits: q.Limits | None = None,
        now: int | None = None,
    ) -> PathResult:
        t = self.clock() if now is None else now
        spec = q.ShortestPath(
            src,
            dst,
            max_hops,
            _types(edge),
            direction,
            resolve_time(since, t),
            limits or q.Limits(),
        )
        return self.engine.shortest_path(spec, t)

    # -- lifecycle ---------------------------------------------------------------------------

    def sweep(self, now: int | None = None, limit: int | None = None) -> int:
        """Remove data past its retention; returns the number of items removed."""
        return self.store.sweep(now, limit)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _selection(value: str | q.Selection) -> q.Selection:
    try:
        return q.Selection(value)
    except ValueError:
        raise InvalidQuery(f"selection must be 'latest' or 'any', got {value!r}") from None


def _duration(value: str | int) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidQuery(str(exc)) from None

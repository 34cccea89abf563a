"""Prometheus metrics of one API app, in a registry of its own.

Each :func:`~hopcast.api.create_app` call owns a :class:`ApiMetrics` with a dedicated
``CollectorRegistry``, so tests and embedders can build many apps in one process without
"duplicated timeseries" errors, and ``GET /metrics`` shows exactly this app's numbers.

Series:

* ``hopcast_http_requests_total{method, route, status}`` — requests handled.
* ``hopcast_http_request_duration_seconds{method, route, status}`` — latency histogram, from the
  first byte the app sees to the end of its response.
* ``hopcast_mutations_applied_total`` / ``hopcast_mutations_skipped_total`` — mutations that
  changed the graph, and those that lost to a newer (or equal) version.
* ``hopcast_store_info{backend}`` — which KV backend serves the graph.

``route`` is the route *template* (``/v1/nodes/{node_id}``), never the raw path, so the number of
series stays bounded; requests that match no route share ``route="<unmatched>"``.
"""

from __future__ import annotations

from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets in seconds. Dense between 100 µs and 10 ms, where embedded reads and the
#: 2 ms p99 target of a 1-hop query live; coarse above, where only traversals and writes go.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
    5.0,
)

#: The ``route`` label of a request that matched no route (404s, bodies refused up front).
UNMATCHED = "<unmatched>"

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Methods labelled by name; any other token a client sends is labelled ``OTHER`` so a scanner
#: cannot create unbounded series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ApiMetrics:
    """The metrics of one app. ``backend`` names the KV store (``memory``, ``lmdb``, …)."""

    def __init__(self, backend: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "hopcast_http_requests",
            "HTTP requests handled, by method, route template and status.",
            labels,
            registry=self.registry,
        )
        self.latency = Histogram(
            "hopcast_http_request_duration_seconds",
            "HTTP request latency in seconds, by method, route template and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.mutations_applied = Counter(
            "hopcast_mutations_applied",
            "Mutations received over HTTP that changed the graph.",
            registry=self.registry,
        )
        self.mutations_skipped = Counter(
            "hopcast_mutations_skipped",
            "Mutations received over HTTP that lost to a newer or equal version (no change).",
            registry=self.registry,
        )
        self.store = Info(
            "hopcast_store", "The graph store behind this API.", registry=self.registry
        )
        self.store.info({"backend": backend})
        # Labelled children cached per (method, route, status): ``labels()`` costs a lock and a
        # tuple build on every call, which the hot path does not need to pay.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        if method not in _METHODS:
            method = "OTHER"
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            label = (method, route, str(status))
            children = (self.requests.labels(*label), self.latency.labels(*label))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every series above."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware: times every HTTP request and feeds :meth:`ApiMetrics.observe`.

    Install it outermost, so requests refused by inner middleware (413) are counted too. A
    request that ends in an exception before a response started counts as status 500.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            # path_format: the template without convertors ({node_id}, not {node_id:node_id})
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
            template = template or UNMATCHED
            self.metrics.observe(scope["method"], template, status, perf_counter() - start)

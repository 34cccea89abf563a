"""Rate limits per caller: a token bucket per ``(subject, bucket)``, answered with 429.

A **subject** is who pays: the API key's id when the request carries one (the route policy puts
the principal on ``request.state.principal``), else the client's address. A **bucket** is a
class of work with its own rate: ``mutations`` (``POST /v1/mutations``), ``ingest``
(``POST /v1/ingest/{source}``), ``operator`` (live-event commands, materialise) and ``reports``
(``POST /v1/console/reports``, which devices call). Reads are not limited here: they are
bounded per request by the query limits. A device token pays as ``device:<id>``.

Each bucket holds up to ``burst`` tokens and refills at ``per_second``; a request takes one
token, and a request that finds less than one is refused with **429** ``rate_limited`` and
``Retry-After: <whole seconds until a token is back>`` (:class:`RateLimited`). A caller that
waits that long gets through (tests prove it with an injected clock).

Memory is bounded: at most ``max_tracked`` buckets are kept, least recently used first out. A
bucket that has refilled to ``burst`` is the same as no bucket, so evicting it loses nothing;
only when every tracked bucket is in use does the least recently used one lose its debt (that
subject starts again with a full bucket). With keys, reaching that needs ``max_tracked`` live
keys, each limited on its own anyway.

``hopcast serve --rate-limit BUCKET=COUNT/UNIT[:BURST]`` (repeatable; ``off`` disables) and
``hopcast run`` take :func:`parse_rate`'s syntax. Series: ``hopcast_api_rate_limited_total
{bucket}`` — requests refused, by bucket.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from fastapi import FastAPI, Request
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.responses import Response

from hopcast.api.responses import error
from hopcast.errors import ConfigError

#: The buckets, and which routes draw on each (the route policy names one per route).
MUTATIONS: Final = "mutations"
INGEST: Final = "ingest"
OPERATOR: Final = "operator"
REPORTS: Final = "reports"
BUCKETS: Final = (MUTATIONS, INGEST, OPERATOR, REPORTS)


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: ``per_second`` refill, at most ``burst`` tokens (requests in a
    row after a quiet spell).

    Raises:
        ConfigError: a non-positive or non-finite rate, or a burst below 1.
    """

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.per_second) and self.per_second > 0):
            raise ConfigError(f"a rate must be positive, got {self.per_second}")
        if self.burst < 1:
            raise ConfigError(f"a burst must be at least 1, got {self.burst}")

    def __str__(self) -> str:
        return f"{self.per_second:g}/s:{self.burst}"


#: Default rates per bucket, per subject:
#:
#: * ``mutations`` 50/s, burst 100: a request carries up to 10,000 mutations, so 50 requests a
#:   second is more than one LMDB writer commits; a well-behaved writer batches and never sees
#:   it, while a loop of one-mutation requests (each an fsync) cannot monopolise the writer.
#:   The burst covers a client flushing its retry queue after a blip.
#: * ``ingest`` 200/s, burst 400: journal appends are cheap (no graph write in the request) and
#:   collectors send many small batches; this bounds one key to about the journal's own disk
#:   rate while a fleet of collectors, each with its own key, is unaffected.
#: * ``operator`` 5/s, burst 20: people and scripts running a live event issue a command every
#:   few seconds; a script that creates and starts a dozen events at once fits in the burst,
#:   while a runaway loop cannot flood the fleet with stage changes or queue materialise jobs.
#: * ``reports`` 10/s, burst 50: a device batches its reports and sends one request a few
#:   seconds after a stage change, so a device never comes near it; a backend relaying a fleet's
#:   reports with one key sends up to 1,000 per request (500 a second in a burst, 10 requests a
#:   second after), while a token or key in a loop cannot keep the console's locks busy.
DEFAULT_RATES: Final[Mapping[str, Rate]] = {
    MUTATIONS: Rate(50.0, 100),
    INGEST: Rate(200.0, 400),
    OPERATOR: Rate(5.0, 20),
    REPORTS: Rate(10.0, 50),
}

#: Buckets tracked at most. One bucket is ~200 bytes (a key tuple, two floats, dict slots), so
#: 100k buckets are ~20 MB at worst, and cover every key and client address a deployment sees
#: in any window that matters: beyond it the least recently used bucket goes first.
MAX_TRACKED = 100_000

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(
    r"^(?P<bucket>[a-z_]+)=(?P<count>\d+(?:\.\d+)?)/(?P<unit>[smh])(?::(?P<burst>\d+))?$"
)


def parse_rate(text: str) -> tuple[str, Rate]:
    """``BUCKET=COUNT/UNIT[:BURST]``: e.g. ``mutations=50/s:100`` (50 a second, bursts of 100)
    or ``operator=120/m`` (2 a second; the burst defaults to the count, here 120).

    Raises:
        ConfigError: another syntax, an unknown bucket, or a zero rate.
    """
    match = _RATE.match(text.strip())
    if match is None:
        raise ConfigError(
            f"rate limit {text!r}: expected BUCKET=COUNT/UNIT[:BURST], e.g. mutations=50/s:100 "
            f"(UNIT one of s, m, h; BUCKET one of {', '.join(BUCKETS)}), or 'off'"
        )
    bucket = match["bucket"]
    if bucket not in BUCKETS:
        raise ConfigError(
            f"rate limit {text!r}: no bucket {bucket!r} (one of {', '.join(BUCKETS)})"
        )
    count = float(match["count"])
    if count <= 0:
        raise ConfigError(f"rate limit {text!r}: the count must be positive")
    burst = int(match["burst"]) if match["burst"] else max(1, math.ceil(count))
    return bucket, Rate(count / _UNITS[match["unit"]], burst)


def rates_from(options: Iterable[str]) -> dict[str, Rate] | None:
    """The rates of a command line's ``--rate-limit`` options over :data:`DEFAULT_RATES`:
    each option replaces one bucket's rate; ``off`` (alone) disables rate limiting (None).

    Raises:
        ConfigError: a malformed option, or ``off`` beside others.
    """
    given = [o.strip() for o in options]
    if "off" in given:
        if len(given) > 1:
            raise ConfigError("--rate-limit off disables every limit; give it alone")
        return None
    rates = dict(DEFAULT_RATES)
    for text in given:
        bucket, rate = parse_rate(text)
        rates[bucket] = rate
    return rates


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class RateLimits:
    """Token buckets per ``(subject, bucket)`` (see the module docstring). Thread-safe.

    Args:
        rates: bucket → rate; a bucket not named here is not limited.
        clock: seconds, monotonic (tests pass a fake one).
        max_tracked: buckets kept at most (:data:`MAX_TRACKED`).

    Raises:
        ConfigError: ``max_tracked`` < 1.
    """

    def __init__(
        self,
        rates: Mapping[str, Rate] = DEFAULT_RATES,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        if max_tracked < 1:
            raise ConfigError(f"max_tracked must be at least 1, got {max_tracked}")
        self.rates: Mapping[str, Rate] = dict(rates)
        self._clock = clock
        self._max = max_tracked
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._refused = dict.fromkeys(self.rates, 0)
        self._lock = threading.Lock()
        #: The ``hopcast_api_rate_limited_total`` series: register it on the app's registry.
        self.collector = _RefusedCollector(self)

    def __len__(self) -> int:
        """Buckets tracked now."""
        return len(self._buckets)

    def check(self, subject: str, bucket: str) -> float | None:
        """Take a token from ``subject``'s ``bucket``.

        Returns:
            None: allowed (a token was taken). A float: refused (nothing taken); seconds until
            the next request would be allowed.
        """
        rate = self.rates.get(bucket)
        if rate is None:
            return None
        now = self._clock()
        key = (subject, bucket)
        with self._lock:
            state = self._buckets.get(key)
            if state is None:
                state = self._buckets[key] = _Bucket(float(rate.burst), now)
                self._evict()
            else:
                self._buckets.move_to_end(key)
                elapsed = max(0.0, now - state.at)
                state.tokens = min(float(rate.burst), state.tokens + elapsed * rate.per_second)
                state.at = now
            if state.tokens >= 1.0:
                state.tokens -= 1.0
                return None
            self._refused[bucket] += 1
            return (1.0 - state.tokens) / rate.per_second

    def refused(self) -> dict[str, int]:
        """Requests refused so far, by bucket."""
        with self._lock:
            return dict(self._refused)

    def _evict(self) -> None:
        """Beyond ``max_tracked``: drop the least recently used buckets (most likely refilled
        to full, which loses nothing; see the module docstring)."""
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)


class _RefusedCollector(Collector):
    def __init__(self, limits: RateLimits) -> None:
        self._limits = limits

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "hopcast_api_rate_limited",
            "Requests refused with 429 by the per-key rate limits, by bucket.",
            labels=("bucket",),
        )
        for bucket, count in sorted(self._limits.refused().items()):
            family.add_metric((bucket,), count)
        yield family


class RateLimited(Exception):
    """A request over its rate limit: answered **429** ``rate_limited`` with ``Retry-After``
    (whole seconds, rounded up, at least 1) by the handler :func:`install` registers."""

    def __init__(self, bucket: str, wait_s: float) -> None:
        self.bucket = bucket
        self.retry_after = max(1, math.ceil(wait_s))
        super().__init__(
            f"too many {bucket} requests from this caller; retry after {self.retry_after} s"
        )


def install(app: FastAPI, limits: RateLimits | None, registry: object | None = None) -> None:
    """Put ``limits`` on ``app.state.rate_limits`` (None: no limits), register its series on
    ``registry`` (a ``CollectorRegistry``), and answer :class:`RateLimited` with a 429."""
    app.state.rate_limits = limits
    if limits is not None and registry is not None:
        registry.register(limits.collector)  # type: ignore[attr-defined]

    async def on_rate_limited(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimited)
        response = error(429, "rate_limited", str(exc), bucket=exc.bucket)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    app.add_exception_handler(RateLimited, on_rate_limited)


def subject_of(request: Request) -> str:
    """Who pays for ``request``: ``key:<id>`` of the principal the route policy authenticated,
    ``device:<id>`` for a device token, else ``host:<client address>`` (``host:-`` when the
    server does not know it)."""
    principal = getattr(request.state, "principal", None)
    key_id = getattr(principal, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    device = getattr(request.state, "device", None)
    if device:
        return f"device:{device}"
    client = request.client
    return f"host:{client.host if client is not None else '-'}"


def charge(request: Request, bucket: str) -> None:
    """Take a token from the caller's ``bucket`` (:func:`subject_of`); raise
    :class:`RateLimited` when there is none. A no-op when ``app.state.rate_limits`` is None.
    The route policy (:func:`hopcast.api.policy.policy`) calls it after authenticating, for the
    bucket the route declares."""
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    if limits is None:
        return
    wait = limits.check(subject_of(request), bucket)
    if wait is not None:
        raise RateLimited(bucket, wait)

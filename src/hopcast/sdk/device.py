"""The transport-independent half of a device client: everything but the WebSocket.

:class:`DeviceCore` holds what :class:`~hopcast.sdk.client.DeviceClient` (on ``websockets``) and
:class:`~hopcast.sdk.lightclient.LightClient` (on a minimal asyncio connection, for the load
harness) share: the :class:`~hopcast.sdk.protocol.DeviceProtocol`, the payload cache, the
counters, the reconnect loop (:meth:`DeviceCore.run`), what to do with each protocol event,
fallback fetches and :meth:`DeviceCore.prefetch`. A subclass supplies one connection's life,
``_session(stop_task)``, and feeds received frames through ``protocol.receive`` and
:meth:`DeviceCore._handle`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from hopcast.durations import SECOND, now_us
from hopcast.errors import ConfigError, InvalidInput, TokenError
from hopcast.live import messages as m
from hopcast.live.messages import ByeReason, ErrorCode, payload_ref
from hopcast.live.prefetch import Manifest, decode_manifest, ranked_spread_delay, spread_delay
from hopcast.sdk.protocol import (
    FALLBACK_WINDOW_S,
    DeviceEvent,
    DeviceProtocol,
    NeedsPayload,
    RefreshRequested,
    ResyncNeeded,
    ServerBye,
    ServerError,
    StateSynced,
    TriggerApplied,
    Welcomed,
    fallback_fetch_delay,
    reconnect_delay,
)

logger = logging.getLogger("hopcast.sdk")

#: Fetches a payload (or a manifest) by reference: its bytes, or ``None`` when the origin has
#: nothing under it (404). Network failures raise.
Fetch = Callable[[str], Awaitable[bytes | None]]
#: Returns a fresh token: when the gateway asks for one (``refresh``) or refused the current one.
RefreshToken = Callable[[], Awaitable[str]]
#: Waits the given number of seconds (``asyncio.sleep``; tests and the simulator inject others).
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AppliedStage:
    """One stage the device applied (at most once per ``(event, version)``).

    Attributes:
        channel, event, stage, version: as in the trigger or snapshot that brought it.
        ts: when the stage took effect at the origin, µs (from the trigger).
        applied_at: the client's clock when it applied the stage, µs; ``applied_at - ts`` is
            the time to update (both clocks must agree, e.g. one host).
    """

    channel: str
    event: str
    stage: str
    version: int
    ts: int
    applied_at: int


@dataclass(slots=True)
class ClientStats:
    """What a :class:`DeviceClient` did; counters only grow.

    Attributes:
        connects: WebSocket connections opened (handshake done, ``hello`` sent).
        reconnects: connection attempts after the first, successful or not.
        connect_failures: attempts that failed before the WebSocket opened.
        welcomes: connections the gateway accepted.
        timeouts: connections dropped because nothing arrived before the deadline.
        protocol_errors: connections closed because the gateway sent an invalid frame.
        resyncs: connections dropped to resume after a sequence gap.
        byes: ``bye`` messages received.
        server_errors: ``error`` messages received (``forbidden`` included).
        token_refreshes: calls to ``refresh_token``.
        token_renewals: fresh tokens sent on an open connection (answering ``refresh``).
        triggers_applied: stages applied (from triggers and snapshots).
        duplicates, stale: triggers ignored as already applied / older than applied.
        state_syncs: ``state`` snapshots taken in.
        fallback_fetches: payload fetches started after a trigger found the cache lacking.
        fallback_failures: those that raised or found nothing.
        prefetches: manifests fetched and cached by :meth:`DeviceClient.prefetch`.
        applied: every applied stage with its time, in order.
    """

    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    welcomes: int = 0
    timeouts: int = 0
    protocol_errors: int = 0
    resyncs: int = 0
    byes: int = 0
    server_errors: int = 0
    token_refreshes: int = 0
    token_renewals: int = 0
    triggers_applied: int = 0
    duplicates: int = 0
    stale: int = 0
    state_syncs: int = 0
    fallback_fetches: int = 0
    fallback_failures: int = 0
    prefetches: int = 0
    applied: list[AppliedStage] = field(default_factory=list)


class DeviceCore:
    """What every device client does apart from moving frames (see the module docstring).

    Args:
        token: the device token (``hopcast.live.tokens``).
        channels: the channels to follow.
        rng: draws every backoff and fallback delay; seed it per device for reproducible runs.
        cache: payload reference → bytes; shared with the caller (created if ``None``).
        fetch: fetches payloads for the fallback and manifests for :meth:`prefetch`; without
            it, missing payloads are only reported (``on_event``).
        clock: µs since the epoch; feeds the protocol's deadlines and ``applied_at``.
        on_event: called with every :data:`~hopcast.sdk.protocol.DeviceEvent`, after the
            client handled it; an exception it raises ends :meth:`run`.
        refresh_token: called when the gateway asks for a fresh token (``refresh``; the token
            it returns goes to the gateway on the same connection, which keeps streaming) and
            after the gateway refused the token or closed the connection for its expiry (the
            next connection uses it). Without it a refusal or ``bye token_expired`` ends
            :meth:`run` with :class:`TokenError`.
        sleep: waits the delays the client chooses (reconnect, fallback, prefetch spread); the
            default is :func:`asyncio.sleep`. Deadlines from the gateway's heartbeat are not
            routed through it.
        fallback_window_s: the window over which a missing payload's fetch is spread.

    Raises:
        ConfigError: ``fallback_window_s`` is negative.
        InvalidInput: a channel name is invalid or there are too many.
    """

    def __init__(
        self,
        token: str,
        channels: Iterable[str],
        *,
        rng: random.Random,
        cache: MutableMapping[str, bytes] | None = None,
        fetch: Fetch | None = None,
        clock: Callable[[], int] = now_us,
        on_event: Callable[[DeviceEvent], None] | None = None,
        refresh_token: RefreshToken | None = None,
        sleep: Sleep = asyncio.sleep,
        fallback_window_s: float = FALLBACK_WINDOW_S,
    ) -> None:
        if fallback_window_s < 0:
            raise ConfigError(f"fallback window must be >= 0 seconds, got {fallback_window_s}")
        self.cache: MutableMapping[str, bytes] = {} if cache is None else cache
        self.stats = ClientStats()
        self.protocol = DeviceProtocol(token, channels, cache=self.cache)
        self._rng = rng
        self._fetch = fetch
        self._clock = clock
        self._on_event = on_event
        self._refresh_token = refresh_token
        self._sleep = sleep
        self._fallback_window_s = fallback_window_s
        self._attempt = 0
        self._refresh_needed = False
        self._running = False
        self._fetches: dict[str, asyncio.Task[None]] = {}
        self._renewal: asyncio.Task[None] | None = None

    @property
    def token(self) -> str:
        """The token the next connection presents."""
        return self.protocol.token

    # -- the connection loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set, reconnecting whenever a connection ends.

        Returns once ``stop`` is set: the open connection is closed (code 1000) and pending
        fallback fetches are cancelled. Counters stay readable in :attr:`stats`; positions and
        applied stages in :attr:`protocol`, so a later ``run()`` resumes where this one ended.

        Raises:
            TokenError: the gateway refused the token and there is no ``refresh_token``.
            ConfigError: the gateway does not speak this client's protocol version.
            RuntimeError: ``run()`` is already running.
            Exceptions from ``on_event`` and ``refresh_token``.
        """
        if self._running:
            raise RuntimeError(f"{type(self).__name__}.run() is already running")
        self._running = True
        stop_task = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                await self._session(stop_task)
                if stop.is_set():
                    break
                if self._refresh_needed:
                    await self._refresh()
                delay = reconnect_delay(self._attempt, self._rng, self.protocol.retry_after_ms)
                self._attempt += 1
                if await self._pause(delay, stop_task):
                    break
                self.stats.reconnects += 1
        finally:
            self._running = False
            stop_task.cancel()
            if self._renewal is not None:
                self._renewal.cancel()
                await asyncio.gather(self._renewal, return_exceptions=True)
            fetches = list(self._fetches.values())
            for task in fetches:
                task.cancel()
            await asyncio.gather(*fetches, return_exceptions=True)

    async def _session(self, stop_task: asyncio.Future[Any]) -> None:
        """One connection, from opening it to losing it (never raises on I/O)."""
        raise NotImplementedError

    def _send_now(self, frames: list[bytes]) -> None:
        """Send frames on the open connection outside a received frame's handling (a fresh
        token); dropped if there is none (the next ``hello`` carries the token anyway)."""
        raise NotImplementedError

    def _start_renewal(self) -> None:
        """Answer ``refresh``: get a fresh token in the background, then send it on the same
        connection (or, if that connection is gone, present it in the next ``hello``)."""
        if self._refresh_token is None or (self._renewal is not None and not self._renewal.done()):
            return
        self._renewal = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        assert self._refresh_token is not None
        self.stats.token_refreshes += 1
        try:
            fresh = await self._refresh_token()
        except Exception:
            logger.warning("token refresh failed; the gateway will close at expiry", exc_info=True)
            return
        self.protocol.renew(fresh)
        frames = self.protocol.data_to_send()
        if frames:
            self.stats.token_renewals += 1
            self._send_now(frames)

    def _handle(self, events: list[DeviceEvent], now: int) -> bool:
        """Act on the protocol's events; False when the connection should end."""
        stats, keep = self.stats, True
        stats.duplicates, stats.stale = self.protocol.duplicates, self.protocol.stale
        for event in events:
            match event:
                case Welcomed():
                    stats.welcomes += 1
                    self._attempt = 0
                case TriggerApplied(channel, name, stage, version, ts, _):
                    stats.triggers_applied += 1
                    stats.applied.append(AppliedStage(channel, name, stage, version, ts, now))
                case NeedsPayload(payload=ref):
                    self._start_fallback(ref)
                case StateSynced():
                    stats.state_syncs += 1
                case ResyncNeeded():
                    stats.resyncs += 1
                    keep = False
                case ServerError(code=code, reason=reason):
                    stats.server_errors += 1
                    keep = self._on_server_error(code, reason) and keep
                case ServerBye(reason=reason):
                    stats.byes += 1
                    keep = False
                    if reason in (ByeReason.TOKEN_EXPIRED, ByeReason.REVOKED):
                        if self._refresh_token is None:
                            raise TokenError(reason, "the gateway closed the connection")
                        self._refresh_needed = True
                case RefreshRequested():
                    self._start_renewal()
            if self._on_event is not None:
                self._on_event(event)
        return keep

    def _on_server_error(self, code: str, reason: str) -> bool:
        """Decide what an ``error`` means for the connection; False ends it."""
        if code == ErrorCode.FORBIDDEN:
            logger.warning("gateway refused a channel: %s", reason)
            return True
        if code == ErrorCode.UNAUTHORIZED:
            if self._refresh_token is None:
                raise TokenError(ErrorCode.UNAUTHORIZED, f"the gateway refused it: {reason}")
            self._refresh_needed = True
        elif code == ErrorCode.UNSUPPORTED_PROTOCOL:
            raise ConfigError(f"the gateway does not speak protocol {m.PROTOCOL_VERSION}: {reason}")
        return False  # malformed, unexpected and unknown codes: the gateway is closing

    async def _refresh(self) -> None:
        assert self._refresh_token is not None  # only flagged when there is one
        self._refresh_needed = False
        self.stats.token_refreshes += 1
        self.protocol.token = await self._refresh_token()

    async def _pause(self, seconds: float, stop_task: asyncio.Future[Any]) -> bool:
        """Wait ``seconds`` through ``sleep``, or until stop; True if stopped."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({sleeper, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        return stop_task.done()

    # -- payloads --------------------------------------------------------------------------------

    def _start_fallback(self, ref: str) -> None:
        if self._fetch is None or ref in self._fetches:
            return
        task = asyncio.ensure_future(self._fallback(ref, self._fetch))
        self._fetches[ref] = task
        task.add_done_callback(lambda _: self._fetches.pop(ref, None))

    async def _fallback(self, ref: str, fetch: Fetch) -> None:
        """Fetch a payload the cache lacked at trigger time, after a jittered delay."""
        await self._sleep(fallback_fetch_delay(self._rng, self._fallback_window_s))
        if ref in self.cache:
            return  # a prefetch got it meanwhile
        self.stats.fallback_fetches += 1
        try:
            body = await fetch(ref)
        except Exception:
            self.stats.fallback_failures += 1
            logger.warning("fallback fetch of %s failed", ref, exc_info=True)
            return
        if body is None:
            self.stats.fallback_failures += 1
            logger.warning("fallback fetch of %s: the origin has no such payload", ref)
            return
        self.cache[ref] = body

    async def prefetch(
        self,
        manifest: str,
        *,
        opens_at: int,
        closes_at: int,
        device_id: str | None = None,
        rank: int | None = None,
        fetch: Fetch | None = None,
    ) -> Manifest | None:
        """Prefetch an event's payloads at this device's point of the prefetch window.

        Steps:
            1. wait until the device's point: :func:`~hopcast.live.prefetch.spread_delay` of
               ``device_id``, or :func:`~hopcast.live.prefetch.ranked_spread_delay` of
               ``rank`` (no wait once the point has passed);
            2. fetch the manifest once;
            3. cache every stage's payload under :func:`payload_ref` ``(event, stage)``.

        Args:
            manifest: what ``fetch`` is called with (e.g. the manifest's URL for the device's
                segment).
            opens_at, closes_at: the prefetch window, µs.
            device_id, rank: exactly one of them places the fetch in the window.
            fetch: defaults to the client's ``fetch``.

        Returns:
            The manifest, or ``None`` when the origin has none (nothing is cached).

        Raises:
            InvalidInput: not exactly one of ``device_id`` and ``rank``, no fetch function, an
                invalid window, or a malformed manifest.
            Exceptions from ``fetch``.
        """
        fetcher = fetch or self._fetch
        if fetcher is None:
            raise InvalidInput("prefetch needs a fetch function")
        if (device_id is None) == (rank is None):
            raise InvalidInput("pass exactly one of device_id and rank")
        # 1. wait for the device's point of the window
        now = self._clock()
        if device_id is not None:
            wait_us = spread_delay(device_id, opens_at, closes_at, now)
        else:
            assert rank is not None
            wait_us = ranked_spread_delay(rank, opens_at, closes_at, now)
        await self._sleep(wait_us / SECOND)
        # 2. one request
        body = await fetcher(manifest)
        if body is None:
            return None
        # 3. cache each stage's payload
        decoded = decode_manifest(body)
        for stage, payload_id in decoded.stages.items():
            raw = decoded.payloads.get(payload_id)
            if raw is None:
                raise InvalidInput(f"manifest names payload {payload_id!r} but does not carry it")
            self.cache[payload_ref(decoded.event, stage)] = bytes(raw)
        self.stats.prefetches += 1
        return decoded

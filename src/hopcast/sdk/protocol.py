"""The device's side of the live protocol, sans I/O: frames in, events and frames out.

:class:`DeviceProtocol` never touches a socket, a timer or the clock: the caller passes each
received frame and the current time, and gets back what happened (:data:`DeviceEvent` values)
and what to send. The wire protocol itself is documented in :mod:`hopcast.live.messages`.

A client is a short loop around it::

    proto = DeviceProtocol(token, ["global"], cache=payloads)
    send(proto.connect(now))                       # hello
    for frame in frames:                           # until the socket closes or deadline() passes
        events = proto.receive(frame, now)         # ProtocolError: close and reconnect
        for data in proto.data_to_send():          # subscribe, pongs
            send(data)
        for event in events:                       # update the UI, schedule payload fetches
            ...
    proto.connection_lost()
    sleep(reconnect_delay(attempt, rng, proto.retry_after_ms))

What it guarantees: an ``(event, version)`` is applied (:class:`TriggerApplied`) at most once and
only if newer than what was applied for that event, whatever the server redelivers; the position
sent in ``hello`` for resume only ever covers triggers actually taken in, in sequence.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import assert_never

from hopcast import __version__
from hopcast.durations import MS, SECOND
from hopcast.errors import InvalidInput
from hopcast.live import messages as m
from hopcast.live.messages import EventStage, Position, ProtocolError

#: What the SDK announces in ``hello.client``.
CLIENT_NAME = f"hopcast-py/{__version__}"
#: First reconnect window: attempt 0 waits uniformly in [0, 1 s], so a fleet dropped at once
#: (gateway restart) comes back spread over a second rather than in one burst, and a device is
#: back well within one heartbeat after a blip. Each failed attempt doubles the window.
BACKOFF_BASE_S = 1.0
#: Longest reconnect window: a device never waits more than a minute once a gateway is back,
#: and 100k devices spread over 60 s is ~1.7k handshakes/s, which one gateway host absorbs.
BACKOFF_CAP_S = 60.0
#: Exponent clamp: 2**16 s is far above the cap and keeps huge attempt counts from overflowing.
_MAX_EXPONENT = 16
#: Window over which a device spreads the fetch of a payload it lacks at trigger time: at the
#: targeted ≤ 1% of devices missing the prefetch, 1k of 100k devices make ~100 origin requests/s,
#: while the trigger itself is still applied at once.
FALLBACK_WINDOW_S = 10.0
#: How long to wait for ``welcome`` after ``hello``: a gateway in a reconnect storm may take a few
#: seconds to answer; beyond 10 s, backing off and trying again (maybe another node) is better.
HELLO_TIMEOUT_US = 10 * SECOND
#: Silence tolerated on an open connection, in heartbeat intervals: two lost pings plus half an
#: interval of network delay (one lost ping is routine on mobile networks).
LIVENESS_INTERVALS = 2.5


class Phase(enum.Enum):
    """Where the connection stands."""

    CLOSED = "closed"  # no connection; connect() starts one
    CONNECTING = "connecting"  # hello sent, waiting for welcome
    OPEN = "open"  # welcomed; subscribed channels stream


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The gateway accepted the token; the reconnect attempt counter may be reset."""

    node: str
    heartbeat_ms: int


@dataclass(frozen=True, slots=True)
class TriggerApplied:
    """An event reached a newer stage (from a trigger or a state snapshot): show it."""

    channel: str
    event: str
    stage: str
    version: int
    ts: int
    payload: str | None


@dataclass(frozen=True, slots=True)
class NeedsPayload:
    """The applied stage names a payload the cache lacks: fetch it after
    :func:`fallback_fetch_delay`, then put it in the cache."""

    payload: str
    event: str
    stage: str


@dataclass(frozen=True, slots=True)
class StateSynced:
    """A snapshot brought ``channel`` up to date; the device now stands at ``position``."""

    channel: str
    position: Position


@dataclass(frozen=True, slots=True)
class ResyncNeeded:
    """A trigger skipped sequence numbers: reconnect to resume from the last contiguous one."""

    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """The gateway refused something (``code`` is an :class:`~hopcast.live.messages.ErrorCode`
    value); after ``unauthorized`` get a fresh token (:attr:`DeviceProtocol.token`)."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class ServerBye:
    """The gateway is closing the connection; reconnect after ``retry_after_ms`` at least."""

    reason: str
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class RefreshRequested:
    """The gateway asks for a fresh token within ``within_ms``: get one and pass it to
    :meth:`DeviceProtocol.renew` (the connection and its subscriptions stay)."""

    expires_at: int
    within_ms: int


DeviceEvent = (
    Welcomed
    | TriggerApplied
    | NeedsPayload
    | StateSynced
    | ResyncNeeded
    | ServerError
    | ServerBye
    | RefreshRequested
)


class DeviceProtocol:
    """One device's protocol state: connection phase, positions per channel, applied stages.

    It outlives connections: create it once, call :meth:`connect` for each new connection and
    :meth:`connection_lost` when one ends; positions and applied versions carry over, which is
    what makes resume and idempotent application work.

    Attributes:
        token: sent in the next ``hello``; replace it when it expires or is refused.
        client: sent as ``hello.client``.
        cache: payload reference → payload, filled by the caller; only membership is read.
        duplicates: triggers ignored because their version was already applied.
        stale: triggers ignored because a newer version was already applied.
        retry_after_ms: the last ``bye``'s minimum wait before reconnecting (0 if none).
    """

    def __init__(
        self,
        token: str,
        channels: Iterable[str] = (),
        *,
        client: str = CLIENT_NAME,
        cache: Mapping[str, object] | None = None,
    ) -> None:
        self.token = token
        self.client = client
        self.cache: Mapping[str, object] = {} if cache is None else cache
        self.duplicates = 0
        self.stale = 0
        self.retry_after_ms = 0
        self._channels: dict[str, None] = {}  # an ordered set
        self._positions: dict[str, Position] = {}
        self._applied: dict[str, EventStage] = {}
        self._gapped: set[str] = set()
        self._outgoing: list[bytes] = []
        self._phase = Phase.CLOSED
        self._node: str | None = None
        self._heartbeat_ms: int | None = None
        self._connected_at = 0
        self._last_heard = 0
        self.subscribe(channels)

    # -- read-only views ---------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels followed, in the order they were subscribed."""
        return tuple(self._channels)

    @property
    def positions(self) -> Mapping[str, Position]:
        """Channel → last position taken in (what the next ``hello`` resumes from)."""
        return MappingProxyType(self._positions)

    @property
    def applied(self) -> Mapping[str, EventStage]:
        """Event → the newest stage applied for it."""
        return MappingProxyType(self._applied)

    @property
    def node(self) -> str | None:
        """The gateway node of the current connection, once welcomed."""
        return self._node

    # -- commands ------------------------------------------------------------------------------

    def connect(self, now: int) -> bytes:
        """Start a new connection: return the ``hello`` frame to send first.

        Anything still queued for a previous connection is dropped. The ``hello`` carries the
        position of every followed channel, so the gateway can replay what was missed.

        Args:
            now: the current time, µs; starts the wait for ``welcome`` (:meth:`deadline`).
        """
        self._phase = Phase.CONNECTING
        self._outgoing.clear()
        self._gapped.clear()
        self._node = None
        self._heartbeat_ms = None
        self.retry_after_ms = 0
        self._connected_at = self._last_heard = now
        last = {ch: pos for ch, pos in self._positions.items() if ch in self._channels}
        return m.encode(m.Hello(token=self.token, client=self.client, last=last))

    def connection_lost(self) -> None:
        """The transport closed: go back to :attr:`Phase.CLOSED`, keeping positions for resume."""
        self._phase = Phase.CLOSED
        self._outgoing.clear()
        self._node = None

    def subscribe(self, channels: Iterable[str]) -> None:
        """Follow more channels; if connected, a ``subscribe`` is queued for the new ones.

        Raises:
            InvalidInput: a name is empty or too long, or the total exceeds ``MAX_CHANNELS``.
        """
        new = [ch for ch in dict.fromkeys(channels) if ch not in self._channels]
        for ch in new:
            if not 1 <= len(ch) <= m.MAX_NAME_CHARS:
                raise InvalidInput(f"channel names have 1 to {m.MAX_NAME_CHARS} characters")
        if len(self._channels) + len(new) > m.MAX_CHANNELS:
            raise InvalidInput(f"a device follows at most {m.MAX_CHANNELS} channels")
        self._channels.update(dict.fromkeys(new))
        if new and self._phase is Phase.OPEN:
            self._outgoing.append(m.encode(m.Subscribe(channels=tuple(new))))

    def renew(self, token: str) -> None:
        """Replace the token: the next ``hello`` presents it, and if the connection is open a
        ``token`` frame carries it to the gateway now (queued; see :meth:`data_to_send`), which
        keeps the connection and its subscriptions."""
        self.token = token
        if self._phase is Phase.OPEN:
            self._outgoing.append(m.encode(m.FreshToken(token=token)))

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Stop following channels and forget their positions; queues an ``unsubscribe``."""
        gone = [ch for ch in dict.fromkeys(channels) if ch in self._channels]
        for ch in gone:
            del self._channels[ch]
            self._positions.pop(ch, None)
            self._gapped.discard(ch)
        if gone and self._phase is Phase.OPEN:
            self._outgoing.append(m.encode(m.Unsubscribe(channels=tuple(gone))))

    # -- input -------------------------------------------------------------------------------

    def receive(self, data: bytes | str, now: int) -> list[DeviceEvent]:
        """Take in one received frame.

        Call :meth:`data_to_send` afterwards and send what it returns.

        Args:
            data: the frame's content.
            now: the current time, µs (moves :meth:`deadline`).

        Returns:
            What happened, in order; often empty (pings, duplicates).

        Raises:
            ProtocolError: the frame is not a valid server message, or not one expected now
                (e.g. a trigger before ``welcome``). The state is left unchanged; the caller
                should close the connection and reconnect.
        """
        if self._phase is Phase.CLOSED:
            raise ProtocolError("a frame arrived with no connection open; call connect() first")
        msg = m.decode_from_server(data)
        events: list[DeviceEvent]
        match msg:
            case m.Trigger():
                self._require_open(msg)
                events = self._on_trigger(msg)
            case m.State():
                self._require_open(msg)
                events = self._on_state(msg)
            case m.Ping(ts=ts):
                self._outgoing.append(m.encode(m.Pong(ts=ts)))
                events = []
            case m.Pong():
                events = []
            case m.Welcome(node=node, heartbeat_ms=heartbeat_ms):
                if self._phase is not Phase.CONNECTING:
                    raise ProtocolError("unexpected 'welcome': the connection is already open")
                self._phase = Phase.OPEN
                self._node, self._heartbeat_ms = node, heartbeat_ms
                if self._channels:
                    self._outgoing.append(m.encode(m.Subscribe(channels=self.channels)))
                events = [Welcomed(node, heartbeat_ms)]
            case m.Error(code=code, reason=reason):
                events = [ServerError(code, reason)]
            case m.Bye(reason=reason, retry_after_ms=retry_after_ms):
                self.retry_after_ms = retry_after_ms
                events = [ServerBye(reason, retry_after_ms)]
            case m.Refresh(expires_at=expires_at, within_ms=within_ms):
                events = [RefreshRequested(expires_at, within_ms)]
            case _:
                assert_never(msg)
        self._last_heard = now
        return events

    def data_to_send(self) -> list[bytes]:
        """Frames to send now, in order (``subscribe``, ``unsubscribe``, ``pong``, ``token``);
        clears them."""
        out, self._outgoing = self._outgoing, []
        return out

    def deadline(self) -> int | None:
        """When the connection counts as dead if nothing arrives before (µs), or ``None``.

        Before ``welcome``: :data:`HELLO_TIMEOUT_US` after :meth:`connect`. When open:
        :data:`LIVENESS_INTERVALS` heartbeats after the last frame received. The caller closes
        the connection and reconnects once ``now`` passes it.
        """
        if self._phase is Phase.CONNECTING:
            return self._connected_at + HELLO_TIMEOUT_US
        if self._phase is Phase.OPEN and self._heartbeat_ms is not None:
            return self._last_heard + int(self._heartbeat_ms * MS * LIVENESS_INTERVALS)
        return None

    # -- internals -------------------------------------------------------------------------

    def _require_open(self, msg: m.Trigger | m.State) -> None:
        if self._phase is not Phase.OPEN:
            raise ProtocolError(f"unexpected {type(msg).__name__.lower()!r} before 'welcome'")

    def _on_trigger(self, t: m.Trigger) -> list[DeviceEvent]:
        if t.channel not in self._channels:
            return []  # in flight when we unsubscribed
        stage = EventStage(
            event=t.event, stage=t.stage, version=t.version, ts=t.ts, payload=t.payload
        )
        events = self._apply(t.channel, stage, count_ignored=True)
        pos = self._positions.get(t.channel)
        if pos is None or pos.epoch != t.epoch:
            # No baseline yet, or the channel's history was reset: the position waits for the
            # gateway's state snapshot. Applying by version stays safe meanwhile.
            return events
        if t.seq <= pos.seq:
            return events  # a replay of something already taken in
        if t.seq == pos.seq + 1 and t.channel not in self._gapped:
            self._positions[t.channel] = Position(t.epoch, t.seq)
        elif t.channel not in self._gapped:
            self._gapped.add(t.channel)
            reason = f"expected seq {pos.seq + 1} in epoch {pos.epoch}, got {t.seq}"
            events.append(ResyncNeeded(t.channel, reason))
        return events

    def _on_state(self, s: m.State) -> list[DeviceEvent]:
        if s.channel not in self._channels:
            return []
        events: list[DeviceEvent] = []
        for stage in s.events:
            events += self._apply(s.channel, stage, count_ignored=False)
        pos = self._positions.get(s.channel)
        if pos is None or pos.epoch != s.epoch or s.seq >= pos.seq:
            self._positions[s.channel] = pos = Position(s.epoch, s.seq)
            self._gapped.discard(s.channel)
        events.append(StateSynced(s.channel, pos))
        return events

    def _apply(self, channel: str, stage: EventStage, *, count_ignored: bool) -> list[DeviceEvent]:
        current = self._applied.get(stage.event)
        if current is not None and stage.version <= current.version:
            if count_ignored:
                if stage.version == current.version:
                    self.duplicates += 1
                else:
                    self.stale += 1
            return []
        self._applied[stage.event] = stage
        events: list[DeviceEvent] = [
            TriggerApplied(
                channel, stage.event, stage.stage, stage.version, stage.ts, stage.payload
            )
        ]
        if stage.payload is not None and stage.payload not in self.cache:
            events.append(NeedsPayload(stage.payload, stage.event, stage.stage))
        return events


def backoff(attempt: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**attempt)]`` seconds.

    Attempt 0 is the first reconnection after a connection was lost; its delay is already
    random, so devices dropped together do not return together. Reset the count to 0 once a
    connection is welcomed.

    Raises:
        ValueError: ``attempt`` is negative.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(attempt, _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def reconnect_delay(attempt: int, rng: random.Random, retry_after_ms: int = 0) -> float:
    """Seconds to wait before reconnect ``attempt``: a ``bye``'s minimum plus :func:`backoff`.

    The jitter is added on top of ``retry_after_ms`` so a fleet told the same minimum still
    spreads out.
    """
    return retry_after_ms / 1000 + backoff(attempt, rng)


def fallback_fetch_delay(rng: random.Random, window_s: float = FALLBACK_WINDOW_S) -> float:
    """Seconds to wait before fetching a payload missing at trigger time: uniform in the window.

    Raises:
        ValueError: ``window_s`` is negative.
    """
    if window_s < 0:
        raise ValueError(f"window must be >= 0 seconds, got {window_s}")
    return rng.uniform(0.0, window_s)

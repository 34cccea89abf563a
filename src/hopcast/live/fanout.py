"""Fan-out bookkeeping: per-channel sequence, history and state; routing; transports; presence.

Nothing here touches a socket or reads the clock. The pieces, from the producer to the gateway::

    producer ──Trigger──▶ Router ──(channel, frame bytes)──▶ Transport ──▶ gateway node(s)
                            │ owns one ChannelLog per channel          (FrameSource.subscribe)
                            └── resume(channel, position) ◀──────────── gateway, on subscribe

* :class:`ChannelLog` — one channel's **epoch** and **sequence**, a bounded **history** of the
  encoded trigger frames (for replay on resume) and the **current stage per event** (for a
  ``state`` snapshot when the history no longer covers a device). It encodes each trigger
  **once**; the same bytes go to every device of the channel.
* :class:`Router` — maps a producer :class:`~hopcast.live.producer.Trigger` to channels
  (:func:`default_channels`: ``global`` and ``event:<id>``), owns the channel logs, hands each
  new frame to the :class:`Transport`, and answers resumes (it is the gateway's
  :class:`FrameSource` in the embedded deployment).
* :class:`Transport` — moves ``(channel, frame)`` pairs from the router to gateway nodes.
  :class:`InProcessTransport` calls the subscribers synchronously (embedded default); the Redis
  transport (:mod:`hopcast.live.redisfan`, a :class:`LoggedTransport`) carries frames across
  processes and hosts to node-side mirrors that keep :class:`ChannelLog` copies
  (:meth:`ChannelLog.restore`, :meth:`ChannelLog.ingest`).
* :class:`PushRegistry` — which gateway node holds a device's connection, with a TTL, so a
  device-targeted message can be routed to its node. :class:`InMemoryPushRegistry` is the
  reference; a Redis implementation keeps one key per device with a TTL.

Epochs are random integers in ``[1, 2**53 - 1]``: opaque, unlikely to repeat across restarts,
and exact in every JSON implementation (JavaScript numbers included). A router picks one epoch
when it starts; every channel log it creates starts in it, so a channel that has published
nothing yet can be described without creating a log (``state`` at ``[router epoch, 0]``) and its
first trigger (``seq`` 1) follows on without a gap. :meth:`Router.reset` gives a channel a fresh
epoch.
"""

from __future__ import annotations

import enum
import itertools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from hopcast.errors import ConfigError, InvalidInput, NotFound
from hopcast.live import messages as m
from hopcast.live.messages import EventStage, Position, ProtocolError
from hopcast.live.producer import Trigger
from hopcast.live.schedule import TERMINAL

logger = logging.getLogger(__name__)

#: Channel every trigger is published on: the one a device follows to hear about every event.
GLOBAL_CHANNEL = "global"
#: Prefix of the per-event channel, ``event:<event id>``; event ids have at most 64 characters
#: (``schedule.EVENT_ID``), so these names stay far below ``MAX_NAME_CHARS``.
EVENT_CHANNEL_PREFIX = "event:"
#: Triggers kept per channel for replay. An event makes about six stage transitions in its
#: life, so 256 covers ~40 events' full lifecycles on one channel: a device offline for hours
#: still gets a replay; beyond that one ``state`` frame (a few KB) is as cheap. ~200 bytes per
#: frame makes 50 KB per channel.
DEFAULT_HISTORY = 256
#: Channel logs a router keeps (one per event channel, plus ``global``). An event channel's log
#: holds the event's few triggers (~6 frames, 1-2 KB), so 4,096 logs are a few MB however long
#: the server runs. Beyond it the least recently published channel whose every event is over
#: (ended or cancelled) is forgotten; a device resuming on it then gets the channel's empty
#: state, which one that saw the end ignores (its position is ahead). Channels with an event
#: not over are never forgotten.
MAX_CHANNELS = 4_096
#: Stages after which an event makes no more triggers.
_OVER = frozenset(state.value for state in TERMINAL)
#: Largest epoch: 2**53 - 1 is the largest integer a JavaScript number holds exactly, so a web
#: device can echo it back unchanged.
MAX_EPOCH = 2**53 - 1

#: Receives every ``(channel, frame)`` a transport carries; called on the subscriber's thread.
FrameCallback = Callable[[str, bytes], None]
#: Returned by ``subscribe``: call it to stop receiving.
Unsubscribe = Callable[[], None]

_system_random = random.SystemRandom()

_Frame = TypeVar("_Frame", m.State, m.Trigger)


def new_epoch(rng: random.Random | None = None) -> int:
    """A fresh random epoch in ``[1, MAX_EPOCH]`` (system randomness unless ``rng`` is given)."""
    return (rng or _system_random).randint(1, MAX_EPOCH)


def default_channels(trigger: Trigger) -> tuple[str, ...]:
    """The channels a trigger goes to: :data:`GLOBAL_CHANNEL` and ``event:<event id>``."""
    return (GLOBAL_CHANNEL, EVENT_CHANNEL_PREFIX + trigger.event_id)


def _no_payload(trigger: Trigger) -> str | None:
    return None


class ResumeKind(enum.StrEnum):
    """How a (re)connecting device is caught up on a channel."""

    #: The history covers its position: the triggers it missed (possibly none), in order.
    REPLAY = "replay"
    #: No position, another epoch, or history no longer covers it: one ``state`` frame.
    STATE = "state"


class Ingest(enum.StrEnum):
    """What :meth:`ChannelLog.ingest` did with a frame sequenced elsewhere."""

    #: The next frame: recorded.
    APPLIED = "applied"
    #: Already recorded (a replay): ignored.
    DUPLICATE = "duplicate"
    #: Not the next one (frames missing, or a new epoch): ignored; rebuild the log.
    GAP = "gap"


def _decode_as(frame: bytes, kind: type[_Frame]) -> _Frame:
    try:
        msg = m.decode(frame)
    except ProtocolError as exc:
        raise InvalidInput(f"not a valid frame: {exc}") from None
    if not isinstance(msg, kind):
        raise InvalidInput(f"expected a {kind.__name__.lower()!r} frame, got {type(msg).__name__}")
    return msg


@dataclass(frozen=True, slots=True)
class Resume:
    """What to send a device subscribing to a channel, before that channel's live frames.

    Attributes:
        kind: replay or state.
        frames: encoded frames to send in order (an empty replay means it is up to date).
    """

    kind: ResumeKind
    frames: tuple[bytes, ...]


class ChannelLog:
    """One channel's epoch, sequence, bounded history and current stage per event.

    Not thread-safe: one loop drives it. A duplicate is an ``(event, version)`` no newer than
    the version already published for that event on this channel: producer replays (restart
    re-announcements) therefore cost no sequence number and reach no device twice. The stage
    map keeps the :data:`~hopcast.live.messages.MAX_STATE_EVENTS` most recently updated events;
    a replay of an event evicted from it is published again (harmless: devices apply by
    version).
    """

    def __init__(self, channel: str, epoch: int, *, capacity: int = DEFAULT_HISTORY) -> None:
        """Start an empty log at ``[epoch, 0]``.

        Raises:
            InvalidInput: the channel name is empty or longer than ``MAX_NAME_CHARS``, or the
                epoch is outside ``[0, MAX_EPOCH]``.
            ConfigError: ``capacity`` < 1.
        """
        if not 1 <= len(channel) <= m.MAX_NAME_CHARS:
            raise InvalidInput(f"channel names have 1 to {m.MAX_NAME_CHARS} characters")
        if capacity < 1:
            raise ConfigError(f"history capacity must be >= 1, got {capacity}")
        self._channel = channel
        self._capacity = capacity
        self._check_epoch(epoch)
        self._epoch = epoch
        self._seq = 0
        self._history: deque[bytes] = deque(maxlen=capacity)
        self._stages: OrderedDict[str, EventStage] = OrderedDict()  # oldest update first
        self._state_frame: bytes | None = None  # cached until the next publish or reset

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def seq(self) -> int:
        """The sequence number of the last trigger published in this epoch (0 if none)."""
        return self._seq

    @property
    def position(self) -> Position:
        """``[epoch, seq]``: where a device that took in everything stands."""
        return Position(self._epoch, self._seq)

    @property
    def events(self) -> tuple[EventStage, ...]:
        """The current stage of every event tracked, least recently updated first."""
        return tuple(self._stages.values())

    @property
    def frames(self) -> tuple[bytes, ...]:
        """The history: encoded ``trigger`` frames, oldest first, the last at :attr:`seq`."""
        return tuple(self._history)

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest trigger still in the history (``seq + 1`` if empty)."""
        return self._seq - len(self._history) + 1

    def publish(self, stage: EventStage) -> bytes | None:
        """Sequence a stage change and return its ``trigger`` frame, or ``None`` if a duplicate.

        Steps: 1. drop it unless its version is newer than the event's on this channel;
        2. take the next ``seq``; 3. encode the frame once and check it decodes (a frame every
        device would refuse must never be broadcast); 4. append it to the history and update
        the event's current stage.

        Args:
            stage: the event, its new stage, the schedule version, when, and the payload.

        Returns:
            The frame to broadcast to every subscriber of the channel, or ``None``.

        Raises:
            InvalidInput: a name is empty or too long, or the version negative; the log is
                unchanged.
        """
        # 1. Dedup by (event, version).
        current = self._stages.get(stage.event)
        if current is not None and stage.version <= current.version:
            return None
        # 2. Next sequence number.
        seq = self._seq + 1
        # 3. Encode once, validate once.
        trigger = m.Trigger(
            channel=self._channel,
            epoch=self._epoch,
            seq=seq,
            event=stage.event,
            stage=stage.stage,
            version=stage.version,
            ts=stage.ts,
            payload=stage.payload,
        )
        frame = m.encode(trigger)
        try:
            m.decode(frame)
        except ProtocolError as exc:
            raise InvalidInput(f"trigger for {stage.event!r} is not a valid frame: {exc}") from None
        # 4. Record.
        self._record(seq, frame, stage)
        return frame

    def _record(self, seq: int, frame: bytes, stage: EventStage) -> None:
        self._seq = seq
        self._history.append(frame)
        self._stages[stage.event] = stage
        self._stages.move_to_end(stage.event)
        if len(self._stages) > m.MAX_STATE_EVENTS:
            self._stages.popitem(last=False)
        self._state_frame = None

    # -- copies of a log kept elsewhere (a gateway node's mirror of the router's) --------------

    @classmethod
    def restore(
        cls, state: bytes, history: Sequence[bytes] = (), *, capacity: int = DEFAULT_HISTORY
    ) -> ChannelLog:
        """Rebuild a log from its ``state`` frame and the newest frames of its history.

        What :meth:`publish` made on the router is rebuilt exactly: same position, same stages
        (in the same order, so the same ``state`` frame), and a history that replays the same
        frames. ``history`` holds encoded ``trigger`` frames, oldest first; only those of the
        state's epoch that end at its ``seq`` with no gap are kept (an older run before a gap,
        or frames of another epoch, are dropped: they could not be replayed as a contiguous run).

        Raises:
            InvalidInput: ``state`` is not a valid ``state`` frame, or a history entry is not a
                valid ``trigger`` frame of the same channel.
            ConfigError: ``capacity`` < 1.
        """
        snapshot = _decode_as(state, m.State)
        log = cls(snapshot.channel, snapshot.epoch, capacity=capacity)
        log._seq = snapshot.seq
        for stage in snapshot.events:
            log._stages[stage.event] = stage
        triggers = [_decode_as(frame, m.Trigger) for frame in history]
        if any(t.channel != snapshot.channel for t in triggers):
            raise InvalidInput(f"history of channel {snapshot.channel!r} holds another channel")
        # The contiguous run ending at the snapshot's position, newest first.
        run: list[bytes] = []
        expected = snapshot.seq
        for frame, trigger in zip(reversed(history), reversed(triggers), strict=True):
            if trigger.epoch != snapshot.epoch or trigger.seq != expected or expected < 1:
                break
            run.append(frame)
            expected -= 1
        log._history.extend(reversed(run[:capacity]))
        log._state_frame = m.encode(snapshot)
        return log

    def ingest(self, frame: bytes, trigger: m.Trigger) -> Ingest:
        """Take in a ``trigger`` frame another log sequenced (``frame`` encodes ``trigger``).

        Returns:
            :attr:`Ingest.APPLIED` if it is the next one (same epoch, ``seq + 1``): recorded
            exactly as :meth:`publish` recorded it; :attr:`Ingest.DUPLICATE` if this log already
            has it (same epoch, ``seq`` not newer): unchanged; :attr:`Ingest.GAP` otherwise
            (another epoch, or frames missing in between, or another channel): unchanged, and
            the log must be rebuilt from its source (:meth:`restore`).
        """
        if trigger.channel != self._channel or trigger.epoch != self._epoch:
            return Ingest.GAP
        if trigger.seq <= self._seq:
            return Ingest.DUPLICATE
        if trigger.seq != self._seq + 1:
            return Ingest.GAP
        stage = EventStage(
            event=trigger.event,
            stage=trigger.stage,
            version=trigger.version,
            ts=trigger.ts,
            payload=trigger.payload,
        )
        self._record(trigger.seq, frame, stage)
        return Ingest.APPLIED

    def resume(self, position: Position | None) -> Resume:
        """What a device at ``position`` needs to be caught up.

        Same epoch and ``oldest_seq - 1 <= position.seq <= seq``: the triggers after it (a
        replay; none if up to date). Otherwise (no position, another epoch, a gap the history
        no longer covers, or a position ahead of the log): one ``state`` frame.
        """
        if position is not None and position.epoch == self._epoch:
            missed = self._seq - position.seq
            if 0 <= missed <= len(self._history):
                start = len(self._history) - missed
                return Resume(
                    ResumeKind.REPLAY, tuple(itertools.islice(self._history, start, None))
                )
        return Resume(ResumeKind.STATE, (self.state_frame(),))

    def state_frame(self) -> bytes:
        """The ``state`` frame at the current position (encoded once until the log changes)."""
        if self._state_frame is None:
            self._state_frame = m.encode(
                m.State(channel=self._channel, epoch=self._epoch, seq=self._seq, events=self.events)
            )
        return self._state_frame

    def reset(self, epoch: int) -> bytes:
        """Start a new epoch: empty history, ``seq`` back to 0, current stages kept.

        Returns:
            The ``state`` frame of the new epoch: broadcast it to the channel's subscribers so
            connected devices adopt the new position (the protocol's "after an epoch change
            the gateway sends a state").

        Raises:
            InvalidInput: the epoch is outside ``[0, MAX_EPOCH]`` or equal to the current one.
        """
        self._check_epoch(epoch)
        if epoch == self._epoch:
            raise InvalidInput(f"channel {self._channel!r} is already in epoch {epoch}")
        self._epoch = epoch
        self._seq = 0
        self._history.clear()
        self._state_frame = None
        return self.state_frame()

    @staticmethod
    def _check_epoch(epoch: int) -> None:
        if not 0 <= epoch <= MAX_EPOCH:
            raise InvalidInput(f"epoch must be in [0, {MAX_EPOCH}], got {epoch}")


class Transport(Protocol):
    """Carries encoded frames from the router to every gateway node.

    Contract for implementations:

    * ``publish`` never blocks: a networked transport queues the frame and sends it from its
      own task. Frames of one channel reach each subscriber in publish order.
    * ``subscribe(callback)``: ``callback(channel, frame)`` is called for at least every frame
      of every channel the subscribing node has devices on (more is allowed; the node drops
      frames of channels nobody follows), on the subscriber's event loop thread, and must not
      block. A callback that raises is logged; delivery to other subscribers continues.
    * Frames are opaque bytes (the router's encoding, sent as-is to devices); channels are
      :data:`~hopcast.live.messages.Name` strings.
    """

    def publish(self, channel: str, frame: bytes) -> None:
        """Hand ``frame`` to every subscriber interested in ``channel``."""
        ...

    def subscribe(self, callback: FrameCallback) -> Unsubscribe:
        """Start delivering frames to ``callback``; the returned function stops it."""
        ...


@runtime_checkable
class LoggedTransport(Transport, Protocol):
    """A transport that also keeps, outside the router, what a node needs to rebuild channels.

    A :class:`Router` given one calls :meth:`attach` once, then :meth:`publish_logged` instead
    of ``publish`` for every frame. The Redis transport stores each channel's ``state`` frame
    and bounded history beside each frame it publishes, and the router's epoch, so a gateway
    node that starts late, or that notices a gap, rebuilds the channel exactly
    (:meth:`ChannelLog.restore`).
    """

    def attach(self, router: Router) -> None:
        """Serve ``router``: its :attr:`~Router.epoch`, :attr:`~Router.history` and
        :attr:`~Router.logs` (read to re-seed a store that lost its data)."""
        ...

    def publish_logged(self, channel: str, frame: bytes, state: bytes) -> None:
        """:meth:`Transport.publish`, with ``state``: the channel's ``state`` frame at
        ``frame``'s position (``frame`` itself when a reset publishes a new epoch's state)."""
        ...


def empty_resume(channel: str, epoch: int, position: Position | None) -> Resume:
    """The catch-up for a channel that has published nothing in ``epoch``: nothing if the
    device stands at ``[epoch, 0]``, else ``state`` at ``[epoch, 0]`` with no events."""
    if position is not None and position == (epoch, 0):
        return Resume(ResumeKind.REPLAY, ())
    return Resume(ResumeKind.STATE, (m.encode(m.State(channel=channel, epoch=epoch, seq=0)),))


class FrameSource(Protocol):
    """What a gateway consumes: live frames, and catch-up frames for a subscribing device.

    The :class:`Router` is one (embedded). On a multi-host deployment each gateway node uses a
    mirror fed by the cross-host transport that keeps its own :class:`ChannelLog` copies.
    """

    def subscribe(self, callback: FrameCallback) -> Unsubscribe:
        """Deliver every new frame of every channel to ``callback`` (see :class:`Transport`)."""
        ...

    def resume(self, channel: str, position: Position | None) -> Resume:
        """Frames that bring a device at ``position`` on ``channel`` up to date."""
        ...


class Subscribers:
    """The frame callbacks of a transport or frame source, in subscription order.

    :meth:`deliver` calls each in turn; one that raises is logged and the others still run.
    """

    def __init__(self) -> None:
        self._callbacks: list[FrameCallback] = []

    def add(self, callback: FrameCallback) -> Unsubscribe:
        """Start delivering to ``callback``; the returned function stops it."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def deliver(self, channel: str, frame: bytes) -> None:
        """Hand ``(channel, frame)`` to every callback subscribed now."""
        for callback in tuple(self._callbacks):
            try:
                callback(channel, frame)
            except Exception:
                logger.exception("a frame subscriber failed on channel %r", channel)


class InProcessTransport:
    """The embedded transport: ``publish`` calls every subscriber synchronously, in order.

    Publish from the gateway's event loop thread (the subscribers' thread): the live service
    calls its sinks there. Not thread-safe.
    """

    def __init__(self) -> None:
        self._subscribers = Subscribers()

    def publish(self, channel: str, frame: bytes) -> None:
        self._subscribers.deliver(channel, frame)

    def subscribe(self, callback: FrameCallback) -> Unsubscribe:
        return self._subscribers.add(callback)


class Router:
    """Turns producer triggers into sequenced, encoded frames per channel and publishes them.

    Not thread-safe: call it from one thread (the gateway's event loop in the embedded setup).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        channels_for: Callable[[Trigger], Iterable[str]] = default_channels,
        payload_for: Callable[[Trigger], str | None] = _no_payload,
        history: int = DEFAULT_HISTORY,
        epoch: int | None = None,
        max_channels: int = MAX_CHANNELS,
    ) -> None:
        """
        Args:
            transport: where frames go.
            channels_for: the channels of a trigger (default :func:`default_channels`).
            payload_for: the payload reference a trigger names (default none).
            history: triggers kept per channel for replay.
            epoch: the epoch new channel logs start in (default: random, :func:`new_epoch`).
            max_channels: channel logs kept beyond those with an event not over
                (:data:`MAX_CHANNELS`).

        Raises:
            ConfigError: ``history`` or ``max_channels`` < 1.
            InvalidInput: ``epoch`` outside ``[0, MAX_EPOCH]``.
        """
        if history < 1:
            raise ConfigError(f"history must be >= 1, got {history}")
        if max_channels < 1:
            raise ConfigError(f"max_channels must be >= 1, got {max_channels}")
        self._max_channels = max_channels
        self._transport = transport
        self._channels_for = channels_for
        self._payload_for = payload_for
        self._history = history
        self._epoch = new_epoch() if epoch is None else epoch
        ChannelLog._check_epoch(self._epoch)
        self._logs: dict[str, ChannelLog] = {}  # least recently published first
        #: Channel → seq of the oldest frame its log recorded but the transport refused.
        self._unsent: dict[str, int] = {}
        self._logged = transport if isinstance(transport, LoggedTransport) else None
        if self._logged is not None:
            self._logged.attach(self)

    @property
    def epoch(self) -> int:
        """The epoch channel logs of this router start in."""
        return self._epoch

    @property
    def history(self) -> int:
        """Triggers kept per channel for replay."""
        return self._history

    @property
    def logs(self) -> Mapping[str, ChannelLog]:
        """Channel → its log, for every channel that has published."""
        return self._logs

    def publish(self, trigger: Trigger) -> int:
        """Sequence ``trigger`` on each of its channels and publish the new frames.

        Steps: 1. record the trigger in each channel's log (a duplicate is skipped); 2. send
        every recorded frame the transport has not taken yet, per channel in order. A frame the
        transport refused (its ``publish`` raised) stays in the log and is sent, before
        anything newer on its channel, at the next call: so a caller that retries a failed
        call (the live service does) gets every frame out, in order, even though the retried
        trigger itself is a duplicate by then. A frame the history no longer holds by then is
        replaced by the channel's ``state``.

        Returns:
            The number of frames published (0 when it duplicates what every channel has).

        Raises:
            InvalidInput: a channel name or the trigger does not fit the wire format; nothing
                is published on that channel (channels before it were published).
            Exception: whatever the transport raised; the frame is sent again next time.
        """
        stage = EventStage(
            event=trigger.event_id,
            stage=trigger.stage.value,
            version=trigger.version,
            ts=trigger.ts,
            payload=self._payload_for(trigger),
        )
        published = 0
        try:
            for channel in dict.fromkeys(self._channels_for(trigger)):
                log = self._logs.get(channel)
                if log is None:
                    log = ChannelLog(channel, self._epoch, capacity=self._history)
                    self._logs[channel] = log
                    self._forget_over()
                if log.publish(stage) is not None:
                    self._unsent.setdefault(channel, log.seq)
                    self._logs[channel] = self._logs.pop(channel)  # most recently published
                    published += 1
        finally:  # what was recorded goes out, whatever came after
            for channel in list(self._unsent):
                self._send_unsent(channel)
        return published

    def _forget_over(self) -> None:
        """Beyond ``max_channels`` logs, forget the least recently published channel whose
        every event is over (see :data:`MAX_CHANNELS`), if there is one."""
        if len(self._logs) <= self._max_channels:
            return
        for channel, log in self._logs.items():
            if channel in self._unsent or not log.events:
                continue
            if all(stage.stage in _OVER for stage in log.events):
                del self._logs[channel]
                return

    @property
    def unsent(self) -> int:
        """Frames recorded in a channel log that the transport has not taken yet."""
        return sum(self._logs[ch].seq - seq + 1 for ch, seq in self._unsent.items())

    def _send_unsent(self, channel: str) -> None:
        """Send ``channel``'s frames from its oldest unsent one on, in order; a frame that
        raises stays the oldest unsent (and the exception propagates)."""
        log = self._logs[channel]
        seq = self._unsent[channel]
        if seq < log.oldest_seq:  # out of the history: the state tells what was missed
            state = log.state_frame()
            self._send(channel, state, state)
            del self._unsent[channel]
            return
        frames = log.frames
        for i in range(seq - log.oldest_seq, len(frames)):
            self._send(channel, frames[i], log.state_frame())
            self._unsent[channel] = seq = seq + 1
        del self._unsent[channel]

    def _send(self, channel: str, frame: bytes, state: bytes) -> None:
        if self._logged is not None:
            self._logged.publish_logged(channel, frame, state)
        else:
            self._transport.publish(channel, frame)

    def publish_all(self, triggers: Sequence[Trigger]) -> None:
        """Publish each trigger in order: a ``LiveService`` sink (``service.add_sink``)."""
        for trigger in triggers:
            self.publish(trigger)

    def reset(self, channel: str, epoch: int | None = None) -> None:
        """Give ``channel`` a new epoch (default random) and publish its ``state`` frame.

        Raises:
            NotFound: the channel has published nothing (it has no history to reset).
            InvalidInput: the epoch is invalid or the channel's current one.
        """
        log = self._logs.get(channel)
        if log is None:
            raise NotFound(f"channel {channel!r} has published nothing; nothing to reset")
        frame = log.reset(new_epoch() if epoch is None else epoch)
        self._unsent.pop(channel, None)  # the new epoch's state supersedes them
        self._send(channel, frame, frame)

    def resume(self, channel: str, position: Position | None) -> Resume:
        """Catch-up frames for a device at ``position`` (see :meth:`ChannelLog.resume`).

        A channel that has published nothing gets ``state`` at ``[epoch, 0]`` with no events,
        without creating a log (so devices cannot make the router allocate one per name).
        """
        log = self._logs.get(channel)
        if log is not None:
            return log.resume(position)
        return empty_resume(channel, self._epoch, position)

    def subscribe(self, callback: FrameCallback) -> Unsubscribe:
        """Receive every frame this router publishes (delegates to the transport)."""
        return self._transport.subscribe(callback)


@dataclass(frozen=True, slots=True)
class Presence:
    """Where a device is connected: the node id, and when that claim lapses (µs)."""

    node: str
    expires_at: int


class PushRegistry(Protocol):
    """Device → the gateway node holding its connection, each entry expiring after ``ttl_us``.

    A gateway registers a device when it welcomes it, refreshes all of its devices once per
    heartbeat (so ``ttl_us`` must exceed the heartbeat interval: a node that dies stops
    refreshing and its entries lapse), and unregisters on close. A later registration wins (a
    device that reconnected elsewhere); unregister only removes an entry the node still owns.
    Methods are coroutines so a Redis implementation can do I/O (``SET device node PX ttl``,
    pipelined ``SET ... PX`` for refresh, ``GET``; unregister compare-and-delete).
    """

    @property
    def ttl_us(self) -> int: ...

    async def register(self, device: str, node: str, now: int) -> None:
        """``device`` is on ``node`` until ``now + ttl_us`` (replacing any other node)."""
        ...

    async def refresh(self, devices: Iterable[str], node: str, now: int) -> None:
        """Re-assert ``node`` for every one of ``devices`` until ``now + ttl_us``."""
        ...

    async def lookup(self, device: str, now: int) -> str | None:
        """The node holding ``device``, or ``None`` if unknown or expired at ``now``."""
        ...

    async def unregister(self, device: str, node: str) -> None:
        """Forget ``device`` if ``node`` still owns it."""
        ...

    async def expire(self, now: int) -> int:
        """Drop entries expired at ``now``; returns how many (a TTL store returns 0)."""
        ...


class InMemoryPushRegistry:
    """The reference :class:`PushRegistry`: a dict, with expiry by the ``now`` passed in."""

    def __init__(self, ttl_us: int) -> None:
        """
        Raises:
            ConfigError: ``ttl_us`` <= 0.
        """
        if ttl_us <= 0:
            raise ConfigError(f"push registry ttl must be positive, got {ttl_us}")
        self._ttl_us = ttl_us
        self._entries: dict[str, Presence] = {}

    @property
    def ttl_us(self) -> int:
        return self._ttl_us

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, device: str) -> Presence | None:
        """The raw entry, expired or not (for inspection)."""
        return self._entries.get(device)

    async def register(self, device: str, node: str, now: int) -> None:
        self._entries[device] = Presence(node, now + self._ttl_us)

    async def refresh(self, devices: Iterable[str], node: str, now: int) -> None:
        presence = Presence(node, now + self._ttl_us)
        for device in devices:
            self._entries[device] = presence

    async def lookup(self, device: str, now: int) -> str | None:
        presence = self._entries.get(device)
        if presence is None or presence.expires_at <= now:
            return None
        return presence.node

    async def unregister(self, device: str, node: str) -> None:
        presence = self._entries.get(device)
        if presence is not None and presence.node == node:
            del self._entries[device]

    async def expire(self, now: int) -> int:
        gone = [d for d, presence in self._entries.items() if presence.expires_at <= now]
        for device in gone:
            del self._entries[device]
        return len(gone)

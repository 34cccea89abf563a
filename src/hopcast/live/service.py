"""The live-event service: one object per process that ties the schedule, the producer, the
payload store and the trigger sinks together, plus the small asyncio loop that fires its timers.

The pure pieces decide (:mod:`~hopcast.live.schedule`, :mod:`~hopcast.live.producer`,
:mod:`~hopcast.live.prefetch`); this module performs what they decide, and is what the HTTP
routes (``hopcast.api.live``), the CLI (``hopcast live``) and the gateway call::

    service = LiveService(kv, sink=gateway.publish)   # the gateway's broadcast, for example
    service.resume(now)                               # once, at start-up
    result = service.command(StartNow("final"), now)  # operator commands
    await run_timers(service, now_us, stop)           # fires the schedule's timers

**How triggers leave.** Every :class:`~hopcast.live.producer.Trigger` the producer emits — from a
command, a timer, or the re-announcements of :meth:`LiveService.resume` — is handed to every
sink, in the order emitted, **synchronously, on the thread that called**
:meth:`~LiveService.command`, :meth:`~LiveService.tick` or :meth:`~LiveService.resume`, while the
service's lock is held (so two calls never interleave their triggers). In the HTTP server those
calls run on the event loop thread: a sink may use loop objects directly but must not block
(encode and enqueue, never await a client). A sink that raises does not lose its triggers
(:mod:`hopcast.live.sinks`): they stay queued for it, in order and bounded, and are handed to
it again after a backoff, from :meth:`~LiveService.tick` (the timer loop wakes for it); what it
could not take is counted on ``/metrics`` (``hopcast_live_sink_failures_total``,
``hopcast_live_triggers_pending``, ``hopcast_live_triggers_dropped_total``). The other sinks
still get the triggers and the command still succeeds, because the schedule change is already
stored. Delivery is at least once: a sink may be handed a trigger again after a failure, and a
restart re-announces every current stage with its original version, so receivers apply
``(event, version)`` idempotently.

**One service per schedule.** Timers of an event must not be armed in two processes: run one
``LiveService`` per store (one API worker). A command written to the store by another process
(the CLI on the local store) is stored but broadcast only when the service next resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Literal

from hopcast.durations import SECOND, now_us, parse_duration, parse_iso
from hopcast.errors import HopcastError, InvalidInput
from hopcast.kv.base import KVStore
from hopcast.live.fixtures import demo_segmenter, materialise_fixture
from hopcast.live.messages import payload_ref
from hopcast.live.payloads import (
    DEFAULT_RETENTION_US,
    DEFAULT_SEGMENT,
    PayloadStore,
    validate_name,
)
from hopcast.live.prefetch import (
    DEFAULT_POLICY,
    PrefetchPolicy,
    PrefetchResponse,
    prefetch,
    serve_manifest,
    serve_payload,
    window,
)
from hopcast.live.producer import Producer, Trigger
from hopcast.live.schedule import (
    TERMINAL,
    Command,
    Effect,
    LiveEvent,
    Reschedule,
    State,
    accepted_inputs,
    next_timer,
)
from hopcast.live.schedule_store import ScheduleStore
from hopcast.live.sinks import MAX_PENDING, Delivery, SinkCollector, SinkStatus, TriggerSink

if TYPE_CHECKING:
    from hopcast.graphdb import Graph
    from hopcast.live.materialise import Materialiser, Report

logger = logging.getLogger("hopcast.live")

#: Longest the timer loop sleeps without reading the clock again, in seconds. Deadlines are
#: computed from the wall clock; re-reading it every second bounds how late a trigger can fire
#: after the clock steps forward (NTP) to one second, at the cost of one cheap tick per second.
MAX_TIMER_SLEEP_S = 1.0

#: Pause after a failed tick before the next attempt, in seconds: a storage error is usually
#: transient (disk full, a lock), and retrying at once would spin and flood the log.
TICK_RETRY_S = 1.0


#: A clock: µs since the epoch.
Clock = Callable[[], int]

Doc = dict[str, Any]


class _Keep(Enum):
    KEEP = "keep"


#: "Leave this time as it is" for :meth:`LiveService.reschedule` (``None`` removes the end).
KEEP: Final = _Keep.KEEP


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one command did: the stored event, the triggers it emitted and every other effect
    left after storing (``Rescheduled``, timer changes). ``effects == ()`` means nothing
    changed (a reschedule to the same times)."""

    event: LiveEvent
    triggers: tuple[Trigger, ...]
    effects: tuple[Effect, ...]

    @property
    def changed(self) -> bool:
        """Whether the command changed the event (and bumped its version)."""
        return bool(self.effects)


class LiveService:
    """The schedule, its producer and the payload store of one process, over one KV store.

    Thread-safe: every method that touches the producer holds one re-entrant lock. The service
    does not own ``kv`` (the graph may share it); closing it stays the caller's job.

    Args:
        kv: the store; the schedule and the payloads use their own ``live.*`` namespaces.
        sink: receives every trigger (see the module docstring); more with :meth:`add_sink`.
        clock: the time of HTTP commands and of the timer loop (tests pass a fake one).
        payload_retention_us: how long an ended event's payloads stay servable.
        policy: cache lifetimes of the prefetch responses.
        rng: draws the jittered cache lifetimes (default: seeded from the OS).
        sink_capacity: triggers kept per sink while it fails (:data:`~hopcast.live.sinks.
            MAX_PENDING`).

    Raises:
        ConfigError: for a non-positive retention or sink capacity.
    """

    def __init__(
        self,
        kv: KVStore,
        *,
        sink: TriggerSink | None = None,
        clock: Clock = now_us,
        payload_retention_us: int = DEFAULT_RETENTION_US,
        policy: PrefetchPolicy = DEFAULT_POLICY,
        rng: random.Random | None = None,
        sink_capacity: int = MAX_PENDING,
    ) -> None:
        self.schedule = ScheduleStore(kv)
        self.payloads = PayloadStore(kv, payload_retention_us)
        self._kv = kv
        #: Computes recommendation rows from the graph (:meth:`use_graph`); None: fixtures only.
        self.materialiser: Materialiser | None = None
        self.producer = Producer()
        self.clock = clock
        self.policy = policy
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._delivery = Delivery(self._current_stages, capacity=sink_capacity)
        #: The sinks' Prometheus series (:mod:`hopcast.live.sinks`): register it on a registry.
        self.sink_metrics = SinkCollector(self.sinks)
        if sink is not None:
            self._delivery.add(sink)
        self._watchers: list[Callable[[], None]] = []
        self._rearm = False  # a tick failed: re-arm every timer from the store first

    # -- sinks and watchers ------------------------------------------------------------------------

    def payload_for(self, trigger: Trigger) -> str | None:
        """The payload reference a trigger names (``<event>/<stage>``), or ``None``.

        A :class:`~hopcast.live.fanout.Router`'s ``payload_for``. A stage names its payload
        only if one is published for it (any segment), so a device never goes looking for
        one that does not exist; ``scheduled`` and ``prefetch`` never do, because naming a
        payload makes devices that lack it fetch within seconds, which at the opening of the
        prefetch window is the herd the window exists to avoid.
        """
        stage = trigger.stage
        if stage in (State.SCHEDULED, State.PREFETCHING):
            return None
        try:
            published = self.payloads.has_stage(trigger.event_id, stage.value, self.clock())
        except HopcastError:
            logger.exception("could not look up the payload of %s/%s", trigger.event_id, stage)
            return None
        return payload_ref(trigger.event_id, stage.value) if published else None

    def add_sink(self, sink: TriggerSink, name: str | None = None) -> Callable[[], None]:
        """Also hand every future trigger to ``sink``; returns a function that removes it.
        ``name`` labels its metrics (default: its qualified name, such as
        ``Router.publish_all``)."""
        with self._lock:
            remove = self._delivery.add(sink, name)

        def unsubscribe() -> None:
            with self._lock:
                remove()

        return unsubscribe

    def sinks(self) -> list[SinkStatus]:
        """Every sink's delivery state: queued triggers, failures, drops."""
        with self._lock:
            return self._delivery.status()

    def watch_deadline(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` whenever the next deadline may have changed (after a command, a resume
        or :meth:`poke`), from the thread that made the change; returns a function that stops
        the watching. :func:`run_timers` uses it to re-read the clock at once."""
        return self._subscribe(self._watchers, wake)

    def poke(self) -> None:
        """Make every timer loop read the clock and fire what is due now (e.g. after the clock
        was changed)."""
        with self._lock:
            watchers = list(self._watchers)
        for wake in watchers:
            wake()

    # -- the schedule ------------------------------------------------------------------------------

    def command(self, command: Command, now: int) -> CommandResult:
        """Execute an operator command and publish the triggers it causes.

        Steps: 1. apply and store it atomically (:meth:`ScheduleStore.execute`); 2. feed the
        effects to the producer (triggers, timers); 3. hand the triggers to the sinks and retire
        the payloads of events that ended or were cancelled; 4. wake the timer loops.

        Returns:
            The stored event, the triggers and the remaining effects.

        Raises:
            IllegalTransition: the event's state does not accept the command (nothing stored).
            NotFound: no such event.
            InvalidInput: malformed values (bad id, a time in the past, an end before the start).
            StorageError: the store failed; nothing is stored.
        """
        with self._lock:
            event, effects = self.schedule.execute(command, now)  # 1
            triggers = self.producer.on_effects(effects)  # 2
            self._publish(triggers, now)  # 3
        self.poke()  # 4
        return CommandResult(event, tuple(triggers), tuple(effects))

    def reschedule(
        self,
        event_id: str,
        now: int,
        *,
        starts_at: int | Literal[_Keep.KEEP] = KEEP,
        ends_at: int | Literal[_Keep.KEEP] | None = KEEP,
        delay_us: int | None = None,
    ) -> CommandResult:
        """Move an event: new times, or shift them by ``delay_us`` (negative: bring forward).

        A delay shifts the start and the end of an event that has not started, and only the end
        of a live or interrupted one (its start is history). Reading the event and executing the
        :class:`~hopcast.live.schedule.Reschedule` happen under the service's lock.

        Args:
            starts_at, ends_at: the new times (µs); :data:`KEEP` leaves one as it is, and
                ``ends_at=None`` removes the end.
            delay_us: shift instead of new times.

        Raises:
            InvalidInput: both a delay and times, neither, or a delay for a live event without
                an end; and everything :meth:`command` raises.
        """
        explicit = starts_at is not KEEP or ends_at is not KEEP
        if delay_us is not None and explicit:
            raise InvalidInput("give either a delay or new times, not both")
        if delay_us is None and not explicit:
            raise InvalidInput("give starts_at, ends_at or a delay")
        with self._lock:
            event = self.schedule.load(event_id)
            if delay_us is not None:
                started = event.state in (State.LIVE, State.INTERRUPTED)
                if started and event.ends_at is None:
                    raise InvalidInput(
                        f"live event {event_id!r} is {event.state.value} and has no end time to "
                        "delay; set one with ends_at"
                    )
                new_start = event.starts_at if started else event.starts_at + delay_us
                new_end = None if event.ends_at is None else event.ends_at + delay_us
            else:
                new_start = event.starts_at if starts_at is KEEP else starts_at
                new_end = event.ends_at if ends_at is KEEP else ends_at
            return self.command(Reschedule(event_id, new_start, new_end), now)

    def tick(self, now: int) -> list[Trigger]:
        """Hand failed sinks their queued triggers if their retry is due, then fire every
        timer due at ``now`` and publish the triggers.

        Returns:
            The triggers published.

        Raises:
            StorageError: the store failed while firing a timer. The producer drops that timer;
                the next call re-arms every timer from the stored events first, so the event
                fires then. Triggers fired before the failure within this call are not
                published (a limit of :meth:`Producer.tick`) until a restart re-announces them.
        """
        with self._lock:
            self._delivery.retry(now)
            if self._rearm:
                self._publish(self.producer.resume(self.schedule.events()), now, retire=False)
                self._rearm = False
            try:
                triggers = self.producer.tick(now, self.schedule.execute)
            except HopcastError:
                self._rearm = True
                raise
            self._publish(triggers, now)
        return triggers

    def resume(self, now: int) -> list[Trigger]:
        """Adopt the stored events at start-up: re-arm their timers, re-announce their current
        stages (same versions: receivers drop what they already applied), then fire what fell
        due while the process was down. Calling it again re-announces nothing already emitted.

        Returns:
            The triggers published, re-announcements first.

        Raises:
            StorageError: the store failed.
        """
        with self._lock:
            triggers = self.producer.resume(self.schedule.events())
            self._publish(triggers, now, retire=False)  # retired when they were first emitted
            fired = self.producer.tick(now, self.schedule.execute)
            self._publish(fired, now)
        self.poke()
        return triggers + fired

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do next (µs): the earliest pending timer or
        sink retry; None if nothing is pending."""
        with self._lock:
            due = [self.producer.next_deadline(), self._delivery.next_retry()]
            return min((at for at in due if at is not None), default=None)

    def events(self) -> list[LiveEvent]:
        """Every stored event, by id."""
        return self.schedule.events()

    def get(self, event_id: str) -> LiveEvent:
        """The stored event.

        Raises:
            NotFound: no such event.
        """
        return self.schedule.load(event_id)

    # -- payloads and prefetch ---------------------------------------------------------------------

    def materialise(
        self,
        event_id: str,
        now: int,
        segments: Iterable[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Doc:
        """Publish the fixture payloads of an event for every stage and segment, through the
        real payload store (a stand-in for recommendation rows computed from the graph).

        Args:
            segments: segment keys; None means every segment of the demo segmenter.
            progress: called with ``(entries done, entries in all)`` as the work goes.

        Returns:
            ``{"event", "version", "stages", "segments", "entries", "cardinality"}``.

        Raises:
            NotFound: no such event (create it first).
            InvalidInput: a malformed segment key.
        """
        self.schedule.load(event_id)
        wanted = demo_segmenter().segments() if segments is None else list(segments)
        # The publication version only has to grow between runs: the materialisation time does.
        done = materialise_fixture(
            self.payloads, event_id, wanted, now, version=now, progress=progress
        )
        return {
            "event": event_id,
            "version": now,
            "stages": sorted(done),
            "segments": len({s for by_segment in done.values() for s in by_segment}),
            "entries": sum(len(by_segment) for by_segment in done.values()),
            "cardinality": self.payloads.cardinality(event_id, now),
        }

    def use_graph(self, graph: Graph, **options: Any) -> Materialiser:
        """Compute recommendation rows from ``graph`` (:mod:`hopcast.live.materialise`): enables
        :meth:`materialise_graph`, :meth:`refresh_recommendations` and the member lookup of
        :meth:`segment_for`. ``options`` go to :class:`~hopcast.live.materialise.Materialiser`.

        Raises:
            ConfigError: for bad options.
        """
        from hopcast.live.materialise import Materialiser

        self.materialiser = Materialiser(graph, self.payloads, self._kv, **options)
        return self.materialiser

    def materialise_graph(
        self,
        event_id: str,
        now: int,
        *,
        node: str | None = None,
        max_segments: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Report:
        """Materialise an event's recommendation rows from the graph, for every stage and
        segment (:meth:`Materialiser.materialise <hopcast.live.materialise.Materialiser.
        materialise>`), and publish them.

        Raises:
            NotFound: no such event, or its graph node does not exist.
            InvalidInput: no graph attached (:meth:`use_graph`), no graph node for the event, or
                a bad ``max_segments``.
        """
        event = self.schedule.load(event_id)
        if self.materialiser is None:
            raise InvalidInput("this live service has no graph to materialise from")
        return self.materialiser.materialise(
            event_id,
            now,
            node=node,
            max_segments=max_segments,
            progress=progress,
            title=event.title,
        )

    def refresh_recommendations(self, now: int) -> list[Report]:
        """Re-materialise every event that is materialised from the graph and not over, if the
        graph changed materially since its last run. Call it periodically.

        Returns:
            One report per event looked at (``changed`` says whether it republished).
        """
        if self.materialiser is None:
            return []
        reports = []
        for event in self.schedule.events():
            if event.terminal:
                continue
            report = self.materialiser.refresh_if_changed(event.id, now, title=event.title)
            if report is not None:
                reports.append(report)
        return reports

    def segment_for(self, event_id: str, segment: str, now: int) -> str:
        """The segment a prefetch asks for: ``segment`` itself, unless it is a member's node id
        (``profile:12-0``, it has a ``:``): then the member's segment for the event from the
        graph materialisation (one KV get), or :data:`~hopcast.live.payloads.DEFAULT_SEGMENT`
        when the member was not placed.

        Raises:
            InvalidInput: a malformed segment.
        """
        if ":" not in segment:
            return segment
        validate_name("segment", segment)
        found = None
        if self.materialiser is not None:
            found = self.materialiser.segment_of(event_id, segment, now)
        return found or DEFAULT_SEGMENT

    def cardinality(self, event_id: str, now: int) -> Doc:
        """How many distinct payloads the origin serves for an event, overall and per stage,
        against the number of ``(stage, segment)`` entries that point at them.

        Raises:
            InvalidInput: a malformed event id.
        """
        manifest = self.payloads.manifest(event_id, now)
        return {
            "event": event_id,
            "cardinality": len({r.id for by in manifest.values() for r in by.values()}),
            "entries": sum(len(by) for by in manifest.values()),
            "stages": {
                stage: {"segments": len(by), "payloads": len({r.id for r in by.values()})}
                for stage, by in manifest.items()
            },
        }

    def manifest(
        self, event_id: str, segment: str, if_none_match: str | None, now: int
    ) -> PrefetchResponse:
        """A device's prefetch of an event (:func:`~hopcast.live.prefetch.serve_manifest`),
        with the event's prefetch window when the event is scheduled here.

        Raises:
            InvalidInput: a malformed event id or segment.
        """
        event = self.schedule.get(event_id)
        span = None
        if event is not None:
            span = window(event.starts_at, event.prefetch_lead_us, event.prefetch_opens_at)
        segment = self.segment_for(event_id, segment, now)
        return serve_manifest(
            self.payloads, event_id, segment, if_none_match, now, self._rng, span, self.policy
        )

    def payload(self, payload_id: str, if_none_match: str | None, now: int) -> PrefetchResponse:
        """A payload by id, immutable (:func:`~hopcast.live.prefetch.serve_payload`)."""
        return serve_payload(self.payloads, payload_id, if_none_match, now, self.policy)

    def stage_payload(
        self,
        event_id: str,
        stage: str | None,
        segment: str,
        if_none_match: str | None,
        now: int,
    ) -> PrefetchResponse:
        """One stage's payload for a segment (:func:`~hopcast.live.prefetch.prefetch`), the
        device's fallback fetch; ``stage=None`` means the event's current stage.

        Raises:
            NotFound: ``stage`` is None and the event is not scheduled here.
            InvalidInput: a malformed event id, stage or segment.
        """
        if stage is None:
            stage = self.schedule.load(event_id).state.value
        segment = self.segment_for(event_id, segment, now)
        return prefetch(
            self.payloads, event_id, segment, stage, if_none_match, now, self._rng, self.policy
        )

    # -- helpers -----------------------------------------------------------------------------------

    def _subscribe(self, subscribers: list[Any], item: Any) -> Callable[[], None]:
        with self._lock:
            subscribers.append(item)

        def unsubscribe() -> None:
            with self._lock:
                if item in subscribers:
                    subscribers.remove(item)

        return unsubscribe

    def _current_stages(self) -> list[Trigger]:
        """The current stage of every stored event past ``scheduled``, as the trigger that
        announced it (same version and time): what a sink that lost triggers is handed."""
        return [
            Trigger(event.id, event.state, event.stage_version, event.stage_changed_at)
            for event in self.schedule.events()
            if event.state is not State.SCHEDULED
        ]

    def _publish(self, triggers: Sequence[Trigger], now: int, *, retire: bool = True) -> None:
        """Hand ``triggers`` to every sink (:mod:`hopcast.live.sinks`), then (``retire``) let
        the payloads of events that ended or were cancelled expire after the retention."""
        if not triggers:
            return
        self._delivery.publish(triggers, now)
        for trigger in triggers:
            if retire and trigger.stage in TERMINAL:
                try:
                    self.payloads.retire(trigger.event_id, now)
                    if self.materialiser is not None:
                        self.materialiser.retire(trigger.event_id, now)
                except HopcastError:
                    logger.exception("could not retire the payloads of %s", trigger.event_id)


# -- the timer loop (the only asyncio here) --------------------------------------------------------


async def run_timers(
    service: LiveService, clock: Clock | None = None, stop: asyncio.Event | None = None
) -> None:
    """Fire the service's timers until ``stop`` is set: read the clock, :meth:`tick
    <LiveService.tick>`, sleep until the next deadline (at most :data:`MAX_TIMER_SLEEP_S`) or
    until a command or :meth:`~LiveService.poke` changes it.

    Ticks run on the loop's thread, so the sinks are called there. A failed tick is logged and
    retried after :data:`TICK_RETRY_S`; the loop only ends with ``stop`` (or cancellation).

    Args:
        clock: µs since the epoch; default the service's clock.
        stop: set it to end the loop; default: run until cancelled.
    """
    read = clock or service.clock
    if stop is None:
        stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def on_change() -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing is waiting any more
            loop.call_soon_threadsafe(wake.set)

    unwatch = service.watch_deadline(on_change)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            wake.clear()  # before reading the deadline: a change from now on wakes us
            now = read()
            try:
                service.tick(now)
            except HopcastError:
                logger.exception("firing live-event timers failed; retrying")
                delay = TICK_RETRY_S
            else:
                deadline = service.next_deadline()
                delay = MAX_TIMER_SLEEP_S
                if deadline is not None:
                    delay = min(delay, max(0, deadline - now) / SECOND)
            waking = asyncio.ensure_future(wake.wait())
            await asyncio.wait(
                {waking, stopping}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
            )
            waking.cancel()
    finally:
        stopping.cancel()
        unwatch()


# -- values for the adapters -----------------------------------------------------------------------


#: Latest schedule time and longest delay or lead (µs): the graph's bound on generation times
#: (2**62 - 1), so every stored time and every sum of two stays a signed 64-bit integer.
MAX_TIME_US: Final = (1 << 62) - 1


def _bounded(us: int, what: str) -> int:
    if not 0 <= us <= MAX_TIME_US:
        raise InvalidInput(f"{what} {_shown(us)} is outside [0, 2**62) µs")
    return us


def _shown(us: int) -> str:
    return str(us) if us.bit_length() <= 128 else f"(an integer of {us.bit_length()} bits)"


def _duration(text: int | str, what: str) -> int:
    """``parse_duration`` bounded to [0, 2**62) µs, every failure an :class:`InvalidInput`."""
    try:
        us = parse_duration(text)
    except (ValueError, OverflowError) as exc:  # OverflowError: a number beyond float range
        raise InvalidInput(f"{what}: {exc}") from None
    return _bounded(us, what)


def parse_instant(value: int | str, now: int) -> int:
    """A schedule time: µs since the epoch (an integer, or ASCII digits), ISO-8601 (UTC when it
    has no zone), or a duration such as ``10m`` meaning that long **after** ``now``; always in
    ``[0, 2**62)`` µs.

    Raises:
        InvalidInput: for anything else.
    """
    if isinstance(value, bool):
        raise InvalidInput(f"not a time: {value!r}")
    if isinstance(value, int):
        return _bounded(value, "time")
    text = value.strip() if isinstance(value, str) else ""
    if text.isascii() and text.isdigit():  # int() also reads other scripts' digits; not "0³"
        if len(text) > len(str(MAX_TIME_US)):
            raise InvalidInput(f"time {text[:40]!r}… is outside [0, 2**62) µs")
        return _bounded(int(text), "time")
    try:
        return _bounded(now + parse_duration(text), "time")
    except (ValueError, OverflowError):
        pass
    try:
        return _bounded(parse_iso(text), "time")
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"not a time: {str(value)[:80]!r} (use µs since the epoch, ISO-8601, or a duration "
            "from now such as 10m)"
        ) from None


def parse_lead(value: int | str) -> int:
    """A prefetch lead: a duration (``30m``) or µs, in ``[0, 2**62)``.

    Raises:
        InvalidInput: for anything else.
    """
    return _duration(value, "prefetch lead")


def parse_delay(value: int | str) -> int:
    """A delay: a duration (``5m``) or µs, at most ``2**62`` µs either way; a leading ``-``
    brings the event forward instead.

    Raises:
        InvalidInput: for anything else.
    """
    sign = 1
    if isinstance(value, str) and value.strip().startswith("-"):
        sign, value = -1, value.strip()[1:]
    return sign * _duration(value, "delay")


def event_doc(event: LiveEvent) -> Doc:
    """The JSON form of an event, as the HTTP API serves it and ``hopcast live --json`` prints
    it: the stored fields, ``delay_us``, the commands accepted now and the pending timer."""
    timer = next_timer(event)
    return {
        "id": event.id,
        "title": event.title,
        "state": event.state.value,
        "version": event.version,
        "starts_at": event.starts_at,
        "ends_at": event.ends_at,
        "original_starts_at": event.original_starts_at,
        "delay_us": event.delay_us,
        "prefetch_lead_us": event.prefetch_lead_us,
        "prefetch_opens_at": event.prefetch_opens_at,
        "created_at": event.created_at,
        "updated_at": event.updated_at,
        "stage_version": event.stage_version,
        "stage_changed_at": event.stage_changed_at,
        "prefetch_opened_at": event.prefetch_opened_at,
        "went_live_at": event.went_live_at,
        "interrupted_at": event.interrupted_at,
        "ended_at": event.ended_at,
        "cancelled_at": event.cancelled_at,
        "terminal": event.terminal,
        "accepts": [kind.value for kind in accepted_inputs(event.state)],
        "next_timer": None if timer is None else {"at": timer.at, "reason": timer.reason.value},
        "history": [
            {
                "version": h.version,
                "input": h.input.value,
                "from": None if h.from_state is None else h.from_state.value,
                "to": h.to_state.value,
                "at": h.at,
            }
            for h in event.history
        ],
    }


def trigger_doc(trigger: Trigger) -> Doc:
    """The JSON form of a trigger: ``{event, stage, version, ts}``."""
    return {
        "event": trigger.event_id,
        "stage": trigger.stage.value,
        "version": trigger.version,
        "ts": trigger.ts,
    }


def result_doc(result: CommandResult) -> Doc:
    """A command's answer: the event's JSON form plus ``triggers``, what the command emitted."""
    return event_doc(result.event) | {"triggers": [trigger_doc(t) for t in result.triggers]}

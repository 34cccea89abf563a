"""Timed triggers: the schedule's effects in, broadcast triggers and timer deadlines out.

The producer is pure: it never reads the clock, sleeps or sends. It holds, per event, the one
pending timer the schedule asked for and the version of the last trigger it emitted. An adapter
(the gateway process, later) drives it with a short loop::

    publish(producer.resume(store.events()))                         # on start
    while True:
        sleep until producer.next_deadline() or until a command arrives
        on a command:  event, effects = store.execute(command, now)
                       publish(producer.on_effects(effects))
        on a deadline: publish(producer.tick(now, store.execute))

Guarantees:

* **One logical trigger per stage transition.** A :class:`Trigger` is identified by
  ``(event_id, version)``; the producer emits a version at most once and never one older than
  the newest it emitted for that event (devices only need the newest stage). Feeding the same
  effects twice emits nothing the second time.
* **At least once across restarts.** :meth:`Producer.resume` re-announces the current stage of
  every stored event with its original version and time, so a trigger lost in a crash between
  storing the event and publishing is still delivered. Receivers (router, gateway, device)
  must therefore apply triggers idempotently by ``(event_id, version)``.
* **Re-timing.** A delay arrives as ``TimerCancelled`` + ``TimerSet``; the old deadline is
  dropped and nothing fires before the new one. A timer that fires for a time the schedule has
  since moved (its effects were lost) feeds a :class:`~hopcast.live.schedule.Tick` that the
  schedule ignores, and the event's real timer is re-armed from the event the feed returns.

One producer per schedule: the timers of an event must not be armed in two processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from hopcast.live.schedule import (
    Effect,
    LiveEvent,
    Persist,
    Rescheduled,
    StageChanged,
    State,
    Tick,
    TimerCancelled,
    TimerSet,
    next_timer,
)

#: Feeds a fired timer's tick to the schedule at ``now``, stores the result and returns the
#: stored event and the effects left to perform: :meth:`ScheduleStore.execute
#: <hopcast.live.schedule_store.ScheduleStore.execute>` has this shape.
Feed = Callable[[Tick, int], tuple[LiveEvent, Iterable[Effect]]]


@dataclass(frozen=True, slots=True)
class Trigger:
    """The tiny broadcast: event ``event_id`` entered ``stage`` at ``ts`` (µs), as ``version``.

    On the wire (``live/messages.py``) it becomes ``{event, stage: stage.value, version, ts}``.
    """

    event_id: str
    stage: State
    version: int
    ts: int


class Producer:
    """Pending timers and emitted versions, per event. Not thread-safe: one loop drives it."""

    def __init__(self) -> None:
        self._timers: dict[str, TimerSet] = {}
        self._emitted: dict[str, int] = {}  # event id -> newest trigger version emitted
        self._seen: dict[str, int] = {}  # event id -> newest event version seen in effects
        self._carry: list[Trigger] = []  # produced by a tick that then failed: returned next

    # --- inputs --------------------------------------------------------------------------------

    def on_effects(self, effects: Iterable[Effect]) -> list[Trigger]:
        """Take the effects of one :func:`~hopcast.live.schedule.apply`, once they are stored.

        ``StageChanged`` becomes a :class:`Trigger` unless its version was already emitted (or
        a newer one was); ``TimerSet`` replaces the event's pending timer and
        ``TimerCancelled`` removes it if it is still the same one, both unless they are older
        than effects already seen for the event. ``Persist`` and ``Rescheduled`` only advance
        the newest version seen (they are performed by the store and informational).

        Returns:
            The triggers to publish, in order.
        """
        triggers: list[Trigger] = []
        for effect in effects:
            match effect:
                case StageChanged(event_id, stage, version, ts):
                    if version > self._emitted.get(event_id, 0):
                        self._emitted[event_id] = version
                        triggers.append(Trigger(event_id, stage, version, ts))
                    self._see(event_id, version)
                case TimerSet(event_id, _, _, version):
                    if self._see(event_id, version):
                        self._timers[event_id] = effect
                case TimerCancelled(event_id, at, reason, version):
                    pending = self._timers.get(event_id)
                    fresh = self._see(event_id, version)
                    if (
                        fresh
                        and pending is not None
                        and (pending.at, pending.reason) == (at, reason)
                    ):
                        del self._timers[event_id]
                case Persist(event):
                    self._see(event.id, event.version)
                case Rescheduled(event_id, version):
                    self._see(event_id, version)
        return triggers

    def tick(self, now: int, feed: Feed) -> list[Trigger]:
        """Fire every timer due at ``now`` through ``feed`` and return the triggers.

        Steps: 1. pop the earliest due timer; 2. ``feed`` its tick (the schedule applies and
        stores it); 3. take the effects (triggers); 4. arm the timer the returned event needs,
        so a timer whose effects were lost heals here; repeat. Nothing is due after an apply,
        so the loop ends.

        Raises:
            Whatever ``feed`` raises. The timer being fired is dropped and the later ones stay
            pending; a restart (:meth:`resume`) re-arms timers from the stored events. Triggers
            already produced by this call are not lost: the next call returns them first.
        """
        triggers, self._carry = self._carry, []
        while (timer := self._earliest()) is not None and timer.at <= now:
            del self._timers[timer.event_id]  # 1
            try:
                event, effects = feed(Tick(timer.event_id), now)  # 2
            except BaseException:
                self._carry = triggers
                raise
            triggers += self.on_effects(effects)  # 3
            self._adopt_timer(event)  # 4
        return triggers

    def resume(self, events: Iterable[LiveEvent]) -> list[Trigger]:
        """Adopt stored events after a (re)start: re-arm their timers, re-announce their stages.

        Each event gets the timer its state needs (:func:`~hopcast.live.schedule.next_timer`;
        one already due fires on the next :meth:`tick`). Every event past SCHEDULED is
        re-announced with the version and time of its last stage change, i.e. the very trigger
        that announced it, unless this producer already emitted that version or a newer one.

        Returns:
            The re-announcements, in event-id order.
        """
        triggers: list[Trigger] = []
        for event in sorted(events, key=lambda e: e.id):
            if not self._adopt_timer(event) or event.state is State.SCHEDULED:
                continue
            if event.stage_version > self._emitted.get(event.id, 0):
                self._emitted[event.id] = event.stage_version
                triggers.append(
                    Trigger(event.id, event.state, event.stage_version, event.stage_changed_at)
                )
        return triggers

    # --- queries -------------------------------------------------------------------------------

    def next_deadline(self) -> int | None:
        """When the earliest pending timer is due (µs), or None: how long the adapter sleeps."""
        timer = self._earliest()
        return None if timer is None else timer.at

    @property
    def timers(self) -> Mapping[str, TimerSet]:
        """The pending timer of each event that has one (read-only view)."""
        return MappingProxyType(self._timers)

    def emitted_version(self, event_id: str) -> int | None:
        """The newest trigger version emitted for the event, or None."""
        return self._emitted.get(event_id)

    # --- helpers -------------------------------------------------------------------------------

    def _see(self, event_id: str, version: int) -> bool:
        """Record ``version`` as seen; False if a newer one was already seen (a stale effect)."""
        newest = self._seen.get(event_id, 0)
        if version < newest:
            return False
        self._seen[event_id] = version
        return True

    def _adopt_timer(self, event: LiveEvent) -> bool:
        """Arm the timer ``event`` needs, unless a newer version was seen; returns whether."""
        if not self._see(event.id, event.version):
            return False
        timer = next_timer(event)
        if timer is None:
            self._timers.pop(event.id, None)
        else:
            self._timers[event.id] = timer
        return True

    def _earliest(self) -> TimerSet | None:
        # A linear scan: a deployment has dozens of scheduled events, not millions.
        return min(self._timers.values(), key=_order, default=None)


def _order(timer: TimerSet) -> tuple[int, str]:
    return (timer.at, timer.event_id)

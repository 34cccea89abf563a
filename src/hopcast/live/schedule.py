"""The live-event schedule: a state machine written as one table, pure, returning effects.

Rules of this file:

* :data:`TRANSITIONS` is the whole state machine. Every change of an event goes through it, one
  step at a time; an input without an entry for the event's state raises
  :class:`IllegalTransition` and changes nothing.
* :func:`apply` is pure: it never reads the clock (``now`` is an argument, µs since the epoch),
  never performs I/O, and returns the new event and a list of :data:`Effect` values that **the
  caller performs** (persist, broadcast the stage, arm or disarm a timer).
* Every accepted input that changes anything bumps :attr:`LiveEvent.version` by one; an input
  that changes nothing (a timer that fired early or twice, a reschedule to the same times) is
  accepted, returns the event unchanged and no effects.

States (the value is the stage name devices see); :data:`TRANSITIONS` is authoritative::

    SCHEDULED ──window opens──▶ PREFETCHING ──start time | start now──▶ LIVE
    SCHEDULED ──start time | start now──▶ LIVE                 (the window never opened)
    LIVE ──interrupt──▶ INTERRUPTED ──resume──▶ LIVE
    LIVE | INTERRUPTED ──end time | end now──▶ ENDED
    SCHEDULED | PREFETCHING | LIVE | INTERRUPTED ──cancel──▶ CANCELLED    (reschedule: same state)

Clock inputs (:data:`InputKind.WINDOW_OPENS`, ``START_TIME``, ``END_TIME``) are not sent by
anyone: a :class:`Tick` (the producer's timer fired) and every other command first let the clock
catch up with ``now``, so the event is always judged in the state it is in *at* ``now``. A
SCHEDULED event whose start time has come goes straight to LIVE: a prefetch window that was
missed entirely (a server down through it) is not worth announcing.

**Delays are not a state.** A delay is a :class:`Reschedule` to a later start: it re-times the
start, the prefetch window (while it has not opened yet) and the timers, and shows as
:attr:`LiveEvent.delay_us` and as a :class:`Rescheduled` effect. A resting DELAYED state would
duplicate SCHEDULED and PREFETCHING (a delayed event is still one or the other) and double the
table. Once the window has opened it stays open: a delay during it moves only its end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, ClassVar

from hopcast.durations import DAY
from hopcast.errors import IllegalTransition as IllegalTransition  # re-exported: part of this API
from hopcast.errors import InvalidInput, NotFound


class State(StrEnum):
    """Where a live event is. The value is the stage name sent to devices."""

    SCHEDULED = "scheduled"
    PREFETCHING = "prefetch"
    LIVE = "live"
    INTERRUPTED = "interrupted"
    ENDED = "ended"
    CANCELLED = "cancelled"


class InputKind(StrEnum):
    """What can happen to an event: operator commands and clock inputs."""

    CREATE = "create"
    RESCHEDULE = "reschedule"
    START_NOW = "start_now"
    END_NOW = "end_now"
    CANCEL = "cancel"
    INTERRUPT = "interrupt"
    RESUME = "resume"
    # Clock inputs: produced by the clock catching up, never sent by a caller.
    WINDOW_OPENS = "window_opens"
    START_TIME = "start_time"
    END_TIME = "end_time"


#: The state machine. ``Create`` is not here: it is the one input accepted without an event.
TRANSITIONS: dict[tuple[State, InputKind], State] = {
    (State.SCHEDULED, InputKind.WINDOW_OPENS): State.PREFETCHING,
    (State.SCHEDULED, InputKind.START_TIME): State.LIVE,
    (State.SCHEDULED, InputKind.START_NOW): State.LIVE,
    (State.SCHEDULED, InputKind.RESCHEDULE): State.SCHEDULED,
    (State.SCHEDULED, InputKind.CANCEL): State.CANCELLED,
    (State.PREFETCHING, InputKind.START_TIME): State.LIVE,
    (State.PREFETCHING, InputKind.START_NOW): State.LIVE,
    (State.PREFETCHING, InputKind.RESCHEDULE): State.PREFETCHING,
    (State.PREFETCHING, InputKind.CANCEL): State.CANCELLED,
    (State.LIVE, InputKind.END_TIME): State.ENDED,
    (State.LIVE, InputKind.END_NOW): State.ENDED,
    (State.LIVE, InputKind.INTERRUPT): State.INTERRUPTED,
    (State.LIVE, InputKind.RESCHEDULE): State.LIVE,
    (State.LIVE, InputKind.CANCEL): State.CANCELLED,
    (State.INTERRUPTED, InputKind.RESUME): State.LIVE,
    (State.INTERRUPTED, InputKind.END_TIME): State.ENDED,
    (State.INTERRUPTED, InputKind.END_NOW): State.ENDED,
    (State.INTERRUPTED, InputKind.RESCHEDULE): State.INTERRUPTED,
    (State.INTERRUPTED, InputKind.CANCEL): State.CANCELLED,
}

#: States no input leaves.
TERMINAL: frozenset[State] = frozenset({State.ENDED, State.CANCELLED})

#: Inputs that only the clock produces (the ``reason`` of a timer).
CLOCK_INPUTS: frozenset[InputKind] = frozenset(
    {InputKind.WINDOW_OPENS, InputKind.START_TIME, InputKind.END_TIME}
)

#: Longest prefetch lead. Devices prefetch while members browse in the hours before an event; a
#: payload fetched more than a day ahead outlives device caches and its rows go stale.
MAX_PREFETCH_LEAD_US = DAY

#: Transitions kept in :attr:`LiveEvent.history` (oldest dropped first). An event sees a handful
#: of stage changes and rarely more than a few delays; 32 entries keep the stored record near 2 KB.
HISTORY_LIMIT = 32

#: Longest title, in characters: a display name, not a description; keeps records small.
MAX_TITLE_CHARS = 200

#: Event ids name broadcast channels, URL paths and KV keys: ASCII letters, digits and ``._:-``,
#: starting with a letter or digit, at most 64 characters so frames and keys stay small.
EVENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def _illegal(event_id: str, state: State | None, kind: InputKind) -> IllegalTransition:
    """The :class:`IllegalTransition` for an input the table has no entry for."""
    if state is None:
        message = f"live event {event_id!r} already exists; create only makes new events"
    else:
        accepted = ", ".join(k.value for k in accepted_inputs(state)) or "nothing"
        message = (
            f"live event {event_id!r} cannot {kind.value} while {state.value} "
            f"(accepted now: {accepted})"
        )
    return IllegalTransition(event_id, None if state is None else state.value, kind.value, message)


# --- the event ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One accepted change: the input, the states before and after, the version it made."""

    version: int
    input: InputKind
    from_state: State | None
    to_state: State
    at: int


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A live event as the schedule knows it. Immutable; :func:`apply` returns new ones.

    Times are µs since the epoch. ``starts_at``/``ends_at`` are the current schedule (a start
    now or end now rewrites them to the moment it happened); the ``*_at`` stage timestamps
    record when a stage was entered. The prefetch window is ``[prefetch_opens_at, starts_at)``.
    ``stage_version``/``stage_changed_at`` are the version and time of the last state change:
    together with ``state`` they are the trigger that announced it.
    """

    id: str
    title: str
    state: State
    version: int
    starts_at: int
    ends_at: int | None
    prefetch_lead_us: int
    prefetch_opens_at: int
    original_starts_at: int
    created_at: int
    updated_at: int
    stage_version: int
    stage_changed_at: int
    prefetch_opened_at: int | None = None
    went_live_at: int | None = None
    interrupted_at: int | None = None
    ended_at: int | None = None
    cancelled_at: int | None = None
    history: tuple[HistoryEntry, ...] = ()

    @property
    def delay_us(self) -> int:
        """How far the start has moved since creation (negative: it was brought forward)."""
        return self.starts_at - self.original_starts_at

    @property
    def terminal(self) -> bool:
        """Whether no input can change the event any more."""
        return self.state in TERMINAL


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Create:
    """Schedule a new event. Its prefetch window opens ``prefetch_lead_us`` before the start.

    ``starts_at`` must not be in the past (a start at ``now`` goes live at once); ``ends_at``
    (None: the event ends only by command) must follow both the start and ``now``.
    """

    kind: ClassVar[InputKind] = InputKind.CREATE
    event_id: str
    title: str
    starts_at: int
    ends_at: int | None
    prefetch_lead_us: int


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Replace the schedule: a later start is a delay, an earlier one brings it forward.

    Both times are given (like an HTTP PUT); ``ends_at=None`` removes the end. Before the start
    ``starts_at`` must not be in the past; once live only the end can move, so ``starts_at``
    must equal the event's.
    """

    kind: ClassVar[InputKind] = InputKind.RESCHEDULE
    event_id: str
    starts_at: int
    ends_at: int | None


@dataclass(frozen=True, slots=True)
class StartNow:
    """Go live at once, before the scheduled start (skipping the window if it has not opened)."""

    kind: ClassVar[InputKind] = InputKind.START_NOW
    event_id: str


@dataclass(frozen=True, slots=True)
class EndNow:
    """End a live or interrupted event at once (an early end)."""

    kind: ClassVar[InputKind] = InputKind.END_NOW
    event_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Call the event off; devices show it as cancelled."""

    kind: ClassVar[InputKind] = InputKind.CANCEL
    event_id: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Pause a live event (a stoppage); :class:`Resume` makes it live again."""

    kind: ClassVar[InputKind] = InputKind.INTERRUPT
    event_id: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Make an interrupted event live again."""

    kind: ClassVar[InputKind] = InputKind.RESUME
    event_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer fired: let the event's clock catch up with ``now`` (the time :func:`apply` gets).

    Never illegal: a tick with nothing due (early, repeated, or for a finished event) is a no-op.
    """

    event_id: str


Command = Create | Reschedule | StartNow | EndNow | Cancel | Interrupt | Resume | Tick


# --- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    """Store ``event`` (LWW on its version). Always first: perform it before the others."""

    event: LiveEvent


@dataclass(frozen=True, slots=True)
class StageChanged:
    """The event entered ``stage``: the tiny trigger broadcast to devices, once per version."""

    event_id: str
    stage: State
    version: int
    ts: int


@dataclass(frozen=True, slots=True)
class Rescheduled:
    """The schedule moved (``delay_us > 0``: a delay). Informational; no stage changed."""

    event_id: str
    version: int
    starts_at: int
    ends_at: int | None
    prefetch_opens_at: int
    previous_starts_at: int
    previous_ends_at: int | None
    ts: int

    @property
    def delay_us(self) -> int:
        """How far this change moved the start (negative: brought forward)."""
        return self.starts_at - self.previous_starts_at


@dataclass(frozen=True, slots=True)
class TimerSet:
    """Arm the event's timer: at ``at``, feed :class:`Tick` to :func:`apply`.

    An event has at most one pending timer; a new one replaces it. ``reason`` is the clock
    input it will cause; ``version`` is the event's version when the timer was set.
    """

    event_id: str
    at: int
    reason: InputKind
    version: int


@dataclass(frozen=True, slots=True)
class TimerCancelled:
    """Disarm the pending timer ``(at, reason)`` of the event, if it is still pending."""

    event_id: str
    at: int
    reason: InputKind
    version: int


Effect = Persist | StageChanged | Rescheduled | TimerSet | TimerCancelled


# --- the machine -------------------------------------------------------------------------------


def apply(event: LiveEvent | None, command: Command, now: int) -> tuple[LiveEvent, list[Effect]]:
    """Apply one input to an event at time ``now``.

    Steps: 1. validate the input; 2. let the clock catch up with ``now``; 3. apply the command
    through :data:`TRANSITIONS`; 4. let the clock catch up again (a new start may be due at
    once); 5. derive the timer effects from the timers before and after.

    Args:
        event: the stored event, or None if ``command`` is a :class:`Create`.
        command: an operator command or a :class:`Tick`.
        now: the current time, µs since the epoch.

    Returns:
        The new event and the effects the caller must perform, in order: :class:`Persist`
        first, then the :class:`StageChanged` / :class:`Rescheduled` of each step, then
        :class:`TimerCancelled` / :class:`TimerSet`. If nothing changed: ``event`` itself and
        ``[]``. If the store refuses the Persist (a newer version is stored), drop the other
        effects and apply the command again to the stored event.

    Raises:
        IllegalTransition: the command is not accepted in the event's state (including a
            Create for an event that exists). ``event`` is unchanged.
        NotFound: ``event`` is None and the command is not a Create.
        InvalidInput: malformed values (bad id, times in the past, an end before the start, a
            command for another event).
    """
    out: list[Effect] = []
    if isinstance(command, Create):
        if event is not None:
            raise _illegal(command.event_id, None, InputKind.CREATE)
        current = _catch_up(_create(command, now), now, out)  # 1, 2
        before: TimerSet | None = None
    else:
        if event is None:
            raise NotFound(f"no live event {command.event_id!r}")
        if command.event_id != event.id:
            raise InvalidInput(f"command for {command.event_id!r} applied to event {event.id!r}")
        before = next_timer(event)
        current = _catch_up(event, now, out)  # 2
        match command:  # 1, 3 (each command validates its own values)
            case Tick():
                pass
            case Reschedule():
                current = _reschedule(current, command, now, out)
            case StartNow():  # the window, if it never opened, shrinks to nothing
                opens_at = min(current.prefetch_opens_at, now)
                current = _step(
                    current,
                    InputKind.START_NOW,
                    now,
                    out,
                    starts_at=now,
                    prefetch_opens_at=opens_at,
                )
            case EndNow():
                current = _step(current, InputKind.END_NOW, now, out, ends_at=now)
            case Cancel() | Interrupt() | Resume():
                current = _step(current, command.kind, now, out)
            case _:
                raise InvalidInput(f"not a live-event command: {command!r}")
        current = _catch_up(current, now, out)  # 4
        if current is event:
            return event, []
    return current, [Persist(current), *out, *_timer_effects(before, current, now)]  # 5


def next_timer(event: LiveEvent) -> TimerSet | None:
    """The timer the event needs in its state (at most one), or None.

    A restart re-arms timers from stored events with this; the result never depends on when it
    is asked.
    """
    match event.state:
        case State.SCHEDULED if event.prefetch_opens_at < event.starts_at:
            return TimerSet(
                event.id, event.prefetch_opens_at, InputKind.WINDOW_OPENS, event.version
            )
        case State.SCHEDULED | State.PREFETCHING:
            return TimerSet(event.id, event.starts_at, InputKind.START_TIME, event.version)
        case State.LIVE | State.INTERRUPTED if event.ends_at is not None:
            return TimerSet(event.id, event.ends_at, InputKind.END_TIME, event.version)
        case _:
            return None


def accepted_inputs(state: State) -> list[InputKind]:
    """The operator commands accepted in ``state`` (for consoles and error messages)."""
    return [k for (s, k) in TRANSITIONS if s is state and k not in CLOCK_INPUTS]


# --- helpers -----------------------------------------------------------------------------------


def _due(event: LiveEvent, now: int) -> InputKind | None:
    """The clock input due at ``now`` in the event's state, if any (the furthest one wins)."""
    match event.state:
        case State.SCHEDULED | State.PREFETCHING if now >= event.starts_at:
            return InputKind.START_TIME
        case State.SCHEDULED if now >= event.prefetch_opens_at:
            return InputKind.WINDOW_OPENS
        case State.LIVE | State.INTERRUPTED if event.ends_at is not None and now >= event.ends_at:
            return InputKind.END_TIME
        case _:
            return None


def _catch_up(event: LiveEvent, now: int, out: list[Effect]) -> LiveEvent:
    """Feed the clock inputs due at ``now`` one step at a time (at most three)."""
    while (kind := _due(event, now)) is not None:
        event = _step(event, kind, now, out)
    return event


def _timer_effects(before: TimerSet | None, event: LiveEvent, now: int) -> list[Effect]:
    """Disarm the old timer (unless it has fired: ``at <= now``) and arm the new one, if they
    differ. Both carry the event's new version."""
    after = next_timer(event)
    if _when(after) == _when(before):
        return []
    out: list[Effect] = []
    if before is not None and before.at > now:
        out.append(TimerCancelled(event.id, before.at, before.reason, event.version))
    if after is not None:
        out.append(after)
    return out


def _when(timer: TimerSet | None) -> tuple[int, InputKind] | None:
    return None if timer is None else (timer.at, timer.reason)


#: The stage timestamp set when a state is entered (LIVE keeps its first time across resumes).
_STAGE_FIELD: dict[State, str] = {
    State.PREFETCHING: "prefetch_opened_at",
    State.LIVE: "went_live_at",
    State.INTERRUPTED: "interrupted_at",
    State.ENDED: "ended_at",
    State.CANCELLED: "cancelled_at",
}


def _step(
    event: LiveEvent, kind: InputKind, now: int, out: list[Effect], **changes: Any
) -> LiveEvent:
    """Take one transition from the table, bump the version, record it; raise if illegal."""
    target = TRANSITIONS.get((event.state, kind))
    if target is None:
        raise _illegal(event.id, event.state, kind)
    version = event.version + 1
    entry = HistoryEntry(version, kind, event.state, target, now)
    changes.update(
        state=target,
        version=version,
        updated_at=now,
        history=(*event.history, entry)[-HISTORY_LIMIT:],
    )
    if target is not event.state:
        changes.update(stage_version=version, stage_changed_at=now)
        field = _STAGE_FIELD[target]
        if getattr(event, field) is None or target is not State.LIVE:
            changes[field] = now
        out.append(StageChanged(event.id, target, version, now))
    return replace(event, **changes)


#: Latest start or end (µs): the graph's bound on times, so stored times and their sums stay
#: signed 64-bit integers.
MAX_TIME_US = (1 << 62) - 1


def _check_times(starts_at: int, ends_at: int | None, now: int, *, started: bool) -> None:
    if not _is_int(starts_at) or not 0 <= starts_at <= MAX_TIME_US:
        raise InvalidInput(f"starts_at must be µs since the epoch in [0, 2**62), got {starts_at!r}")
    if not started and starts_at < now:
        raise InvalidInput(
            f"starts_at {starts_at} is in the past (now is {now}); use start-now to start at once"
        )
    if ends_at is not None:
        if not _is_int(ends_at) or not 0 <= ends_at <= MAX_TIME_US:
            raise InvalidInput(
                f"ends_at must be µs since the epoch in [0, 2**62) or null, got {ends_at!r}"
            )
        if ends_at <= starts_at:
            raise InvalidInput(f"ends_at {ends_at} must come after starts_at {starts_at}")
        if ends_at <= now:
            raise InvalidInput(
                f"ends_at {ends_at} is not in the future (now is {now}); use end-now to end at once"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _create(command: Create, now: int) -> LiveEvent:
    if not isinstance(command.event_id, str) or not EVENT_ID.fullmatch(command.event_id):
        raise InvalidInput(
            f"event id {command.event_id!r} must be 1-64 of A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit"
        )
    title = command.title.strip() if isinstance(command.title, str) else ""
    if not title or len(title) > MAX_TITLE_CHARS:
        raise InvalidInput(f"title must be 1-{MAX_TITLE_CHARS} characters")
    lead = command.prefetch_lead_us
    if not _is_int(lead) or not 0 <= lead <= MAX_PREFETCH_LEAD_US:
        raise InvalidInput(f"prefetch_lead_us must be 0..{MAX_PREFETCH_LEAD_US}, got {lead!r}")
    _check_times(command.starts_at, command.ends_at, now, started=False)
    return LiveEvent(
        id=command.event_id,
        title=title,
        state=State.SCHEDULED,
        version=1,
        starts_at=command.starts_at,
        ends_at=command.ends_at,
        prefetch_lead_us=lead,
        prefetch_opens_at=max(command.starts_at - lead, now),
        original_starts_at=command.starts_at,
        created_at=now,
        updated_at=now,
        stage_version=1,
        stage_changed_at=now,
        history=(HistoryEntry(1, InputKind.CREATE, None, State.SCHEDULED, now),),
    )


def _reschedule(event: LiveEvent, command: Reschedule, now: int, out: list[Effect]) -> LiveEvent:
    if (event.state, InputKind.RESCHEDULE) not in TRANSITIONS:
        raise _illegal(event.id, event.state, InputKind.RESCHEDULE)
    started = event.state in (State.LIVE, State.INTERRUPTED)
    if started and command.starts_at != event.starts_at:
        raise InvalidInput(
            f"live event {event.id!r} started at {event.starts_at}; only its end can move"
        )
    _check_times(command.starts_at, command.ends_at, now, started=started)
    if (command.starts_at, command.ends_at) == (event.starts_at, event.ends_at):
        return event
    opens_at = event.prefetch_opens_at
    if event.state is State.SCHEDULED:
        opens_at = max(command.starts_at - event.prefetch_lead_us, now)
    new = _step(
        event,
        InputKind.RESCHEDULE,
        now,
        out,
        starts_at=command.starts_at,
        ends_at=command.ends_at,
        prefetch_opens_at=opens_at,
    )
    moved = (new.starts_at, new.ends_at, new.prefetch_opens_at, event.starts_at, event.ends_at)
    out.append(Rescheduled(event.id, new.version, *moved, now))
    return new

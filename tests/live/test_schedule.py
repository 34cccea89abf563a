"""The live-event state machine: the whole event and every effect are checked after each step.

``changed(before, after)`` returns the fields that differ, so each step asserts exactly what
moved and that nothing else did.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopcast.durations import HOUR, MINUTE, SECOND
from hopcast.errors import InvalidInput, NotFound
from hopcast.live.schedule import (
    CLOCK_INPUTS,
    HISTORY_LIMIT,
    MAX_PREFETCH_LEAD_US,
    TERMINAL,
    TRANSITIONS,
    Cancel,
    Command,
    Create,
    EndNow,
    HistoryEntry,
    IllegalTransition,
    InputKind,
    Interrupt,
    LiveEvent,
    Persist,
    Reschedule,
    Rescheduled,
    Resume,
    StageChanged,
    StartNow,
    State,
    Tick,
    TimerCancelled,
    TimerSet,
    accepted_inputs,
    apply,
    next_timer,
)

ID = "final-2025"
T0 = 1_700_000_000_000_000  # creation time
START = T0 + HOUR
END = START + 2 * HOUR
LEAD = 10 * MINUTE
OPENS = START - LEAD

K = InputKind


def create(now: int = T0, **fields: Any) -> tuple[LiveEvent, list[Any]]:
    args: dict[str, Any] = dict(
        event_id=ID, title="The Final", starts_at=START, ends_at=END, prefetch_lead_us=LEAD
    )
    args.update(fields)
    return apply(None, Create(**args), now)


def changed(before: LiveEvent, after: LiveEvent) -> dict[str, Any]:
    """The fields (history excluded) whose values differ, with their new values."""
    return {
        f.name: getattr(after, f.name)
        for f in dataclasses.fields(LiveEvent)
        if f.name != "history" and getattr(before, f.name) != getattr(after, f.name)
    }


def steps(event: LiveEvent) -> list[tuple[int, InputKind, State | None, State, int]]:
    return [(h.version, h.input, h.from_state, h.to_state, h.at) for h in event.history]


def event_in(state: State) -> LiveEvent:
    """A fresh event brought to ``state`` through the public inputs."""
    event, _ = create()
    path: dict[State, list[tuple[Command, int]]] = {
        State.SCHEDULED: [],
        State.PREFETCHING: [(Tick(ID), OPENS)],
        State.LIVE: [(Tick(ID), OPENS), (Tick(ID), START)],
        State.INTERRUPTED: [(Tick(ID), OPENS), (Tick(ID), START), (Interrupt(ID), START + 1)],
        State.ENDED: [(Tick(ID), OPENS), (Tick(ID), START), (Tick(ID), END)],
        State.CANCELLED: [(Cancel(ID), T0 + 1)],
    }
    for command, now in path[state]:
        event, _ = apply(event, command, now)
    assert event.state is state
    return event


def now_for(state: State) -> int:
    """A moment at which an event in ``state`` (from :func:`event_in`) has nothing due."""
    return {
        State.SCHEDULED: T0 + 2,
        State.PREFETCHING: OPENS + 1,
        State.LIVE: START + 2,
        State.INTERRUPTED: START + 2,
        State.ENDED: END + 1,
        State.CANCELLED: T0 + 2,
    }[state]


# --- creation and the happy path --------------------------------------------------------------


def test_create_schedules_the_event_and_arms_the_prefetch_timer() -> None:
    event, effects = create()
    assert event == LiveEvent(
        id=ID,
        title="The Final",
        state=State.SCHEDULED,
        version=1,
        starts_at=START,
        ends_at=END,
        prefetch_lead_us=LEAD,
        prefetch_opens_at=OPENS,
        original_starts_at=START,
        created_at=T0,
        updated_at=T0,
        stage_version=1,
        stage_changed_at=T0,
        history=(HistoryEntry(1, K.CREATE, None, State.SCHEDULED, T0),),
    )
    assert effects == [Persist(event), TimerSet(ID, OPENS, K.WINDOW_OPENS, 1)]
    assert event.delay_us == 0
    assert not event.terminal


def test_the_happy_path_opens_the_window_then_goes_live_then_ends() -> None:
    created, _ = create()

    prefetching, effects = apply(created, Tick(ID), OPENS)
    assert changed(created, prefetching) == {
        "state": State.PREFETCHING,
        "version": 2,
        "updated_at": OPENS,
        "stage_version": 2,
        "stage_changed_at": OPENS,
        "prefetch_opened_at": OPENS,
    }
    assert effects == [
        Persist(prefetching),
        StageChanged(ID, State.PREFETCHING, 2, OPENS),
        TimerSet(ID, START, K.START_TIME, 2),
    ]

    live, effects = apply(prefetching, Tick(ID), START + 7)
    assert changed(prefetching, live) == {
        "state": State.LIVE,
        "version": 3,
        "updated_at": START + 7,
        "stage_version": 3,
        "stage_changed_at": START + 7,
        "went_live_at": START + 7,
    }
    assert effects == [
        Persist(live),
        StageChanged(ID, State.LIVE, 3, START + 7),
        TimerSet(ID, END, K.END_TIME, 3),
    ]

    ended, effects = apply(live, Tick(ID), END)
    assert changed(live, ended) == {
        "state": State.ENDED,
        "version": 4,
        "updated_at": END,
        "stage_version": 4,
        "stage_changed_at": END,
        "ended_at": END,
    }
    assert effects == [Persist(ended), StageChanged(ID, State.ENDED, 4, END)]
    assert ended.terminal
    assert next_timer(ended) is None
    assert steps(ended) == [
        (1, K.CREATE, None, State.SCHEDULED, T0),
        (2, K.WINDOW_OPENS, State.SCHEDULED, State.PREFETCHING, OPENS),
        (3, K.START_TIME, State.PREFETCHING, State.LIVE, START + 7),
        (4, K.END_TIME, State.LIVE, State.ENDED, END),
    ]


@pytest.mark.parametrize("state", list(State))
def test_a_tick_with_nothing_due_returns_the_same_event_and_no_effects(state: State) -> None:
    event = event_in(state)
    assert apply(event, Tick(ID), now_for(state)) == (event, [])
    assert apply(event, Tick(ID), now_for(state)) == (event, [])  # and again


def test_an_event_without_an_end_stays_live_with_no_timer() -> None:
    event, _ = create(ends_at=None)
    event, _ = apply(event, Tick(ID), OPENS)
    live, effects = apply(event, Tick(ID), START)
    assert live.state is State.LIVE
    assert effects == [Persist(live), StageChanged(ID, State.LIVE, 3, START)]
    assert next_timer(live) is None
    assert apply(live, Tick(ID), START + 100 * HOUR) == (live, [])


def test_a_create_inside_the_lead_opens_the_window_at_once() -> None:
    now = START - LEAD // 2
    event, effects = create(now=now)
    assert (event.state, event.version, event.prefetch_opens_at) == (State.PREFETCHING, 2, now)
    assert (event.prefetch_opened_at, event.stage_version, event.stage_changed_at) == (now, 2, now)
    assert effects == [
        Persist(event),
        StageChanged(ID, State.PREFETCHING, 2, now),
        TimerSet(ID, START, K.START_TIME, 2),
    ]


def test_a_create_starting_now_goes_live_at_once_without_a_prefetch_stage() -> None:
    event, effects = create(now=START)
    assert (event.state, event.version, event.went_live_at, event.prefetch_opened_at) == (
        State.LIVE,
        2,
        START,
        None,
    )
    assert effects == [
        Persist(event),
        StageChanged(ID, State.LIVE, 2, START),
        TimerSet(ID, END, K.END_TIME, 2),
    ]


def test_with_no_lead_the_event_goes_from_scheduled_straight_to_live() -> None:
    event, effects = create(prefetch_lead_us=0)
    assert event.prefetch_opens_at == START
    assert effects[1:] == [TimerSet(ID, START, K.START_TIME, 1)]
    live, effects = apply(event, Tick(ID), START)
    assert steps(live)[-1] == (2, K.START_TIME, State.SCHEDULED, State.LIVE, START)
    assert effects[1] == StageChanged(ID, State.LIVE, 2, START)


def test_a_window_missed_entirely_goes_straight_live_and_a_missed_end_follows() -> None:
    event, _ = create()
    late = END + SECOND  # the server was down through the window, the start and the end
    ended, effects = apply(event, Tick(ID), late)
    assert steps(ended)[1:] == [
        (2, K.START_TIME, State.SCHEDULED, State.LIVE, late),
        (3, K.END_TIME, State.LIVE, State.ENDED, late),
    ]
    assert effects == [
        Persist(ended),
        StageChanged(ID, State.LIVE, 2, late),
        StageChanged(ID, State.ENDED, 3, late),
    ]


# --- delays and reschedules -------------------------------------------------------------------


def test_a_delay_before_the_window_re_times_the_window_and_its_timer() -> None:
    event, _ = create()
    now = T0 + MINUTE
    delayed, effects = apply(event, Reschedule(ID, START + 15 * MINUTE, END + 15 * MINUTE), now)
    assert changed(event, delayed) == {
        "version": 2,
        "updated_at": now,
        "starts_at": START + 15 * MINUTE,
        "ends_at": END + 15 * MINUTE,
        "prefetch_opens_at": OPENS + 15 * MINUTE,
    }
    assert delayed.state is State.SCHEDULED
    assert delayed.delay_us == 15 * MINUTE
    assert effects == [
        Persist(delayed),
        Rescheduled(
            ID, 2, START + 15 * MINUTE, END + 15 * MINUTE, OPENS + 15 * MINUTE, START, END, now
        ),
        TimerCancelled(ID, OPENS, K.WINDOW_OPENS, 2),
        TimerSet(ID, OPENS + 15 * MINUTE, K.WINDOW_OPENS, 2),
    ]
    assert effects[1].delay_us == 15 * MINUTE  # type: ignore[union-attr]
    # The old opening time passes without anything happening.
    assert apply(delayed, Tick(ID), OPENS) == (delayed, [])
    opened, _ = apply(delayed, Tick(ID), OPENS + 15 * MINUTE)
    assert (opened.state, opened.prefetch_opened_at) == (State.PREFETCHING, OPENS + 15 * MINUTE)


def test_a_delay_during_the_window_keeps_it_open_and_moves_only_the_start() -> None:
    event = event_in(State.PREFETCHING)
    now = OPENS + MINUTE
    later = START + 30 * MINUTE
    delayed, effects = apply(event, Reschedule(ID, later, END), now)
    assert changed(event, delayed) == {"version": 3, "updated_at": now, "starts_at": later}
    assert (delayed.state, delayed.prefetch_opens_at, delayed.stage_version) == (
        State.PREFETCHING,
        OPENS,
        2,
    )
    assert effects == [
        Persist(delayed),
        Rescheduled(ID, 3, later, END, OPENS, START, END, now),
        TimerCancelled(ID, START, K.START_TIME, 3),
        TimerSet(ID, later, K.START_TIME, 3),
    ]
    assert apply(delayed, Tick(ID), START) == (delayed, [])  # no premature live
    live, effects = apply(delayed, Tick(ID), later)
    assert (live.state, live.went_live_at) == (State.LIVE, later)
    assert effects[1] == StageChanged(ID, State.LIVE, 4, later)


def test_bringing_the_start_forward_past_the_lead_opens_the_window_at_once() -> None:
    event, _ = create()
    now = T0 + MINUTE
    sooner = now + LEAD // 2
    moved, effects = apply(event, Reschedule(ID, sooner, END), now)
    assert (moved.state, moved.version, moved.prefetch_opens_at) == (State.PREFETCHING, 3, now)
    assert moved.delay_us == sooner - START
    assert steps(moved)[1:] == [
        (2, K.RESCHEDULE, State.SCHEDULED, State.SCHEDULED, now),
        (3, K.WINDOW_OPENS, State.SCHEDULED, State.PREFETCHING, now),
    ]
    assert effects == [
        Persist(moved),
        Rescheduled(ID, 2, sooner, END, now, START, END, now),
        StageChanged(ID, State.PREFETCHING, 3, now),
        TimerCancelled(ID, OPENS, K.WINDOW_OPENS, 3),
        TimerSet(ID, sooner, K.START_TIME, 3),
    ]


def test_rescheduling_to_the_same_times_changes_nothing() -> None:
    event, _ = create()
    assert apply(event, Reschedule(ID, START, END), T0 + 1) == (event, [])


@pytest.mark.parametrize("state", [State.LIVE, State.INTERRUPTED])
def test_once_started_only_the_end_can_move(state: State) -> None:
    event = event_in(state)
    now = now_for(state)
    extended, effects = apply(event, Reschedule(ID, START, END + HOUR), now)
    assert changed(event, extended) == {
        "version": event.version + 1,
        "updated_at": now,
        "ends_at": END + HOUR,
    }
    assert effects[2:] == [
        TimerCancelled(ID, END, K.END_TIME, extended.version),
        TimerSet(ID, END + HOUR, K.END_TIME, extended.version),
    ]
    open_ended, effects = apply(extended, Reschedule(ID, START, None), now)
    assert open_ended.ends_at is None
    assert effects[2:] == [TimerCancelled(ID, END + HOUR, K.END_TIME, open_ended.version)]
    with pytest.raises(InvalidInput, match="only its end can move"):
        apply(event, Reschedule(ID, START + 1, END), now)


# --- operator commands ------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.SCHEDULED, State.PREFETCHING])
def test_start_now_goes_live_before_the_start_time(state: State) -> None:
    event = event_in(state)
    now = now_for(state)
    live, effects = apply(event, StartNow(ID), now)
    v = event.version + 1
    window_closed = {"prefetch_opens_at": now} if state is State.SCHEDULED else {}
    assert changed(event, live) == {
        "state": State.LIVE,
        "version": v,
        "updated_at": now,
        "starts_at": now,
        "stage_version": v,
        "stage_changed_at": now,
        "went_live_at": now,
        **window_closed,
    }
    assert effects == [
        Persist(live),
        StageChanged(ID, State.LIVE, v, now),
        TimerCancelled(ID, next_timer(event).at, next_timer(event).reason, v),  # type: ignore[union-attr]
        TimerSet(ID, END, K.END_TIME, v),
    ]
    assert live.delay_us == now - START


def test_end_now_ends_a_live_event_early_and_disarms_its_end_timer() -> None:
    event = event_in(State.LIVE)
    now = START + HOUR
    ended, effects = apply(event, EndNow(ID), now)
    assert changed(event, ended) == {
        "state": State.ENDED,
        "version": 4,
        "updated_at": now,
        "ends_at": now,
        "stage_version": 4,
        "stage_changed_at": now,
        "ended_at": now,
    }
    assert effects == [
        Persist(ended),
        StageChanged(ID, State.ENDED, 4, now),
        TimerCancelled(ID, END, K.END_TIME, 4),
    ]


def test_interrupt_and_resume_keep_the_first_live_time_and_the_end_timer() -> None:
    live = event_in(State.LIVE)
    paused, effects = apply(live, Interrupt(ID), START + MINUTE)
    assert changed(live, paused) == {
        "state": State.INTERRUPTED,
        "version": 4,
        "updated_at": START + MINUTE,
        "stage_version": 4,
        "stage_changed_at": START + MINUTE,
        "interrupted_at": START + MINUTE,
    }
    assert effects == [Persist(paused), StageChanged(ID, State.INTERRUPTED, 4, START + MINUTE)]
    resumed, effects = apply(paused, Resume(ID), START + 2 * MINUTE)
    assert changed(paused, resumed) == {
        "state": State.LIVE,
        "version": 5,
        "updated_at": START + 2 * MINUTE,
        "stage_version": 5,
        "stage_changed_at": START + 2 * MINUTE,
    }
    assert resumed.went_live_at == START
    assert effects == [Persist(resumed), StageChanged(ID, State.LIVE, 5, START + 2 * MINUTE)]


def test_the_end_time_ends_an_interrupted_event() -> None:
    paused = event_in(State.INTERRUPTED)
    ended, effects = apply(paused, Tick(ID), END)
    assert steps(ended)[-1] == (5, K.END_TIME, State.INTERRUPTED, State.ENDED, END)
    assert effects == [Persist(ended), StageChanged(ID, State.ENDED, 5, END)]


CANCELLABLE = [s for s in State if (s, K.CANCEL) in TRANSITIONS]


def test_every_state_but_the_terminal_ones_is_cancellable() -> None:
    assert set(CANCELLABLE) == set(State) - TERMINAL


@pytest.mark.parametrize("state", CANCELLABLE)
def test_cancel_from_every_cancellable_state_disarms_the_timer(state: State) -> None:
    event = event_in(state)
    now = now_for(state)
    cancelled, effects = apply(event, Cancel(ID), now)
    v = event.version + 1
    assert changed(event, cancelled) == {
        "state": State.CANCELLED,
        "version": v,
        "updated_at": now,
        "stage_version": v,
        "stage_changed_at": now,
        "cancelled_at": now,
    }
    timer = next_timer(event)
    assert timer is not None
    assert effects == [
        Persist(cancelled),
        StageChanged(ID, State.CANCELLED, v, now),
        TimerCancelled(ID, timer.at, timer.reason, v),
    ]
    assert cancelled.terminal


# --- illegal and invalid inputs ---------------------------------------------------------------

OPERATOR_COMMANDS: list[tuple[InputKind, Command]] = [
    (K.RESCHEDULE, Reschedule(ID, END + HOUR, END + 2 * HOUR)),
    (K.START_NOW, StartNow(ID)),
    (K.END_NOW, EndNow(ID)),
    (K.CANCEL, Cancel(ID)),
    (K.INTERRUPT, Interrupt(ID)),
    (K.RESUME, Resume(ID)),
]

ILLEGAL = [
    (state, kind, command)
    for state in State
    for kind, command in OPERATOR_COMMANDS
    if (state, kind) not in TRANSITIONS
]


def test_the_operator_commands_cover_every_non_clock_input_of_the_table() -> None:
    table_inputs = {k for (_, k) in TRANSITIONS} - CLOCK_INPUTS
    assert table_inputs == {k for k, _ in OPERATOR_COMMANDS}
    assert len(ILLEGAL) == 6 * 6 - len([k for k in TRANSITIONS if k[1] not in CLOCK_INPUTS])


@pytest.mark.parametrize(("state", "kind", "command"), ILLEGAL)
def test_an_input_missing_from_the_table_raises_and_changes_nothing(
    state: State, kind: InputKind, command: Command
) -> None:
    event = event_in(state)
    before = copy.deepcopy(event)
    with pytest.raises(IllegalTransition) as info:
        apply(event, command, now_for(state))
    assert (info.value.event_id, info.value.state, info.value.kind) == (ID, state, kind)
    assert f"cannot {kind.value} while {state.value}" in str(info.value)
    assert event == before
    # The event still accepts what the table allows.
    assert apply(event, Tick(ID), now_for(state)) == (event, [])


def test_an_illegal_transition_is_invalid_input_and_names_what_is_accepted() -> None:
    event = event_in(State.SCHEDULED)
    with pytest.raises(InvalidInput, match=r"accepted now: start_now, reschedule, cancel"):
        apply(event, Resume(ID), T0 + 1)
    assert accepted_inputs(State.ENDED) == []
    assert accepted_inputs(State.INTERRUPTED) == [K.RESUME, K.END_NOW, K.RESCHEDULE, K.CANCEL]


def test_creating_an_event_that_exists_is_illegal() -> None:
    event, _ = create()
    with pytest.raises(IllegalTransition, match="already exists"):
        apply(event, Create(ID, "Again", START, END, LEAD), T0)


def test_a_command_for_an_unknown_event_is_not_found() -> None:
    with pytest.raises(NotFound, match=ID):
        apply(None, StartNow(ID), T0)
    with pytest.raises(NotFound):
        apply(None, Tick(ID), T0)


def test_a_command_for_another_event_is_rejected() -> None:
    event, _ = create()
    with pytest.raises(InvalidInput, match="applied to event"):
        apply(event, Cancel("other"), T0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"event_id": ""}, "event id"),
        ({"event_id": "-leading-dash"}, "event id"),
        ({"event_id": "has space"}, "event id"),
        ({"event_id": "x" * 65}, "event id"),
        ({"title": "  "}, "title"),
        ({"title": "t" * 201}, "title"),
        ({"prefetch_lead_us": -1}, "prefetch_lead_us"),
        ({"prefetch_lead_us": MAX_PREFETCH_LEAD_US + 1}, "prefetch_lead_us"),
        ({"starts_at": T0 - 1}, "in the past"),
        ({"starts_at": True}, "starts_at"),
        ({"ends_at": START}, "after starts_at"),
        ({"ends_at": START - 1}, "after starts_at"),
        ({"ends_at": 1.5}, "ends_at"),
    ],
)
def test_a_malformed_create_is_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        create(**fields)


def test_a_reschedule_into_the_past_is_rejected() -> None:
    event, _ = create()
    with pytest.raises(InvalidInput, match="in the past"):
        apply(event, Reschedule(ID, T0, END), T0 + 1)
    live = event_in(State.LIVE)
    with pytest.raises(InvalidInput, match="not in the future"):
        apply(live, Reschedule(ID, START, START + 1), START + 2)


def test_a_command_is_judged_in_the_state_the_clock_says_at_now() -> None:
    event, _ = create()  # stored as SCHEDULED, but at START the event is live
    with pytest.raises(IllegalTransition, match="cannot start_now while live"):
        apply(event, StartNow(ID), START)


# --- invariants --------------------------------------------------------------------------------


def test_history_keeps_only_the_latest_entries() -> None:
    event, _ = create()
    for i in range(1, HISTORY_LIMIT + 10):
        event, _ = apply(event, Reschedule(ID, START + i, END), T0 + i)
    assert len(event.history) == HISTORY_LIMIT
    assert event.history[-1].version == event.version
    assert [h.version for h in event.history] == list(
        range(event.version - HISTORY_LIMIT + 1, event.version + 1)
    )


_COMMANDS = st.sampled_from(
    ["tick", "delay", "sooner", "start", "end", "cancel", "pause", "resume"]
)


def _command(name: str, event: LiveEvent, now: int) -> Command:
    match name:
        case "delay":
            return Reschedule(ID, event.starts_at + 10 * MINUTE, None)
        case "sooner":
            return Reschedule(ID, max(now, event.starts_at - 10 * MINUTE), None)
        case "start":
            return StartNow(ID)
        case "end":
            return EndNow(ID)
        case "cancel":
            return Cancel(ID)
        case "pause":
            return Interrupt(ID)
        case "resume":
            return Resume(ID)
    return Tick(ID)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_COMMANDS, st.integers(0, 40 * MINUTE)), max_size=30))
def test_any_sequence_keeps_versions_increasing_and_effects_consistent(
    script: list[tuple[str, int]],
) -> None:
    event, _ = create(ends_at=None)
    now = T0
    last_stage_version = event.stage_version
    for name, dt in script:
        now += dt
        command = _command(name, event, now)
        try:
            new, effects = apply(event, command, now)
        except InvalidInput:
            continue
        timer = next_timer(new)
        assert timer is None or timer.at > now  # nothing is left due after an apply
        if not effects:
            assert new is event
            continue
        assert new.version > event.version
        assert new.stage_version <= new.version
        assert new.prefetch_opens_at <= new.starts_at  # the window never opens after the start
        assert effects[0] == Persist(new)
        assert new.history[-1].version == new.version
        for h in new.history[-(new.version - event.version) :]:
            assert TRANSITIONS[(h.from_state, h.input)] is h.to_state  # type: ignore[index]
        stages = [e for e in effects if isinstance(e, StageChanged)]
        assert [s.version for s in stages] == sorted({s.version for s in stages})
        assert all(last_stage_version < s.version <= new.version for s in stages)
        if stages:
            last_stage_version = stages[-1].version
            assert (stages[-1].stage, stages[-1].version) == (new.state, new.stage_version)
        for effect in effects:
            if isinstance(effect, TimerSet):
                assert effect == timer
        event = new

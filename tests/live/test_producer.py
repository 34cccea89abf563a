"""The producer: pending timers, the next deadline and the triggers, checked after every step."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopcast.durations import HOUR, MINUTE
from hopcast.errors import StorageError
from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV
from hopcast.live.producer import Producer, Trigger
from hopcast.live.schedule import (
    Cancel,
    Command,
    Create,
    Effect,
    EndNow,
    InputKind,
    Interrupt,
    LiveEvent,
    Reschedule,
    Resume,
    State,
    Tick,
    TimerSet,
    apply,
)
from hopcast.live.schedule_store import ScheduleStore

ID = "final"
T0 = 1_700_000_000_000_000
START = T0 + HOUR
END = START + 2 * HOUR
LEAD = 10 * MINUTE
OPENS = START - LEAD
K = InputKind


class World:
    """The schedule kept in a dict and a producer, wired as the gateway's adapter will be."""

    def __init__(self) -> None:
        self.events: dict[str, LiveEvent] = {}
        self.producer = Producer()
        self.fed: list[Tick] = []

    def command(self, command: Command, now: int) -> list[Trigger]:
        return self.producer.on_effects(self.execute(command, now)[1])

    def execute(self, command: Command, now: int) -> tuple[LiveEvent, list[Effect]]:
        event, effects = apply(self.events.get(command.event_id), command, now)
        self.events[event.id] = event
        return event, effects

    def feed(self, tick: Tick, now: int) -> tuple[LiveEvent, list[Effect]]:
        self.fed.append(tick)
        return self.execute(tick, now)

    def clock(self, now: int) -> list[Trigger]:
        return self.producer.tick(now, self.feed)

    def timers(self) -> dict[str, tuple[int, InputKind]]:
        return {k: (t.at, t.reason) for k, t in self.producer.timers.items()}


def created(world: World | None = None, event_id: str = ID, **times: int | None) -> World:
    world = world or World()
    starts_at = times.get("starts_at", START)
    ends_at = times.get("ends_at", END)
    assert starts_at is not None
    assert world.command(Create(event_id, "The Final", starts_at, ends_at, LEAD), T0) == []
    return world


def test_a_new_event_arms_one_timer_and_emits_no_trigger() -> None:
    world = created()
    assert world.timers() == {ID: (OPENS, K.WINDOW_OPENS)}
    assert world.producer.next_deadline() == OPENS
    assert world.producer.emitted_version(ID) is None


def test_with_nothing_scheduled_there_is_no_deadline_and_ticks_do_nothing() -> None:
    world = World()
    assert world.producer.next_deadline() is None
    assert world.clock(T0) == []
    assert world.fed == []


def test_the_happy_path_emits_one_trigger_per_stage_at_its_deadline() -> None:
    world = created()

    assert world.clock(OPENS - 1) == []
    assert world.fed == []
    assert world.timers() == {ID: (OPENS, K.WINDOW_OPENS)}

    assert world.clock(OPENS) == [Trigger(ID, State.PREFETCHING, 2, OPENS)]
    assert world.timers() == {ID: (START, K.START_TIME)}
    assert world.producer.next_deadline() == START

    assert world.clock(START + 3) == [Trigger(ID, State.LIVE, 3, START + 3)]
    assert world.timers() == {ID: (END, K.END_TIME)}
    assert world.producer.next_deadline() == END

    assert world.clock(END) == [Trigger(ID, State.ENDED, 4, END)]
    assert world.timers() == {}
    assert world.producer.next_deadline() is None
    assert world.producer.emitted_version(ID) == 4

    assert world.clock(END + HOUR) == []
    assert world.fed == [Tick(ID)] * 3


def test_a_delay_before_the_window_re_times_the_deadline_and_nothing_fires_early() -> None:
    world = created()
    delay = 20 * MINUTE
    assert world.command(Reschedule(ID, START + delay, END + delay), T0 + MINUTE) == []
    assert world.timers() == {ID: (OPENS + delay, K.WINDOW_OPENS)}
    assert world.clock(OPENS) == []
    assert world.fed == []
    assert world.clock(OPENS + delay) == [Trigger(ID, State.PREFETCHING, 3, OPENS + delay)]
    assert world.timers() == {ID: (START + delay, K.START_TIME)}
    assert world.clock(START) == []
    assert world.clock(START + delay) == [Trigger(ID, State.LIVE, 4, START + delay)]


def test_a_delay_during_the_window_moves_only_the_live_trigger() -> None:
    world = created()
    world.clock(OPENS)
    later = START + 30 * MINUTE
    assert world.command(Reschedule(ID, later, END), OPENS + MINUTE) == []
    assert world.timers() == {ID: (later, K.START_TIME)}
    assert world.clock(START) == []
    assert world.clock(later - 1) == []
    assert world.clock(later) == [Trigger(ID, State.LIVE, 4, later)]
    assert world.timers() == {ID: (END, K.END_TIME)}


def test_an_early_end_emits_ended_once_and_disarms_the_end_timer() -> None:
    world = created()
    world.clock(OPENS)
    world.clock(START)
    assert world.command(EndNow(ID), START + MINUTE) == [
        Trigger(ID, State.ENDED, 4, START + MINUTE)
    ]
    assert world.timers() == {}
    assert world.clock(END) == []


@pytest.mark.parametrize("deadlines", [[], [OPENS], [OPENS, START]])
def test_cancel_disarms_the_pending_timer_and_emits_cancelled(deadlines: list[int]) -> None:
    world = created()
    for deadline in deadlines:
        world.clock(deadline)
    now = (deadlines or [T0])[-1] + 1
    version = 2 + len(deadlines)
    assert world.command(Cancel(ID), now) == [Trigger(ID, State.CANCELLED, version, now)]
    assert world.timers() == {}
    assert world.producer.next_deadline() is None


def test_interrupt_and_resume_are_triggered_and_keep_the_end_deadline() -> None:
    world = created()
    world.clock(OPENS)
    world.clock(START)
    assert world.command(Interrupt(ID), START + 1) == [Trigger(ID, State.INTERRUPTED, 4, START + 1)]
    assert world.timers() == {ID: (END, K.END_TIME)}
    assert world.command(Resume(ID), START + 2) == [Trigger(ID, State.LIVE, 5, START + 2)]
    assert world.timers() == {ID: (END, K.END_TIME)}


def test_feeding_the_same_effects_twice_emits_no_second_trigger() -> None:
    world = created()
    _, effects = apply(world.events[ID], Tick(ID), OPENS)
    assert world.producer.on_effects(effects) == [Trigger(ID, State.PREFETCHING, 2, OPENS)]
    timers = world.timers()
    assert world.producer.on_effects(effects) == []
    assert world.timers() == timers == {ID: (START, K.START_TIME)}


def test_stale_effects_neither_trigger_again_nor_re_arm_an_old_timer() -> None:
    world = World()
    _, create_effects = world.execute(Create(ID, "The Final", START, END, LEAD), T0)
    _, open_effects = world.execute(Tick(ID), OPENS)
    assert world.producer.on_effects(open_effects) == [Trigger(ID, State.PREFETCHING, 2, OPENS)]
    assert world.producer.on_effects(create_effects) == []  # arrives late
    assert world.timers() == {ID: (START, K.START_TIME)}


def test_a_timer_whose_re_timing_was_lost_fires_harmlessly_and_re_arms_the_real_one() -> None:
    world = created()
    world.execute(Reschedule(ID, START + HOUR, END + HOUR), T0 + 1)  # effects never fed
    assert world.timers() == {ID: (OPENS, K.WINDOW_OPENS)}
    assert world.clock(OPENS) == []
    assert world.fed == [Tick(ID)]
    assert world.timers() == {ID: (OPENS + HOUR, K.WINDOW_OPENS)}


def test_due_timers_fire_in_deadline_order_across_events() -> None:
    world = created(event_id="b")
    created(world, event_id="a", starts_at=START + MINUTE, ends_at=None)
    created(world, event_id="c", starts_at=START - MINUTE, ends_at=None)
    assert world.producer.next_deadline() == OPENS - MINUTE
    assert world.clock(OPENS + MINUTE) == [
        Trigger("c", State.PREFETCHING, 2, OPENS + MINUTE),
        Trigger("b", State.PREFETCHING, 2, OPENS + MINUTE),
        Trigger("a", State.PREFETCHING, 2, OPENS + MINUTE),
    ]
    assert world.timers() == {
        "a": (START + MINUTE, K.START_TIME),
        "b": (START, K.START_TIME),
        "c": (START - MINUTE, K.START_TIME),
    }


def test_a_failing_feed_drops_only_the_timer_being_fired() -> None:
    world = created(event_id="a")
    created(world, event_id="b")

    def failing(tick: Tick, now: int) -> tuple[LiveEvent, list[Effect]]:
        raise StorageError("disk full")

    with pytest.raises(StorageError):
        world.producer.tick(OPENS, failing)
    assert world.timers() == {"b": (OPENS, K.WINDOW_OPENS)}
    assert world.clock(OPENS) == [Trigger("b", State.PREFETCHING, 2, OPENS)]


def test_triggers_produced_before_a_feed_failure_come_out_on_the_next_tick() -> None:
    world = created(event_id="a")
    created(world, event_id="b")
    calls: list[str] = []

    def second_fails(tick: Tick, now: int) -> tuple[LiveEvent, list[Effect]]:
        calls.append(tick.event_id)
        if len(calls) == 2:
            raise StorageError("disk full")
        return world.feed(tick, now)

    with pytest.raises(StorageError):
        world.producer.tick(OPENS, second_fails)
    first = calls[0]
    assert world.producer.tick(OPENS, world.feed) == [Trigger(first, State.PREFETCHING, 2, OPENS)]
    assert world.producer.tick(OPENS, world.feed) == []


# --- restart -----------------------------------------------------------------------------------


def test_resume_re_announces_each_stage_with_its_original_version_and_arms_timers() -> None:
    world = created(event_id="soon")
    created(world, event_id="later", starts_at=START + 5 * HOUR, ends_at=None)
    world.clock(OPENS)
    world.clock(START)
    world.command(Interrupt("soon"), START + 1)
    world.command(Reschedule("soon", START, END + HOUR), START + 2)  # no stage change

    fresh = Producer()
    assert fresh.resume(world.events.values()) == [Trigger("soon", State.INTERRUPTED, 4, START + 1)]
    assert {k: (t.at, t.reason) for k, t in fresh.timers.items()} == {
        "later": (START + 5 * HOUR - LEAD, K.WINDOW_OPENS),
        "soon": (END + HOUR, K.END_TIME),
    }
    assert fresh.resume(world.events.values()) == []  # already announced


def test_resume_of_a_finished_event_announces_its_end_and_arms_nothing() -> None:
    world = created()
    world.command(Cancel(ID), T0 + 1)
    fresh = Producer()
    assert fresh.resume(world.events.values()) == [Trigger(ID, State.CANCELLED, 2, T0 + 1)]
    assert dict(fresh.timers) == {}


def test_resume_ignores_an_event_older_than_one_already_seen() -> None:
    world = created()
    stale = world.events[ID]
    world.clock(OPENS)
    assert world.producer.resume([stale]) == []
    assert world.timers() == {ID: (START, K.START_TIME)}


def _open(backend: str, path: Path, kv: KVStore | None) -> KVStore:
    if backend == "memory":
        return kv or MemoryKV()  # the same object plays the part of durable memory
    if kv is not None:
        kv.close()
    return LmdbKV(path, sync=False)


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_a_restart_between_prefetch_and_live_still_produces_exactly_one_live_trigger(
    backend: str, tmp_path: Path
) -> None:
    kv = _open(backend, tmp_path / "kv", None)
    store, producer = ScheduleStore(kv), Producer()
    _, effects = store.execute(Create(ID, "The Final", START, END, LEAD), T0)
    assert producer.on_effects(effects) == []
    assert producer.tick(OPENS, store.execute) == [Trigger(ID, State.PREFETCHING, 2, OPENS)]

    kv = _open(backend, tmp_path / "kv", kv)  # the process restarts
    store, producer = ScheduleStore(kv), Producer()
    announced = producer.resume(store.events())
    assert announced == [Trigger(ID, State.PREFETCHING, 2, OPENS)]  # the same logical trigger
    assert producer.next_deadline() == START

    live: list[Trigger] = []
    for now in [START - 1, START, START + 1, START + MINUTE]:
        live += producer.tick(now, store.execute)
    assert live == [Trigger(ID, State.LIVE, 3, START)]
    assert store.load(ID).state is State.LIVE
    assert {k: (t.at, t.reason) for k, t in producer.timers.items()} == {ID: (END, K.END_TIME)}
    kv.close()


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_a_deadline_passed_while_down_fires_on_the_first_tick_after_restart(
    backend: str, tmp_path: Path
) -> None:
    kv = _open(backend, tmp_path / "kv", None)
    ScheduleStore(kv).execute(Create(ID, "The Final", START, END, LEAD), T0)
    kv = _open(backend, tmp_path / "kv", kv)
    store, producer = ScheduleStore(kv), Producer()
    assert producer.resume(store.events()) == []
    assert producer.next_deadline() == OPENS
    assert producer.tick(START + 5, store.execute) == [Trigger(ID, State.LIVE, 2, START + 5)]
    assert {k: (t.at, t.reason) for k, t in producer.timers.items()} == {ID: (END, K.END_TIME)}
    kv.close()


def test_timer_set_effects_carry_the_event_version() -> None:
    world = created()
    assert world.producer.timers[ID] == TimerSet(ID, OPENS, K.WINDOW_OPENS, 1)

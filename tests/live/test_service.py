"""The live service: commands, timers fired with an injected clock, sinks, restart over LMDB, and
the asyncio timer loop driven by a fake clock (woken by poke, never by sleeping)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from hopcast.durations import DAY, HOUR, MINUTE, SECOND
from hopcast.errors import IllegalTransition, InvalidInput, NotFound, StorageError
from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV
from hopcast.live.producer import Trigger
from hopcast.live.schedule import Cancel, Create, EndNow, StartNow, State
from hopcast.live.service import (
    KEEP,
    LiveService,
    event_doc,
    parse_delay,
    parse_instant,
    parse_lead,
    result_doc,
    run_timers,
)

T0 = 1_700_000_000_000_000
START = T0 + MINUTE
LEAD = 30 * SECOND
OPENS = START - LEAD
ID = "final"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Sink:
    """Records every batch of triggers handed to it."""

    def __init__(self) -> None:
        self.batches: list[list[Trigger]] = []

    def __call__(self, triggers: Sequence[Trigger]) -> None:
        self.batches.append(list(triggers))

    @property
    def triggers(self) -> list[tuple[str, State, int]]:
        return [(t.event_id, t.stage, t.version) for batch in self.batches for t in batch]


def make(kv: KVStore | None = None, clock: Clock | None = None) -> tuple[LiveService, Sink]:
    sink = Sink()
    return LiveService(kv or MemoryKV(), sink=sink, clock=clock or Clock()), sink


def create(service: LiveService, ends_at: int | None = None, event_id: str = ID) -> None:
    service.command(Create(event_id, "The Final", START, ends_at, LEAD), T0)


# -- commands --------------------------------------------------------------------------------------


def test_a_command_returns_the_stored_event_and_hands_its_triggers_to_the_sink() -> None:
    service, sink = make()
    create(service)
    result = service.command(StartNow(ID), T0 + SECOND)
    assert result.event.state is State.LIVE
    assert result.event == service.get(ID)
    assert [(t.stage, t.version) for t in result.triggers] == [(State.LIVE, 2)]
    assert sink.batches == [list(result.triggers)]
    assert result.changed


def test_an_illegal_command_raises_and_changes_nothing_nor_emits() -> None:
    service, sink = make()
    create(service)
    service.command(Cancel(ID), T0 + 1)
    before = service.get(ID)
    with pytest.raises(IllegalTransition, match=r"cannot start_now while cancelled"):
        service.command(StartNow(ID), T0 + 2)
    assert service.get(ID) == before
    assert sink.triggers == [(ID, State.CANCELLED, 2)]


def test_an_unknown_event_is_not_found() -> None:
    service, _ = make()
    with pytest.raises(NotFound):
        service.get("nope")
    with pytest.raises(NotFound):
        service.command(EndNow("nope"), T0)


def test_a_failing_sink_is_logged_and_the_other_sinks_still_get_the_triggers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, sink = make()

    def broken(triggers: Sequence[Trigger]) -> None:
        raise RuntimeError("gateway down")

    service.add_sink(broken)
    second = Sink()
    service.add_sink(second)
    create(service)
    with caplog.at_level(logging.ERROR, logger="hopcast.live"):
        result = service.command(StartNow(ID), T0 + 1)
    assert result.event.state is State.LIVE
    assert sink.triggers == second.triggers == [(ID, State.LIVE, 2)]
    assert "sink failed" in caplog.text


def test_a_removed_sink_gets_nothing_more() -> None:
    service, _ = make()
    extra = Sink()
    remove = service.add_sink(extra)
    create(service)
    remove()
    service.command(StartNow(ID), T0 + 1)
    assert extra.batches == []


def test_commands_wake_the_deadline_watchers() -> None:
    service, _ = make()
    woken: list[int] = []
    stop = service.watch_deadline(lambda: woken.append(1))
    create(service)
    assert woken == [1]
    stop()
    service.command(StartNow(ID), T0 + 1)
    assert woken == [1]


# -- timers ----------------------------------------------------------------------------------------


def test_an_event_a_minute_out_gets_its_prefetch_trigger_when_the_window_opens() -> None:
    service, sink = make()
    create(service)
    assert service.next_deadline() == OPENS
    assert service.tick(OPENS - 1) == []
    fired = service.tick(OPENS)
    assert [(t.stage, t.version, t.ts) for t in fired] == [(State.PREFETCHING, 2, OPENS)]
    assert sink.triggers == [(ID, State.PREFETCHING, 2)]
    assert service.next_deadline() == START
    service.tick(START)
    assert sink.triggers[-1] == (ID, State.LIVE, 3)


def test_a_delay_fires_nothing_at_the_old_times_and_everything_at_the_new_ones() -> None:
    service, sink = make()
    create(service)
    result = service.reschedule(ID, T0 + 1, delay_us=5 * MINUTE)
    assert result.triggers == ()
    assert result.event.delay_us == 5 * MINUTE
    assert service.next_deadline() == OPENS + 5 * MINUTE
    assert service.tick(OPENS) == []
    assert service.tick(START) == []
    assert sink.triggers == []
    service.tick(OPENS + 5 * MINUTE)
    service.tick(START + 5 * MINUTE)
    assert sink.triggers == [(ID, State.PREFETCHING, 3), (ID, State.LIVE, 4)]


def test_every_stage_is_emitted_exactly_once_however_often_the_clock_ticks() -> None:
    service, sink = make()
    create(service, ends_at=START + HOUR)
    for now in range(T0, START + 2 * HOUR, 10 * SECOND):
        service.tick(now)
        service.tick(now)  # a repeated timer changes nothing
    assert sink.triggers == [
        (ID, State.PREFETCHING, 2),
        (ID, State.LIVE, 3),
        (ID, State.ENDED, 4),
    ]
    assert service.next_deadline() is None


def test_a_timer_that_failed_to_fire_fires_on_the_next_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service, sink = make()
    create(service)
    execute = service.schedule.execute

    def broken(*args: object) -> object:
        raise StorageError("disk hiccup")

    monkeypatch.setattr(service.schedule, "execute", broken)
    with pytest.raises(StorageError):
        service.tick(OPENS)
    monkeypatch.setattr(service.schedule, "execute", execute)
    assert service.tick(OPENS) == [Trigger(ID, State.PREFETCHING, 2, OPENS)]
    assert sink.triggers == [(ID, State.PREFETCHING, 2)]


def test_a_restart_over_the_same_lmdb_store_resumes_and_emits_no_transition_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store"
    kv = LmdbKV(path, sync=False)
    first, before = make(kv)
    create(first, ends_at=START + HOUR)
    create(first, ends_at=START + HOUR, event_id="later")
    first.tick(OPENS)
    kv.close()

    kv = LmdbKV(path, sync=False)
    second, after = make(kv)
    # Down through the start: resume re-announces the prefetch stages (same versions, which
    # receivers already applied) and fires the start that fell due, once.
    second.resume(START + SECOND)
    second.resume(START + SECOND)
    second.tick(START + SECOND)
    second.tick(START + HOUR)
    kv.close()

    assert before.triggers == [("final", State.PREFETCHING, 2), ("later", State.PREFETCHING, 2)]
    reannounced = after.triggers[:2]
    assert reannounced == before.triggers
    new = after.triggers[2:]
    assert set(new) == {
        ("final", State.LIVE, 3),
        ("final", State.ENDED, 4),
        ("later", State.LIVE, 3),
        ("later", State.ENDED, 4),
    }
    assert not set(new) & set(before.triggers)
    assert len(set(after.triggers)) == len(after.triggers)


def test_resume_keeps_the_original_time_of_a_reannounced_stage() -> None:
    kv = MemoryKV()
    first, _ = make(kv)
    create(first)
    first.tick(OPENS)
    second, sink = make(kv)
    triggers = second.resume(OPENS + SECOND)
    assert [(t.stage, t.version, t.ts) for t in triggers] == [(State.PREFETCHING, 2, OPENS)]
    assert sink.batches == [triggers]


# -- reschedule ------------------------------------------------------------------------------------


def test_a_delay_of_a_live_event_moves_only_its_end() -> None:
    service, _ = make()
    create(service, ends_at=START + HOUR)
    service.tick(START)
    event = service.reschedule(ID, START + 1, delay_us=10 * MINUTE).event
    assert (event.starts_at, event.ends_at) == (START, START + HOUR + 10 * MINUTE)


def test_a_negative_delay_brings_the_event_forward() -> None:
    service, _ = make()
    create(service)
    event = service.reschedule(ID, T0, delay_us=-30 * SECOND).event
    assert event.starts_at == START - 30 * SECOND
    assert event.delay_us == -30 * SECOND


def test_new_times_replace_only_what_is_given_and_none_removes_the_end() -> None:
    service, _ = make()
    create(service, ends_at=START + HOUR)
    event = service.reschedule(ID, T0, starts_at=START + MINUTE).event
    assert (event.starts_at, event.ends_at) == (START + MINUTE, START + HOUR)
    event = service.reschedule(ID, T0, ends_at=None).event
    assert (event.starts_at, event.ends_at) == (START + MINUTE, None)
    unchanged = service.reschedule(ID, T0, starts_at=START + MINUTE, ends_at=KEEP)
    assert not unchanged.changed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_us": MINUTE, "starts_at": START}, "not both"),
        ({}, "give starts_at, ends_at or a delay"),
    ],
)
def test_a_reschedule_needs_either_a_delay_or_times(kwargs: dict[str, int], message: str) -> None:
    service, _ = make()
    create(service)
    with pytest.raises(InvalidInput, match=message):
        service.reschedule(ID, T0, **kwargs)  # type: ignore[arg-type]


def test_delaying_a_live_event_without_an_end_is_refused() -> None:
    service, _ = make()
    create(service)
    service.tick(START)
    with pytest.raises(InvalidInput, match="no end time to delay"):
        service.reschedule(ID, START, delay_us=MINUTE)


def test_delaying_a_finished_event_is_an_illegal_transition() -> None:
    service, _ = make()
    create(service)
    service.command(Cancel(ID), T0)
    with pytest.raises(IllegalTransition, match="cannot reschedule while cancelled"):
        service.reschedule(ID, T0, delay_us=MINUTE)


# -- payloads --------------------------------------------------------------------------------------


def test_materialise_publishes_every_stage_and_reports_the_cardinality() -> None:
    service, _ = make()
    create(service)
    doc = service.materialise(ID, T0, ["adult.US.en.b0", "kids.US.en.b0"])
    assert doc["stages"] == ["ended", "interrupted", "live", "prefetch", "scheduled"]
    assert doc["segments"] == 3  # the two given and the default one
    assert doc["entries"] == 15
    card = service.cardinality(ID, T0)
    assert card["cardinality"] == doc["cardinality"]
    assert card["entries"] == 15
    assert card["stages"]["live"]["segments"] == 3
    assert card["cardinality"] < card["entries"]  # equal content shares one payload


def test_a_trigger_names_its_stages_payload_only_once_one_is_published() -> None:
    service, sink = make()
    create(service)
    service.command(StartNow(ID), T0 + SECOND)
    live = sink.batches[-1][-1]
    assert live.stage is State.LIVE
    assert service.payload_for(live) is None  # nothing materialised: no device goes looking
    service.materialise(ID, T0 + SECOND, ["adult.US.en.b0"])
    assert service.payload_for(live) == "final/live"
    opening = Trigger(ID, State.PREFETCHING, 1, OPENS)
    assert service.payload_for(opening) is None  # the window's own spread, not a herd


def test_materialise_needs_a_scheduled_event() -> None:
    service, _ = make()
    with pytest.raises(NotFound):
        service.materialise("nope", T0, ["adult.US.en.b0"])


def test_the_manifest_carries_the_events_prefetch_window() -> None:
    service, _ = make()
    create(service)
    service.materialise(ID, T0, [])
    response = service.manifest(ID, "adult.US.en.b0", None, T0)
    assert response.status == 200
    assert response.body is not None
    assert f'"opens_at":{OPENS}'.encode() in response.body
    etag = response.headers["ETag"]
    assert service.manifest(ID, "adult.US.en.b0", etag, T0).status == 304


def test_the_stage_payload_defaults_to_the_events_current_stage() -> None:
    service, _ = make()
    create(service)
    service.materialise(ID, T0, [])
    scheduled = service.stage_payload(ID, None, "all", None, T0)
    service.command(StartNow(ID), T0 + 1)
    live = service.stage_payload(ID, None, "all", None, T0 + 1)
    assert (
        live.headers["ETag"] == service.stage_payload(ID, "live", "all", None, T0).headers["ETag"]
    )
    assert scheduled.headers["ETag"] != live.headers["ETag"]
    with pytest.raises(NotFound):
        service.stage_payload("nope", None, "all", None, T0)


def test_ending_an_event_lets_its_payloads_expire_after_the_retention() -> None:
    service, _ = make()
    create(service)
    service.materialise(ID, T0, [])
    etag = service.stage_payload(ID, "ended", "all", None, T0).headers["ETag"].strip('"')
    service.command(StartNow(ID), T0 + 1)
    service.command(EndNow(ID), T0 + 2)
    retention = service.payloads.retention_us
    assert service.payload(etag, None, T0 + 2 + retention - 1).status == 200
    assert service.payload(etag, None, T0 + 2 + retention + 1).status == 404


def test_payloads_of_an_event_that_never_ends_stay_published() -> None:
    service, _ = make()
    create(service)
    service.materialise(ID, T0, [])
    etag = service.stage_payload(ID, "live", "all", None, T0).headers["ETag"].strip('"')
    assert service.payload(etag, None, T0 + 30 * DAY).status == 200


# -- values for the adapters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (START, START),
        (str(START), START),
        ("10m", T0 + 10 * MINUTE),
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20", T0),
        ("2023-11-14T23:13:20+01:00", T0),
    ],
)
def test_a_time_is_micros_iso_or_a_duration_from_now(value: int | str, expected: int) -> None:
    assert parse_instant(value, T0) == expected


@pytest.mark.parametrize("value", ["soon", "", "10 parsecs", True])
def test_anything_else_is_not_a_time(value: str) -> None:
    with pytest.raises(InvalidInput, match="not a time"):
        parse_instant(value, T0)


def test_leads_and_delays_are_durations_and_a_delay_may_be_negative() -> None:
    assert parse_lead("30m") == 30 * MINUTE
    assert parse_lead(5) == 5
    assert parse_delay("5m") == 5 * MINUTE
    assert parse_delay(" -90s") == -90 * SECOND
    with pytest.raises(InvalidInput, match="prefetch lead"):
        parse_lead("later")
    with pytest.raises(InvalidInput, match="delay"):
        parse_delay("--5m")


def test_the_event_document_has_the_schedule_the_accepted_commands_and_the_history() -> None:
    service, _ = make()
    create(service)
    result = service.reschedule(ID, T0, delay_us=MINUTE)
    doc = result_doc(result)
    assert doc == event_doc(result.event) | {"triggers": []}
    assert doc["state"] == "scheduled"
    assert doc["version"] == 2
    assert doc["delay_us"] == MINUTE
    assert doc["accepts"] == ["start_now", "reschedule", "cancel"]
    assert doc["next_timer"] == {"at": OPENS + MINUTE, "reason": "window_opens"}
    assert [(h["input"], h["from"], h["to"]) for h in doc["history"]] == [
        ("create", None, "scheduled"),
        ("reschedule", "scheduled", "scheduled"),
    ]


# -- the asyncio timer loop ------------------------------------------------------------------------


class Waiter:
    """A sink the loop's thread calls; the test awaits the next batch (bounded, never slept)."""

    def __init__(self) -> None:
        self.batches: list[list[Trigger]] = []
        self.arrived = asyncio.Event()

    def __call__(self, triggers: Sequence[Trigger]) -> None:
        self.batches.append(list(triggers))
        self.arrived.set()

    async def next(self) -> list[tuple[State, int]]:
        await asyncio.wait_for(self.arrived.wait(), timeout=10)
        self.arrived.clear()
        return [(t.stage, t.version) for t in self.batches[-1]]


def test_the_timer_loop_fires_each_stage_when_the_clock_reaches_it() -> None:
    async def scenario() -> None:
        clock = Clock()
        waiter = Waiter()
        service = LiveService(MemoryKV(), sink=waiter, clock=clock)
        create(service, ends_at=START + HOUR)
        stop = asyncio.Event()
        loop = asyncio.create_task(run_timers(service, stop=stop))
        clock.now = OPENS
        service.poke()
        assert await waiter.next() == [(State.PREFETCHING, 2)]
        clock.now = START + HOUR  # the start and the end are both due: one tick fires both
        service.poke()
        assert await waiter.next() == [(State.LIVE, 3), (State.ENDED, 4)]
        stop.set()
        await asyncio.wait_for(loop, timeout=10)
        assert service.next_deadline() is None

    asyncio.run(scenario())


def test_the_timer_loop_survives_a_failed_tick_and_fires_on_the_next_one() -> None:
    async def scenario() -> None:
        clock = Clock(OPENS)
        waiter = Waiter()
        service = LiveService(MemoryKV(), sink=waiter, clock=clock)
        create(service)
        failed = asyncio.Event()
        real_tick = service.tick

        def flaky(now: int) -> list[Trigger]:
            if not failed.is_set():
                failed.set()
                raise StorageError("disk hiccup")
            return real_tick(now)

        service.tick = flaky  # type: ignore[method-assign]
        stop = asyncio.Event()
        loop = asyncio.create_task(run_timers(service, stop=stop))
        await asyncio.wait_for(failed.wait(), timeout=10)
        service.poke()
        assert await waiter.next() == [(State.PREFETCHING, 2)]
        stop.set()
        await asyncio.wait_for(loop, timeout=10)

    asyncio.run(scenario())


def test_the_timer_loop_stops_watching_the_service_when_it_ends() -> None:
    async def scenario() -> LiveService:
        service = LiveService(MemoryKV(), clock=Clock())
        stop = asyncio.Event()
        loop = asyncio.create_task(run_timers(service, stop=stop))
        await asyncio.sleep(0)  # let it start and register
        assert service._watchers
        stop.set()
        await asyncio.wait_for(loop, timeout=10)
        return service

    assert asyncio.run(scenario())._watchers == []

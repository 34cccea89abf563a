"""The live service: commands, timers fired with an injected clock, sinks, restart over LMDB, and
the asyncio timer loop driven by a fake clock (woken by poke, never by sleeping)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hopcast.api.app import create_app
from hopcast.durations import DAY, HOUR, MINUTE, SECOND
from hopcast.errors import IllegalTransition, InvalidInput, NotFound, StorageError
from hopcast.graphdb import Graph
from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV
from hopcast.kv.memory import MemoryKV
from hopcast.live import messages as m
from hopcast.live.fanout import InProcessTransport, ResumeKind, Router
from hopcast.live.messages import Position
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
from hopcast.live.sinks import RETRY_FIRST_US, RETRY_MAX_US, retry_delay

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


class Flaky(Sink):
    """A sink whose next ``failures`` calls raise ConnectionError, and that refuses the triggers
    of event ``refuse`` with InvalidInput (as the router does with a malformed one)."""

    def __init__(self, failures: int, refuse: str | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.refuse = refuse
        self.calls = 0

    def __call__(self, triggers: Sequence[Trigger]) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("router away")
        if any(t.event_id == self.refuse for t in triggers):
            raise InvalidInput(f"event {self.refuse!r} does not fit the wire format")
        super().__call__(triggers)


class DownTransport(InProcessTransport):
    """An in-process transport that raises while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def publish(self, channel: str, frame: bytes) -> None:
        if self.down:
            raise ConnectionError("transport down")
        super().publish(channel, frame)


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


def test_a_failing_sink_keeps_its_triggers_and_the_other_sinks_still_get_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, sink = make()
    broken = Flaky(failures=10**9)
    service.add_sink(broken, name="broken")
    second = Sink()
    service.add_sink(second)
    create(service)
    with caplog.at_level(logging.ERROR, logger="hopcast.live"):
        result = service.command(StartNow(ID), T0 + 1)
    assert result.event.state is State.LIVE
    assert sink.triggers == second.triggers == [(ID, State.LIVE, 2)]
    assert "live trigger sink broken failed" in caplog.text
    status = {s.name: s for s in service.sinks()}
    assert (status["broken"].pending, status["broken"].failing) == (1, True)
    assert (status["Sink#2"].pending, status["Sink#2"].delivered) == (0, 1)


def test_a_sink_that_fails_three_times_then_recovers_gets_every_trigger_once_in_order() -> None:
    service, _ = make()
    flaky = Flaky(failures=3)
    service.add_sink(flaky, name="flaky")
    create(service, ends_at=START + HOUR)
    create(service, event_id="semi")
    t = T0 + SECOND
    service.command(StartNow(ID), t)  # call 1 fails
    assert service.next_deadline() == t + RETRY_FIRST_US
    service.tick(t + RETRY_FIRST_US - 1)  # not due yet: no call
    service.command(StartNow("semi"), t + 2)  # queued behind the first, no call either
    assert flaky.calls == 1
    t += RETRY_FIRST_US
    service.tick(t)  # call 2 fails
    t += 2 * RETRY_FIRST_US
    assert service.next_deadline() == t
    service.tick(t)  # call 3 fails
    service.command(EndNow(ID), t + 3)
    t += 4 * RETRY_FIRST_US
    service.tick(t)  # call 4 takes everything
    assert flaky.calls == 4
    assert flaky.triggers == [(ID, State.LIVE, 2), ("semi", State.LIVE, 2), (ID, State.ENDED, 3)]
    [status] = [s for s in service.sinks() if s.name == "flaky"]
    assert (status.pending, status.delivered, status.failures, status.failing) == (0, 3, 3, False)
    assert sum(status.dropped.values()) == 0
    assert service.next_deadline() is None  # nothing left to retry, no timer armed


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    assert [retry_delay(n) for n in (1, 2, 3)] == [
        RETRY_FIRST_US,
        2 * RETRY_FIRST_US,
        4 * RETRY_FIRST_US,
    ]
    assert retry_delay(10) == retry_delay(1000) == RETRY_MAX_US


def test_a_sink_that_stays_down_is_counted_and_surfaced_on_metrics() -> None:
    clock = Clock()
    graph = Graph.open(clock=clock)
    service = LiveService(graph.store.kv, clock=clock)
    service.add_sink(Flaky(failures=10**9), name="gateway")
    client = TestClient(create_app(graph, live=service))
    create(service)
    service.command(StartNow(ID), T0 + 1)
    service.tick(T0 + 1 + RETRY_FIRST_US)
    text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    gateway = (("sink", "gateway"),)
    assert samples[("hopcast_live_sink_failures_total", gateway)] == 2
    assert samples[("hopcast_live_triggers_pending", gateway)] == 1
    assert samples[("hopcast_live_sink_failing", gateway)] == 1
    assert samples[("hopcast_live_triggers_delivered_total", gateway)] == 0
    # the other sinks (the live metrics' own) took it
    assert (
        samples[
            ("hopcast_live_triggers_delivered_total", (("sink", "LiveMetrics.count_triggers"),))
        ]
        == 1
    )
    graph.close()


def test_a_full_queue_drops_superseded_triggers_first_counts_every_drop_and_resyncs() -> None:
    clock = Clock()
    service = LiveService(MemoryKV(), clock=clock, sink_capacity=3)
    flaky = Flaky(failures=10**9)
    service.add_sink(flaky, name="router")
    events = [f"e{i}" for i in range(4)]
    for event in events:
        create(service, event_id=event)
    service.command(StartNow("e0"), T0 + 1)
    service.command(EndNow("e0"), T0 + 2)  # supersedes e0's live
    service.command(StartNow("e1"), T0 + 3)
    service.command(StartNow("e2"), T0 + 4)  # full: e0 live goes (superseded)
    service.command(StartNow("e3"), T0 + 5)  # full, nothing superseded: e0 ended goes (overflow)
    [status] = service.sinks()
    assert status.pending == 3
    assert status.dropped == {"superseded": 1, "overflow": 1, "rejected": 0}
    flaky.failures = 0  # the sink is back
    service.tick(T0 + 10 * SECOND)
    # everything still queued, then the current stage of every event (e0's end included)
    assert flaky.triggers[:3] == [
        ("e1", State.LIVE, 2),
        ("e2", State.LIVE, 2),
        ("e3", State.LIVE, 2),
    ]
    newest = {event: (stage, version) for event, stage, version in flaky.triggers}
    assert newest == {e: (service.get(e).state, service.get(e).stage_version) for e in events}
    [status] = service.sinks()
    assert (status.pending, status.resyncs, status.failing) == (0, 1, False)


def test_a_trigger_the_sink_refuses_as_malformed_is_rejected_and_counted_and_the_rest_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service, _ = make()
    picky = Flaky(failures=0, refuse="bad")
    service.add_sink(picky, name="picky")
    for event in ("bad", "good"):
        create(service, event_id=event)
    with caplog.at_level(logging.ERROR, logger="hopcast.live"):
        service.command(StartNow("bad"), T0 + 1)
        service.command(StartNow("good"), T0 + 2)
    assert picky.triggers == [("good", State.LIVE, 2)]
    [status] = [s for s in service.sinks() if s.name == "picky"]
    assert (status.pending, status.failing, status.dropped["rejected"]) == (0, False, 1)
    assert "dropped bad/live v2 (rejected" in caplog.text


def test_a_device_that_resumes_after_the_router_failed_gets_the_stage_it_missed() -> None:
    clock = Clock()
    service = LiveService(MemoryKV(), clock=clock)
    transport = DownTransport()
    router = Router(transport, epoch=7)
    service.add_sink(router.publish_all)
    seen: list[bytes] = []
    transport.subscribe(lambda channel, frame: seen.append(frame))
    create(service)
    before = Position(7, 0)  # where a device following event:final stands
    transport.down = True
    service.command(StartNow(ID), T0 + 1)  # the router records it, its transport refuses it
    assert seen == []
    [status] = service.sinks()
    assert status.failing
    transport.down = False
    service.tick(T0 + 1 + RETRY_FIRST_US)
    # connected devices get the frames now, once each, in order
    got = [m.decode(frame) for frame in seen]
    assert [(f.channel, f.seq, f.stage) for f in got if isinstance(f, m.Trigger)] == [
        ("global", 1, "live"),
        ("event:final", 1, "live"),
    ]
    # a device that was away replays what it missed, one that has nothing gets the state
    resume = router.resume("event:final", before)
    assert resume.kind is ResumeKind.REPLAY
    assert [m.decode(f).stage for f in resume.frames] == ["live"]  # type: ignore[union-attr]
    state = m.decode(router.resume("event:final", None).frames[0])
    assert isinstance(state, m.State)
    assert [(e.event, e.stage, e.version) for e in state.events] == [(ID, "live", 2)]


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


def test_the_timer_loop_hands_a_failed_sink_its_triggers_when_the_retry_is_due() -> None:
    async def scenario() -> None:
        clock = Clock(T0 + SECOND)
        waiter = Waiter()
        failing = asyncio.Event()

        def sink(triggers: Sequence[Trigger]) -> None:
            if not failing.is_set():
                failing.set()
                raise ConnectionError("router away")
            waiter(triggers)

        service = LiveService(MemoryKV(), sink=sink, clock=clock)
        create(service)
        stop = asyncio.Event()
        loop = asyncio.create_task(run_timers(service, stop=stop))
        service.command(StartNow(ID), clock.now)
        assert failing.is_set()
        retry_at = service.next_deadline()
        assert retry_at == clock.now + RETRY_FIRST_US
        clock.now = retry_at  # no command, no timer: only the retry brings it
        service.poke()
        assert await waiter.next() == [(State.LIVE, 2)]
        stop.set()
        await asyncio.wait_for(loop, timeout=10)

    asyncio.run(scenario())

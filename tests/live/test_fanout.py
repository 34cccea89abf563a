"""Fan-out bookkeeping: sequence and epoch per channel, dedup, replay or state on resume, routing
to channels, the in-process transport and the push registry's expiry."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from hopcast.errors import ConfigError, InvalidInput, NotFound
from hopcast.live import messages as m
from hopcast.live.fanout import (
    GLOBAL_CHANNEL,
    MAX_EPOCH,
    ChannelLog,
    Ingest,
    InMemoryPushRegistry,
    InProcessTransport,
    Resume,
    ResumeKind,
    Router,
    default_channels,
    empty_resume,
    new_epoch,
)
from hopcast.live.messages import EventStage, Position
from hopcast.live.producer import Trigger
from hopcast.live.schedule import State
from hopcast.sdk.protocol import DeviceProtocol, StateSynced, TriggerApplied

NOW = 1_767_225_600_000_000
EPOCH = 1234


def stage(version: int, *, event: str = "finale", name: str = "live") -> EventStage:
    return EventStage(event=event, stage=name, version=version, ts=NOW + version, payload=None)


def trigger(version: int, *, event: str = "finale", st: State = State.LIVE) -> Trigger:
    return Trigger(event, st, version, NOW + version)


def decode(frames: tuple[bytes, ...] | list[bytes]) -> list[m.Message]:
    return [m.decode(f) for f in frames]


class Recorder:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []

    def __call__(self, channel: str, frame: bytes) -> None:
        self.frames.append((channel, frame))


# -- ChannelLog ------------------------------------------------------------------------------


def test_a_log_numbers_triggers_from_one_within_its_epoch_and_encodes_each_once() -> None:
    log = ChannelLog("global", EPOCH)
    assert log.position == Position(EPOCH, 0)
    first = log.publish(stage(1))
    second = log.publish(stage(2, event="other"))
    assert first is not None and second is not None
    assert m.decode(first) == m.Trigger(
        channel="global", epoch=EPOCH, seq=1, event="finale", stage="live", version=1, ts=NOW + 1
    )
    assert m.decode(second) == m.Trigger(
        channel="global", epoch=EPOCH, seq=2, event="other", stage="live", version=2, ts=NOW + 2
    )
    assert log.position == Position(EPOCH, 2)


def test_a_replayed_or_older_version_is_a_duplicate_and_takes_no_sequence_number() -> None:
    log = ChannelLog("global", EPOCH)
    assert log.publish(stage(5)) is not None
    assert log.publish(stage(5)) is None
    assert log.publish(stage(4, name="prefetch")) is None
    assert log.seq == 1
    assert log.events == (stage(5),)


def test_resume_replays_exactly_the_triggers_after_the_devices_position() -> None:
    log = ChannelLog("global", EPOCH)
    frames = [log.publish(stage(v)) or b"" for v in range(1, 5)]
    resume = log.resume(Position(EPOCH, 2))
    assert resume == Resume(ResumeKind.REPLAY, (frames[2], frames[3]))


def test_an_up_to_date_device_gets_an_empty_replay() -> None:
    log = ChannelLog("global", EPOCH)
    log.publish(stage(1))
    assert log.resume(Position(EPOCH, 1)) == Resume(ResumeKind.REPLAY, ())


@pytest.mark.parametrize(
    "position",
    [None, Position(EPOCH + 1, 1), Position(EPOCH, 7)],
    ids=["no position", "another epoch", "ahead of the log"],
)
def test_a_device_the_history_cannot_place_gets_one_state_frame(position: Position | None) -> None:
    log = ChannelLog("global", EPOCH)
    log.publish(stage(1))
    log.publish(stage(2, event="other"))
    resume = log.resume(position)
    assert resume.kind is ResumeKind.STATE
    assert decode(resume.frames) == [
        m.State(
            channel="global",
            epoch=EPOCH,
            seq=2,
            events=(stage(1), stage(2, event="other")),
        )
    ]


def test_when_the_history_no_longer_covers_the_gap_the_device_gets_the_state() -> None:
    log = ChannelLog("global", EPOCH, capacity=2)
    for version in range(1, 5):
        log.publish(stage(version))
    assert log.oldest_seq == 3
    assert log.resume(Position(EPOCH, 2)).kind is ResumeKind.REPLAY  # 3 and 4 are kept
    resume = log.resume(Position(EPOCH, 1))  # 2 is gone
    assert decode(resume.frames) == [
        m.State(channel="global", epoch=EPOCH, seq=4, events=(stage(4),))
    ]


def test_the_state_keeps_the_most_recently_updated_events_up_to_the_protocol_limit() -> None:
    log = ChannelLog("global", EPOCH)
    for i in range(m.MAX_STATE_EVENTS + 1):
        log.publish(stage(1, event=f"e{i}"))
    log.publish(stage(2, event="e1"))  # e1 becomes the most recent, e0 was dropped
    events = [e.event for e in log.events]
    assert len(events) == m.MAX_STATE_EVENTS
    assert "e0" not in events
    assert events[-1] == "e1"
    (state,) = decode(log.resume(None).frames)
    assert isinstance(state, m.State) and len(state.events) == m.MAX_STATE_EVENTS


def test_the_state_frame_is_encoded_once_until_the_log_changes() -> None:
    log = ChannelLog("global", EPOCH)
    log.publish(stage(1))
    assert log.state_frame() is log.state_frame()
    before = log.state_frame()
    log.publish(stage(2))
    assert log.state_frame() != before


def test_reset_starts_a_new_epoch_keeps_the_stages_and_returns_its_state() -> None:
    log = ChannelLog("global", EPOCH)
    log.publish(stage(1))
    frame = log.reset(EPOCH + 1)
    assert m.decode(frame) == m.State(channel="global", epoch=EPOCH + 1, seq=0, events=(stage(1),))
    assert log.position == Position(EPOCH + 1, 0)
    assert log.resume(Position(EPOCH, 1)).kind is ResumeKind.STATE
    assert log.resume(Position(EPOCH + 1, 0)) == Resume(ResumeKind.REPLAY, ())
    next_frame = log.publish(stage(2))
    assert next_frame is not None
    assert m.decode(next_frame) == m.Trigger(
        channel="global",
        epoch=EPOCH + 1,
        seq=1,
        event="finale",
        stage="live",
        version=2,
        ts=NOW + 2,
    )


@pytest.mark.parametrize("epoch", [EPOCH, -1, MAX_EPOCH + 1])
def test_reset_refuses_the_current_or_an_out_of_range_epoch(epoch: int) -> None:
    log = ChannelLog("global", EPOCH)
    with pytest.raises(InvalidInput):
        log.reset(epoch)
    assert log.epoch == EPOCH


def test_a_trigger_devices_would_refuse_is_not_published_and_leaves_the_log_unchanged() -> None:
    log = ChannelLog("global", EPOCH)
    bad = EventStage(event="finale", stage="live", version=1, ts=NOW, payload="p" * 500)
    with pytest.raises(InvalidInput, match="not a valid frame"):
        log.publish(bad)
    assert log.position == Position(EPOCH, 0)
    assert log.events == ()


def test_a_log_checks_its_channel_name_capacity_and_epoch() -> None:
    with pytest.raises(InvalidInput):
        ChannelLog("", EPOCH)
    with pytest.raises(InvalidInput):
        ChannelLog("c" * (m.MAX_NAME_CHARS + 1), EPOCH)
    with pytest.raises(ConfigError):
        ChannelLog("global", EPOCH, capacity=0)
    with pytest.raises(InvalidInput):
        ChannelLog("global", MAX_EPOCH + 1)


def test_new_epochs_are_in_range_and_reproducible_with_a_seeded_rng() -> None:
    assert new_epoch(random.Random(7)) == new_epoch(random.Random(7))
    assert all(1 <= new_epoch() <= MAX_EPOCH for _ in range(100))


# -- Router ----------------------------------------------------------------------------------


def test_a_trigger_goes_to_the_global_and_its_event_channel_one_frame_each() -> None:
    transport, recorder = InProcessTransport(), Recorder()
    transport.subscribe(recorder)
    router = Router(transport, epoch=EPOCH)
    assert default_channels(trigger(1)) == (GLOBAL_CHANNEL, "event:finale")
    assert router.publish(trigger(1)) == 2
    assert [(ch, m.decode(f)) for ch, f in recorder.frames] == [
        (
            ch,
            m.Trigger(
                channel=ch, epoch=EPOCH, seq=1, event="finale", stage="live", version=1, ts=NOW + 1
            ),
        )
        for ch in ("global", "event:finale")
    ]


def test_a_producer_replay_publishes_nothing() -> None:
    transport, recorder = InProcessTransport(), Recorder()
    transport.subscribe(recorder)
    router = Router(transport, epoch=EPOCH)
    router.publish_all([trigger(1), trigger(2, st=State.ENDED)])
    assert router.publish(trigger(2, st=State.ENDED)) == 0
    assert len(recorder.frames) == 4
    assert router.logs["global"].seq == 2


def test_the_router_names_payloads_and_uses_the_channels_it_is_given() -> None:
    transport, recorder = InProcessTransport(), Recorder()
    transport.subscribe(recorder)
    router = Router(
        transport,
        channels_for=lambda t: ["a", "b", "a"],
        payload_for=lambda t: f"{t.event_id}/{t.stage.value}",
        epoch=EPOCH,
    )
    router.publish(trigger(1))
    decoded = [m.decode(f) for _, f in recorder.frames]
    assert [ch for ch, _ in recorder.frames] == ["a", "b"]
    assert all(isinstance(t, m.Trigger) and t.payload == "finale/live" for t in decoded)


def test_a_channel_that_published_nothing_resumes_at_the_router_epoch_without_a_log() -> None:
    router = Router(InProcessTransport(), epoch=EPOCH)
    resume = router.resume("event:later", None)
    assert decode(resume.frames) == [m.State(channel="event:later", epoch=EPOCH, seq=0)]
    assert router.resume("event:later", Position(EPOCH, 0)) == Resume(ResumeKind.REPLAY, ())
    assert "event:later" not in router.logs


def test_a_device_following_the_router_takes_every_trigger_in_sequence() -> None:
    router = Router(InProcessTransport(), epoch=EPOCH)
    device = DeviceProtocol("token", ["global"])
    device.connect(NOW)
    device.receive(m.encode(m.Welcome(node="gw", heartbeat_ms=30_000)), NOW)
    for frame in router.resume("global", None).frames:
        assert device.receive(frame, NOW) == [StateSynced("global", Position(EPOCH, 0))]
    frames: list[bytes] = []
    router.subscribe(lambda ch, f: frames.append(f) if ch == "global" else None)
    router.publish(trigger(1, st=State.PREFETCHING))
    router.publish(trigger(2))
    events = [e for f in frames for e in device.receive(f, NOW)]
    assert [(e.stage, e.version) for e in events if isinstance(e, TriggerApplied)] == [
        ("prefetch", 1),
        ("live", 2),
    ]
    assert device.positions["global"] == Position(EPOCH, 2)


def test_reset_publishes_the_new_epochs_state_to_subscribers() -> None:
    transport, recorder = InProcessTransport(), Recorder()
    transport.subscribe(recorder)
    router = Router(transport, epoch=EPOCH)
    router.publish(trigger(1))
    router.reset("global", EPOCH + 9)
    channel, frame = recorder.frames[-1]
    assert channel == "global"
    assert m.decode(frame) == m.State(channel="global", epoch=EPOCH + 9, seq=0, events=(stage(1),))
    with pytest.raises(NotFound):
        router.reset("never-published")


class Unreliable(InProcessTransport):
    """An in-process transport that refuses frames while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def publish(self, channel: str, frame: bytes) -> None:
        if self.down:
            raise ConnectionError("transport down")
        super().publish(channel, frame)


def test_frames_the_transport_refused_go_out_in_order_before_anything_newer() -> None:
    transport, recorder = Unreliable(), Recorder()
    transport.subscribe(recorder)
    router = Router(transport, channels_for=lambda t: ["global"], epoch=EPOCH)
    router.publish(trigger(1, st=State.PREFETCHING))
    transport.down = True
    with pytest.raises(ConnectionError):
        router.publish(trigger(2))
    with pytest.raises(ConnectionError):
        router.publish(trigger(2))  # a retry while still down: still recorded once
    assert (router.logs["global"].seq, router.unsent) == (2, 1)
    transport.down = False
    assert router.publish(trigger(2)) == 0  # the retried trigger is a duplicate by now ...
    router.publish(trigger(3, st=State.ENDED))  # ... but its frame went out first
    got = decode([f for _, f in recorder.frames])
    assert [(t.seq, t.version) for t in got if isinstance(t, m.Trigger)] == [(1, 1), (2, 2), (3, 3)]
    assert router.unsent == 0


def test_refused_frames_the_history_no_longer_holds_go_out_as_the_state() -> None:
    transport, recorder = Unreliable(), Recorder()
    transport.subscribe(recorder)
    router = Router(transport, channels_for=lambda t: ["global"], history=2, epoch=EPOCH)
    transport.down = True
    for version in (1, 2, 3):  # each refused; the history keeps only the last two
        with pytest.raises(ConnectionError):
            router.publish(trigger(version, event=f"e{version}"))
    assert (router.logs["global"].seq, router.unsent) == (3, 3)
    transport.down = False
    router.publish(trigger(4, event="e4"))
    [(_, frame)] = recorder.frames  # one state covers the four triggers
    state = m.decode(frame)
    assert isinstance(state, m.State) and state.seq == 4
    assert [e.event for e in state.events] == ["e1", "e2", "e3", "e4"]
    assert router.unsent == 0


def test_beyond_its_bound_a_router_forgets_the_oldest_channels_whose_events_are_over() -> None:
    router = Router(InProcessTransport(), epoch=EPOCH, max_channels=3)
    router.publish(trigger(1, event="old", st=State.ENDED))
    router.publish(trigger(1, event="running", st=State.LIVE))
    router.publish(trigger(1, event="gone", st=State.CANCELLED))  # 4 logs: "old" goes
    assert list(router.logs) == ["event:running", "global", "event:gone"]
    router.publish(trigger(1, event="next", st=State.PREFETCHING))  # "gone" goes
    assert list(router.logs) == ["event:running", "global", "event:next"]
    router.publish(trigger(1, event="other", st=State.LIVE))  # nothing over: all kept
    assert len(router.logs) == 4 and "event:running" in router.logs
    # a device that saw the end keeps it: the forgotten channel's empty state is behind it
    resume = router.resume("event:old", Position(EPOCH, 1))
    state = m.decode(resume.frames[0])
    assert isinstance(state, m.State) and (state.seq, state.events) == (0, ())


def test_a_router_checks_its_settings() -> None:
    with pytest.raises(ConfigError):
        Router(InProcessTransport(), history=0)
    with pytest.raises(ConfigError):
        Router(InProcessTransport(), max_channels=0)
    with pytest.raises(InvalidInput):
        Router(InProcessTransport(), epoch=-1)
    assert 1 <= Router(InProcessTransport()).epoch <= MAX_EPOCH


# -- copies of a log: restore and ingest -----------------------------------------------------


def _published(versions: int, *, capacity: int = 8, epoch: int = EPOCH) -> ChannelLog:
    log = ChannelLog("global", epoch, capacity=capacity)
    for v in range(1, versions + 1):
        log.publish(stage(v, event=f"e{v % 3}"))
    return log


def _same(copy: ChannelLog, log: ChannelLog) -> None:
    assert copy.position == log.position
    assert copy.events == log.events
    assert copy.frames == log.frames
    assert copy.state_frame() == log.state_frame()
    for position in (None, Position(EPOCH, 0), Position(EPOCH, log.seq - 2), log.position):
        assert copy.resume(position) == log.resume(position)


def test_a_log_restored_from_its_state_and_history_resumes_devices_exactly_like_it() -> None:
    log = _published(12)  # capacity 8: the history holds seq 5..12
    _same(ChannelLog.restore(log.state_frame(), log.frames, capacity=8), log)


def test_restore_keeps_only_the_contiguous_run_ending_at_the_state() -> None:
    log = _published(6)
    frames = list(log.frames)
    # a hole at seq 3: only 4..6 can be replayed
    holed = ChannelLog.restore(log.state_frame(), [*frames[:2], *frames[3:]])
    assert holed.oldest_seq == 4 and holed.seq == 6
    # a frame of another epoch first, and history newer than the state: dropped
    other = _published(1, epoch=EPOCH + 1).frames
    mixed = ChannelLog.restore(log.state_frame(), [*other, *frames])
    assert mixed.frames == log.frames
    behind = ChannelLog.restore(_published(4).state_frame(), frames)
    assert behind.seq == 4 and behind.frames == ()
    # a smaller capacity keeps the newest
    assert ChannelLog.restore(log.state_frame(), frames, capacity=2).frames == log.frames[-2:]


def test_restore_from_a_reset_state_starts_the_new_epoch_with_the_stages() -> None:
    log = _published(3)
    state = log.reset(EPOCH + 5)
    copy = ChannelLog.restore(state)
    _same(copy, log)
    assert copy.position == Position(EPOCH + 5, 0)


def test_restore_refuses_what_is_not_a_state_and_its_channels_triggers() -> None:
    log = _published(2)
    with pytest.raises(InvalidInput):
        ChannelLog.restore(log.frames[0])  # a trigger where the state belongs
    with pytest.raises(InvalidInput):
        ChannelLog.restore(b"{not json")
    elsewhere = ChannelLog("event:x", EPOCH)
    elsewhere.publish(stage(1))
    with pytest.raises(InvalidInput):
        ChannelLog.restore(log.state_frame(), [*log.frames, *elsewhere.frames])


def test_ingest_applies_the_next_frame_and_ends_up_identical_to_the_source() -> None:
    log = ChannelLog("global", EPOCH, capacity=4)
    copy = ChannelLog("global", EPOCH, capacity=4)
    for v in range(1, 10):
        frame = log.publish(stage(v, event=f"e{v % 3}"))
        assert frame is not None
        msg = m.decode(frame)
        assert isinstance(msg, m.Trigger)
        assert copy.ingest(frame, msg) is Ingest.APPLIED
    _same(copy, log)


def test_ingest_reports_duplicates_and_gaps_and_leaves_the_log_unchanged() -> None:
    log = _published(5)
    frames = log.frames
    copy = ChannelLog.restore(_published(2).state_frame(), frames[:2])
    decoded = [m.decode(f) for f in frames]
    assert all(isinstance(t, m.Trigger) for t in decoded)
    triggers = [t for t in decoded if isinstance(t, m.Trigger)]
    before = (copy.position, copy.frames, copy.state_frame())
    assert copy.ingest(frames[1], triggers[1]) is Ingest.DUPLICATE  # seq 2 again
    assert copy.ingest(frames[3], triggers[3]) is Ingest.GAP  # seq 4 after 2
    new_epoch_frame = _published(1, epoch=EPOCH + 1).frames[0]
    other = m.decode(new_epoch_frame)
    assert isinstance(other, m.Trigger)
    assert copy.ingest(new_epoch_frame, other) is Ingest.GAP  # another epoch
    assert (copy.position, copy.frames, copy.state_frame()) == before
    assert copy.ingest(frames[2], triggers[2]) is Ingest.APPLIED


def test_an_unpublished_channel_resumes_at_the_given_epoch() -> None:
    assert empty_resume("x", EPOCH, Position(EPOCH, 0)) == Resume(ResumeKind.REPLAY, ())
    resume = empty_resume("x", EPOCH, Position(EPOCH + 1, 3))
    assert decode(resume.frames) == [m.State(channel="x", epoch=EPOCH, seq=0)]


class StoringTransport(InProcessTransport):
    """A LoggedTransport: records what the router hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.router: Router | None = None
        self.logged: list[tuple[str, bytes, bytes]] = []

    def attach(self, router: Router) -> None:
        self.router = router

    def publish_logged(self, channel: str, frame: bytes, state: bytes) -> None:
        self.logged.append((channel, frame, state))
        self.publish(channel, frame)


def test_a_router_hands_a_logged_transport_each_frame_with_the_state_at_its_position() -> None:
    transport, recorder = StoringTransport(), Recorder()
    transport.subscribe(recorder)
    router = Router(transport, epoch=EPOCH)
    assert transport.router is router
    router.publish(trigger(1))
    router.publish(trigger(2, event="other"))
    router.reset("global", EPOCH + 1)
    for channel, frame, state in transport.logged:
        msg, snapshot = m.decode(frame), m.decode(state)
        assert isinstance(msg, m.Trigger | m.State) and isinstance(snapshot, m.State)
        assert (snapshot.channel, snapshot.epoch, snapshot.seq) == (channel, msg.epoch, msg.seq)
    assert transport.logged[-1][1] == transport.logged[-1][2]  # a reset's frame is its state
    assert [f for _, f, _ in transport.logged] == [f for _, f in recorder.frames]
    # what the transport was handed rebuilds the router's log
    handed = [(f, s) for c, f, s in transport.logged if c == "event:other"]
    frames, state = [f for f, _ in handed], handed[-1][1]
    _same(ChannelLog.restore(state, frames), router.logs["event:other"])


# -- InProcessTransport ----------------------------------------------------------------------


def test_the_in_process_transport_calls_every_subscriber_in_order_until_it_unsubscribes() -> None:
    transport, first, second = InProcessTransport(), Recorder(), Recorder()
    stop_first = transport.subscribe(first)
    transport.subscribe(second)
    transport.publish("a", b"1")
    stop_first()
    stop_first()  # idempotent
    transport.publish("a", b"2")
    assert first.frames == [("a", b"1")]
    assert second.frames == [("a", b"1"), ("a", b"2")]


def test_a_failing_subscriber_does_not_stop_delivery_to_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, recorder = InProcessTransport(), Recorder()

    def broken(channel: str, frame: bytes) -> None:
        raise RuntimeError("boom")

    transport.subscribe(broken)
    transport.subscribe(recorder)
    with caplog.at_level(logging.ERROR):
        transport.publish("a", b"1")
    assert recorder.frames == [("a", b"1")]
    assert "subscriber failed" in caplog.text


# -- InMemoryPushRegistry ----------------------------------------------------------------------


def test_the_push_registry_finds_a_device_until_its_entry_expires() -> None:
    async def main() -> None:
        registry = InMemoryPushRegistry(ttl_us=100)
        await registry.register("tv-1", "gw-1", NOW)
        assert await registry.lookup("tv-1", NOW + 99) == "gw-1"
        assert await registry.lookup("tv-1", NOW + 100) is None
        await registry.refresh(["tv-1"], "gw-1", NOW + 50)
        assert await registry.lookup("tv-1", NOW + 149) == "gw-1"
        assert await registry.expire(NOW + 149) == 0
        assert await registry.expire(NOW + 150) == 1
        assert len(registry) == 0

    asyncio.run(main())


def test_a_later_registration_wins_and_only_the_owner_unregisters() -> None:
    async def main() -> None:
        registry = InMemoryPushRegistry(ttl_us=1_000)
        await registry.register("tv-1", "gw-1", NOW)
        await registry.register("tv-1", "gw-2", NOW + 1)
        await registry.unregister("tv-1", "gw-1")  # stale node: no effect
        assert await registry.lookup("tv-1", NOW + 2) == "gw-2"
        await registry.unregister("tv-1", "gw-2")
        assert registry.get("tv-1") is None
        assert await registry.lookup("unknown", NOW) is None

    asyncio.run(main())


def test_the_push_registry_needs_a_positive_ttl() -> None:
    with pytest.raises(ConfigError):
        InMemoryPushRegistry(ttl_us=0)

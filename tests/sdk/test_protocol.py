"""The device's sans-I/O protocol: handshake bytes, resume, idempotent application, epochs,
refused frames leaving the state untouched, backoff and fallback-fetch jitter."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest

from hopcast.durations import MS, SECOND
from hopcast.errors import InvalidInput
from hopcast.live import messages as m
from hopcast.live.messages import EventStage, Position, ProtocolError
from hopcast.sdk import protocol as p
from hopcast.sdk.protocol import (
    DeviceProtocol,
    NeedsPayload,
    Phase,
    ResyncNeeded,
    ServerBye,
    ServerError,
    StateSynced,
    TriggerApplied,
    Welcomed,
)

NOW = 1_767_225_600_000_000
TOKEN = "hc1.k0.abc.def"
CLIENT = "hopcast-py/0.1.0"

# The handshake as bytes: the same values as the golden vectors in tests/live/test_messages.py.
HELLO = (
    b'{"type":"hello","token":"hc1.k0.abc.def","client":"hopcast-py/0.1.0","protocol":1,"last":{}}'
)
WELCOME = b'{"type":"welcome","node":"gw-1","heartbeat_ms":30000}'
SUBSCRIBE = b'{"type":"subscribe","channels":["global","event:finale"]}'
PING = b'{"type":"ping","ts":1767225600000000}'
PONG = b'{"type":"pong","ts":1767225600000000}'


def trigger(
    seq: int,
    version: int,
    *,
    epoch: int = 7,
    event: str = "finale",
    stage: str = "live",
    channel: str = "global",
    payload: str | None = None,
) -> bytes:
    return m.encode(
        m.Trigger(
            channel=channel,
            epoch=epoch,
            seq=seq,
            event=event,
            stage=stage,
            version=version,
            ts=NOW + seq,
            payload=payload,
        )
    )


def state(seq: int, *stages: EventStage, epoch: int = 7, channel: str = "global") -> bytes:
    return m.encode(m.State(channel=channel, epoch=epoch, seq=seq, events=stages))


def stage(event: str, name: str, version: int, payload: str | None = None) -> EventStage:
    return EventStage(event=event, stage=name, version=version, ts=NOW, payload=payload)


def applied(seq: int, version: int, stage: str = "live", event: str = "finale") -> TriggerApplied:
    return TriggerApplied("global", event, stage, version, NOW + seq, None)


def new_device(**kwargs: Any) -> DeviceProtocol:
    return DeviceProtocol(TOKEN, ["global", "event:finale"], client=CLIENT, **kwargs)


def opened(device: DeviceProtocol | None = None, position: int = 12) -> DeviceProtocol:
    """A welcomed device whose 'global' channel stands at (epoch 7, ``position``)."""
    device = device or new_device()
    device.connect(NOW)
    device.receive(WELCOME, NOW)
    device.receive(state(position), NOW)
    device.data_to_send()
    return device


def snapshot(device: DeviceProtocol) -> tuple[Any, ...]:
    return (
        device.phase,
        dict(device.positions),
        dict(device.applied),
        device.duplicates,
        device.stale,
        device.retry_after_ms,
        device.node,
        device.channels,
        device.deadline(),
    )


# -- handshake ---------------------------------------------------------------------------------


def test_connect_returns_the_golden_hello_bytes() -> None:
    device = new_device()
    assert device.connect(NOW) == HELLO
    assert device.phase is Phase.CONNECTING


def test_welcome_opens_the_connection_and_queues_the_golden_subscribe() -> None:
    device = new_device()
    device.connect(NOW)
    assert device.receive(WELCOME, NOW) == [Welcomed("gw-1", 30000)]
    assert device.phase is Phase.OPEN
    assert device.node == "gw-1"
    assert device.data_to_send() == [SUBSCRIBE]
    assert device.data_to_send() == []


def test_a_ping_is_answered_with_the_golden_pong() -> None:
    device = opened()
    assert device.receive(PING, NOW) == []
    assert device.data_to_send() == [PONG]


def test_a_refresh_request_is_reported_and_renew_answers_on_the_open_connection() -> None:
    device = opened()
    ask = b'{"type":"refresh","expires_at":1767225660000000,"within_ms":90000}'
    assert device.receive(ask, NOW) == [p.RefreshRequested(1_767_225_660_000_000, 90_000)]
    assert device.data_to_send() == []  # nothing until the caller has a fresh token
    device.renew("hc1.k0.fresh.mac")
    assert device.data_to_send() == [b'{"type":"token","token":"hc1.k0.fresh.mac"}']
    assert device.phase is Phase.OPEN


def test_renew_without_an_open_connection_only_changes_the_next_hellos_token() -> None:
    device = new_device()
    device.renew("hc1.k0.fresh.mac")
    assert device.data_to_send() == []
    device.connect(NOW)
    device.renew("hc1.k0.newer.mac")  # before welcome: the gateway accepts only hello
    assert device.data_to_send() == []
    device.connection_lost()
    assert b'"token":"hc1.k0.newer.mac"' in device.connect(NOW)


def test_the_first_state_of_a_channel_applies_its_stages_and_sets_the_position() -> None:
    device = new_device(cache={"finale/live": b"rows"})
    device.connect(NOW)
    device.receive(WELCOME, NOW)
    events = device.receive(
        state(12, stage("finale", "live", 4, "finale/live"), stage("quiz", "scheduled", 1)), NOW
    )
    assert events == [
        TriggerApplied("global", "finale", "live", 4, NOW, "finale/live"),
        TriggerApplied("global", "quiz", "scheduled", 1, NOW, None),
        StateSynced("global", Position(7, 12)),
    ]
    assert device.positions == {"global": Position(7, 12)}
    assert {e: s.version for e, s in device.applied.items()} == {"finale": 4, "quiz": 1}


# -- sequencing and idempotent application -------------------------------------------------------


def test_triggers_in_sequence_are_applied_and_advance_the_position() -> None:
    device = opened()
    assert device.receive(trigger(13, 1, stage="prefetching"), NOW) == [
        applied(13, 1, "prefetching")
    ]
    assert device.receive(trigger(14, 2), NOW) == [applied(14, 2)]
    assert device.positions["global"] == Position(7, 14)
    assert device.applied["finale"].stage == "live"


def test_a_duplicate_trigger_is_applied_once_and_counted() -> None:
    device = opened()
    assert device.receive(trigger(13, 4), NOW) == [applied(13, 4)]
    assert device.receive(trigger(13, 4), NOW) == []
    assert (device.duplicates, device.stale) == (1, 0)
    assert device.positions["global"] == Position(7, 13)


def test_the_same_version_under_a_new_sequence_number_is_still_a_duplicate() -> None:
    device = opened()
    device.receive(trigger(13, 4), NOW)
    assert device.receive(trigger(14, 4), NOW) == []
    assert device.duplicates == 1
    assert device.positions["global"] == Position(7, 14)


def test_an_older_version_is_ignored_and_counted_as_stale() -> None:
    device = opened()
    device.receive(trigger(13, 5, stage="ended"), NOW)
    assert device.receive(trigger(14, 4, stage="live"), NOW) == []
    assert (device.duplicates, device.stale) == (0, 1)
    assert device.applied["finale"].stage == "ended"


def test_versions_are_tracked_per_event() -> None:
    device = opened()
    device.receive(trigger(13, 5, event="finale"), NOW)
    assert device.receive(trigger(14, 1, event="quiz"), NOW) == [applied(14, 1, event="quiz")]


def test_a_state_never_moves_the_position_back_within_an_epoch() -> None:
    device = opened()
    device.receive(trigger(13, 4), NOW)
    assert device.receive(state(10, stage("finale", "live", 4)), NOW) == [
        StateSynced("global", Position(7, 13))
    ]
    assert device.positions["global"] == Position(7, 13)
    assert device.duplicates == 0  # snapshots restate what is known; they are not redeliveries


def test_a_trigger_for_a_channel_not_followed_is_ignored() -> None:
    device = opened()
    assert device.receive(trigger(1, 1, channel="region:eu"), NOW) == []
    assert "region:eu" not in device.positions
    assert device.applied == {}


# -- payloads ------------------------------------------------------------------------------------


def test_a_trigger_naming_a_payload_missing_from_the_cache_asks_for_it() -> None:
    device = opened(new_device(cache={}))
    events = device.receive(trigger(13, 4, payload="finale/live"), NOW)
    assert events[1:] == [NeedsPayload("finale/live", "finale", "live")]


def test_a_cached_payload_or_no_payload_needs_no_fetch() -> None:
    cache: dict[str, bytes] = {"finale/live": b"rows"}
    device = opened(new_device(cache=cache))
    assert len(device.receive(trigger(13, 4, payload="finale/live"), NOW)) == 1
    assert len(device.receive(trigger(14, 5, stage="ended"), NOW)) == 1


def test_the_cache_is_read_when_the_trigger_arrives_not_when_the_device_was_made() -> None:
    cache: dict[str, bytes] = {}
    device = opened(new_device(cache=cache))
    cache["finale/live"] = b"prefetched later"
    assert device.receive(trigger(13, 4, payload="finale/live"), NOW) == [
        TriggerApplied("global", "finale", "live", 4, NOW + 13, "finale/live")
    ]


# -- resume --------------------------------------------------------------------------------------


def test_after_a_gap_offline_the_device_resumes_from_its_last_position_and_catches_up() -> None:
    device = opened()
    device.receive(trigger(13, 1, stage="prefetching"), NOW)
    device.connection_lost()
    hello = m.decode(device.connect(NOW + SECOND))
    assert isinstance(hello, m.Hello)
    assert hello.last == {"global": Position(7, 13)}
    device.receive(WELCOME, NOW + SECOND)
    assert device.data_to_send() == [SUBSCRIBE]
    # The gateway replays what the device missed; one arrives twice.
    assert device.receive(trigger(14, 2), NOW) == [applied(14, 2)]
    assert device.receive(trigger(15, 3, stage="ended"), NOW) == [applied(15, 3, "ended")]
    assert device.receive(trigger(15, 3, stage="ended"), NOW) == []
    assert device.positions["global"] == Position(7, 15)
    assert device.duplicates == 1


def test_when_history_no_longer_covers_the_gap_a_state_catches_the_device_up() -> None:
    device = opened()
    device.receive(trigger(13, 2), NOW)
    device.connection_lost()
    device.connect(NOW)
    device.receive(WELCOME, NOW)
    events = device.receive(state(90, stage("finale", "ended", 3), stage("quiz", "live", 2)), NOW)
    assert [e.event for e in events if isinstance(e, TriggerApplied)] == ["finale", "quiz"]
    assert events[-1] == StateSynced("global", Position(7, 90))
    assert device.receive(trigger(91, 4, stage="cancelled", event="quiz"), NOW) != []
    assert device.positions["global"] == Position(7, 91)


def test_a_new_epoch_holds_the_position_until_the_state_of_that_epoch_arrives() -> None:
    device = opened()
    # Applied by version (always safe), but the position does not move to an unrelated epoch.
    assert device.receive(trigger(1, 4, epoch=8), NOW) == [applied(1, 4)]
    assert device.receive(trigger(2, 5, epoch=8, stage="ended"), NOW) != []
    assert device.positions["global"] == Position(7, 12)
    # A reconnect meanwhile resumes from the old epoch, so the gateway answers with a state.
    device.connection_lost()
    hello = m.decode(device.connect(NOW))
    assert isinstance(hello, m.Hello)
    assert hello.last["global"] == Position(7, 12)
    device.receive(WELCOME, NOW)
    assert device.receive(state(2, stage("finale", "ended", 5), epoch=8), NOW) == [
        StateSynced("global", Position(8, 2))
    ]
    assert device.receive(trigger(3, 6, epoch=8, stage="replay"), NOW) != []
    assert device.positions["global"] == Position(8, 3)


def test_a_trigger_before_the_first_state_waits_for_it_to_set_the_position() -> None:
    device = new_device()
    device.connect(NOW)
    device.receive(WELCOME, NOW)
    assert device.receive(trigger(5, 1), NOW) == [applied(5, 1)]
    assert device.positions == {}


def test_a_gap_within_an_epoch_asks_once_for_a_resync_and_holds_the_position() -> None:
    device = opened()
    assert device.receive(trigger(15, 4), NOW) == [
        applied(15, 4),
        ResyncNeeded("global", "expected seq 13 in epoch 7, got 15"),
    ]
    assert device.receive(trigger(16, 5, stage="ended"), NOW) == [applied(16, 5, "ended")]
    assert device.positions["global"] == Position(7, 12)
    device.connection_lost()
    hello = m.decode(device.connect(NOW))
    assert isinstance(hello, m.Hello)
    assert hello.last == {"global": Position(7, 12)}


def test_unsubscribing_forgets_the_channel_position_and_tells_the_gateway() -> None:
    device = opened()
    device.unsubscribe(["global", "never-followed"])
    assert device.data_to_send() == [b'{"type":"unsubscribe","channels":["global"]}']
    assert device.channels == ("event:finale",)
    device.connection_lost()
    hello = m.decode(device.connect(NOW))
    assert isinstance(hello, m.Hello)
    assert hello.last == {}


def test_subscribing_while_open_sends_only_the_new_channels() -> None:
    device = opened()
    device.subscribe(["global", "region:eu", "region:eu"])
    assert device.data_to_send() == [b'{"type":"subscribe","channels":["region:eu"]}']


def test_subscribing_while_closed_waits_for_the_next_welcome() -> None:
    device = DeviceProtocol(TOKEN, client=CLIENT)
    device.subscribe(["global"])
    assert device.data_to_send() == []
    device.connect(NOW)
    device.receive(WELCOME, NOW)
    assert device.data_to_send() == [b'{"type":"subscribe","channels":["global"]}']


@pytest.mark.parametrize("channels", [[""], ["x" * (m.MAX_NAME_CHARS + 1)]])
def test_subscribing_to_an_invalid_channel_name_is_refused(channels: list[str]) -> None:
    with pytest.raises(InvalidInput, match="channel names"):
        DeviceProtocol(TOKEN, channels)


def test_following_more_channels_than_the_protocol_allows_is_refused() -> None:
    device = DeviceProtocol(TOKEN, [f"c{i}" for i in range(m.MAX_CHANNELS)])
    with pytest.raises(InvalidInput, match="at most 64 channels"):
        device.subscribe(["one-more"])
    assert len(device.channels) == m.MAX_CHANNELS


def test_connecting_again_drops_frames_queued_for_the_old_connection() -> None:
    device = opened()
    device.receive(PING, NOW)
    device.connect(NOW)
    assert device.data_to_send() == []


# -- server errors, bye, liveness --------------------------------------------------------------


def test_an_error_before_welcome_is_reported_and_the_connection_stays_unopened() -> None:
    device = new_device()
    device.connect(NOW)
    frame = b'{"type":"error","code":"unauthorized","reason":"token refused (expired)"}'
    assert device.receive(frame, NOW) == [ServerError("unauthorized", "token refused (expired)")]
    assert device.phase is Phase.CONNECTING


def test_bye_reports_the_minimum_wait_before_reconnecting() -> None:
    device = opened()
    frame = b'{"type":"bye","reason":"restart","retry_after_ms":2000}'
    assert device.receive(frame, NOW) == [ServerBye("restart", 2000)]
    assert device.retry_after_ms == 2000


def test_the_deadline_is_the_hello_timeout_then_two_and_a_half_heartbeats_of_silence() -> None:
    device = new_device()
    assert device.deadline() is None
    device.connect(NOW)
    assert device.deadline() == NOW + 10 * SECOND
    device.receive(WELCOME, NOW + 1)
    assert device.deadline() == NOW + 1 + 75_000 * MS
    device.receive(PING, NOW + 30 * SECOND)
    assert device.deadline() == NOW + 105 * SECOND
    device.connection_lost()
    assert device.deadline() is None


# -- refused frames ------------------------------------------------------------------------------

MALFORMED = [
    b"{not json",
    b'{"type":"shout"}',
    b'{"type":"trigger","channel":"global","epoch":7,"seq":"13"}',
    b'{"type":"subscribe","channels":["global"]}',  # a client-only message
    b'{"type":"ping","ts":1,"pad":"' + b"x" * m.MAX_FRAME_BYTES + b'"}',
    WELCOME,  # a second welcome
]


@pytest.mark.parametrize("frame", MALFORMED, ids=lambda f: f[:24].decode(errors="replace"))
def test_a_refused_frame_raises_protocol_error_and_leaves_the_state_unchanged(
    frame: bytes,
) -> None:
    device = opened()
    device.receive(trigger(13, 4, payload="finale/live"), NOW)
    device.receive(PING, NOW)  # a pong waits in the send queue
    before = snapshot(device)
    with pytest.raises(ProtocolError):
        device.receive(frame, NOW + SECOND)
    assert snapshot(device) == before
    assert device.data_to_send() == [PONG]


@pytest.mark.parametrize("frame", [trigger(13, 4), state(13)])
def test_a_trigger_or_state_before_welcome_is_refused_and_changes_nothing(frame: bytes) -> None:
    device = new_device()
    device.connect(NOW)
    before = snapshot(device)
    with pytest.raises(ProtocolError, match="before 'welcome'"):
        device.receive(frame, NOW)
    assert snapshot(device) == before


def test_a_frame_with_no_connection_open_is_refused() -> None:
    with pytest.raises(ProtocolError, match="no connection open"):
        new_device().receive(PING, NOW)


# -- backoff and jitter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 1.0), (1, 2.0), (3, 8.0), (5, 32.0), (6, 60.0), (10**6, 60.0)]
)
def test_backoff_stays_within_full_jitter_bounds(attempt: int, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [p.backoff(attempt, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter covers the whole window, not just its top: both ends are reached.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


def test_the_first_reconnect_delay_is_random_and_spread_evenly() -> None:
    rng = random.Random(42)
    delays = [p.backoff(0, rng) for _ in range(10_000)]
    assert statistics.fmean(delays) == pytest.approx(p.BACKOFF_BASE_S / 2, rel=0.05)
    deciles = [sum(1 for d in delays if i / 10 <= d < (i + 1) / 10) for i in range(10)]
    assert all(800 <= n <= 1200 for n in deciles)  # uniform: ~1000 per tenth of the window


def test_backoff_is_deterministic_for_a_seeded_rng() -> None:
    a, b = random.Random(7), random.Random(7)
    assert [p.backoff(n, a) for n in range(8)] == [p.backoff(n, b) for n in range(8)]


def test_a_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        p.backoff(-1, random.Random(0))


def test_the_reconnect_delay_adds_jitter_on_top_of_the_servers_minimum() -> None:
    rng = random.Random(3)
    delays = [p.reconnect_delay(0, rng, retry_after_ms=2000) for _ in range(1000)]
    assert all(2.0 <= d <= 3.0 for d in delays)
    assert len(set(delays)) == len(delays)


def test_the_fallback_fetch_delay_spreads_over_the_window() -> None:
    rng = random.Random(11)
    delays = [p.fallback_fetch_delay(rng, 10.0) for _ in range(5000)]
    assert all(0.0 <= d <= 10.0 for d in delays)
    assert statistics.fmean(delays) == pytest.approx(5.0, rel=0.05)
    assert p.fallback_fetch_delay(rng, 0.0) == 0.0
    with pytest.raises(ValueError, match="window"):
        p.fallback_fetch_delay(rng, -1.0)

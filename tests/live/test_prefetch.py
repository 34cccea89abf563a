"""Prefetch: 200/304/404 answers with exact headers, jittered lifetimes, the window, and spreading
N devices' fetches evenly across it."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from hopcast.durations import MINUTE, SECOND
from hopcast.errors import ConfigError, InvalidInput
from hopcast.kv.memory import MemoryKV
from hopcast.live.fixtures import materialise_fixture
from hopcast.live.payloads import DEFAULT_SEGMENT, PayloadStore, decode_payload, payload_id
from hopcast.live.prefetch import (
    IMMUTABLE_MAX_AGE_S,
    PrefetchPolicy,
    PrefetchResponse,
    decode_manifest,
    etag_matches,
    jittered_max_age,
    prefetch,
    ranked_spread_delay,
    serve_manifest,
    serve_payload,
    spread_delay,
    window,
)

NOW = 1_700_000_000 * SECOND
EVENT = "final-2025"
KIDS = "kids.US.en.b0"
#: The issue's target: origin peak requests per second in the window ≤ 1.2 × N / window.
PEAK_FACTOR = 1.2


@pytest.fixture
def store() -> PayloadStore:
    store = PayloadStore(MemoryKV())
    materialise_fixture(store, EVENT, [KIDS, "adult.US.en.b0"], NOW)
    return store


def rng(seed: int = 7) -> random.Random:
    return random.Random(seed)


def max_age(response: PrefetchResponse) -> int:
    cache = response.headers["Cache-Control"]
    assert cache.startswith("public, max-age=")
    return int(cache.removeprefix("public, max-age="))


# -- If-None-Match --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", W/"abc" , "y"', True),
        ("*", True),
        (" * ", True),
        ('"abcd"', False),
        ('"ab"', False),
        ("abc", False),
        ("", False),
        ('"x", "y"', False),
    ],
)
def test_if_none_match_is_compared_weakly_against_the_quoted_tag(
    header: str | None, matches: bool
) -> None:
    assert etag_matches(header, "abc") is matches


# -- payload by id --------------------------------------------------------------------------------


def test_a_payload_by_id_is_served_immutable_with_its_id_as_etag(store: PayloadStore) -> None:
    ref = store.resolve(EVENT, "live", KIDS, NOW)
    assert ref is not None
    response = serve_payload(store, ref.id, None, NOW)
    assert response == PrefetchResponse(
        200,
        {
            "ETag": f'"{ref.id}"',
            "Cache-Control": f"public, max-age={IMMUTABLE_MAX_AGE_S}, immutable",
            "Content-Type": "application/json",
        },
        store.get(ref.id, NOW),
    )
    assert response.body is not None and payload_id(response.body) == ref.id


def test_a_payload_by_id_answers_304_when_the_device_has_it(store: PayloadStore) -> None:
    ref = store.resolve(EVENT, "live", KIDS, NOW)
    assert ref is not None
    response = serve_payload(store, ref.id, f'W/"{ref.id}"', NOW)
    assert response == PrefetchResponse(
        304,
        {
            "ETag": f'"{ref.id}"',
            "Cache-Control": f"public, max-age={IMMUTABLE_MAX_AGE_S}, immutable",
        },
    )


@pytest.mark.parametrize("pid", ["0" * 32, "nope", ""])
def test_an_unknown_payload_is_404_and_not_cached(store: PayloadStore, pid: str) -> None:
    assert serve_payload(store, pid, "*", NOW) == PrefetchResponse(
        404, {"Cache-Control": "no-store"}
    )


# -- one stage ------------------------------------------------------------------------------------


def test_prefetch_serves_the_segments_payload_with_a_jittered_lifetime(
    store: PayloadStore,
) -> None:
    ref = store.resolve(EVENT, "live", KIDS, NOW)
    assert ref is not None
    response = prefetch(store, EVENT, KIDS, "live", None, NOW, rng())
    assert response.status == 200
    assert response.body == store.get(ref.id, NOW)
    assert response.headers["ETag"] == f'"{ref.id}"'
    assert response.headers["Content-Type"] == "application/json"
    assert 240 <= max_age(response) <= 360
    assert "immutable" not in response.headers["Cache-Control"]
    assert response.body is not None and decode_payload(response.body).rows[0].title == "Watch now"


def test_prefetch_answers_304_with_the_same_validator(store: PayloadStore) -> None:
    first = prefetch(store, EVENT, KIDS, "live", None, NOW, rng())
    again = prefetch(store, EVENT, KIDS, "live", first.headers["ETag"], NOW, rng())
    assert again == PrefetchResponse(
        304, {"ETag": first.headers["ETag"], "Cache-Control": first.headers["Cache-Control"]}
    )


def test_prefetch_of_a_segment_nobody_published_falls_back_to_all(store: PayloadStore) -> None:
    response = prefetch(store, EVENT, "adult.JP.ja.b0", "live", None, NOW, rng())
    expected = store.lookup(EVENT, "live", DEFAULT_SEGMENT, NOW)
    assert expected is not None and response.headers["ETag"] == expected.etag


def test_prefetch_of_an_unpublished_stage_or_event_is_404(store: PayloadStore) -> None:
    not_found = PrefetchResponse(404, {"Cache-Control": "no-store"})
    assert prefetch(store, EVENT, KIDS, "cancelled", None, NOW, rng()) == not_found
    assert prefetch(store, "other-event", KIDS, "live", None, NOW, rng()) == not_found


def test_prefetch_rejects_malformed_names(store: PayloadStore) -> None:
    with pytest.raises(InvalidInput):
        prefetch(store, EVENT, "a/b", "live", None, NOW, rng())


# -- the manifest ---------------------------------------------------------------------------------


def test_the_manifest_carries_every_stage_and_each_distinct_body_once(
    store: PayloadStore,
) -> None:
    response = serve_manifest(store, EVENT, KIDS, None, NOW, rng(), window=(10, 20))
    assert response.status == 200 and response.body is not None
    assert response.headers["ETag"] == f'"{payload_id(response.body)}"'
    assert response.headers["Content-Type"] == "application/json"
    manifest = decode_manifest(response.body)
    assert (manifest.event, manifest.segment, manifest.opens_at, manifest.closes_at) == (
        EVENT,
        KIDS,
        10,
        20,
    )
    want = store.segment_manifest(EVENT, KIDS, NOW)
    assert manifest.stages == {stage: ref.id for stage, ref in want.items()}
    assert set(manifest.payloads) == {ref.id for ref in want.values()}
    assert len(manifest.payloads) < len(manifest.stages)  # scheduled and prefetch share one
    for pid, raw in manifest.payloads.items():
        assert bytes(raw) == store.get(pid, NOW)
        decode_payload(bytes(raw))


def test_the_manifest_is_the_same_bytes_for_every_device_of_a_segment(
    store: PayloadStore,
) -> None:
    a = serve_manifest(store, EVENT, KIDS, None, NOW, rng(1))
    b = serve_manifest(store, EVENT, KIDS, None, NOW + SECOND, rng(2))
    assert a.body == b.body and a.headers["ETag"] == b.headers["ETag"]
    c = serve_manifest(store, EVENT, "adult.US.en.b0", None, NOW, rng(1))
    assert c.headers["ETag"] != a.headers["ETag"]


def test_the_manifest_answers_304_and_changes_its_tag_on_republish(store: PayloadStore) -> None:
    first = serve_manifest(store, EVENT, KIDS, None, NOW, rng())
    assert serve_manifest(store, EVENT, KIDS, first.headers["ETag"], NOW, rng()).status == 304
    ended = store.lookup(EVENT, "ended", KIDS, NOW)
    assert ended is not None
    store.publish(EVENT, "live", KIDS, ended.id, 2, NOW)
    changed = serve_manifest(store, EVENT, KIDS, first.headers["ETag"], NOW, rng())
    assert changed.status == 200
    assert changed.headers["ETag"] != first.headers["ETag"]


def test_the_manifest_of_an_unknown_event_is_404(store: PayloadStore) -> None:
    assert serve_manifest(store, "nothing", KIDS, None, NOW, rng()) == PrefetchResponse(
        404, {"Cache-Control": "no-store"}
    )


# -- jittered lifetimes ---------------------------------------------------------------------------


def test_jittered_lifetimes_stay_within_bounds_and_vary_across_devices() -> None:
    ages = [jittered_max_age(300, 0.2, random.Random(f"device-{i}")) for i in range(1000)]
    assert min(ages) >= 240 and max(ages) <= 360
    assert len(set(ages)) > 60
    assert min(ages) < 260 and max(ages) > 340  # the whole range is used, not a sliver


def test_a_seeded_device_draws_the_same_lifetimes_every_run() -> None:
    def draws(seed: str) -> list[int]:
        device = random.Random(seed)
        return [jittered_max_age(300, 0.2, device) for _ in range(5)]

    assert draws("device-1") == draws("device-1")
    assert draws("device-1") != draws("device-2")


def test_manifest_lifetimes_follow_the_policy(store: PayloadStore) -> None:
    policy = PrefetchPolicy(max_age_s=100, jitter=0.5)
    ages = {
        max_age(serve_manifest(store, EVENT, KIDS, None, NOW, rng(seed), policy=policy))
        for seed in range(200)
    }
    assert min(ages) >= 50 and max(ages) <= 150 and len(ages) > 20
    fixed = PrefetchPolicy(max_age_s=100, jitter=0.0)
    assert max_age(prefetch(store, EVENT, KIDS, "live", None, NOW, rng(), fixed)) == 100


@pytest.mark.parametrize(
    "kwargs", [{"max_age_s": 0}, {"jitter": 1.0}, {"jitter": -0.1}, {"immutable_max_age_s": 0}]
)
def test_a_policy_outside_its_bounds_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        PrefetchPolicy(**kwargs)  # type: ignore[arg-type]


# -- the window -----------------------------------------------------------------------------------


def test_the_window_opens_lead_before_the_start_and_closes_a_margin_before_it() -> None:
    start = NOW + 60 * MINUTE
    assert window(start, 30 * MINUTE) == (start - 30 * MINUTE, start - MINUTE)
    assert window(start, 30 * MINUTE, margin_us=0) == (start - 30 * MINUTE, start)


def test_a_window_published_late_opens_when_the_payloads_became_available() -> None:
    start = NOW + 60 * MINUTE
    assert window(start, 30 * MINUTE, available_at=start - 10 * MINUTE) == (
        start - 10 * MINUTE,
        start - MINUTE,
    )
    # a short window keeps its first half
    assert window(start, 30 * MINUTE, available_at=start - MINUTE) == (
        start - MINUTE,
        start - MINUTE // 2,
    )
    # published after the start: an empty window, everyone fetches at once
    assert window(start, 30 * MINUTE, available_at=start + 5) == (start + 5, start + 5)


def test_a_negative_lead_is_refused() -> None:
    with pytest.raises(InvalidInput):
        window(NOW, -1)


# -- spreading ------------------------------------------------------------------------------------


def per_second_peak(fetch_times: list[int], opens_at: int, closes_at: int) -> tuple[int, float]:
    """The busiest second's fetches and the uniform rate N / window (per second)."""
    assert all(opens_at <= t < closes_at for t in fetch_times)
    histogram = Counter((t - opens_at) // SECOND for t in fetch_times)
    return max(histogram.values()), len(fetch_times) / ((closes_at - opens_at) / SECOND)


def test_10k_hashed_devices_keep_the_origin_within_the_peak_target() -> None:
    opens_at, closes_at = NOW, NOW + 20 * SECOND  # 500 fetches/s: the hash spread's regime
    ids = [f"device-{i:05d}" for i in range(10_000)]
    times = [opens_at + spread_delay(d, opens_at, closes_at, opens_at) for d in ids]
    peak, rate = per_second_peak(times, opens_at, closes_at)
    assert peak <= PEAK_FACTOR * rate, (peak, rate)


def test_10k_ranked_devices_stay_within_the_peak_target_even_at_low_rates() -> None:
    opens_at, closes_at = NOW, NOW + 10 * MINUTE  # 16.7 fetches/s
    times = [
        opens_at + ranked_spread_delay(k, opens_at, closes_at, opens_at) for k in range(10_000)
    ]
    peak, rate = per_second_peak(times, opens_at, closes_at)
    assert peak <= PEAK_FACTOR * rate, (peak, rate)
    assert peak <= rate + 3


def test_every_prefix_of_ranked_devices_is_spread_evenly() -> None:
    opens_at, closes_at = NOW, NOW + 100 * SECOND
    for n in (1_000, 2_345, 5_000):
        times = [opens_at + ranked_spread_delay(k, opens_at, closes_at, opens_at) for k in range(n)]
        peak, rate = per_second_peak(times, opens_at, closes_at)
        assert peak <= rate + 3, (n, peak, rate)


def test_a_device_gets_the_same_point_every_time() -> None:
    opens_at, closes_at = NOW, NOW + 30 * MINUTE
    first = spread_delay("device-42", opens_at, closes_at, opens_at)
    assert spread_delay("device-42", opens_at, closes_at, opens_at) == first
    assert spread_delay("device-43", opens_at, closes_at, opens_at) != first
    # asking later only shortens the wait by the time that passed
    assert spread_delay("device-42", opens_at, closes_at, opens_at + 7) == max(0, first - 7)


def test_a_device_asking_before_the_window_waits_for_its_point_inside_it() -> None:
    opens_at, closes_at = NOW, NOW + 30 * MINUTE
    inside = spread_delay("device-1", opens_at, closes_at, opens_at)
    assert spread_delay("device-1", opens_at, closes_at, opens_at - MINUTE) == inside + MINUTE


def test_devices_joining_after_their_point_fetch_at_once() -> None:
    opens_at, closes_at = NOW, NOW + 30 * MINUTE
    ids = [f"device-{i}" for i in range(1_000)]
    midway = opens_at + 15 * MINUTE
    delays = {d: spread_delay(d, opens_at, closes_at, midway) for d in ids}
    points = {d: opens_at + spread_delay(d, opens_at, closes_at, opens_at) for d in ids}
    late = [d for d in ids if points[d] <= midway]
    assert 400 <= len(late) <= 600
    assert all(delays[d] == 0 for d in late)
    assert all(delays[d] == points[d] - midway > 0 for d in ids if d not in late)
    assert all(spread_delay(d, opens_at, closes_at, closes_at + 1) == 0 for d in ids)
    assert all(ranked_spread_delay(k, opens_at, closes_at, closes_at) == 0 for k in range(100))


def test_an_empty_window_means_fetch_at_once_and_an_inverted_one_is_refused() -> None:
    assert spread_delay("device-1", NOW, NOW, NOW) == 0
    assert ranked_spread_delay(5, NOW, NOW, NOW - 10) == 10
    with pytest.raises(InvalidInput):
        spread_delay("device-1", NOW, NOW - 1, NOW)
    with pytest.raises(InvalidInput):
        ranked_spread_delay(-1, NOW, NOW + 1, NOW)

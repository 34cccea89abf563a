"""Durations: ``<number><unit>`` strings and bare integers, all in microseconds."""

from __future__ import annotations

import pytest

from hopcast.durations import (
    DAY,
    HOUR,
    MINUTE,
    MS,
    SECOND,
    WEEK,
    format_duration,
    now_us,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("7d", 7 * DAY),
        ("90s", 90 * SECOND),
        ("250ms", 250 * MS),
        ("15us", 15),
        ("3m", 3 * MINUTE),
        ("2h", 2 * HOUR),
        ("1w", WEEK),
        ("1.5h", 90 * MINUTE),
        ("  100d  ", 100 * DAY),
        ("12 s", 12 * SECOND),
        ("42", 42),
        ("0", 0),
        (5, 5),
        (0, 0),
    ],
)
def test_parse_duration_turns_each_unit_into_microseconds(text: str | int, us: int) -> None:
    assert parse_duration(text) == us


@pytest.mark.parametrize("bad", ["", "d", "7x", "-1d", "7 days", "1e3s", "one", "7d3h"])
def test_parse_duration_rejects_text_that_is_not_a_duration(bad: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(bad)


def test_parse_duration_rejects_a_negative_integer() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(-1)


def test_parse_duration_rejects_a_bool_although_bool_is_an_int() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(True)


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "0s"),
        (100 * DAY, "100d"),
        (14 * DAY, "2w"),
        (90 * MINUTE, "90m"),
        (36 * HOUR, "36h"),
        (1500 * MS, "1500ms"),
        (1500, "1500us"),
        (SECOND, "1s"),
    ],
)
def test_format_duration_uses_the_largest_unit_that_divides_exactly(us: int, text: str) -> None:
    assert format_duration(us) == text


@pytest.mark.parametrize("us", [1, 999, MS, 61 * SECOND, 100 * DAY, 3 * WEEK + 1])
def test_format_then_parse_gives_the_same_microseconds(us: int) -> None:
    assert parse_duration(format_duration(us)) == us


def test_now_us_is_microseconds_since_the_epoch() -> None:
    # 2020-01-01 in µs: a clock in seconds or nanoseconds would be far off either way.
    assert 1_577_836_800 * SECOND < now_us() < 1_577_836_800 * SECOND * 100

"""Durations and timestamps as hopcast spells them.

All times inside hopcast are integer **microseconds since the Unix epoch** (UTC). Durations in
files, URLs and on the command line are written ``<number><unit>`` with units ``us``, ``ms``,
``s``, ``m``, ``h``, ``d``, ``w`` (``90s``, ``7d``, ``100d``); a bare integer means microseconds.
"""

from __future__ import annotations

import datetime as dt
import re
import time

US = 1
MS = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

_UNITS = {"us": US, "ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)?\s*$")


def parse_duration(text: str | int) -> int:
    """Parse ``"7d"``, ``"90s"``, ``"250ms"`` or an integer (µs) into microseconds.

    Raises:
        ValueError: with the accepted forms, if ``text`` is not a duration.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        return text
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(
            f"not a duration: {text!r} (use a number and a unit: us, ms, s, m, h, d, w — e.g. 7d)"
        )
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit or "us"])


def format_duration(us: int) -> str:
    """Format µs with the largest unit that divides them exactly (``8640000000000`` → ``100d``)."""
    if us == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = _UNITS[unit]
        if us % size == 0:
            return f"{us // size}{unit}"
    return f"{us}us"


def now_us() -> int:
    """The wall clock in microseconds. Only adapters call this; the core takes ``now`` as input."""
    return time.time_ns() // 1_000


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def datetime_us(when: dt.datetime) -> int:
    """A datetime as integer µs since the epoch, exactly (no float); naive means UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def parse_iso(text: str) -> int:
    """ISO-8601 text (``2026-05-01T12:00:00Z``; no zone means UTC) as µs since the epoch.

    Raises:
        ValueError: if ``text`` is not ISO-8601.
    """
    return datetime_us(dt.datetime.fromisoformat(text))

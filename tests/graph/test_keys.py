"""The KV layout: inverted timestamps sort newest first; ``window`` is ``[since, until)``."""

from __future__ import annotations

import pytest

from hopcast.graph import keys

TIMES = [0, 1, 2, 999, 1_000_000, 1_700_000_000_000_000, keys.MAX_TS - 1, keys.MAX_TS]


def _in_window(ts: int, since: int | None, until: int | None) -> bool:
    """Whether the item key of an edge at ``ts`` falls in ``window(since, until)``."""
    start, stop = keys.window(since, until)
    key = keys.time_item(ts, b"device:1")
    return (start is None or key >= start) and (stop is None or key < stop)


def test_inv_ts_sorts_later_times_first() -> None:
    encoded = [keys.inv_ts(t) for t in TIMES]
    assert sorted(encoded) == encoded[::-1]
    assert all(len(e) == 8 for e in encoded)


def test_time_items_sort_newest_first_then_by_the_other_end() -> None:
    items = [
        keys.time_item(5, b"b"),
        keys.time_item(9, b"z"),
        keys.time_item(5, b"a"),
        keys.time_item(1, b"a"),
    ]
    assert sorted(items) == [
        keys.time_item(9, b"z"),
        keys.time_item(5, b"a"),
        keys.time_item(5, b"b"),
        keys.time_item(1, b"a"),
    ]


@pytest.mark.parametrize("ts", TIMES)
def test_ts_of_reads_back_the_time_of_an_item_key(ts: int) -> None:
    assert keys.ts_of(keys.time_item(ts, b"title:42")) == ts
    assert keys.ts_of(keys.inv_ts(ts)) == ts


def test_window_includes_since_and_excludes_until() -> None:
    since, until = 1_000, 2_000
    assert not _in_window(since - 1, since, until)
    assert _in_window(since, since, until)
    assert _in_window(since + 1, since, until)
    assert _in_window(until - 1, since, until)
    assert not _in_window(until, since, until)
    assert not _in_window(until + 1, since, until)


def test_an_open_window_end_keeps_everything_on_that_side() -> None:
    assert _in_window(0, None, 10)
    assert not _in_window(10, None, 10)
    assert _in_window(keys.MAX_TS, 10, None)
    assert not _in_window(9, 10, None)
    assert keys.window(None, None) == (None, None)


def test_a_since_of_zero_or_less_does_not_bound_the_old_end() -> None:
    assert keys.window(0, None) == (None, None)
    assert keys.window(-5, None) == (None, None)
    assert _in_window(0, 0, 5)


def test_an_until_beyond_max_ts_still_includes_max_ts() -> None:
    assert _in_window(keys.MAX_TS, 0, keys.MAX_TS + 10)


def test_a_window_with_since_equal_to_until_is_empty() -> None:
    assert not any(_in_window(t, 5, 5) for t in (4, 5, 6))


def test_namespaces_are_distinct_per_type_and_list() -> None:
    names = {
        keys.node_ns("plays"),
        keys.out_ns("plays"),
        keys.in_ns("plays"),
        keys.key_ns("plays"),
    }
    assert names == {"n.plays", "e.plays.out", "e.plays.in", "e.plays.key"}

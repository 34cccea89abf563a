"""The load harness's numbers, from hand-made device records (no processes, no sockets)."""

from __future__ import annotations

import io

from hopcast.durations import SECOND
from hopcast.sdk.fleet import DeviceRecord, StageRecord, read_frame, write_frame
from hopcast.sdk.loadreport import (
    peak_in,
    per_second,
    percentiles,
    reconnect_summary,
    run_report,
    stage_summary,
)

T0 = 1_800_000_000_000_000


def _record(index: int, **kw: object) -> DeviceRecord:
    fields: dict[str, object] = {
        "index": index,
        "gateway": 0,
        "stages": {},
        "other_events": 0,
        "applied_twice": 0,
        "redelivered": 0,
        "stale": 0,
        "welcomes": [T0],
        "connects": 1,
        "connect_failures": 0,
        "reconnects": 0,
        "byes": 0,
        "timeouts": 0,
        "prefetched_at": None,
        "prefetch_failures": 0,
        "payload_fetches": {},
        "fetch_failures": 0,
    }
    fields.update(kw)
    return DeviceRecord(**fields)  # type: ignore[arg-type]


def test_percentiles_use_the_nearest_rank() -> None:
    stats = percentiles([float(v) for v in range(1, 101)])
    assert (stats["p50"], stats["p90"], stats["p99"], stats["max"]) == (50, 90, 99, 100)
    assert stats["count"] == 100 and stats["mean"] == 50.5
    assert percentiles([])["p50"] is None


def test_requests_are_counted_by_second_with_empty_seconds_and_a_closing_zero() -> None:
    requests = [
        (T0 + 100, "manifest"),
        (T0 + 900_000, "manifest"),
        (T0 + 2 * SECOND + 5, "payload"),
        (T0 + 2 * SECOND + 6, "token"),
    ]
    rows = per_second(requests, T0)
    assert [r["t"] for r in rows] == [0, 1, 2, 3]
    assert [r["total"] for r in rows] == [2, 0, 1, 0]  # tokens are not origin load
    assert rows[2]["token"] == 1


def test_the_window_peak_counts_only_origin_requests_inside_the_window() -> None:
    inside = [(T0 + i * SECOND // 10, "manifest") for i in range(25)]  # 10, 10, 5 per second
    outside = [(T0 - 1, "manifest"), (T0 + 10 * SECOND, "payload")]
    tokens = [(T0 + 1, "token")] * 50
    assert peak_in(inside + outside + tokens, T0, T0 + 3 * SECOND) == 10


def test_a_stage_missing_its_payload_is_applied_but_not_updated() -> None:
    records = [
        _record(0, stages={"live": StageRecord(2, T0, T0 + 5_000, T0 + 7_000)}),
        _record(1, stages={"live": StageRecord(2, T0, T0 + 9_000, None)}),
        _record(2),
    ]
    summary = stage_summary(records, "live")
    assert (summary["applied"], summary["updated"], summary["missing_payload"]) == (2, 1, 1)
    assert summary["time_to_update_ms"]["max"] == 7.0
    assert summary["delivery_ms"]["max"] == 9.0


def test_reconnects_after_a_restart_are_measured_from_each_devices_first_welcome() -> None:
    restart = T0 + 10 * SECOND
    records = [
        _record(i, welcomes=[T0, restart + i * SECOND // 2, restart + 20 * SECOND])
        for i in range(10)
    ] + [_record(10, welcomes=[T0])]
    summary = reconnect_summary(records, restart)
    assert summary["reconnected"] == 10 and summary["not_reconnected"] == 1
    assert summary["seconds_after_restart"]["max"] == 4.5
    assert summary["spread_p10_p90_s"] == 4.0
    assert summary["busiest_100ms"] == 1


def test_a_run_report_counts_misses_duplicates_and_trigger_hits() -> None:
    live = StageRecord(2, T0 + 20 * SECOND, T0 + 20 * SECOND + 1_000, T0 + 20 * SECOND + 1_000)
    records = [
        _record(0, stages={"prefetch": live, "live": live}, prefetched_at=T0 + SECOND),
        _record(1, stages={"live": live}, applied_twice=1, payload_fetches={"live": 1}),
    ]
    timeline = {
        "created_at": T0,
        "opens_at": T0,
        "closes_at": T0 + 10 * SECOND,
        "starts_at": T0 + 20 * SECOND,
        "live_ts": T0 + 20 * SECOND,
    }
    requests = [(T0 + SECOND, "manifest"), (T0 + 20 * SECOND + 500, "payload")]
    report = run_report(
        mode="prefetch",
        parameters={"devices": 2},
        timeline=timeline,
        records=records,
        requests=requests,
        stages=("prefetch", "live"),
        server_requests=2,
    )
    assert report["counts"]["applied_twice"] == 1
    assert report["counts"]["stages_not_applied"] == 1  # device 1 never applied "prefetch"
    assert report["origin"]["trigger_hits"] == 1 and report["origin"]["trigger_hit_pct"] == 50.0
    assert report["origin"]["peak_rps_in_window"] == 1
    assert report["origin"]["target_peak_rps"] == 0.2  # 1.2 x 2 devices / 10 s
    assert report["origin"]["trigger_at_s"] == 20.0
    assert report["timeline_s"]["closes_at"] == 10.0


def test_frames_carry_pickled_objects_and_report_the_end_of_the_stream() -> None:
    stream = io.BytesIO()
    write_frame(stream, ("plan", {"a": 1}))
    write_frame(stream, _record(3))
    stream.seek(0)
    assert read_frame(stream) == ("plan", {"a": 1})
    assert read_frame(stream).index == 3
    try:
        read_frame(stream)
    except EOFError:
        pass
    else:
        raise AssertionError("expected EOFError at the end of the stream")

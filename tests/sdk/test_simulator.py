"""The load harness end to end: real SDK devices in several processes against an embedded
``hopcast serve --gateway-port`` subprocess, through a live event's whole timeline.

Includes issue 4's gateway-restart test: many devices connected, the trigger, a server restart
(SIGTERM → ``bye restart``), every device back with jitter, no stage applied twice or missed,
and a transition after the restart reaching everyone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hopcast.errors import ConfigError
from hopcast.sdk.simulator import MAX_DEVICES_PER_PROCESS, STAGES, SimConfig, run_once, simulate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (checks the signature on the way)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_with_prefetch_every_device_updates_once_and_the_origin_is_quiet_at_the_trigger(
    tmp_path: Path,
) -> None:
    n = 200
    result = simulate(
        SimConfig(devices=n, processes=2, window_s=3, show_progress=False), tmp_path / "out"
    )
    (run,) = result.runs
    report = run.report
    # every device applied every stage once, with its payload, and prefetched in the window
    for stage in STAGES:
        assert report["stages"][stage]["applied"] == n
        assert report["stages"][stage]["updated"] == n
    assert report["counts"]["applied_twice"] == 0
    assert report["counts"]["misses"] == 0
    assert report["counts"]["prefetched"] == n
    # at the trigger the origin saw (almost) nobody; in the window, one manifest per device
    origin = report["origin"]
    assert origin["trigger_hit_pct"] <= 1.0
    assert origin["by_kind"] == {"manifest": n}
    assert origin["server_counted"] == n  # the server's /metrics agree with the devices' count
    assert report["timeline_s"]["opens_at"] < report["timeline_s"]["closes_at"]
    assert report["timeline_s"]["closes_at"] <= report["timeline_s"]["starts_at"]
    assert len(run.times["live"]) == n and max(run.times["live"]) < 5_000
    # the files: one JSON report with this run, two PNG charts
    assert result.report_path is not None
    saved = json.loads(result.report_path.read_text())
    assert saved["runs"][0]["devices"] == n and saved["parameters"]["devices"] == n
    assert sum(row["manifest"] for row in saved["runs"][0]["origin"]["series"]) == n
    assert sorted(p.name for p in result.charts) == ["origin_rps.png", "time_to_update_cdf.png"]
    for chart in result.charts:
        width, height = _png_size(chart)
        assert width > 400 and height > 300


def test_without_prefetch_origin_requests_cluster_at_the_trigger() -> None:
    n = 200
    run = run_once(
        SimConfig(devices=n, processes=2, window_s=2, prefetch=False, show_progress=False)
    )
    report = run.report
    assert report["stages"]["live"]["updated"] == n
    assert report["counts"]["applied_twice"] == 0 and report["counts"]["misses"] == 0
    origin = report["origin"]
    assert "manifest" not in origin["by_kind"]
    assert origin["by_kind"]["payload"] == 2 * n  # the live and the ended payload, each device
    assert origin["trigger_hit_pct"] == 100.0
    # nothing before the trigger; every live fetch within two seconds of it (the end, and its
    # fetches, come later: END_GAP_S)
    trigger_second = int(origin["trigger_at_s"])
    by_second = {row["t"]: row["total"] for row in origin["series"]}
    assert sum(total for t, total in by_second.items() if t < trigger_second) == 0
    assert by_second[trigger_second] + by_second.get(trigger_second + 1, 0) == n
    assert origin["peak_rps"] >= n / 2
    assert origin["peak_rps_in_window"] == 0


@pytest.mark.slow
def test_a_gateway_restart_with_many_devices_connected_converges_without_duplicates_or_misses() -> (
    None
):
    n = 400
    # every device a full DeviceClient: the SDK's own reconnection is what is under test
    config = SimConfig(
        devices=n, processes=2, window_s=2, restart=True, client="sdk", show_progress=False
    )
    run = run_once(config)
    report = run.report
    assert report["simulator"]["notes"] == []  # no wait timed out
    counts = report["counts"]
    # the gateway told every device to leave, and every device came back
    assert counts["byes"] >= n
    restart = report["restart"]
    assert restart["reconnected"] == n and restart["not_reconnected"] == 0
    # with jitter: spread over seconds (bye's retry_after spread + full-jitter backoff)
    assert restart["spread_p10_p90_s"] >= 2.0
    assert restart["busiest_100ms"] <= n // 4
    # converged: no stage applied twice, none missed
    assert counts["applied_twice"] == 0
    assert counts["misses"] == 0
    for stage in STAGES:
        assert report["stages"][stage]["applied"] == n
    # the transition made after the restart reached every device, with its payload
    timeline = report["timeline_s"]
    assert timeline["restart_at"] < timeline["restarted_at"] < timeline["ended_ts"]
    assert report["stages"]["ended"]["updated"] == n
    assert all(t >= 0 for t in run.times["ended"])


def test_impossible_parameters_are_refused_before_anything_starts() -> None:
    too_many = SimConfig(devices=2 * MAX_DEVICES_PER_PROCESS + 1, processes=2)
    with pytest.raises(ConfigError, match="--processes 3"):
        too_many.check()
    with pytest.raises(ConfigError, match="embedded"):
        SimConfig(api="http://127.0.0.1:1", gateways=("ws://127.0.0.1:2",), restart=True).check()
    with pytest.raises(ConfigError, match="both"):
        SimConfig(api="http://127.0.0.1:1").check()
    with pytest.raises(ConfigError, match="client"):
        SimConfig(client="browser").check()
    with pytest.raises(ConfigError, match="spread"):
        SimConfig(spread="random").check()

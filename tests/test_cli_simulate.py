"""``hopcast live simulate``: a small comparison run through the CLI (summary table, report,
charts), and parameters refused before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hopcast.cli import cli


def _simulate(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["--store", str(tmp_path / "unused"), "live", "simulate", "--no-progress", *args]
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_compare_prefetch_prints_both_runs_and_writes_the_report_and_charts(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _simulate(
        tmp_path,
        "--devices", "100", "--processes", "2", "--window", "2s", "--compare-prefetch",
        "--out", str(out),
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert "prefetch" in stdout and "no_prefetch" in stdout
    assert f"report  {out / 'report.json'}" in stdout
    assert "origin_rps.png" in stdout and "time_to_update_cdf.png" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["parameters"]["mode"] == "compare"
    with_prefetch, without = report["runs"]
    assert (with_prefetch["mode"], without["mode"]) == ("prefetch", "no_prefetch")
    for run in report["runs"]:
        assert run["stages"]["live"]["updated"] == 100
        assert run["counts"]["applied_twice"] == 0 and run["counts"]["misses"] == 0
    assert with_prefetch["origin"]["trigger_hit_pct"] == 0.0
    assert without["origin"]["trigger_hit_pct"] == 100.0
    for name in ("origin_rps.png", "time_to_update_cdf.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contradictory_or_impossible_parameters_exit_2_without_running(tmp_path: Path) -> None:
    code, _, stderr = _simulate(tmp_path, "--no-prefetch", "--compare-prefetch")
    assert code == 2 and "exclude each other" in stderr
    code, _, stderr = _simulate(tmp_path, "--devices", "40000", "--processes", "2")
    assert code == 2 and "--processes 3" in stderr
    code, _, stderr = _simulate(tmp_path, "--window", "soon")
    assert code == 2 and "--window" in stderr
    code, _, stderr = _simulate(tmp_path, "--api", "http://127.0.0.1:1", "--restart")
    assert code == 2
    assert not (tmp_path / "hopcast-simulate").exists()

"""The demo's log writer: one directory per source, rotation by rename, old files removed, and a
LogFileSource tailing it reads every line exactly once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopcast.demo.logs import LogWriter
from hopcast.demo.records import DemoRecord
from hopcast.stream.sources.logfile import LogFileSource


def _records(source: str, start: int, n: int) -> list[DemoRecord]:
    return [
        DemoRecord(source, b'{"n": %d, "pad": "%s"}' % (i, b"x" * 40), i)
        for i in range(start, start + n)
    ]


def test_logs_rotate_keep_the_newest_files_and_a_tailing_source_reads_every_line_once(
    tmp_path: Path,
) -> None:
    writer = LogWriter(tmp_path, ["browse", "games"], rotate_bytes=2_000, keep=2)
    source = LogFileSource("browse", writer.directory("browse"), scan_interval_s=0)
    source.open({})
    read: list[bytes] = []
    written: list[bytes] = []
    for chunk in range(60):
        batch = _records("browse", chunk * 10, 10) + _records("games", chunk, 1)
        assert writer.write(batch) == 11
        written += [r.value for r in batch if r.source == "browse"]
        read += [r.value for r in source.poll(1000, 0)]
    read += [r.value for r in source.poll(1000, 0)]
    assert read == written  # one file at a time, in order: nothing lost, nothing twice
    assert writer.lines == {"browse": 600, "games": 60}
    assert writer.rotations["browse"] > 10
    files = sorted(p.name for p in writer.directory("browse").iterdir())
    n = writer.rotations["browse"]
    assert files == sorted(["browse.jsonl", f"browse.jsonl.{n}", f"browse.jsonl.{n - 1}"])
    assert all(p.stat().st_size <= 2_000 for p in writer.directory("browse").iterdir())
    source.close()
    writer.close()


def test_a_writer_reopened_appends_and_numbers_rotations_after_the_old_ones(
    tmp_path: Path,
) -> None:
    with LogWriter(tmp_path, ["live"], rotate_bytes=1_000) as writer:
        for i in range(30):
            writer.write(_records("live", i, 1))
        first = writer.rotations["live"]
    assert first >= 1
    with LogWriter(tmp_path, ["live"], rotate_bytes=1_000) as writer:
        before = writer.path("live").read_bytes()
        writer.write(_records("live", 30, 1))
        assert writer.path("live").read_bytes().startswith(before)
        for i in range(31, 61):
            writer.write(_records("live", i, 1))
    names = {p.name for p in (tmp_path / "live").iterdir()}
    assert f"live.jsonl.{first + 1}" in names


def test_bad_settings_and_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LogWriter(tmp_path, ["a"], keep=0)
    with LogWriter(tmp_path, ["a"]) as writer, pytest.raises(KeyError):
        writer.write(_records("b", 0, 1))

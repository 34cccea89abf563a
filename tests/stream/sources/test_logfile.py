"""LogFileSource: the source contract, partial lines, rotation by rename and by copytruncate,
a directory of files, restarts after a rotation, and the spec."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from hopcast.errors import ConfigError
from hopcast.stream.record import Position, Record
from hopcast.stream.sources import build_source, check_source_contract
from hopcast.stream.sources.logfile import LogFileSource


def lines(prefix: str, n: int) -> list[bytes]:
    return [f'{{"{prefix}": {i}}}'.encode() for i in range(n)]


def write(path: Path, values: list[bytes], mode: str = "ab") -> None:
    with open(path, mode) as f:
        f.write(b"".join(v + b"\n" for v in values))


def drain(source: LogFileSource, want: int, timeout: float = 5.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out += source.poll(100, 0.05)
    return out


def test_a_file_passes_the_source_contract(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    values = lines("a", 30)
    write(log, values)
    check_source_contract(lambda: LogFileSource("s", log, scan_interval_s=0.01), values)


def test_a_directory_passes_the_source_contract(tmp_path: Path) -> None:
    expected: list[bytes] = []
    for name, n in [("a.log", 10), ("b.log", 4), ("c.jsonl", 7)]:
        values = lines(name, n)
        write(tmp_path / name, values)
        expected += values
    (tmp_path / ".hidden").write_bytes(b'{"x": 1}\n')
    (tmp_path / "a.log.2.gz").write_bytes(b"\x1f\x8b compressed\n")
    check_source_contract(
        lambda: LogFileSource("s", tmp_path, scan_interval_s=0.01), expected, max_records=3
    )


def test_offsets_are_byte_offsets_past_each_line_and_a_partial_line_waits(
    tmp_path: Path,
) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b'{"a": 1}\n\n{"b": 2}\r\n{"c": 3')
    s = LogFileSource("s", log, scan_interval_s=0.01)
    s.open({})
    got = drain(s, 2)
    assert [r.value for r in got] == [b'{"a": 1}', b'{"b": 2}']
    assert [r.position.offset for r in got] == [9, 20]
    assert s.poll(10, 0.05) == []
    assert sum(s.lag().values()) == len(b'{"c": 3')
    with open(log, "ab") as f:
        f.write(b"}\n")
    got = drain(s, 1)
    assert [r.value for r in got] == [b'{"c": 3}']
    assert got[0].position.offset == log.stat().st_size
    s.close()


def test_rename_rotation_finishes_the_old_file_and_reads_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("old", 5))
    s = LogFileSource("s", log, scan_interval_s=0.01, linger_s=0.05)
    s.open({})
    first = drain(s, 5)
    os.rename(log, tmp_path / "app.log.1")
    write(tmp_path / "app.log.1", lines("late", 2))  # the writer had it open still
    write(log, lines("new", 3))
    rest = drain(s, 5)
    old_part = first[0].position.partition
    assert [r.value for r in rest if r.position.partition == old_part] == lines("late", 2)
    assert [r.value for r in rest if r.position.partition != old_part] == lines("new", 3)
    parts = {r.position.partition for r in first + rest}
    assert len(parts) == 2
    s.close()


def test_a_restart_finishes_a_file_rotated_while_it_was_down(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("old", 6))
    s = LogFileSource("s", log, scan_interval_s=0.01)
    s.open({})
    got = drain(s, 3)[:3]
    s.close()
    resume = {got[-1].position.partition: got[-1].position}
    # Down: the writer appends, rotates, and starts a new file.
    write(log, lines("more", 2))
    os.rename(log, tmp_path / "app.log.1")
    write(log, lines("new", 2))
    s.open(resume)
    rest = drain(s, 7)
    assert sorted(r.value for r in rest) == sorted(
        lines("old", 6)[3:] + lines("more", 2) + lines("new", 2)
    )
    s.close()


def test_copytruncate_reads_the_new_content_as_a_new_partition(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("before", 4))
    s = LogFileSource("s", log, scan_interval_s=0.01)
    s.open({})
    before = drain(s, 4)
    shutil.copy(log, tmp_path / "app.log.1")
    with open(log, "r+b") as f:
        f.truncate(0)
    write(log, lines("after", 2))
    after = drain(s, 2)
    assert [r.value for r in after] == lines("after", 2)
    assert after[0].position.partition != before[0].position.partition
    assert after[0].position == Position(after[0].position.partition, len(lines("after", 1)[0]) + 1)
    s.close()
    # A restart with both positions stored reads nothing twice (the copy is not watched).
    s.open(
        {
            before[-1].position.partition: before[-1].position,
            **{after[-1].position.partition: after[-1].position},
        }
    )
    assert s.poll(10, 0.1) == []
    s.close()


def test_the_file_spec_builds_a_source_and_checks_its_path(tmp_path: Path) -> None:
    s = build_source("browse", f"file:{tmp_path}")
    assert isinstance(s, LogFileSource) and s.name == "browse"
    with pytest.raises(ConfigError, match="does not exist"):
        build_source("browse", f"file:{tmp_path}/nope/x.log")
    with pytest.raises(ConfigError, match="needs a path"):
        build_source("browse", "file:")

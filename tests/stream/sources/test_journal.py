"""The ingest journal: the source contract, segments and their truncation, torn tails, group
commit, one writer per directory."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from hopcast.errors import StorageError
from hopcast.stream.record import Record
from hopcast.stream.sources import build_source, check_source_contract
from hopcast.stream.sources.journal import Journal, JournalSource


def values(prefix: str, n: int) -> list[bytes]:
    return [f'{{"{prefix}": {i}}}'.encode() for i in range(n)]


def drain(source: JournalSource, want: int, timeout: float = 5.0) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        out += source.poll(1000, 0.05)
    return out


def segments(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("*.seg"))


def test_a_journal_passes_the_source_contract_across_segments(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=100)
    expected: list[bytes] = []
    for i in range(12):
        batch = values(f"b{i}", 3)
        j.append(batch)
        expected += batch
    assert len(segments(tmp_path)) > 3
    check_source_contract(lambda: JournalSource("s", tmp_path), expected, max_records=5)
    j.close()


def test_append_returns_the_position_the_reader_reports_and_the_reader_follows(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path, segment_bytes=64)
    s = JournalSource("s", tmp_path)
    s.open({})
    assert s.poll(10, 0.01) == []
    pos = j.append([b'{"a": 1}', b'{"b": 2}'])
    got = drain(s, 2)
    assert [r.value for r in got] == [b'{"a": 1}', b'{"b": 2}']
    assert got[-1].position == pos == j.end
    for i in range(10):  # rolls segments while the reader follows
        j.append(values(f"x{i}", 2))
    assert len(drain(s, 20)) == 20
    assert s.lag() == {"0": 0}
    s.close()
    j.close()


def test_commit_deletes_only_segments_wholly_before_the_position(tmp_path: Path) -> None:
    j = Journal(tmp_path, segment_bytes=50)
    for i in range(8):
        j.append(values(f"v{i}", 2))
    before = segments(tmp_path)
    s = JournalSource("s", tmp_path)
    s.open({})
    got = drain(s, 16)
    middle = got[7].position
    s.commit({"0": middle})
    left = segments(tmp_path)
    assert 0 < len(left) < len(before)
    for k, name in enumerate(before[:-1]):  # deleted = it ends at or before the position
        assert (name not in left) == (int(before[k + 1][:-4]) <= middle.offset)
    # What is left still holds everything after the committed position.
    s.close()
    s.open({"0": middle})
    assert [r.value for r in drain(s, 8)] == [r.value for r in got[8:]]
    s.commit({"0": got[-1].position})
    assert segments(tmp_path)[-1] == before[-1]  # the active segment stays
    s.close()
    j.close()


def test_a_torn_tail_is_not_read_and_the_next_writer_cuts_it(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append([b'{"ok": 1}'])
    j.close()
    seg = tmp_path / segments(tmp_path)[0]
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x00\x40garbage")  # a crash in the middle of a write
    s = JournalSource("s", tmp_path)
    s.open({})
    assert [r.value for r in drain(s, 1)] == [b'{"ok": 1}']
    assert s.poll(10, 0.05) == []
    j = Journal(tmp_path)
    j.append([b'{"ok": 2}'])
    assert [r.value for r in drain(s, 1)] == [b'{"ok": 2}']
    s.close()
    j.close()


def test_concurrent_appends_share_fsyncs_and_lose_nothing(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    n_threads, per = 16, 25

    def writer(t: int) -> None:
        for i in range(per):
            j.append([f'{{"t": {t}, "i": {i}}}'.encode()])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = j.stats()
    assert stats.records == stats.appends == n_threads * per
    assert stats.fsyncs < stats.appends
    s = JournalSource("s", tmp_path)
    s.open({})
    got = drain(s, n_threads * per)
    assert len({r.value for r in got}) == n_threads * per
    s.close()
    j.close()


def test_one_writer_per_directory_and_a_failed_write_is_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journal(tmp_path)
    with pytest.raises(StorageError, match="another process"):
        Journal(tmp_path)
    j.append([b'{"a": 1}'])
    size = j.end.offset

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StorageError, match="No space"):
        j.append([b'{"b": 2}'])
    assert j.end.offset == size
    monkeypatch.undo()
    j.append([b'{"c": 3}'])
    s = JournalSource("s", tmp_path)
    s.open({})
    assert [r.value for r in drain(s, 2)] == [b'{"a": 1}', b'{"c": 3}']
    s.close()
    j.close()


def test_the_journal_spec(tmp_path: Path) -> None:
    s = build_source("events", f"journal:{tmp_path / 'j'}")
    assert isinstance(s, JournalSource)
    s.open({})
    s.journal.append([b'{"x": 1}'])
    assert len(drain(s, 1)) == 1
    s.close()

"""What only the LMDB backend promises: one shared environment per path in a process, readers
in other processes, snapshot reads, and driver errors translated to StorageError."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hopcast.errors import StorageError, StoreClosed
from hopcast.kv.lmdb import LmdbKV

NOW = 1_000_000
#: Small enough that a few hundred kilobytes fill it, large enough for LMDB's own pages.
TINY_MAP = 1 << 16


def _put(kv: LmdbKV, value: bytes, ts: int = 1, key: bytes = b"k") -> None:
    with kv.writer() as w:
        w.put("ns", b"r", key, value, ts, 0)


def _value(kv: LmdbKV, key: bytes = b"k") -> bytes | None:
    item = kv.get("ns", b"r", key, NOW)
    return None if item is None else item.value


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "env"


def test_two_stores_on_one_path_share_the_environment(path: Path) -> None:
    a = LmdbKV(path, sync=False)
    b = LmdbKV(path, sync=False)
    try:
        a.configure("ns", None)
        b.configure("ns", None)
        _put(a, b"from-a")
        assert _value(b) == b"from-a"
        a.close()
        with pytest.raises(StoreClosed):
            _value(a)
        _put(b, b"from-b", ts=2)  # the shared environment is still open for b
        assert _value(b) == b"from-b"
    finally:
        a.close()
        b.close()


def test_closing_the_last_store_on_a_path_lets_it_be_reopened(path: Path) -> None:
    kv = LmdbKV(path, sync=False)
    kv.configure("ns", None)
    _put(kv, b"kept")
    kv.close()
    kv.close()  # closing twice is harmless
    again = LmdbKV(path, sync=False)
    try:
        again.configure("ns", None)
        assert _value(again) == b"kept"
    finally:
        again.close()


_READER = """
import sys
from hopcast.kv.lmdb import LmdbKV
kv = LmdbKV(sys.argv[1])
kv.configure("ns", None)
item = kv.get("ns", b"r", b"k", {now})
print("absent" if item is None else item.value.decode())
kv.close()
"""


def _read_in_another_process(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _READER.format(now=NOW), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_a_reader_in_another_process_sees_each_commit_while_the_writer_stays_open(
    path: Path,
) -> None:
    writer = LmdbKV(path, sync=False)
    try:
        writer.configure("ns", None)
        assert _read_in_another_process(path) == "absent"
        _put(writer, b"first")
        assert _read_in_another_process(path) == "first"
        _put(writer, b"second", ts=2)
        assert _read_in_another_process(path) == "second"
    finally:
        writer.close()


def test_a_read_view_is_a_snapshot_that_later_commits_do_not_change(path: Path) -> None:
    kv = LmdbKV(path, sync=False)
    kv.configure("ns", None)
    _put(kv, b"before")
    snapshot_open = threading.Event()
    write_done = threading.Event()
    seen: list[bytes | None] = []

    def reader() -> None:
        with kv.reader() as r:
            first = r.get("ns", b"r", b"k", NOW)
            seen.append(None if first is None else first.value)
            snapshot_open.set()
            write_done.wait(timeout=60)
            again = r.get("ns", b"r", b"k", NOW)
            seen.append(None if again is None else again.value)
            added = r.get("ns", b"r", b"new", NOW)
            seen.append(None if added is None else added.value)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert snapshot_open.wait(timeout=60)
        with kv.writer() as w:
            w.put("ns", b"r", b"k", b"after", 2, 0)
            w.put("ns", b"r", b"new", b"added", 2, 0)
    finally:
        write_done.set()
        thread.join(timeout=60)
    assert seen == [b"before", b"before", None]
    assert _value(kv) == b"after"
    kv.close()


def test_a_full_map_is_a_storage_error_and_the_write_leaves_nothing(path: Path) -> None:
    kv = LmdbKV(path, map_size=TINY_MAP, sync=False)
    try:
        kv.configure("ns", None)
        with pytest.raises(StorageError, match="map is full") as info, kv.writer() as w:
            for i in range(100):
                w.put("ns", b"r", i.to_bytes(4, "big"), b"x" * 4_000, 1, 0)
        assert info.value.__cause__ is not None  # the driver's error, chained
        assert _value(kv, (0).to_bytes(4, "big")) is None
        _put(kv, b"small")  # the store is still usable
        assert _value(kv) == b"small"
    finally:
        kv.close()


def test_a_read_only_store_refuses_writes(path: Path) -> None:
    writer = LmdbKV(path, sync=False)
    writer.configure("ns", None)
    _put(writer, b"v")
    writer.close()
    ro = LmdbKV(path, readonly=True)
    try:
        with pytest.raises(StorageError, match="read-only"), ro.writer() as w:
            w.put("ns", b"r", b"k", b"nope", 2, 0)
    finally:
        ro.close()


def test_a_read_only_store_reads_a_namespace_on_its_first_read(path: Path) -> None:
    writer = LmdbKV(path, sync=False)
    writer.configure("ns", None)
    _put(writer, b"v")
    writer.close()
    ro = LmdbKV(path, readonly=True)
    try:
        ro.configure("ns", None)
        assert _value(ro) == b"v"
    finally:
        ro.close()


def test_a_writable_store_opened_beside_a_read_only_one_can_write(path: Path) -> None:
    first = LmdbKV(path, sync=False)
    first.configure("ns", None)
    first.close()
    ro = LmdbKV(path, readonly=True)
    rw = LmdbKV(path, sync=False)
    try:
        rw.configure("ns", None)
        _put(rw, b"written")
        assert _value(rw) == b"written"
    finally:
        rw.close()
        ro.close()


def test_opening_a_path_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError):
        LmdbKV(blocker / "env")


def test_a_backup_holds_the_committed_state_and_opens_as_a_store(
    path: Path, tmp_path: Path
) -> None:
    kv = LmdbKV(path)
    kv.configure("ns", None)
    _put(kv, b"first")
    with kv.writer() as w:  # a checkpoint written with the data, as the graph store does
        w.set_checkpoint("src/0", b"pos-1")
    kv.backup(tmp_path / "copy")
    _put(kv, b"second", ts=2)  # after the backup: not in it
    kv.close()
    copy = LmdbKV(tmp_path / "copy")
    assert _value(copy) == b"first"
    assert copy.checkpoints() == {"src/0": b"pos-1"}
    copy.close()

"""Tail JSON-lines log files (request/response logs): a file, a directory, or a glob.

Spec: ``file:PATH`` where PATH is a file (``/var/log/browse/access.log``), a directory (every
regular file in it except hidden and compressed ones, ``.gz`` and the like) or a glob
(``/var/log/browse/*.jsonl``).

Positions:

* **partition = file identity**: ``<inode>.<crc32 of the first line>``. The inode follows a
  file across a rename; the first line tells a file from a later one that reuses the inode, and
  a copytruncated file (same inode, new content) from its old self. A file is picked up once
  its first line is complete.
* **offset = byte offset just past the record's line** (its newline included), so resuming
  after a position is a seek to it. Offsets grow within a file.

Only complete lines are records; a partial last line waits until its newline arrives. Empty
lines are skipped. A line longer than ``max_line_bytes`` is delivered in pieces of that size (so
memory stays bounded; the pipeline dead-letters them as oversize or malformed).

Rotation:

* **rename + new file** (logrotate's default): the renamed file keeps its identity; it is read to
  its end through the open descriptor, and closed once it has left the watched paths and stayed
  unchanged for ``linger_s``; the new file at the path is a new partition read from its start.
  In single-file mode, rotated siblings (``access.log.1``, …) are also opened on start when a
  stored position names them, so a restart finishes a file that was rotated meanwhile.
* **copytruncate**: the file shrinks below what was read: it is read again from its start
  under its new identity. (Lines written between the copy and the truncation are lost — that
  is copytruncate's own race, present with every tailer.)

``lag()`` is the number of bytes in the open files beyond the last delivered line.
Polling is by ``stat`` (no inotify): a directory is rescanned every ``scan_interval_s``.
"""

from __future__ import annotations

import glob
import os
import stat
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hopcast.errors import ConfigError
from hopcast.stream.record import Position, Record

#: Bytes read from a file per system call.
READ_CHUNK = 1 << 20
#: Files a directory source skips: rotated logs compressed by logrotate and friends.
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")
#: Longest line kept whole (a longer one is cut into pieces of this size).
DEFAULT_MAX_LINE_BYTES = 8 << 20


@dataclass(eq=False)
class _File:
    fd: int
    ino: int
    path: str
    pid: str | None = None
    #: byte offset just past the last delivered line (the next record starts here)
    offset: int = 0
    buf: bytearray = field(default_factory=bytearray)
    gone_since: float | None = None

    @property
    def read_pos(self) -> int:
        return self.offset + len(self.buf)


def file_identity(ino: int, first_line: bytes) -> str:
    """The partition of a file with inode ``ino`` whose first line is ``first_line``."""
    return f"{ino}.{zlib.crc32(first_line):08x}"


class LogFileSource:
    """Tails JSON-lines files with positions. See the module docstring."""

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        scan_interval_s: float = 0.25,
        linger_s: float = 2.0,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.name = name
        self.path = os.fspath(path)
        self.scan_interval_s = scan_interval_s
        self.linger_s = linger_s
        self.max_line_bytes = max_line_bytes
        self._files: dict[int, _File] = {}  # by inode
        self._resume: dict[str, Position] = {}
        self._last_scan = 0.0
        self._open = False
        self._rr = 0

    # -- Source ----------------------------------------------------------------------------

    def open(self, resume: Mapping[str, Position]) -> None:
        self.close()
        self._resume = dict(resume)
        self._open = True
        self._scan(initial=True)

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if not self._open:
            raise RuntimeError(f"source {self.name!r} is not open")
        deadline = time.monotonic() + timeout_s
        while True:
            out = self._read(max_records)
            if out:
                return out
            now = time.monotonic()
            if now - self._last_scan >= self.scan_interval_s:
                self._scan()
                out = self._read(max_records)
                if out:
                    return out
            if now >= deadline:
                return []
            time.sleep(min(0.01, max(0.0, deadline - now)))

    def commit(self, positions: Mapping[str, Position]) -> None:
        """Nothing to acknowledge: the files are only read."""

    def close(self) -> None:
        for f in self._files.values():
            os.close(f.fd)
        self._files.clear()
        self._open = False

    def lag(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self._files.values():
            try:
                size = os.fstat(f.fd).st_size
            except OSError:
                continue
            out[f.pid or f"{f.ino}.?"] = max(0, size - f.offset)
        return out

    # -- files -----------------------------------------------------------------------------

    def _watched(self) -> list[str]:
        """The paths that match the spec right now, oldest first."""
        p = self.path
        if any(c in p for c in "*?["):
            paths = glob.glob(p)
        elif os.path.isdir(p):
            paths = [
                os.path.join(p, n)
                for n in os.listdir(p)
                if not n.startswith(".") and not n.endswith(COMPRESSED)
            ]
        else:
            paths = [p]
        out: list[tuple[float, str]] = []
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((st.st_mtime, path))
        return [path for _, path in sorted(out)]

    def _siblings(self) -> list[str]:
        """Rotated siblings of a single watched file (``access.log.1``, …)."""
        p = self.path
        if any(c in p for c in "*?[") or os.path.isdir(p):
            return []
        return sorted(glob.glob(glob.escape(p) + ".*"))

    def _scan(self, initial: bool = False) -> None:
        self._last_scan = time.monotonic()
        watched = self._watched()
        seen: set[int] = set()
        for path in watched:
            f = self._track(path)
            if f is not None:
                seen.add(f.ino)
        if initial and self._resume:
            for path in self._siblings():
                f = self._track(path, only_resumed=True)
                if f is not None:
                    seen.add(f.ino)
        now = time.monotonic()
        for ino, f in list(self._files.items()):
            if ino in seen:
                f.gone_since = None
                continue
            if f.gone_since is None:
                f.gone_since = now
                continue
            size = os.fstat(f.fd).st_size
            if size <= f.read_pos and now - f.gone_since >= self.linger_s:
                os.close(f.fd)
                del self._files[ino]

    def _track(self, path: str, only_resumed: bool = False) -> _File | None:
        """The open file at ``path`` (opened now if new), or None if it cannot be read yet."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        f = self._files.get(st.st_ino)
        if f is not None:
            f.path = path
            return f
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        ino = os.fstat(fd).st_ino
        if ino in self._files:  # the path was replaced between stat and open
            os.close(fd)
            return self._files[ino]
        f = _File(fd, ino, path)
        identified = self._identify(f)  # if not, it is named when its first line is complete
        if only_resumed and not (identified and f.pid in self._resume):
            os.close(fd)
            return None
        self._files[ino] = f
        return f

    def _identify(self, f: _File) -> bool:
        """Name the file after its first line and seek to its resume position, if complete."""
        first = _first_line(f.fd, self.max_line_bytes)
        if first is None:
            return False
        f.pid = file_identity(f.ino, first)
        start = self._resume.get(f.pid)
        f.offset = max(start.offset, 0) if start is not None else 0  # -1: from the start
        size = os.fstat(f.fd).st_size
        if f.offset > size:  # truncated while we were away, same first line: start over
            f.offset = 0
        f.buf.clear()
        os.lseek(f.fd, f.offset, os.SEEK_SET)
        return True

    def _read(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        files = list(self._files.values())
        if not files:
            return out
        n = len(files)
        for i in range(n):
            if len(out) >= max_records:
                break
            f = files[(self._rr + i) % n]
            self._read_file(f, out, max_records)
        self._rr = (self._rr + 1) % n
        return out

    def _read_file(self, f: _File, out: list[Record], max_records: int) -> None:
        if f.pid is None and not self._identify(f):
            return
        try:
            size = os.fstat(f.fd).st_size
        except OSError:
            return
        if size < f.read_pos:  # copytruncate: the file starts again, as a new partition
            f.pid, f.offset = None, 0
            f.buf.clear()
            if not self._identify(f):
                return
        name, pid, limit = self.name, f.pid, self.max_line_bytes
        assert pid is not None
        while len(out) < max_records:
            nl = f.buf.find(b"\n")
            if nl < 0:
                if len(f.buf) >= limit:  # an endless line: deliver a piece
                    piece = bytes(f.buf[:limit])
                    del f.buf[:limit]
                    f.offset += limit
                    out.append(Record(name, Position(pid, f.offset), piece))
                    continue
                if f.read_pos >= size:
                    return
                chunk = os.read(f.fd, READ_CHUNK)
                if not chunk:
                    return
                f.buf += chunk
                continue
            # Split as many complete lines as fit from the buffer in one go.
            start = 0
            buf = f.buf
            offset = f.offset
            while nl >= 0 and len(out) < max_records:
                line = bytes(buf[start:nl])
                offset += nl + 1 - start
                start = nl + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.strip():
                    out.append(Record(name, Position(pid, offset), line))
                nl = buf.find(b"\n", start)
            del buf[:start]
            f.offset = offset


def _first_line(fd: int, limit: int) -> bytes | None:
    """The first complete line of the file (without its newline), or None if there is none."""
    data = os.pread(fd, min(limit, 64 << 10), 0)
    nl = data.find(b"\n")
    if nl < 0:
        if len(data) >= min(limit, 64 << 10):
            return data  # a huge first line: its first bytes identify the file
        return None
    return data[:nl]


def from_spec(name: str, args: str) -> LogFileSource:
    """``file:PATH`` (see the module docstring).

    Raises:
        ConfigError: if PATH is empty or its directory does not exist.
    """
    if not args:
        raise ConfigError(f"source {name!r}: file: needs a path")
    path = Path(args).expanduser()
    if not any(c in args for c in "*?[") and not path.exists() and not path.parent.is_dir():
        raise ConfigError(f"source {name!r}: {path} does not exist")
    return LogFileSource(name, path)

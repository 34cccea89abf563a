"""A durable local journal: what ``POST /v1/ingest/{source}`` accepted, read back with positions.

Spec: ``journal:DIR`` — one directory per source.

Writing (:class:`Journal`, used by :mod:`hopcast.api.ingest`): :meth:`Journal.append` frames
each record (``length u32 ‖ crc32 u32 ‖ payload``), writes them at the end of the active segment
and ``fsync``\\ s before it returns, so a request is answered 202 only once its records are on
disk: nothing acknowledged is ever lost. Concurrent appends share one write and one ``fsync``
(group commit: the first caller writes everything queued meanwhile, the others wait for it).
One writer per directory (an ``flock`` on ``DIR/.lock``); on open it cuts a torn tail left by a
crash mid-write (never acknowledged) so framing stays valid.

Segments are files ``<base>.seg`` where ``base`` is the global byte offset of their first byte;
the writer starts a new one when the active segment passes ``segment_bytes``, and never touches
a segment again once a newer one exists. New files and directory entries are fsync'd too.

Retries (:meth:`Journal.append_once`): an append may carry an idempotency key (the HTTP
``Idempotency-Key`` header). The key is written as a *key frame* right after the request's
records, in the same write and ``fsync`` — a frame whose length has the top bit set, holding
``count u32 ‖ digest 16 bytes ‖ key`` — so it is durable exactly when its records are (a torn
tail that cut a record cuts the key frame after it too). A second append with the same key and
the same records appends nothing and answers the first one's position; with other records it
raises :class:`KeyReused`. The writer remembers the last :data:`MAX_KEYS` keys, and on open
re-reads the key frames of the active segment, so a retry after a crash and restart is
recognised while its records are in the active segment. Readers skip key frames.

Reading (:class:`JournalSource`): one partition, ``"0"``; a record's offset is the global byte
offset just past it, so resuming is a seek. The reader follows the writer (same process or
another), waits on a record that is not complete yet, and moves to the next segment at the end
of one that is finished. :meth:`JournalSource.commit` deletes segments that lie entirely at or
before the committed position (never the active one): the journal shrinks as the engine
checkpoints. ``lag()`` is the number of journal bytes not yet read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hopcast.errors import ConfigError, StorageError
from hopcast.stream.record import Position, Record

log = logging.getLogger("hopcast.ingest.journal")

_FRAME = struct.Struct(">II")
#: The top bit of a frame's length marks a key frame (records are far smaller than 2**31 bytes).
_KEY_FLAG = 1 << 31
_LENGTH = _KEY_FLAG - 1
_KEY_HEAD = struct.Struct(">I16s")
#: Keys remembered for retries: far more requests than a client retries at once, a few MiB.
MAX_KEYS = 10_000
#: Longest idempotency key in bytes (the HTTP header's bound).
MAX_KEY_BYTES = 255
#: Default segment size: big enough that rolling is rare, small enough to free disk promptly.
DEFAULT_SEGMENT_BYTES = 64 << 20
#: Largest record the journal frames (the HTTP route's body limit is far below).
MAX_RECORD_BYTES = 64 << 20
PARTITION = "0"
_SUFFIX = ".seg"


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """``(base, path)`` of every segment, oldest first."""
    out = []
    for p in directory.iterdir():
        if p.name.endswith(_SUFFIX) and p.name[: -len(_SUFFIX)].isdigit():
            out.append((int(p.name[: -len(_SUFFIX)]), p))
    return sorted(out)


def _segment_path(directory: Path, base: int) -> Path:
    return directory / f"{base:020d}{_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest(values: Sequence[bytes]) -> bytes:
    """16 bytes that tell one request's records from another's (lengths included)."""
    h = hashlib.blake2b(digest_size=16)
    for v in values:
        h.update(len(v).to_bytes(4, "big"))
        h.update(v)
    return h.digest()


def _key_frame(key: bytes, count: int, digest_: bytes) -> bytes:
    payload = _KEY_HEAD.pack(count, digest_) + key
    return _FRAME.pack(len(payload) | _KEY_FLAG, zlib.crc32(payload)) + payload


def _valid_end(data: bytes) -> int:
    """Where the last complete, intact frame of a segment's bytes ends."""
    pos, n = 0, len(data)
    while pos + _FRAME.size <= n:
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + (length & _LENGTH)
        if end > n or zlib.crc32(data[pos + _FRAME.size : end]) != crc:
            break
        pos = end
    return pos


def _key_frames(data: bytes, end: int, base: int) -> Iterator[tuple[bytes, _Ack]]:
    """``(key, ack)`` of every key frame in ``data[:end]`` (a segment starting at ``base``)."""
    pos = 0
    while pos + _FRAME.size <= end:
        length, _ = _FRAME.unpack_from(data, pos)
        body = pos + _FRAME.size
        nxt = body + (length & _LENGTH)
        if length & _KEY_FLAG:
            count, dig = _KEY_HEAD.unpack_from(data, body)
            yield data[body + _KEY_HEAD.size : nxt], _Ack(base + pos, count, dig)
        pos = nxt


@dataclass(frozen=True, slots=True)
class _Ack:
    """What a keyed append was answered: the end of its records, how many, their digest."""

    end: int
    count: int
    digest: bytes


class KeyReused(ValueError):
    """An idempotency key came back with other records than the first time."""


@dataclass(frozen=True, slots=True)
class Appended:
    """The answer to :meth:`Journal.append_once`.

    Attributes:
        position: just past the request's last record.
        count: how many records the request appended (the first time).
        replayed: True when the key was seen before and nothing was appended now.
    """

    position: Position
    count: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class JournalStats:
    appends: int
    records: int
    bytes: int
    fsyncs: int


#: A queued append: ticket, records, and (key, digest) when it has an idempotency key.
_Pending = tuple[int, list[bytes], tuple[bytes, bytes] | None]


class Journal:
    """The writing side of a journal directory. See the module docstring.

    Thread-safe. Raises :class:`StorageError` when the disk fails (nothing of that call is
    acknowledged, and the segment is cut back to its last good record).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"journal {self.directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise StorageError(
                f"journal {self.directory} is open for writing in another process"
            ) from exc
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._ticket = 0
        self._done = 0
        #: ticket -> the end offset of its records, or the error that failed its group
        self._results: dict[int, int | BaseException] = {}
        self._flushing = False
        #: idempotency key -> what its append was answered (the newest MAX_KEYS)
        self._keys: OrderedDict[bytes, _Ack] = OrderedDict()
        #: keys whose append is queued or being written -> its ticket
        self._inflight: dict[bytes, int] = {}
        self._appends = self._records = self._bytes = self._fsyncs = 0
        self._open_active()

    def _open_active(self) -> None:
        segments = _segments(self.directory)
        if not segments:
            self._base = 0
            path = _segment_path(self.directory, 0)
        else:
            self._base, path = segments[-1]
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        end = _valid_end(data)
        if end < len(data):
            log.warning(
                "journal: cut a torn tail",
                extra={"event": "journal_repair", "segment": str(path), "bytes": len(data) - end},
            )
            os.ftruncate(fd, end)
            os.fsync(fd)
        if not segments:
            _fsync_dir(self.directory)
        self._fd = fd
        self._size = end
        for key, ack in _key_frames(data, end, self._base):
            self._remember(key, ack)

    def _remember(self, key: bytes, ack: _Ack) -> None:
        self._keys[key] = ack
        self._keys.move_to_end(key)
        while len(self._keys) > MAX_KEYS:
            self._keys.popitem(last=False)

    @property
    def end(self) -> Position:
        """The position just past the last durable record."""
        with self._cond:
            return Position(PARTITION, self._base + self._size)

    def stats(self) -> JournalStats:
        return JournalStats(self._appends, self._records, self._bytes, self._fsyncs)

    def append(self, values: Sequence[bytes]) -> Position:
        """Write ``values`` durably (group commit); returns the position of the last one."""
        done = self._append(values, None)
        assert isinstance(done, Position)
        return done

    def append_once(self, values: Sequence[bytes], key: str) -> Appended:
        """Write ``values`` durably unless an append with ``key`` already did.

        A retry with the same ``key`` and the same ``values`` (a client that lost the first
        answer) appends nothing and gets the first answer, ``replayed=True``; a retry that
        arrives while the first is still being written waits for it. See the module docstring
        for how long keys are remembered.

        Raises:
            KeyReused: ``key`` was used before with other values (nothing is appended).
            ValueError: ``key`` is empty or longer than :data:`MAX_KEY_BYTES` bytes.
            StorageError: the disk failed (nothing acknowledged; a retry may succeed).
        """
        raw = key.encode("utf-8", "surrogatepass")
        if not 0 < len(raw) <= MAX_KEY_BYTES:
            raise ValueError(f"an idempotency key is 1 to {MAX_KEY_BYTES} bytes")
        dig = digest(values)
        done = self._append(values, (raw, dig))
        if isinstance(done, Position):
            return Appended(done, len(values), replayed=False)
        if done.digest != dig:
            raise KeyReused(
                f"idempotency key {key[:60]!r} was used for other records "
                f"({done.count} records ending at offset {done.end})"
            )
        return Appended(Position(PARTITION, done.end), done.count, replayed=True)

    def _append(self, values: Sequence[bytes], key: tuple[bytes, bytes] | None) -> Position | _Ack:
        """Queue ``values`` and wait until a group write holding them is durable; with a key
        already appended (or being appended: wait for it), the first append's answer instead.
        The key check and the queueing happen under one lock, so two attempts with one key
        never both append."""
        for v in values:
            if len(v) > MAX_RECORD_BYTES:
                raise ValueError(f"a journal record is at most {MAX_RECORD_BYTES} bytes")
        with self._cond:
            while key is not None:
                seen = self._keys.get(key[0])
                if seen is not None:
                    return seen
                first = self._inflight.get(key[0])
                if first is None:
                    break
                while self._done < first:  # the first attempt is being written: wait for it
                    self._cond.wait()
            self._ticket += 1
            ticket = self._ticket
            self._pending.append((ticket, list(values), key))
            if key is not None:
                self._inflight[key[0]] = ticket
            while self._done < ticket:
                if self._flushing:
                    self._cond.wait()
                    continue
                batch, self._pending = self._pending, []
                self._flushing = True
                self._cond.release()
                error: BaseException | None = None
                ends: dict[int, int] = {}
                try:
                    ends = self._write(batch)
                except BaseException as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._flushing = False
                    last = batch[-1][0]
                    for t, vs, k in batch:
                        self._results[t] = error if error is not None else ends[t]
                        if k is not None:
                            self._inflight.pop(k[0], None)
                            if error is None:
                                self._remember(k[0], _Ack(ends[t], len(vs), k[1]))
                    self._done = last
                    self._cond.notify_all()
            outcome = self._results.pop(ticket)
            if isinstance(outcome, OSError):
                raise StorageError(f"journal {self.directory}: {outcome}") from outcome
            if isinstance(outcome, BaseException):
                raise outcome
            return Position(PARTITION, outcome)

    def _write(self, batch: list[_Pending]) -> dict[int, int]:
        """Write a group of appends and fsync once; returns each ticket's end offset (just
        past its records; a keyed append's key frame follows)."""
        ends: dict[int, int] = {}
        chunks: list[bytes] = []
        size = self._size
        n = 0
        for ticket, values, key in batch:
            for v in values:
                chunks.append(_FRAME.pack(len(v), zlib.crc32(v)))
                chunks.append(v)
                size += _FRAME.size + len(v)
                n += 1
            ends[ticket] = self._base + size
            if key is not None:
                frame = _key_frame(key[0], len(values), key[1])
                chunks.append(frame)
                size += len(frame)
        data = b"".join(chunks)
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self._fd, data[written:], self._size + written)
            if self.fsync:
                os.fdatasync(self._fd)
                self._fsyncs += 1
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size = size
        self._appends += len(batch)
        self._records += n
        self._bytes += len(data)
        if self._size >= self.segment_bytes:
            self._roll()
        return ends

    def _roll(self) -> None:
        """Start a new segment at the current end (the old one is final from now on)."""
        base = self._base + self._size
        path = _segment_path(self.directory, base)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if self.fsync:
            os.fsync(fd)
            _fsync_dir(self.directory)
        os.close(self._fd)
        self._fd, self._base, self._size = fd, base, 0

    def close(self) -> None:
        with self._cond:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._lock_fd >= 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = -1


class JournalSource:
    """Reads a journal directory with positions. See the module docstring.

    ``journal`` gives this directory's writer (opened on first use), so the HTTP route and the
    engine can share one process.
    """

    def __init__(self, name: str, directory: str | os.PathLike[str]) -> None:
        self.name = name
        self.directory = Path(directory)
        self._writer: Journal | None = None
        self._fd = -1
        self._base = 0  # base of the segment being read
        self._pos = 0  # global offset of the next record
        self._open = False

    @property
    def journal(self) -> Journal:
        if self._writer is None:
            self._writer = Journal(self.directory)
        return self._writer

    def open(self, resume: Mapping[str, Position]) -> None:
        self._close_segment()
        self.directory.mkdir(parents=True, exist_ok=True)
        start = resume.get(PARTITION)
        self._pos = start.offset if start is not None else 0
        segments = _segments(self.directory)
        if segments and self._pos < segments[0][0]:
            if start is not None:
                log.warning(
                    "journal: resume position precedes the oldest segment",
                    extra={"event": "journal_gap", "resume": self._pos, "first": segments[0][0]},
                )
            self._pos = segments[0][0]
        self._open = True
        self._open_segment()

    def _open_segment(self) -> bool:
        """Open the segment holding ``self._pos``, if it exists yet."""
        self._close_segment()
        chosen: tuple[int, Path] | None = None
        for base, path in _segments(self.directory):
            if base <= self._pos:
                chosen = (base, path)
            else:
                break
        if chosen is None:
            return False
        try:
            self._fd = os.open(chosen[1], os.O_RDONLY)
        except FileNotFoundError:
            return False
        self._base = chosen[0]
        return True

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        if not self._open:
            raise RuntimeError(f"source {self.name!r} is not open")
        deadline = time.monotonic() + timeout_s
        while True:
            out = self._read(max_records)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    def _read(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        if self._fd < 0 and not self._open_segment():
            return out
        name, base = self.name, self._base
        while len(out) < max_records:
            rel = self._pos - base
            size = os.fstat(self._fd).st_size
            data = os.pread(self._fd, min(size - rel, 4 << 20), rel) if size > rel else b""
            p = 0
            while len(out) < max_records and p + _FRAME.size <= len(data):
                length, crc = _FRAME.unpack_from(data, p)
                keyed = length & _KEY_FLAG
                length &= _LENGTH
                end = p + _FRAME.size + length
                if end > len(data):
                    if rel + end > size:
                        break  # not complete yet: the writer is on it
                    value = os.pread(self._fd, length, rel + p + _FRAME.size)  # a big one
                else:
                    value = data[p + _FRAME.size : end]
                if zlib.crc32(value) != crc:
                    break  # a torn tail (a writer crash): its restart cuts it
                if not keyed:  # a key frame is the writer's bookkeeping, not a record
                    out.append(Record(name, Position(PARTITION, base + rel + end), value))
                p = end
            self._pos = base + rel + p
            if p == 0:
                if not self._next_segment():
                    break
                base = self._base
        return out

    def _next_segment(self) -> bool:
        """At the end of this segment: move to the next one if it exists and this one is done."""
        newer = [b for b, _ in _segments(self.directory) if b > self._base]
        if not newer:
            return False
        # A newer segment exists, so this one is final: its size now is its last size.
        if self._pos - self._base < os.fstat(self._fd).st_size:
            return False  # unread bytes left (read them first)
        self._pos = newer[0]
        return self._open_segment()

    def commit(self, positions: Mapping[str, Position]) -> None:
        """Delete segments that end at or before the committed position (never the last)."""
        pos = positions.get(PARTITION)
        if pos is None:
            return
        segments = _segments(self.directory)
        for (base, path), (next_base, _) in itertools.pairwise(segments):
            if next_base <= pos.offset and base != self._base:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def close(self) -> None:
        self._close_segment()
        self._open = False
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def lag(self) -> dict[str, int]:
        segments = _segments(self.directory)
        if not segments:
            return {PARTITION: 0}
        base, path = segments[-1]
        try:
            end = base + path.stat().st_size
        except FileNotFoundError:
            return {PARTITION: 0}
        return {PARTITION: max(0, end - self._pos)}


def from_spec(name: str, args: str) -> JournalSource:
    """``journal:DIR``.

    Raises:
        ConfigError: if DIR is empty.
    """
    if not args:
        raise ConfigError(f"source {name!r}: journal: needs a directory")
    return JournalSource(name, Path(args).expanduser())

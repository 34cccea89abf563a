"""Where the demo's services write their records: one JSON-lines log directory per source.

:class:`LogWriter` appends :class:`~hopcast.demo.records.DemoRecord` s to
``<root>/<source>/<source>.jsonl`` and rotates like logrotate's default: once the file would
pass ``rotate_bytes`` it is renamed ``<source>.jsonl.<n>`` (n grows) and a new file starts; only
the newest ``keep`` rotated files stay. The demo's engine tails each directory with a
:class:`~hopcast.stream.sources.logfile.LogFileSource`, which follows a renamed file to its end
and reads an unlinked one through its open descriptor, so rotation loses nothing while the
engine runs.

Each :meth:`LogWriter.write` appends every source's lines with one ``write`` call per file, so a
reader sees whole lines (a partial one waits for its newline anyway).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from hopcast.demo.records import DemoRecord

#: Rotate a log once it would grow past this (a few minutes of the demo at 200 events/s).
DEFAULT_ROTATE_BYTES = 8 << 20
#: Rotated files kept per source.
DEFAULT_KEEP = 4


class LogWriter:
    """Appends records to rotated JSON-lines logs, one directory per source."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        sources: Iterable[str],
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        if rotate_bytes < 1 or keep < 1:
            raise ValueError("rotate_bytes and keep must be >= 1")
        self.root = Path(root)
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._rotated: dict[str, int] = {}
        #: lines written and rotations, by source
        self.lines: Counter[str] = Counter()
        self.rotations: Counter[str] = Counter()
        for source in sources:
            directory = self.directory(source)
            directory.mkdir(parents=True, exist_ok=True)
            numbers = [
                int(p.suffix[1:])
                for p in directory.glob(f"{source}.jsonl.*")
                if p.suffix[1:].isdigit()
            ]
            self._rotated[source] = max(numbers, default=0)
            self._open(source)

    def directory(self, source: str) -> Path:
        """The directory a source's logs are in (what its LogFileSource tails)."""
        return self.root / source

    def path(self, source: str) -> Path:
        """The file a source writes now."""
        return self.directory(source) / f"{source}.jsonl"

    @property
    def total(self) -> int:
        """Lines written by this writer."""
        return sum(self.lines.values())

    def _open(self, source: str) -> None:
        fd = os.open(self.path(source), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fds[source] = fd
        self._sizes[source] = os.fstat(fd).st_size

    def write(self, records: Iterable[DemoRecord]) -> int:
        """Append ``records`` (one line each); returns how many were written."""
        chunks: dict[str, list[bytes]] = {}
        n = 0
        for r in records:
            chunks.setdefault(r.source, []).append(r.value)
            n += 1
        for source, values in chunks.items():
            if source not in self._fds:
                raise KeyError(f"no log for source {source!r}")
            data = b"\n".join(values) + b"\n"
            if self._sizes[source] and self._sizes[source] + len(data) > self.rotate_bytes:
                self._rotate(source)
            os.write(self._fds[source], data)
            self._sizes[source] += len(data)
            self.lines[source] += len(values)
        return n

    def _rotate(self, source: str) -> None:
        os.close(self._fds.pop(source))
        self._rotated[source] += 1
        n = self._rotated[source]
        directory = self.directory(source)
        os.rename(self.path(source), directory / f"{source}.jsonl.{n}")
        self.rotations[source] += 1
        old = directory / f"{source}.jsonl.{n - self.keep}"
        if n - self.keep > 0 and old.exists():
            old.unlink()
        self._open(source)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

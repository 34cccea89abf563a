"""The reference source: records held in memory, for tests and examples.

``ListSource("clicks", [b'{"a": 1}', ...])`` serves its values in one partition (``"0"``) with
offsets 0, 1, 2, …; ``ListSource("clicks", {"p0": [...], "p1": [...]})`` serves several
partitions, interleaved round-robin. :meth:`ListSource.append` adds records while it runs (a
live upstream). ``committed`` holds what the engine last committed, so tests can watch it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping

from hopcast.stream.record import Position, Record


class ListSource:
    """In-memory records in one or more partitions. See the module docstring."""

    def __init__(
        self,
        name: str,
        values: Iterable[bytes] | Mapping[str, Iterable[bytes]] = (),
        *,
        event_times: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        self.name = name
        if isinstance(values, Mapping):
            self._parts: dict[str, list[bytes]] = {p: list(v) for p, v in values.items()}
        else:
            self._parts = {"0": list(values)}
        self._event_times = dict(event_times or {})
        self._next: dict[str, int] | None = None
        self._cond = threading.Condition()
        self.committed: dict[str, Position] = {}
        self.opened = 0

    def append(self, value: bytes, partition: str = "0") -> Position:
        """Add a record at the end of ``partition``; returns its position."""
        with self._cond:
            part = self._parts.setdefault(partition, [])
            part.append(value)
            self._cond.notify_all()
            return Position(partition, len(part) - 1)

    def open(self, resume: Mapping[str, Position]) -> None:
        with self._cond:
            self._next = {p: 0 for p in self._parts}
            for partition, pos in resume.items():
                self._next[partition] = pos.offset + 1
            self.opened += 1

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._next is None:
                    raise RuntimeError(f"source {self.name!r} is not open")
                out = self._take(max_records)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._cond.wait(remaining)

    def _take(self, max_records: int) -> list[Record]:
        assert self._next is not None
        out: list[Record] = []
        progress = True
        while len(out) < max_records and progress:
            progress = False
            for partition, values in self._parts.items():
                offset = self._next.get(partition, 0)
                if offset < len(values) and len(out) < max_records:
                    out.append(
                        Record(
                            self.name,
                            Position(partition, offset),
                            values[offset],
                            event_time=self._event_times.get((partition, offset)),
                        )
                    )
                    self._next[partition] = offset + 1
                    progress = True
        return out

    def commit(self, positions: Mapping[str, Position]) -> None:
        with self._cond:
            self.committed.update(positions)

    def close(self) -> None:
        with self._cond:
            self._next = None

    def lag(self) -> dict[str, int]:
        """Records not yet polled, per partition."""
        with self._cond:
            nxt = self._next or {}
            return {p: len(v) - nxt.get(p, 0) for p, v in self._parts.items()}

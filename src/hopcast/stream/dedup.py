"""Windowed coalescing of overlapping updates per node and per edge, with timers (pure).

A member's session sends the same edge again and again (a heartbeat refreshes ``streamed_from``
every few seconds; a replay delivers a batch twice). Netflix's graph jobs buffer mutations for a
short window and write only what still matters. :class:`Coalescer` does that:

* ``add(mutation, now)`` files the mutation under its node (``NodeUpsert``/``NodeDelete``) or its
  edge ``(type, src, dst)``; the first mutation of a key arms that key's timer at
  ``now + window``; later ones merge into the entry without moving the timer (so no key waits
  longer than one window, however hot it is);
* ``fire(now)`` returns the coalesced mutations of every key whose timer is due; ``flush()``
  returns everything (shutdown, or an engine that commits whole windows).

Coalescing keeps exactly what the store's last-write-wins rules (:mod:`hopcast.graph.mutations`)
would keep, so writing the output gives the same graph as writing every input:

* an **edge** keeps its newest write, upsert or delete, by version ``(ts, token)``
  (:func:`~hopcast.graph.mutations.token_of`);
* a **node** keeps its newest delete, and, per property, the newest value written after that
  delete; properties are regrouped into one ``NodeUpsert`` per winning version (a property keeps
  the version it was written at, so a late write in a later window is judged as it would have
  been), plus the newest upsert itself, which carries the node's last-seen time.

Mutations must be in canonical form (``Schema.validate``: a two-way edge has one orientation),
or the two orientations of one edge are coalesced apart (still correct, merely less merged).
Time is passed in; nothing here reads a clock. Not thread-safe: one engine task owns it.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from hopcast.durations import SECOND
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    token_of,
)

#: Default window: about a second (the issue's target), long enough to merge a burst of
#: retries and heartbeats, short enough that freshness stays within a second or so.
DEFAULT_WINDOW_US = 1 * SECOND

#: Default bound on buffered keys: past it, the oldest entries are emitted early so memory
#: stays bounded under a flood of distinct keys (about 100 MB of small entries).
DEFAULT_MAX_KEYS = 500_000

Version = tuple[int, int]


@dataclass(slots=True)
class _NodeEntry:
    deadline: int
    delete: NodeDelete | None = None
    delete_version: Version | None = None
    newest: NodeUpsert | None = None
    newest_version: Version | None = None
    #: property -> (version, value, the upsert that wrote it)
    props: dict[str, tuple[Version, Any, NodeUpsert]] = field(default_factory=dict)

    def add(self, m: NodeUpsert | NodeDelete) -> None:
        version = (m.ts, token_of(m))
        if isinstance(m, NodeDelete):
            if self.delete_version is None or version > self.delete_version:
                self.delete, self.delete_version = m, version
                # Whatever is older than the delete cannot survive it.
                self.props = {k: v for k, v in self.props.items() if v[0] > version}
                if self.newest_version is not None and self.newest_version <= version:
                    self.newest = self.newest_version = None
            return
        if self.delete_version is not None and version <= self.delete_version:
            return
        if self.newest_version is None or version > self.newest_version:
            self.newest, self.newest_version = m, version
        for name, value in m.props.items():
            cur = self.props.get(name)
            if cur is None or version > cur[0]:
                self.props[name] = (version, value, m)

    def output(self) -> list[Mutation]:
        out: list[Mutation] = []
        if self.delete is not None:
            out.append(self.delete)
        groups: dict[Version, tuple[NodeUpsert, dict[str, Any]]] = {}
        for name, (version, value, m) in self.props.items():
            groups.setdefault(version, (m, {}))[1][name] = value
        if self.newest is not None and self.newest_version not in groups:
            groups[self.newest_version] = (self.newest, {})  # type: ignore[index]
        for version in sorted(groups):
            m, props = groups[version]
            out.append(m if props == m.props else NodeUpsert(m.node, m.ts, m.id, props, m.seq))
        return out


@dataclass(slots=True)
class _EdgeEntry:
    deadline: int
    best: EdgeUpsert | EdgeDelete

    def add(self, m: EdgeUpsert | EdgeDelete) -> None:
        best = self.best
        # Versions compare (ts, token); the token is only needed to break a tie.
        if m.ts > best.ts or (m.ts == best.ts and token_of(m) > token_of(best)):
            self.best = m

    def output(self) -> list[Mutation]:
        return [self.best]


_Key = tuple[str, ...]


class Coalescer:
    """Buffers mutations per node and per edge for ``window_us`` and emits the LWW survivors.

    Args:
        window_us: how long a key's first mutation waits for others to merge with.
        max_keys: past this many buffered keys, :meth:`add` returns the entries with the
            earliest timers (their window cut short) to keep memory bounded.
    """

    def __init__(self, window_us: int = DEFAULT_WINDOW_US, max_keys: int = DEFAULT_MAX_KEYS):
        if window_us < 0:
            raise ValueError(f"window_us must be >= 0, got {window_us}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.window_us = window_us
        self.max_keys = max_keys
        self._entries: dict[_Key, _NodeEntry | _EdgeEntry] = {}
        #: (deadline, sequence, key): timers in firing order; the sequence keeps arrival order.
        self._timers: list[tuple[int, int, _Key]] = []
        self._seq = 0
        self.mutations_in = 0
        self.mutations_out = 0

    def __len__(self) -> int:
        """Buffered keys (nodes and edges)."""
        return len(self._entries)

    @property
    def next_deadline(self) -> int | None:
        """When :meth:`fire` next has something to emit (µs), or None if nothing is buffered.

        An engine sleeps until then (or until new input) and calls :meth:`fire`.
        """
        return self._timers[0][0] if self._timers else None

    def add(self, mutation: Mutation, now: int) -> list[Mutation]:
        """Buffer ``mutation`` (received at ``now``).

        Returns:
            Usually nothing; when more than ``max_keys`` keys are buffered, the coalesced
            mutations of the entries due first, which the caller must write like :meth:`fire`'s.
        """
        self.mutations_in += 1
        key: _Key
        if isinstance(mutation, NodeUpsert | NodeDelete):
            key = ("n", mutation.node)
        else:
            key = ("e", mutation.type, mutation.src, mutation.dst)
        entry = self._entries.get(key)
        if entry is None:
            deadline = now + self.window_us
            if isinstance(mutation, NodeUpsert | NodeDelete):
                entry = _NodeEntry(deadline)
                entry.add(mutation)
            else:
                entry = _EdgeEntry(deadline, mutation)
            self._entries[key] = entry
            heapq.heappush(self._timers, (deadline, self._seq, key))
            self._seq += 1
        else:
            entry.add(mutation)  # type: ignore[arg-type]
        if len(self._entries) > self.max_keys:
            return self._pop(len(self._entries) - self.max_keys)
        return []

    def fire(self, now: int) -> list[Mutation]:
        """The coalesced mutations of every key whose timer is due at ``now`` (in timer order)."""
        out: list[Mutation] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, key = heapq.heappop(timers)
            out.extend(self._entries.pop(key).output())
        self.mutations_out += len(out)
        return out

    def flush(self) -> list[Mutation]:
        """Everything buffered, timers due or not (in timer order)."""
        return self._pop(len(self._entries))

    def _pop(self, n: int) -> list[Mutation]:
        out: list[Mutation] = []
        for _ in range(n):
            _, _, key = heapq.heappop(self._timers)
            out.extend(self._entries.pop(key).output())
        self.mutations_out += len(out)
        return out

"""A node cache that never serves a node past its retention, nor (by default) older than a write
that was acknowledged before the read.

Two consistency models, chosen per cache (``Graph.open(consistency=...)``, ``hopcast serve
--consistency``):

* ``read-your-writes`` (the default): an entry is served only to a read view of the same store
  *generation* as the view it was read from (:meth:`hopcast.kv.base.ReadTxn.generation`: the
  LMDB snapshot's transaction id; a commit counter on the memory backend). Any commit, by any
  process, moves the generation on, so a write acknowledged by one API worker is seen by the
  next read on every worker: the cache only saves reads between commits. A backend that cannot
  tell its generation (Redis) is read directly, never from the cache.
* ``bounded`` (bounded staleness): an entry lives until its TTL (default 1 s). Writes made
  through this process's store are seen at once (the store tells the cache); writes by other
  processes at the latest after the TTL. Faster under a steady write load, weaker.

In both, an entry never outlives the node's own expiry (last seen + retention), and a node read
while this process was writing it is not cached (the write's invalidation could otherwise be
overtaken by the older read).
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict

from hopcast.graph.store import Node

#: Long enough to absorb a burst of reads of the same hot node (a title page during a live
#: event), short enough that a write from another process shows within a second (``bounded``).
DEFAULT_TTL_US = 1_000_000
#: Entries kept; each is a few hundred bytes, so the default costs tens of MB at most.
DEFAULT_MAX_ENTRIES = 100_000
#: "Never", for an entry of a node without retention under read-your-writes (the generation,
#: not time, retires it).
_FOREVER = 1 << 63


class Consistency(enum.StrEnum):
    """What a node read may miss: nothing acknowledged before it (``read-your-writes``), or
    other processes' writes of the last TTL (``bounded``)."""

    READ_YOUR_WRITES = "read-your-writes"
    BOUNDED = "bounded"


DEFAULT_CONSISTENCY = Consistency.READ_YOUR_WRITES


class NodeCache:
    """LRU cache of node reads (absent nodes are cached too, as None). Thread-safe.

    A read of the store goes: ``epoch = cache.epoch`` and the view's generation, then for each
    node :meth:`get`, and on a miss the store read and :meth:`put` with both.

    Args:
        max_entries: entries kept (least recently used first out).
        ttl_us: an entry's lifetime under ``bounded``.
        consistency: see the module docstring.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_us: int = DEFAULT_TTL_US,
        consistency: Consistency | str = DEFAULT_CONSISTENCY,
    ):
        self.max_entries = max_entries
        self.ttl_us = ttl_us
        self.consistency = Consistency(consistency)
        self._ryw = self.consistency is Consistency.READ_YOUR_WRITES
        # node id -> (valid until, computed at, generation, node)
        self._entries: OrderedDict[str, tuple[int, int, int | None, Node | None]] = OrderedDict()
        self._lock = threading.Lock()
        # Bumped by every invalidation: a put whose read began before one is dropped.
        self.epoch = 0
        self.hits = 0
        self.misses = 0

    def usable(self, generation: int | None) -> bool:
        """Whether a read view of this generation may use the cache (under read-your-writes a
        view that cannot tell its generation may not)."""
        return generation is not None or not self._ryw

    def get(
        self, node_id: str, now: int, generation: int | None = None
    ) -> tuple[bool, Node | None]:
        """``(hit, node)``; a miss is ``(False, None)``."""
        with self._lock:
            entry = self._entries.get(node_id)
            if (
                entry is None
                or entry[0] <= now
                # A read "in the past": what was absent later may have existed then.
                or now < entry[1]
                or (self._ryw and entry[2] != generation)
            ):
                if entry is not None and entry[0] <= now:
                    del self._entries[node_id]
                self.misses += 1
                return False, None
            self._entries.move_to_end(node_id)
            self.hits += 1
            return True, entry[3]

    def put(
        self,
        node_id: str,
        node: Node | None,
        now: int,
        generation: int | None = None,
        epoch: int | None = None,
    ) -> None:
        """Cache a node read from a view of ``generation`` that began at ``epoch`` (the value of
        :attr:`epoch` before the read); dropped if an invalidation came in between."""
        if not self._ryw:
            until = now + self.ttl_us
        elif generation is None:
            return
        else:
            until = _FOREVER
        if node is not None and node.expires_at:
            until = min(until, node.expires_at)
        if until <= now:
            return
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            self._entries[node_id] = (until, now, generation, node)
            self._entries.move_to_end(node_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, node_ids: set[str]) -> None:
        with self._lock:
            self.epoch += 1
            for node_id in node_ids:
                self._entries.pop(node_id, None)

    def __len__(self) -> int:
        return len(self._entries)

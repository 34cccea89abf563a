"""A node cache that never holds a node past its retention.

An entry lives until the earliest of: its cache TTL, the node's own expiry (last seen +
retention), or a write to that node through the same store (the store tells the cache). Writes
made by another process are seen at the latest after the cache TTL, which is why the default TTL
is short.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from hopcast.graph.store import Node

#: Long enough to absorb a burst of reads of the same hot node (a title page during a live
#: event), short enough that a write from another process shows within a second.
DEFAULT_TTL_US = 1_000_000
#: Entries kept; each is a few hundred bytes, so the default costs tens of MB at most.
DEFAULT_MAX_ENTRIES = 100_000


class NodeCache:
    """LRU cache of node reads (absent nodes are cached too, as None)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, ttl_us: int = DEFAULT_TTL_US):
        self.max_entries = max_entries
        self.ttl_us = ttl_us
        # node id -> (valid until, computed at, node)
        self._entries: OrderedDict[str, tuple[int, int, Node | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, node_id: str, now: int) -> tuple[bool, Node | None]:
        """``(hit, node)``; a miss is ``(False, None)``."""
        with self._lock:
            entry = self._entries.get(node_id)
            if entry is None or entry[0] <= now or now < entry[1]:
                # Expired, or a read "in the past": what was absent later may have existed then.
                if entry is not None and entry[0] <= now:
                    del self._entries[node_id]
                self.misses += 1
                return False, None
            self._entries.move_to_end(node_id)
            self.hits += 1
            return True, entry[2]

    def put(self, node_id: str, node: Node | None, now: int) -> None:
        until = now + self.ttl_us
        if node is not None and node.expires_at:
            until = min(until, node.expires_at)
        if until <= now:
            return
        with self._lock:
            self._entries[node_id] = (until, now, node)
            self._entries.move_to_end(node_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, node_ids: set[str]) -> None:
        with self._lock:
            for node_id in node_ids:
                self._entries.pop(node_id, None)

    def __len__(self) -> int:
        return len(self._entries)

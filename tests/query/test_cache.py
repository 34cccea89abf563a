"""The node cache: LRU with a TTL that never outlives the node's own expiry."""

from __future__ import annotations

import pytest

from hopcast.durations import DAY
from hopcast.graph.store import Node
from hopcast.graphdb import Graph
from hopcast.query.cache import NodeCache

NOW = 1_700_000_000_000_000


def _node(node_id: str, expires_at: int = 0) -> Node:
    return Node(node_id, NOW - 1, {"name": node_id}, expires_at)


def test_a_cached_node_is_a_hit_until_the_cache_ttl_ends() -> None:
    cache = NodeCache(ttl_us=1_000)
    assert cache.get("title:1", NOW) == (False, None)
    cache.put("title:1", _node("title:1"), NOW)
    assert cache.get("title:1", NOW + 999) == (True, _node("title:1"))
    assert cache.get("title:1", NOW + 1_000) == (False, None)
    assert (cache.hits, cache.misses) == (1, 2)
    assert len(cache) == 0  # the expired entry was dropped on the miss


def test_an_absent_node_is_cached_as_none() -> None:
    cache = NodeCache(ttl_us=1_000)
    cache.put("title:404", None, NOW)
    assert cache.get("title:404", NOW) == (True, None)


def test_a_node_is_never_returned_past_its_own_expiry() -> None:
    cache = NodeCache(ttl_us=10 * DAY)
    cache.put("device:1", _node("device:1", expires_at=NOW + 50), NOW)
    assert cache.get("device:1", NOW + 49)[0] is True
    assert cache.get("device:1", NOW + 50) == (False, None)


def test_a_node_already_expired_is_not_cached() -> None:
    cache = NodeCache(ttl_us=10 * DAY)
    cache.put("device:1", _node("device:1", expires_at=NOW), NOW)
    assert len(cache) == 0
    assert cache.get("device:1", NOW - 1) == (False, None)


def test_the_least_recently_used_entry_is_evicted_at_max_entries() -> None:
    cache = NodeCache(max_entries=2, ttl_us=1_000)
    cache.put("title:a", _node("title:a"), NOW)
    cache.put("title:b", _node("title:b"), NOW)
    assert cache.get("title:a", NOW)[0]  # a is now more recent than b
    cache.put("title:c", _node("title:c"), NOW)
    assert len(cache) == 2
    assert cache.get("title:b", NOW) == (False, None)
    assert cache.get("title:a", NOW)[0]
    assert cache.get("title:c", NOW)[0]


def test_putting_an_existing_entry_refreshes_it_without_growing_the_cache() -> None:
    cache = NodeCache(max_entries=2, ttl_us=1_000)
    cache.put("title:a", _node("title:a"), NOW)
    cache.put("title:b", _node("title:b"), NOW)
    cache.put("title:a", _node("title:a2"), NOW)
    cache.put("title:c", _node("title:c"), NOW)
    assert cache.get("title:a", NOW) == (True, _node("title:a2"))
    assert cache.get("title:b", NOW) == (False, None)


def test_invalidate_drops_only_the_named_entries() -> None:
    cache = NodeCache(ttl_us=1_000)
    for node_id in ("title:a", "title:b", "title:c"):
        cache.put(node_id, _node(node_id), NOW)
    cache.invalidate({"title:a", "title:c", "title:never-cached"})
    assert [cache.get(n, NOW)[0] for n in ("title:a", "title:b", "title:c")] == [False, True, False]


@pytest.fixture
def graph() -> Graph:
    return Graph.open(clock=lambda: NOW)


def test_a_graph_with_a_cache_sees_its_own_writes_at_once(graph: Graph) -> None:
    assert graph.engine.cache is not None
    assert graph.node("account:1") is None  # the absence is cached now
    graph.upsert_node("account:1", {"plan": "basic"}, ts=NOW - 10)
    first = graph.node("account:1")
    assert first is not None
    assert first.props == {"plan": "basic"}
    graph.upsert_node("account:1", {"plan": "premium"}, ts=NOW - 5)
    second = graph.node("account:1")
    assert second is not None
    assert second.props == {"plan": "premium"}
    graph.delete_node("account:1", ts=NOW - 1)
    assert graph.node("account:1") is None


def test_a_graph_serves_repeated_node_reads_from_the_cache(graph: Graph) -> None:
    cache = graph.engine.cache
    assert cache is not None
    graph.upsert_node("title:1", {"name": "Heat"}, ts=NOW - 10)
    graph.node("title:1")
    hits = cache.hits
    graph.nodes(["title:1", "title:1"])
    assert cache.hits == hits + 2


def test_a_graph_read_never_returns_an_expired_node_from_the_cache() -> None:
    graph = Graph.open(clock=lambda: NOW)
    assert graph.engine.cache is not None
    graph.engine.cache.ttl_us = 1_000 * DAY  # longer than the device's 100-day retention
    graph.upsert_node("device:1", {"os": "tvos"}, ts=NOW - 100 * DAY + 5)
    assert graph.node("device:1", now=NOW) is not None
    assert graph.node("device:1", now=NOW + 5) is None


def test_a_graph_read_at_an_earlier_now_is_not_answered_by_a_later_cached_absence() -> None:
    # With or without the cache, node(now=t) must answer the same.
    graph = Graph.open(clock=lambda: NOW)
    graph.upsert_node("device:1", {"os": "tvos"}, ts=NOW)
    assert graph.node("device:1", now=NOW + 200 * DAY) is None  # expired then; cached as absent
    node = graph.node("device:1", now=NOW + DAY)
    assert node is not None
    assert node.props == {"os": "tvos"}

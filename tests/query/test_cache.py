"""The node cache: LRU, never past a node's own expiry, and either read-your-writes (entries of
the current store generation only; the default) or bounded staleness (a TTL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopcast.durations import DAY
from hopcast.errors import ConfigError
from hopcast.graph.store import Node
from hopcast.graphdb import Graph
from hopcast.kv.memory import MemoryKV
from hopcast.query.cache import DEFAULT_TTL_US, Consistency, NodeCache

BOUNDED = Consistency.BOUNDED

NOW = 1_700_000_000_000_000


def _node(node_id: str, expires_at: int = 0) -> Node:
    return Node(node_id, NOW - 1, {"name": node_id}, expires_at)


def test_a_cached_node_is_a_hit_until_the_cache_ttl_ends() -> None:
    cache = NodeCache(consistency=BOUNDED, ttl_us=1_000)
    assert cache.get("title:1", NOW) == (False, None)
    cache.put("title:1", _node("title:1"), NOW)
    assert cache.get("title:1", NOW + 999) == (True, _node("title:1"))
    assert cache.get("title:1", NOW + 1_000) == (False, None)
    assert (cache.hits, cache.misses) == (1, 2)
    assert len(cache) == 0  # the expired entry was dropped on the miss


def test_an_absent_node_is_cached_as_none() -> None:
    cache = NodeCache(consistency=BOUNDED, ttl_us=1_000)
    cache.put("title:404", None, NOW)
    assert cache.get("title:404", NOW) == (True, None)


def test_a_node_is_never_returned_past_its_own_expiry() -> None:
    cache = NodeCache(consistency=BOUNDED, ttl_us=10 * DAY)
    cache.put("device:1", _node("device:1", expires_at=NOW + 50), NOW)
    assert cache.get("device:1", NOW + 49)[0] is True
    assert cache.get("device:1", NOW + 50) == (False, None)


def test_a_node_already_expired_is_not_cached() -> None:
    cache = NodeCache(consistency=BOUNDED, ttl_us=10 * DAY)
    cache.put("device:1", _node("device:1", expires_at=NOW), NOW)
    assert len(cache) == 0
    assert cache.get("device:1", NOW - 1) == (False, None)


def test_the_least_recently_used_entry_is_evicted_at_max_entries() -> None:
    cache = NodeCache(consistency=BOUNDED, max_entries=2, ttl_us=1_000)
    cache.put("title:a", _node("title:a"), NOW)
    cache.put("title:b", _node("title:b"), NOW)
    assert cache.get("title:a", NOW)[0]  # a is now more recent than b
    cache.put("title:c", _node("title:c"), NOW)
    assert len(cache) == 2
    assert cache.get("title:b", NOW) == (False, None)
    assert cache.get("title:a", NOW)[0]
    assert cache.get("title:c", NOW)[0]


def test_putting_an_existing_entry_refreshes_it_without_growing_the_cache() -> None:
    cache = NodeCache(consistency=BOUNDED, max_entries=2, ttl_us=1_000)
    cache.put("title:a", _node("title:a"), NOW)
    cache.put("title:b", _node("title:b"), NOW)
    cache.put("title:a", _node("title:a2"), NOW)
    cache.put("title:c", _node("title:c"), NOW)
    assert cache.get("title:a", NOW) == (True, _node("title:a2"))
    assert cache.get("title:b", NOW) == (False, None)


def test_invalidate_drops_only_the_named_entries() -> None:
    cache = NodeCache(consistency=BOUNDED, ttl_us=1_000)
    for node_id in ("title:a", "title:b", "title:c"):
        cache.put(node_id, _node(node_id), NOW)
    cache.invalidate({"title:a", "title:c", "title:never-cached"})
    assert [cache.get(n, NOW)[0] for n in ("title:a", "title:b", "title:c")] == [False, True, False]


def test_read_your_writes_serves_an_entry_only_to_a_view_of_the_same_generation() -> None:
    cache = NodeCache()
    assert cache.consistency is Consistency.READ_YOUR_WRITES
    cache.put("title:1", _node("title:1"), NOW, generation=7, epoch=cache.epoch)
    assert cache.get("title:1", NOW + 10 * DAY, 7) == (True, _node("title:1"))  # no TTL
    assert cache.get("title:1", NOW, 8) == (False, None)  # a commit since: read the store


def test_read_your_writes_caches_nothing_for_a_view_without_a_generation() -> None:
    cache = NodeCache()
    assert not cache.usable(None) and cache.usable(0)
    cache.put("title:1", _node("title:1"), NOW, generation=None)
    assert len(cache) == 0
    assert NodeCache(consistency=BOUNDED).usable(None)


def test_a_read_that_began_before_an_invalidation_is_not_cached() -> None:
    # The read saw the node before a local write; the write's invalidation came before the put.
    cache = NodeCache(consistency=BOUNDED, ttl_us=1_000)
    epoch = cache.epoch
    cache.invalidate({"title:1"})
    cache.put("title:1", _node("title:old"), NOW, epoch=epoch)
    assert cache.get("title:1", NOW) == (False, None)
    cache.put("title:1", _node("title:new"), NOW, epoch=cache.epoch)
    assert cache.get("title:1", NOW) == (True, _node("title:new"))


def test_an_unknown_consistency_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="read-your-writes, bounded"):
        Graph.open(consistency="eventual")


@pytest.fixture(params=list(Consistency))
def graph(request: pytest.FixtureRequest) -> Graph:
    return Graph.open(clock=lambda: NOW, consistency=request.param)


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


@pytest.mark.parametrize("consistency", list(Consistency))
def test_a_graph_read_never_returns_an_expired_node_from_the_cache(consistency: str) -> None:
    graph = Graph.open(clock=lambda: NOW, consistency=consistency)
    assert graph.engine.cache is not None
    graph.engine.cache.ttl_us = 1_000 * DAY  # longer than the device's 100-day retention
    graph.upsert_node("device:1", {"os": "tvos"}, ts=NOW - 100 * DAY + 5)
    assert graph.node("device:1", now=NOW) is not None
    assert graph.node("device:1", now=NOW + 5) is None


@pytest.mark.parametrize("consistency", list(Consistency))
def test_a_graph_read_at_an_earlier_now_is_not_answered_by_a_later_cached_absence(
    consistency: str,
) -> None:
    # With or without the cache, node(now=t) must answer the same.
    graph = Graph.open(clock=lambda: NOW, consistency=consistency)
    graph.upsert_node("device:1", {"os": "tvos"}, ts=NOW)
    assert graph.node("device:1", now=NOW + 200 * DAY) is None  # expired then; cached as absent
    node = graph.node("device:1", now=NOW + DAY)
    assert node is not None
    assert node.props == {"os": "tvos"}


@pytest.mark.parametrize("backend", ["memory", "lmdb"])
def test_read_your_writes_sees_a_write_made_through_another_graph_on_the_same_store(
    backend: str, tmp_path: Path
) -> None:
    # Two graphs over one store, as two API workers: neither is told of the other's writes,
    # only the store's generation moves.
    if backend == "memory":
        kv = MemoryKV()
        reader, writer = (Graph.open(kv=kv, clock=lambda: NOW) for _ in range(2))
    else:
        reader, writer = (Graph.open(tmp_path, sync=False, clock=lambda: NOW) for _ in range(2))
    cache = reader.engine.cache
    assert cache is not None
    with reader, writer:
        for i in range(20):
            writer.upsert_node("account:1", {"plan": f"p{i}"}, ts=NOW - 100 + i)
            node = reader.node("account:1")
            assert node is not None and node.props == {"plan": f"p{i}"}, i
            hits = cache.hits
            assert reader.node("account:1") == node  # nothing written since: from the cache
            assert cache.hits == hits + 1


def test_bounded_staleness_can_serve_another_graph_s_older_write_until_the_ttl(
    tmp_path: Path,
) -> None:
    reader = Graph.open(tmp_path, sync=False, clock=lambda: NOW, consistency="bounded")
    writer = Graph.open(tmp_path, sync=False, clock=lambda: NOW)
    with reader, writer:
        writer.upsert_node("account:1", {"plan": "basic"}, ts=NOW - 10)
        assert reader.node("account:1", now=NOW) is not None
        writer.upsert_node("account:1", {"plan": "premium"}, ts=NOW - 5)
        stale = reader.node("account:1", now=NOW + 1)
        assert stale is not None and stale.props == {"plan": "basic"}  # the documented lag
        fresh = reader.node("account:1", now=NOW + DEFAULT_TTL_US)
        assert fresh is not None and fresh.props == {"plan": "premium"}

"""GraphStore: the LWW merge rules of ``hopcast.graph.mutations``, atomic batches with
checkpoints, listeners and retention. Runs on every KV backend (the ``kv`` fixture)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopcast.durations import DAY
from hopcast.errors import SchemaViolation
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    token,
)
from hopcast.graph.schema import Schema
from hopcast.graph.store import ApplyResult, GraphStore, Node
from hopcast.kv import KVStore
from hopcast.kv.lmdb import LmdbKV

#: A fixed "now" (2023-11-14) so retention is judged deterministically.
NOW = 1_700_000_000_000_000
#: The demo schema's default retention (devices and interaction edges).
RETENTION = 100 * DAY
#: Base of the small generation times the LWW tests use: recent enough to be within retention.
B = NOW - DAY

SCHEMA = Schema.demo()


@pytest.fixture
def store(kv: KVStore) -> GraphStore:
    return GraphStore(kv, SCHEMA, clock=lambda: NOW)


def node(store: GraphStore, node_id: str, now: int = NOW) -> Node | None:
    with store.read(now) as r:
        return r.node(node_id)


def props(store: GraphStore, node_id: str) -> dict[str, object] | None:
    n = node(store, node_id)
    return None if n is None else dict(n.props)


def out(store: GraphStore, src: str, edge_type: str, now: int = NOW) -> list[tuple[str, int]]:
    """``(dst, ts)`` of the stored out-list, newest first."""
    with store.read(now) as r:
        return [(e.dst, e.ts) for e in r.edges(src, edge_type, "out")]


def in_(store: GraphStore, dst: str, edge_type: str, now: int = NOW) -> list[tuple[str, int]]:
    """``(src, ts)`` of the stored in-list, newest first."""
    with store.read(now) as r:
        return [(e.src, e.ts) for e in r.edges(dst, edge_type, "in")]


# -- rule 2: replays are no-ops ----------------------------------------------------------------


@pytest.mark.parametrize(
    "mutation",
    [
        NodeUpsert("account:1", B + 10, "u", {"country": "NL"}),
        EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "e"),
        NodeDelete("account:1", B + 10, "d"),
        EdgeDelete("account:1", "has_profile", "profile:1", B + 10, "x"),
    ],
    ids=lambda m: m.kind,
)
def test_a_replay_with_the_same_ts_and_id_is_skipped(store: GraphStore, mutation: Mutation) -> None:
    store.apply([NodeUpsert("account:1", B + 5, "seed", {"plan": "basic"})])
    store.apply([EdgeUpsert("account:1", "has_profile", "profile:1", B + 5, "seed")])
    store.apply([mutation])
    before = (props(store, "account:1"), out(store, "account:1", "has_profile"))
    assert store.apply([mutation]) == ApplyResult(applied=0, skipped=1)
    assert (props(store, "account:1"), out(store, "account:1", "has_profile")) == before


def test_a_batch_counts_applied_and_skipped_writes(store: GraphStore) -> None:
    m = NodeUpsert("account:1", B + 10, "u", {"country": "NL"})
    assert store.apply([m, m, NodeUpsert("account:2", B + 10, "v")]) == ApplyResult(2, 1)


# -- rule 3: older never overwrites newer, per property -----------------------------------------


def test_an_older_node_upsert_only_fills_properties_it_does_not_lose_on(
    store: GraphStore,
) -> None:
    store.apply([NodeUpsert("account:1", B + 20, "t1", {"country": "NL", "plan": "premium"})])
    result = store.apply([NodeUpsert("account:1", B + 10, "t0", {"plan": "basic", "signup_ts": 7})])
    assert result == ApplyResult(1, 0)
    assert props(store, "account:1") == {"country": "NL", "plan": "premium", "signup_ts": 7}
    n = node(store, "account:1")
    assert n is not None
    assert n.ts == B + 20  # last seen stays the newest write


def test_an_older_node_upsert_that_loses_on_every_property_changes_nothing(
    store: GraphStore,
) -> None:
    store.apply([NodeUpsert("account:1", B + 20, "t1", {"plan": "premium"})])
    assert store.apply([NodeUpsert("account:1", B + 10, "t0", {"plan": "basic"})]) == ApplyResult(
        0, 1
    )
    assert props(store, "account:1") == {"plan": "premium"}


def test_a_newer_node_upsert_with_no_properties_refreshes_last_seen(store: GraphStore) -> None:
    store.apply([NodeUpsert("device:1", B + 10, "a", {"os": "tvos"})])
    assert store.apply([NodeUpsert("device:1", B + 30, "b")]) == ApplyResult(1, 0)
    n = node(store, "device:1")
    assert n is not None
    assert (n.ts, n.props) == (B + 30, {"os": "tvos"})


def test_a_none_property_value_removes_the_property(store: GraphStore) -> None:
    store.apply([NodeUpsert("account:1", B + 10, "a", {"plan": "basic", "country": "NL"})])
    store.apply([NodeUpsert("account:1", B + 20, "b", {"plan": None})])
    assert props(store, "account:1") == {"country": "NL"}


def test_an_older_edge_upsert_never_overwrites_a_newer_one(store: GraphStore) -> None:
    store.apply([EdgeUpsert("profile:1", "plays", "game:1", B + 20, "new", {"minutes": 9})])
    late = EdgeUpsert("profile:1", "plays", "game:1", B + 10, "old", {"minutes": 1})
    assert store.apply([late]) == ApplyResult(0, 1)
    with store.read(NOW) as r:
        edge = r.edge("profile:1", "plays", "game:1")
    assert edge is not None
    assert (edge.ts, edge.props) == (B + 20, {"minutes": 9})


# -- rule 1: ties on ts are broken by token(id) --------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
def test_a_tie_on_ts_is_won_by_the_larger_token_whatever_the_arrival_order(
    store: GraphStore, reverse: bool
) -> None:
    writes: list[Mutation] = [
        NodeUpsert("account:1", B + 10, "writer-a", {"plan": "a"}),
        NodeUpsert("account:1", B + 10, "writer-b", {"plan": "b"}),
        EdgeUpsert("profile:1", "plays", "game:1", B + 10, "writer-a", {"minutes": 1}),
        EdgeUpsert("profile:1", "plays", "game:1", B + 10, "writer-b", {"minutes": 2}),
    ]
    winner = "a" if token("writer-a") > token("writer-b") else "b"
    for m in reversed(writes) if reverse else writes:
        store.apply([m])
    assert props(store, "account:1") == {"plan": winner}
    with store.read(NOW) as r:
        edge = r.edge("profile:1", "plays", "game:1")
    assert edge is not None
    assert edge.props == {"minutes": 1 if winner == "a" else 2}
    assert out(store, "profile:1", "plays") == [("game:1", B + 10)]


# -- rule 4: deletes leave tombstones ------------------------------------------------------------


def test_a_node_delete_blocks_older_upserts_arriving_late(store: GraphStore) -> None:
    store.apply([NodeUpsert("account:1", B + 10, "a", {"plan": "basic"})])
    assert store.apply([NodeDelete("account:1", B + 20, "d")]) == ApplyResult(1, 0)
    assert node(store, "account:1") is None
    assert store.apply([NodeUpsert("account:1", B + 15, "late", {"plan": "x"})]) == ApplyResult(
        0, 1
    )
    assert node(store, "account:1") is None


def test_a_newer_upsert_resurrects_a_deleted_node_without_its_old_properties(
    store: GraphStore,
) -> None:
    store.apply([NodeUpsert("account:1", B + 10, "a", {"plan": "basic"})])
    store.apply([NodeDelete("account:1", B + 20, "d")])
    assert store.apply([NodeUpsert("account:1", B + 30, "b", {"country": "NL"})]) == ApplyResult(
        1, 0
    )
    n = node(store, "account:1")
    assert n is not None
    assert (n.ts, n.props) == (B + 30, {"country": "NL"})


def test_a_node_delete_older_than_the_node_drops_only_older_properties(
    store: GraphStore,
) -> None:
    store.apply([NodeUpsert("account:1", B + 10, "a", {"plan": "basic"})])
    store.apply([NodeUpsert("account:1", B + 30, "b", {"country": "NL"})])
    store.apply([NodeDelete("account:1", B + 20, "d")])
    assert props(store, "account:1") == {"country": "NL"}


def test_a_node_delete_converges_whatever_order_the_writes_arrive_in(store: GraphStore) -> None:
    # The delete at 20 removes everything written before it; "plan" (at 10) must stay gone even
    # when it arrives after a newer upsert has replaced the tombstone.
    store.apply([NodeDelete("account:1", B + 20, "d")])
    store.apply([NodeUpsert("account:1", B + 30, "b", {"country": "NL"})])
    store.apply([NodeUpsert("account:1", B + 10, "a", {"plan": "basic"})])
    assert props(store, "account:1") == {"country": "NL"}


def test_a_node_delete_removes_older_incident_edges_in_both_directions(store: GraphStore) -> None:
    store.apply(
        [
            EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "hp"),
            EdgeUpsert("profile:1", "plays", "game:1", B + 10, "pl", {"minutes": 3}),
            EdgeUpsert("profile:1", "started_watching", "title:1", B + 30, "sw"),
            EdgeUpsert("account:1", "has_profile", "profile:2", B + 10, "other"),
        ]
    )
    assert store.apply([NodeDelete("profile:1", B + 20, "d")]).applied == 1
    # The in-edge (account -> profile) is gone from both of its lists, and from the key index.
    assert out(store, "account:1", "has_profile") == [("profile:2", B + 10)]
    assert in_(store, "profile:1", "has_profile") == []
    # The older out-edge is gone from both lists.
    assert out(store, "profile:1", "plays") == []
    assert in_(store, "game:1", "plays") == []
    # The edge written after the delete stays.
    assert out(store, "profile:1", "started_watching") == [("title:1", B + 30)]
    assert in_(store, "title:1", "started_watching") == [("profile:1", B + 30)]
    with store.read(NOW) as r:
        assert r.edge("account:1", "has_profile", "profile:1") is None
        assert r.edge("profile:1", "started_watching", "title:1") is not None


def test_a_node_delete_removes_two_way_edges_stored_at_the_other_end(store: GraphStore) -> None:
    store.apply([EdgeUpsert("device:tv", "logged_in_from", "account:1", B + 10, "l")])
    assert out(store, "account:1", "logged_in_from") == [("device:tv", B + 10)]
    store.apply([NodeDelete("device:tv", B + 20, "d")])
    assert out(store, "account:1", "logged_in_from") == []
    assert in_(store, "device:tv", "logged_in_from") == []


def test_an_edge_removed_by_a_node_delete_is_not_revived_by_a_replay(store: GraphStore) -> None:
    upsert = EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "hp")
    store.apply([upsert])
    store.apply([NodeDelete("profile:1", B + 20, "d")])
    assert store.apply([upsert]) == ApplyResult(0, 1)
    assert out(store, "account:1", "has_profile") == []


def test_an_edge_older_than_a_node_delete_stays_deleted_when_it_arrives_after_it(
    store: GraphStore,
) -> None:
    # Same writes as the test above in another order: LWW must give the same graph.
    store.apply([NodeDelete("profile:1", B + 20, "d")])
    store.apply([EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "hp")])
    assert out(store, "account:1", "has_profile") == []


def test_an_edge_older_than_a_node_delete_stays_deleted_after_the_node_is_recreated(
    store: GraphStore,
) -> None:
    # In write order (edge, delete, re-create) the edge is removed by the delete; the same three
    # writes arriving as (delete, re-create, edge) must end the same way.
    store.apply([NodeDelete("profile:1", B + 20, "d")])
    store.apply([NodeUpsert("profile:1", B + 30, "again", {"name": "Kim"})])
    store.apply([EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "hp")])
    assert out(store, "account:1", "has_profile") == []


def test_a_batch_ends_the_same_whatever_the_order_of_its_mutations(store: GraphStore) -> None:
    store.apply(
        [
            EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "old"),
            EdgeUpsert("account:1", "has_profile", "profile:2", B + 30, "new"),
            NodeDelete("profile:1", B + 20, "d1"),
            NodeDelete("profile:2", B + 20, "d2"),
        ]
    )
    assert out(store, "account:1", "has_profile") == [("profile:2", B + 30)]


def test_an_edge_delete_blocks_an_older_upsert_but_not_a_newer_one(store: GraphStore) -> None:
    store.apply([EdgeUpsert("profile:1", "plays", "game:1", B + 10, "a", {"minutes": 1})])
    assert store.apply([EdgeDelete("profile:1", "plays", "game:1", B + 20, "d")]) == ApplyResult(
        1, 0
    )
    assert out(store, "profile:1", "plays") == []
    assert in_(store, "game:1", "plays") == []
    older = EdgeUpsert("profile:1", "plays", "game:1", B + 15, "late", {"minutes": 2})
    assert store.apply([older]) == ApplyResult(0, 1)
    assert out(store, "profile:1", "plays") == []
    newer = EdgeUpsert("profile:1", "plays", "game:1", B + 25, "again", {"minutes": 3})
    assert store.apply([newer]) == ApplyResult(1, 0)
    assert out(store, "profile:1", "plays") == [("game:1", B + 25)]
    assert in_(store, "game:1", "plays") == [("profile:1", B + 25)]


def test_an_edge_delete_arriving_before_its_upsert_still_wins(store: GraphStore) -> None:
    store.apply([EdgeDelete("profile:1", "plays", "game:1", B + 20, "d")])
    store.apply([EdgeUpsert("profile:1", "plays", "game:1", B + 10, "a", {"minutes": 1})])
    assert out(store, "profile:1", "plays") == []


# -- rule 5: one edge per (src, type, dst) ------------------------------------------------------


def test_a_newer_edge_upsert_moves_the_edge_and_replaces_its_properties(
    store: GraphStore,
) -> None:
    store.apply(
        [
            EdgeUpsert("profile:1", "plays", "game:1", B + 10, "a", {"minutes": 1, "device": "tv"}),
            EdgeUpsert("profile:1", "plays", "game:2", B + 20, "b", {"minutes": 1}),
        ]
    )
    store.apply([EdgeUpsert("profile:1", "plays", "game:1", B + 30, "c", {"minutes": 5})])
    assert out(store, "profile:1", "plays") == [("game:1", B + 30), ("game:2", B + 20)]
    assert in_(store, "game:1", "plays") == [("profile:1", B + 30)]
    with store.read(NOW) as r:
        assert [e.props for e in r.edges("profile:1", "plays", "out")] == [
            {"minutes": 5},
            {"minutes": 1},
        ]
        assert [e.dst for e in r.edges_by_target("profile:1", "plays")] == ["game:1", "game:2"]
        assert r.count("profile:1", "plays", "out") == 2


def test_a_two_way_edge_written_from_both_ends_is_one_edge(store: GraphStore) -> None:
    store.apply([EdgeUpsert("account:1", "logged_in_from", "device:tv", B + 10, "a")])
    store.apply([EdgeUpsert("device:tv", "logged_in_from", "account:1", B + 20, "b")])
    assert out(store, "account:1", "logged_in_from") == [("device:tv", B + 20)]
    assert in_(store, "device:tv", "logged_in_from") == [("account:1", B + 20)]


# -- batches, checkpoints, listeners -------------------------------------------------------------


def test_apply_rejects_a_batch_with_one_bad_mutation_and_writes_nothing(
    store: GraphStore,
) -> None:
    batch: list[Mutation] = [
        NodeUpsert("account:1", B + 10, "a", {"plan": "basic"}),
        EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "b"),
        EdgeUpsert("account:1", "plays", "game:1", B + 10, "c", {"minutes": 1}),
        NodeUpsert("account:2", B + 10, "d"),
    ]
    with pytest.raises(SchemaViolation) as info:
        store.apply(batch, checkpoints={"cdc": b"42"})
    assert info.value.index == 2
    assert str(info.value).startswith("mutation #2: edge 'plays' does not connect")
    assert node(store, "account:1") is None
    assert out(store, "account:1", "has_profile") == []
    assert store.checkpoints() == {}


@pytest.mark.parametrize("ts", [-1, 1 << 62])
def test_apply_rejects_a_ts_outside_the_storable_range(store: GraphStore, ts: int) -> None:
    with pytest.raises(SchemaViolation, match="outside"):
        store.apply([NodeUpsert("account:1", ts, "a")])


def test_checkpoints_are_written_with_the_batch(store: GraphStore) -> None:
    store.apply([NodeUpsert("account:1", B + 10, "a")], checkpoints={"cdc": b"1", "logs": b"7"})
    store.apply([], checkpoints={"cdc": b"2"})
    assert store.checkpoints() == {"cdc": b"2", "logs": b"7"}


def test_checkpoints_and_data_survive_reopening_an_lmdb_store(tmp_path: Path) -> None:
    first = GraphStore(LmdbKV(tmp_path / "g", sync=False), SCHEMA, clock=lambda: NOW)
    first.apply([NodeUpsert("account:1", B + 10, "a", {"plan": "basic"})], {"cdc": b"offset-9"})
    first.close()
    again = GraphStore(LmdbKV(tmp_path / "g", sync=False), SCHEMA, clock=lambda: NOW)
    try:
        assert again.checkpoints() == {"cdc": b"offset-9"}
        assert props(again, "account:1") == {"plan": "basic"}
    finally:
        again.close()


def test_partition_splits_canonical_valid_writes_from_rejected_ones(store: GraphStore) -> None:
    bad = NodeUpsert("planet:1", B + 1, "p")
    valid, rejected = store.partition(
        [
            EdgeUpsert("device:tv", "logged_in_from", "account:1", B + 1, "a"),
            bad,
            NodeUpsert("account:1", B + 1, "b"),
        ]
    )
    assert valid == [
        EdgeUpsert("account:1", "logged_in_from", "device:tv", B + 1, "a"),
        NodeUpsert("account:1", B + 1, "b"),
    ]
    assert len(rejected) == 1
    assert rejected[0][0] is bad
    assert rejected[0][1].startswith("unknown node type 'planet'")


def test_write_listeners_hear_which_nodes_changed(store: GraphStore) -> None:
    heard: list[set[str]] = []
    store.on_write(heard.append)
    batch: list[Mutation] = [
        NodeUpsert("account:1", B + 10, "a"),
        NodeDelete("device:1", B + 10, "b"),
        NodeUpsert("device:2", B + 10, "c"),
        EdgeUpsert("account:1", "has_profile", "profile:1", B + 10, "e"),
    ]
    store.apply([NodeUpsert("device:1", B + 5, "seed")])
    heard.clear()
    store.apply(batch)
    assert heard == [{"account:1", "device:1", "device:2"}]
    store.apply(batch)  # a replay changes nothing, so no node is reported
    assert all(not touched for touched in heard[1:])


# -- retention -----------------------------------------------------------------------------------


def test_an_edge_past_its_retention_is_invisible(store: GraphStore) -> None:
    t0 = NOW - 200 * DAY
    store.apply(
        [
            EdgeUpsert("account:1", "logged_in_from", "device:tv", t0, "a"),
            EdgeUpsert("account:1", "has_profile", "profile:1", t0, "b"),  # kept forever
        ]
    )
    expires = t0 + RETENTION
    assert out(store, "account:1", "logged_in_from", now=expires - 1) == [("device:tv", t0)]
    assert out(store, "account:1", "logged_in_from", now=expires) == []
    assert in_(store, "device:tv", "logged_in_from", now=expires) == []
    with store.read(expires) as r:
        assert r.edge("account:1", "logged_in_from", "device:tv") is None
        assert r.count("account:1", "logged_in_from", "out") == 0
    assert out(store, "account:1", "has_profile", now=expires) == [("profile:1", t0)]


def test_sweep_removes_expired_edges_physically_and_keeps_the_rest(store: GraphStore) -> None:
    t0 = NOW - 200 * DAY
    store.apply(
        [
            EdgeUpsert("account:1", "logged_in_from", "device:tv", t0, "a"),
            EdgeUpsert("account:1", "logged_in_from", "device:phone", NOW - DAY, "c"),
            EdgeUpsert("account:1", "has_profile", "profile:1", t0, "b"),
        ]
    )
    removed = store.sweep(NOW)
    assert removed == 3  # the expired edge's out-, in- and key-items
    # Read "in the past", when the expired edge was still live: it is gone for good.
    assert out(store, "account:1", "logged_in_from", now=t0) == [("device:phone", NOW - DAY)]
    assert in_(store, "device:tv", "logged_in_from", now=t0) == []
    assert out(store, "account:1", "has_profile", now=t0) == [("profile:1", t0)]
    assert store.sweep(NOW) == 0


def test_a_node_expires_as_a_whole_from_its_last_seen_time(store: GraphStore) -> None:
    t0 = NOW - 300 * DAY
    store.apply([NodeUpsert("device:1", t0, "a", {"os": "tvos"})])
    store.apply([NodeUpsert("device:1", t0 + 50 * DAY, "b", {"app_version": "9"})])
    last_seen = t0 + 50 * DAY
    n = node(store, "device:1", now=last_seen + RETENTION - 1)
    assert n is not None
    assert n.props == {"os": "tvos", "app_version": "9"}  # the older property lives on too
    assert n.expires_at == last_seen + RETENTION
    assert node(store, "device:1", now=last_seen + RETENTION) is None


def test_a_node_without_retention_never_expires(store: GraphStore) -> None:
    store.apply([NodeUpsert("account:1", B + 1, "a", {"plan": "basic"})])
    n = node(store, "account:1", now=NOW)
    assert n is not None
    assert n.expires_at == 0


def test_an_expired_node_seen_again_keeps_its_unswept_properties_whatever_the_order(
    store: GraphStore,
) -> None:
    # LWW must not depend on arrival order, so an expired but unswept node merges as usual;
    # only a sweep (a physical removal) forgets it.
    t0 = NOW - 300 * DAY
    store.apply([NodeUpsert("device:1", t0, "a", {"os": "tvos"})])
    store.apply([NodeUpsert("device:1", NOW, "b", {"app_version": "9"})])
    assert props(store, "device:1") == {"os": "tvos", "app_version": "9"}
    store.apply([NodeUpsert("device:2", NOW, "b", {"app_version": "9"})])
    store.apply([NodeUpsert("device:2", t0, "a", {"os": "tvos"})])
    assert props(store, "device:2") == {"os": "tvos", "app_version": "9"}


def test_an_expired_node_swept_before_it_is_seen_again_starts_afresh(store: GraphStore) -> None:
    t0 = NOW - 300 * DAY
    store.apply([NodeUpsert("device:1", t0, "a", {"os": "tvos"})])
    store.sweep(NOW - DAY)
    store.apply([NodeUpsert("device:1", NOW, "b", {"app_version": "9"})])
    assert props(store, "device:1") == {"app_version": "9"}


def test_sweep_removes_an_expired_node(store: GraphStore) -> None:
    t0 = NOW - 300 * DAY
    store.apply([NodeUpsert("device:1", t0, "a", {"os": "tvos"})])
    assert store.sweep(NOW) == 1
    assert node(store, "device:1", now=t0) is None


def test_a_bulk_load_of_new_edges_stores_what_apply_would_in_chunks(tmp_path: Path) -> None:
    edges = [
        EdgeUpsert(f"profile:{p}", "browsed", f"title:{t}", B - (p * 7 + t) * 1000, f"b{p}.{t}")
        for p in range(30)
        for t in range(p % 5, 40, 3)
    ]
    edges.append(EdgeUpsert("title:1", "in_genre", "genre:drama", B, "g1"))
    loaded = GraphStore(LmdbKV(tmp_path / "bulk"), SCHEMA, clock=lambda: NOW)
    applied = GraphStore(LmdbKV(tmp_path / "apply"), SCHEMA, clock=lambda: NOW)
    seen: list[int] = []
    assert loaded.load_edges(iter(edges), chunk=100, progress=seen.append) == len(edges)
    assert seen == [*range(100, len(edges), 100), len(edges)]  # a commit per chunk
    applied.apply(edges)
    for p in range(30):
        assert out(loaded, f"profile:{p}", "browsed") == out(applied, f"profile:{p}", "browsed")
    for t in range(40):
        assert in_(loaded, f"title:{t}", "browsed") == in_(applied, f"title:{t}", "browsed")
        assert out(loaded, f"title:{t}", "in_genre") == out(applied, f"title:{t}", "in_genre")
    with loaded.read(NOW) as a, applied.read(NOW) as b:
        assert a.edge("profile:3", "browsed", "title:6") == b.edge(
            "profile:3", "browsed", "title:6"
        )
        assert a.edge("profile:3", "browsed", "title:6") is not None
    loaded.close()
    applied.close()


def test_a_bulk_load_refuses_an_edge_that_does_not_fit_the_schema(tmp_path: Path) -> None:
    store = GraphStore(LmdbKV(tmp_path / "bulk"), SCHEMA, clock=lambda: NOW)
    with pytest.raises(SchemaViolation):
        store.load_edges([EdgeUpsert("profile:1", "no_such_type", "title:1", B, "x")])
    store.close()

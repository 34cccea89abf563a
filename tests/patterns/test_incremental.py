"""The incremental evaluator agrees with the brute-force reference after every batch of random
histories: upserts, re-upserts with other times and properties, deletes, node changes, shuffled
arrival and replays, on the graph store."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hopcast.graph.mutations import EdgeDelete, EdgeUpsert, Mutation, NodeUpsert
from hopcast.graph.schema import Schema
from hopcast.graphdb import Graph
from hopcast.patterns import from_yaml
from hopcast.patterns.incremental import Incremental
from hopcast.patterns.reference import holding

SCHEMA = Schema.demo()
MIN = 60_000_000
T0 = 1_800_000_000_000_000
NOW = T0 + 10 * 24 * 60 * MIN
PATTERNS = from_yaml(
    """\
version: 1
patterns:
  join:
    nodes: {p: profile, e: live_event}
    edges:
      b: {type: browsed, from: p, to: e, where: {page: title}}
      j: {type: watched_live, from: p, to: e}
    time: [{first: b, then: j, within: 5m}]
  sharing:
    nodes: {a: account, d: device}
    edges: {l: {type: logged_in_from, from: a, to: d}}
    count: {distinct: l.ip_country, per: [a], within: 1h, at_least: 3}
  premium_device:
    nodes: {d: device, a: {type: account, where: {plan: premium}}}
    edges: {l: {type: logged_in_from, from: d, to: a}}
  co_watch:
    nodes: {p: profile, q: profile, t: title}
    edges:
      w1: {type: started_watching, from: p, to: t}
      w2: {type: started_watching, from: q, to: t}
    time: [{between: [w1, w2], within: 30m}]
  fans:
    nodes: {p: profile, t: title}
    edges: {w: {type: started_watching, from: p, to: t}}
    count: {distinct: p, per: [t], within: 2h, at_least: 3}
""",
    SCHEMA,
)
PROFILES = [f"profile:{i}" for i in range(4)]
EVENTS = ["live_event:1", "live_event:2"]
ACCOUNTS = ["account:1", "account:2"]
DEVICES = [f"device:{i}" for i in range(4)]
TITLES = ["title:1", "title:2"]


def random_mutation(rng: random.Random, n: int) -> Mutation:
    ts = T0 + rng.randrange(0, 180) * MIN + rng.randrange(3)
    kind = rng.random()
    mid = f"m{n}"
    if kind < 0.2:
        src, dst = rng.choice(PROFILES), rng.choice(EVENTS)
        props = {"page": rng.choice(["title", "home"])}
        return EdgeUpsert(src, "browsed", dst, ts, mid, props)
    if kind < 0.35:
        return EdgeUpsert(rng.choice(PROFILES), "watched_live", rng.choice(EVENTS), ts, mid, {})
    if kind < 0.55:
        props = {"ip_country": rng.choice(["US", "NL", "DE", "FR"])}
        return EdgeUpsert(
            rng.choice(ACCOUNTS), "logged_in_from", rng.choice(DEVICES), ts, mid, props
        )
    if kind < 0.72:
        return EdgeUpsert(rng.choice(PROFILES), "started_watching", rng.choice(TITLES), ts, mid, {})
    if kind < 0.82:
        return NodeUpsert(rng.choice(ACCOUNTS), ts, mid, {"plan": rng.choice(["premium", "basic"])})
    t, src, dst = rng.choice(
        [
            ("browsed", rng.choice(PROFILES), rng.choice(EVENTS)),
            ("watched_live", rng.choice(PROFILES), rng.choice(EVENTS)),
            ("logged_in_from", rng.choice(ACCOUNTS), rng.choice(DEVICES)),
            ("started_watching", rng.choice(PROFILES), rng.choice(TITLES)),
        ]
    )
    return EdgeDelete(src, t, dst, ts, mid)


def current(graph: Graph) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Every current edge and node of the small universe, read from the store."""
    edges: dict[Any, Any] = {}
    nodes: dict[str, Any] = {}
    with graph.store.read(NOW) as r:
        for node in [*PROFILES, *ACCOUNTS]:
            for t in ("browsed", "watched_live", "logged_in_from", "started_watching"):
                if node.partition(":")[0] not in {m.src_type for m in SCHEMA.edges[t].mappings}:
                    continue
                for e in r.edges(node, t, "out"):
                    edges[(e.src, e.type, e.dst)] = (e.ts, e.props)
        for node_id in ACCOUNTS:
            n = r.node(node_id)
            if n is not None:
                nodes[node_id] = n.props
    return edges, nodes


@pytest.mark.parametrize("seed", range(8))
def test_incremental_matches_equal_the_reference_after_every_batch(seed: int) -> None:
    rng = random.Random(seed)
    graph = Graph.open(clock=lambda: NOW)
    inc = Incremental(PATTERNS.values(), SCHEMA)
    history: list[Mutation] = []
    made = cancelled = 0
    for batch_no in range(40):
        batch = [random_mutation(rng, len(history) + i) for i in range(rng.randrange(1, 6))]
        if history and rng.random() < 0.2:  # a replay of earlier records
            batch += rng.sample(history, min(3, len(history)))
        rng.shuffle(batch)
        history += batch
        graph.apply(batch)
        touched_edges = {
            (m.src, m.type, m.dst) for m in batch if isinstance(m, (EdgeUpsert, EdgeDelete))
        }
        touched_nodes = {m.node for m in batch if isinstance(m, NodeUpsert)}
        with graph.store.read(NOW) as r:
            changes = inc.step(r, touched_edges, touched_nodes)
        made += len(changes.new)
        cancelled += len(changes.cancelled)
        edges, nodes = current(graph)
        for name, p in PATTERNS.items():
            want = holding(p, SCHEMA, edges, nodes)
            assert set(inc.held[name]) == want, (seed, batch_no, name)
    graph.close()
    assert made > 0, "the random histories made matches"

"""The reference meaning of a pattern: which matches hold in a graph, by brute force.

This is the oracle the incremental evaluator is tested against (it re-evaluates every pattern
over the whole graph), so it favours being plainly right over being fast: it enumerates every
combination of edges of the pattern's types.

The graph is given as it stands, already resolved by last-write-wins: ``edges`` maps
``(src, type, dst)`` to ``(ts, props)`` for every current edge (deleted and expired ones left
out by the caller), ``nodes`` maps a node id to its properties (a node with no upsert has
none; its ``where`` predicates then fail).

What holds (:func:`holding`):

* a plain pattern holds for each binding — node variables to distinct node ids of their types,
  edge aliases to distinct current edges of their types joining those nodes as declared (a
  ``two_way`` mapping read reversed matches the stored edge the other way round) — whose
  ``where`` predicates and time constraints hold; its key is the binding;
* a count pattern holds for each binding of its ``per`` variables for which some window of
  ``within`` (``(t - within, t]``, over the ``over`` edge's time) holds at least ``at_least``
  distinct values of ``distinct`` among the plain bindings of that group; its key is the
  ``per`` binding. A binding whose counted property is absent counts nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from hopcast.graph.schema import Schema
from hopcast.patterns.language import Pattern

EdgeKey = tuple[str, str, str]
#: A match's identity: the sorted (name, value) pairs of its binding (node ids, edge keys).
MatchKey = tuple[tuple[str, Any], ...]


def bindings(
    pattern: Pattern,
    schema: Schema,
    edges: Mapping[EdgeKey, tuple[int, Mapping[str, Any]]],
    nodes: Mapping[str, Mapping[str, Any]],
) -> Iterator[dict[str, Any]]:
    """Every binding of ``pattern``'s variables and aliases that its predicates and time
    constraints allow (``alias`` maps to ``(edge key, ts, props)``)."""
    by_type: dict[str, list[tuple[EdgeKey, int, Mapping[str, Any]]]] = {}
    for key, (ts, props) in edges.items():
        by_type.setdefault(key[1], []).append((key, ts, props))
    aliases = list(pattern.edges.values())

    def node_ok(var: str, node_id: str) -> bool:
        spec = pattern.nodes[var]
        if node_id.partition(":")[0] != spec.type:
            return False
        if not spec.where:
            return True
        props = nodes.get(node_id)
        if props is None:
            return False
        return all(props.get(k) in allowed for k, allowed in spec.where.items())

    def extend(i: int, binding: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if i == len(aliases):
            yield dict(binding)
            return
        alias = aliases[i]
        found = schema.edges[alias.type].mapping(
            pattern.nodes[alias.src].type, pattern.nodes[alias.dst].type
        )
        assert found is not None  # the language checked it
        _, swapped = found
        used_edges = {binding[a.name][0] for a in aliases[:i]}
        for key, ts, props in by_type.get(alias.type, ()):
            if key in used_edges:
                continue
            if any(props.get(k) not in allowed for k, allowed in alias.where.items()):
                continue
            src_id, dst_id = (key[2], key[0]) if swapped else (key[0], key[2])
            added = []
            ok = True
            for var, node_id in ((alias.src, src_id), (alias.dst, dst_id)):
                bound = binding.get(var)
                if bound is not None:
                    ok = bound == node_id
                elif node_id in (binding[v] for v in pattern.nodes if v in binding):
                    ok = False  # two variables, one node
                else:
                    ok = node_ok(var, node_id)
                    if ok:
                        binding[var] = node_id
                        added.append(var)
                if not ok:
                    break
            if ok:
                binding[alias.name] = (key, ts, props)
                if times_hold(pattern, binding):
                    yield from extend(i + 1, binding)
                del binding[alias.name]
            for var in added:
                del binding[var]

    yield from extend(0, {})


def times_hold(pattern: Pattern, binding: Mapping[str, Any]) -> bool:
    """Whether the time constraints between the bound aliases of ``binding`` hold (an alias maps
    to ``(key, ts, props)``; constraints on unbound aliases wait)."""
    for c in pattern.time:
        if c.first not in binding or c.then not in binding:
            continue  # checked once both are bound
        a, b = binding[c.first][1], binding[c.then][1]
        if c.ordered:
            if b < a or (c.within_us is not None and b - a > c.within_us):
                return False
        elif c.within_us is not None and abs(b - a) > c.within_us:
            return False
    return True


def key_of(binding: Mapping[str, Any], names: Iterable[str]) -> MatchKey:
    """The key of ``binding`` over ``names``: sorted (name, node id or edge key) pairs."""
    out = []
    for name in sorted(names):
        value = binding[name]
        out.append((name, value[0] if isinstance(value, tuple) else value))
    return tuple(out)


def holding(
    pattern: Pattern,
    schema: Schema,
    edges: Mapping[EdgeKey, tuple[int, Mapping[str, Any]]],
    nodes: Mapping[str, Mapping[str, Any]],
) -> set[MatchKey]:
    """The keys of the matches of ``pattern`` that hold in this graph (see the module)."""
    everything = bindings(pattern, schema, edges, nodes)
    count = pattern.count
    if count is None:
        names = [*pattern.nodes, *pattern.edges]
        return {key_of(b, names) for b in everything}
    groups: dict[MatchKey, list[tuple[int, Any]]] = {}
    for b in everything:
        if isinstance(count.distinct, tuple):
            alias, prop = count.distinct
            value = b[alias][2].get(prop)
            if value is None:
                continue
        else:
            value = b[count.distinct]
        groups.setdefault(key_of(b, count.per), []).append((b[count.over][1], value))
    return {
        key
        for key, points in groups.items()
        if window_full(points, count.within_us, count.at_least)
    }


def window_full(points: list[tuple[int, Any]], within_us: int, at_least: int) -> bool:
    """Whether some window ``(t - within_us, t]`` holds ``at_least`` distinct values among the
    ``(ts, value)`` points."""
    points = sorted(points, key=lambda p: p[0])
    for end in range(len(points)):
        t = points[end][0]
        if len({v for ts, v in points[: end + 1] if ts > t - within_us}) >= at_least:
            return True
    return False

"""Incremental evaluation: after each batch, only what the batch touched is looked at.

:class:`Incremental` keeps the matches that hold (their keys, as :mod:`hopcast.patterns.
reference` names them) and, after a batch, is told which edges and nodes it touched:

* **new matches**: each touched edge that exists now anchors every alias of its type, and the
  binding is extended through the graph's adjacency lists (the pattern is connected, so each
  unbound alias has a bound end to read from); a touched node anchors the variables of its type.
  A binding found this way that was not held before is a match.
* **cancellations**: a held match (for a count, a held group) that contains a touched edge or
  node is checked again against the graph; one that no longer holds is cancelled.

A count is re-counted per group (its ``per`` binding) that a touched element reaches: the group
is re-enumerated from its ``per`` nodes. Reads go through a :class:`~hopcast.graph.store.
GraphReader` at the batch's time, so deleted and expired edges complete nothing. Time passing
alone (an edge expiring with no batch) is not seen here: the sweep's job.

State lives in memory here; the engine will keep it in the store, in the batch's write.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hopcast.graph.schema import Schema
from hopcast.graph.store import GraphReader
from hopcast.patterns.language import EdgeVar, Pattern
from hopcast.patterns.reference import EdgeKey, MatchKey, key_of, times_hold, window_full

Binding = dict[str, Any]  # var -> node id; alias -> (edge key, ts, props)


@dataclass
class Changes:
    """What a batch changed: ``(pattern name, key)`` of new and cancelled matches."""

    new: list[tuple[str, MatchKey]] = field(default_factory=list)
    cancelled: list[tuple[str, MatchKey]] = field(default_factory=list)


class Incremental:
    def __init__(self, patterns: Iterable[Pattern], schema: Schema) -> None:
        self.patterns = {p.name: p for p in patterns}
        self.schema = schema
        #: held keys per pattern, with the nodes and edges each rests on
        self.held: dict[str, dict[MatchKey, tuple[frozenset[str], frozenset[EdgeKey]]]] = {
            name: {} for name in self.patterns
        }

    # -- reading the graph ------------------------------------------------------------------

    def _swapped(self, p: Pattern, alias: EdgeVar) -> bool:
        found = self.schema.edges[alias.type].mapping(
            p.nodes[alias.src].type, p.nodes[alias.dst].type
        )
        assert found is not None
        return found[1]

    def _node_ok(self, r: GraphReader, p: Pattern, var: str, node_id: str) -> bool:
        spec = p.nodes[var]
        if node_id.partition(":")[0] != spec.type:
            return False
        if not spec.where:
            return True
        node = r.node(node_id)
        if node is None:
            return False
        return all(node.props.get(k) in allowed for k, allowed in spec.where.items())

    def _bind_edge(
        self,
        r: GraphReader,
        p: Pattern,
        b: Binding,
        alias: EdgeVar,
        key: EdgeKey,
        ts: int,
        props: Any,
    ) -> list[str] | None:
        """Bind ``alias`` to the edge (and its ends); the variables newly bound, or None."""
        if any(b[a][0] == key for a in p.edges if a in b):
            return None
        if any(props.get(k) not in allowed for k, allowed in alias.where.items()):
            return None
        src_id, dst_id = (key[2], key[0]) if self._swapped(p, alias) else (key[0], key[2])
        added: list[str] = []
        for var, node_id in ((alias.src, src_id), (alias.dst, dst_id)):
            bound = b.get(var)
            if bound is not None:
                if bound != node_id:
                    break
            elif any(b.get(v) == node_id for v in p.nodes) or not self._node_ok(r, p, var, node_id):
                break
            else:
                b[var] = node_id
                added.append(var)
        else:
            b[alias.name] = (key, ts, props)
            if times_hold(p, b):
                return added
            del b[alias.name]
        for var in added:
            del b[var]
        return None

    def _extend(self, r: GraphReader, p: Pattern, b: Binding) -> Iterator[Binding]:
        """Every completion of the partial binding ``b`` (each unbound alias read from a bound
        end's adjacency list)."""
        todo = [a for a in p.edges.values() if a.name not in b]
        if not todo:
            yield dict(b)
            return
        alias = next((a for a in todo if a.src in b or a.dst in b), None)
        if alias is None:  # nothing bound yet at all: cannot happen from an anchor
            return
        swapped = self._swapped(p, alias)
        # the stored orientation: src of the stored edge is alias.src unless swapped
        stored_src_var = alias.dst if swapped else alias.src
        if stored_src_var in b:
            node, physical = b[stored_src_var], "out"
        else:
            node, physical = b[alias.dst if not swapped else alias.src], "in"
        for e in r.edges(node, alias.type, physical):
            key = (e.src, e.type, e.dst)
            added = self._bind_edge(r, p, b, alias, key, e.ts, e.props)
            if added is None:
                continue
            yield from self._extend(r, p, b)
            del b[alias.name]
            for var in added:
                del b[var]

    # -- keys ---------------------------------------------------------------------------------

    def _support(
        self, p: Pattern, bs: Iterable[Binding]
    ) -> tuple[frozenset[str], frozenset[EdgeKey]]:
        nodes: set[str] = set()
        edges: set[EdgeKey] = set()
        for b in bs:
            nodes.update(b[v] for v in p.nodes)
            edges.update(b[a][0] for a in p.edges)
        return frozenset(nodes), frozenset(edges)

    # -- a batch ------------------------------------------------------------------------------

    def _anchored(
        self, r: GraphReader, p: Pattern, edges: set[EdgeKey], nodes: set[str]
    ) -> Iterator[Binding]:
        for key in edges:
            if key[1] not in p.edge_types:
                continue
            e = r.edge(*key)
            if e is None:
                continue
            for alias in p.edges.values():
                if alias.type != key[1]:
                    continue
                b: Binding = {}
                if self._bind_edge(r, p, b, alias, key, e.ts, e.props) is not None:
                    yield from self._extend(r, p, b)
        for node_id in nodes:
            for var, spec in p.nodes.items():
                if spec.type == node_id.partition(":")[0] and self._node_ok(r, p, var, node_id):
                    yield from self._extend(r, p, {var: node_id})

    def _group(self, r: GraphReader, p: Pattern, group: MatchKey) -> tuple[bool, list[Binding]]:
        """Whether the count holds for ``group`` (its per binding), and its bindings."""
        count = p.count
        assert count is not None
        b: Binding = dict(group)
        if not all(self._node_ok(r, p, var, node_id) for var, node_id in group):
            return False, []
        found = list(self._extend(r, p, b))
        points = []
        for f in found:
            if isinstance(count.distinct, tuple):
                value = f[count.distinct[0]][2].get(count.distinct[1])
                if value is None:
                    continue
            else:
                value = f[count.distinct]
            points.append((f[count.over][1], value))
        return window_full(points, count.within_us, count.at_least), found

    def step(self, r: GraphReader, edges: Iterable[EdgeKey], nodes: Iterable[str] = ()) -> Changes:
        """Look at what a batch touched (``edges`` by key, ``nodes`` by id) and return the
        matches it made and cancelled."""
        touched_edges, touched_nodes = set(edges), set(nodes)
        touched_nodes |= {k[0] for k in touched_edges} | {k[2] for k in touched_edges}
        out = Changes()
        for name, p in self.patterns.items():
            held = self.held[name]
            # re-check what rests on a touched element
            suspects = [
                k for k, (ns, es) in held.items() if ns & touched_nodes or es & touched_edges
            ]
            if p.count is None:
                for key in suspects:
                    if not self._still(r, p, key):
                        del held[key]
                        out.cancelled.append((name, key))
                names = [*p.nodes, *p.edges]
                for b in self._anchored(r, p, touched_edges, set(nodes)):
                    key = key_of(b, names)
                    if key not in held:
                        held[key] = self._support(p, [b])
                        out.new.append((name, key))
            else:
                groups = set(suspects)
                for b in self._anchored(r, p, touched_edges, set(nodes)):
                    groups.add(key_of(b, p.count.per))
                for group in groups:
                    holds, found = self._group(r, p, group)
                    if holds and group not in held:
                        held[group] = self._support(p, found)
                        out.new.append((name, group))
                    elif holds:
                        held[group] = self._support(p, found)
                    elif group in held:
                        del held[group]
                        out.cancelled.append((name, group))
        return out

    def _still(self, r: GraphReader, p: Pattern, key: MatchKey) -> bool:
        """Whether the plain match ``key`` holds in the graph now."""
        want = dict(key)
        b: Binding = {}
        for var in p.nodes:
            if not self._node_ok(r, p, var, want[var]):
                return False
        for alias in p.edges.values():
            src, kind, dst = want[alias.name]
            e = r.edge(src, kind, dst)
            if e is None:
                return False
            if self._bind_edge(r, p, b, alias, (src, kind, dst), e.ts, e.props) is None:
                return False
        return all(b.get(v) == want[v] for v in p.nodes)

"""The pattern language: the issue's examples load against the demo schema, and every rule
refuses with the file, path and line."""

from __future__ import annotations

import pytest

from hopcast.graph.schema import Schema
from hopcast.patterns import PatternError, from_yaml
from hopcast.patterns.language import MAX_EDGES

SCHEMA = Schema.demo()

EXAMPLES = """\
version: 1
patterns:
  live_join_from_title_page:
    description: browsed a live event's title page, then joined it within 5 minutes
    nodes: {p: profile, e: live_event}
    edges:
      b: {type: browsed, from: p, to: e, where: {page: title}}
      j: {type: watched_live, from: p, to: e}
    time:
      - {first: b, then: j, within: 5m}
    cancel: true
  account_sharing_suspected:
    nodes: {a: account, d: device}
    edges: {l: {type: logged_in_from, from: a, to: d}}
    count: {distinct: l.ip_country, per: [a], within: 1h, at_least: 4}
  device_seen_both_ways:
    nodes: {d: device, a: {type: account, where: {plan: [premium, standard]}}}
    edges: {l: {type: logged_in_from, from: d, to: a}}
"""


def test_the_examples_load_with_their_parts() -> None:
    patterns = from_yaml(EXAMPLES, SCHEMA, source="demo.yaml")
    join = patterns["live_join_from_title_page"]
    assert join.cancel and join.edge_types == {"browsed", "watched_live"}
    assert join.edges["b"].where == {"page": ("title",)}
    (t,) = join.time
    assert (t.first, t.then, t.within_us, t.ordered) == ("b", "j", 300_000_000, True)
    sharing = patterns["account_sharing_suspected"]
    assert sharing.count is not None
    assert sharing.count.distinct == ("l", "ip_country")
    assert (sharing.count.per, sharing.count.over, sharing.count.at_least) == (("a",), "l", 4)
    reverse = patterns["device_seen_both_ways"]  # a two_way mapping reads either way round
    assert reverse.nodes["a"].where == {"plan": ("premium", "standard")}


def _one(body: str) -> str:
    return f"version: 1\npatterns:\n  p1:\n{body}"


BAD = [
    ("    nodes: {p: profil}\n    edges: {}\n", "p1.nodes.p.type (line 4)", "unknown node type"),
    (
        "    nodes: {p: profile, t: title}\n    edges: {w: {type: wached, from: p, to: t}}\n",
        "p1.edges.w.type (line 5)",
        "unknown edge type 'wached'",
    ),
    (
        "    nodes: {p: profile, g: genre}\n"
        "    edges: {w: {type: started_watching, from: p, to: g}}\n",
        "p1.edges.w (line 5)",
        "does not join profile → genre",
    ),
    (
        "    nodes: {p: profile, t: title}\n"
        "    edges: {w: {type: started_watching, from: p, to: t, where: {pos: 1}}}\n",
        "p1.edges.w.where.pos",
        "has no property 'pos'",
    ),
    (
        "    nodes: {p: profile, t: title}\n"
        "    edges: {w: {type: started_watching, from: p, to: t, where: {position_s: x}}}\n",
        "p1.edges.w.where.position_s",
        "must be a int",
    ),
    (
        "    nodes: {p: profile, t: title, g: genre}\n"
        "    edges: {w: {type: started_watching, from: p, to: t}}\n",
        "p1.nodes.g",
        "'g' is on no edge",
    ),
    (
        "    nodes: {p: profile, t: title}\n"
        "    edges: {w: {type: started_watching, from: p, to: t}}\n"
        "    time: [{first: w, then: x, within: 5m}]\n",
        "p1.time[0].then",
        "'x' is not an edge alias",
    ),
    (
        "    nodes: {p: profile, t: title}\n"
        "    edges:\n"
        "      w: {type: started_watching, from: p, to: t}\n"
        "      b: {type: browsed, from: p, to: t}\n"
        "    time: [{first: w, then: b, within: 200d}]\n",
        "p1.time[0].within",
        "longer than the edges' retention",
    ),
    (
        "    nodes: {a: account, d: device}\n"
        "    edges: {l: {type: logged_in_from, from: a, to: d}}\n"
        "    count: {distinct: l.ip_country, per: [a], within: 1h, at_least: 1}\n",
        "p1.count.at_least",
        "an integer from 2",
    ),
    (
        "    nodes: {a: account, d: device}\n"
        "    edges: {l: {type: logged_in_from, from: a, to: d}}\n"
        "    count: {distinct: a, per: [a], within: 1h, at_least: 2}\n",
        "p1.count.distinct",
        "counted per itself",
    ),
    (
        "    nodes: {p: profile, t: title}\n"
        "    edges: {w: {type: started_watching, from: p, to: t}}\n"
        "    colour: red\n",
        "p1.colour",
        "unknown key 'colour'",
    ),
    ("    nodes: {P: profile}\n    edges: {}\n", "p1.nodes.P", "a node variable is"),
]


@pytest.mark.parametrize(("body", "where", "says"), BAD)
def test_a_broken_rule_names_its_path_line_and_problem(body: str, where: str, says: str) -> None:
    with pytest.raises(PatternError) as raised:
        from_yaml(_one(body), SCHEMA, source="mine.yaml")
    message = str(raised.value)
    assert "mine.yaml" in message and where in message and says in message, message


def test_more_than_the_most_edges_is_refused() -> None:
    edges = "".join(
        f"      e{i}: {{type: browsed, from: p, to: t}}\n" for i in range(MAX_EDGES + 1)
    )
    body = f"    nodes: {{p: profile, t: title}}\n    edges:\n{edges}"
    with pytest.raises(PatternError, match=f"1 to {MAX_EDGES} edges"):
        from_yaml(_one(body), SCHEMA)


def test_disconnected_edges_are_refused() -> None:
    body = (
        "    nodes: {p: profile, t: title, a: account, d: device}\n"
        "    edges:\n"
        "      w: {type: started_watching, from: p, to: t}\n"
        "      l: {type: logged_in_from, from: a, to: d}\n"
    )
    with pytest.raises(PatternError, match="do not connect"):
        from_yaml(_one(body), SCHEMA)

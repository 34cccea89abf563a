"""Rich tables for result documents (the ``to_dict()`` forms, local or from a server).

Every renderer takes ``(console, doc)`` and only reads ``doc``, so a result looks the same
whether the query ran here or on ``hopcast serve``. User data is wrapped in :class:`Text` so that
ids and properties are never read as rich markup. Times are shown as ISO-8601 UTC to the second
plus a relative age; ``--json`` keeps the exact µs.
"""

from __future__ import annotations

import datetime as dt
import json

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hopcast.cli.common import EPOCH, Doc
from hopcast.durations import DAY, HOUR, MINUTE, SECOND, format_duration, now_us

_AGE_UNITS = (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", SECOND))
#: Columns that hold no user data and are short: never wrapped. Every other column holds ids,
#: types or properties, which fold onto more lines when the terminal is narrow but are never cut.
_FIXED = frozenset({"time (UTC)", "last seen (UTC)", "age", "depth", "step", "count", "entries"})


def iso(us: int) -> str:
    """``1714557600000000`` → ``2024-05-01T10:00:00Z`` (µs beyond year 9999 printed as is)."""
    try:
        return (EPOCH + dt.timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:
        return f"{us}µs"


def age(us: int, now: int) -> str:
    """How long before ``now`` (``5m ago``), or after it (``in 2h``), in the largest unit."""
    delta = now - us
    for unit, size in _AGE_UNITS:
        if abs(delta) >= size:
            n = f"{abs(delta) // size}{unit}"
            return f"{n} ago" if delta > 0 else f"in {n}"
    return "now"


def _props(props: Doc | None) -> Text:
    return Text(json.dumps(props, ensure_ascii=False) if props else "", style="dim")


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in columns:
        fixed = name in _FIXED
        table.add_column(name, overflow="ellipsis" if fixed else "fold", no_wrap=fixed)
    return table


def _arrow(edge: Doc, node: str) -> Text:
    """The edge type with ``→`` if ``node`` is its stored source, else ``←``."""
    return Text(f"→ {edge['type']}" if edge["src"] == node else f"← {edge['type']}")


def _retention(us: int | None) -> str:
    return "forever" if us is None else format_duration(us)


# -- queries -----------------------------------------------------------------------------------


def neighbours(console: Console, doc: Doc) -> None:
    now = now_us()
    table = _table("neighbour", "edge", "time (UTC)", "age", "props", title=doc["node"])
    for e in doc["edges"]:
        ts = e["ts"]
        row = (Text(e["neighbour"]), _arrow(e, doc["node"]), iso(ts), age(ts, now))
        table.add_row(*row, _props(e.get("props")))
    console.print(table)
    console.print(f"{len(doc['edges'])} neighbour(s)")


def traverse(console: Console, doc: Doc) -> None:
    now = now_us()
    table = _table("depth", "node", "via edge", "from", "time (UTC)", "age")
    for r in doc["nodes"]:
        via = r["via"]
        if via is None:
            table.add_row(str(r["depth"]), Text(r["node"]))
            continue
        parent = via["dst"] if via["src"] == r["node"] else via["src"]
        row = (str(r["depth"]), Text(r["node"]), _arrow(via, parent), Text(parent))
        table.add_row(*row, iso(via["ts"]), age(via["ts"], now))
    console.print(table)
    console.print(f"{len(doc['nodes'])} node(s) reached, {doc['work']} edge(s) read")
    if doc.get("truncated"):
        console.print(Text(f"truncated: {doc.get('reason') or 'a limit was reached'}", "yellow"))


def journey(console: Console, doc: Doc) -> None:
    now = now_us()
    console.print(Text(f"{doc['node']} — members: {', '.join(doc['members'])}"), soft_wrap=True)
    table = _table("time (UTC)", "age", "member", "edge", "target", "props")
    for e in doc["entries"]:
        row = (iso(e["ts"]), age(e["ts"], now), Text(e["src"]), Text(e["type"]), Text(e["dst"]))
        table.add_row(*row, _props(e.get("props")))
    console.print(table)
    n = len(doc["entries"])
    console.print(f"{n} entr{'y' if n == 1 else 'ies'}")
    if doc.get("cursor"):
        console.print(Text(f"next: --cursor {doc['cursor']}"), soft_wrap=True)


def count(console: Console, doc: Doc) -> None:
    table = _table("edge", "count", title=doc["node"])
    for i, (edge_type, n) in enumerate(doc["by_type"].items(), 1):
        table.add_row(Text(edge_type), str(n), end_section=i == len(doc["by_type"]))
    table.add_row(Text("total", style="bold"), Text(str(doc["count"]), style="bold"))
    console.print(table)


def exists(console: Console, doc: Doc) -> None:
    edge = doc.get("edge")
    if not doc["exists"] or edge is None:
        console.print(Text("no such edge", style="yellow"))
        return
    line = f"yes: {edge['src']} -[{edge['type']}]-> {edge['dst']} at {iso(edge['ts'])}"
    text = Text(f"{line} ({age(edge['ts'], now_us())}) ")
    console.print(text + _props(edge.get("props")), soft_wrap=True)


def path(console: Console, doc: Doc) -> None:
    if not doc["found"]:
        hint = " (a limit was reached)" if doc.get("truncated") else ""
        console.print(Text(f"no path found{hint}", style="yellow"))
        return
    nodes, edges = doc["nodes"], doc["edges"]
    table = _table("step", "from", "edge", "to", "time (UTC)")
    for i, edge in enumerate(edges):
        row = (str(i + 1), Text(nodes[i]), _arrow(edge, nodes[i]), Text(nodes[i + 1]))
        table.add_row(*row, iso(edge["ts"]))
    console.print(table)
    console.print(Text(f"{doc['hops']} hop(s): {' → '.join(nodes)}"), soft_wrap=True)


def nodes(console: Console, doc: Doc, ids: list[str]) -> None:
    """``doc["nodes"]`` holds one entry per id asked for, None where there is no such node."""
    now = now_us()
    table = _table("node", "last seen (UTC)", "age", "props")
    for node_id, node in zip(ids, doc["nodes"], strict=True):
        if node is None:
            table.add_row(Text(node_id), Text("not found", style="yellow"))
        else:
            ts = node["ts"]
            table.add_row(Text(node["id"]), iso(ts), age(ts, now), _props(node["props"]))
    console.print(table)


# -- store and schema --------------------------------------------------------------------------


def schema(console: Console, doc: Doc, source: str) -> None:
    """A summary of a schema's ``to_dict()`` form."""
    counts = f"{len(doc['nodes'])} node type(s), {len(doc['edges'])} edge type(s)"
    console.print(Text(f"{source}: valid — {counts}", style="green"), soft_wrap=True)
    node_table = _table("node type", "retention", "props", title="nodes")
    for name, nt in doc["nodes"].items():
        node_table.add_row(Text(name), _retention(nt["retention_us"]), _prop_list(nt["props"]))
    console.print(node_table)
    edge_table = _table("edge type", "mappings", "retention", "props", title="edges")
    for name, et in doc["edges"].items():
        maps = "\n".join(
            f"{m['from']} {'↔' if m['two_way'] else '→'} {m['to']}" for m in et["mappings"]
        )
        row = (Text(name), Text(maps), _retention(et["retention_us"]))
        edge_table.add_row(*row, _prop_list(et["props"]))
    console.print(edge_table)
    j = doc["journey"]
    if j is not None:
        members = ", ".join(j["members"]) or "-"
        text = f"journey: root {j['root']}; members via {members}; "
        console.print(Text(text + f"interactions {', '.join(j['interactions'])}"))


def _prop_list(props: Doc) -> Text:
    parts = (
        f"{n}: {p['type']}{' (required)' if p.get('required') else ''}" for n, p in props.items()
    )
    return Text(", ".join(parts), style="dim")


def info(console: Console, doc: Doc) -> None:
    console.print(Text(f"store    {doc['store']}"), soft_wrap=True)
    console.print(Text(f"backend  {doc['backend']}"))
    console.print(Text(f"schema   {doc['schema']}"), soft_wrap=True)
    table = _table("namespace", "retention", "entries", title="namespaces")
    for ns in doc["namespaces"]:
        n = ns["entries"]
        entries = "-" if n is None else f"{n:,}"
        table.add_row(Text(ns["name"]), _retention(ns["retention_us"]), entries)
    console.print(table)
    if not doc["checkpoints"]:
        console.print("no checkpoints")
        return
    checkpoints = _table("source", "position", title="checkpoints")
    for source, position in doc["checkpoints"].items():
        checkpoints.add_row(Text(source), Text(position))
    console.print(checkpoints)


def sweep(console: Console, doc: Doc) -> None:
    if doc["namespaces"]:
        table = _table("namespace", "before", "removed", "after")
        for ns, c in doc["namespaces"].items():
            before, after = c["before"], c["after"]
            table.add_row(Text(ns), f"{before:,}", f"{before - after:,}", f"{after:,}")
        console.print(table)
    console.print(f"removed {doc['removed']:,} expired item(s)")

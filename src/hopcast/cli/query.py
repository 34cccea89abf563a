"""``hopcast query …``: every query kind, on the local store or on a server (``--url``).

Each command builds the query twice over — as a :class:`~hopcast.Graph` call and as the HTTP
request that asks a server the same thing (:mod:`hopcast.api`: query parameters named like the
options, underscores for dashes, edge types comma-joined; ``traverse`` POSTs a JSON body with
``limits`` nested) — runs one of them, and renders the result document.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from hopcast.cli import remote, render
from hopcast.cli.common import (
    Doc,
    Settings,
    direction_option,
    edge_option,
    emit,
    open_existing,
    query_options,
    since_option,
    split_types,
    until_option,
)
from hopcast.errors import InvalidQuery
from hopcast.graphdb import Graph
from hopcast.query import spec as q

Time = int | str | None


def _run(
    settings: Settings,
    url: str | None,
    local: Callable[[Graph], Doc],
    route: str,
    params: Doc,
    body: Doc | None = None,
) -> Doc:
    """Run ``local`` on the store, or ask the server at ``url`` (POST when ``body`` is given)."""
    if url:
        return remote.call(url, route, params, body)
    with open_existing(settings) as graph:
        return local(graph)


@click.group()
def query() -> None:
    """Query the graph (the local store, or a server with --url)."""


@query.command()
@click.argument("node")
@edge_option
@direction_option("out")
@click.option(
    "--selection", type=click.Choice(["latest", "any"]), default="latest", show_default=True
)
@since_option
@until_option
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--where", metavar="JSON", help='Property filter, e.g. \'{"device_type":"tv"}\'.')
@query_options
@click.pass_obj
def neighbours(
    settings: Settings,
    node: str,
    edges: tuple[str, ...],
    direction: str,
    selection: str,
    since: Time,
    until: Time,
    limit: int,
    where: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Neighbours of NODE, newest first.

    The default lookback is 100 days; --since/--until narrow the window.
    """
    filters = _parse_where(where)
    types = split_types(edges)

    def local(g: Graph) -> Doc:
        result = g.neighbours(
            node,
            types,
            direction=direction,
            selection=selection,
            since=since,
            until=until,
            limit=limit,
            where=filters,
        )
        return result.to_dict()

    params: Doc = {"edge": ",".join(types), "direction": direction, "selection": selection}
    params |= {"since": since, "until": until, "limit": limit, "where": where}
    doc = _run(settings, url, local, f"/v1/nodes/{remote.segment(node)}/neighbours", params)
    emit(settings, as_json, doc, render.neighbours)


def _parse_where(where: str | None) -> Doc | None:
    if where is None:
        return None
    try:
        doc = json.loads(where)
    except ValueError as exc:
        raise InvalidQuery(f"--where is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidQuery('--where must be a JSON object, e.g. {"device_type": "tv"}')
    return doc


@query.command()
@click.argument("start")
@click.option(
    "--hop", "hops", multiple=True, required=True, metavar="TYPE[,TYPE]", help="One per hop."
)
@direction_option("out")
@click.option("--edges-per-hop", type=int, default=q.DEFAULT_EDGES_PER_HOP, show_default=True)
@click.option("--max-work", type=int, default=q.DEFAULT_MAX_WORK, show_default=True)
@since_option
@until_option
@query_options
@click.pass_obj
def traverse(
    settings: Settings,
    start: str,
    hops: tuple[str, ...],
    direction: str,
    edges_per_hop: int,
    max_work: int,
    since: Time,
    until: Time,
    url: str | None,
    as_json: bool,
) -> None:
    """Breadth-first traversal from START, one --hop per step."""
    hop_types = [split_types([h]) for h in hops]
    limits = q.Limits(edges_per_hop=edges_per_hop, max_work=max_work)

    def local(g: Graph) -> Doc:
        result = g.traverse(
            start, hop_types, direction=direction, since=since, until=until, limits=limits
        )
        return result.to_dict()

    body: Doc = {"start": start, "hops": hop_types, "direction": direction}
    body |= {"since": since, "until": until}
    body["limits"] = {"edges_per_hop": edges_per_hop, "max_work": max_work}
    doc = _run(settings, url, local, "/v1/query/traverse", {}, body)
    emit(settings, as_json, doc, render.traverse)


@query.command()
@click.argument("node")
@since_option
@until_option
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--cursor", help="Continue after a page (as printed: 'next: --cursor …').")
@edge_option
@query_options
@click.pass_obj
def journey(
    settings: Settings,
    node: str,
    since: Time,
    until: Time,
    limit: int,
    cursor: str | None,
    edges: tuple[str, ...],
    url: str | None,
    as_json: bool,
) -> None:
    """An account's interactions across its profiles and devices, newest first, paged."""
    types = split_types(edges)

    def local(g: Graph) -> Doc:
        result = g.journey(node, since=since, until=until, limit=limit, cursor=cursor, edge=types)
        return result.to_dict()

    params: Doc = {"since": since, "until": until, "limit": limit, "cursor": cursor}
    params["edge"] = ",".join(types)
    doc = _run(settings, url, local, f"/v1/nodes/{remote.segment(node)}/journey", params)
    emit(settings, as_json, doc, render.journey)


@query.command()
@click.argument("node")
@edge_option
@direction_option("out")
@since_option
@until_option
@query_options
@click.pass_obj
def count(
    settings: Settings,
    node: str,
    edges: tuple[str, ...],
    direction: str,
    since: Time,
    until: Time,
    url: str | None,
    as_json: bool,
) -> None:
    """Count NODE's edges per edge type.

    The default lookback is 100 days, like every query's.
    """
    types = split_types(edges)

    def local(g: Graph) -> Doc:
        return g.count(node, types, direction=direction, since=since, until=until).to_dict()

    params = {"edge": ",".join(types), "direction": direction, "since": since, "until": until}
    doc = _run(settings, url, local, f"/v1/nodes/{remote.segment(node)}/count", params)
    emit(settings, as_json, doc, render.count)


@query.command()
@click.argument("src")
@click.argument("edge")
@click.argument("dst")
@query_options
@click.pass_obj
def exists(
    settings: Settings, src: str, edge: str, dst: str, url: str | None, as_json: bool
) -> None:
    """Whether the edge SRC -[EDGE]-> DST exists.

    A two-way edge matches either way round. The exit code is 0 either way; scripts read
    "exists" from --json.
    """

    def local(g: Graph) -> Doc:
        return g.engine.exists(q.Exists(src, edge, dst)).to_dict()

    params = {"src": src, "edge": edge, "dst": dst}
    doc = _run(settings, url, local, "/v1/edges/exists", params)
    emit(settings, as_json, doc, render.exists)


@query.command()
@click.argument("src")
@click.argument("dst")
@click.option("--max-hops", type=int, default=3, show_default=True)
@edge_option
@direction_option("both")
@since_option
@query_options
@click.pass_obj
def path(
    settings: Settings,
    src: str,
    dst: str,
    max_hops: int,
    edges: tuple[str, ...],
    direction: str,
    since: Time,
    url: str | None,
    as_json: bool,
) -> None:
    """A shortest path from SRC to DST within --max-hops."""
    types = split_types(edges)

    def local(g: Graph) -> Doc:
        result = g.shortest_path(
            src, dst, max_hops=max_hops, edge=types, direction=direction, since=since
        )
        return result.to_dict()

    params: Doc = {"src": src, "dst": dst, "max_hops": max_hops, "edge": ",".join(types)}
    params |= {"direction": direction, "since": since}
    doc = _run(settings, url, local, "/v1/path", params)
    emit(settings, as_json, doc, render.path)


@query.command()
@click.argument("ids", nargs=-1, required=True)
@query_options
@click.pass_obj
def node(settings: Settings, ids: tuple[str, ...], url: str | None, as_json: bool) -> None:
    """Nodes by id: properties and last-seen time.

    JSON: {"nodes": [node or null, …]}, one entry per id, in the order given.
    """

    def local(g: Graph) -> Doc:
        return {"nodes": [None if n is None else n.to_dict() for n in g.nodes(ids)]}

    doc = _run(settings, url, local, "/v1/nodes", {"ids": ",".join(ids)})
    emit(settings, as_json, doc, lambda console, d: render.nodes(console, d, list(ids)))

"""Recommendation rows for a live event, computed from the graph and published as payloads.

For one live event (a ``live_event`` node of the graph) the materialiser finds the members whose
journeys touched it or what is related to it, groups them into a few **segments**, ranks a row
of titles for each segment by graph signals, and publishes one content-addressed payload per
stage and segment through the :class:`~hopcast.live.payloads.PayloadStore` that prefetch
serves. A member → segment map, stored in the KV, makes a member's segment one ``get`` at
prefetch time (microseconds).

Pure core, thin adapter (ARCHITECTURE principle 1):

* :func:`gather` (adapter) reads the graph in one read view into :class:`Inputs` — values:
  the event, its related entities as :class:`Facet` s, every :class:`Touch` (a member's edge to
  the event or to something related) and every recent :class:`Watch` of those members;
* :func:`plan` (pure) turns inputs into a :class:`Plan`: member affinities, segments, ranked
  title picks;
* :func:`build_payloads` (pure) turns a plan plus item names into payloads per stage/segment;
* :class:`Materialiser` (adapter) runs the three, stores payloads, the map and its state, and
  decides when the graph changed enough to do it again (:meth:`Materialiser.refresh_if_changed`).

**Signals** (demo schema; edge types absent from a schema are skipped):

==========================================  ====================================  =============
edge                                        facet the member gets affinity for    weight
==========================================  ====================================  =============
``profile -watched_live-> event``           ``viewers`` (this event's audience)   3
``profile -browsed-> event``                ``viewers``                           1
``profile -supports-> team`` (featured)     ``team.<key>``                        2
``profile -watched_live-> other event``     ``team.<key>`` of a team both feature 1.5
of a featured team
``profile -started_watching-> title`` in    ``genre.<key>``                       0.5
one of the event's genres
==========================================  ====================================  =============

Each touch counts ``weight x 0.5 ** (age / half_life)`` (recency). A member's segment is the
facet with the highest affinity; the ``max_segments - 1`` facets with the most members become
segments and everyone else falls back to :data:`~hopcast.live.payloads.DEFAULT_SEGMENT`
(``all``), so at most ``max_segments`` segments exist. A segment's row is **co-watching**: the
titles its members watched recently, each scored by the sum over members of the member's most
recent watch of it, decayed — "titles watched by members who watched what the event is about" —
and weighted by the square root of the segment's **lift** for the title (its members' share of
watches over the whole audience's), so that each segment's row shows what sets it apart rather
than the catalogue's hits alone. ``all`` gets the plain ranking over the whole audience.

KV layout::

    live.segments      rid = event id  key = member id       value = segment key
    live.materialised  rid = event id  key = b"state"        value = JSON (MaterialState)

Both live as long as the event: when it ends (:meth:`Materialiser.retire`) they expire with its
payloads, after the payload store's retention.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from hopcast.durations import DAY
from hopcast.errors import ConfigError, InvalidInput, NotFound
from hopcast.graph.store import Edge, GraphReader
from hopcast.graphdb import Graph
from hopcast.kv.base import Item, KVStore, visible
from hopcast.live.fixtures import STAGE_KINDS
from hopcast.live.payloads import (
    DEFAULT_SEGMENT,
    Payload,
    PayloadItem,
    PayloadStore,
    Row,
    TitleMeta,
    make_payload,
    validate_name,
)

logger = logging.getLogger("hopcast.live.materialise")

#: KV namespaces (see the module docstring).
SEGMENTS_NS = "live.segments"
STATE_NS = "live.materialised"
_STATE_KEY = b"state"

#: Default bound on the segments of one event: a handful of audiences x three kinds of stage
#: content is a few dozen payloads, each prefetched by thousands of devices.
DEFAULT_MAX_SEGMENTS = 8
#: Largest ``max_segments`` accepted (the payload store's bound on a segmenter).
MAX_SEGMENTS = 1024
#: Titles in a ranked row: what one screen width and a scroll show on a TV.
ROW_LENGTH = 10
#: Recency half-life of a touch or a watch: last week's interest counts half of today's.
HALF_LIFE_US = 7 * DAY
#: How far back the materialiser reads interactions.
LOOKBACK_US = 30 * DAY
#: Exponent of a segment's lift (how much more its members watch a title than the whole
#: audience does) in its row's ranking: 0.5 lets a segment's own tastes through while a title
#: few of its members watched cannot outrank one most of them did.
LIFT = 0.5
#: Changed (member, facet) and (member, title) pairs that make a refresh worth it: fewer is
#: noise that would churn payload ids (and device caches) without changing what members see.
DEFAULT_MIN_CHANGES = 20

#: Facet of the event's own audience.
VIEWERS = "viewers"

#: Touch weights by kind (see the module docstring).
W_WATCHED = 3.0
W_BROWSED = 1.0
W_SUPPORTS = 2.0
W_SIBLING = 1.5
W_GENRE = 0.5

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


# -- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facet:
    """Something related to the event that members can have affinity for.

    Attributes:
        key: the segment key it would become (``team.7``, ``genre.sports``, ``viewers``).
        node: the graph node (the event itself for ``viewers``).
        label: how the console and row titles name its audience (``fans of Red Rovers``).
    """

    key: str
    node: str
    label: str


@dataclass(frozen=True, slots=True)
class Touch:
    """A member's edge to the event or a related entity, counting for ``facet``."""

    member: str
    facet: str
    weight: float
    ts: int


@dataclass(frozen=True, slots=True)
class Watch:
    """A member started watching a title at ``ts``."""

    member: str
    title: str
    ts: int


@dataclass(frozen=True, slots=True)
class EventInfo:
    """The event's own node: id, name and sport (for the title metadata)."""

    node: str
    name: str
    sport: str = ""


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the pure ranking needs, read from the graph at one moment.

    Attributes:
        event: the event's node.
        facets: the related entities, by key.
        touches: members' edges to the event and to the facets' nodes.
        watches: recent watches of every member that has a touch.
        related: nodes shown beside the event (its featured teams), in order.
    """

    event: EventInfo
    facets: Mapping[str, Facet]
    touches: tuple[Touch, ...]
    watches: tuple[Watch, ...]
    related: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RankParams:
    """Knobs of :func:`plan`.

    Attributes:
        half_life_us: recency half-life of touches and watches.
        row_length: titles per ranked row.
        lift: exponent of a segment's lift in its ranking (:func:`lifted`); 0 ranks by
            co-watching alone, so every segment's row leans to what everyone watches.

    Raises:
        ConfigError: a non-positive half-life or row length, or a negative lift.
    """

    half_life_us: int = HALF_LIFE_US
    row_length: int = ROW_LENGTH
    lift: float = LIFT

    def __post_init__(self) -> None:
        if self.half_life_us <= 0:
            raise ConfigError(f"half_life_us must be positive, got {self.half_life_us}")
        if self.row_length < 1:
            raise ConfigError(f"row_length must be at least 1, got {self.row_length}")
        if self.lift < 0:
            raise ConfigError(f"lift must be >= 0, got {self.lift}")


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """One segment: its key, label, member count and ranked title picks (best first)."""

    key: str
    label: str
    members: int
    picks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """What :func:`plan` decided.

    Attributes:
        segments: every segment, ``all`` last; at most ``max_segments``.
        assignments: member → segment key for members outside ``all`` (the others need no
            entry: a lookup that finds nothing falls back to ``all``).
        audience: members with any touch.
    """

    segments: tuple[SegmentPlan, ...]
    assignments: Mapping[str, str]
    audience: int

    @property
    def keys(self) -> list[str]:
        """The segment keys, in plan order."""
        return [s.key for s in self.segments]


# -- the pure core ---------------------------------------------------------------------------------


def decay(age_us: int, half_life_us: int) -> float:
    """Weight of a signal ``age_us`` old: 1 now, 0.5 one half-life ago (never above 1)."""
    return float(0.5 ** (max(age_us, 0) / half_life_us))


def segment_key(prefix: str, node_id: str) -> str:
    """A segment key for a related node: ``team:7`` → ``team.7`` (characters a key may not hold
    become ``_``; at most 64 characters)."""
    key = node_id.partition(":")[2] or node_id
    return f"{prefix}.{_KEY_CHARS.sub('_', key)}"[:64]


def affinities(
    touches: Iterable[Touch], now: int, half_life_us: int
) -> dict[str, dict[str, float]]:
    """member → facet → Σ weight x decay(age)."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t in touches:
        out[t.member][t.facet] += t.weight * decay(now - t.ts, half_life_us)
    return {m: dict(by) for m, by in out.items()}


def _best(scores: Mapping[str, float], allowed: Iterable[str] | None = None) -> str | None:
    """The facet with the highest score (ties: the smaller key), among ``allowed``."""
    keys = scores if allowed is None else [k for k in allowed if k in scores]
    best = None
    for key in keys:
        score = scores[key]
        if score <= 0:
            continue
        if best is None or score > scores[best] or (score == scores[best] and key < best):
            best = key
    return best


def co_watch(
    watches: Iterable[Watch], members: Iterable[str] | None, now: int, half_life_us: int
) -> list[tuple[str, float]]:
    """Titles ranked by co-watching: each member adds the decayed weight of their most recent
    watch of the title (a binge counts once), summed over ``members`` (None: everyone).

    Returns:
        ``(title, score)`` best first; ties by title id.
    """
    wanted = None if members is None else set(members)
    latest: dict[tuple[str, str], int] = {}
    for w in watches:
        if wanted is not None and w.member not in wanted:
            continue
        key = (w.member, w.title)
        if latest.get(key, -1) < w.ts:
            latest[key] = w.ts
    scores: dict[str, float] = defaultdict(float)
    for (_, title), ts in latest.items():
        scores[title] += decay(now - ts, half_life_us)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def lifted(
    ranking: Sequence[tuple[str, float]],
    overall: Mapping[str, float],
    members: int,
    audience: int,
    exponent: float,
) -> list[tuple[str, float]]:
    """Re-rank a segment's co-watching by lift: ``score x (share in the segment / share in
    the audience) ** exponent``, where a share is a title's score over the member count.

    Returns:
        ``(title, lifted score)`` best first; ties by title id.
    """
    if exponent == 0 or members == 0 or audience == 0:
        return list(ranking)
    out = []
    for title, score in ranking:
        base = overall.get(title, 0.0)
        ratio = (score / members) / (base / audience) if base > 0 else 1.0
        out.append((title, score * ratio**exponent))
    return sorted(out, key=lambda kv: (-kv[1], kv[0]))


def _picks(
    ranked: Sequence[tuple[str, float]], fill: Sequence[str], length: int
) -> tuple[str, ...]:
    """The first ``length`` titles of ``ranked``, topped up from ``fill`` (no repeats)."""
    out: list[str] = []
    seen: set[str] = set()
    for title in (*(t for t, _ in ranked), *fill):
        if title not in seen:
            seen.add(title)
            out.append(title)
            if len(out) == length:
                break
    return tuple(out)


def plan(inputs: Inputs, max_segments: int, now: int, params: RankParams = RankParams()) -> Plan:
    """Group the audience into at most ``max_segments`` segments and rank each one's row.

    Steps:
        1. affinities: member → facet → decayed, weighted touches;
        2. each member's best facet; facets ranked by members (ties: key);
        3. the first ``max_segments - 1`` facets become segments; a member whose best facet did
           not make it joins the kept facet they have most affinity for, else ``all``;
        4. each segment's picks: co-watching among its members, lifted by how much more they
           watch each title than the whole audience (:func:`lifted`), topped up from the whole
           audience's ranking; ``all`` gets the whole audience's ranking.

    Raises:
        InvalidInput: ``max_segments`` outside 1..:data:`MAX_SEGMENTS`.
    """
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise InvalidInput(f"max_segments must be between 1 and {MAX_SEGMENTS}, got {max_segments}")
    half = params.half_life_us
    scores = affinities(inputs.touches, now, half)  # 1
    best = {m: b for m, by in scores.items() if (b := _best(by)) is not None}
    sizes = Counter(best.values())  # 2
    ranked = sorted(sizes, key=lambda k: (-sizes[k], k))
    kept = [k for k in ranked if k != DEFAULT_SEGMENT][: max_segments - 1]  # 3
    assignments: dict[str, str] = {}
    for member in sorted(best):
        choice = best[member] if best[member] in kept else _best(scores[member], kept)
        if choice is not None:
            assignments[member] = choice
    overall = co_watch(inputs.watches, None, now, half)  # 4
    overall_scores = dict(overall)
    fill = [t for t, _ in overall]
    by_segment: dict[str, list[str]] = defaultdict(list)
    for member, key in assignments.items():
        by_segment[key].append(member)
    segments = []
    for key in kept:
        members = by_segment.get(key, [])
        if not members:
            continue
        ranking = lifted(
            co_watch(inputs.watches, members, now, half),
            overall_scores,
            len(members),
            len(scores),
            params.lift,
        )
        facet = inputs.facets.get(key)
        label = facet.label if facet is not None else key
        segments.append(
            SegmentPlan(key, label, len(members), _picks(ranking, fill, params.row_length))
        )
    rest = len(scores) - len(assignments)
    # Not "viewers of …": that is the viewers facet's label, and the console showed two boxes
    # by that name. This one is what every member no facet placed gets (new members too).
    label = "everyone else (new and unplaced members)"
    segments.append(
        SegmentPlan(DEFAULT_SEGMENT, label, rest, _picks(overall, (), params.row_length))
    )
    return Plan(tuple(segments), assignments, len(scores))


def fingerprint(inputs: Inputs) -> frozenset[tuple[str, str, str]]:
    """What the plan depends on, without times: ``("t", member, facet)`` for touches and
    ``("w", member, title)`` for watches. Two fingerprints' symmetric difference counts the
    changes between two reads of the graph."""
    return frozenset(
        [("t", t.member, t.facet) for t in inputs.touches]
        + [("w", w.member, w.title) for w in inputs.watches]
    )


def digest(print_: frozenset[tuple[str, str, str]]) -> str:
    """A short, order-independent hash of a fingerprint (BLAKE2b-128 hex)."""
    h = hashlib.blake2b(digest_size=16)
    for entry in sorted(print_):
        h.update("\x1f".join(entry).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def artwork(node_id: str, kind: str) -> str:
    """The artwork reference of a node (``art/title:3/box.jpg``)."""
    return f"art/{node_id}/{kind}.jpg"


#: Row titles by stage kind.
_HERO = {"upcoming": "Coming up", "live": "Watch now", "ended": "Highlights"}
_BADGES = {"upcoming": "Soon", "live": "Live"}
#: Highlight clips after the event.
HIGHLIGHT_CLIPS = 3


def build_payloads(
    result: Plan,
    event: EventInfo,
    related: Sequence[str],
    names: Mapping[str, str],
    stages: Iterable[str] = tuple(STAGE_KINDS),
) -> dict[str, dict[str, Payload]]:
    """The payload of every stage and segment (pure, deterministic).

    A payload: the event's title metadata (id = the event's graph node), a hero row by stage
    kind (*Coming up*, *Watch now*, *Highlights*), the segment's ranked row (*Popular with fans
    of …*) and, before and during the event, the teams it features. Stages of the same kind
    have equal content and so share one payload id.

    Raises:
        KeyError: a stage outside :data:`~hopcast.live.fixtures.STAGE_KINDS`.
    """
    out: dict[str, dict[str, Payload]] = {}
    kinds: dict[str, dict[str, Payload]] = {}
    for stage in stages:
        kind = STAGE_KINDS[stage]
        if kind not in kinds:
            kinds[kind] = {s.key: _payload(s, event, related, names, kind) for s in result.segments}
        out[stage] = kinds[kind]
    return out


def _payload(
    segment: SegmentPlan,
    event: EventInfo,
    related: Sequence[str],
    names: Mapping[str, str],
    kind: str,
) -> Payload:
    event_art = artwork(event.node, kind)
    badge = _BADGES.get(kind)
    attributes = {"kind": kind, "segment": segment.key}
    if event.sport:
        attributes["sport"] = event.sport
    title = TitleMeta(
        id=event.node,
        name=event.name,
        artwork=event_art,
        synopsis=f"{event.name}, live" + (f": {event.sport}" if event.sport else ""),
        badge=badge,
        attributes=attributes,
    )
    if kind == "ended":
        hero = tuple(
            PayloadItem(
                f"clip:{event.node}:{i}", f"Highlight {i}", artwork(f"clip:{event.node}", str(i))
            )
            for i in range(1, HIGHLIGHT_CLIPS + 1)
        )
    else:
        hero = (PayloadItem(event.node, event.name, event_art, badge),)
    rows = [Row(_HERO[kind], hero)]
    if segment.picks:
        items = tuple(PayloadItem(t, names.get(t, t), artwork(t, "box")) for t in segment.picks)
        rows.append(Row(f"Popular with {segment.label}", items))
    if related and kind != "ended":
        teams = tuple(PayloadItem(n, names.get(n, n), artwork(n, "crest")) for n in related)
        rows.append(Row("Playing", teams))
    return make_payload(title, rows)


# -- the graph adapter -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatherLimits:
    """Bounds of one :func:`gather` (edges per list read; every read is newest first).

    Attributes:
        audience: edges read per audience list (the event's ``watched_live``/``browsed``, a
            team's ``supports``, a sibling event's ``watched_live``).
        related: related nodes per list (teams featured, genres, sibling events).
        genre_titles: titles read per genre; ``per_title``: watchers read per title.
        watches: watches read per member.
        members: most members kept (the most recently active).
        lookback_us: how far back interactions are read.
    """

    audience: int = 2_000
    related: int = 20
    genre_titles: int = 40
    per_title: int = 40
    watches: int = 20
    members: int = 5_000
    lookback_us: int = LOOKBACK_US


def _has(graph: Graph, *edge_types: str) -> bool:
    return all(e in graph.schema.edges for e in edge_types)


def _name(reader: GraphReader, node_id: str) -> str:
    node = reader.node(node_id)
    name = None if node is None else node.props.get("name")
    return name if isinstance(name, str) and name else node_id


def gather(graph: Graph, node: str, now: int, limits: GatherLimits = GatherLimits()) -> Inputs:
    """Read what :func:`plan` needs about the event ``node``, in one read view.

    Raises:
        NotFound: the node does not exist.
    """
    since = now - limits.lookback_us
    touches: list[Touch] = []
    facets: dict[str, Facet] = {}
    with graph.store.read(now) as r:
        ev = r.node(node)
        if ev is None:
            raise NotFound(f"node {node!r} does not exist in the graph")
        name = ev.props.get("name")
        sport = ev.props.get("sport")
        event = EventInfo(
            node,
            name if isinstance(name, str) and name else node,
            sport if isinstance(sport, str) else "",
        )
        facets[VIEWERS] = Facet(VIEWERS, node, f"viewers of {event.name}")

        def expand(
            ids: list[str], edge: str, way: str, limit: int, window: bool
        ) -> list[list[Edge]]:
            if not ids or edge not in graph.schema.edges:
                return [[] for _ in ids]
            return r.expand(ids, edge, way, since if window else None, None, limit)

        # the event's own audience
        for edge, weight in (("watched_live", W_WATCHED), ("browsed", W_BROWSED)):
            for e in expand([node], edge, "in", limits.audience, True)[0]:
                touches.append(Touch(e.src, VIEWERS, weight, e.ts))
        # teams it features: their supporters, and the audience of other events featuring them
        teams = [e.dst for e in expand([node], "features", "out", limits.related, False)[0]]
        for team in teams:
            facets[segment_key("team", team)] = Facet(
                segment_key("team", team), team, f"fans of {_name(r, team)}"
            )
        for team, edges in zip(
            teams, expand(teams, "supports", "in", limits.audience, True), strict=True
        ):
            key = segment_key("team", team)
            touches.extend(Touch(e.src, key, W_SUPPORTS, e.ts) for e in edges)
        siblings: dict[str, str] = {}
        for team, edges in zip(
            teams, expand(teams, "features", "in", limits.related, False), strict=True
        ):
            for e in edges:
                if e.src != node:
                    siblings.setdefault(e.src, segment_key("team", team))
        sibling_ids = sorted(siblings)
        for sib, edges in zip(
            sibling_ids,
            expand(sibling_ids, "watched_live", "in", limits.audience, True),
            strict=True,
        ):
            touches.extend(Touch(e.src, siblings[sib], W_SIBLING, e.ts) for e in edges)
        # its genres: members who watch titles of those genres
        genres = [e.dst for e in expand([node], "in_genre", "out", limits.related, False)[0]]
        for genre, edges in zip(
            genres, expand(genres, "in_genre", "in", limits.genre_titles, False), strict=True
        ):
            key = segment_key("genre", genre)
            facets[key] = Facet(key, genre, f"{_name(r, genre)} fans")
            titles = [e.src for e in edges if e.src.partition(":")[0] == "title"]
            for watchers in expand(titles, "started_watching", "in", limits.per_title, True):
                touches.extend(Touch(e.src, key, W_GENRE, e.ts) for e in watchers)
        # the audience's recent watches (co-watching)
        latest: dict[str, int] = {}
        for t in touches:
            latest[t.member] = max(latest.get(t.member, 0), t.ts)
        members = sorted(latest, key=lambda m: (-latest[m], m))[: limits.members]
        kept = set(members)
        touches = [t for t in touches if t.member in kept]
        watches = [
            Watch(e.src, e.dst, e.ts)
            for edges in expand(sorted(members), "started_watching", "out", limits.watches, True)
            for e in edges
        ]
    return Inputs(event, facets, tuple(touches), tuple(watches), tuple(teams))


def names_of(graph: Graph, ids: Iterable[str], now: int) -> dict[str, str]:
    """The ``name`` property of each node (its id when it has none or does not exist)."""
    wanted = sorted(set(ids))
    out: dict[str, str] = {}
    for node_id, node in zip(wanted, graph.nodes(wanted, now), strict=True):
        name = None if node is None else node.props.get("name")
        out[node_id] = name if isinstance(name, str) and name else node_id
    return out


# -- stored state ----------------------------------------------------------------------------------


class RowState(msgspec.Struct, frozen=True):
    """A ranked row as the console shows it: its title and ``[id, name]`` items."""

    title: str
    items: list[tuple[str, str]]


class SegmentState(msgspec.Struct, frozen=True):
    """One segment of the current materialisation."""

    key: str
    label: str
    members: int
    rows: list[RowState]


class MaterialState(msgspec.Struct, frozen=True):
    """What the last materialisation of an event did (stored per event).

    ``payloads`` is stage → segment → payload id; ``cardinality`` the distinct ids in it.
    """

    event: str
    node: str
    max_segments: int
    version: int
    digest: str
    members: int
    audience: int
    cardinality: int
    segments: list[SegmentState]
    payloads: dict[str, dict[str, str]]


_encode_state = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(MaterialState).decode


@dataclass(frozen=True, slots=True)
class Report:
    """What :meth:`Materialiser.materialise` did: the state now stored, and whether it
    changed (False: the graph's inputs were the same, nothing was republished)."""

    state: MaterialState
    changed: bool
    new_payloads: int = 0

    def to_dict(self) -> dict[str, object]:
        """The JSON form (``POST /v1/console/events/{id}/materialise``)."""
        s = self.state
        return {
            "event": s.event,
            "node": s.node,
            "version": s.version,
            "changed": self.changed,
            "new_payloads": self.new_payloads,
            "max_segments": s.max_segments,
            "cardinality": s.cardinality,
            "members": s.members,
            "audience": s.audience,
            "segments": [
                {
                    "key": seg.key,
                    "label": seg.label,
                    "members": seg.members,
                    "rows": [row.title for row in seg.rows],
                }
                for seg in s.segments
            ],
        }


@dataclass
class _Baseline:
    """The last inputs' fingerprint of an event, kept in memory to count changes."""

    print_: frozenset[tuple[str, str, str]]
    digest: str


@dataclass
class Materialiser:
    """Materialises live events' recommendations from ``graph`` into ``payloads`` (see the
    module docstring). Thread-safe: one lock serialises materialisations.

    Args:
        graph: where the signals come from.
        payloads: where payloads go (the live service's store).
        kv: where the member → segment map and the state go (the payload store's KV).
        max_segments: the default bound on segments per event.
        min_changes: changed pairs that make :meth:`refresh_if_changed` republish.
        params, limits: ranking and reading knobs.

    Raises:
        ConfigError: ``max_segments`` outside 1..:data:`MAX_SEGMENTS` or ``min_changes < 1``.
    """

    graph: Graph
    payloads: PayloadStore
    kv: KVStore
    max_segments: int = DEFAULT_MAX_SEGMENTS
    min_changes: int = DEFAULT_MIN_CHANGES
    params: RankParams = RankParams()
    limits: GatherLimits = GatherLimits()
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _baselines: dict[str, _Baseline] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_segments <= MAX_SEGMENTS:
            raise ConfigError(f"max_segments must be between 1 and {MAX_SEGMENTS}")
        if self.min_changes < 1:
            raise ConfigError(f"min_changes must be at least 1, got {self.min_changes}")
        self.kv.configure_many({SEGMENTS_NS: None, STATE_NS: None})

    # -- reads -------------------------------------------------------------------------------------

    def state(self, event_id: str, now: int) -> MaterialState | None:
        """The event's last materialisation, or None if it never was."""
        validate_name("event id", event_id)
        item = self.kv.get(STATE_NS, event_id.encode(), _STATE_KEY, now)
        return None if item is None else _decode_state(item.value)

    def segment_of(self, event_id: str, member: str, now: int) -> str | None:
        """The member's segment for the event (one KV get), or None: not placed (use
        :data:`~hopcast.live.payloads.DEFAULT_SEGMENT`)."""
        item = self.kv.get(SEGMENTS_NS, event_id.encode(), member.encode(), now)
        return None if item is None else item.value.decode()

    def assignments(self, event_id: str, now: int, limit: int = 1000) -> dict[str, str]:
        """Up to ``limit`` entries of the event's member → segment map, by member id."""
        validate_name("event id", event_id)
        with self.kv.reader() as r:
            items: list[Item] = r.fetch(SEGMENTS_NS, event_id.encode(), now, limit)
        return {item.key.decode(): item.value.decode() for item in items}

    # -- writes ------------------------------------------------------------------------------------

    def materialise(
        self,
        event_id: str,
        now: int,
        *,
        node: str | None = None,
        max_segments: int | None = None,
        force: bool = True,
        progress: Callable[[int, int], None] | None = None,
        title: str | None = None,
    ) -> Report:
        """Compute and publish the event's payloads and member map from the graph.

        ``title``: the scheduled event's own title. The payloads show the event under it (with
        no sport) when the graph node is another's — an event created without a node of its
        own borrows the audience of a similar one, not its name: an event "UX Final" must not
        be shown as "Football Night 0, live: football". The viewers row still names the node
        the audience came from.

        Steps: 1. pick the graph node (given, stored, or ``live_event:<event id>``);
        2. :func:`gather` the inputs; 3. unless ``force``, stop if they did not change
        materially (fewer than ``min_changes`` changed pairs, or the same digest when there is no
        baseline in memory); 4. :func:`plan`, read the names, :func:`build_payloads`; 5. put
        and publish every payload (version ``now``), rewrite the member map, store the state.
        ``progress`` is called with ``(writes done, writes in all)`` as 5 goes (an exception it
        raises stops the work there; what was published stays).

        Raises:
            InvalidInput: a malformed event id or ``max_segments``; no graph node for the event.
            NotFound: the node is not in the graph.
            StorageError: the store failed.
        """
        validate_name("event id", event_id)
        with self._lock:
            previous = self.state(event_id, now)
            target = self._node(event_id, node, previous, now)  # 1
            bound = max_segments
            if bound is None:
                bound = previous.max_segments if previous else self.max_segments
            if not 1 <= bound <= MAX_SEGMENTS:
                raise InvalidInput(
                    f"max_segments must be between 1 and {MAX_SEGMENTS}, got {bound}"
                )
            inputs = gather(self.graph, target, now, self.limits)  # 2
            print_ = fingerprint(inputs)
            dig = digest(print_)
            same_setup = (
                previous is not None and previous.node == target and previous.max_segments == bound
            )
            if not force and previous is not None and same_setup:  # 3
                base = self._baselines.get(event_id)
                if base is not None and len(base.print_ ^ print_) < self.min_changes:
                    return Report(previous, changed=False)
                if base is None and previous.digest == dig:
                    self._baselines[event_id] = _Baseline(print_, dig)
                    return Report(previous, changed=False)
            result = plan(inputs, bound, now, self.params)  # 4
            ids = {t for s in result.segments for t in s.picks} | set(inputs.related)
            names = names_of(self.graph, ids, now)
            shown = inputs.event
            if title and title != shown.name:
                shown = EventInfo(shown.node, title)
            built = build_payloads(result, shown, inputs.related, names)
            state, new = self._publish(
                event_id, target, bound, now, dig, inputs, result, built, names, previous, progress
            )  # 5
            self._baselines[event_id] = _Baseline(print_, dig)
        return Report(state, changed=True, new_payloads=new)

    def refresh_if_changed(
        self, event_id: str, now: int, *, title: str | None = None
    ) -> Report | None:
        """Materialise the event again if the graph changed materially since the last time
        (``title`` as for :meth:`materialise`).

        Returns:
            None if the event was never materialised from the graph; else the report
            (``changed`` False when nothing was republished).
        """
        if self.state(event_id, now) is None:
            return None
        return self.materialise(event_id, now, force=False, title=title)

    def retire(self, event_id: str, now: int) -> int:
        """The event ended: let its member map and state expire with its payloads (after the
        payload store's retention). Materialising it again pins them again.

        Returns:
            How many items received an expiry.
        """
        validate_name("event id", event_id)
        erid = event_id.encode()
        ttl = self.payloads.retention_us
        with self._lock, self.kv.writer() as w:
            items = [(SEGMENTS_NS, i) for i in w.scan(SEGMENTS_NS, erid) if visible(i, now)]
            items += [(STATE_NS, i) for i in w.scan(STATE_NS, erid) if visible(i, now)]
            for ns, item in items:
                w.put(ns, erid, item.key, item.value, now, 0, ttl_us=ttl)
        self._baselines.pop(event_id, None)
        return len(items)

    def _node(
        self, event_id: str, node: str | None, previous: MaterialState | None, now: int
    ) -> str:
        if node:
            if ":" not in node:
                raise InvalidInput(f"node {node!r} is not a node id (type:key)")
            return node
        if previous is not None:
            return previous.node
        for candidate in (f"live_event:{event_id}", event_id):
            if ":" in candidate and self.graph.node(candidate, now) is not None:
                return candidate
        raise InvalidInput(
            f"no graph node for live event {event_id!r}: pass node (e.g. live_event:4)"
        )

    def _publish(
        self,
        event_id: str,
        node: str,
        bound: int,
        now: int,
        dig: str,
        inputs: Inputs,
        result: Plan,
        built: Mapping[str, Mapping[str, Payload]],
        names: Mapping[str, str],
        previous: MaterialState | None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[MaterialState, int]:
        known = {
            pid for by in (previous.payloads.values() if previous else ()) for pid in by.values()
        }
        ids: dict[str, dict[str, str]] = {}
        refs: dict[int, str] = {}
        total = sum(len(by) for by in built.values()) + 1  # + the member map and state
        done = 0
        for stage, by_segment in built.items():
            for segment, payload in by_segment.items():
                ref_id = refs.get(id(payload))
                if ref_id is None:
                    ref_id = refs[id(payload)] = self.payloads.put(payload, now).id
                self.payloads.publish(event_id, stage, segment, ref_id, now, now)
                ids.setdefault(stage, {})[segment] = ref_id
                done += 1
                if progress is not None:
                    progress(done, total)
        distinct = {pid for by in ids.values() for pid in by.values()}
        segments = []
        for seg in result.segments:
            payload = next(iter(built.values()))[seg.key]
            rows = [
                RowState(row.title, [(item.id, item.name) for item in row.items])
                for row in payload.rows[1:]
            ]
            segments.append(SegmentState(seg.key, seg.label, seg.members, rows))
        state = MaterialState(
            event=event_id,
            node=node,
            max_segments=bound,
            version=now,
            digest=dig,
            members=len(result.assignments),
            audience=result.audience,
            cardinality=len(distinct),
            segments=segments,
            payloads=ids,
        )
        erid = event_id.encode()
        wanted = {m.encode(): s.encode() for m, s in result.assignments.items()}
        with self.kv.writer() as w:
            stale = [
                item.key
                for item in w.scan(SEGMENTS_NS, erid)
                if item.key not in wanted or item.value != wanted[item.key]
            ]
            for key in stale:
                w.delete(SEGMENTS_NS, erid, key)
            present = {i.key for i in w.scan(SEGMENTS_NS, erid) if i.expires_at == 0}
            for key, value in wanted.items():
                if key not in present:
                    w.put(SEGMENTS_NS, erid, key, value, now, 0)
            w.put(STATE_NS, erid, _STATE_KEY, _encode_state(state), now, 0)
        return state, len(distinct - known)

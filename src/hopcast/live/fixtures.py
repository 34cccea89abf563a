"""Demo payload content for a live event, per segment and stage, deterministic.

This stands in for recommendation rows computed from the graph (``live/materialise.py``, the
recommendations issue) and goes through the real :class:`~hopcast.live.payloads.PayloadStore`,
so everything downstream — content addressing, the index, manifests, prefetch, cardinality — is
the production path.

What a device shows, by stage (the schedule's state names):

* ``scheduled``, ``prefetch`` — "Coming up": the event with a *Soon* badge and its teaser art;
* ``live``, ``interrupted`` — "Watch now": the event with a *Live* badge and its live art;
* ``ended`` — "Highlights": clips of the event and its recap art.

Each stage also has a "Popular now" row from a small fixed catalogue. Content depends only on
the stage's kind, the audience (kids or not) and the language of the segment, never on its
country or bucket — so segments and stages with equal content share one payload, and the
cardinality the store reports is smaller than segments x stages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from hopcast.live.payloads import (
    DEFAULT_SEGMENT,
    AttributeSegmenter,
    Payload,
    PayloadItem,
    PayloadRef,
    PayloadStore,
    Row,
    TitleMeta,
    make_payload,
)
from hopcast.live.schedule import State

#: Which content each stage shows. Cancelled events show nothing (devices drop the event).
STAGE_KINDS: dict[str, str] = {
    State.SCHEDULED.value: "upcoming",
    State.PREFETCHING.value: "upcoming",
    State.LIVE.value: "live",
    State.INTERRUPTED.value: "live",
    State.ENDED.value: "ended",
}

#: The stages :func:`materialise_fixture` publishes by default: every stage a device can see.
DEMO_STAGES: tuple[str, ...] = tuple(STAGE_KINDS)

#: The demo company's markets (``hopcast.demo.company``): ten countries, seven languages.
DEMO_COUNTRIES = frozenset({"US", "BR", "IN", "GB", "DE", "FR", "MX", "CA", "JP", "ES"})
DEMO_LANGUAGES = frozenset({"en", "pt", "hi", "de", "fr", "es", "ja"})

#: Items in the "Popular now" row: what one screen width shows on a TV.
POPULAR_ROW_LENGTH = 6

#: Highlight clips after the event: a short row, the clips are minutes long.
HIGHLIGHT_CLIPS = 3

_BADGES = {"upcoming": "Soon", "live": "Live"}

#: Row titles by language; other languages fall back to English.
_ROW_TITLES: dict[str, dict[str, str]] = {
    "en": {"upcoming": "Coming up", "live": "Watch now", "ended": "Highlights", "pop": "Popular"},
    "de": {
        "upcoming": "Demnächst",
        "live": "Jetzt ansehen",
        "ended": "Highlights",
        "pop": "Beliebt",
    },
    "fr": {"upcoming": "Bientôt", "live": "Regarder", "ended": "Temps forts", "pop": "Populaire"},
    "es": {"upcoming": "Próximamente", "live": "Ver ahora", "ended": "Resumen", "pop": "Popular"},
    "pt": {"upcoming": "Em breve", "live": "Assista agora", "ended": "Destaques", "pop": "Em alta"},
}

_CATALOGUE = (
    ("title:1001", "The Long Night"),
    ("title:1002", "Harbour Lights"),
    ("title:1003", "Glass Kingdom"),
    ("title:1004", "Signal Lost"),
    ("title:1005", "Northern Line"),
    ("title:1006", "Second Serve"),
    ("title:1007", "Copper Valley"),
    ("title:1008", "Quiet Hours"),
)
_KIDS_CATALOGUE = (
    ("title:2001", "Pip and the Paper Boat"),
    ("title:2002", "Robo Rangers"),
    ("title:2003", "The Sleepy Dragon"),
    ("title:2004", "Moonbeam Bakery"),
    ("title:2005", "Tiny Planet"),
    ("title:2006", "Captain Puddle"),
    ("title:2007", "Owl School"),
)


def demo_segmenter(buckets: int = 1) -> AttributeSegmenter:
    """The segmenter of the demo company's markets (176 segments with one bucket)."""
    return AttributeSegmenter(DEMO_COUNTRIES, DEMO_LANGUAGES, buckets=buckets)


def _audience_and_language(segment: str) -> tuple[bool, str]:
    traits = AttributeSegmenter.parse(segment)
    if traits is not None:
        return traits.kids, traits.language
    return segment.split(".")[0] == "kids", "en"


def _rotation(language: str, size: int) -> int:
    digest = hashlib.blake2b(language.encode(), digest_size=2).digest()
    return int.from_bytes(digest, "big") % size


def fixture_payload(event_id: str, stage: str, segment: str) -> Payload:
    """The demo payload for one stage and segment (pure, deterministic).

    Raises:
        KeyError: for a stage outside :data:`STAGE_KINDS`.
    """
    kind = STAGE_KINDS[stage]
    kids, language = _audience_and_language(segment)
    words = _ROW_TITLES.get(language, _ROW_TITLES["en"])
    event_art = f"art/live/{event_id}/{kind}.jpg"
    title = TitleMeta(
        id=f"live:{event_id}",
        name=f"Hopcast Live: {event_id}",
        artwork=event_art,
        synopsis="A live event streamed to every member at once.",
        badge=_BADGES.get(kind),
        attributes={"genre": "family" if kids else "live", "kind": kind},
    )
    if kind == "ended":
        first = tuple(
            PayloadItem(f"clip:{event_id}:{i}", f"Highlight {i}", f"art/clip/{event_id}/{i}.jpg")
            for i in range(1, HIGHLIGHT_CLIPS + 1)
        )
    else:
        first = (PayloadItem(title.id, title.name, event_art, _BADGES[kind]),)
    catalogue = _KIDS_CATALOGUE if kids else _CATALOGUE
    start = _rotation(language, len(catalogue))
    popular = tuple(
        PayloadItem(tid, name, f"art/{tid}/box.jpg")
        for tid, name in (
            catalogue[(start + i) % len(catalogue)] for i in range(POPULAR_ROW_LENGTH)
        )
    )
    return make_payload(title, [Row(words[kind], first), Row(words["pop"], popular)])


def materialise_fixture(
    store: PayloadStore,
    event_id: str,
    segments: Iterable[str],
    now: int,
    version: int = 1,
    stages: Iterable[str] = DEMO_STAGES,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, PayloadRef]]:
    """Put and publish the demo payloads of an event for every stage and segment.

    :data:`~hopcast.live.payloads.DEFAULT_SEGMENT` is always included, so every device finds a
    payload through the fallbacks. Idempotent: running it again with the same ``version``
    changes nothing. ``progress`` is called with ``(entries done, entries in all)`` after each
    entry (an exception it raises stops the work there).

    Returns:
        ``{stage: {segment: ref}}`` of what was materialised (``store.cardinality(event_id,
        now)`` then reports the distinct payloads).

    Raises:
        InvalidInput: for a malformed event id, segment or stage name.
        KeyError: for a stage outside :data:`STAGE_KINDS`.
    """
    wanted = sorted({*segments, DEFAULT_SEGMENT})
    stages = list(stages)
    total = len(stages) * len(wanted)
    out: dict[str, dict[str, PayloadRef]] = {}
    for stage in stages:
        for segment in wanted:
            ref = store.put(fixture_payload(event_id, stage, segment), now)
            store.publish(event_id, stage, segment, ref.id, version, now)
            out.setdefault(stage, {})[segment] = ref
            if progress is not None:
                progress(sum(len(by) for by in out.values()), total)
    return out


def fixture_entries(segments: int, stages: int = len(DEMO_STAGES)) -> int:
    """The ``(stage, segment)`` entries :func:`materialise_fixture` writes for ``segments``
    segment keys (plus the default one): the work of a request, known before it runs."""
    return stages * (segments + 1)

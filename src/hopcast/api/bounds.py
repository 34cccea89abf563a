"""The HTTP API's declared bounds: patterns and ranges shared by the OpenAPI document and the
code that enforces them, so that what the document calls valid is what the server accepts.

Every query parameter, path parameter and body field of the API takes its bound from here:

======================  =========================================================================
value                   bound
======================  =========================================================================
time (query, body)      µs since the epoch in ``[0, 2**62)`` (digits), or a duration
                        ``<number><unit>`` of at most ``2**62`` µs; an empty query value means
                        "not given". A duration longer than the time since the epoch reaches back
                        to the epoch (a window cannot start earlier).
node id                 ``type:key`` with a type of the graph's schema, 1..250 characters; the
                        store's own bound is 250 bytes of UTF-8 (:mod:`hopcast.graph.limits`)
edge types              names of the graph's schema, comma-separated in a query
limits, depths          the query spec's ranges (:mod:`hopcast.query.spec`)
JSON bodies             at most :data:`MAX_JSON_DEPTH` levels of nesting, checked before parsing
                        (:func:`json_too_deep`), and the app's body size limit
======================  =========================================================================

Patterns use only what JSON Schema (ECMA 262), Python's ``re`` and the Rust regex engine of
pydantic agree on: ``[0-9]`` rather than ``\\d``, anchors at both ends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import accumulate
from typing import Any, Final

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor

from hopcast.graph.keys import MAX_TS
from hopcast.graph.limits import MAX_DEPTH as MAX_PROP_DEPTH
from hopcast.graph.limits import MAX_NODE_ID_BYTES
from hopcast.live.schedule import MAX_PREFETCH_LEAD_US
from hopcast.query.spec import MAX_IDS

#: Deepest nesting of a JSON body. A mutation's property value may nest MAX_PROP_DEPTH (32)
#: levels inside the body's own three (body, mutations list, mutation, props); twice that
#: leaves room for a journal record's own structure while refusing the thousands of levels that
#: exhaust recursive decoders.
MAX_JSON_DEPTH: Final = 2 * MAX_PROP_DEPTH

#: Longest node id in characters (the store bounds UTF-8 bytes to the same number, so an id of
#: ASCII characters may use all of it).
MAX_NODE_ID_CHARS: Final = MAX_NODE_ID_BYTES

#: Longest query-string value that holds a list (ids, edge types) or JSON (``where``): long
#: enough for MAX_IDS short ids, short enough to stay far below HTTP servers' line limits.
MAX_QUERY_CHARS: Final = 8192

#: Seconds... weeks: the largest count of each unit that stays within 2**62 µs.
_UNIT_US = {"us": 1, "ms": 1_000, "s": 10**6, "m": 60 * 10**6, "h": 3600 * 10**6}
_UNIT_US |= {"d": 86_400 * 10**6, "w": 7 * 86_400 * 10**6}


def below(n: int) -> str:
    """A regex (no anchors) matching the decimal numbers in ``[0, n)`` (leading zeros allowed,
    at most as many digits as ``n - 1`` has)."""
    if n <= 0:
        raise ValueError("below(n) needs n > 0")
    top = str(n - 1)
    width = len(top)
    parts = []
    if width > 1:
        parts.append(f"[0-9]{{1,{width - 1}}}")
    # Numbers of exactly ``width`` digits <= top: a shared prefix, one smaller digit, then any.
    for i, ch in enumerate(top):
        d = int(ch)
        if d > 0:
            rest = width - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            digit = "0" if d == 1 else f"[0-{d - 1}]"
            parts.append(f"{top[:i]}{digit}{tail}")
    parts.append(top)
    return "(?:" + "|".join(parts) + ")"


def _duration() -> str:
    alternatives = []
    for unit, size in _UNIT_US.items():
        whole = len(str(MAX_TS // size)) - 1  # digits that can never pass MAX_TS
        alternatives.append(f"[0-9]{{1,{whole}}}(?:\\.[0-9]{{1,6}})?{unit}")
    return "(?:" + "|".join(alternatives) + ")"


#: µs since the epoch in [0, 2**62), as digits.
INSTANT: Final = below(MAX_TS + 1)
#: A duration whose value stays below 2**62 µs (e.g. ``7d``, ``90s``, ``1.5h``).
DURATION: Final = _duration()
#: A query or body time: an instant or a duration before now.
TIME_PATTERN: Final = f"^(?:{INSTANT}|{DURATION})$"
#: The same, or empty (a query value meaning "not given").
OPTIONAL_TIME_PATTERN: Final = f"^(?:{INSTANT}|{DURATION})?$"
#: A duration of at least one µs (a lookback).
DURATION_PATTERN: Final = f"^{DURATION}$"


#: A node id's key: any non-empty text; in a comma-separated list, without commas.
_KEY = "[\\s\\S]+"
_LISTED_KEY = "[^,]+"


def alternation(names: Iterable[str]) -> str:
    """``(?:a|b|c)`` of the escaped names, longest first (so no name shadows a longer one)."""
    ordered = sorted(set(names), key=lambda n: (-len(n), n))
    return "(?:" + "|".join(re.escape(n) for n in ordered) + ")"


def node_id_pattern(types: Iterable[str]) -> str:
    """``type:key`` with one of ``types``; the key is any non-empty text."""
    return f"^{alternation(types)}:{_KEY}$"


def edge_list_pattern(names: Iterable[str]) -> str:
    """A comma-separated list of ``names``, or empty (every edge type)."""
    one = alternation(names)
    return f"^(?:{one}(?:,{one})*)?$"


def id_list_pattern(types: Iterable[str]) -> str:
    """1 to MAX_IDS comma-separated node ids of ``types`` (a key holds no comma)."""
    one = f"{alternation(types)}:{_LISTED_KEY}"
    return f"^{one}(?:,{one}){{0,{MAX_IDS - 1}}}$"


def optional_type_pattern(types: Iterable[str]) -> str:
    """One of ``types``, or empty."""
    return f"^{alternation(types)}?$"


def optional_node_id_pattern(types: Iterable[str]) -> str:
    """``type:key`` with one of ``types``, or empty."""
    return f"^(?:{alternation(types)}:{_KEY})?$"


def edge_pattern(names: Iterable[str]) -> str:
    """One of ``names``."""
    return f"^{alternation(names)}$"


class NodeIdConvertor(Convertor[str]):
    """The path convertor of node ids (``{node_id:node_id}``): any characters, ``/`` (sent as
    ``%2F``, which servers decode) and line breaks too. Starlette's ``path`` convertor stops at
    a line break, and its default stops at ``/``; a node id may hold both."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("node_id", NodeIdConvertor())

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPENERS = frozenset(b"[{")


def json_too_deep(body: bytes | str, limit: int = MAX_JSON_DEPTH) -> int | None:
    """The nesting depth of a JSON text if it exceeds ``limit`` (brackets outside strings),
    else None; cheap for shallow text.

    It never parses, so it cannot recurse: call it before a decoder that does. Malformed text
    gets an answer too (the decoder refuses it afterwards).
    """
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if data.count(b"[") + data.count(b"{") <= limit:
        return None
    if b'"' in data:
        data = _STRING.sub(b'""', data)
    brackets = data.translate(None, delete=_NON_BRACKETS)
    depth = max(accumulate((1 if b in _OPENERS else -1 for b in brackets), initial=0))
    return depth if depth > limit else None


_NON_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


# -- the shapes before the graph's schema is known -----------------------------------------------
# Routes declare these; the OpenAPI document replaces them by the schema-specific patterns
# (:func:`node_id_pattern` and friends) wherever a value carries the ``x-hopcast`` marker, and
# the query engine enforces those (an unknown type or edge type is a 400).

_TYPE = "[^:,\\x00-\\x1f]+"
#: Any ``type:key``.
NODE_ID: Final = f"^{_TYPE}:{_KEY}$"
#: The same, or empty (not given).
OPTIONAL_NODE_ID: Final = f"^(?:{_TYPE}:{_KEY})?$"
#: A node type name, or empty (every type).
OPTIONAL_NODE_TYPE: Final = f"^(?:{_TYPE})?$"
#: Comma-separated ``type:key`` (keys without commas), 1 to MAX_IDS of them.
NODE_IDS: Final = f"^{_TYPE}:{_LISTED_KEY}(?:,{_TYPE}:{_LISTED_KEY}){{0,{MAX_IDS - 1}}}$"
_NAME = "[a-z0-9_]{1,256}"
#: One edge type name (the characters a schema allows in names).
EDGE: Final = f"^{_NAME}$"
#: Comma-separated edge type names, or empty (every edge type).
EDGES: Final = f"^(?:{_NAME}(?:,{_NAME})*)?$"
#: The journey cursor: URL-safe base64 without padding, of a few dozen bytes.
CURSOR: Final = "^[A-Za-z0-9_-]{1,2048}$"
#: Marker on a declared value whose pattern the document narrows to the graph's schema.
MARK: Final = "x-hopcast"
#: The same, or empty (not given).
OPTIONAL_CURSOR: Final = "^[A-Za-z0-9_-]{0,2048}$"

# -- live events ----------------------------------------------------------------------------------

#: A live event's id (:data:`hopcast.live.schedule.EVENT_ID`): it names channels, paths and keys.
EVENT_ID: Final = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
#: The same, or empty (not given).
OPTIONAL_EVENT_ID: Final = "^(?:[A-Za-z0-9][A-Za-z0-9._:-]{0,63})?$"
#: A segment key or stage name of the payload store (:func:`hopcast.live.payloads.validate_name`).
NAME: Final = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
#: A payload id: the BLAKE2b-128 digest of its bytes, lowercase hex.
PAYLOAD_ID: Final = "^[0-9a-f]{32}$"

#: The characters Python's ``str.strip()`` removes (``str.isspace``): spelled out, because
#: ``\s`` means a different set in ECMA 262 (it adds U+FEFF, lacks U+001C-U+001F and U+0085).
BLANK_CHARS: Final = (
    "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f"
    "\\u205f\\u3000"
)
#: Text with at least one character that is not blank (a title that survives ``strip()``).
NOT_BLANK: Final = f"[^{BLANK_CHARS}]"

_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"  # 0001-9999, as datetime
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_DATE = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_CLOCK = "(?:[01][0-9]|2[0-3])(?::[0-5][0-9](?::[0-5][0-9](?:\\.[0-9]{1,6})?)?)?"
_ZONE = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
#: An ISO-8601 date or date and time (``2026-05-01``, ``2026-05-01T20:00``,
#: ``2026-05-01T20:00:00.5+02:00``): only real calendar dates; no zone means UTC.
ISO_DATETIME: Final = f"{_DATE}(?:T{_CLOCK}{_ZONE}?)?"
#: A schedule time as text: µs since the epoch, a duration from now, or ISO-8601.
SCHEDULE_TIME_PATTERN: Final = f"^(?:{INSTANT}|{DURATION}|{ISO_DATETIME})$"
#: A delay: a duration, ``-`` in front to bring the event forward.
DELAY_PATTERN: Final = f"^-?{DURATION}$"
#: A segment key or stage name, or empty (not given).
OPTIONAL_NAME: Final = "^(?:[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})?$"


def duration_at_most(limit_us: int) -> str:
    """An anchored pattern of the durations (``<number><unit>``, up to six decimals) of at most
    ``limit_us`` µs, in the units that divide the limit (``1.5h``, ``86400s``, ``1d``)."""
    alternatives = []
    for unit, size in _UNIT_US.items():
        if limit_us % size:
            continue
        most = limit_us // size
        alternatives.append(f"{below(most)}(?:\\.[0-9]{{1,6}})?{unit}")
        alternatives.append(f"{most}(?:\\.0{{1,6}})?{unit}")
    return "^(?:" + "|".join(alternatives) + ")$"


#: A prefetch lead as text: a duration of at most a day (the schedule's bound).
PREFETCH_LEAD_PATTERN: Final = duration_at_most(MAX_PREFETCH_LEAD_US)

#: What each declared pattern means, for error messages (a regex is no message).
MEANING: Final = {
    TIME_PATTERN: "a time: µs since the epoch in [0, 2**62) or a duration such as 7d",
    OPTIONAL_TIME_PATTERN: "a time: µs since the epoch in [0, 2**62) or a duration such as 7d",
    DURATION_PATTERN: "a duration such as 100d (at most 2**62 µs)",
    NODE_ID: "a node id 'type:key'",
    NODE_IDS: f"1 to {MAX_IDS} node ids 'type:key', comma-separated",
    OPTIONAL_NODE_ID: "a node id 'type:key'",
    OPTIONAL_NODE_TYPE: "a node type of the graph's schema",
    EDGE: "an edge type name (a-z, 0-9, _)",
    EDGES: "edge type names (a-z, 0-9, _), comma-separated",
    CURSOR: "a cursor this server issued",
    OPTIONAL_CURSOR: "a cursor this server issued",
    EVENT_ID: "a live event id: 1-64 of A-Z a-z 0-9 . _ : - starting with a letter or digit",
    OPTIONAL_EVENT_ID: "a live event id: 1-64 of A-Z a-z 0-9 . _ : - starting with a letter or "
    "digit",
    NAME: "a name: 1-128 of A-Z a-z 0-9 _ . : - starting with a letter or digit",
    PAYLOAD_ID: "a payload id: 32 lowercase hex digits",
    SCHEDULE_TIME_PATTERN: "a time: µs since the epoch, a duration from now such as 10m, or "
    "ISO-8601 such as 2026-05-01T20:00Z",
    DELAY_PATTERN: "a delay such as 5m (-5m brings the event forward)",
    OPTIONAL_NAME: "a name: 1-128 of A-Z a-z 0-9 _ . : - starting with a letter or digit",
    PREFETCH_LEAD_PATTERN: "a prefetch lead: a duration of at most a day such as 30m (units "
    "us, ms, s, m, h, d)",
    NOT_BLANK: "text that is not all blank",
}


def meaning(pattern: str) -> str:
    """What a value matching ``pattern`` is, in words (the pattern itself if unknown)."""
    for text in (pattern, pattern.replace("\\\\", "\\")):  # as declared, or as msgspec shows it
        found = MEANING.get(text.removesuffix("(?!\\n)"))
        if found is not None:
            return found
    return f"text matching {pattern!r}"


def node_id_path(description: str, example: str, mark: str) -> Any:
    """A node-id path parameter: ``type:key``, 3 to :data:`MAX_NODE_ID_CHARS` characters matching
    :data:`NODE_ID`, marked ``mark`` for the document's rules (:data:`MARK`)."""
    return Path(
        description=description,
        examples=[example],
        min_length=3,
        max_length=MAX_NODE_ID_CHARS,
        pattern=NODE_ID,
        json_schema_extra={MARK: mark},
    )

"""Materialised, content-addressed, stage-keyed payloads for live events.

A **payload** is what the devices of one *segment* show for one live event at one *stage*: the
event's title metadata, rows of items, and every artwork reference the device should download
beforehand. Payloads are:

* **canonical** — encoded as JSON with sorted keys (:func:`encode_payload`), so equal content
  gives equal bytes whatever the order in which dicts were built;
* **content-addressed** — the id is the BLAKE2b-128 hex digest of those bytes
  (:func:`payload_id`); quoted, it is the HTTP ETag;
* **immutable** — nothing can change the bytes under an id; new content gets a new id, and
  storing the same content twice is a no-op.

Where a payload is shown lives apart from what it is: the **index** maps ``(event, stage,
segment)`` to a payload id, last-write-wins on a publisher's ``version`` so a stale publisher
cannot roll a newer publication back. Event, stage and segment are not part of the content, so
segments (and stages, and events) whose content happens to be equal share one payload: the
**cardinality** (:meth:`PayloadStore.cardinality`, distinct payload ids of an event) is what the
origin must compute and serve, whatever the number of devices.

KV layout (no namespace TTL; every expiry is set per item)::

    live.payloads  rid = payload id (16 raw bytes)  key = b"body"               value = JSON bytes
    live.index     rid = event id (UTF-8)           key = b"i" stage 0x00 segment
                                                        value = version ‖ size ‖ payload id
                                                    key = b"r" payload id      value = b""
    live.refs      rid = payload id                 key = event id             value = b""

``b"r"`` keys remember every payload ever published for the event, ``live.refs`` every event
that uses a payload; together they let :meth:`PayloadStore.retire` expire exactly what no
other event still needs.

Lifecycle of a payload:

1. :meth:`PayloadStore.put` stores it with an expiry of ``now + retention`` (an orphan that is
   never published disappears on its own).
2. :meth:`PayloadStore.publish` points an index entry at it and pins it (no expiry).
3. :meth:`PayloadStore.retire` (the event ended) makes the event's index entries expire after
   the retention; each of its payloads expires with the last event that uses it.

**Segments** keep cardinality low: a :class:`Segmenter` maps a member to one of a bounded set
of segment keys. Keys are dot-separated from the most to the least general part
(``kids.US.en.b0``) and a lookup falls back part by part to :data:`DEFAULT_SEGMENT`
(:func:`segment_fallbacks`), so a materialiser may publish only the coarser levels.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from hopcast.durations import DAY
from hopcast.errors import ConfigError, InvalidInput, NotFound
from hopcast.kv.base import Item, KVStore, visible

#: KV namespaces (see the module docstring for their layout).
PAYLOADS_NS = "live.payloads"
INDEX_NS = "live.index"
REFS_NS = "live.refs"

#: How long the payloads of an ended event stay servable (and how long an unpublished payload
#: lives): post-event "highlights" rows are watched mostly in the week after a live event, and a
#: week bounds the store's size.
DEFAULT_RETENTION_US = 7 * DAY

#: Largest encoded payload accepted. Every device of a segment downloads it during the prefetch
#: window; ten rows of forty items at ~150 bytes each is ~60 KB, so 256 KiB leaves 4x headroom
#: while keeping a mis-built payload from multiplying the origin's egress.
MAX_PAYLOAD_BYTES = 256 * 1024

#: The segment every fallback chain ends in; a materialiser should always publish it, with
#: content suitable for every audience.
DEFAULT_SEGMENT = "all"

#: Bound on the segments an :class:`AttributeSegmenter` may produce: ~1k segments x a few
#: stages is a few thousand payloads to materialise and store, which keeps the origin's work set
#: by cardinality rather than by the number of devices.
DEFAULT_MAX_SEGMENTS = 1024

#: Country and language codes for values outside a segmenter's known sets (ISO's user-assigned
#: code, which no real country or language uses).
OTHER_COUNTRY = "ZZ"
OTHER_LANGUAGE = "zz"

#: Bytes of the payload id (BLAKE2b-128): collisions are out of reach (2^64 payloads for a 50%
#: chance) and the hex form (32 characters) is a short ETag.
_DIGEST_SIZE = 16
_PAYLOAD_ID = re.compile(r"[0-9a-f]{32}")
#: Event ids, stages and segments: printable, no separators that the index keys use.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
_CODE = re.compile(r"[A-Za-z]{2,8}")
_BODY = b"body"
_ENTRY = b"i"
_EVER = b"r"
_SEP = b"\x00"
#: Index value: publisher version (int64), payload size (uint64), payload id (16 bytes).
_INDEX_VALUE = struct.Struct(">qQ16s")
_MAX_VERSION = (1 << 63) - 1


# -- content --------------------------------------------------------------------------------------


class PayloadItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One tile of a row: a title (or game, or live event) with its artwork and optional badge."""

    id: str
    name: str
    artwork: str
    badge: str | None = None


class Row(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A titled row of items, shown in order."""

    title: str
    items: tuple[PayloadItem, ...]


class TitleMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The live event's own title metadata (what its detail page and hero show)."""

    id: str
    name: str
    artwork: str
    synopsis: str = ""
    badge: str | None = None
    attributes: dict[str, str] = msgspec.field(default_factory=dict)


class Payload(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What one segment's devices show at one stage. Build it with :func:`make_payload`.

    ``artwork`` lists every artwork reference the device should download before the stage
    begins, sorted and without duplicates.
    """

    title: TitleMeta
    rows: tuple[Row, ...]
    artwork: tuple[str, ...]


class PayloadRef(msgspec.Struct, frozen=True):
    """Where a stored payload is: its id (content hash) and its size in bytes."""

    id: str
    size: int

    @property
    def etag(self) -> str:
        """The strong HTTP entity tag: the id in double quotes."""
        return f'"{self.id}"'


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(Payload)


def make_payload(title: TitleMeta, rows: Iterable[Row]) -> Payload:
    """A payload whose artwork list is derived from the title and the rows' items.

    Returns:
        A :class:`Payload` with ``artwork`` = the sorted, de-duplicated artwork references.
    """
    rows = tuple(rows)
    refs = {title.artwork} | {item.artwork for row in rows for item in row.items}
    return Payload(title=title, rows=rows, artwork=tuple(sorted(refs)))


def encode_payload(payload: Payload) -> bytes:
    """The canonical bytes: JSON, keys sorted at every level, no whitespace."""
    return _encoder.encode(payload)


def decode_payload(data: bytes) -> Payload:
    """Decode and type-check payload bytes (as served to devices).

    Raises:
        InvalidInput: if ``data`` is not a well-formed payload.
    """
    try:
        return _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidInput(f"malformed payload: {exc}") from exc


def payload_id(data: bytes) -> str:
    """The content address of canonical payload bytes: BLAKE2b-128, lowercase hex."""
    return hashlib.blake2b(data, digest_size=_DIGEST_SIZE).hexdigest()


def validate_name(kind: str, value: str) -> str:
    """Check an event id, stage or segment key; returns it unchanged.

    Raises:
        InvalidInput: unless ``value`` is 1-128 characters of ``A-Z a-z 0-9 _ . : -``, starting
            with a letter or digit.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '_', '.', ':' or '-'"
        )
    return value


def segment_fallbacks(segment: str) -> list[str]:
    """The segments a lookup tries, from ``segment`` itself to :data:`DEFAULT_SEGMENT`.

    ``"kids.US.en.b0"`` → ``["kids.US.en.b0", "kids.US.en", "kids.US", "kids", "all"]``.
    """
    parts = segment.split(".")
    chain = [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
    if chain[-1] != DEFAULT_SEGMENT:
        chain.append(DEFAULT_SEGMENT)
    return chain


def _check(event_id: str, stage: str | None = None, segment: str | None = None) -> None:
    validate_name("event id", event_id)
    if stage is not None:
        validate_name("stage", stage)
    if segment is not None:
        validate_name("segment", segment)


def _entry_key(stage: str, segment: str) -> bytes:
    return _ENTRY + stage.encode() + _SEP + segment.encode()


def _parse_entry(item: Item) -> tuple[str, str, int, PayloadRef]:
    stage, _, segment = item.key[len(_ENTRY) :].decode().partition("\x00")
    version, size, raw = _INDEX_VALUE.unpack(item.value)
    return stage, segment, version, PayloadRef(raw.hex(), size)


def _raw_id(pid: str) -> bytes | None:
    return bytes.fromhex(pid) if isinstance(pid, str) and _PAYLOAD_ID.fullmatch(pid) else None


# -- the store ------------------------------------------------------------------------------------


class PayloadStore:
    """Content-addressed payloads and the ``(event, stage, segment)`` index, over a KV store.

    Every method is one KV transaction. ``now`` (µs since the epoch) decides what has expired;
    the store never reads the clock.
    """

    def __init__(self, kv: KVStore, retention_us: int = DEFAULT_RETENTION_US) -> None:
        """Declare the namespaces on ``kv``.

        Args:
            retention_us: how long the payloads of a retired event, and unpublished payloads,
                stay readable.

        Raises:
            ConfigError: if ``retention_us`` is not positive.
        """
        if retention_us <= 0:
            raise ConfigError(f"payload retention must be positive, got {retention_us} µs")
        self._kv = kv
        self._retention = retention_us
        kv.configure_many({PAYLOADS_NS: None, INDEX_NS: None, REFS_NS: None})

    @property
    def retention_us(self) -> int:
        """How long retired and unpublished payloads stay readable."""
        return self._retention

    def put(self, payload: Payload, now: int) -> PayloadRef:
        """Store a payload under its content hash.

        Content never changes: if the payload is already stored, nothing is written — except
        that an unpublished one gets its expiry moved to ``now + retention``.

        Returns:
            The payload's id and size; :meth:`publish` it to make devices see it.

        Raises:
            InvalidInput: if the encoded payload exceeds :data:`MAX_PAYLOAD_BYTES`.
        """
        data = encode_payload(payload)
        if len(data) > MAX_PAYLOAD_BYTES:
            raise InvalidInput(
                f"payload is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES} "
                "(fewer rows or items per row)"
            )
        pid = payload_id(data)
        rid = bytes.fromhex(pid)
        with self._kv.writer() as w:
            old = w.get(PAYLOADS_NS, rid, _BODY)
            stale = old is None or not visible(old, now)
            if stale or (old is not None and 0 < old.expires_at < now + self._retention):
                w.put(PAYLOADS_NS, rid, _BODY, data, now, 0, ttl_us=self._retention)
        return PayloadRef(pid, len(data))

    def get(self, payload_id: str, now: int) -> bytes | None:
        """The payload's canonical bytes, or None if it is unknown, expired or not an id."""
        rid = _raw_id(payload_id)
        if rid is None:
            return None
        item = self._kv.get(PAYLOADS_NS, rid, _BODY, now)
        return None if item is None else item.value

    def publish(
        self, event_id: str, stage: str, segment: str, payload_id: str, version: int, now: int
    ) -> bool:
        """Point ``(event, stage, segment)`` at a stored payload, if ``version`` is newer.

        ``version`` is any number that grows with each publication for the key (the schedule
        version, a materialisation time in µs); an equal or lower version is a replay or a stale
        publisher and changes nothing.

        Steps (one transaction):
            1. check the payload is stored and readable at ``now``;
            2. compare versions with the current entry (last-write-wins);
            3. write the entry, remember the payload for the event (both directions) and pin the
               payload (no expiry) until the event is retired.

        Returns:
            True if the index changed, False for a stale or repeated version.

        Raises:
            InvalidInput: for a malformed name, payload id or version.
            NotFound: if the payload is not stored (``put`` it first) or has expired.
        """
        _check(event_id, stage, segment)
        rid = _raw_id(payload_id)
        if rid is None:
            raise InvalidInput(f"invalid payload id {payload_id!r}: expected 32 hex digits")
        if isinstance(version, bool) or not isinstance(version, int):
            raise InvalidInput(f"version must be an integer, got {version!r}")
        if not 0 <= version <= _MAX_VERSION:
            raise InvalidInput(f"version must be in [0, 2^63), got {version}")
        erid = event_id.encode()
        key = _entry_key(stage, segment)
        with self._kv.writer() as w:
            # 1. the payload must exist
            body = w.get(PAYLOADS_NS, rid, _BODY)
            if body is None or not visible(body, now):
                raise NotFound(f"payload {payload_id} is not stored (put it before publishing)")
            # 2. last-write-wins on version
            current = w.get(INDEX_NS, erid, key)
            if current is not None and _INDEX_VALUE.unpack(current.value)[0] >= version:
                return False
            # 3. entry, references, pin
            value = _INDEX_VALUE.pack(version, len(body.value), rid)
            w.put(INDEX_NS, erid, key, value, now, 0)
            w.put(INDEX_NS, erid, _EVER + rid, b"", now, 0)
            w.put(REFS_NS, rid, erid, b"", now, 0)
            if body.expires_at != 0:
                w.put(PAYLOADS_NS, rid, _BODY, body.value, now, 0)
        return True

    def lookup(self, event_id: str, stage: str, segment: str, now: int) -> PayloadRef | None:
        """The payload published for exactly this key, or None (no fallback).

        Raises:
            InvalidInput: for a malformed name (so do the other read methods).
        """
        _check(event_id, stage, segment)
        item = self._kv.get(INDEX_NS, event_id.encode(), _entry_key(stage, segment), now)
        return None if item is None else _parse_entry(item)[3]

    def resolve(self, event_id: str, stage: str, segment: str, now: int) -> PayloadRef | None:
        """The payload a device of ``segment`` gets: the first of :func:`segment_fallbacks`
        that has one, or None."""
        _check(event_id, stage, segment)
        erid = event_id.encode()
        with self._kv.reader() as r:
            for candidate in segment_fallbacks(segment):
                item = r.get(INDEX_NS, erid, _entry_key(stage, candidate), now)
                if item is not None:
                    return _parse_entry(item)[3]
        return None

    def has_stage(self, event_id: str, stage: str, now: int) -> bool:
        """Whether any segment of ``event_id`` has a payload published for ``stage``."""
        _check(event_id, stage)
        prefix = _ENTRY + stage.encode() + _SEP
        with self._kv.reader() as r:
            for _ in r.scan(INDEX_NS, event_id.encode(), now, prefix, _successor(prefix)):
                return True
        return False

    def manifest(self, event_id: str, now: int) -> dict[str, dict[str, PayloadRef]]:
        """Every published entry of an event: ``{stage: {segment: ref}}`` (sorted keys)."""
        _check(event_id)
        out: dict[str, dict[str, PayloadRef]] = {}
        with self._kv.reader() as r:
            for item in r.scan(INDEX_NS, event_id.encode(), now, _ENTRY, _successor(_ENTRY)):
                stage, segment, _, ref = _parse_entry(item)
                out.setdefault(stage, {})[segment] = ref
        return out

    def segment_manifest(self, event_id: str, segment: str, now: int) -> dict[str, PayloadRef]:
        """What a device of ``segment`` prefetches: ``{stage: ref}`` for every stage of the
        event, each resolved through :func:`segment_fallbacks` (stages without any match are
        left out)."""
        _check(event_id, segment=segment)
        chain = segment_fallbacks(segment)
        out: dict[str, PayloadRef] = {}
        for stage, by_segment in self.manifest(event_id, now).items():
            for candidate in chain:
                ref = by_segment.get(candidate)
                if ref is not None:
                    out[stage] = ref
                    break
        return out

    def cardinality(self, event_id: str, now: int) -> int:
        """Distinct payload ids the event's current entries point at, across stages and
        segments: the number of different responses the origin serves for it."""
        return len(
            {ref.id for seg in self.manifest(event_id, now).values() for ref in seg.values()}
        )

    def retire(self, event_id: str, now: int) -> int:
        """Let an ended event's entries and payloads expire after the retention.

        Steps (one transaction):
            1. give every index entry and payload reference of the event an expiry of
               ``now + retention``;
            2. for each payload the event ever published, unless another event still pins it,
               expire it with the latest of its references.

        Publishing for the event afterwards pins what it touches again.

        Returns:
            How many payloads received an expiry.
        """
        _check(event_id)
        erid = event_id.encode()
        expires_at = now + self._retention
        retired = 0
        with self._kv.writer() as w:
            # 1. entries and the event's side of the references
            items = [i for i in w.scan(INDEX_NS, erid) if visible(i, now)]
            used: list[bytes] = []
            for item in items:
                w.put(INDEX_NS, erid, item.key, item.value, now, 0, ttl_us=self._retention)
                if item.key.startswith(_EVER):
                    used.append(item.key[len(_EVER) :])
            # 2. payloads that no other event pins
            for rid in used:
                w.put(REFS_NS, rid, erid, b"", now, 0, ttl_us=self._retention)
                refs = [i for i in w.scan(REFS_NS, rid) if not i.tombstone]
                if any(ref.expires_at == 0 for ref in refs):
                    continue
                body = w.get(PAYLOADS_NS, rid, _BODY)
                if body is None or not visible(body, now):
                    continue
                last = max([expires_at, *(ref.expires_at for ref in refs)])
                w.put(PAYLOADS_NS, rid, _BODY, body.value, now, 0, ttl_us=max(1, last - now))
                retired += 1
        return retired


def _successor(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


# -- segments -------------------------------------------------------------------------------------


class Member(msgspec.Struct, frozen=True):
    """What a segmenter knows of a member: the profile and its attributes."""

    profile_id: str
    country: str = ""
    language: str = ""
    kids: bool = False


class Segmenter(Protocol):
    """Maps a member to a segment key (deterministic: the same member, the same key)."""

    def __call__(self, member: Member) -> str:
        """The member's segment key (see :func:`validate_name` for the allowed characters)."""
        ...


@dataclass(frozen=True, slots=True)
class SegmentTraits:
    """The parts of an :class:`AttributeSegmenter` key."""

    kids: bool
    country: str
    language: str
    bucket: int


#: Audience parts of a segment key.
_KIDS = "kids"
_ADULT = "adult"


@dataclass(frozen=True)
class AttributeSegmenter:
    """Segments by audience, country and language, plus a hash bucket of the profile id.

    Keys read ``<audience>.<country>.<language>.b<bucket>`` — ``kids.US.en.b0``,
    ``adult.BR.pt.b3`` — with the audience first so that a kids key falls back to ``kids``
    before it falls back to :data:`DEFAULT_SEGMENT`. Countries and languages outside the known
    sets become :data:`OTHER_COUNTRY` / :data:`OTHER_LANGUAGE`. Buckets split a group
    deterministically (e.g. for row-order experiments): BLAKE2b of the profile id.

    Args:
        countries: known country codes (normalised to upper case).
        languages: known language codes (normalised to lower case).
        buckets: hash buckets per group, >= 1.
        max_segments: refuse a configuration that could produce more segments than this.

    Raises:
        ConfigError: for a malformed code, ``buckets < 1``, or too many possible segments.
    """

    countries: frozenset[str]
    languages: frozenset[str]
    buckets: int = 1
    max_segments: int = DEFAULT_MAX_SEGMENTS

    def __post_init__(self) -> None:
        for code in (*self.countries, *self.languages):
            if not isinstance(code, str) or not _CODE.fullmatch(code):
                raise ConfigError(f"invalid country or language code {code!r}: use 2-8 letters")
        countries = frozenset(c.upper() for c in self.countries) | {OTHER_COUNTRY}
        languages = frozenset(lang.lower() for lang in self.languages) | {OTHER_LANGUAGE}
        if self.buckets < 1:
            raise ConfigError(f"buckets must be at least 1, got {self.buckets}")
        count = 2 * len(countries) * len(languages) * self.buckets
        if count > self.max_segments:
            raise ConfigError(
                f"{count} possible segments exceed max_segments={self.max_segments} "
                "(fewer countries, languages or buckets)"
            )
        object.__setattr__(self, "countries", countries)
        object.__setattr__(self, "languages", languages)

    def __call__(self, member: Member) -> str:
        """The member's segment key."""
        country = member.country.upper()
        language = member.language.lower()
        return self.key(
            member.kids,
            country if country in self.countries else OTHER_COUNTRY,
            language if language in self.languages else OTHER_LANGUAGE,
            self._bucket(member.profile_id),
        )

    @staticmethod
    def key(kids: bool, country: str, language: str, bucket: int) -> str:
        """Compose a segment key from its parts."""
        return f"{_KIDS if kids else _ADULT}.{country}.{language}.b{bucket}"

    @staticmethod
    def parse(segment: str) -> SegmentTraits | None:
        """The parts of a key this class produced, or None for any other key."""
        parts = segment.split(".")
        if len(parts) != 4 or parts[0] not in (_KIDS, _ADULT):
            return None
        bucket = parts[3]
        if not (bucket.startswith("b") and bucket[1:].isdigit()):
            return None
        return SegmentTraits(parts[0] == _KIDS, parts[1], parts[2], int(bucket[1:]))

    def segments(self) -> list[str]:
        """Every key this segmenter can produce, sorted: what a materialiser iterates."""
        return sorted(
            self.key(kids, c, lang, b)
            for kids in (False, True)
            for c in self.countries
            for lang in self.languages
            for b in range(self.buckets)
        )

    def _bucket(self, profile_id: str) -> int:
        if self.buckets == 1:
            return 0
        digest = hashlib.blake2b(profile_id.encode(), digest_size=8, person=b"hc-segment")
        return int.from_bytes(digest.digest(), "big") % self.buckets

"""Payloads: content addressing, immutability, the LWW index, manifests, cardinality, retention,
segments. Store tests run on every KV backend (the ``kv`` fixture: memory and LMDB)."""

from __future__ import annotations

import msgspec
import pytest

from hopcast.durations import DAY, SECOND
from hopcast.errors import ConfigError, InvalidInput, NotFound
from hopcast.kv import KVStore
from hopcast.live.fixtures import (
    DEMO_STAGES,
    demo_segmenter,
    fixture_payload,
    materialise_fixture,
)
from hopcast.live.payloads import (
    DEFAULT_SEGMENT,
    MAX_PAYLOAD_BYTES,
    AttributeSegmenter,
    Member,
    Payload,
    PayloadItem,
    PayloadRef,
    PayloadStore,
    Row,
    SegmentTraits,
    TitleMeta,
    decode_payload,
    encode_payload,
    make_payload,
    payload_id,
    segment_fallbacks,
)

NOW = 1_700_000_000 * SECOND
EVENT = "final-2025"


def payload(badge: str | None = "Live", attributes: dict[str, str] | None = None) -> Payload:
    title = TitleMeta(
        id="live:final",
        name="The Final",
        artwork="art/final/hero.jpg",
        badge=badge,
        attributes={"genre": "sports", "rating": "TV-G"} if attributes is None else attributes,
    )
    rows = [
        Row("Watch now", (PayloadItem("live:final", "The Final", "art/final/tile.jpg", badge),)),
        Row(
            "Popular",
            (
                PayloadItem("title:1", "One", "art/1.jpg"),
                PayloadItem("title:2", "Two", "art/1.jpg"),
            ),
        ),
    ]
    return make_payload(title, rows)


# -- content --------------------------------------------------------------------------------------


def test_make_payload_lists_every_artwork_once_and_sorted() -> None:
    assert payload().artwork == ("art/1.jpg", "art/final/hero.jpg", "art/final/tile.jpg")


def test_equal_content_has_equal_bytes_and_id_whatever_the_dict_insertion_order() -> None:
    a = payload(attributes={"genre": "sports", "rating": "TV-G"})
    b = payload(attributes={"rating": "TV-G", "genre": "sports"})
    assert list(a.title.attributes) != list(b.title.attributes)
    assert encode_payload(a) == encode_payload(b)
    # the same payload decoded from JSON written with another key order encodes identically
    title = msgspec.to_builtins(a.title)
    reordered = {
        "title": dict(reversed(list(title.items()))),
        "rows": msgspec.to_builtins(a.rows),
        "artwork": list(a.artwork),
    }
    shuffled = msgspec.json.encode(reordered)
    assert shuffled != encode_payload(a)
    assert encode_payload(decode_payload(shuffled)) == encode_payload(a)


def test_the_canonical_encoding_sorts_keys_at_every_level() -> None:
    data = encode_payload(payload())
    assert data.startswith(b'{"artwork":[')
    assert b'"attributes":{"genre":"sports","rating":"TV-G"}' in data
    assert b'{"artwork":"art/final/tile.jpg","badge":"Live","id":"live:final"' in data


def test_different_content_has_a_different_id() -> None:
    assert payload_id(encode_payload(payload("Live"))) != payload_id(
        encode_payload(payload("Soon"))
    )
    assert len(payload_id(b"x")) == 32


def test_malformed_payload_bytes_are_rejected_as_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        decode_payload(b'{"title": 1}')
    with pytest.raises(InvalidInput):
        decode_payload(b"not json")


# -- the store ------------------------------------------------------------------------------------


def test_a_stored_payload_is_served_by_its_content_hash(kv: KVStore) -> None:
    store = PayloadStore(kv)
    data = encode_payload(payload())
    ref = store.put(payload(), NOW)
    assert ref == PayloadRef(payload_id(data), len(data))
    assert ref.etag == f'"{ref.id}"'
    assert store.get(ref.id, NOW) == data


def test_storing_the_same_content_twice_is_a_no_op(kv: KVStore) -> None:
    store = PayloadStore(kv)
    first = store.put(payload(), NOW)
    store.publish(EVENT, "live", "all", first.id, 1, NOW)
    item = kv.get("live.payloads", bytes.fromhex(first.id), b"body", NOW)
    again = store.put(payload(), NOW + SECOND)
    assert again == first
    assert kv.get("live.payloads", bytes.fromhex(first.id), b"body", NOW + SECOND) == item


def test_new_content_gets_a_new_id_and_leaves_the_old_bytes_intact(kv: KVStore) -> None:
    store = PayloadStore(kv)
    old = store.put(payload("Soon"), NOW)
    new = store.put(payload("Live"), NOW)
    assert old.id != new.id
    assert store.get(old.id, NOW) == encode_payload(payload("Soon"))
    assert store.get(new.id, NOW) == encode_payload(payload("Live"))


def test_unknown_and_malformed_ids_read_as_none(kv: KVStore) -> None:
    store = PayloadStore(kv)
    assert store.get("0" * 32, NOW) is None
    assert store.get("not-an-id", NOW) is None
    assert store.get("A" * 32, NOW) is None


def test_an_oversized_payload_is_refused(kv: KVStore) -> None:
    big = make_payload(
        TitleMeta("live:x", "X", "art/x.jpg", synopsis="s" * MAX_PAYLOAD_BYTES), rows=[]
    )
    with pytest.raises(InvalidInput, match="limit"):
        PayloadStore(kv).put(big, NOW)


def test_publish_points_the_key_at_the_payload(kv: KVStore) -> None:
    store = PayloadStore(kv)
    ref = store.put(payload(), NOW)
    assert store.lookup(EVENT, "live", "kids.US.en.b0", NOW) is None
    assert store.publish(EVENT, "live", "kids.US.en.b0", ref.id, 1, NOW) is True
    assert store.lookup(EVENT, "live", "kids.US.en.b0", NOW) == ref
    assert store.lookup(EVENT, "ended", "kids.US.en.b0", NOW) is None
    assert store.lookup("other-event", "live", "kids.US.en.b0", NOW) is None


def test_publish_is_last_write_wins_on_version(kv: KVStore) -> None:
    store = PayloadStore(kv)
    v1 = store.put(payload("Soon"), NOW)
    v2 = store.put(payload("Live"), NOW)
    assert store.publish(EVENT, "live", "all", v1.id, 1, NOW)
    assert store.publish(EVENT, "live", "all", v2.id, 2, NOW)
    # a stale publisher (older version) and a replay (same version) change nothing
    assert store.publish(EVENT, "live", "all", v1.id, 1, NOW + SECOND) is False
    assert store.publish(EVENT, "live", "all", v1.id, 2, NOW + SECOND) is False
    assert store.lookup(EVENT, "live", "all", NOW) == v2
    assert store.publish(EVENT, "live", "all", v1.id, 3, NOW + SECOND) is True
    assert store.lookup(EVENT, "live", "all", NOW) == v1


def test_publishing_a_payload_that_is_not_stored_is_not_found(kv: KVStore) -> None:
    with pytest.raises(NotFound, match="put it before"):
        PayloadStore(kv).publish(EVENT, "live", "all", "0" * 32, 1, NOW)


@pytest.mark.parametrize(
    ("event", "stage", "segment", "pid", "version"),
    [
        ("bad event", "live", "all", "0" * 32, 1),
        (EVENT, "li\x00ve", "all", "0" * 32, 1),
        (EVENT, "live", "", "0" * 32, 1),
        (EVENT, "live", "all", "xyz", 1),
        (EVENT, "live", "all", "0" * 32, -1),
        (EVENT, "live", "all", "0" * 32, 1 << 63),
        (EVENT, "live", "all", "0" * 32, True),
    ],
)
def test_publish_rejects_malformed_input(
    kv: KVStore, event: str, stage: str, segment: str, pid: str, version: int
) -> None:
    with pytest.raises(InvalidInput):
        PayloadStore(kv).publish(event, stage, segment, pid, version, NOW)


def test_reads_reject_malformed_names(kv: KVStore) -> None:
    store = PayloadStore(kv)
    with pytest.raises(InvalidInput):
        store.lookup(EVENT, "live", "a b", NOW)
    with pytest.raises(InvalidInput):
        store.manifest("x" * 200, NOW)


def test_resolve_falls_back_from_the_segment_to_coarser_ones(kv: KVStore) -> None:
    store = PayloadStore(kv)
    kids = store.put(payload("Kids"), NOW)
    everyone = store.put(payload("All"), NOW)
    store.publish(EVENT, "live", "kids", kids.id, 1, NOW)
    store.publish(EVENT, "live", DEFAULT_SEGMENT, everyone.id, 1, NOW)
    assert store.resolve(EVENT, "live", "kids.US.en.b0", NOW) == kids
    assert store.resolve(EVENT, "live", "adult.US.en.b0", NOW) == everyone
    assert store.resolve(EVENT, "ended", "kids.US.en.b0", NOW) is None


def test_segment_fallbacks_drop_one_part_at_a_time_down_to_all() -> None:
    assert segment_fallbacks("kids.US.en.b0") == [
        "kids.US.en.b0",
        "kids.US.en",
        "kids.US",
        "kids",
        "all",
    ]
    assert segment_fallbacks("all") == ["all"]


def test_manifest_lists_every_stage_and_segment_of_the_event(kv: KVStore) -> None:
    store = PayloadStore(kv)
    soon = store.put(payload("Soon"), NOW)
    live = store.put(payload("Live"), NOW)
    store.publish(EVENT, "prefetch", "all", soon.id, 1, NOW)
    store.publish(EVENT, "live", "all", live.id, 1, NOW)
    store.publish(EVENT, "live", "kids", soon.id, 1, NOW)
    store.publish("another", "live", "all", live.id, 1, NOW)
    assert store.manifest(EVENT, NOW) == {
        "live": {"all": live, "kids": soon},
        "prefetch": {"all": soon},
    }
    assert store.segment_manifest(EVENT, "kids.US.en.b0", NOW) == {"live": soon, "prefetch": soon}
    assert store.segment_manifest(EVENT, "adult.US.en.b0", NOW) == {"live": live, "prefetch": soon}
    assert store.manifest("nothing-here", NOW) == {}


def test_cardinality_counts_distinct_payloads_across_stages_and_segments(kv: KVStore) -> None:
    store = PayloadStore(kv)
    soon = store.put(payload("Soon"), NOW)
    live = store.put(payload("Live"), NOW)
    assert store.cardinality(EVENT, NOW) == 0
    for segment in ("all", "kids", "adult.US"):
        store.publish(EVENT, "scheduled", segment, soon.id, 1, NOW)
        store.publish(EVENT, "prefetch", segment, soon.id, 1, NOW)
        store.publish(EVENT, "live", segment, live.id, 1, NOW)
    assert store.cardinality(EVENT, NOW) == 2
    # repointing every live entry at the pre-event payload leaves one distinct payload
    for segment in ("all", "kids", "adult.US"):
        store.publish(EVENT, "live", segment, soon.id, 2, NOW)
    assert store.cardinality(EVENT, NOW) == 1


def test_an_unpublished_payload_expires_after_the_retention(kv: KVStore) -> None:
    store = PayloadStore(kv, retention_us=DAY)
    ref = store.put(payload(), NOW)
    assert store.get(ref.id, NOW + DAY - 1) is not None
    assert store.get(ref.id, NOW + DAY) is None


def test_putting_an_unpublished_payload_again_extends_its_life(kv: KVStore) -> None:
    store = PayloadStore(kv, retention_us=DAY)
    ref = store.put(payload(), NOW)
    store.put(payload(), NOW + DAY // 2)
    assert store.get(ref.id, NOW + DAY) is not None
    assert store.get(ref.id, NOW + DAY + DAY // 2) is None


def test_a_published_payload_is_kept_until_its_event_is_retired(kv: KVStore) -> None:
    store = PayloadStore(kv, retention_us=DAY)
    ref = store.put(payload(), NOW)
    store.publish(EVENT, "live", "all", ref.id, 1, NOW)
    later = NOW + 30 * DAY
    assert store.get(ref.id, later) is not None
    assert store.retire(EVENT, later) == 1
    assert store.lookup(EVENT, "live", "all", later + DAY - 1) == ref
    assert store.get(ref.id, later + DAY - 1) is not None
    assert store.lookup(EVENT, "live", "all", later + DAY) is None
    assert store.get(ref.id, later + DAY) is None
    assert store.cardinality(EVENT, later + DAY) == 0
    assert kv.sweep(later + DAY) > 0


def test_retiring_an_event_keeps_payloads_another_event_still_uses(kv: KVStore) -> None:
    store = PayloadStore(kv, retention_us=DAY)
    shared = store.put(payload("Shared"), NOW)
    own = store.put(payload("Own"), NOW)
    replaced = store.put(payload("Replaced"), NOW)
    store.publish(EVENT, "live", "all", replaced.id, 1, NOW)
    store.publish(EVENT, "live", "all", own.id, 2, NOW)
    store.publish(EVENT, "ended", "all", shared.id, 1, NOW)
    store.publish("rerun", "live", "all", shared.id, 1, NOW)
    # own and the replaced payload expire with the event; the shared one stays pinned
    assert store.retire(EVENT, NOW) == 2
    after = NOW + DAY
    assert store.get(own.id, after) is None
    assert store.get(replaced.id, after) is None
    assert store.get(shared.id, after + 10 * DAY) is not None
    assert store.lookup("rerun", "live", "all", after) == shared
    # once the other event is retired too, the shared payload expires after its retention
    store.retire("rerun", after)
    assert store.get(shared.id, after + DAY - 1) is not None
    assert store.get(shared.id, after + DAY) is None


def test_publishing_after_a_retire_pins_the_payload_again(kv: KVStore) -> None:
    store = PayloadStore(kv, retention_us=DAY)
    ref = store.put(payload(), NOW)
    store.publish(EVENT, "live", "all", ref.id, 1, NOW)
    store.retire(EVENT, NOW)
    store.publish(EVENT, "ended", "all", ref.id, 1, NOW + SECOND)
    assert store.get(ref.id, NOW + 10 * DAY) is not None
    assert store.lookup(EVENT, "ended", "all", NOW + 10 * DAY) == ref
    assert store.lookup(EVENT, "live", "all", NOW + 10 * DAY) is None


def test_retention_must_be_positive(kv: KVStore) -> None:
    with pytest.raises(ConfigError):
        PayloadStore(kv, retention_us=0)


def test_a_store_reopened_on_the_same_kv_sees_what_was_published(kv: KVStore) -> None:
    ref = PayloadStore(kv).put(payload(), NOW)
    PayloadStore(kv).publish(EVENT, "live", "all", ref.id, 1, NOW)
    assert PayloadStore(kv).lookup(EVENT, "live", "all", NOW) == ref


# -- segments -------------------------------------------------------------------------------------


def test_the_attribute_segmenter_keys_by_audience_country_language_and_bucket() -> None:
    segmenter = AttributeSegmenter(frozenset({"us", "BR"}), frozenset({"EN", "pt"}), buckets=4)
    key = segmenter(Member("profile:1", country="us", language="en", kids=True))
    assert key.startswith("kids.US.en.b")
    assert segmenter(Member("profile:1", country="US", language="EN", kids=True)) == key
    assert segmenter(Member("profile:2", country="NZ", language="mi")).startswith("adult.ZZ.zz.b")
    assert AttributeSegmenter.parse(key) == SegmentTraits(True, "US", "en", int(key[-1]))
    assert AttributeSegmenter.parse("all") is None
    assert AttributeSegmenter.parse("kids.US.en.x1") is None


def test_buckets_split_profiles_deterministically_and_roughly_evenly() -> None:
    segmenter = AttributeSegmenter(frozenset({"US"}), frozenset({"en"}), buckets=4)
    keys = [segmenter(Member(f"profile:{i}", "US", "en")) for i in range(4000)]
    assert keys == [segmenter(Member(f"profile:{i}", "US", "en")) for i in range(4000)]
    counts = {b: sum(k.endswith(f".b{b}") for k in keys) for b in range(4)}
    assert all(900 <= n <= 1100 for n in counts.values()), counts


def test_the_segmenter_produces_only_its_listed_segments() -> None:
    segmenter = AttributeSegmenter(frozenset({"US", "DE"}), frozenset({"en", "de"}), buckets=2)
    listed = segmenter.segments()
    assert len(listed) == 2 * 3 * 3 * 2
    members = [
        Member(f"p{i}", country, language, kids)
        for i in range(50)
        for country in ("US", "DE", "FR")
        for language in ("en", "de", "fr")
        for kids in (False, True)
    ]
    assert {segmenter(m) for m in members} <= set(listed)


def test_a_segmenter_that_could_exceed_max_segments_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_segments"):
        AttributeSegmenter(frozenset({"US", "DE"}), frozenset({"en"}), buckets=100, max_segments=64)
    with pytest.raises(ConfigError):
        AttributeSegmenter(frozenset({"U S"}), frozenset({"en"}))
    with pytest.raises(ConfigError):
        AttributeSegmenter(frozenset({"US"}), frozenset({"en"}), buckets=0)


# -- the demo fixture -----------------------------------------------------------------------------


def test_the_fixture_publishes_every_stage_for_every_segment_through_the_store(
    kv: KVStore,
) -> None:
    store = PayloadStore(kv)
    segments = demo_segmenter().segments()
    out = materialise_fixture(store, EVENT, segments, NOW)
    assert set(out) == set(DEMO_STAGES)
    manifest = store.manifest(EVENT, NOW)
    assert manifest == out
    assert all(set(by_segment) == {*segments, DEFAULT_SEGMENT} for by_segment in out.values())
    # content depends on stage kind, audience and language only: far fewer payloads than keys
    keys = len(DEMO_STAGES) * (len(segments) + 1)
    assert store.cardinality(EVENT, NOW) < keys / 10
    assert out["scheduled"]["kids.US.en.b0"] == out["prefetch"]["kids.US.en.b0"]
    assert out["live"]["kids.US.en.b0"] == out["live"]["kids.GB.en.b0"]
    assert out["live"]["kids.US.en.b0"] != out["live"]["adult.US.en.b0"]


def test_the_fixture_is_deterministic_and_idempotent(kv: KVStore) -> None:
    store = PayloadStore(kv)
    first = materialise_fixture(store, EVENT, ["adult.DE.de.b0"], NOW)
    again = materialise_fixture(store, EVENT, ["adult.DE.de.b0"], NOW + SECOND)
    assert first == again


def test_the_fixture_shows_a_live_badge_only_while_live() -> None:
    live = fixture_payload(EVENT, "live", "adult.US.en.b0")
    soon = fixture_payload(EVENT, "prefetch", "adult.US.en.b0")
    ended = fixture_payload(EVENT, "ended", "adult.US.en.b0")
    assert (live.rows[0].title, live.rows[0].items[0].badge) == ("Watch now", "Live")
    assert (soon.rows[0].title, soon.rows[0].items[0].badge) == ("Coming up", "Soon")
    assert ended.rows[0].title == "Highlights"
    assert all(item.badge is None for item in ended.rows[0].items)
    assert fixture_payload(EVENT, "live", "adult.DE.de.b0").rows[0].title == "Jetzt ansehen"

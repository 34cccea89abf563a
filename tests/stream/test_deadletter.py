"""The dead-letter model and its KV-backed store, on every KV backend (the ``kv`` fixture)."""

from __future__ import annotations

import pytest

from hopcast.errors import InvalidCursor
from hopcast.kv import KVStore
from hopcast.stream.deadletter import (
    DEADLETTER_NS,
    DeadLetter,
    DeadLetterStore,
    Reason,
    dead_letter_id,
)
from hopcast.stream.record import Position


def letter(
    offset: int,
    time: int,
    reason: str = Reason.MALFORMED_JSON,
    source: str = "browse",
    payload: bytes = b"{oops",
) -> DeadLetter:
    return DeadLetter(
        reason=reason,
        message=f"bad record {offset}",
        payload=payload,
        source=source,
        position=Position("0", offset),
        time=time,
        stage="decode",
        mapping="browse.yaml",
        key=b"k",
        event_time=None,
    )


@pytest.fixture
def store(kv: KVStore) -> DeadLetterStore:
    return DeadLetterStore(kv)


def test_a_dead_letter_round_trips_byte_for_byte(store: DeadLetterStore) -> None:
    d = letter(1, 100, payload=b"\xff\x00raw")
    store.put(d)
    assert store.get(d.id) == d
    assert d.id == dead_letter_id("browse", Position("0", 1))
    assert len(d.id) == 16


def test_the_id_is_the_records_source_and_position(store: DeadLetterStore) -> None:
    assert letter(1, 1).id == letter(1, 2, reason=Reason.OVERSIZE).id
    assert letter(1, 1).id != letter(2, 1).id
    assert letter(1, 1).id != letter(1, 1, source="games").id


def test_a_record_that_fails_again_replaces_its_dead_letter(store: DeadLetterStore) -> None:
    store.put(letter(1, 100))
    store.put(letter(1, 200, reason=Reason.SCHEMA_VIOLATION))
    assert store.count() == 1
    assert store.count(reason=Reason.MALFORMED_JSON) == 0
    assert [d.reason for d in store.list().items] == [Reason.SCHEMA_VIOLATION]


def test_list_pages_newest_first_with_a_cursor(store: DeadLetterStore) -> None:
    store.put(*(letter(i, 1000 + i) for i in range(7)))
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(limit=3, cursor=cursor)
        pages += 1
        seen += [d.position.offset for d in page.items]
        if page.cursor is None:
            break
        cursor = page.cursor
    assert seen == [6, 5, 4, 3, 2, 1, 0]
    assert pages == 3
    assert [d.position.offset for d in store] == seen


def test_an_exact_last_page_says_there_is_no_more(store: DeadLetterStore) -> None:
    store.put(*(letter(i, 1000 + i) for i in range(4)))
    first = store.list(limit=2)
    second = store.list(limit=2, cursor=first.cursor)
    assert [d.position.offset for d in second.items] == [1, 0]
    assert second.cursor is None


def test_list_filters_by_reason_by_source_and_by_both(store: DeadLetterStore) -> None:
    store.put(
        letter(1, 10, Reason.MALFORMED_JSON, "browse"),
        letter(2, 20, Reason.OVERSIZE, "browse"),
        letter(3, 30, Reason.MALFORMED_JSON, "games"),
        letter(4, 40, Reason.MALFORMED_JSON, "browse"),
    )

    def offsets(**kw: str) -> list[int]:
        return [d.position.offset for d in store.list(limit=10, **kw).items]  # type: ignore[arg-type]

    assert offsets(reason=Reason.MALFORMED_JSON) == [4, 3, 1]
    assert offsets(source="browse") == [4, 2, 1]
    assert offsets(reason=Reason.MALFORMED_JSON, source="browse") == [4, 1]
    assert offsets(reason=Reason.HOOK_ERROR) == []
    page = store.list(limit=1, reason=Reason.MALFORMED_JSON, source="browse")
    rest = store.list(limit=1, reason=Reason.MALFORMED_JSON, source="browse", cursor=page.cursor)
    assert [d.position.offset for d in page.items + rest.items] == [4, 1]
    assert store.count(reason=Reason.MALFORMED_JSON, source="browse") == 2
    assert store.count(source="games") == 1


def test_delete_removes_the_letter_from_every_index(store: DeadLetterStore) -> None:
    d = letter(1, 10)
    store.put(d, letter(2, 20))
    assert store.delete(d.id)
    assert not store.delete(d.id)
    assert store.get(d.id) is None
    assert store.count() == store.count(reason=d.reason) == store.count(source="browse") == 1


def test_unknown_and_malformed_ids_are_simply_absent(store: DeadLetterStore) -> None:
    assert store.get("0" * 16) is None
    assert store.get("not-an-id") is None
    assert store.get("zz" * 8) is None
    assert not store.delete("short")


def test_dead_letters_survive_a_reopened_store(store: DeadLetterStore, kv: KVStore) -> None:
    store.put(letter(1, 10))
    assert DeadLetterStore(kv).count() == 1
    assert DEADLETTER_NS in kv.namespaces()


def test_paging_arguments_are_checked(store: DeadLetterStore) -> None:
    with pytest.raises(ValueError):
        store.list(limit=0)
    with pytest.raises(InvalidCursor):
        store.list(cursor="x")  # type: ignore[arg-type]


def test_the_json_form_shows_text_payloads_as_text_and_binary_as_hex() -> None:
    assert letter(1, 1, payload=b'{"a"').to_dict()["payload"] == '{"a"'
    binary = letter(1, 1, payload=b"\xff").to_dict()
    assert (binary["payload"], binary["payload_encoding"]) == ("ff", "hex")
    assert binary["position"] == {"partition": "0", "offset": 1}

"""Record envelope, positions and the Event document's path lookup."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopcast.stream.record import MISSING, Event, Position, Record


@given(st.text(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_a_position_survives_its_checkpoint_form(partition: str, offset: int) -> None:
    pos = Position(partition, offset)
    assert Position.from_bytes(pos.to_bytes()) == pos


def test_positions_order_by_offset_within_a_partition() -> None:
    assert Position("p0", 9) < Position("p0", 10)
    assert str(Position("topic-3", 42)) == "topic-3@42"


@pytest.mark.parametrize("raw", [b"", b"\x01", b"\x92\x01\x02", b"\x92\xa1a\xc3"])
def test_bytes_that_are_not_a_position_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="not a stored position"):
        Position.from_bytes(raw)


def test_a_record_carries_no_broker_type_only_values() -> None:
    r = Record("games", Position("0", 7), b"{}", key=b"k", event_time=5, headers=(("h", b"v"),))
    assert (r.source, r.position.offset, r.key, r.event_time) == ("games", 7, b"k", 5)


def _event(data: dict[str, object]) -> Event:
    return Event("s", Position("0", 0), data)


def test_paths_walk_maps_and_list_indexes() -> None:
    e = _event({"after": {"id": 3, "tags": ["a", {"x": 1}]}})
    assert e.get(("after", "id")) == 3
    assert e.get(("after", "tags", "1", "x")) == 1
    assert e.get(()) == e.data


def test_a_missing_path_differs_from_a_null_field() -> None:
    e = _event({"before": None, "after": {"id": 3}})
    assert e.get(("before",)) is None
    assert e.get(("nope",)) is MISSING
    assert e.get(("before", "id")) is MISSING
    assert e.get(("after", "id", "deeper")) is MISSING
    assert e.get(("after", "tags", "9")) is MISSING
    assert not MISSING


def test_side_inputs_shadow_document_fields_of_the_same_name() -> None:
    e = _event({"title": "raw", "after": {"title_id": "5"}}).with_side("title", {"name": "Up"})
    assert e.get(("title", "name")) == "Up"
    assert e.data["title"] == "raw"
    assert e.with_time(9).event_time == 9

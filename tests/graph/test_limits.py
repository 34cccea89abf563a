"""The bounds table (hopcast.graph.limits): each bound refuses what breaks it with a sentence that
names it, accepts what is at it, and never recurses into a value."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hopcast.errors import OutOfBounds, SchemaViolation
from hopcast.graph import limits
from hopcast.graph.mutations import EdgeUpsert, NodeUpsert
from hopcast.graph.schema import Schema

SCHEMA = Schema.demo()
NOW = 1_780_000_000_000_000


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (2**63, "signed 64-bit range"),
        (-(2**63) - 1, "signed 64-bit range"),
        (10**400, "an integer of 1329 bits"),
        (math.inf, "not finite"),
        (math.nan, "not finite"),
        ("\ud800", "lone surrogate"),
        ({1: "a"}, "map keys must be strings"),
        (b"raw", "bytes is not a JSON value"),
        (nested(limits.MAX_DEPTH + 1), "nested deeper than 32"),
        (nested(200_000), "nested deeper than 32"),  # no RecursionError on the way
        ({"a": [{"b": 2**64}]}, "signed 64-bit range"),
    ],
)
def test_a_value_beyond_a_bound_is_named(value: Any, problem: str) -> None:
    found = limits.value_problem(value, "v")
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "value",
    [2**63 - 1, -(2**63), 1.5e308, "é😀", nested(limits.MAX_DEPTH), {"a": [None, True]}, None],
)
def test_a_value_at_its_bounds_is_accepted(value: Any) -> None:
    assert limits.value_problem(value) is None


def test_ids_are_bounded_in_utf8_bytes_not_characters() -> None:
    assert limits.id_problem("account:" + "x" * 242) is None  # 250 bytes
    assert "251 bytes" in (limits.id_problem("account:" + "x" * 243) or "")
    assert "limit is 250" in (limits.id_problem("account:" + "é" * 122) or "")  # 252 bytes
    assert "lone surrogate" in (limits.id_problem("account:\udcff") or "")
    assert limits.id_problem(7) == "node id must be a string, got int"


def test_properties_are_bounded_in_encoded_size_and_names() -> None:
    assert limits.props_problem({"s": "x" * 60_000}) is None
    assert "limit is 65536" in (limits.props_problem({"s": "x" * 70_000}) or "")
    assert "limit is 65536" in (limits.props_problem({"l": ["x" * 1000] * 70}) or "")
    assert "starts with NUL" in (limits.props_problem({"\x00deleted": 1}) or "")
    assert "1..256 bytes" in (limits.props_problem({"": 1}) or "")


def test_arrival_checks_name_the_far_future_and_the_expired() -> None:
    hour = 3_600_000_000
    assert limits.arrival_problem(NOW + hour, NOW, None) is None
    far = limits.arrival_problem(NOW + hour + 1, NOW, None)
    assert far is not None and far[0] == limits.FUTURE_TIME
    assert limits.arrival_problem(NOW + 10 * hour, NOW, None, max_future_us=None) is None
    old = limits.arrival_problem(NOW - 2 * hour, NOW, hour)
    assert old is not None and old[0] == limits.EXPIRED and "retention" in old[1]
    assert limits.arrival_problem(NOW - 2 * hour, NOW, None) is None  # forever


@pytest.mark.parametrize(
    "mutation",
    [
        NodeUpsert("account:1", NOW, "i", {"plan": "x" * 70_000}),
        NodeUpsert("account:" + "1" * 300, NOW, "i"),
        NodeUpsert("account:1", NOW, "i" * 1025),
        NodeUpsert("account:1", NOW, "i", seq=2**63),
        EdgeUpsert("profile:1", "plays", "game:1", NOW, "i", {"minutes": 2**63}),
        EdgeUpsert("profile:" + "1" * 300, "plays", "game:1", NOW, "i", {"minutes": 1}),
        EdgeUpsert("profile:1", "plays", "game:1", 2**62, "i", {"minutes": 1}),
    ],
)
def test_schema_validation_refuses_every_broken_bound_as_out_of_bounds(mutation: Any) -> None:
    for _ in range(2):  # the second time through the validation fast path
        with pytest.raises(OutOfBounds):
            SCHEMA.validate(mutation)


def test_a_mistyped_field_is_a_schema_violation_not_a_crash() -> None:
    with pytest.raises(SchemaViolation):
        SCHEMA.validate(NodeUpsert("account:1", "yesterday", "i"))  # type: ignore[arg-type]
    with pytest.raises(SchemaViolation):
        SCHEMA.validate(NodeUpsert("account:1", NOW, "i", seq="1"))  # type: ignore[arg-type]
    with pytest.raises(SchemaViolation):
        SCHEMA.validate(NodeUpsert("account:1", NOW, "i", ["not", "a", "map"]))  # type: ignore[arg-type]

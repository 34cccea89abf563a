"""Paths, templates, typed values, event times and conditions shared by filters and mappings."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hopcast.errors import RecordRejected
from hopcast.stream.deadletter import Reason
from hopcast.stream.fields import Condition, Template, TimeSpec, ValueSpec, parse_path, to_us
from hopcast.stream.record import MISSING, Event, Position


def ev(**data: Any) -> Event:
    return Event("s", Position("0", 1), data)


def reason_of(fn: Any) -> str:
    with pytest.raises(RecordRejected) as info:
        fn()
    return info.value.reason


def test_a_path_is_split_on_dots_and_must_be_plain_names() -> None:
    assert parse_path("after.profile_id") == ("after", "profile_id")
    for bad in ("", "a..b", "a.b c", ".a"):
        with pytest.raises(ValueError):
            parse_path(bad)


def test_a_template_renders_its_placeholders() -> None:
    t = Template.parse("profile:{after.account}-{after.n}")
    assert t.render(ev(after={"account": 17, "n": 0})) == "profile:17-0"
    assert t.static_prefix == "profile:"
    assert not t.is_single_field


def test_double_braces_are_literal_and_single_unbalanced_ones_are_refused() -> None:
    assert Template.parse("{{x}}:{a}").render(ev(a=True)) == "{x}:true"
    for bad in ("a{b", "a}b", "{a.}"):
        with pytest.raises(ValueError):
            Template.parse(bad)


def test_a_single_placeholder_keeps_the_fields_type() -> None:
    assert Template.parse("{n}").value(ev(n=[1, 2])) == [1, 2]
    assert Template.parse("n={n}").value(ev(n=3)) == "n=3"


def test_a_missing_or_null_field_in_a_template_is_a_missing_field() -> None:
    t = Template.parse("title:{after.title_id}")
    assert reason_of(lambda: t.render(ev(after={}))) == Reason.MISSING_FIELD
    assert reason_of(lambda: t.render(ev(after={"title_id": None}))) == Reason.MISSING_FIELD


def test_an_object_inside_an_id_is_a_bad_value() -> None:
    t = Template.parse("title:{after}")
    assert reason_of(lambda: t.render(ev(after={"a": 1}))) == Reason.BAD_VALUE


@pytest.mark.parametrize(
    ("spec", "data", "expected"),
    [
        ({"field": "n", "type": "int"}, {"n": "42"}, 42),
        ({"field": "n", "type": "int"}, {"n": 42.0}, 42),
        ({"field": "n", "type": "float"}, {"n": "2.5"}, 2.5),
        ({"field": "n", "type": "bool"}, {"n": "yes"}, True),
        ({"field": "n", "type": "bool"}, {"n": 0}, False),
        ({"field": "n", "type": "str"}, {"n": 7}, "7"),
        ({"field": "n", "type": "list"}, {"n": '["a", "b"]'}, ["a", "b"]),
        ({"field": "n", "type": "map"}, {"n": '{"a": 1}'}, {"a": 1}),
        ({"template": "x-{n}", "type": "str"}, {"n": 1}, "x-1"),
        ({"field": "n", "default": 5}, {}, 5),
        (3, {}, 3),
        ("plain text", {}, "plain text"),
        ("{n}", {"n": 9}, 9),
    ],
)
def test_value_specs_read_and_convert(spec: Any, data: dict[str, Any], expected: Any) -> None:
    assert ValueSpec.parse(spec).read(ev(**data)) == expected


def test_an_absent_optional_value_is_missing_and_a_required_one_is_rejected() -> None:
    assert ValueSpec.parse({"field": "n"}).read(ev()) is MISSING
    spec = ValueSpec.parse({"field": "n", "required": True})
    assert reason_of(lambda: spec.read(ev())) == Reason.MISSING_FIELD


@pytest.mark.parametrize(
    ("type_", "value"),
    [("int", "abc"), ("int", True), ("float", "nan"), ("bool", "maybe"), ("list", "{}")],
)
def test_a_value_of_the_wrong_kind_is_a_bad_value(type_: str, value: Any) -> None:
    spec = ValueSpec.parse({"field": "n", "type": type_})
    assert reason_of(lambda: spec.read(ev(n=value))) == Reason.BAD_VALUE


@pytest.mark.parametrize(
    "spec",
    [{"field": "a", "template": "b"}, {"type": "int"}, {"field": "a", "type": "num"}, object()],
)
def test_malformed_value_specs_are_refused_when_compiled(spec: Any) -> None:
    with pytest.raises(ValueError):
        ValueSpec.parse(spec)


@pytest.mark.parametrize(
    ("value", "fmt", "us"),
    [
        (1_764_147_600_123_456, "us", 1_764_147_600_123_456),
        (1_764_147_600_123, "ms", 1_764_147_600_123_000),
        ("1764147600123", "ms", 1_764_147_600_123_000),
        (1_764_147_600, "s", 1_764_147_600_000_000),
        (1_764_147_600.5, "s", 1_764_147_600_500_000),
        ("2025-11-26T09:00:00.123456Z", "iso", 1_764_147_600_123_456),
        ("2025-11-26T10:00:00+01:00", "iso", 1_764_147_600_000_000),
        ("2025-11-26T09:00:00", "iso", 1_764_147_600_000_000),
    ],
)
def test_event_times_in_every_format_become_microseconds(value: Any, fmt: str, us: int) -> None:
    assert to_us(value, fmt) == us
    assert TimeSpec.parse({"field": "t", "format": fmt}).read(ev(t=value)) == us


@given(st.integers(min_value=0, max_value=2**53))
def test_millisecond_times_scale_exactly(ms: int) -> None:
    assert to_us(ms, "ms") == ms * 1000
    assert to_us(str(ms), "ms") == ms * 1000


def test_a_missing_time_and_a_bad_time_have_their_own_reasons() -> None:
    spec = TimeSpec.parse({"field": "t", "format": "iso"})
    assert reason_of(lambda: spec.read(ev())) == Reason.MISSING_TIME
    assert reason_of(lambda: spec.read(ev(t="yesterday"))) == Reason.BAD_VALUE
    assert reason_of(lambda: spec.read(ev(t=12))) == Reason.BAD_VALUE
    with pytest.raises(ValueError, match="unknown time format"):
        TimeSpec.parse({"field": "t", "format": "ns"})


@pytest.mark.parametrize(
    ("spec", "data", "holds"),
    [
        ({"op": "c"}, {"op": "c"}, True),
        ({"op": "c"}, {"op": "u"}, False),
        ({"op": ["c", "r"]}, {"op": "r"}, True),
        ({"op": ["c", "r"]}, {}, False),
        ({"a.b": {"exists": True}}, {"a": {"b": 0}}, True),
        ({"a.b": {"exists": True}}, {"a": {"b": None}}, False),
        ({"a.b": {"exists": False}}, {"a": {}}, True),
        ({"n": {"gte": 2, "lt": 5}}, {"n": 4}, True),
        ({"n": {"gte": 2, "lt": 5}}, {"n": 5}, False),
        ({"n": {"gt": 2}}, {"n": "text"}, False),
        ({"n": {"gt": 2}}, {}, False),
        ({"p": {"matches": "^/v1/"}}, {"p": "/v1/browse"}, True),
        ({"p": {"matches": "^/v1/"}}, {"p": 3}, False),
        ({"p": {"ne": "x"}}, {}, True),
        ({"p": {"not_in": ["x"]}}, {"p": "y"}, True),
        ({"p": {"in": ["x"]}, "q": 1}, {"p": "x", "q": 2}, False),
        (None, {}, True),
    ],
)
def test_conditions_hold_only_when_every_test_does(
    spec: Any, data: dict[str, Any], holds: bool
) -> None:
    assert Condition.parse(spec).holds(ev(**data)) is holds


@pytest.mark.parametrize(
    "spec", [["op"], {"n": {"around": 3}}, {"n": {"in": "abc"}}, {"n": {"matches": "("}}]
)
def test_malformed_conditions_are_refused_when_compiled(spec: Any) -> None:
    with pytest.raises(ValueError):
        Condition.parse(spec)

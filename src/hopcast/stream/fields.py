"""Reading fields out of events: dotted paths, id templates, typed values, times, conditions.

These are the building blocks that filters (:mod:`hopcast.stream.operators`) and YAML mappings
(:mod:`hopcast.stream.mapping`) share. Everything is compiled once, when a pipeline is built:

* a **path** is a dotted string, ``after.profile_id`` or ``items.0.id``;
* a **template** is text with ``{path}`` placeholders, ``profile:{after.profile_id}``
  (``{{`` and ``}}`` are literal braces); a template that is one placeholder and nothing else
  yields the field's value as it is, any other renders text;
* a **value spec** extracts a typed value: ``{field: after.minutes, type: int, required: true}``;
* a **time spec** reads an event time in ``us``, ``ms``, ``s`` or ``iso``: ``{field: ts,
  format: ms}``;
* a **condition** is a mapping of paths to tests, all of which must hold.

Building raises :class:`ValueError` with the problem (the mapping loader adds file, path and
line). Reading raises :class:`~hopcast.errors.RecordRejected` with a dead-letter reason.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hopcast.errors import RecordRejected
from hopcast.stream.deadletter import Reason
from hopcast.stream.record import MISSING, Event

Path = tuple[str, ...]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PATH_PART = re.compile(r"^[A-Za-z0-9_@$\-]+$")


def parse_path(text: str) -> Path:
    """Split ``"after.profile_id"`` into its parts.

    Raises:
        ValueError: if the path is empty or has an empty or odd part.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a field path must be a non-empty string, got {text!r}")
    parts = tuple(p.strip() for p in text.strip().split("."))
    for part in parts:
        if not _PATH_PART.match(part):
            raise ValueError(f"bad field path {text!r} (use dotted names, e.g. after.profile_id)")
    return parts


def _missing(path: Path) -> RecordRejected:
    return RecordRejected(Reason.MISSING_FIELD, f"field {'.'.join(path)!r} is missing or null")


def _get_one(head: str, event: Event) -> Any:
    side = event.side
    if side and head in side:
        return side[head]
    return event.data.get(head, MISSING)


def _get_two(path: Path, head: str, second: str, event: Event) -> Any:
    side = event.side
    value = side[head] if side and head in side else event.data.get(head, MISSING)
    if type(value) is dict:  # decoded JSON: the fast path
        return value.get(second, MISSING)
    if value is MISSING:
        return MISSING
    return event.get(path)


def _get_path(path: Path, event: Event) -> Any:
    return event.get(path)


def getter(path: Path) -> Callable[[Event], Any]:
    """``event.get(path)`` specialised for the path's length (the common one- and two-part
    paths skip the general loop); same results."""
    if len(path) == 1:
        return partial(_get_one, path[0])
    if len(path) == 2:
        return partial(_get_two, path, path[0], path[1])
    return partial(_get_path, path)


@dataclass(frozen=True, slots=True)
class Template:
    """Text with ``{path}`` placeholders (see the module docstring)."""

    text: str
    #: Literal text and paths, alternating: ``("profile:", ("after", "id"), "")``.
    parts: tuple[str | Path, ...]
    #: For the common ``"prefix{path}suffix"`` shape: the getter of its one path.
    _get: Callable[[Event], Any] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        parts = self.parts
        if len(parts) == 3 and type(parts[1]) is tuple:
            object.__setattr__(self, "_get", getter(parts[1]))

    @classmethod
    def parse(cls, text: str) -> Template:
        """Compile a template.

        Raises:
            ValueError: on an unbalanced brace or a bad path inside one.
        """
        if not isinstance(text, str):
            raise ValueError(f"a template must be a string, got {type(text).__name__}")
        parts: list[str | Path] = []
        literal: list[str] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            literal.append(text[pos : m.start()])
            pos = m.end()
            token = m.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
            elif token in ("{", "}"):
                raise ValueError(f"unbalanced {token!r} in template {text!r} (write {token * 2})")
            else:
                parts.append("".join(literal))
                literal = []
                parts.append(parse_path(m.group(1)))
        parts.append("".join(literal) + text[pos:])
        return cls(text, tuple(parts))

    @property
    def is_single_field(self) -> bool:
        """Whether the template is exactly one placeholder (its value keeps its type)."""
        return len(self.parts) == 3 and self.parts[0] == "" and self.parts[2] == ""

    @property
    def static_prefix(self) -> str:
        """The literal text before the first placeholder (``"profile:"``)."""
        first = self.parts[0]
        assert isinstance(first, str)
        return first

    def value(self, event: Event) -> Any:
        """The field's value for a single-field template, else the rendered text.

        Raises:
            RecordRejected: ``missing_field`` if a placeholder's field is absent or null.
        """
        parts = self.parts
        get = self._get
        if get is not None and not parts[0] and not parts[2]:
            got = get(event)
            if got is MISSING or got is None:
                path = parts[1]
                assert type(path) is tuple
                raise _missing(path)
            return got
        if len(parts) == 3 and not parts[0] and not parts[2]:
            path = parts[1]
            assert type(path) is tuple
            got = event.get(path)
            if got is MISSING or got is None:
                raise _missing(path)
            return got
        return self.render(event)

    def render(self, event: Event) -> str:
        """The text with every placeholder replaced by its field's value.

        Raises:
            RecordRejected: ``missing_field`` if a field is absent or null; ``bad_value`` if it
                is a map or a list (an id made of a whole object is a mapping mistake).
        """
        parts = self.parts
        get = self._get
        if get is not None:  # the common shape, "type:{path}", without a loop
            got = get(event)
            if type(got) is str:
                return parts[0] + got + parts[2]  # type: ignore[operator]
        out: list[str] = []
        for part in parts:
            if type(part) is str:
                out.append(part)
                continue
            assert type(part) is tuple
            got = event.get(part)
            if type(got) is str:
                out.append(got)
            else:
                out.append(_scalar_text(part, got))
        return "".join(out)


def _scalar_text(path: Path, got: Any) -> str:
    if got is MISSING or got is None:
        raise _missing(path)
    if isinstance(got, dict | list):
        raise RecordRejected(
            Reason.BAD_VALUE, f"field {'.'.join(path)!r} is a {type(got).__name__}, not a scalar"
        )
    if isinstance(got, bool):
        return "true" if got else "false"
    return str(got)


# -- typed values ------------------------------------------------------------------------------


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("a bool is not an int")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        return int(v.strip())
    raise ValueError(f"not an int: {v!r}")


def _to_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("a bool is not a float")
    if isinstance(v, int | float):
        out = float(v)
    elif isinstance(v, str):
        out = float(v.strip())
    else:
        raise ValueError(f"not a float: {v!r}")
    if not math.isfinite(out):
        raise ValueError(f"not a finite float: {v!r}")
    return out


_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


def _to_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError(f"not a bool: {v!r}")


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    raise ValueError(f"not a string: {type(v).__name__}")


def _to_list(v: Any) -> list[Any]:
    if isinstance(v, str):  # a JSON array stored as text (common in CDC rows)
        v = json.loads(v)
    if not isinstance(v, list):
        raise ValueError(f"not a list: {type(v).__name__}")
    return v


def _to_map(v: Any) -> dict[str, Any]:
    if isinstance(v, str):  # a JSON object stored as text (json/jsonb columns)
        v = json.loads(v)
    if not isinstance(v, dict):
        raise ValueError(f"not a map: {type(v).__name__}")
    return v


def _any(v: Any) -> Any:
    return v


#: Converters of ``type:`` in a value spec. Names match the graph schema's property types.
CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "str": _to_str,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "list": _to_list,
    "map": _to_map,
    "any": _any,
}

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_UTC = dt.UTC
_ONE_US = dt.timedelta(microseconds=1)
_fromisoformat = dt.datetime.fromisoformat

#: Microseconds per unit of a numeric time field.
_TIME_UNITS = {"us": 1, "ms": 1_000, "s": 1_000_000}
TIME_FORMATS = (*_TIME_UNITS, "iso")


def to_us(value: Any, fmt: str) -> int:
    """An event time in ``fmt`` (``us``, ``ms``, ``s`` or ``iso``) as µs since the epoch.

    Raises:
        ValueError: if the value does not fit the format.
    """
    if fmt == "iso":
        if not isinstance(value, str):
            raise ValueError(f"an ISO-8601 time must be text, got {value!r}")
        # parse_iso and datetime_us (hopcast.durations), inlined: the layers of calls cost
        # more than the parse
        when = _fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=_UTC)
        return (when - _EPOCH) // _ONE_US
    unit = _TIME_UNITS[fmt]
    if isinstance(value, bool):
        raise ValueError(f"not a time in {fmt}: {value!r}")
    if isinstance(value, int):
        return value * unit
    if isinstance(value, float) and math.isfinite(value):
        return round(value * unit)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text) * unit
        return round(float(text) * unit)
    raise ValueError(f"not a time in {fmt}: {value!r}")


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """How to read one typed value: a template or a field, a type, a default, ``required``."""

    source: Template | None
    type: str = "any"
    required: bool = False
    default: Any = None
    constant: Any = None

    @classmethod
    def parse(cls, spec: Any) -> ValueSpec:
        """Compile ``5``, ``"{after.minutes}"``, ``"text {x}"`` or ``{field|template, type,
        required, default}``.

        Raises:
            ValueError: naming the problem.
        """
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"field", "template", "type", "required", "default"}
            if unknown:
                raise ValueError(
                    f"unknown key(s) {sorted(unknown)} "
                    "(allowed: field, template, type, required, default)"
                )
            if ("field" in spec) == ("template" in spec):
                raise ValueError("give exactly one of 'field' or 'template'")
            if "field" in spec:
                source = Template(spec["field"], ("", parse_path(spec["field"]), ""))
            else:
                source = Template.parse(spec["template"])
            type_ = spec.get("type", "any")
            if type_ not in CONVERTERS:
                raise ValueError(f"unknown type {type_!r} (use one of {', '.join(CONVERTERS)})")
            required = spec.get("required", False)
            if not isinstance(required, bool):
                raise ValueError("'required' must be true or false")
            return cls(source, type_, required, spec.get("default"))
        if isinstance(spec, str):
            return cls(Template.parse(spec))
        if spec is None or isinstance(spec, bool | int | float | list):
            return cls(None, constant=spec)
        raise ValueError(f"a value must be a constant, a template or a mapping, got {spec!r}")

    def read(self, event: Event) -> Any:
        """The value, converted; :data:`MISSING` if absent, not required and without default.

        Raises:
            RecordRejected: ``missing_field`` (required and absent or null), ``bad_value``
                (present but not convertible to the type).
        """
        if self.source is None:
            return self.constant
        try:
            raw = self.source.value(event)
        except RecordRejected as exc:
            if exc.reason != Reason.MISSING_FIELD:
                raise
            if self.default is not None:
                return self.default
            if self.required:
                raise
            return MISSING
        try:
            return CONVERTERS[self.type](raw)
        except (ValueError, TypeError) as exc:
            raise RecordRejected(
                Reason.BAD_VALUE, f"{self.source.text!r} as {self.type}: {exc}"
            ) from None


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """Where an event's time is and in which format."""

    path: Path
    format: str

    @classmethod
    def parse(cls, spec: Any) -> TimeSpec:
        """Compile ``{field: after.updated_at, format: ms}`` (format defaults to ``ms``).

        Raises:
            ValueError: naming the problem.
        """
        if isinstance(spec, str):
            spec = {"field": spec}
        if not isinstance(spec, Mapping):
            raise ValueError("a time must be {field: <path>, format: us|ms|s|iso}")
        unknown = set(spec) - {"field", "format"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} (allowed: field, format)")
        fmt = spec.get("format", "ms")
        if fmt not in TIME_FORMATS:
            raise ValueError(f"unknown time format {fmt!r} (use one of {', '.join(TIME_FORMATS)})")
        return cls(parse_path(spec.get("field", "")), fmt)

    def read(self, event: Event) -> int:
        """The event time in µs.

        Raises:
            RecordRejected: ``missing_time`` if the field is absent or null, ``bad_value`` if it
                is not a time in the format.
        """
        got = event.get(self.path)
        if got is MISSING or got is None:
            raise RecordRejected(
                Reason.MISSING_TIME, f"time field {'.'.join(self.path)!r} is missing or null"
            )
        try:
            return to_us(got, self.format)
        except (ValueError, TypeError, OverflowError) as exc:
            raise RecordRejected(
                Reason.BAD_VALUE, f"time field {'.'.join(self.path)!r} ({self.format}): {exc}"
            ) from None


# -- conditions --------------------------------------------------------------------------------

Test = Callable[[Any], bool]

_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}
CONDITION_TESTS = ("eq", "ne", "in", "not_in", "exists", "matches", *_COMPARE)


def _eq(arg: Any, v: Any) -> bool:
    return v is not MISSING and bool(v == arg)


def _ne(arg: Any, v: Any) -> bool:
    return bool(v != arg)


def _in(arg: list[Any], v: Any) -> bool:
    return v is not MISSING and v in arg


def _not_in(arg: list[Any], v: Any) -> bool:
    return v not in arg


def _exists(arg: bool, v: Any) -> bool:
    return (v is not MISSING and v is not None) == arg


def _matches(pattern: re.Pattern[str], v: Any) -> bool:
    return isinstance(v, str) and pattern.search(v) is not None


def _all(tests: tuple[Test, ...], v: Any) -> bool:
    return all(t(v) for t in tests)


def _compile_test(spec: Any) -> Test:
    if isinstance(spec, list):
        return partial(_in, list(spec))
    if not isinstance(spec, Mapping):
        return partial(_eq, spec)
    unknown = set(spec) - set(CONDITION_TESTS)
    if unknown:
        raise ValueError(f"unknown test(s) {sorted(unknown)} (use: {', '.join(CONDITION_TESTS)})")
    tests: list[Test] = []
    for name, arg in spec.items():
        if name == "eq":
            tests.append(partial(_eq, arg))
        elif name == "ne":
            tests.append(partial(_ne, arg))
        elif name in ("in", "not_in"):
            if not isinstance(arg, list):
                raise ValueError(f"{name!r} needs a list")
            tests.append(partial(_in if name == "in" else _not_in, arg))
        elif name == "exists":
            if not isinstance(arg, bool):
                raise ValueError("'exists' must be true or false")
            tests.append(partial(_exists, arg))
        elif name == "matches":
            try:
                pattern = re.compile(str(arg))
            except re.error as exc:
                raise ValueError(f"bad regular expression {arg!r}: {exc}") from None
            tests.append(partial(_matches, pattern))
        else:
            tests.append(partial(_ordered, _COMPARE[name], arg))
    return partial(_all, tuple(tests))


def _ordered(compare: Callable[[Any, Any], bool], arg: Any, value: Any) -> bool:
    try:
        return compare(value, arg)
    except TypeError:  # missing, null or another kind of value: the test does not hold
        return False


@dataclass(frozen=True, slots=True)
class Condition:
    """All of ``path → test``; an empty condition always holds.

    Tests: a scalar (equals), a list (one of), or a mapping of ``eq``, ``ne``, ``in``,
    ``not_in``, ``exists``, ``matches`` (regular expression, searched), ``gt``, ``gte``, ``lt``,
    ``lte``. Comparing values of different kinds (or a missing field) is false, never an error.
    """

    tests: tuple[tuple[Path, Test], ...] = ()
    #: The tests with each path's :func:`getter`.
    _compiled: tuple[tuple[Callable[[Event], Any], Test], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        compiled = tuple((getter(path), test) for path, test in self.tests)
        object.__setattr__(self, "_compiled", compiled)

    @classmethod
    def parse(cls, spec: Any) -> Condition:
        """Compile a condition mapping.

        Raises:
            ValueError: naming the problem.
        """
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise ValueError("a condition must be a mapping of field paths to tests")
        return cls(tuple((parse_path(str(k)), _compile_test(v)) for k, v in spec.items()))

    def holds(self, event: Event) -> bool:
        """Whether every test holds for ``event``."""
        for get, test in self._compiled:  # noqa: SIM110 (no generator per call: hot path)
            if not test(get(event)):
                return False
        return True

"""The exception tree drawn in ``hopcast.errors``'s docstring is the real class hierarchy."""

from __future__ import annotations

import inspect
import re

import hopcast.errors as errors
from hopcast.errors import HopcastError, SchemaError, SchemaViolation

_TREE_LINE = re.compile(r"^(?P<indent>[\s│├└─]*?)(?P<name>[A-Z]\w+)\b")


def _drawn_tree() -> dict[str, str | None]:
    """Parse the docstring's tree into ``{class name: parent name}`` (None for the root)."""
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = _TREE_LINE.match(line.strip("\n"))
        if match is None:
            continue
        depth = len(match.group("indent"))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group("name")] = stack[-1][1] if stack else None
        stack.append((depth, match.group("name")))
    return parents


def _defined_errors() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, HopcastError) and cls.__module__ == errors.__name__
    }


def test_the_docstring_draws_hopcast_error_as_the_single_root() -> None:
    tree = _drawn_tree()
    assert [name for name, parent in tree.items() if parent is None] == ["HopcastError"]


def test_every_class_in_the_drawn_tree_exists_with_the_drawn_parent() -> None:
    defined = _defined_errors()
    for name, parent in _drawn_tree().items():
        assert name in defined, f"{name} is drawn but not defined"
        if parent is not None:
            assert defined[name].__bases__ == (defined[parent],), name
            assert issubclass(defined[name], defined[parent])


def test_every_defined_error_is_drawn_in_the_tree() -> None:
    assert set(_defined_errors()) == set(_drawn_tree())


def test_the_tree_parser_sees_the_nesting_not_just_the_names() -> None:
    tree = _drawn_tree()
    assert tree["SchemaViolation"] == "InvalidInput"
    assert tree["StoreClosed"] == "StorageError"
    assert tree["NotFound"] == "HopcastError"


def test_schema_error_message_names_source_path_and_problem() -> None:
    err = SchemaError("schema.yaml", "edges.plays.props.minutes", "unknown property type 'num'")
    assert str(err) == "schema.yaml: edges.plays.props.minutes: unknown property type 'num'"
    assert SchemaError("schema.yaml", "", "cannot read").args == ("schema.yaml: cannot read",)


def test_schema_violation_prefixes_the_mutation_index_when_known() -> None:
    assert str(SchemaViolation("bad", 3)) == "mutation #3: bad"
    assert str(SchemaViolation("bad")) == "bad"
    assert SchemaViolation("bad", 0).index == 0

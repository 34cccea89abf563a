"""Mutations: JSON round trips, strict parsing, the tie-break token and node ids."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from hopcast.errors import InvalidMutation, InvalidNodeId
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    from_dict,
    split_node_id,
    to_dict,
    token,
)

SAMPLES: list[Mutation] = [
    NodeUpsert("account:1", 10, "n1", {"country": "NL", "tags": ["a"], "meta": {"x": 1}}),
    EdgeUpsert("profile:1", "plays", "game:7", 11, "e1", {"minutes": 30}),
    NodeDelete("account:1", 12, "d1"),
    EdgeDelete("profile:1", "plays", "game:7", 13, "d2"),
]


@pytest.mark.parametrize("mutation", SAMPLES, ids=lambda m: m.kind)
def test_to_dict_then_from_dict_gives_back_the_same_mutation(mutation: Mutation) -> None:
    data = to_dict(mutation)
    assert data["kind"] == mutation.kind
    assert from_dict(data) == mutation


def test_to_dict_names_every_field_plus_kind() -> None:
    assert to_dict(SAMPLES[1]) == {
        "kind": "edge_upsert",
        "src": "profile:1",
        "type": "plays",
        "dst": "game:7",
        "ts": 11,
        "id": "e1",
        "props": {"minutes": 30},
    }
    assert to_dict(SAMPLES[2]) == {"kind": "node_delete", "node": "account:1", "ts": 12, "id": "d1"}


def test_from_dict_defaults_missing_props_to_empty() -> None:
    m = from_dict({"kind": "node_upsert", "node": "account:1", "ts": 1, "id": "x"})
    assert m == NodeUpsert("account:1", 1, "x", {})


_DROP = object()


def _upsert(**changes: Any) -> dict[str, Any]:
    """A valid node_upsert dict with ``changes`` applied (``_DROP`` removes a field)."""
    data: dict[str, Any] = {"kind": "node_upsert", "node": "account:1", "ts": 1, "id": "x"}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not _DROP}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_upsert(node=_DROP), "missing field 'node'"),
        (_upsert(id=_DROP), "missing field 'id'"),
        (_upsert(ts=_DROP), "missing field 'ts'"),
        (_upsert(kind="node_upsertt"), "'kind' must be one of"),
        (_upsert(kind=_DROP), "'kind' must be one of"),
        (_upsert(kind=3), "'kind' must be one of"),
        (_upsert(ts="10"), "'ts' must be an integer"),
        (_upsert(ts=1.5), "'ts' must be an integer"),
        (_upsert(ts=True), "'ts' must be an integer"),
        (_upsert(node=""), "'node' must be a non-empty string"),
        (_upsert(id=7), "'id' must be a non-empty string"),
        (_upsert(props=[1]), "'props' must be an object"),
        (_upsert(colour="red"), "unknown field(s) ['colour']"),
        (
            {"kind": "node_delete", "node": "a:1", "ts": 1, "id": "x", "props": {}},
            "unknown field(s) ['props']",
        ),
    ],
)
def test_from_dict_names_the_problem(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidMutation) as info:
        from_dict(data)
    assert message in str(info.value)


def test_from_dict_rejects_something_that_is_not_an_object() -> None:
    with pytest.raises(InvalidMutation, match="must be a JSON object, got list"):
        from_dict([1, 2])  # type: ignore[arg-type]


def test_token_is_a_stable_non_negative_63_bit_int() -> None:
    values = [token(f"id-{i}") for i in range(500)]
    assert all(0 <= v < 1 << 63 for v in values)
    assert any(v >= 1 << 62 for v in values)  # the top bit in use: 63 bits, not fewer
    assert len(set(values)) == len(values)
    assert token("id-1") == token("id-1")


def test_token_is_the_same_in_another_process() -> None:
    # Python's str hash is salted per process; the tie-break must not be.
    code = "from hopcast.graph.mutations import token; print(token('replay-me'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == token("replay-me")


def test_split_node_id_splits_on_the_first_colon() -> None:
    assert split_node_id("account:42") == ("account", "42")
    assert split_node_id("title:s1:e2") == ("title", "s1:e2")


@pytest.mark.parametrize("bad", ["account", "account:", ":42", ":", ""])
def test_split_node_id_rejects_ids_without_type_and_key(bad: str) -> None:
    with pytest.raises(InvalidNodeId, match="must look like 'type:key'"):
        split_node_id(bad)


def test_mutations_are_immutable() -> None:
    m = SAMPLES[0]
    with pytest.raises(AttributeError):
        m.ts = 5  # type: ignore[misc]

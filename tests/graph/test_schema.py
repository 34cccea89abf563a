"""The schema: loading (every error names file, path and line) and validating mutations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hopcast.errors import SchemaError, SchemaViolation
from hopcast.graph.mutations import (
    EdgeDelete,
    EdgeUpsert,
    Mutation,
    NodeDelete,
    NodeUpsert,
    Props,
)
from hopcast.graph.schema import DEFAULT_RETENTION_US, Schema

SMALL = """\
version: 1
nodes:
  profile:
    props:
      name: str
      age: int
      score: float
  game: {}
  blob:
    additional_props: true
    props: {name: str}
edges:
  plays:
    props:
      minutes: {type: int, required: true}
      device: str
    mappings:
      - {from: profile, to: game}
  friends:
    mappings:
      - {from: profile, to: profile, two_way: true}
"""


@pytest.fixture(scope="module")
def demo() -> Schema:
    return Schema.demo()


@pytest.fixture(scope="module")
def small() -> Schema:
    return Schema.from_yaml(SMALL, source="small.yaml")


def _load_error(text: str) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        Schema.from_yaml(text, source="schema.yaml")
    return info.value


def _line(err: SchemaError) -> int:
    match = re.search(r"\(line (\d+)\)", str(err))
    assert match, f"no line in {err}"
    return int(match.group(1))


# -- loading -----------------------------------------------------------------------------------


def test_the_demo_schema_loads_with_its_types_and_journey(demo: Schema) -> None:
    assert {"account", "profile", "device", "title", "game", "live_event"} <= set(demo.nodes)
    assert {"has_profile", "logged_in_from", "started_watching", "plays"} <= set(demo.edges)
    assert demo.journey is not None
    assert demo.journey.root == "account"
    assert demo.nodes["account"].retention_us is None
    assert demo.nodes["device"].retention_us == DEFAULT_RETENTION_US
    assert demo.source.endswith("demo_schema.yaml")


def test_schema_load_reads_a_file_and_names_it_as_the_source(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SMALL)
    schema = Schema.load(path)
    assert schema.source == str(path)
    assert set(schema.edges) == {"plays", "friends"}


def test_schema_load_of_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SchemaError) as info:
        Schema.load(path)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_bad_yaml_names_the_file_and_the_line() -> None:
    err = _load_error("nodes:\n  a: {}\n  b: [\n")
    assert str(err).startswith("schema.yaml: ")
    assert "not valid YAML" in str(err)
    assert "line 4" in str(err)


def test_an_unknown_top_level_key_is_named_with_its_line() -> None:
    err = _load_error("version: 1\nnodes:\n  a: {}\nbogus: 3\n")
    assert str(err).startswith("schema.yaml: ")
    assert "bogus" in err.path
    assert _line(err) == 4


def test_an_unknown_node_type_in_a_mapping_names_path_and_line() -> None:
    text = SMALL.replace("{from: profile, to: game}", "{from: profile, to: gmae}")
    err = _load_error(text)
    assert str(err).startswith("schema.yaml: edges.plays.mappings[0].to (line 18): ")
    assert "unknown node type 'gmae'" in err.problem
    assert "game" in err.problem  # the declared types are listed


def test_an_unknown_node_type_in_a_block_style_mapping_points_at_its_own_line() -> None:
    err = _load_error(
        "nodes:\n  profile: {}\nedges:\n  plays:\n    mappings:\n"
        "      - from: profile\n        to: gmae\n"
    )
    assert err.path == "edges.plays.mappings[0].to (line 7)"


def test_an_unknown_property_type_names_the_property() -> None:
    err = _load_error(SMALL.replace("age: int", "age: integer"))
    assert err.path == "nodes.profile.props.age (line 6)"
    assert "unknown property type 'integer'" in err.problem


def test_a_property_with_an_unknown_option_is_rejected() -> None:
    err = _load_error(SMALL.replace("{type: int, required: true}", "{type: int, unique: true}"))
    assert err.path == "edges.plays.props.minutes (line 15)"
    assert "unique" in err.problem


@pytest.mark.parametrize(
    ("retention", "problem"),
    [("7x", "not a duration"), ("0", "must be positive"), ("-3d", "not a duration")],
)
def test_a_bad_retention_names_path_and_line(retention: str, problem: str) -> None:
    err = _load_error(f"nodes:\n  a:\n    retention: {retention}\n")
    assert err.path == "nodes.a.retention (line 3)"
    assert problem in err.problem


def test_retention_forever_and_defaults_apply() -> None:
    schema = Schema.from_yaml(
        "defaults: {retention: 30d}\nnodes:\n  a: {retention: forever}\n  b: {}\n"
        "  c: {retention: 2h}\n"
    )
    assert schema.nodes["a"].retention_us is None
    assert schema.nodes["b"].retention_us == 30 * 24 * 3600 * 1_000_000
    assert schema.nodes["c"].retention_us == 2 * 3600 * 1_000_000


@pytest.mark.parametrize(
    "second",
    ["{from: profile, to: game}", "{from: game, to: profile, two_way: true}"],
    ids=["same", "mirrored-two-way"],
)
def test_a_duplicate_mapping_is_rejected_with_its_path(second: str) -> None:
    text = SMALL.replace(
        "      - {from: profile, to: game}\n",
        f"      - {{from: profile, to: game}}\n      - {second}\n",
    )
    err = _load_error(text)
    assert err.path == "edges.plays.mappings[1] (line 19)"
    assert "duplicates an earlier mapping" in err.problem


def test_a_journey_member_that_is_not_an_edge_type_is_named() -> None:
    err = _load_error(
        SMALL + "journey:\n  root: profile\n  members: [friends, pals]\n  interactions: [plays]\n"
    )
    assert err.path == "journey.members[1] (line 24)"
    assert "unknown edge type 'pals'" in err.problem


def test_a_journey_interaction_that_is_not_an_edge_type_is_named() -> None:
    err = _load_error(SMALL + "journey:\n  root: profile\n  interactions: [plays, plays_x]\n")
    assert err.path == "journey.interactions[1] (line 24)"


def test_a_journey_needs_a_known_root_and_at_least_one_interaction() -> None:
    assert _load_error(SMALL + "journey:\n  root: team\n  interactions: [plays]\n").path == (
        "journey.root (line 23)"
    )
    assert (
        "at least one"
        in _load_error(SMALL + "journey:\n  root: profile\n  interactions: []\n").problem
    )


def test_an_unknown_key_inside_a_node_type_lists_the_allowed_keys() -> None:
    err = _load_error("nodes:\n  a:\n    retension: 7d\n")
    assert err.path == "nodes.a.retension (line 3)"
    assert "retension" in err.problem
    assert "retention" in err.problem


def test_a_schema_without_node_types_is_rejected() -> None:
    assert "at least one node type" in _load_error("version: 1\n").problem


def test_an_unsupported_version_is_rejected() -> None:
    assert _load_error("version: 2\nnodes: {a: {}}\n").path == "version (line 1)"


def test_type_names_must_be_lowercase_identifiers() -> None:
    assert "must be lowercase" in _load_error("nodes:\n  Account: {}\n").problem


def test_from_dict_builds_the_same_schema_without_line_numbers() -> None:
    schema = Schema.from_dict(
        {
            "nodes": {"a": {"props": {"x": "int"}}},
            "edges": {"e": {"mappings": [{"from": "a", "to": "a"}]}},
        }
    )
    assert schema.nodes["a"].props.props["x"].type == "int"
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(
            {"nodes": {"a": {}}, "edges": {"e": {"mappings": [{"from": "a", "to": "b"}]}}}
        )
    assert info.value.path == "edges.e.mappings[0].to"


# -- validation --------------------------------------------------------------------------------


def _violation(schema: Schema, mutation: Mutation) -> str:
    with pytest.raises(SchemaViolation) as info:
        schema.validate(mutation)
    return info.value.reason


def test_a_fitting_mutation_validates_to_itself(demo: Schema) -> None:
    m = EdgeUpsert("profile:1", "plays", "game:2", 5, "x", {"minutes": 3, "device": "tv"})
    assert demo.validate(m) is m
    n = NodeUpsert("title:1", 5, "y", {"year": 1999, "name": "Heat"})
    assert demo.validate(n) is n


def test_an_unknown_node_type_is_a_violation(demo: Schema) -> None:
    assert "unknown node type 'planet'" in _violation(demo, NodeUpsert("planet:1", 1, "x"))
    assert "unknown node type 'planet'" in _violation(demo, NodeDelete("planet:1", 1, "x"))
    assert "unknown node type 'planet'" in _violation(
        demo, EdgeUpsert("profile:1", "plays", "planet:1", 1, "x")
    )


def test_a_malformed_node_id_is_a_violation(demo: Schema) -> None:
    assert "type:key" in _violation(demo, NodeUpsert("account", 1, "x"))


def test_an_unknown_edge_type_is_a_violation(demo: Schema) -> None:
    reason = _violation(demo, EdgeUpsert("profile:1", "likes", "title:1", 1, "x"))
    assert "unknown edge type 'likes'" in reason
    assert "plays" in reason  # lists the known ones


def test_wrong_endpoint_types_list_the_allowed_mappings(demo: Schema) -> None:
    reason = _violation(demo, EdgeUpsert("account:1", "plays", "game:1", 1, "x", {"minutes": 1}))
    assert reason == "edge 'plays' does not connect account -> game (allowed: profile->game)"
    reason = _violation(demo, EdgeDelete("title:1", "logged_in_from", "device:1", 1, "x"))
    assert "allowed: account->device (two-way)" in reason


def test_a_one_way_edge_written_backwards_is_a_violation(demo: Schema) -> None:
    assert "does not connect game -> profile" in _violation(
        demo, EdgeUpsert("game:1", "plays", "profile:1", 1, "x")
    )


def test_an_undeclared_property_is_a_violation(demo: Schema) -> None:
    reason = _violation(demo, NodeUpsert("title:1", 1, "x", {"rating": 5}))
    assert "undeclared property 'rating'" in reason
    assert "year" in reason
    assert "undeclared property 'speed'" in _violation(
        demo, EdgeUpsert("profile:1", "plays", "game:1", 1, "x", {"minutes": 1, "speed": 2})
    )


@pytest.mark.parametrize(
    ("props", "problem"),
    [
        ({"age": True}, "property 'age' must be int, got bool"),
        ({"age": 1.5}, "property 'age' must be int, got float"),
        ({"age": "3"}, "property 'age' must be int, got str"),
        ({"score": False}, "property 'score' must be float, got bool"),
        ({"name": 3}, "property 'name' must be str, got int"),
    ],
)
def test_a_property_of_the_wrong_type_is_a_violation(
    small: Schema, props: Props, problem: str
) -> None:
    assert problem in _violation(small, NodeUpsert("profile:1", 1, "x", props))


def test_a_float_property_accepts_an_int_and_none_clears_an_optional_one(small: Schema) -> None:
    m = NodeUpsert("profile:1", 1, "x", {"score": 3, "age": None})
    assert small.validate(m) is m


def test_a_required_edge_property_must_be_present(small: Schema) -> None:
    reason = _violation(small, EdgeUpsert("profile:1", "plays", "game:1", 1, "x", {"device": "tv"}))
    assert reason == "profile:1 -[plays]-> game:1: property 'minutes' is required"
    assert "required" in _violation(
        small, EdgeUpsert("profile:1", "plays", "game:1", 1, "x", {"minutes": None})
    )


def test_an_edge_delete_does_not_need_the_required_properties(small: Schema) -> None:
    m = EdgeDelete("profile:1", "plays", "game:1", 1, "x")
    assert small.validate(m) is m


def test_a_two_way_edge_written_from_the_other_end_is_stored_the_declared_way(
    demo: Schema,
) -> None:
    m = EdgeUpsert("device:tv", "logged_in_from", "account:1", 7, "x", {"ip_country": "NL"})
    assert demo.validate(m) == EdgeUpsert(
        "account:1", "logged_in_from", "device:tv", 7, "x", {"ip_country": "NL"}
    )
    d = EdgeDelete("device:tv", "logged_in_from", "account:1", 8, "y")
    assert demo.validate(d) == EdgeDelete("account:1", "logged_in_from", "device:tv", 8, "y")


def test_a_same_type_two_way_edge_is_stored_with_the_smaller_id_first(small: Schema) -> None:
    forward = EdgeUpsert("profile:a", "friends", "profile:b", 1, "x")
    backward = EdgeUpsert("profile:b", "friends", "profile:a", 1, "x")
    assert small.validate(forward) is forward
    assert small.validate(backward) == forward
    assert small.validate(EdgeDelete("profile:b", "friends", "profile:a", 2, "y")) == EdgeDelete(
        "profile:a", "friends", "profile:b", 2, "y"
    )


def test_additional_props_true_accepts_undeclared_properties(small: Schema) -> None:
    m = NodeUpsert("blob:1", 1, "x", {"name": "n", "anything": [1, {"deep": True}]})
    assert small.validate(m) is m
    assert "must be str" in _violation(small, NodeUpsert("blob:1", 1, "x", {"name": 3}))


def test_physical_lists_read_both_stored_lists_of_a_two_way_edge(
    demo: Schema, small: Schema
) -> None:
    assert demo.physical_lists("account", "logged_in_from", "out") == ("out",)
    assert demo.physical_lists("device", "logged_in_from", "out") == ("in",)
    assert demo.physical_lists("device", "logged_in_from", "in") == ("in",)
    assert demo.physical_lists("account", "logged_in_from", "both") == ("out",)
    assert demo.physical_lists("profile", "plays", "out") == ("out",)
    assert demo.physical_lists("profile", "plays", "in") == ()
    assert demo.physical_lists("game", "plays", "in") == ("in",)
    assert small.physical_lists("profile", "friends", "out") == ("out", "in")


def test_a_one_way_mapping_cannot_share_a_node_type_with_a_two_way_mapping() -> None:
    doc = {
        "nodes": {"a": {}, "b": {}, "c": {}},
        "edges": {
            "e": {
                "mappings": [
                    {"from": "a", "to": "b", "two_way": True},
                    {"from": "c", "to": "b"},
                ]
            }
        },
    }
    with pytest.raises(SchemaError) as info:
        Schema.from_dict(doc, source="mixed.yaml")
    assert info.value.path == "edges.e.mappings[1]"
    assert "two-way" in info.value.problem

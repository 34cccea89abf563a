"""The ``hopcast`` command line, run in-process with click's CliRunner.

A store is built in ``tmp_path`` through ``hopcast apply`` of a small JSON-lines file whose
timestamps sit shortly before "now", so the default 100-day lookback includes them. Queries are
checked twice: the table names the expected ids, and ``--json`` is exactly the expected document.
``--url`` is checked against a small stand-in server that records what it was asked.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from click.testing import CliRunner, Result

from hopcast import Graph, Schema
from hopcast.cli import cli
from hopcast.durations import DAY, HOUR, MINUTE, SECOND, now_us
from hopcast.ports import PortReservation

NOW = now_us()
T_ACCOUNT = NOW - HOUR
T_PROFILE_2 = NOW - HOUR + SECOND
T_DEVICE_9 = NOW - 10 * MINUTE
T_DEVICE_8 = NOW - 20 * MINUTE
T_WATCH_1 = NOW - 2 * MINUTE
T_BROWSE_1 = NOW - 3 * MINUTE
T_WATCH_2 = NOW - 5 * MINUTE
T_GENRE = NOW - DAY


def _edge(src: str, type: str, dst: str, ts: int, props: dict[str, Any] | None = None) -> str:
    doc = {"kind": "edge_upsert", "src": src, "type": type, "dst": dst, "ts": ts}
    return json.dumps(doc | {"id": f"{src}-{type}-{dst}", "props": props or {}})


def _node(node: str, ts: int, props: dict[str, Any]) -> str:
    return json.dumps({"kind": "node_upsert", "node": node, "ts": ts, "id": node, "props": props})


GRAPH_LINES = [
    _node("account:42", T_ACCOUNT, {"country": "NL", "plan": "premium"}),
    _edge("account:42", "has_profile", "profile:1", T_ACCOUNT),
    _edge("account:42", "has_profile", "profile:2", T_PROFILE_2),
    _edge("account:42", "logged_in_from", "device:9", T_DEVICE_9, {"ip_country": "NL"}),
    _node("device:9", T_DEVICE_9, {"device_type": "tv"}),
    _edge("account:42", "logged_in_from", "device:8", T_DEVICE_8, {"ip_country": "DE"}),
    _edge("profile:1", "started_watching", "title:7", T_WATCH_1, {"position_s": 30}),
    _edge("profile:2", "started_watching", "title:7", T_WATCH_2, {"position_s": 0}),
    _edge("profile:1", "browsed", "title:8", T_BROWSE_1, {"row": "trending"}),
    _edge("title:7", "in_genre", "genre:drama", T_GENRE),
]


def _edge_doc(
    src: str, type: str, dst: str, ts: int, props: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"src": src, "type": type, "dst": dst, "ts": ts, "props": props or {}}


HAS_PROFILE_1 = _edge_doc("account:42", "has_profile", "profile:1", T_ACCOUNT)
HAS_PROFILE_2 = _edge_doc("account:42", "has_profile", "profile:2", T_PROFILE_2)
DEVICE_9 = _edge_doc("account:42", "logged_in_from", "device:9", T_DEVICE_9, {"ip_country": "NL"})
DEVICE_8 = _edge_doc("account:42", "logged_in_from", "device:8", T_DEVICE_8, {"ip_country": "DE"})
WATCH_1 = _edge_doc("profile:1", "started_watching", "title:7", T_WATCH_1, {"position_s": 30})
WATCH_2 = _edge_doc("profile:2", "started_watching", "title:7", T_WATCH_2, {"position_s": 0})
BROWSE_1 = _edge_doc("profile:1", "browsed", "title:8", T_BROWSE_1, {"row": "trending"})
GENRE = _edge_doc("title:7", "in_genre", "genre:drama", T_GENRE)


@pytest.fixture
def runner() -> CliRunner:
    # Wide enough that no table folds an id onto two lines.
    return CliRunner(env={"COLUMNS": "240", "HOPCAST_STORE": None, "HOPCAST_SCHEMA": None})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def store(runner: CliRunner, tmp_path: Path) -> str:
    """An LMDB store holding :data:`GRAPH_LINES`, built with ``hopcast apply``."""
    path = str(tmp_path / "graph")
    source = _write(tmp_path / "graph.jsonl", GRAPH_LINES)
    result = runner.invoke(cli, ["--store", path, "apply", str(source)])
    assert result.exit_code == 0, result.output
    return path


def _run(runner: CliRunner, store: str, *args: str, input: str | None = None) -> Result:
    return runner.invoke(cli, ["--store", store, *args], input=input)


def _json(runner: CliRunner, store: str, *args: str) -> Any:
    result = _run(runner, store, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- help --------------------------------------------------------------------------------------


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("query", "apply", "sweep", "info", "schema", "serve"):
        assert command in result.stdout


def test_query_help_lists_every_query_kind(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["query", "--help"])
    assert result.exit_code == 0
    for kind in ("neighbours", "traverse", "journey", "count", "exists", "path", "node"):
        assert kind in result.stdout


def test_serve_help_names_its_options(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--port" in result.stdout and "--host" in result.stdout


# -- queries -----------------------------------------------------------------------------------


def test_neighbours_table_lists_the_neighbours(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "neighbours", "account:42", "--edge", "logged_in_from")
    assert result.exit_code == 0, result.output
    assert "device:9" in result.stdout and "device:8" in result.stdout
    assert "profile:1" not in result.stdout
    assert '{"ip_country": "NL"}' in result.stdout


def test_neighbours_json_is_the_result_newest_first(runner: CliRunner, store: str) -> None:
    doc = _json(runner, store, "query", "neighbours", "account:42", "--edge", "logged_in_from")
    assert doc == {
        "node": "account:42",
        "edges": [DEVICE_9 | {"neighbour": "device:9"}, DEVICE_8 | {"neighbour": "device:8"}],
        "truncated": False,
        "reason": None,
    }


def test_neighbours_accepts_several_edge_types_a_limit_and_a_where_filter(
    runner: CliRunner, store: str
) -> None:
    args = ["query", "neighbours", "account:42", "--edge", "has_profile,logged_in_from"]
    doc = _json(runner, store, *args, "--limit", "2")
    assert [e["neighbour"] for e in doc["edges"]] == ["device:9", "device:8"]
    filtered = _json(runner, store, *args, "--where", '{"ip_country": "DE"}')
    assert [e["neighbour"] for e in filtered["edges"]] == ["device:8"]


def test_neighbours_of_a_two_way_edge_are_found_from_the_other_end(
    runner: CliRunner, store: str
) -> None:
    doc = _json(runner, store, "query", "neighbours", "device:9", "--edge", "logged_in_from")
    assert doc == {
        "node": "device:9",
        "edges": [DEVICE_9 | {"neighbour": "account:42"}],
        "truncated": False,
        "reason": None,
    }


def test_a_since_window_excludes_older_edges(runner: CliRunner, store: str) -> None:
    since = str(T_DEVICE_9)
    doc = _json(runner, store, "query", "neighbours", "account:42", "--since", since)
    assert [e["neighbour"] for e in doc["edges"]] == ["device:9"]


def test_since_accepts_iso_8601(runner: CliRunner, store: str) -> None:
    doc = _json(runner, store, "query", "neighbours", "account:42", "--since", "2000-01-01T00:00")
    assert len(doc["edges"]) == 4


def test_traverse_table_shows_each_node_with_its_depth(runner: CliRunner, store: str) -> None:
    hops = ["--hop", "has_profile", "--hop", "started_watching", "--hop", "in_genre"]
    result = _run(runner, store, "query", "traverse", "account:42", *hops)
    assert result.exit_code == 0, result.output
    for node in ("profile:1", "profile:2", "title:7", "genre:drama"):
        assert node in result.stdout


def test_traverse_json_lists_nodes_in_breadth_first_order(runner: CliRunner, store: str) -> None:
    hops = ["--hop", "has_profile", "--hop", "started_watching", "--hop", "in_genre"]
    doc = _json(runner, store, "query", "traverse", "account:42", *hops)
    assert doc == {
        "nodes": [
            {"node": "profile:2", "depth": 1, "via": HAS_PROFILE_2},
            {"node": "profile:1", "depth": 1, "via": HAS_PROFILE_1},
            {"node": "title:7", "depth": 2, "via": WATCH_2},
            {"node": "genre:drama", "depth": 3, "via": GENRE},
        ],
        "work": 5,
        "truncated": False,
        "reason": None,
    }


def test_traverse_reports_a_truncated_result(runner: CliRunner, store: str) -> None:
    args = ["query", "traverse", "account:42", "--hop", "has_profile", "--max-work", "1"]
    result = _run(runner, store, *args)
    assert result.exit_code == 0, result.output
    assert "truncated: limits.max_work (1) reached" in result.stdout


def test_journey_pages_with_the_printed_cursor(runner: CliRunner, store: str) -> None:
    first = _run(runner, store, "query", "journey", "account:42", "--limit", "2")
    assert first.exit_code == 0, first.output
    assert "title:7" in first.stdout and "title:8" in first.stdout
    cursor = first.stdout.split("next: --cursor ")[1].split()[0]
    page = _json(runner, store, "query", "journey", "account:42", "--limit", "2")
    assert page["cursor"] == cursor
    second = _json(runner, store, "query", "journey", "account:42", "--cursor", cursor)
    assert second == {
        "node": "account:42",
        "members": ["account:42", "profile:2", "profile:1", "device:9", "device:8"],
        "entries": [WATCH_2],
        "cursor": None,
        "truncated": False,
        "reason": None,
    }


def test_journey_json_is_newest_first_across_members(runner: CliRunner, store: str) -> None:
    doc = _json(runner, store, "query", "journey", "account:42", "--since", "7d")
    assert doc == {
        "node": "account:42",
        "members": ["account:42", "profile:2", "profile:1", "device:9", "device:8"],
        "entries": [WATCH_1, BROWSE_1, WATCH_2],
        "cursor": None,
        "truncated": False,
        "reason": None,
    }


def test_count_table_has_a_row_per_edge_type_and_a_total(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "count", "profile:1", "--since", "30d")
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[3:] if line.strip()
    }
    assert rows["started_watching"] == "1" and rows["browsed"] == "1" and rows["total"] == "2"


def test_count_json_counts_one_edge_type(runner: CliRunner, store: str) -> None:
    args = ["query", "count", "profile:1", "--edge", "started_watching", "--since", "30d"]
    assert _json(runner, store, *args) == {
        "node": "profile:1",
        "count": 1,
        "by_type": {"started_watching": 1},
        "truncated": False,
        "reason": None,
    }


def test_exists_finds_a_two_way_edge_either_way_round(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "exists", "device:9", "logged_in_from", "account:42")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("yes: account:42 -[logged_in_from]-> device:9")
    doc = _json(runner, store, "query", "exists", "device:9", "logged_in_from", "account:42")
    assert doc == {"exists": True, "edge": DEVICE_9}


def test_exists_says_no_for_an_absent_edge(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "exists", "account:42", "has_profile", "profile:3")
    assert result.exit_code == 0
    assert "no such edge" in result.stdout
    doc = _json(runner, store, "query", "exists", "account:42", "has_profile", "profile:3")
    assert doc == {"exists": False, "edge": None}


def test_path_shows_the_hops_between_two_profiles(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "path", "profile:1", "profile:2")
    assert result.exit_code == 0, result.output
    assert "2 hop(s): profile:1 → account:42 → profile:2" in result.stdout
    doc = _json(runner, store, "query", "path", "profile:1", "profile:2", "--max-hops", "3")
    with Graph.open(store) as graph:
        work = graph.shortest_path("profile:1", "profile:2").work
    assert doc == {
        "found": True,
        "hops": 2,
        "nodes": ["profile:1", "account:42", "profile:2"],
        "edges": [HAS_PROFILE_1, HAS_PROFILE_2],
        "work": work,
        "truncated": False,
        "reason": None,
    }


def test_path_says_when_there_is_none(runner: CliRunner, store: str) -> None:
    args = ["query", "path", "profile:1", "profile:2", "--edge", "started_watching"]
    result = _run(runner, store, *args, "--max-hops", "1")
    assert result.exit_code == 0, result.output
    assert "no path found" in result.stdout


def test_node_lists_found_and_missing_nodes(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "node", "account:42", "profile:99")
    assert result.exit_code == 0, result.output
    assert "premium" in result.stdout
    assert "profile:99" in result.stdout and "not found" in result.stdout
    assert _json(runner, store, "query", "node", "account:42", "profile:99") == {
        "nodes": [
            {"id": "account:42", "ts": T_ACCOUNT, "props": {"country": "NL", "plan": "premium"}},
            None,
        ]
    }


def test_json_is_accepted_after_the_command_too(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "node", "device:9", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nodes"][0]["props"] == {"device_type": "tv"}


# -- errors ------------------------------------------------------------------------------------


def test_a_bad_query_is_one_red_line_and_exit_2(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "neighbours", "account:42", "--edge", "nope")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: unknown edge type 'nope'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_a_malformed_node_id_is_exit_2(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "node", "account42")
    assert result.exit_code == 2
    assert "must look like 'type:key'" in result.stderr


def test_where_must_be_json(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "neighbours", "account:42", "--where", "{tv}")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --where is not JSON")


def test_an_unreadable_time_is_a_usage_error(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "query", "neighbours", "account:42", "--since", "last week")
    assert result.exit_code == 2
    assert "is not a time" in result.stderr


def test_a_missing_store_is_reported_and_not_created(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = _run(runner, str(missing), "query", "node", "account:1")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: store '{missing}' does not exist")
    assert not missing.exists()


def test_a_data_directory_holding_a_store_in_graph_names_it(
    runner: CliRunner, store: str, tmp_path: Path
) -> None:
    """`hopcast run --store data/demo` keeps its graph in data/demo/graph: pointing a query at
    the data directory says where the store is instead of only "no store"."""
    assert Path(store) == tmp_path / "graph"
    result = _run(runner, str(tmp_path), "query", "node", "account:42")
    assert result.exit_code == 2
    assert f"pass --store {tmp_path / 'graph'}" in " ".join(result.stderr.split()), result.stderr


def test_info_on_a_directory_without_a_store_says_so(runner: CliRunner, tmp_path: Path) -> None:
    result = _run(runner, str(tmp_path), "info")
    assert result.exit_code == 2
    assert "holds no hopcast store" in result.stderr


# -- apply -------------------------------------------------------------------------------------

BAD_FILE = [
    GRAPH_LINES[0],
    "not json",
    "",
    json.dumps({"kind": "edge_upsert", "src": "account:42"}),
    _edge("account:42", "plays", "game:1", T_ACCOUNT),
    GRAPH_LINES[1],
]


def test_apply_turns_values_no_store_can_hold_into_bad_lines_without_a_traceback(
    runner: CliRunner, tmp_path: Path
) -> None:
    store = str(tmp_path / "graph")
    plays = {"kind": "edge_upsert", "src": "profile:1", "type": "plays", "dst": "game:1"}
    lines = [
        GRAPH_LINES[0],
        json.dumps(plays | {"ts": T_ACCOUNT, "id": "a", "props": {"minutes": 2**70}}),
        '{"kind": "edge_upsert", "src": "profile:1", "type": "plays", "dst": "game:1", '
        f'"ts": {T_ACCOUNT}, "id": "b", "props": {{"minutes": 1{"0" * 400}}}}}',
        _node("account:" + "x" * 600, T_ACCOUNT, {"country": "NL"}),
        json.dumps(plays | {"ts": T_ACCOUNT, "id": "d", "props": {"x": [[[[[1]]]]]}}).replace(
            "[[[[[1]]]]]", "[" * 5000 + "]" * 5000
        ),
        GRAPH_LINES[1],
    ]
    result = _run(runner, store, "apply", str(_write(tmp_path / "bad.jsonl", lines)))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output + result.stderr
    assert "2 mutation(s) applied" in result.stdout and "4 bad line(s)" in result.stdout
    assert "line 2: profile:1 -[plays]-> game:1: property 'minutes'" in result.stderr
    assert "signed 64-bit range" in result.stderr
    assert "line 4: node id 'account:xxx" in result.stderr and "limit is 250" in result.stderr
    assert "line 5: " in result.stderr


def test_apply_reports_bad_lines_with_their_numbers_and_exits_1(
    runner: CliRunner, tmp_path: Path
) -> None:
    store = str(tmp_path / "graph")
    result = _run(runner, store, "apply", str(_write(tmp_path / "bad.jsonl", BAD_FILE)))
    assert result.exit_code == 1
    assert "2 mutation(s) applied" in result.stdout and "3 bad line(s)" in result.stdout
    assert "line 2: not JSON: JSON is malformed" in result.stderr
    assert "line 4: edge_upsert: missing field 'type'" in result.stderr
    assert "line 5: edge 'plays' does not connect account -> game" in result.stderr
    # The good lines around the bad ones were applied.
    assert _json(runner, store, "query", "exists", "account:42", "has_profile", "profile:1")[
        "exists"
    ]


def test_apply_json_lists_every_bad_line(runner: CliRunner, tmp_path: Path) -> None:
    store = str(tmp_path / "graph")
    args = ["--json", "apply", str(_write(tmp_path / "bad.jsonl", BAD_FILE))]
    result = _run(runner, store, *args)
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "lines": 6,
        "mutations": 2,
        "applied": 2,
        "skipped": 0,
        "bad": [
            {"line": 2, "reason": "not JSON: JSON is malformed: invalid character (byte 4)"},
            {"line": 4, "reason": "edge_upsert: missing field 'type'"},
            {
                "line": 5,
                "reason": "edge 'plays' does not connect account -> game (allowed: profile->game)",
            },
        ],
        "stopped_at": None,
    }


def test_apply_strict_stops_at_the_first_bad_line_with_exit_2(
    runner: CliRunner, tmp_path: Path
) -> None:
    store = str(tmp_path / "graph")
    args = ["apply", "--strict", str(_write(tmp_path / "bad.jsonl", BAD_FILE))]
    result = _run(runner, store, *args)
    assert result.exit_code == 2
    assert "error: line 2: not JSON" in result.stderr
    nodes = _json(runner, store, "query", "node", "account:42")["nodes"]
    assert nodes[0]["props"] == {"country": "NL", "plan": "premium"}  # line 1 was applied
    assert not _json(runner, store, "query", "exists", "account:42", "has_profile", "profile:1")[
        "exists"
    ]  # line 6 was not


def test_apply_reads_stdin_and_counts_replays_as_skipped(runner: CliRunner, tmp_path: Path) -> None:
    store = str(tmp_path / "graph")
    text = "\n".join(GRAPH_LINES[:2]) + "\n"
    assert _run(runner, store, "apply", "-", input=text).exit_code == 0
    result = _run(runner, store, "--json", "apply", "-", input=text)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "lines": 2,
        "mutations": 2,
        "applied": 0,
        "skipped": 2,
        "bad": [],
        "stopped_at": None,
    }


def test_apply_writes_in_batches_of_the_given_size(runner: CliRunner, tmp_path: Path) -> None:
    store = str(tmp_path / "graph")
    source = _write(tmp_path / "graph.jsonl", GRAPH_LINES)
    result = _run(runner, store, "--json", "apply", "--batch-size", "3", str(source))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["applied"] == len(GRAPH_LINES)


# -- sweep, info, schema -----------------------------------------------------------------------


def test_sweep_removes_expired_edges_and_lists_the_namespaces(
    runner: CliRunner, tmp_path: Path
) -> None:
    store = str(tmp_path / "graph")
    lines = [
        _edge("account:1", "logged_in_from", "device:1", NOW - 200 * DAY),  # past 100d retention
        _edge("account:1", "has_profile", "profile:1", NOW - 200 * DAY),  # kept forever
    ]
    assert _run(runner, store, "apply", str(_write(tmp_path / "m.jsonl", lines))).exit_code == 0
    result = _run(runner, store, "sweep")
    assert result.exit_code == 0, result.output
    assert "e.logged_in_from.out" in result.stdout
    assert "removed 3 expired item(s)" in result.stdout
    assert _json(runner, store, "sweep") == {"removed": 0, "namespaces": {}}


def test_sweep_json_counts_entries_before_and_after(runner: CliRunner, tmp_path: Path) -> None:
    store = str(tmp_path / "graph")
    lines = [_edge("account:1", "logged_in_from", "device:1", NOW - 200 * DAY)]
    assert _run(runner, store, "apply", str(_write(tmp_path / "m.jsonl", lines))).exit_code == 0
    gone = {"before": 1, "after": 0}
    assert _json(runner, store, "sweep") == {
        "removed": 3,
        "namespaces": {f"e.logged_in_from.{kind}": gone for kind in ("in", "key", "out")},
    }


def test_info_lists_namespaces_with_entry_counts(runner: CliRunner, store: str) -> None:
    result = _run(runner, store, "info")
    assert result.exit_code == 0, result.output
    assert "lmdb" in result.stdout
    assert "n.account" in result.stdout and "e.has_profile.out" in result.stdout
    doc = _json(runner, store, "info")
    entries = {ns["name"]: ns["entries"] for ns in doc["namespaces"]}
    assert entries["e.has_profile.out"] == 2 and entries["n.account"] == 1
    assert entries["e.plays.out"] == 0
    assert doc["backend"] == "lmdb" and doc["store"] == str(Path(store).resolve())
    assert doc["checkpoints"] == {}


def test_info_shows_stored_checkpoints(runner: CliRunner, store: str) -> None:
    with Graph.open(store) as graph:
        graph.apply([], checkpoints={"kafka:plays/0": b"1234", "binary": b"\x00\xff"})
    doc = _json(runner, store, "info")
    assert doc["checkpoints"] == {"kafka:plays/0": "1234", "binary": "0x00ff"}


def test_schema_check_summarises_a_valid_schema(runner: CliRunner) -> None:
    demo = str(Path(Schema.demo().source))
    result = runner.invoke(cli, ["schema", "check", demo])
    assert result.exit_code == 0, result.output
    assert "valid — 8 node type(s), 10 edge type(s)" in result.stdout
    assert "account ↔ device" in result.stdout  # logged_in_from is two-way
    doc = json.loads(runner.invoke(cli, ["--json", "schema", "check", demo]).stdout)
    assert doc == Schema.demo().to_dict()


BAD_SCHEMA = """\
version: 1
nodes:
  profile: {}
  game: {}
edges:
  plays:
    mappings:
      - {from: profile, to: gmae}
"""


def test_schema_check_names_the_line_of_the_error(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text(BAD_SCHEMA)
    result = runner.invoke(cli, ["schema", "check", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path}: edges.plays.mappings[0].to (line 8): "
        "unknown node type 'gmae' (declared: game, profile)"
    )


def test_a_custom_schema_is_used_for_queries(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "schema.yaml"
    path.write_text(BAD_SCHEMA.replace("gmae", "game"))
    store = str(tmp_path / "graph")
    lines = [_edge("profile:1", "plays", "game:1", NOW)]
    args = ["--schema", str(path), "--store", store]
    applied = runner.invoke(cli, [*args, "apply", str(_write(tmp_path / "m.jsonl", lines))])
    assert applied.exit_code == 0, applied.output
    result = runner.invoke(cli, [*args, "--json", "query", "neighbours", "profile:1"])
    assert [e["neighbour"] for e in json.loads(result.stdout)["edges"]] == ["game:1"]


# -- --url: a server instead of the store ------------------------------------------------------


@dataclass
class _Stub:
    """A stand-in server: records each request, answers ``status`` with ``reply``."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    reply: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def stub() -> Iterator[_Stub]:
    state = _Stub("")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body: Any) -> None:
            parts = urlsplit(self.path)
            state.requests.append(
                {"method": self.command, "path": parts.path, "query": dict(parse_qsl(parts.query))}
                | {"body": body}
            )
            raw = json.dumps(state.reply).encode()
            self.send_response(state.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer(None)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            self._answer(json.loads(self.rfile.read(length)))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(params=["httpx", "urllib"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "urllib":
        monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now fails
    return str(request.param)


def test_url_sends_the_query_to_the_server_and_renders_its_answer(
    runner: CliRunner, stub: _Stub, transport: str
) -> None:
    stub.reply = {"node": "account:42", "edges": [DEVICE_9 | {"neighbour": "device:9"}]}
    args = ["query", "neighbours", "account:42", "--edge", "logged_in_from", "--since", "7d"]
    result = runner.invoke(cli, [*args, "--url", stub.url])
    assert result.exit_code == 0, result.output
    assert "device:9" in result.stdout
    assert stub.requests == [
        {
            "method": "GET",
            "path": "/v1/nodes/account:42/neighbours",
            "query": {
                "edge": "logged_in_from",
                "direction": "out",
                "selection": "latest",
                "since": "7d",
                "limit": "20",
            },
            "body": None,
        }
    ]


def test_url_posts_a_traversal_the_api_can_decode(
    runner: CliRunner, stub: _Stub, transport: str
) -> None:
    stub.reply = {"nodes": [], "work": 0, "truncated": False, "reason": None}
    hops = ["--hop", "has_profile", "--hop", "started_watching,browsed"]
    args = ["query", "traverse", "account:42", *hops, "--max-work", "50", "--url", stub.url]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    body = stub.requests[0]["body"]
    assert stub.requests[0]["path"] == "/v1/query/traverse"
    assert body == {
        "start": "account:42",
        "hops": [["has_profile"], ["started_watching", "browsed"]],
        "direction": "out",
        "since": None,
        "until": None,
        "limits": {"edges_per_hop": 300, "max_work": 50},
    }
    from hopcast.api import bodies

    spec = bodies.decode(json.dumps(body).encode(), bodies.TraverseRequest).to_spec(NOW)
    assert [h.edge_types for h in spec.hops] == [("has_profile",), ("started_watching", "browsed")]
    assert spec.limits.max_work == 50


def test_url_turns_a_4xx_answer_into_an_error_line(
    runner: CliRunner, stub: _Stub, transport: str
) -> None:
    stub.status = 400
    stub.reply = {"error": "invalid_query", "message": "unknown edge type 'x'"}
    result = runner.invoke(cli, ["query", "count", "profile:1", "--url", stub.url])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: unknown edge type 'x'"


def test_url_node_ids_go_in_one_parameter(runner: CliRunner, stub: _Stub, transport: str) -> None:
    stub.reply = {"nodes": [None, None]}
    result = runner.invoke(cli, ["--json", "query", "node", "a:1", "b:2", "--url", stub.url])
    assert result.exit_code == 0, result.output
    assert stub.requests[0]["query"] == {"ids": "a:1,b:2"}
    assert json.loads(result.stdout) == {"nodes": [None, None]}


def test_an_unreachable_server_is_exit_1(
    runner: CliRunner, transport: str, reserved_port: PortReservation
) -> None:
    # a reserved port: nothing listens there, and nothing can start to (connection refused)
    args = ["query", "node", "account:1", "--url", f"http://127.0.0.1:{reserved_port.port}"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach")


def test_demo_forwards_its_own_options_and_help(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "--accounts" in result.output and "--duration" in result.output


def test_a_table_sent_to_a_pipe_is_not_wrapped_at_80_columns(tmp_path: Path) -> None:
    """Output to a pipe or a file (no terminal, no $COLUMNS) keeps each row on one line, so
    `hopcast … | grep` sees whole rows; rich alone would fold them at 80 columns."""
    piped = CliRunner(env={"COLUMNS": None, "HOPCAST_STORE": None, "HOPCAST_SCHEMA": None})
    device = "device:" + "d" * 60
    line = _edge("account:42", "logged_in_from", device, T_DEVICE_9, {"ip_country": "NL"})
    store = str(tmp_path / "graph")
    applied = piped.invoke(cli, ["--store", store, "apply", str(_write(tmp_path / "g", [line]))])
    assert applied.exit_code == 0, applied.output
    result = _run(piped, store, "query", "neighbours", "account:42", "--edge", "logged_in_from")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if device in line]
    assert len(rows) == 1 and '{"ip_country": "NL"}' in rows[0], result.stdout
    assert len(rows[0]) > 80, rows[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--bogus"], "No such option '--bogus' (see 'hopcast --help')"),
        (
            ["query", "neighbours"],
            "Missing argument 'NODE' (see 'hopcast query neighbours --help')",
        ),
        (["query", "neighbors", "x"], "Did you mean 'neighbours'? (see 'hopcast query --help')"),
        (["query", "neighbours", "x", "--limit", "many"], "'many' is not a valid integer"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help_to_read_and_exit_2(
    runner: CliRunner, args: list[str], says: str
) -> None:
    result = runner.invoke(cli, args, prog_name="hopcast")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\\n") == 0, result.stderr
    assert result.stderr.startswith("error: ") and says in result.stderr, result.stderr

"""``hopcast ingest run`` and ``hopcast deadletters list|show|replay``, in process (CliRunner)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hopcast import Graph
from hopcast.cli import cli
from hopcast.durations import HOUR, now_us
from hopcast.ports import listening_socket
from hopcast.stream.mapping import DEMO_MAPPINGS

T = now_us() - HOUR  # inside the default lookback

PLAYBACK = {
    "op": "u",
    "before": None,
    "after": {
        "id": "1-0/7",
        "profile_id": "1-0",
        "title_id": "7",
        "device_id": "1-1",
        "position_s": 30,
        "bitrate_kbps": 3000,
        "updated_at": T,
    },
    "source": {"connector": "postgresql", "table": "playback", "ts_ms": T // 1000},
    "ts_ms": T // 1000,
}
GAME = {
    "event": "game_session_end",
    "ts_ms": T // 1000,
    "profile_id": "1-0",
    "game_id": "3",
    "device_id": "1-1",
    "minutes": 12,
}


def invoke(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], catch_exceptions=False)


def lines(*docs: Any) -> bytes:
    return b"".join((d if isinstance(d, bytes) else json.dumps(d).encode()) + b"\n" for d in docs)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    root = tmp_path / "logs"
    (root / "playback").mkdir(parents=True)
    (root / "games").mkdir()
    (root / "playback" / "a.log").write_bytes(lines(PLAYBACK, b"{broken"))
    # The games service renamed an event: the demo mapping does not know it yet.
    renamed = {**GAME, "event": "game_session_finished", "game_id": "4"}
    (root / "games" / "a.log").write_bytes(lines(GAME, renamed))
    return root


def run_ingest(store: Path, logs: Path, *extra: str) -> Result:
    return invoke(
        store,
        "ingest",
        "run",
        "--source",
        f"playback=file:{logs / 'playback'}",
        "--source",
        f"games=file:{logs / 'games'}",
        "--until-idle",
        "--batch-ms",
        "10",
        *extra,
    )


def test_ingest_run_writes_the_graph_and_dead_letters_and_resumes(
    tmp_path: Path, logs: Path
) -> None:
    store = tmp_path / "g"
    result = run_ingest(store, logs, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["events"] == 4 and doc["dead_letters"] == 2
    assert doc["dead_by_reason"] == {"malformed_json": 1, "unmatched": 1}
    with Graph.open(store) as g:
        assert g.exists("profile:1-0", "started_watching", "title:7")
        assert g.exists("profile:1-0", "plays", "game:3")
    again = run_ingest(store, logs, "--json", "--progress")
    assert again.exit_code == 0
    assert json.loads(again.stdout)["events"] == 0  # resumed after the stored positions
    assert "events/s" in again.stderr  # the live display


def test_deadletters_list_show_and_replay_after_a_mapping_fix(tmp_path: Path, logs: Path) -> None:
    store = tmp_path / "g"
    assert run_ingest(store, logs).exit_code == 0
    listed = json.loads(invoke(store, "deadletters", "list", "--json").stdout)
    assert listed["total"] == 2
    by_reason = {d["reason"]: d for d in listed["items"]}
    bad_game = by_reason["unmatched"]
    shown = json.loads(invoke(store, "deadletters", "show", bad_game["id"], "--json").stdout)
    assert json.loads(shown["payload"])["event"] == "game_session_finished"
    assert shown["source"] == "games"
    table = invoke(store, "deadletters", "list", "--reason", "malformed_json")
    assert "1 dead letters" in table.output and "playback" in table.output
    assert invoke(store, "deadletters", "show", "0" * 16).exit_code == 2
    # Replay with the unchanged mapping: it fails again and stays (exit 1).
    same = invoke(store, "deadletters", "replay", "--source", "games", "--json")
    assert same.exit_code == 1
    assert json.loads(same.stdout)["failed"] == 1
    # Fix the mapping (the new event name maps like the old one), replay: ingested, deleted.
    fixed = tmp_path / "mappings"
    shutil.copytree(DEMO_MAPPINGS, fixed)
    games = (fixed / "games.yaml").read_text()
    old_rule = "when: {event: game_session_end}"
    assert old_rule in games
    new_rule = "when: {event: [game_session_end, game_session_finished]}"
    (fixed / "games.yaml").write_text(games.replace(old_rule, new_rule))
    replayed = invoke(
        store, "deadletters", "replay", "--reason", "unmatched", "--mappings", str(fixed), "--json"
    )
    assert replayed.exit_code == 0, replayed.output
    assert json.loads(replayed.stdout) == {
        "replayed": 1,
        "ingested": 1,
        "failed": 0,
        "mutations": 1,
        "failures": {},
    }
    left = json.loads(invoke(store, "deadletters", "list", "--json").stdout)
    assert [d["reason"] for d in left["items"]] == ["malformed_json"]
    with Graph.open(store) as g:
        assert g.exists("profile:1-0", "plays", "game:4")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nonsense", "NAME=KIND:ARGS"),
        ("x=ftp:/tmp", "unknown kind 'ftp'"),
        ("nomapping=file:/tmp", "no mapping for source 'nomapping'"),
    ],
)
def test_bad_sources_are_one_red_line_and_exit_2(tmp_path: Path, source: str, message: str) -> None:
    result = CliRunner().invoke(
        cli, ["--store", str(tmp_path / "g"), "ingest", "run", "--source", source]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_listen_on_a_taken_port_is_one_red_line_and_exit_2(tmp_path: Path) -> None:
    with listening_socket("127.0.0.1", 0) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["--store", str(tmp_path / "g"), "ingest", "run", "--until-idle"]
        args += ["--listen", address, "--source", f"playback=journal:{tmp_path / 'j'}"]
        result = CliRunner().invoke(cli, [*args, "--insecure"])
    assert result.exit_code == 2
    assert f"--listen {address}: cannot listen there" in result.output


def test_listen_without_a_key_or_insecure_is_refused_before_anything_opens(
    tmp_path: Path,
) -> None:
    args = ["--store", str(tmp_path / "g"), "ingest", "run", "--until-idle"]
    args += ["--listen", "127.0.0.1:0", "--source", f"playback=journal:{tmp_path / 'j'}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "no valid API key" in result.output
    assert not (tmp_path / "g").exists()
    wide = [a if a != "127.0.0.1:0" else "0.0.0.0:0" for a in args]
    refused = CliRunner().invoke(cli, [*wide, "--insecure"])
    assert refused.exit_code == 2 and "only on loopback" in refused.output


TITLES = """
version: 1
source: titles
format: json
time: {field: ts, format: us}
changelog:
  - {table: titles, key: "{title_id}"}
rules:
  - name: title
    emit:
      - node: "title:{title_id}"
        props: {name: "{name}"}
"""
PLAYS = """
version: 1
source: plays
format: json
time: {field: ts, format: us}
enrich:
  - {table: titles, key: "{title_id}", as: title, required: true}
rules:
  - name: play
    emit:
      - edge: started_watching
        from: "profile:{profile_id}"
        to: "title:{title.title_id}"
"""


def test_replay_sees_the_side_tables_the_engine_persisted(tmp_path: Path) -> None:
    maps = tmp_path / "mappings"
    maps.mkdir()
    (maps / "titles.yaml").write_text(TITLES)
    (maps / "plays.yaml").write_text(PLAYS)
    (tmp_path / "plays.log").write_bytes(lines({"profile_id": "p", "title_id": "5", "ts": T}))
    (tmp_path / "titles.log").write_bytes(b"")
    store = tmp_path / "g"
    args = ["ingest", "run", "--mappings", str(maps), "--until-idle", "--batch-ms", "10"]
    args += ["--source", f"plays=file:{tmp_path / 'plays.log'}"]
    args += ["--source", f"titles=file:{tmp_path / 'titles.log'}", "--json"]
    first = json.loads(invoke(store, *args).stdout)
    assert first["dead_by_reason"] == {"enrichment_missing": 1}  # the title came later
    (tmp_path / "titles.log").write_bytes(lines({"title_id": "5", "name": "Five", "ts": T}))
    assert json.loads(invoke(store, *args).stdout)["events"] == 1
    replayed = invoke(store, "deadletters", "replay", "--mappings", str(maps), "--json")
    assert json.loads(replayed.stdout)["ingested"] == 1
    with Graph.open(store) as g:
        assert g.exists("profile:p", "started_watching", "title:5")


def test_records_no_store_can_hold_are_dead_letters_and_ingest_run_goes_on(
    tmp_path: Path,
) -> None:
    root = tmp_path / "logs"
    (root / "games").mkdir(parents=True)
    huge = json.dumps(GAME).replace('"minutes": 12', '"minutes": 1180591620717411303424')
    long_id = {**GAME, "profile_id": "p" * 600}
    (root / "games" / "a.log").write_bytes(
        lines(GAME, huge.encode(), long_id, {**GAME, "game_id": "9"})
    )
    store = tmp_path / "g"
    result = invoke(
        store, "ingest", "run", "--source", f"games=file:{root / 'games'}", "--until-idle", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["events"] == 4 and doc["dead_by_reason"] == {"out_of_bounds": 2}
    with Graph.open(store) as g:
        assert g.exists("profile:1-0", "plays", "game:3") and g.exists(
            "profile:1-0", "plays", "game:9"
        )
    # Every restart reads on from the stored position: nothing crashes on the same record again.
    again = invoke(
        store, "ingest", "run", "--source", f"games=file:{root / 'games'}", "--until-idle", "--json"
    )
    assert again.exit_code == 0 and json.loads(again.stdout)["events"] == 0


def test_positions_lists_the_stored_positions_and_set_position_repairs_one(
    tmp_path: Path, logs: Path
) -> None:
    store = tmp_path / "g"
    assert run_ingest(store, logs).exit_code == 0
    doc = json.loads(invoke(store, "--json", "ingest", "positions").stdout)
    assert {(p["source"], p["state"]) for p in doc["positions"]} == {
        ("games", "ok"),
        ("playback", "ok"),
    }
    games = next(p for p in doc["positions"] if p["source"] == "games")
    assert games["name"] == f"games/{games['partition']}" and games["offset"] >= 0
    with Graph.open(store) as g:  # a position damaged on disk
        g.store.apply([], {games["name"]: b"\xc1"}, validated=True)
    corrupt = json.loads(invoke(store, "--json", "ingest", "positions").stdout)["positions"]
    assert {p["name"]: p["state"] for p in corrupt}[games["name"]] == "corrupt"
    refused = CliRunner().invoke(
        cli,
        ["--store", str(store), "ingest", "run", "--source", f"games=file:{logs / 'games'}",
         "--until-idle"],
    )  # fmt: skip
    assert refused.exit_code != 0 and "is corrupt" in refused.output + refused.stderr
    fixed = invoke(store, "ingest", "set-position", "games", games["partition"], "start")
    assert fixed.exit_code == 0, fixed.output
    again = run_ingest(store, logs, "--json")
    assert json.loads(again.stdout)["events"] == 2  # the games log read again, on purpose

"""``hopcast live``: commands on a store in ``tmp_path`` (--json checked as documents, tables by
their content), and the same commands sent with --url to the real API app (in process, through
its test client in place of the HTTP transport)."""

from __future__ import annotations

import importlib
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hopcast import Graph
from hopcast.api import create_app
from hopcast.cli import cli, remote
from hopcast.durations import MINUTE, now_us
from hopcast.live.service import LiveService

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def store(tmp_path: Path) -> str:
    """An empty store (the live commands refuse one that does not exist)."""
    path = tmp_path / "store"
    Graph.open(path).close()
    return str(path)


def run(store: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--store", store, "live", *args])


def doc(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def created(store: str, *extra: str) -> dict[str, Any]:
    args = ["create", "final", "--title", "The Final", "--starts-at", "10m", "--lead", "5m"]
    return dict(doc(run(store, *args, *extra, "--json")))


# -- the local store -------------------------------------------------------------------------------


def test_create_prints_the_event_document(store: str) -> None:
    before = now_us()
    event = created(store, "--ends-at", "2h")
    assert event["id"] == "final"
    assert event["state"] == "scheduled"
    assert event["version"] == 1
    assert before + 10 * MINUTE <= event["starts_at"] <= now_us() + 10 * MINUTE
    assert event["prefetch_opens_at"] == event["starts_at"] - 5 * MINUTE
    assert event["ends_at"] - event["starts_at"] == 110 * MINUTE
    assert event["triggers"] == []


def test_create_takes_an_iso_start_and_the_default_lead(store: str) -> None:
    event = doc(
        run(
            store,
            "create",
            "final",
            "--title",
            "F",
            "--starts-at",
            "2999-01-01T00:00:00Z",
            "--json",
        )
    )
    assert event["starts_at"] == 32_472_144_000_000_000
    assert event["prefetch_lead_us"] == 30 * MINUTE


def test_list_and_show_read_what_was_stored(store: str) -> None:
    event = created(store)
    listed = doc(run(store, "list", "--json"))
    assert listed == {"events": [{k: v for k, v in event.items() if k != "triggers"}]}
    assert doc(run(store, "show", "final", "--json")) == listed["events"][0]
    table = run(store, "list")
    assert table.exit_code == 0
    assert "final" in table.stdout and "scheduled" in table.stdout
    shown = run(store, "show", "final")
    assert "window_opens" in shown.stdout and "start_now, reschedule, cancel" in shown.stdout


def test_delay_moves_the_start_and_the_window(store: str) -> None:
    event = created(store)
    delayed = doc(run(store, "delay", "final", "5m", "--json"))
    assert delayed["delay_us"] == 5 * MINUTE
    assert delayed["starts_at"] == event["starts_at"] + 5 * MINUTE
    assert delayed["version"] == 2
    earlier = doc(run(store, "delay", "final", "--json", "--", "-2m"))
    assert earlier["delay_us"] == 3 * MINUTE


def test_reschedule_sets_and_removes_times(store: str) -> None:
    created(store)
    moved = doc(run(store, "reschedule", "final", "--ends-at", "3h", "--json"))
    assert moved["ends_at"] is not None
    unended = doc(run(store, "reschedule", "final", "--no-end", "--json"))
    assert unended["ends_at"] is None
    clash = run(store, "reschedule", "final", "--no-end", "--ends-at", "1h")
    assert clash.exit_code == 2


def test_operator_commands_walk_the_event_through_its_stages(store: str) -> None:
    created(store)
    states = []
    for command in ("start", "interrupt", "resume", "end"):
        result = doc(run(store, command, "final", "--json"))
        states.append(result["state"])
        assert [t["stage"] for t in result["triggers"]] == [result["state"]]
    assert states == ["live", "interrupted", "live", "ended"]


def test_cancel_answers_the_cancelled_event(store: str) -> None:
    created(store)
    assert doc(run(store, "cancel", "final", "--json"))["state"] == "cancelled"


def test_an_illegal_command_prints_one_error_line_and_exits_2(store: str) -> None:
    created(store)
    result = run(store, "resume", "final")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "error: live event 'final' cannot resume while scheduled "
        "(accepted now: start_now, reschedule, cancel)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nope"), "no live event 'nope'"),
        (("create", "x", "--title", "X", "--starts-at", "whenever"), "not a time"),
        (("create", "x", "--title", "X", "--starts-at", "1"), "in the past"),
        (("delay", "final", "soon"), "delay"),
    ],
)
def test_bad_input_exits_2_with_the_reason(store: str, args: tuple[str, ...], message: str) -> None:
    created(store)
    result = run(store, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_create_refuses_a_store_that_does_not_exist_and_names_url(tmp_path: Path) -> None:
    """Without --url, an event created in a new store would be served by nobody: refused, with
    the way to reach a running server, and nothing is created."""
    missing = tmp_path / "nothing"
    result = run(str(missing), "create", "final", "--title", "The Final", "--starts-at", "10m")
    assert result.exit_code == 2 and "does not exist" in result.output and "--url" in result.output
    assert not missing.exists()


def test_reading_a_store_that_does_not_exist_says_so(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nothing"), "list")
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "--url" in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_materialise_publishes_fixture_payloads_and_reports_cardinality(store: str) -> None:
    created(store)
    done = doc(run(store, "materialise", "final", "--segment", "adult.US.en.b0", "--json"))
    assert done["segments"] == 2  # the one given and the default
    assert done["entries"] == 10
    card = doc(run(store, "cardinality", "final", "--json"))
    assert card["cardinality"] == done["cardinality"]
    assert card["entries"] == 10
    table = run(store, "cardinality", "final")
    assert "distinct payload(s) behind 10 entries" in table.stdout


def test_the_schedule_shares_the_graph_store(store: str) -> None:
    created(store)
    with Graph.open(store) as graph:
        assert [e.id for e in LiveService(graph.store.kv).events()] == ["final"]


# -- a server --------------------------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveService]:
    """Requests to http://server go to the real app over a memory store."""
    with Graph.open() as graph:
        service = LiveService(graph.store.kv)
        client = TestClient(create_app(graph, live=service))

        def send(url: str, query: dict[str, str], body: Any) -> tuple[int, bytes]:
            path = url.removeprefix("http://server")
            if body is None:
                response = client.get(path, params=query)
            else:
                response = client.post(path, params=query, json=body)
            return response.status_code, response.content

        monkeypatch.setattr(remote, "_send", send)
        yield service


def remote_run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["live", *args, "--url", "http://server"])


def test_with_url_every_command_runs_on_the_server(server: LiveService) -> None:
    made = doc(
        remote_run(
            "create",
            "final",
            "--title",
            "The Final",
            "--starts-at",
            "10m",
            "--lead",
            "5m",
            "--json",
        )
    )
    assert made["state"] == "scheduled"
    assert server.get("final").version == 1
    assert doc(remote_run("delay", "final", "5m", "--json"))["delay_us"] == 5 * MINUTE
    assert doc(remote_run("reschedule", "final", "--ends-at", "2h", "--json"))["ends_at"]
    assert doc(remote_run("list", "--json"))["events"][0]["id"] == "final"
    assert (
        doc(remote_run("materialise", "final", "--segment", "kids.US.en.b0", "--json"))["entries"]
        == 10
    )
    assert doc(remote_run("cardinality", "final", "--json"))["entries"] == 10
    started = doc(remote_run("start", "final", "--json"))
    assert started["triggers"] == [
        {"event": "final", "stage": "live", "version": 4, "ts": started["went_live_at"]}
    ]
    assert doc(remote_run("show", "final", "--json"))["state"] == "live"
    assert server.get("final").state.value == "live"


def test_with_url_an_illegal_command_is_the_servers_409_as_one_line_and_exit_2(
    server: LiveService,
) -> None:
    doc(
        remote_run(
            "create",
            "final",
            "--title",
            "The Final",
            "--starts-at",
            "10m",
            "--lead",
            "5m",
            "--json",
        )
    )
    result = remote_run("end", "final")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: live event 'final' cannot end_now while scheduled "
        "(accepted now: start_now, reschedule, cancel)"
    )
    missing = remote_run("show", "nope")
    assert missing.exit_code == 2
    assert "no live event 'nope'" in missing.stderr


def test_live_token_signs_with_the_environment_secret_and_the_gateway_accepts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hopcast.live import tokens

    secret = bytes(range(32))
    monkeypatch.setenv("HOPCAST_LIVE_SECRET", secret.hex())
    result = CliRunner().invoke(
        cli, ["--json", "live", "token", "tv-1", "--channel", "event:final", "--ttl", "30m"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    claims = tokens.verify(secret, doc["token"], now_us())
    assert claims.device == "tv-1" and claims.allows("event:final")
    assert doc["expires_at"] - claims.issued_at == 30 * MINUTE


def test_live_token_without_a_secret_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOPCAST_LIVE_SECRET", raising=False)
    result = CliRunner().invoke(cli, ["live", "token", "tv-1", "--channel", "x"])
    assert result.exit_code == 2
    assert "HOPCAST_LIVE_SECRET" in result.output


def test_materialise_with_url_follows_the_servers_job_until_it_is_done(
    server: LiveService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answers 202 with a job when the work outlasts ?wait; the command polls it."""
    remote_run("create", "final", "--title", "The Final", "--starts-at", "10m")
    real = server.materialise
    polled: list[str] = []
    monkeypatch.setattr(importlib.import_module("hopcast.cli.live"), "JOB_POLL_S", 0.01)
    original_call = remote.call

    def call(base: str, route: str, params: Any, body: Any = None) -> Any:
        polled.append(route)
        return original_call(base, route, params, body)

    def slow(event_id: str, now: int, segments: Any = None, progress: Any = None) -> Any:
        time.sleep(1.5)  # longer than the command's ?wait=1: it gets a job to follow
        return real(event_id, now, segments, progress)

    monkeypatch.setattr(server, "materialise", slow)
    monkeypatch.setattr(remote, "call", call)
    done = doc(remote_run("materialise", "final", "--segment", "kids.US.en.b0", "--json"))
    assert done["entries"] == 10
    assert any(route.startswith("/v1/live/jobs/") for route in polled)

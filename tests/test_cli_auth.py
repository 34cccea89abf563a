"""``hopcast auth`` and the serving commands' door: keys created, listed and revoked from the
command line; ``hopcast serve`` refuses to start unguarded; a revocation reaches every worker of
``serve --workers 2`` within a second."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from childproc import Child
from hopcast.api.server import WORKER_HEADER
from hopcast.cli import cli
from hopcast.graphdb import Graph

HOPCAST = [sys.executable, "-c", "from hopcast.cli import main; main()"]
#: Bound on one request to a freshly started server (a busy machine).
REQUEST_S = 30.0
#: What the key file promises: every worker sees a revocation within this.
REVOCATION_S = 1.0


def _auth(store: Path, *args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(cli, ["--store", str(store), "auth", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_create_prints_the_key_once_and_list_never_shows_a_secret(tmp_path: Path) -> None:
    store = tmp_path / "graph"
    created = _auth(store, "create", "--name", "ci", "--role", "writer", "--role", "reader")
    key = created["key"]
    assert key.startswith(f"hck_{created['id']}_") and created["roles"] == ["reader", "writer"]
    assert created["file"] == str(store / "keys.json")
    listed = _auth(store, "list")
    assert [k["id"] for k in listed["keys"]] == [created["id"]]
    text = (
        json.dumps(listed) + CliRunner().invoke(cli, ["--store", str(store), "auth", "list"]).output
    )
    assert key.split("_", 2)[2] not in text and "hash" not in listed["keys"][0]
    assert key.split("_", 2)[2] not in (store / "keys.json").read_text()


def test_revoke_marks_the_key_and_an_unknown_id_is_exit_2(tmp_path: Path) -> None:
    store = tmp_path / "graph"
    created = _auth(store, "create", "--name", "ci", "--role", "admin")
    revoked = _auth(store, "revoke", created["id"])
    assert revoked["id"] == created["id"] and revoked["revoked"] is not None
    assert _auth(store, "list")["keys"][0]["revoked"] == revoked["revoked"]
    missing = CliRunner().invoke(cli, ["--store", str(store), "auth", "revoke", "000000000000"])
    assert missing.exit_code == 2 and "no key '000000000000'" in missing.output


def test_a_store_that_is_not_a_directory_needs_keys_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--store", "memory://", "auth", "list"])
    assert result.exit_code == 2 and "--keys FILE" in result.output
    named = tmp_path / "k.json"
    made = CliRunner().invoke(
        cli,
        ["--store", "memory://", "auth", "create", "--name", "a", "--role", "reader", "--keys",
         str(named)],
    )  # fmt: skip
    assert made.exit_code == 0 and named.is_file()


def test_serve_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "g"), "serve", "--port", "0"])
    assert result.exit_code == 2
    assert "no valid API key" in result.output and "hopcast auth create" in result.output
    assert not (tmp_path / "g").exists(), "the store was opened before the refusal"


def test_serve_refuses_a_key_file_with_only_revoked_keys(tmp_path: Path) -> None:
    store = tmp_path / "g"
    created = _auth(store, "create", "--name", "old", "--role", "admin")
    _auth(store, "revoke", created["id"])
    result = CliRunner().invoke(cli, ["--store", str(store), "serve", "--port", "0"])
    assert result.exit_code == 2 and "no valid API key" in result.output


def test_serve_refuses_insecure_on_a_host_that_is_not_loopback(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        result = CliRunner().invoke(
            cli, ["--store", str(tmp_path / "g"), "serve", "--host", host, "--insecure"]
        )
        assert result.exit_code == 2, host
        assert "only on loopback" in result.output


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(tmp_path: Path) -> None:
    store = tmp_path / "graph"
    with Graph.open(store, sync=False):
        pass  # the workers need an LMDB store
    created = _auth(store, "create", "--name", "ops", "--role", "reader")
    auth = {"Authorization": f"Bearer {created['key']}"}
    server = Child([*HOPCAST, "--store", str(store), "serve", "--workers", "2", "--port", "0"])
    try:
        (line,) = server.wait_for(r"hopcast API on (http://127\.0\.0\.1:\d+) ", "the API")
        url = line[1] + "/v1/nodes?ids=profile:1"
        # The workers share one listening socket and the kernel hands a new connection to
        # whichever is waiting first, so fresh connections in a row can all land on one worker
        # (CI saw 40 of 40). Each worker is therefore reached through a kept-alive connection
        # it accepted itself, opened before the revocation.
        pinned: dict[str, httpx.Client] = {}
        deadline = time.monotonic() + 60
        while len(pinned) < 2:  # both workers up and accepting the key
            assert time.monotonic() < deadline, f"only workers {set(pinned)} answered"
            client = httpx.Client(headers=auth, timeout=REQUEST_S)
            try:
                answer = client.get(url)
            except httpx.TransportError:
                client.close()
                continue
            assert answer.status_code == 200, answer.text
            worker = answer.headers[WORKER_HEADER]
            if worker in pinned:
                client.close()
            else:
                pinned[worker] = client
        _auth(store, "revoke", created["id"])
        revoked_at = time.monotonic()
        time.sleep(REVOCATION_S)  # the property under test: a second after, nobody accepts it
        refused_by: set[str] = set()

        def refused(client: httpx.Client) -> None:
            answer = client.get(url)
            assert answer.status_code == 401, (
                f"worker {answer.headers[WORKER_HEADER]} accepted a key revoked "
                f"{time.monotonic() - revoked_at:.2f} s before"
            )
            refused_by.add(answer.headers[WORKER_HEADER])

        for client in pinned.values():
            refused(client)  # on its worker unless the server closed the idle connection
        deadline = time.monotonic() + 60
        while refused_by != set(pinned):  # then fresh connections reach the other
            assert time.monotonic() < deadline, (
                f"not every worker answered: {refused_by} of {set(pinned)}"
            )
            with httpx.Client(headers=auth, timeout=REQUEST_S) as client:
                refused(client)
        for client in pinned.values():
            client.close()
    finally:
        server.stop()


def test_serve_refuses_insecure_with_the_host_check_turned_off(tmp_path: Path) -> None:
    """Without keys the Host allow-list is the only thing between a rebinding web page and the
    API: `--insecure --allowed-host '*'` is refused (server_security, which `hopcast serve` and
    `hopcast ingest run --listen` call before opening anything); named hosts are fine."""
    import pytest

    from hopcast.cli.auth import server_security
    from hopcast.cli.common import Settings
    from hopcast.errors import ConfigError

    settings = Settings(store=str(tmp_path / "g"), schema=None, json=False)
    with pytest.raises(ConfigError, match="DNS rebinding"):
        server_security(settings, "127.0.0.1", None, True, ["*"], [])
    named = server_security(settings, "127.0.0.1", None, True, ["x.test"], [])
    assert named.keys is None and "x.test" in named.allowed_hosts
    assert not (tmp_path / "g").exists(), "the store was opened"

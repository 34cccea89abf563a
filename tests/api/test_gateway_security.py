"""The gateway inside ``hopcast serve --gateway-port``: its ``hopcast_gateway_*`` series on the
API's /metrics, ``POST /v1/live/tokens/revoke`` closing a device at once and writing the list
under the store, and TLS: HTTPS and ``wss://`` verified against a self-signed certificate made
here with the ``openssl`` CLI, while plain HTTP to the TLS port fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from fastapi.testclient import TestClient

from hopcast.api.server import make_server
from hopcast.cli import cli
from hopcast.config import LIVE_SECRET_ENV
from hopcast.errors import ConfigError, TokenError
from hopcast.graphdb import Graph
from hopcast.live import messages as m
from hopcast.live import tokens
from hopcast.live.revocation import FILE_NAME, FileRevocations
from hopcast.ports import listening_socket
from hopcast.sdk.client import DeviceClient
from hopcast.tls import not_after, server_context

#: Upper bound on any wait; a healthy run needs well under a second.
WAIT_S = 20.0
OPENSSL = "/usr/bin/openssl"


@dataclass
class Served:
    base: str
    server: uvicorn.Server
    store: Path

    def post(self, route: str, body: Any, context: ssl.SSLContext | None = None) -> Any:
        req = urllib.request.Request(
            self.base + route,
            json.dumps(body).encode(),
            {"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=WAIT_S, context=context) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def serving(tmp_path: Path, scheme: str = "http", **options: Any) -> Iterator[Served]:
    """``make_server`` with a gateway on a free port, started in a thread, until ready."""
    store = tmp_path / "store"
    graph = Graph.open(store, sync=False)
    sock = listening_socket("127.0.0.1", 0)
    server = make_server(
        graph, "127.0.0.1", 0, log_level="warning", gateway_port=0, dev_tokens=True, **options
    )
    server.config.lifespan = "on"
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + WAIT_S
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the API (and its gateway) did not finish starting"
        yield Served(f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", server, store)
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        sock.close()
        graph.close()


async def until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"gave up after {WAIT_S:g} s waiting for {what}") from None


# -- metrics -----------------------------------------------------------------------------------


def test_the_gateway_series_are_on_the_apis_metrics_when_serve_runs_the_gateway(
    tmp_path: Path,
) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    server = make_server(graph, "127.0.0.1", 0, gateway_port=0)
    try:
        with TestClient(server.config.app) as client:
            text = client.get("/metrics").text
    finally:
        graph.close()
    for series in (
        "hopcast_gateway_connections 0.0",
        "hopcast_gateway_devices 0.0",
        'hopcast_gateway_auth_failures_total{problem="expired"} 0.0',
        "hopcast_gateway_token_expiries_total 0.0",
        'hopcast_gateway_token_refreshes_total{outcome="ok"} 0.0',
        'hopcast_gateway_revocations_total{when="open"} 0.0',
        "hopcast_gateway_subject_cap_refusals_total 0.0",
        "hopcast_gateway_binary_refusals_total 0.0",
        'hopcast_gateway_evictions_total{reason="slow"} 0.0',
    ):
        assert f"\n{series}" in text, series
    assert text.count("# TYPE hopcast_gateway_connections gauge") == 1


# -- revocation --------------------------------------------------------------------------------


def test_the_revoke_route_closes_the_devices_connection_and_writes_the_list_under_the_store(
    tmp_path: Path,
) -> None:
    with serving(tmp_path) as served:
        issued = served.post("/v1/live/tokens", {"device": "tv-1", "channels": ["global"]})

        async def device() -> None:
            client = DeviceClient(
                issued["url"],
                issued["token"],
                ["global"],
                rng=random.Random(1),
            )
            task = asyncio.create_task(client.run(asyncio.Event()))
            await until(lambda: client.stats.state_syncs == 1, "the device's subscription")
            answer = await asyncio.to_thread(
                served.post, "/v1/live/tokens/revoke", {"subject": "tv-1", "note": "stolen"}
            )
            assert answer["kind"] == "subject" and answer["value"] == "tv-1"
            assert answer["closed"] == 1 and answer["entries"] == 1
            # the gateway said `bye revoked`; without refresh_token the client stops there
            with pytest.raises(TokenError) as refused:
                await asyncio.wait_for(task, WAIT_S)
            assert refused.value.problem == m.ByeReason.REVOKED

        asyncio.run(device())
        assert (served.store / FILE_NAME).is_file()
        (entry,) = FileRevocations(served.store / FILE_NAME)._read(time.time_ns() // 1000)
        assert (entry.kind, entry.value, entry.note) == ("subject", "tv-1", "stolen")
        # the CLI through the server's route: the same list
        args = ["live", "revoke", "--token-id", "jti-9", "--url", served.base, "--json"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["entries"] == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "exactly one"),
        ({"token_id": "a", "subject": "b"}, "exactly one"),
        ({"subject": "tv", "keep": "forever"}, "keep"),
        ({"subject": "x" * 129}, "characters"),
        ({"subject": "tv", "surprise": 1}, ""),
    ],
)
def test_a_malformed_revocation_is_a_4xx_with_a_message(
    tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    server = make_server(graph, "127.0.0.1", 0, gateway_port=0)
    try:
        with TestClient(server.config.app) as client:
            r = client.post("/v1/live/tokens/revoke", json=body)
    finally:
        graph.close()
    assert 400 <= r.status_code < 500, r.text
    assert message in r.text


def test_a_revocation_kept_beyond_the_bound_is_a_400_and_writes_nothing(tmp_path: Path) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    server = make_server(graph, "127.0.0.1", 0, gateway_port=0)
    try:
        with TestClient(server.config.app) as client:
            r = client.post("/v1/live/tokens/revoke", json={"subject": "x", "keep": 10**26})
    finally:
        graph.close()
    assert r.status_code == 400 and "at most 366 days" in r.text, r.text
    assert not (tmp_path / "store" / FILE_NAME).exists()


@pytest.mark.parametrize("damage", ["corrupt", "unwritable"])
def test_a_revocation_the_list_cannot_take_is_a_503_naming_the_file_not_a_500(
    tmp_path: Path, damage: str
) -> None:
    store = tmp_path / "store"
    graph = Graph.open(store, sync=False)
    server = make_server(graph, "127.0.0.1", 0, gateway_port=0)
    path = store / FILE_NAME
    try:
        with TestClient(server.config.app, raise_server_exceptions=False) as client:
            if damage == "corrupt":  # damaged while serving (at start it refuses to start)
                path.write_text("{garbage")
            else:
                path.mkdir()  # a directory where the file should be: not readable, not replaced
            r = client.post("/v1/live/tokens/revoke", json={"subject": "tv"})
    finally:
        graph.close()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "revocation_list_unavailable"
    assert str(path) in r.json()["message"]


def test_serve_with_a_gateway_refuses_to_start_on_a_corrupt_revocation_file(
    tmp_path: Path,
) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    (tmp_path / "store" / FILE_NAME).write_text("[{]")
    try:
        with pytest.raises(ConfigError, match="cannot read the revocation list"):
            make_server(graph, "127.0.0.1", 0, gateway_port=0)
    finally:
        graph.close()


def test_the_dev_token_route_answers_the_token_id_that_revokes_that_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = bytes(range(32))
    monkeypatch.setenv(LIVE_SECRET_ENV, secret.hex())
    with serving(tmp_path) as served:
        issued = served.post("/v1/live/tokens", {"device": "tv-1", "channels": ["global"]})
        claims = tokens.verify(secret, issued["token"], time.time_ns() // 1000)
        assert issued["token_id"] == claims.token_id and claims.token_id is not None
        answer = served.post("/v1/live/tokens/revoke", {"token_id": issued["token_id"]})
        assert answer["value"] == issued["token_id"]


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (EC P-256, one day), made with the openssl CLI."""
    return certificate_in(tmp_path)


def certificate_in(directory: Path) -> tuple[str, str]:
    """:func:`certificate` written to ``directory``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=WAIT_S,
    )  # fmt: skip
    return str(cert), str(key)


def test_https_and_wss_verify_against_a_self_signed_certificate_and_plain_http_fails(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    trusted = ssl.create_default_context(cafile=cert)
    with serving(tmp_path, "https", tls_cert=cert, tls_key=key) as served:
        # HTTPS, verified against the certificate
        issued = served.post("/v1/live/tokens", {"device": "tv-1", "channels": ["global"]}, trusted)
        assert issued["url"].startswith("wss://127.0.0.1:")
        with urllib.request.urlopen(served.base + "/healthz", timeout=WAIT_S, context=trusted) as r:
            assert r.status == 200
            # a browser that reached the API over TLS keeps to TLS (never sent over plain HTTP)
            assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
        # not trusted without the CA: the verification fails
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(served.base + "/healthz", timeout=WAIT_S)
        # plain HTTP to the TLS port gets no HTTP answer
        plain = served.base.replace("https://", "http://")
        with (
            pytest.raises((urllib.error.URLError, ConnectionError, OSError)),
            urllib.request.urlopen(plain + "/healthz", timeout=WAIT_S) as r,
        ):
            r.read()

        async def device() -> int:
            client = DeviceClient(
                issued["url"], issued["token"], ["global"], rng=random.Random(1), ca_file=cert
            )
            stop = asyncio.Event()
            task = asyncio.create_task(client.run(stop))
            await until(lambda: client.stats.state_syncs == 1, "the wss subscription")
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
            return client.stats.welcomes

        assert asyncio.run(device()) == 1


def test_the_sdk_refuses_tls_options_with_a_plain_url_and_an_unreadable_ca_file(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="wss://"):
        DeviceClient("ws://x:1", "t", ["g"], rng=random.Random(1), ca_file="ca.pem")
    with pytest.raises(ConfigError, match="CA file"):
        DeviceClient("wss://x:1", "t", ["g"], rng=random.Random(1), ca_file=str(tmp_path / "no"))


def test_serve_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    graph = Graph.open(tmp_path / "store", sync=False)
    try:
        with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
            make_server(graph, "127.0.0.1", 0, tls_cert=str(tmp_path / "c.pem"))
        with pytest.raises(ConfigError, match="cannot load TLS"):
            make_server(graph, "127.0.0.1", 0, tls_cert="nope.pem", tls_key="nope.pem")
    finally:
        graph.close()


def test_serve_refuses_an_expired_certificate_and_a_key_of_another_certificate(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    expires = not_after(cert)
    assert expires is not None and time.time() < expires <= time.time() + 86_400 + 60
    with pytest.raises(ConfigError, match=r"expired at .*Z: renew it"):
        server_context(cert, key, now_s=expires + 1)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = certificate_in(other)
    result = CliRunner().invoke(
        cli,
        [
            *("--store", str(tmp_path / "store"), "serve", "--insecure", "--gateway-port", "1"),
            *("--tls-cert", cert, "--tls-key", other_key),
        ],
    )
    assert result.exit_code == 2 and "KEY_VALUES_MISMATCH" in result.output, result.output


def test_a_revoked_device_token_passes_no_http_route_devices_call(tmp_path: Path) -> None:
    """Revocation bars a token from the schedule, manifests and reports too, not only from the
    gateway: the routes devices call check the gateway's revocation list (by id and subject)."""
    from hopcast.api.policy import Security
    from hopcast.auth.keys import KeyFile

    keys = KeyFile(tmp_path / "keys.json")
    _, admin = keys.create("admin", ["admin"], 0)
    graph = Graph.open(tmp_path / "store", sync=False)
    server = make_server(
        graph, "127.0.0.1", 0, gateway_port=0, dev_tokens=True, security=Security(keys=keys)
    )
    as_admin = {"authorization": f"Bearer {admin}"}
    try:
        with TestClient(server.config.app) as client:

            def events(token: str) -> int:
                headers = {"authorization": f"Bearer {token}"}
                return client.get("/v1/live/events", headers=headers).status_code

            by_id = client.post("/v1/live/tokens", json={"device": "tv-1", "channels": ["g"]})
            by_subject = client.post("/v1/live/tokens", json={"device": "tv-2", "channels": ["g"]})
            first, second = by_id.json()["token"], by_subject.json()["token"]
            assert (events(first), events(second)) == (200, 200)
            for revocation in ({"token_id": by_id.json()["token_id"]}, {"subject": "tv-2"}):
                answer = client.post("/v1/live/tokens/revoke", json=revocation, headers=as_admin)
                assert answer.status_code == 200, answer.text
            assert (events(first), events(second)) == (401, 401)
            kept = client.post("/v1/live/tokens", json={"device": "tv-3", "channels": ["g"]})
            assert events(kept.json()["token"]) == 200, "an unrevoked token is still let in"
    finally:
        graph.close()


def test_a_server_without_a_gateway_bars_revoked_device_tokens_from_device_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hopcast serve` verifying device tokens with the shared secret (its gateways run
    elsewhere) polls the same revocation list the gateways poll: a token revoked by id, or
    by subject, is refused on the routes devices call within seconds; others still pass."""
    from hopcast.api.policy import Security
    from hopcast.auth.keys import KeyFile
    from hopcast.live.revocation import revocation

    secret = bytes(range(32))
    monkeypatch.setenv(LIVE_SECRET_ENV, secret.hex())
    keys = KeyFile(tmp_path / "keys.json")
    keys.create("admin", ["admin"], 0)
    graph = Graph.open(tmp_path / "store", sync=False)
    server = make_server(graph, "127.0.0.1", 0, security=Security(keys=keys))
    now = time.time_ns() // 1000
    by_id = tokens.issue(secret, "tv-1", ["g"], now, 3_600_000_000, token_id="first")
    by_subject = tokens.issue(secret, "tv-2", ["g"], now, 3_600_000_000)
    kept = tokens.issue(secret, "tv-3", ["g"], now, 3_600_000_000)
    try:
        with TestClient(server.config.app) as client:

            def events(token: str) -> int:
                headers = {"authorization": f"Bearer {token}"}
                return client.get("/v1/live/events", headers=headers).status_code

            assert [events(t) for t in (by_id, by_subject, kept)] == [200, 200, 200]
            listed = FileRevocations.in_directory(tmp_path / "store")
            later = time.time_ns() // 1000
            listed.add_sync(revocation("token_id", "first", later), later)
            listed.add_sync(revocation("subject", "tv-2", later), later)
            deadline = time.monotonic() + 30
            while [events(t) for t in (by_id, by_subject)] != [401, 401]:
                assert time.monotonic() < deadline, (
                    "the revoked tokens still pass 30 s after the list changed "
                    f"(answers {[events(t) for t in (by_id, by_subject)]}); the poll is 1 s"
                )
                time.sleep(0.05)
            assert events(kept) == 200, "an unrevoked token is still let in"
    finally:
        graph.close()


def test_a_server_without_a_gateway_refuses_to_start_on_an_unreadable_revocation_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving with an empty list would let every revoked token back in: a list that cannot
    be read stops the start with a clear error, as it does for a gateway."""
    from hopcast.api.policy import Security
    from hopcast.auth.keys import KeyFile

    monkeypatch.setenv(LIVE_SECRET_ENV, bytes(range(32)).hex())
    keys = KeyFile(tmp_path / "keys.json")
    keys.create("admin", ["admin"], 0)
    graph = Graph.open(tmp_path / "store", sync=False)
    (tmp_path / "store" / FILE_NAME).write_text("[{]")
    try:
        with pytest.raises(ConfigError, match="cannot read the revocation list"):
            make_server(graph, "127.0.0.1", 0, security=Security(keys=keys))
    finally:
        graph.close()

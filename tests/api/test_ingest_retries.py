"""Retried journal POSTs with an ``Idempotency-Key`` are journaled once, whatever breaks."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.seed import TestClient
from hopcast.api.ingest import ingest_app
from hopcast.stream.sources.journal import MAX_KEYS, Journal, JournalSource, KeyReused

#: Bound on start-up, shutdown and each request; only reached if the server hangs.
TIMEOUT_S = 30
#: Retried requests in the connection-reset test (the issue's reproducer used 32).
RETRIED_REQUESTS = 32


def read_all(directory: Path) -> list[bytes]:
    source = JournalSource("s", directory)
    source.open({})
    try:
        out: list[bytes] = []
        while batch := source.poll(10_000, 0.05):
            out.extend(r.value for r in batch)
        return out
    finally:
        source.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "j")
    yield j
    j.close()


# -- the journal ---------------------------------------------------------------------------------


def test_an_append_retried_with_its_key_is_written_once_and_answered_alike(
    journal: Journal,
) -> None:
    first = journal.append_once([b'{"a":1}', b'{"b":2}'], "k1")
    again = journal.append_once([b'{"a":1}', b'{"b":2}'], "k1")
    assert not first.replayed and again.replayed
    assert (again.position, again.count) == (first.position, 2)
    journal.append([b'{"c":3}'])
    assert read_all(journal.directory) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_a_key_reused_for_other_records_is_refused_and_nothing_is_written(
    journal: Journal,
) -> None:
    journal.append_once([b'{"a":1}'], "k1")
    with pytest.raises(KeyReused, match="was used for other records"):
        journal.append_once([b'{"a":2}'], "k1")
    assert read_all(journal.directory) == [b'{"a":1}']


def test_keys_survive_a_restart_while_their_records_are_in_the_active_segment(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path / "j")
    first = j.append_once([b'{"a":1}'], "k1")
    j.close()
    j = Journal(tmp_path / "j")
    try:
        again = j.append_once([b'{"a":1}'], "k1")
        assert again.replayed and again.position == first.position
    finally:
        j.close()
    assert read_all(tmp_path / "j") == [b'{"a":1}']


def test_the_journal_forgets_the_oldest_keys_beyond_its_bound(journal: Journal) -> None:
    for i in range(MAX_KEYS + 1):
        journal.append_once([b"{}"], f"k{i}")
    assert journal.append_once([b"{}"], f"k{MAX_KEYS}").replayed
    assert not journal.append_once([b"{}"], "k0").replayed  # forgotten: appended again


def test_concurrent_attempts_with_one_key_append_once(journal: Journal) -> None:
    values = [b'{"x":1}']
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda _: journal.append_once(values, "same"), range(64)))
    assert sum(not d.replayed for d in done) == 1
    assert len({d.position for d in done}) == 1
    assert read_all(journal.directory) == values


def test_a_torn_key_frame_is_cut_with_its_records_on_reopen(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.append_once([b'{"a":1}'], "k1")
    j.close()
    segment = next((tmp_path / "j").glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-3])  # the key frame's tail never reached the disk
    j = Journal(tmp_path / "j")
    try:
        assert not j.append_once([b'{"a":1}'], "k1").replayed  # not remembered: written anew
    finally:
        j.close()
    assert read_all(tmp_path / "j") == [b'{"a":1}', b'{"a":1}']


# -- over HTTP -----------------------------------------------------------------------------------


def test_a_retried_post_is_answered_202_again_without_a_second_append(journal: Journal) -> None:
    client = TestClient(ingest_app({"logs": journal}))
    headers = {"Idempotency-Key": "req-1"}
    body = b'{"a": 1}\n{"b": 2}\n'
    first = client.post("/v1/ingest/logs", content=body, headers=headers)
    again = client.post("/v1/ingest/logs", content=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["replayed"] is False and again.json()["replayed"] is True
    assert first.json()["position"] == again.json()["position"]
    assert again.json()["accepted"] == 2
    assert read_all(journal.directory) == [b'{"a": 1}', b'{"b": 2}']
    assert 'hopcast_ingest_http_replays_total{source="logs"} 1.0' in client.get("/metrics").text


def test_a_key_reused_with_another_body_is_a_422_naming_the_key(journal: Journal) -> None:
    client = TestClient(ingest_app({"logs": journal}))
    headers = {"Idempotency-Key": "req-1"}
    assert client.post("/v1/ingest/logs", content=b'{"a": 1}', headers=headers).status_code == 202
    refused = client.post("/v1/ingest/logs", content=b'{"a": 2}', headers=headers)
    assert refused.status_code == 422
    assert refused.json()["error"] == "idempotency_key_reused"
    assert "'req-1' was used for other records" in refused.json()["message"]
    assert read_all(journal.directory) == [b'{"a": 1}']


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "a b"])
def test_a_malformed_idempotency_key_is_a_400(journal: Journal, key: str) -> None:
    client = TestClient(ingest_app({"logs": journal}))
    got = client.post(
        "/v1/ingest/logs", content=b'{"a": 1}', headers={"Idempotency-Key": key.encode()}
    )
    assert got.status_code == 400, got.text
    assert "idempotency-key" in got.json()["message"].lower()
    assert read_all(journal.directory) == []


@pytest.fixture
def served(journal: Journal) -> Iterator[tuple[str, int]]:
    config = uvicorn.Config(ingest_app({"logs": journal}), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue in the backlog until the server accepts them
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(TIMEOUT_S)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def _reset_midway(address: tuple[str, int], request: bytes, cut: int, wait: bool) -> None:
    """Send ``request[:cut]`` and reset the connection (RST), reading the answer or not."""
    conn = socket.create_connection(address, timeout=TIMEOUT_S)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        conn.sendall(request[:cut])
        if wait:
            conn.recv(1)  # the server answered: the client loses the answer all the same
    finally:
        conn.close()


def test_32_posts_reset_mid_flight_and_retried_journal_every_record_once(
    served: tuple[str, int], journal: Journal
) -> None:
    rng = random.Random(11)
    host, port = served
    expected: list[bytes] = []
    replayed = 0  # retries whose first attempt had been journaled before the reset
    with httpx.Client(base_url=f"http://{host}:{port}", timeout=TIMEOUT_S) as http:
        for i in range(RETRIED_REQUESTS):
            lines = [json.dumps({"request": i, "n": n}).encode() for n in range(4)]
            if i % 8 == 3:
                lines.append(b'{"bad": %d, "minutes": 1180591620717411303424}' % i)
            body = b"\n".join(lines)
            expected.extend(lines)
            key = f"req-{i}"
            request = (
                f"POST /v1/ingest/logs HTTP/1.1\r\nHost: {host}\r\n"
                f"Idempotency-Key: {key}\r\nContent-Type: application/x-ndjson\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            # Attempts that die before, while and after the server journals the records.
            for _ in range(rng.randint(1, 3)):
                whole = rng.random() < 0.7
                cut = len(request) if whole else rng.randint(1, len(request) - 1)
                _reset_midway((host, port), request, cut, wait=whole and rng.random() < 0.5)
            answer = http.post("/v1/ingest/logs", content=body, headers={"Idempotency-Key": key})
            assert answer.status_code == 202, answer.text
            assert answer.json()["accepted"] == len(lines)
            replayed += answer.json()["replayed"]
    journaled = read_all(journal.directory)
    duplicates = len(journaled) - len(set(journaled))
    assert duplicates == 0
    assert sorted(journaled) == sorted(expected)
    assert replayed > 0, "no reset came after the append: the test proved nothing"


def test_the_standalone_ingest_listener_rate_limits_its_route_with_retry_after(
    journal: Journal,
) -> None:
    """``hopcast ingest run --listen`` serves this app: its ingest route draws from the
    ``ingest`` bucket like the API's, and a refused post appends nothing."""
    from hopcast.api.ratelimit import Rate

    client = TestClient(ingest_app({"logs": journal}, rate_limits={"ingest": Rate(1 / 3600, 2)}))
    answers = [client.post("/v1/ingest/logs", content=b'{"a": %d}\n' % i) for i in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429], answers[-1].text
    assert answers[-1].json()["error"] == "rate_limited"
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert read_all(journal.directory) == [b'{"a": 0}', b'{"a": 1}']
    metrics = client.get("/metrics").text
    assert 'hopcast_api_rate_limited_total{bucket="ingest"} 1.0' in metrics


def test_ingest_run_refuses_a_malformed_rate_limit_as_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hopcast.cli import cli

    args = ["--store", str(tmp_path / "g"), "ingest", "run", "--until-idle", "--insecure"]
    args += ["--listen", "127.0.0.1:0", "--source", f"logs=journal:{tmp_path / 'j'}"]
    result = CliRunner().invoke(cli, [*args, "--rate-limit", "ingest=lots"])
    assert result.exit_code == 2, result.output
    assert "--rate-limit" in result.output

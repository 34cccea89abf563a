"""Per-key rate limits: the token buckets, the option syntax, and the 429s of the routes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import Request
from prometheus_client.parser import text_string_to_metric_families

from api.seed import NOW, SEED, TestClient
from hopcast import Graph
from hopcast.api import create_app
from hopcast.api.ratelimit import (
    DEFAULT_RATES,
    INGEST,
    MUTATIONS,
    OPERATOR,
    Rate,
    RateLimits,
    parse_rate,
    rates_from,
)
from hopcast.durations import MINUTE
from hopcast.errors import ConfigError
from hopcast.live.service import LiveService
from hopcast.stream.sources.journal import Journal


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the buckets -----------------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limits = RateLimits({MUTATIONS: Rate(2.0, 3)}, clock=clock)
    assert [limits.check("a", MUTATIONS) for _ in range(3)] == [None, None, None]
    wait = limits.check("a", MUTATIONS)
    assert wait == pytest.approx(0.5)  # one token at 2/s
    clock.now += 0.25
    assert limits.check("a", MUTATIONS) == pytest.approx(0.25)  # refused, nothing taken
    clock.now += 0.25
    assert limits.check("a", MUTATIONS) is None
    assert limits.check("a", MUTATIONS) is not None


def test_subjects_and_buckets_are_counted_apart() -> None:
    limits = RateLimits({MUTATIONS: Rate(1.0, 1), OPERATOR: Rate(1.0, 1)}, clock=FakeClock())
    assert limits.check("a", MUTATIONS) is None
    assert limits.check("a", MUTATIONS) is not None
    assert limits.check("b", MUTATIONS) is None
    assert limits.check("a", OPERATOR) is None
    assert limits.refused() == {MUTATIONS: 1, OPERATOR: 0}


def test_a_bucket_without_a_rate_is_not_limited() -> None:
    limits = RateLimits({MUTATIONS: Rate(1.0, 1)}, clock=FakeClock())
    assert all(limits.check("a", INGEST) is None for _ in range(100))
    assert len(limits) == 0


def test_a_quiet_bucket_refills_to_its_burst_and_no_further() -> None:
    clock = FakeClock()
    limits = RateLimits({OPERATOR: Rate(1.0, 2)}, clock=clock)
    limits.check("a", OPERATOR)
    limits.check("a", OPERATOR)
    clock.now += 3600
    assert [limits.check("a", OPERATOR) is None for _ in range(3)] == [True, True, False]


def test_a_clock_that_goes_back_refills_nothing() -> None:
    clock = FakeClock()
    limits = RateLimits({OPERATOR: Rate(1.0, 1)}, clock=clock)
    assert limits.check("a", OPERATOR) is None
    clock.now -= 100
    assert limits.check("a", OPERATOR) is not None


def test_memory_is_bounded_by_evicting_the_least_recently_used_bucket() -> None:
    clock = FakeClock()
    limits = RateLimits({MUTATIONS: Rate(1.0, 1)}, clock=clock, max_tracked=100)
    assert limits.check("first", MUTATIONS) is None
    for i in range(10_000):
        limits.check(f"s{i}", MUTATIONS)
        assert len(limits) <= 100
    # "first" was evicted: it starts again with a full bucket
    assert limits.check("first", MUTATIONS) is None
    # a recent subject is still tracked, and still in debt
    assert limits.check("s9999", MUTATIONS) is not None


# -- the option syntax -----------------------------------------------------------------------------


def test_parse_rate_reads_count_unit_and_burst() -> None:
    assert parse_rate("mutations=50/s:100") == (MUTATIONS, Rate(50.0, 100))
    assert parse_rate("operator=120/m") == (OPERATOR, Rate(2.0, 120))
    assert parse_rate(" ingest=3600/h:10 ") == (INGEST, Rate(1.0, 10))


@pytest.mark.parametrize(
    "text", ["mutations", "mutations=50", "mutations=50/d", "reads=5/s", "operator=0/s", "x=1/s:0"]
)
def test_parse_rate_refuses_anything_else_naming_the_syntax(text: str) -> None:
    with pytest.raises(ConfigError, match=r"BUCKET=COUNT/UNIT|no bucket|positive"):
        parse_rate(text)


def test_rates_from_options_override_the_defaults_and_off_disables() -> None:
    rates = rates_from(["operator=1/s:2"])
    assert rates is not None
    assert rates[OPERATOR] == Rate(1.0, 2) and rates[MUTATIONS] == DEFAULT_RATES[MUTATIONS]
    assert rates_from(["off"]) is None
    with pytest.raises(ConfigError, match="alone"):
        rates_from(["off", "operator=1/s"])


@pytest.mark.parametrize("command", ["serve", "run"])
def test_hopcast_serve_and_run_refuse_a_malformed_rate_limit_with_a_usage_error(
    command: str,
) -> None:
    from click.testing import CliRunner

    from hopcast.cli import cli

    result = CliRunner().invoke(cli, [command, "--rate-limit", "mutations=fast"])
    assert result.exit_code == 2
    assert "BUCKET=COUNT/UNIT" in result.output


# -- the routes ------------------------------------------------------------------------------------


class Stack:
    def __init__(self, tmp: Path, rates: dict[str, Rate]) -> None:
        self.clock = FakeClock()
        self.graph = Graph.open(clock=lambda: NOW)
        self.graph.apply(SEED)
        self.live = LiveService(self.graph.store.kv, clock=lambda: NOW)
        self.journal = Journal(tmp / "journal")
        self.limits = RateLimits(rates, clock=self.clock)
        self.app = create_app(
            self.graph, live=self.live, journals={"logs": self.journal}, rate_limits=self.limits
        )
        self.client = TestClient(self.app)

    def close(self) -> None:
        self.journal.close()
        self.graph.close()

    def refused(self) -> dict[str, float]:
        text = self.client.get("/metrics").text
        return {
            s.labels["bucket"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "hopcast_api_rate_limited_total"
        }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    rates = {MUTATIONS: Rate(1.0, 2), INGEST: Rate(1.0, 2), OPERATOR: Rate(0.5, 2)}
    s = Stack(tmp_path, rates)
    yield s
    s.close()


MUTATION = {
    "mutations": [{"kind": "node_upsert", "node": "profile:77", "ts": NOW - MINUTE, "id": "m77"}]
}


def requests(stack: Stack) -> dict[str, object]:
    """One request per limited route, as (bucket, a function that sends it)."""
    c = stack.client
    return {
        MUTATIONS: lambda: c.post("/v1/mutations", json=MUTATION),
        INGEST: lambda: c.post("/v1/ingest/logs", content=b'{"a": 1}\n'),
        OPERATOR: lambda: c.post("/v1/live/events/nope/start"),
    }


@pytest.mark.parametrize("bucket", [MUTATIONS, INGEST, OPERATOR])
def test_a_route_over_its_limit_answers_429_with_retry_after_and_recovers_after_the_wait(
    stack: Stack, bucket: str
) -> None:
    send = requests(stack)[bucket]
    first = [send().status_code for _ in range(2)]  # type: ignore[operator]
    assert 429 not in first
    refused = send()  # type: ignore[operator]
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "rate_limited"
    assert refused.json()["bucket"] == bucket
    retry_after = int(refused.headers["Retry-After"])
    rate = stack.limits.rates[bucket]
    assert retry_after == max(1, -(-1 // rate.per_second))
    assert stack.refused()[bucket] == 1
    stack.clock.now += retry_after
    assert send().status_code != 429  # type: ignore[operator]


def test_a_refused_mutation_writes_nothing(stack: Stack) -> None:
    c = stack.client
    for i in range(3):
        c.post(
            "/v1/mutations",
            json={
                "mutations": [
                    {
                        "kind": "node_upsert",
                        "node": f"profile:9{i}",
                        "ts": NOW - MINUTE,
                        "id": f"x{i}",
                    }
                ]
            },
        )
    assert stack.graph.node("profile:90") is not None
    assert stack.graph.node("profile:92") is None  # the third was refused before the handler


def test_the_operator_routes_share_one_bucket_and_reads_are_not_limited(stack: Stack) -> None:
    c = stack.client
    c.post("/v1/live/events/nope/start")
    c.post("/v1/live/events/nope/end")
    assert c.post("/v1/live/events/nope/materialise").status_code == 429
    assert c.post("/v1/console/events/nope/materialise").status_code == 429
    assert all(c.get("/v1/live/events").status_code == 200 for _ in range(20))


def test_the_subject_is_the_principals_key_id_when_there_is_one(stack: Stack) -> None:
    """The route policy puts the principal on request.state; each key has its own bucket."""
    from hopcast.api.ratelimit import subject_of

    scope = {"type": "http", "client": ("10.1.2.3", 4000), "headers": [], "app": stack.app}
    request = Request(scope)
    assert subject_of(request) == "host:10.1.2.3"
    request.state.principal = SimpleNamespace(key_id="k123")
    assert subject_of(request) == "key:k123"


def test_without_rate_limits_nothing_is_refused(tmp_path: Path) -> None:
    graph = Graph.open(clock=lambda: NOW)
    app = create_app(graph)
    assert app.state.rate_limits is None
    with TestClient(app) as c:
        assert all(c.post("/v1/mutations", json=MUTATION).status_code == 200 for _ in range(150))
        text = c.get("/metrics").text
    assert "hopcast_api_rate_limited" not in text
    graph.close()


def test_the_series_lists_every_bucket_from_zero(stack: Stack) -> None:
    assert stack.refused() == {MUTATIONS: 0.0, INGEST: 0.0, OPERATOR: 0.0}


def test_hopcast_serves_server_limits_by_default_and_answers_429_over_http() -> None:
    """make_server (what `hopcast serve` runs) installs the default rates; a real uvicorn
    server answers the 429 with its Retry-After header."""
    import socket
    import threading

    import httpx

    from hopcast.api import make_server

    graph = Graph.open(clock=lambda: NOW)
    try:
        default = make_server(graph, log_level="warning").config.app
        assert default.state.rate_limits.rates == DEFAULT_RATES
        assert make_server(graph, rate_limits=None).config.app.state.rate_limits is None
        server = make_server(graph, log_level="warning", rate_limits={OPERATOR: Rate(0.01, 1)})
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                assert http.post("/v1/live/events/nope/start").status_code == 404
                refused = http.post("/v1/live/events/nope/start")
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()
        assert not thread.is_alive(), "the server did not stop"
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "100"  # one token at 0.01/s
    finally:
        graph.close()


def test_a_client_cannot_pick_its_rate_limit_subject_with_x_forwarded_for() -> None:
    """Without a key the subject is the client's address: the TCP peer, never a header. A
    served server (what `hopcast serve --insecure` runs) keeps refusing a client that sends a
    new X-Forwarded-For with each request, and reports the peer's address, not the header's."""
    import socket
    import threading

    import httpx

    from hopcast.api import make_server
    from hopcast.api.server import PROXY_HEADERS

    assert PROXY_HEADERS is False
    graph = Graph.open(clock=lambda: NOW)
    try:
        server = make_server(graph, log_level="warning", rate_limits={OPERATOR: Rate(0.01, 1)})
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                answers = [
                    http.post(
                        "/v1/live/events/nope/start",
                        headers={"X-Forwarded-For": f"10.0.0.{i}", "X-Real-IP": f"10.0.1.{i}"},
                    ).status_code
                    for i in range(1, 4)
                ]
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()
        assert not thread.is_alive(), "the server did not stop"
        assert answers == [404, 429, 429], "X-Forwarded-For gave the client a fresh bucket"
    finally:
        graph.close()


def test_the_ingest_route_draws_from_each_keys_ingest_bucket(tmp_path: Path) -> None:
    """`hopcast ingest run --listen` serves the ingest route in its own app: over its rate a
    key gets 429 with Retry-After and nothing is journaled, while another key is not held up."""
    from hopcast.api.ingest import ingest_app
    from hopcast.api.policy import Security
    from hopcast.auth.keys import KeyFile

    keys = KeyFile(tmp_path / "keys.json")
    _, first = keys.create("collector-1", ["writer"], 0)
    _, second = keys.create("collector-2", ["writer"], 0)
    journal = Journal(tmp_path / "journal")
    limits = {INGEST: Rate(0.01, 1)}
    app = ingest_app({"logs": journal}, security=Security(keys=keys), rate_limits=limits)
    client = TestClient(app)

    def send(key: str, n: int) -> object:
        headers = {"authorization": f"Bearer {key}"}
        return client.post("/v1/ingest/logs", json=[{"n": n}], headers=headers)

    assert send(first, 1).status_code == 202
    end = journal.end.offset
    refused = send(first, 2)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "100"  # one token at 0.01/s
    assert refused.json()["bucket"] == INGEST
    assert journal.end.offset == end, "a refused batch was journaled"
    assert send(second, 3).status_code == 202

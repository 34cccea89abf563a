"""POST /v1/ingest/{source}: JSON lines and arrays into the journal (202), and every refusal."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from hopcast.api.app import create_app
from hopcast.api.ingest import ingest_app, parse_body
from hopcast.graphdb import Graph
from hopcast.stream.sources.journal import Journal, JournalSource

with warnings.catch_warnings():
    # Starlette nudges towards "httpx2"; the TestClient works the same with httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "j")
    yield j  # type: ignore[misc]
    j.close()


def read_all(directory: Path) -> list[bytes]:
    s = JournalSource("s", directory)
    s.open({})
    out = [r.value for r in s.poll(10_000, 0.05)]
    s.close()
    return out


def test_json_lines_and_arrays_are_journaled_before_the_202(journal: Journal) -> None:
    client = TestClient(ingest_app({"browse": journal}, max_body_bytes=10_000, max_records=5))
    r = client.post("/v1/ingest/browse", content=b'{"a": 1}\n\n{"b": 2}\n')
    assert r.status_code == 202
    assert r.json() == {
        "accepted": 2,
        "position": {"partition": "0", "offset": journal.end.offset},
        "replayed": False,
    }
    r = client.post("/v1/ingest/browse", json=[{"c": 3}, {"d": [1, 2]}])
    assert r.status_code == 202 and r.json()["accepted"] == 2
    assert read_all(journal.directory) == [b'{"a": 1}', b'{"b": 2}', b'{"c":3}', b'{"d":[1,2]}']
    metrics = client.get("/metrics").text
    assert 'hopcast_ingest_http_records_total{source="browse"} 4.0' in metrics
    assert 'hopcast_ingest_journal_fsyncs_total{source="browse"} 2.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        (b"", 400, "empty_body", "empty"),
        (b'{"a": 1}\n{"b": oops}\n', 400, "malformed_json", "line 2"),
        (b'[{"a": 1}, ', 400, "malformed_json", "array"),
        (b'{"a": 1}\n[1, 2]\n', 400, "not_an_object", "line 2"),
        (b'[{"a": 1}, 3]', 400, "not_an_object", "element 1"),
        (b"\n".join([b'{"a": 1}'] * 6), 413, "too_many_records", "at most 5"),
        (b'{"a": "' + b"x" * 20_000 + b'"}', 413, "body_too_large", ""),
    ],
)
def test_bad_requests_are_refused_and_nothing_is_journaled(
    journal: Journal, body: bytes, status: int, kind: str, message: str
) -> None:
    client = TestClient(ingest_app({"browse": journal}, max_body_bytes=10_000, max_records=5))
    r = client.post("/v1/ingest/browse", content=body)
    assert r.status_code == status
    assert r.json()["error"] == kind
    assert message in r.json()["message"]
    assert read_all(journal.directory) == []
    if status == 400:
        assert f'hopcast_ingest_http_rejected_total{{error="{kind}",source="browse"}} 1.0' in (
            client.get("/metrics").text
        )


def test_an_unknown_source_is_404_and_the_route_sits_in_the_main_api(journal: Journal) -> None:
    with Graph.open(None) as graph:
        client = TestClient(create_app(graph, journals={"browse": journal}))
        r = client.post("/v1/ingest/nope", content=b'{"a": 1}')
        assert r.status_code == 404 and "browse" in r.json()["message"]
        r = client.post("/v1/ingest/browse", content=json.dumps({"a": 1}).encode())
        assert r.status_code == 202
        assert "hopcast_ingest_http_records_total" in client.get("/metrics").text


def test_parse_body_keeps_lines_byte_for_byte() -> None:
    assert parse_body(b'  {"a":   1}\r\n') == [b'{"a":   1}']


def test_a_record_no_store_can_hold_is_acknowledged_and_becomes_a_dead_letter_not_a_crash(
    journal: Journal, tmp_path: Path
) -> None:
    """The 202 promises the record is kept; the engine then dead-letters what the store could
    not hold (a 600-byte node id, a number beyond int64) and writes the rest."""
    from hopcast.durations import HOUR, now_us
    from hopcast.stream.deadletter import DeadLetterStore
    from hopcast.stream.engines import engine_for
    from hopcast.stream.mapping import DEMO_MAPPINGS, Mapping

    ts_ms = (now_us() - HOUR) // 1000
    game = {"event": "game_session_end", "ts_ms": ts_ms, "game_id": "1", "device_id": "d"}
    lines = [
        game | {"profile_id": "ok", "minutes": 3},
        game | {"profile_id": "p" * 600, "minutes": 3},
        game | {"profile_id": "big", "minutes": 2**70},
    ]
    client = TestClient(ingest_app({"games": journal}))
    body = b"\n".join(json.dumps(d).encode() for d in lines)
    assert client.post("/v1/ingest/games", content=body).status_code == 202
    with Graph.open(tmp_path / "g") as g:
        maps = Mapping.load_dir(DEMO_MAPPINGS, g.schema)
        engine = engine_for(g, [JournalSource("games", journal.directory)], maps, batch_ms=10)
        stats = engine.run(until_idle=True)  # does not raise
        assert stats.events == 3 and stats.dead_by_reason == {"out_of_bounds": 2}
        assert g.exists("profile:ok", "plays", "game:1")
        assert {d.reason for d in DeadLetterStore(g.store.kv)} == {"out_of_bounds"}

"""Property: whatever a client sends to the write endpoints, the answer is a 2xx that did what it
says or a 4xx that names the problem, never a 5xx.

Hypothesis throws bodies at ``POST /v1/mutations`` and ``POST /v1/ingest/{source}``: mutations
shaped after the demo schema with every field drawn wide (odd and long ids, times of every
type and size, properties of arbitrary JSON), arbitrary JSON documents, JSON nested thousands of
levels deep, lone surrogate escapes, and arbitrary bytes. For every answer:

* never a 5xx;
* a 4xx is JSON ``{"error": <kind>, "message": <text>}`` with a known kind and a message that
  says something (a rejected mutation also names its ``index``);
* a 2xx write is readable afterwards: every mutation not reported ``expired`` left its target at
  least as new as itself (present with a ``ts`` at or after its own, or removed by a delete at
  or after it), read back over HTTP (``GET /v1/nodes/{id}``, ``GET /v1/edges/exists``); every
  record a journal POST accepted is in the journal, in order, as sent.

Deterministic (derandomised, no example database) and bounded (MAX_EXAMPLES per endpoint).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.seed import NOW, SEED
from hopcast import Graph
from hopcast.api import create_app
from hopcast.durations import DAY, HOUR
from hopcast.stream.sources.journal import Journal, JournalSource

#: Generous bound on one request, start-up and shutdown; reached only if the server hangs.
REQUEST_TIMEOUT_S = 30
#: Bodies per endpoint: enough to meet every strategy below many times, few enough for a busy
#: two-core machine (each is one request and a few reads).
MAX_EXAMPLES = 300

SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: The error kinds each endpoint may answer (hopcast.api.errors and the routes' tables).
MUTATION_ERRORS = {
    "malformed_json",
    "too_deep",
    "validation_error",
    "invalid_mutation",
    "schema_violation",
    "out_of_bounds",
    "future_time",
    "too_many_mutations",
    "body_too_large",
}
INGEST_ERRORS = {
    "empty_body",
    "malformed_json",
    "not_an_object",
    "too_deep",
    "too_many_records",
    "body_too_large",
}


@dataclass
class Api:
    client: httpx.Client
    journal: Journal
    reader: JournalSource
    schema: Any
    #: Newest delete (ts) acknowledged per target: a node id, or (src, type, dst).
    deleted: dict[Any, int] = field(default_factory=dict)
    requests: int = 0


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app served by uvicorn on a loopback port: a real server decodes a percent-encoded
    path once (Starlette's TestClient decodes it twice, so ``%25`` in an id would not
    survive)."""
    graph = Graph.open(clock=lambda: NOW)
    graph.apply(SEED)
    directory: Path = tmp_path_factory.mktemp("journal")
    journal = Journal(directory)
    app = create_app(graph, journals={"logs": journal})
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    # Bound before the server starts: connections wait in the backlog until it accepts them.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    reader = JournalSource("logs", directory)
    reader.open({})
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
            yield Api(client, journal, reader, graph.schema)
    finally:
        server.should_exit = True
        thread.join(REQUEST_TIMEOUT_S)
        sock.close()
        reader.close()
        journal.close()
        graph.close()
    assert not thread.is_alive(), "the server did not stop"


# -- strategies -----------------------------------------------------------------------------------

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.integers(min_value=-(2**63) - 2, max_value=2**63 + 2)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
#: Any JSON value, wide and a few levels deep.
JSON_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)

_KEYS = st.one_of(
    st.text(min_size=1, max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.text(min_size=200, max_size=600),  # beyond the 250-byte bound, or just under it
    st.sampled_from(["1", "a/b", "a,b", "../x", "x?y#z", "%2F", " ", "\x00", "é" * 130]),
)
_TYPES = st.sampled_from(
    ["account", "profile", "device", "title", "genre", "game", "live_event", "team", "planet"]
)
NODE_IDS = st.one_of(
    st.builds(lambda t, k: f"{t}:{k}", _TYPES, _KEYS),
    st.text(max_size=20),
    JSON_VALUES,
)
TIMES = st.one_of(
    st.integers(min_value=NOW - 200 * DAY, max_value=NOW + 2 * HOUR),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=NOW - 200 * DAY, max_value=NOW).map(float),
    st.floats(),
    st.text(max_size=8),
    st.none(),
)
_PROP_NAMES = st.sampled_from(
    ["name", "kids", "year", "plan", "position_s", "minutes", "device", "row", "\x00x", "nope"]
)
PROPS = st.one_of(st.dictionaries(_PROP_NAMES, JSON_VALUES, max_size=4), JSON_VALUES)
_EDGE_TYPES = st.sampled_from(
    ["has_profile", "started_watching", "browsed", "plays", "in_genre", "logged_in_from", "x"]
)


@st.composite
def mutation(draw: st.DrawFn) -> Any:
    """One mutation's JSON form: a real kind with every field drawn wide, a field missing or
    added now and then, or any JSON value."""
    kind = draw(st.sampled_from(["node_upsert", "node_delete", "edge_upsert", "edge_delete"]))
    doc: dict[str, Any] = {"kind": kind, "ts": draw(TIMES), "id": draw(st.text(max_size=40))}
    if kind.startswith("node"):
        doc["node"] = draw(NODE_IDS)
    else:
        doc |= {"src": draw(NODE_IDS), "type": draw(_EDGE_TYPES), "dst": draw(NODE_IDS)}
    if kind.endswith("upsert") and draw(st.booleans()):
        doc["props"] = draw(PROPS)
    if draw(st.integers(0, 9)) == 0:
        doc["seq"] = draw(st.one_of(st.integers(min_value=-1, max_value=2**64), JSON_VALUES))
    if draw(st.integers(0, 9)) == 0:
        doc.pop(draw(st.sampled_from(sorted(doc))))
    if draw(st.integers(0, 19)) == 0:
        doc[draw(st.text(max_size=5))] = draw(JSON_VALUES)
    return draw(st.one_of(st.just(doc), JSON_VALUES)) if draw(st.integers(0, 9)) == 0 else doc


@st.composite
def valid_mutation(draw: st.DrawFn) -> dict[str, Any]:
    """A mutation the demo schema accepts (so that writes happen, and are checked): odd keys,
    times from long past (expired on arrival for types with a retention) to the allowed skew,
    whole floats where integers go, a source order now and then."""
    recent = st.integers(min_value=NOW - 5 * DAY, max_value=NOW + HOUR)
    ts: Any = draw(
        st.one_of(recent, recent, recent, st.integers(min_value=0, max_value=NOW - 101 * DAY))
    )
    if draw(st.integers(0, 4)) == 0:
        ts = float(ts)
    key = draw(
        st.one_of(
            st.sampled_from(["1", "2", "a/b", "a,b", "%2F", "é"]),
            st.text(min_size=1, max_size=10),
            _KEYS.filter(_short),
        )
    )
    kind = draw(st.sampled_from(["node_upsert", "node_delete", "edge_upsert", "edge_delete"]))
    doc: dict[str, Any] = {"kind": kind, "ts": ts, "id": draw(st.text(min_size=1, max_size=20))}
    if draw(st.booleans()):
        doc["seq"] = draw(st.integers(min_value=0, max_value=2**63 - 1))
    if kind.startswith("node"):
        node_type, props = draw(
            st.sampled_from(
                [
                    ("profile", {"name": "Ann", "kids": True}),
                    ("title", {"name": "Dark", "year": 2017.0}),
                    ("device", {"device_type": "tv"}),  # retention 100 days
                ]
            )
        )
        doc["node"] = f"{node_type}:{key}"
        if kind == "node_upsert":
            doc["props"] = props
        return doc
    src, edge, dst, props = draw(
        st.sampled_from(
            [
                ("profile", "started_watching", "title", {"position_s": 60.0}),
                ("account", "has_profile", "profile", {}),
                ("account", "logged_in_from", "device", {"ip_country": "NL"}),  # two-way
                ("device", "logged_in_from", "account", {}),
            ]
        )
    )
    other = draw(st.sampled_from(["1", "2", key]))
    doc |= {"src": f"{src}:{key}", "type": edge, "dst": f"{dst}:{other}"}
    if kind == "edge_upsert":
        doc["props"] = props
    return doc


def _short(key: str) -> bool:
    return len(key.encode()) <= 200


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def mutation_bodies(draw: st.DrawFn) -> bytes:
    """A request body for POST /v1/mutations."""
    choice = draw(st.integers(-3, 10))
    if choice <= 3:  # writes the schema accepts
        items = draw(st.lists(valid_mutation(), min_size=1, max_size=6))
        return json.dumps({"mutations": items}).encode()
    if choice <= 5:  # mostly not
        items = draw(st.lists(st.one_of(mutation(), valid_mutation()), max_size=6))
        return json.dumps({"mutations": items}).encode()
    if choice == 6:
        return json.dumps(draw(JSON_VALUES)).encode()
    m = draw(valid_mutation())
    if choice == 7:  # a property nested deeper than any bound
        m |= {"kind": "node_upsert", "node": "profile:deep", "props": {"name": "DEEP"}}
        depth = draw(st.integers(min_value=30, max_value=3000))
        return json.dumps({"mutations": [m]}).replace('"DEEP"', _deep(depth)).encode()
    if choice == 8:  # a lone surrogate escape, which is no Unicode text
        return json.dumps({"mutations": [m]}).replace('"kind"', '"\\ud800kind"', 1).encode()
    if choice == 9:  # a huge integer literal where an integer goes
        digits = draw(st.integers(min_value=19, max_value=400))
        text = json.dumps({"mutations": [m]})
        return text.replace(f'"ts": {json.dumps(m["ts"])}', '"ts": ' + "9" * digits).encode()
    return draw(st.binary(max_size=200))


@st.composite
def ingest_bodies(draw: st.DrawFn) -> bytes:
    """A request body for POST /v1/ingest/{source}: JSON lines, a JSON array, anything."""
    choice = draw(st.integers(0, 7))
    records = st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5), max_size=5)
    if choice <= 2:
        return b"\n".join(json.dumps(r).encode() for r in draw(records))
    if choice == 3:
        return json.dumps(draw(records)).encode()
    if choice == 4:
        return json.dumps(draw(JSON_VALUES)).encode()
    if choice == 5:
        depth = draw(st.integers(min_value=30, max_value=3000))
        return ('{"a": ' + _deep(depth) + "}").encode()
    if choice == 6:
        lines = draw(st.lists(st.one_of(st.text(max_size=20), JSON_VALUES.map(json.dumps))))
        return "\n".join(lines).encode("utf-8", "surrogatepass")
    return draw(st.binary(max_size=200))


# -- checks ---------------------------------------------------------------------------------------


def refusal(response: Any, kinds: set[str]) -> dict[str, Any]:
    """A 4xx in the API's error shape, with a kind of ``kinds`` and a message."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    doc = response.json()
    assert isinstance(doc, dict), doc
    assert doc.get("error") in kinds, doc
    message = doc.get("message")
    assert isinstance(message, str) and message.strip(), doc
    return doc


def _target(m: dict[str, Any], two_way: bool) -> Any:
    if m["kind"].startswith("node"):
        return m["node"]
    ends = (m["src"], m["dst"])
    return (min(ends), m["type"], max(ends)) if two_way else (m["src"], m["type"], m["dst"])


def _newest_delete(api: Api, m: dict[str, Any], two_way: bool) -> int | None:
    """The newest acknowledged delete that can hide ``m``'s target (for an edge: the edge's, or
    either end's)."""
    found = [api.deleted.get(_target(m, two_way))]
    if m["kind"].startswith("edge"):
        found += [api.deleted.get(m["src"]), api.deleted.get(m["dst"])]
    known = [ts for ts in found if ts is not None]
    return max(known) if known else None


def read_back(api: Api, m: dict[str, Any]) -> int | None:
    """The ``ts`` of what is stored at ``m``'s target, read over HTTP; None if nothing is."""
    if m["kind"].startswith("node"):
        got = api.client.get("/v1/nodes/" + quote(m["node"], safe=""))
        assert got.status_code in (200, 404), got.text
        return int(got.json()["ts"]) if got.status_code == 200 else None
    params = {"src": m["src"], "edge": m["type"], "dst": m["dst"]}
    got = api.client.get("/v1/edges/exists", params=params)
    assert got.status_code == 200, got.text
    doc = got.json()
    return int(doc["edge"]["ts"]) if doc["exists"] else None


def check_written(api: Api, items: list[dict[str, Any]], expired: set[int]) -> None:
    """After a 2xx: every mutation not expired left its target at least as new as itself."""
    written = [m for i, m in enumerate(items) if i not in expired]
    for m in written:
        if m["kind"].endswith("delete"):
            two_way = m["kind"] == "edge_delete" and _two_way(api, m)
            key = _target(m, two_way)
            api.deleted[key] = max(api.deleted.get(key, m["ts"]), m["ts"])
    for m in written:
        stored = read_back(api, m)
        two_way = m["kind"].startswith("edge") and _two_way(api, m)
        if stored is not None:
            assert stored >= m["ts"], (m, stored)
        else:
            newest = _newest_delete(api, m, two_way)
            assert m["kind"].endswith("delete") or (newest is not None and newest >= m["ts"]), m


def _two_way(api: Api, m: dict[str, Any]) -> bool:
    et = api.schema.edges[m["type"]]
    src, dst = m["src"].partition(":")[0], m["dst"].partition(":")[0]
    return any(x.two_way and {x.src_type, x.dst_type} == {src, dst} for x in et.mappings)


# -- the properties -------------------------------------------------------------------------------


@SETTINGS
@given(body=mutation_bodies())
def test_any_mutations_body_is_written_and_readable_or_refused_naming_the_problem(
    api: Api, body: bytes
) -> None:
    api.requests += 1
    got = api.client.post(
        "/v1/mutations", content=body, headers={"content-type": "application/json"}
    )
    assert got.status_code < 500, got.text
    if got.status_code >= 400:
        doc = refusal(got, MUTATION_ERRORS)
        event(f"{got.status_code} {doc['error']}")
        if "index" in doc:
            sent = msgspec.json.decode(body)["mutations"]
            assert 0 <= doc["index"] < len(sent), doc
            assert f"#{doc['index']}" in doc["message"], doc
        return
    assert got.status_code == 200, got.text
    doc = got.json()
    items = msgspec.json.decode(body)["mutations"]
    # integers written as whole floats (5.0) are those integers
    items = [m | {"ts": int(m["ts"])} for m in items]
    assert doc["applied"] + doc["skipped"] == len(items), doc
    event(f"200, {min(doc['applied'], 3)}+ applied, {len(doc['expired'])} expired")
    check_written(api, items, {e["index"] for e in doc["expired"]})


@SETTINGS
@given(body=ingest_bodies(), keyed=st.booleans())
def test_any_journal_body_is_journaled_as_sent_or_refused_naming_the_problem(
    api: Api, body: bytes, keyed: bool
) -> None:
    api.requests += 1
    headers = {"Idempotency-Key": f"k{api.requests}"} if keyed else {}
    got = api.client.post("/v1/ingest/logs", content=body, headers=headers)
    assert got.status_code < 500, got.text
    if got.status_code >= 400:
        event(f"{got.status_code} {refusal(got, INGEST_ERRORS)['error']}")
        assert api.reader.poll(100, 0.0) == []  # nothing of a refused request is journaled
        return
    assert got.status_code == 202, got.text
    doc = got.json()
    text = body.strip()
    if text.startswith(b"["):
        sent = msgspec.json.decode(text)
    else:
        sent = [msgspec.json.decode(line) for line in text.split(b"\n") if line.strip()]
    assert doc["accepted"] == len(sent), doc
    event(f"202, {min(len(sent), 3)}+ records")
    read = []
    for _ in range(100):  # the records are durable before the 202: they are there to read
        read += api.reader.poll(len(sent) + 1 - len(read), 0.05)
        if len(read) >= len(sent):
            break
    assert [msgspec.json.decode(r.value) for r in read] == sent
    if read:
        assert read[-1].position.offset == doc["position"]["offset"]

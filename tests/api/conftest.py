"""A small demo-schema graph on the memory store with a fixed clock, and a client for its API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.seed import NOW, SEED, TestClient
from hopcast import Graph
from hopcast.api import create_app


@pytest.fixture
def graph() -> Iterator[Graph]:
    g = Graph.open(clock=lambda: NOW)
    g.apply(SEED)
    yield g
    g.close()


@pytest.fixture
def client(graph: Graph) -> Iterator[TestClient]:
    with TestClient(create_app(graph)) as c:
        yield c


#: Operations where the schemathesis contract test still finds failures (see the report in
#: tests/api/test_contract.py). Each is expected to fail until fixed; remove it when it passes.
CONTRACT_KNOWN_FAILURES = (
    "POST /v1/query/traverse",  # ST202: schema-valid where/limits rejected
    "POST /v1/mutations",  # ST202: schema-valid mutation rejected
    "POST /v1/live/events]",  # ST202: start in the past is a 400 (clock-dependent rule)
    "POST /v1/live/events/{event_id}/reschedule",  # ST202: clock-dependent times
    "POST /v1/live/events/{event_id}/materialise",  # ST202: segment keys not declared
    "POST /v1/console/reports",  # ST202: `updated` without stage/version/at
    "POST /v1/console/events/{event_id}/materialise",  # ST202: node/event not declared
    "GET /v1/nodes/{node_id}/neighbours",  # ST202: `where` is free text in the document
    "GET /v1/nodes/{node_id}/journey",  # ST202: a cursor not issued by the server
    "GET /v1/live/events]",  # ST205: 405 Allow header lists one route's methods
    "GET /v1/live/events/{event_id}/payload",  # ST202: stage/segment not declared
    "GET /v1/live/events/{event_id}/manifest",  # ST202: segment not declared
    "GET /v1/live/events/{event_id}/cardinality",  # ST202: event id pattern not declared
    "GET /v1/console/graph/search",  # ST202
    "GET /v1/console/graph/neighbourhood/{node_id}",  # ST202
    "GET /v1/console/graph/journey/{node_id}",  # ST202
    "GET /v1/console/events/{event_id}/segments",  # ST202
    # ST202: an empty reschedule body is schema-valid and a 400; the document declares no links
    "TestWorkflowsFollowingTheDocumentsLinksKeepTheContract",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "test_contract.py" in item.nodeid and any(
            op in item.nodeid for op in CONTRACT_KNOWN_FAILURES
        ):
            item.add_marker(
                pytest.mark.xfail(reason="known contract failure, listed in conftest.py")
            )

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

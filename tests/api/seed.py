"""The API tests' data: a handful of demo-schema mutations around a fixed ``NOW``."""

from __future__ import annotations

import warnings

from hopcast import EdgeUpsert, NodeUpsert
from hopcast.durations import DAY, HOUR

with warnings.catch_warnings():
    # Starlette nudges towards "httpx2"; the TestClient works the same with httpx.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

#: The fixed clock of every API test (Nov 2023).
NOW = 1_700_000_000_000_000

SEED = [
    NodeUpsert("account:1", NOW - 30 * DAY, "n1", {"country": "NL", "plan": "premium"}),
    NodeUpsert("profile:1", NOW - 30 * DAY, "n2", {"name": "Ann", "kids": False}),
    NodeUpsert("profile:2", NOW - 29 * DAY, "n3", {"name": "Bo", "kids": True}),
    NodeUpsert("title:10", NOW - 40 * DAY, "n4", {"name": "Dark", "kind": "show", "year": 2017}),
    NodeUpsert("title:11", NOW - 40 * DAY, "n5", {"name": "Ozark", "kind": "show", "year": 2017}),
    NodeUpsert("device:tv1", NOW - 2 * DAY, "n6", {"device_type": "tv"}),
    EdgeUpsert("account:1", "has_profile", "profile:1", NOW - 30 * DAY, "e1"),
    EdgeUpsert("account:1", "has_profile", "profile:2", NOW - 29 * DAY, "e2"),
    EdgeUpsert(
        "account:1", "logged_in_from", "device:tv1", NOW - 2 * DAY, "e3", {"ip_country": "NL"}
    ),
    EdgeUpsert(
        "profile:1",
        "started_watching",
        "title:10",
        NOW - 3 * DAY,
        "e4",
        {"position_s": 0, "device": "device:tv1"},
    ),
    EdgeUpsert(
        "profile:1",
        "started_watching",
        "title:11",
        NOW - DAY,
        "e5",
        {"position_s": 120, "device": "device:tv1"},
    ),
    EdgeUpsert(
        "profile:2",
        "browsed",
        "title:10",
        NOW - 2 * HOUR,
        "e6",
        {"row": "trending", "page": "home"},
    ),
]


__all__ = ["NOW", "SEED", "TestClient"]

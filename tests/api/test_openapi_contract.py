"""The OpenAPI contract, checked by schemathesis against the API served by uvicorn on a loopback
port over a demo store (the seeded graph, live events in several states with payloads, an ingest
journal; a fixed clock), with authentication on: every request carries an admin key, and the
checks that drop it expect the documented 401.

Every phase runs: the documented examples, coverage (boundary values of every declared bound,
valid and invalid), fuzzing, and stateful sequences that follow the document's links (a created
event to its commands and payloads, a write to what it wrote, a journey page to the next). Every
check runs and must pass, nothing is expected to fail: no 5xx, every answer's status, content
type, headers and body as documented, schema-valid input accepted and schema-invalid input
refused, a created event readable.

How schemathesis judges a refusal, and what this test configures (nothing is switched off):

* ``positive_data_acceptance`` (a request that fits the document must not be refused): by
  default 2xx, 3xx, 401, 403, 404, 409 and 429 count as accepting it. 404 (an id that names
  nothing) and 409 (the live event's state refuses the command) are right for such requests and
  stay accepted. Some rules no JSON Schema can state: a cursor this server issued, a start time
  not yet past, a body of at most 1 MiB, a node id of at most 250 *bytes*. The document names
  each of them, per operation, on the response that refuses it (``x-hopcast-rules``: status and
  error kind, see ``hopcast.api.openapi.RULES``); for those operations, and only those, this
  test accepts that status too, and :func:`a_rule_refusal_names_a_documented_rule` fails every
  such answer whose ``error`` is not one of the rules documented for that operation and status.
  So a 422 ``validation_error`` or a 400 for a schema-valid request still fails.
* ``negative_data_rejection`` (a request that breaks the document must be refused): 413 is
  added for the three operations whose item count the document bounds (``maxItems``) and that
  answer a request over it with 413 ``too_many_*``, as the document says.

Deterministic (derandomised, a fixed seed, no example database) and bounded (MAX_EXAMPLES per
operation and phase, STEP_COUNT steps per stateful run), so it passes the same way on a busy CI
machine: about 6,000 requests, 80 s of CPU (a third of it drawing the 8,192-character id lists
of ``GET /v1/nodes``), 3 min 15 s of wall time on a 2-core machine with a load average of 8.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.contract import Demo, SettledJobs, demo, served
from hopcast.api.openapi import RULES_EXTENSION

#: Examples per operation and phase: enough to reach every bound's edge (the coverage phase
#: derives those separately), few enough for a two-core CI machine.
MAX_EXAMPLES = 25
#: Steps of one stateful run: create, a command or two, the reads that follow them.
STEP_COUNT = 6
SEED = 20261206

#: schemathesis' default statuses that accept a schema-valid request (see the docstring).
ACCEPTING = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
#: schemathesis' default statuses that refuse a schema-invalid request.
REFUSING = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
#: Operations whose item count the document bounds with ``maxItems`` and that answer more items
#: with 413 (too large), the status the document gives.
ITEM_BOUNDED = ("POST /v1/mutations", "POST /v1/console/reports", "POST /v1/ingest/{source}")


def documented_rules(document: dict[str, Any]) -> dict[str, dict[int, set[str]]]:
    """``{operation label: {status: error kinds}}`` of the rules the document states."""
    out: dict[str, dict[int, set[str]]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                kinds = response.get(RULES_EXTENSION)
                if kinds:
                    label = f"{method.upper()} {path}"
                    out.setdefault(label, {})[int(status)] = set(kinds)
    return out


#: The rules of the served document (set when it is served).
RULES: dict[str, dict[int, set[str]]] = {}


def config(key: str) -> schemathesis.Config:
    operations: list[dict[str, Any]] = [
        {
            "include-name": label,
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ACCEPTING + [str(s) for s in sorted(by_status)]
                }
            },
        }
        for label, by_status in sorted(RULES.items())
    ]
    operations.append(
        {
            "include-name": list(ITEM_BOUNDED),
            "checks": {"negative_data_rejection": {"expected-statuses": [*REFUSING, "413"]}},
        }
    )
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "auth": {"openapi": {"bearer": {"bearer": key}}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True},
            },
            "checks": {"enabled": True},
            "operations": operations,
        }
    )


@schemathesis.check
def a_rule_refusal_names_a_documented_rule(
    ctx: Any, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A schema-valid request refused with a status this test accepts only because of the
    operation's documented rules must name one of those rules in its ``error``."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    kinds = RULES.get(case.operation.label, {}).get(response.status_code)
    if kinds is None:
        return None
    kind = response.json().get("error")
    if kind not in kinds:
        raise AssertionError(
            f"{case.operation.label} refused a schema-valid request with "
            f"{response.status_code} {kind!r}, not a documented rule ({', '.join(sorted(kinds))})"
        )
    return None


#: The demo store, served by uvicorn on a loopback port from the moment this module is loaded
#: (schemathesis reads the document when the tests are collected) until its tests are done.
_STORE: Demo = demo()
RULES.update(documented_rules(_STORE.app.openapi()))
_SERVED = served(SettledJobs(_STORE.app))
schema = schemathesis.openapi.from_url(
    f"{_SERVED.__enter__()}/openapi.json", config=config(_STORE.key)
)


@pytest.fixture(scope="module", autouse=True)
def _stop_serving() -> Iterator[None]:
    yield
    _SERVED.__exit__(None, None, None)
    _STORE.close()


def test_the_document_states_the_rules_no_schema_can() -> None:
    assert RULES["GET /v1/nodes/{node_id}/journey"] == {422: {"invalid_cursor"}}
    assert RULES["POST /v1/mutations"] == {
        413: {"body_too_large"},
        422: {"out_of_bounds", "future_time", "storage_refused"},
    }


def test_the_document_links_a_created_event_and_a_write_to_what_follows() -> None:
    paths = schema.raw_schema["paths"]
    created = paths["/v1/live/events"]["post"]["responses"]["201"]["links"]
    followed = {link["operationRef"].rsplit("~1", 1)[-1] for link in created.values()}
    assert {"start/post", "end/post", "cancel/post", "reschedule/post", "materialise/post"} <= (
        followed
    )
    assert created["GetEvent"]["parameters"] == {"event_id": "$response.body#/id"}
    assert "MaterialiseRecommendations" in created
    written = paths["/v1/mutations"]["post"]["responses"]["200"]["links"]
    assert written["GetNode"]["parameters"] == {"node_id": "$request.body#/mutations/0/node"}
    assert written["Neighbours"]["parameters"] == {"node_id": "$request.body#/mutations/0/src"}


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None, max_examples=MAX_EXAMPLES)
def test_every_operation_keeps_its_documented_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()


Workflows = schema.as_state_machine()
TestWorkflowsFollowingTheDocumentsLinksKeepTheContract = Workflows.TestCase
TestWorkflowsFollowingTheDocumentsLinksKeepTheContract.settings = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=STEP_COUNT,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

"""The OpenAPI contract, checked by schemathesis against the app over a demo store.

Every phase runs: the documented examples, coverage (boundary values of every declared bound,
valid and invalid), fuzzing, and stateful sequences that follow the document's links (a created
event to its commands, a mutation to the node it wrote). Every check runs, and must pass: no 5xx,
every answer's status, content type, headers and body as documented, schema-valid input
accepted and schema-invalid input refused.

Status (first full run, 2026-12-06, after the fixes in this branch): no server errors and no
response-schema failures on any operation; still failing, and marked expected-to-fail in
conftest.py until fixed: 16 operations whose schema-valid requests are refused by a rule the
document does not state (ST202), 1 wrong ``Allow`` header on a 405 (ST205), and the stateful
run (an empty reschedule body). Runtime on the shared 2-core machine: about 2.5 minutes for the
operations, 3.5 for the stateful run.

Deterministic (derandomised, a fixed seed, no example database) and bounded (MAX_EXAMPLES per
operation, STEP_COUNT per stateful run), so it passes the same way on a busy CI machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.contract import Demo, demo

#: Examples per operation and phase: enough to reach every bound's edge (the coverage phase
#: derives those separately), few enough for a two-core CI machine (see the README's timing).
MAX_EXAMPLES = 25
SEED = 20261206

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
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
    }
)

_DEMO = demo()
schema = schemathesis.openapi.from_asgi("/openapi.json", _DEMO.app, config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def _close_demo() -> Iterator[Demo]:
    yield _DEMO
    _DEMO.close()


@schema.parametrize()
@settings(suppress_health_check=list(HealthCheck), deadline=None, max_examples=MAX_EXAMPLES)
def test_every_operation_keeps_its_documented_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()


Workflows = schema.as_state_machine()
TestWorkflowsFollowingTheDocumentsLinksKeepTheContract = Workflows.TestCase
TestWorkflowsFollowingTheDocumentsLinksKeepTheContract.settings = settings(
    max_examples=MAX_EXAMPLES,
    stateful_step_count=6,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)

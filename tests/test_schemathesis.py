"""Schemathesis against the whole stack: every operation of the document `create_sketch?openapi`
serves (the same as `openapi.json`), driven with generated requests, valid ones and ones the
document says are wrong, by a guest signed in on the Firebase Auth emulator, and by a caller whose
token is no token; then the reads, a retry and a delete of a real sketch that failed after its
still was kept. Every answer must be no
server error and exactly what the document says: its status, headers, content type and body."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from conftest import Stack, record_figure
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SCENARIO = "schemathesis"
# Per operation and generation mode, then per operation on a real sketch: well under a minute.
EXAMPLES = 50
EXAMPLES_ON_A_SKETCH = 10
CHECKS: list[Callable[..., object]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

pytestmark = pytest.mark.timeout(180)


class Run:
    """Cases sent to the stack as its guest, each answer held to every check, the failures counted
    by check instead of stopping the run (so that the figures show them all)."""

    def __init__(self, stack: Stack) -> None:
        assert stack.guest is not None
        self.url = stack.create.url
        self.headers = stack.guest.headers
        self.session = requests.Session()
        self.examples: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.reports: list[str] = []

    def explore(
        self,
        operation: APIOperation,
        mode: GenerationMode,
        examples: int,
        headers: dict[str, str] | None = None,
        **fixed: Any,
    ) -> None:
        """`examples` cases of `operation` (with the `fixed` parts), sent with the guest's ID token
        unless other `headers` are given."""

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, **fixed))
        def exercise(case: Case) -> None:
            response = case.call(
                base_url=self.url, session=self.session, headers=headers or self.headers, timeout=30
            )
            self.examples[case.operation.label] += 1
            self.statuses[response.status_code] += 1
            for check in CHECKS:
                try:
                    case.validate_response(response, checks=[check])
                except FailureGroup as failed:
                    self.failures[check.__name__] += 1
                    self.reports.append(str(failed))

        exercise()


@pytest.fixture
def api(stack: Stack) -> Stack:
    # The default stack: AUTH_MODE=firebase with FIREBASE_AUTH_EMULATOR_HOST and FIREBASE_PROJECT_ID,
    # and a guest signed in on the Auth emulator (tests.conftest.PROJECT), as the app runs.
    assert stack.env["AUTH_MODE"] == "firebase" and stack.guest is not None
    return stack


def test_every_answer_is_what_the_document_says(api: Stack) -> None:
    # Loaded from the served contents: Schemathesis leaves out of a run the GET that served the
    # document it loaded by URL, and here that GET is every read.
    served = httpx.get(api.create.url, params={"openapi": ""}, timeout=10)
    schema = schemathesis.openapi.from_dict(served.json())
    operations = {
        operation.method.upper(): operation for operation in (r.ok() for r in schema.get_all_operations())
    }
    run = Run(api)

    for operation in operations.values():
        # An operation that takes nothing (the preflight) has nothing to get wrong.
        takes = len(operation.query) + len(operation.headers) + len(operation.body)
        run.explore(operation, GenerationMode.POSITIVE, EXAMPLES)
        if takes:
            run.explore(operation, GenerationMode.NEGATIVE, EXAMPLES)

    nobody = {"Authorization": "Bearer not-a-token"}
    for method in ("GET", "POST", "DELETE"):
        run.explore(operations[method], GenerationMode.POSITIVE, EXAMPLES_ON_A_SKETCH, headers=nobody)

    failed = api.failed_after_its_still().id
    run.explore(operations["GET"], GenerationMode.POSITIVE, EXAMPLES_ON_A_SKETCH, query={"id": failed})
    retry = {"id": failed, "action": "retry"}
    run.explore(operations["POST"], GenerationMode.POSITIVE, EXAMPLES_ON_A_SKETCH, query=retry)
    run.explore(operations["DELETE"], GenerationMode.POSITIVE, EXAMPLES_ON_A_SKETCH, query={"id": failed})

    record_figure(SCENARIO, "operations", len(operations))
    record_figure(SCENARIO, "examples", sum(run.examples.values()))
    for label, count in sorted(run.examples.items()):
        record_figure(SCENARIO, f"examples: {label}", count)
    record_figure(SCENARIO, "answers by status", dict(sorted(run.statuses.items())))
    for check in CHECKS:
        record_figure(SCENARIO, f"failures: {check.__name__}", run.failures[check.__name__])
    assert sorted(operations) == ["DELETE", "GET", "OPTIONS", "POST"]
    assert {202, 204, 401} <= set(run.statuses)  # a create or retry, a delete, a refused token
    assert not run.failures, "\n".join(run.reports[:5])

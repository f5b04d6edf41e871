"""The time limits that keep a paid request from being sent twice stay in order
(shared/core/timings.py)."""

from __future__ import annotations

from shared.core import timings
from shared.pipeline import topology


def test_every_limit_is_in_order() -> None:
    assert timings.broken() == []


def test_a_limit_out_of_order_is_named_with_why_it_matters() -> None:
    values = {name: float(getattr(timings, name)) for pair in timings.ORDER for name in pair[:2]}
    values["WEBHOOK_FUNCTION_TIMEOUT"] = timings.ACK_DEADLINE + 1

    assert timings.broken(values) == [
        f"WEBHOOK_FUNCTION_TIMEOUT ({timings.ACK_DEADLINE + 1:g} s) must be shorter than ACK_DEADLINE "
        f"({timings.ACK_DEADLINE:g} s): Pub/Sub never delivers a step again while it runs"
    ]


def test_deploy_and_the_queue_use_the_same_numbers() -> None:
    assert topology.STEP_DEADLINE_SECONDS == timings.STEP_DEADLINE
    assert topology.FUNCTION_TIMEOUT_SECONDS == timings.WEBHOOK_FUNCTION_TIMEOUT
    assert topology.ACK_DEADLINE_SECONDS == timings.ACK_DEADLINE
    assert timings.ACK_DEADLINE >= 10 and timings.ACK_DEADLINE <= 600  # Pub/Sub's own range

"""The steps' Pub/Sub topology: the one definition of its names, deadlines and retry policy.

The local stack creates it on the Pub/Sub emulator from `subscription_body`; `deploy.sh` reads the
same values through `python3 -m shared.pipeline.topology shell`. Nothing here needs more than the standard
library, so an operator's own python3 runs it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from shared.core import timings

TOPIC = "sketch-steps"
DEAD_LETTER_TOPIC = "sketch-steps-dead-letter"
SUBSCRIPTION = "sketch-steps-push"
DEAD_LETTER_SUBSCRIPTION = "sketch-steps-dead-letter-push"
STEP_ACTION = "step"
DEAD_LETTER_ACTION = "dead_letter"
SWEEP_ACTION = "sweep"

# One deadline per step, shorter than the function's timeout, which is shorter than the ack
# deadline (for push, also the time Pub/Sub waits for the answer): a step is never delivered again
# while it may still be running (shared/core/timings.py keeps them in order).
STEP_DEADLINE_SECONDS = int(timings.STEP_DEADLINE)
FUNCTION_TIMEOUT_SECONDS = int(timings.WEBHOOK_FUNCTION_TIMEOUT)
PUBLIC_FUNCTION_TIMEOUT_SECONDS = int(timings.PUBLIC_WEBHOOK_FUNCTION_TIMEOUT)
CREATE_FUNCTION_TIMEOUT_SECONDS = int(timings.CREATE_FUNCTION_TIMEOUT)
SCHEDULER_ATTEMPT_DEADLINE_SECONDS = int(timings.SCHEDULER_ATTEMPT_DEADLINE)
ACK_DEADLINE_SECONDS = int(timings.ACK_DEADLINE)


@dataclass(frozen=True)
class RetryPolicy:
    """How Pub/Sub delivers a step again after a 5xx, and how many deliveries before the dead letters."""

    min_backoff_seconds: float
    max_backoff_seconds: float
    max_delivery_attempts: int


# About 40 minutes of tries in all (10 s doubling to 10 min): a balance top-up or an outage of that
# length loses no sketch; beyond it the sketch fails with the reason.
PRODUCTION_RETRY = RetryPolicy(min_backoff_seconds=10, max_backoff_seconds=600, max_delivery_attempts=10)


def subscription_body(
    project: str, topic: str, push_endpoint: str, retry: RetryPolicy, *, dead_letters: bool
) -> dict[str, Any]:
    """The REST `Subscription` of a push subscription on `topic` that backs off after a 5xx; with
    `dead_letters`, a step that keeps failing ends in the dead-letter topic."""
    body: dict[str, Any] = {
        "topic": f"projects/{project}/topics/{topic}",
        "pushConfig": {"pushEndpoint": push_endpoint},
        "ackDeadlineSeconds": ACK_DEADLINE_SECONDS,
        "expirationPolicy": {},  # never expires, however quiet the project is
        "retryPolicy": {
            "minimumBackoff": f"{retry.min_backoff_seconds:g}s",
            "maximumBackoff": f"{retry.max_backoff_seconds:g}s",
        },
    }
    if dead_letters:
        body["deadLetterPolicy"] = {
            "deadLetterTopic": f"projects/{project}/topics/{DEAD_LETTER_TOPIC}",
            "maxDeliveryAttempts": retry.max_delivery_attempts,
        }
    return body


def main(argv: list[str]) -> int:
    """`python3 -m shared.pipeline.topology shell`: the topology as shell assignments, for deploy.sh."""
    if argv != ["shell"]:
        print("usage: python3 -m shared.pipeline.topology shell", file=sys.stderr)
        return 2
    values = {
        "STEPS_TOPIC": TOPIC,
        "DEAD_LETTER_TOPIC": DEAD_LETTER_TOPIC,
        "STEPS_SUBSCRIPTION": SUBSCRIPTION,
        "DEAD_LETTER_SUBSCRIPTION": DEAD_LETTER_SUBSCRIPTION,
        "STEP_ACTION": STEP_ACTION,
        "DEAD_LETTER_ACTION": DEAD_LETTER_ACTION,
        "SWEEP_ACTION": SWEEP_ACTION,
        "ACK_DEADLINE_SECONDS": ACK_DEADLINE_SECONDS,
        "FUNCTION_TIMEOUT_SECONDS": FUNCTION_TIMEOUT_SECONDS,
        "PUBLIC_FUNCTION_TIMEOUT_SECONDS": PUBLIC_FUNCTION_TIMEOUT_SECONDS,
        "CREATE_FUNCTION_TIMEOUT_SECONDS": CREATE_FUNCTION_TIMEOUT_SECONDS,
        "SCHEDULER_ATTEMPT_DEADLINE_SECONDS": SCHEDULER_ATTEMPT_DEADLINE_SECONDS,
        "MIN_RETRY_DELAY": f"{PRODUCTION_RETRY.min_backoff_seconds:g}s",
        "MAX_RETRY_DELAY": f"{PRODUCTION_RETRY.max_backoff_seconds:g}s",
        "MAX_DELIVERY_ATTEMPTS": PRODUCTION_RETRY.max_delivery_attempts,
    }
    for name, value in values.items():
        print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Paid requests (text to image, Seedream, Kling): the record made before each is sent, and what is
done with one whose answer never came (its holder was killed, or the answer was lost on the way).

Before a paid request is sent, its holder writes, under its lease, that it is sending it: the stage,
since when, and whether its task can find the sketch again (a webhook registered with the request
names the sketch; Seedream's answer and Kling's reference form have none). Novita's answer clears
it. A record left behind means this request may have started a paid task, so:

- while the task can still show up (a webhook names the sketch, within `UNKNOWN_OUTCOME_GRACE_SECONDS`),
  nothing is sent again: the task's result is adopted when its webhook or recovery brings it;
- once it cannot, a step sends the request again and says so, with a line in the sketch's `repaid`
  and a WARNING: the one documented way a request is paid twice. After `MAX_REPAYS` such lines the
  sketch fails instead;
- the create's own text-to-image request is never sent again: the sketch of a create that died
  fails with what is known (sent and unanswered, or never sent at all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from shared.novita.errors import NovitaError, NovitaRejected, NovitaUnavailable
from shared.pipeline.lease import Lease
from shared.pipeline.results import OUTCOME_KNOWN, Outcome, fail_changes
from shared.pipeline.work import RetryLater, Tools, Waiting, after_novita_failed
from shared.sketch.model import Sketch, Stage, utcnow
from shared.sketch.store import Changes

log = logging.getLogger(__name__)
R = TypeVar("R")

MAX_REPAYS = 2
WHAT: dict[Stage, str] = {"image": "text-to-image", "video": "image-to-video"}


def abandoned(sketch: Sketch, now: datetime, grace: float) -> bool:
    """Whether the sketch's unanswered request can no longer bring its task back to it: its holder is
    gone, and no webhook was registered for it or the grace has passed."""
    if sketch.submission_unknown is None or sketch.lease_is_live(now):
        return False
    if not sketch.submission_webhook:
        return True
    since = sketch.submission_unknown_since
    return since is None or since + timedelta(seconds=grace) <= now


def may_send(sketch: Sketch, stage: Stage, now: datetime, grace: float) -> bool:
    """Whether a holder may send the sketch's `stage` request: none is unanswered, or the one that is
    can no longer be adopted and the sketch may still pay again."""
    if sketch.submission_unknown is None:
        return True
    return (
        sketch.submission_unknown == stage
        and abandoned(sketch, now, grace)
        and len(sketch.repaid) < MAX_REPAYS
    )


def send(lease: Lease, stage: Stage, webhook: bool) -> Sketch:
    """Record, under the lease, that the `stage` request is being sent (again, in another form, when
    the holder's first form was refused); the sketch as written. RetryLater if the lease was lost
    meanwhile: then nothing may be sent."""
    sketch, now = lease.sketch, utcnow()
    changes: Changes = {
        "submission_unknown": stage,
        "submission_unknown_since": now,
        "submission_webhook": webhook,
        "submission_owner": lease.owner,
    }
    if sketch.submission_unknown is not None and sketch.submission_owner != lease.owner:
        since = sketch.submission_unknown_since
        sent = f"{since:%Y-%m-%dT%H:%M:%SZ}" if since else "an unknown time"
        line = (
            f"{stage}: the {WHAT[stage]} request sent at {sent} got no answer and no task of it can "
            f"reach the sketch any more; sent again at {now:%Y-%m-%dT%H:%M:%SZ}"
        )
        changes["repaid"] = [*sketch.repaid, line]
        log.warning("paying again for a request whose answer was lost: %s", line, extra={"stage": stage})
    written = lease.finish(changes)
    if written is None:
        raise RetryLater(
            f"the lease was lost before the {WHAT[stage]} request could be sent; it was not sent"
        )
    return written


def ask(tools: Tools, request: Callable[[], R]) -> R | NovitaError:
    """Make a paid request of a step under the balance breaker (BalanceExhausted, with nothing sent,
    while it is open): Novita's answer, or the error it gave, which the breaker hears too."""
    probe = tools.breaker.check()
    try:
        try:
            answer = request()
        except NovitaError as exc:
            tools.breaker.settle(probe, exc)
            return exc
        tools.breaker.settle(probe, None)
        return answer
    finally:
        tools.breaker.release(probe)  # nothing was asked after all (the lease was lost first)


def refused(lease: Lease, error: NovitaRejected | NovitaUnavailable, what: str) -> Outcome:
    """What a refused paid request does to the step: a balance refusal gives the work back until the
    balance is back, any other refusal fails the sketch with Novita's reason, and Novita out of reach
    (429, 5xx, no connection) gives it back with backoff."""
    if isinstance(error, NovitaUnavailable):
        backoff = after_novita_failed(lease.sketch)
        lease.release({**OUTCOME_KNOWN, **backoff}, due=backoff["retry_not_before"])
        raise RetryLater(f"{what} could not be reached: {error.describe()}") from error
    if error.is_balance:
        lease.release(OUTCOME_KNOWN)
        raise Waiting(None, f"{what} refused for the balance: {error.describe()}") from error
    lease.finish(fail_changes(error.describe()))
    log.warning("%s refused the request: %s", what, error.describe())
    return Outcome.APPLIED


def unanswered_reason(sketch: Sketch, grace: float) -> str:
    """Why a sketch fails whose request went unanswered and will not be sent again."""
    stage = sketch.submission_unknown or "image"
    if len(sketch.repaid) >= MAX_REPAYS:
        return (
            f"Novita's answers to {len(sketch.repaid) + 1} {WHAT[stage]} requests were lost on the way; "
            "it is not sent again"
        )
    return (
        f"the {WHAT[stage]} request was sent but Novita's answer never arrived, and no result named this "
        f"sketch within {grace:.0f} s; it was not sent again, so that it is not paid for twice"
    )


NEVER_SENT = (
    "the request that makes the still was never sent to Novita: the create that made this sketch "
    "stopped before it could send it, and nothing was paid; make the sketch again"
)

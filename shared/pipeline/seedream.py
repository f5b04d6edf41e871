"""The `seedream` step: make the still with Seedream 3.0's synchronous endpoint (Novita's reference
form of text to image), which answers with the image itself after drawing it."""

from __future__ import annotations

import logging
from datetime import timedelta

from shared.core.deadline import Deadline
from shared.novita.client import NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable
from shared.pipeline import lease as leases
from shared.pipeline.check import hand_on, unknown_reason
from shared.pipeline.results import NO_LEASE, OUTCOME_KNOWN, Outcome, fail_changes, progress_at
from shared.pipeline.work import RetryLater, Tools, record_paid
from shared.sketch.model import Sketch, Status, StepKind, utcnow
from shared.sketch.store import Changes

log = logging.getLogger(__name__)

SEEDREAM_REQUEST_BUDGET = timedelta(seconds=110)


def run(tools: Tools, sketch: Sketch, deadline: Deadline) -> Outcome:
    def may(s: Sketch) -> bool:
        return (
            s.status is Status.IMAGE_PENDING
            and s.image_form == "sync"
            and s.image_task_id is None
            and s.submission_unknown is None
        )

    now = utcnow()
    # Until Seedream answers, whether the still was paid for is unknown.
    with leases.take(
        tools, sketch, may, {"submission_unknown": "image", "submission_unknown_since": now}
    ) as lease:
        if lease is None:
            return Outcome.IN_PROGRESS
        sketch = lease.hold(SEEDREAM_REQUEST_BUDGET)
        tools.breaker.check()
        try:
            url = tools.novita.seedream(
                prompt=sketch.prompt,
                width=sketch.width,
                height=sketch.height,
                seed=sketch.seed,
                deadline=deadline,
            )
        except NovitaRejected as exc:
            if exc.is_balance:
                tools.breaker.open(exc)
                lease.release(OUTCOME_KNOWN)
                raise RetryLater(f"Seedream refused for the balance: {exc.describe()}") from exc
            lease.finish(fail_changes(exc.describe()))
            log.warning("Seedream refused the request: %s", exc.describe())
            return Outcome.APPLIED
        except NovitaUnavailable as exc:
            lease.release(OUTCOME_KNOWN)
            raise RetryLater(f"Seedream could not be reached: {exc.describe()}") from exc
        except NovitaOutcomeUnknown as exc:
            lease.finish(fail_changes(unknown_reason(tools, sketch)))
            log.warning("Seedream's answer was lost: %s", exc.describe())
            return Outcome.APPLIED
        now = utcnow()
        drawn: Changes = {
            "status": Status.IMAGE_COMPLETE,
            "image_url": url,
            "novita_image_url": url,
            "progress": progress_at("chain"),
            "eta_seconds": None,
            **NO_LEASE,
            **OUTCOME_KNOWN,
            "recovery_due_at": tools.results.recovery_due(now, StepKind.CHAIN),
        }
        made = record_paid("the still Seedream drew", lambda: lease.finish(drawn), deadline)
    log.info("Seedream drew the still", extra={"form": "reference"})
    if made is not None:
        hand_on(tools, made, now)
    return Outcome.APPLIED

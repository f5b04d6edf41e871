"""The `seedream` step: make the still with Seedream 3.0's synchronous endpoint (Novita's reference
form of text to image), which answers with the image itself after drawing it.

Its answer is the only way the still can reach the sketch (no task, no webhook): a request whose
answer was lost can never be adopted, so the next delivery sends it again (`shared/pipeline/paid.py`).
For the same reason its link cannot be renewed once it expires, so the step keeps the still in the
bucket at once, while the link is fresh; if it cannot just now, the chain keeps it as for any still.
"""

from __future__ import annotations

import logging

from shared.core.deadline import Deadline
from shared.novita.errors import NovitaError, NovitaRejected, NovitaUnavailable
from shared.pipeline import lease as leases
from shared.pipeline import paid
from shared.pipeline.chain import fetch_and_keep
from shared.pipeline.check import hand_on
from shared.pipeline.results import NO_LEASE, OUTCOME_KNOWN, Outcome, progress_at
from shared.pipeline.work import RetryLater, Tools, record_paid
from shared.sketch.model import Sketch, Status, StepKind, utcnow
from shared.sketch.store import Changes

log = logging.getLogger(__name__)


def run(tools: Tools, sketch: Sketch, deadline: Deadline) -> Outcome:
    grace = tools.settings.unknown_outcome_grace_seconds

    def may(s: Sketch) -> bool:
        return (
            s.status is Status.IMAGE_PENDING
            and s.image_form == "sync"
            and s.image_task_id is None
            and paid.may_send(s, "image", utcnow(), grace)
        )

    with leases.take(tools, sketch, may) as lease:
        if lease is None:
            return Outcome.IN_PROGRESS

        def draw() -> str:
            sent = paid.send(lease, "image", webhook=False)
            return tools.novita.seedream(
                prompt=sent.prompt, width=sent.width, height=sent.height, seed=sent.seed, deadline=deadline
            )

        url = paid.ask(tools, draw)
        if isinstance(url, NovitaRejected | NovitaUnavailable):
            return paid.refused(lease, url, "Seedream")
        if isinstance(url, NovitaError):
            # The still may be drawn and paid for, but it can never reach the sketch now.
            lease.release(due=utcnow())
            raise RetryLater(f"Seedream's answer was lost: {url.describe()}") from url
        now = utcnow()
        due = {"recovery_due_at": tools.results.recovery_due(now, StepKind.CHAIN)}
        drawn: Changes = {
            "status": Status.IMAGE_COMPLETE,
            "image_url": url,
            "novita_image_url": url,
            "progress": progress_at("chain"),
            "eta_seconds": None,
            **OUTCOME_KNOWN,
            **due,
        }
        made = record_paid("the still Seedream drew", lambda: lease.finish(drawn), deadline)
        log.info("Seedream drew the still", extra={"form": "reference"})
        if made is None:
            return Outcome.APPLIED
        if tools.storage is not None:
            try:
                kept = fetch_and_keep(tools, lease, deadline)
            except RetryLater as exc:
                log.warning("the still could not be kept yet; the chain will keep it: %s", exc)
            else:
                if isinstance(kept, Outcome):
                    return kept  # refused (the sketch failed), or the sketch was deleted
        # None when the lease went back already (the keeping gave up on a fault that may pass).
        latest = lease.finish({**NO_LEASE, **due}) or tools.store.get(made.id)
    if latest is not None:
        hand_on(tools, latest, now)
    return Outcome.APPLIED

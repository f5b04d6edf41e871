"""Recovery: finish sketches whose webhooks never came, by asking Novita's task-result.

A `GET ?id=` refreshes one sketch; the sweep refreshes every sketch whose check is due. It runs as
a command (`python -m shared.recovery`) and behind `novita_webhook?action=sweep`, which Cloud
Scheduler calls with `Authorization: Bearer <sweep token>` (`python3 -m shared.webhook_tokens
sweep-token` prints it, from WEBHOOK_SECRET). Whatever it learns goes through the same
`Pipeline.apply` as a webhook.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shared import logs
from shared.config import Settings
from shared.novita_client import NovitaClient, NovitaError
from shared.pipeline import MalformedResult, Pipeline, RetryLater, fail_changes
from shared.sketch import Sketch, Status, utcnow
from shared.sketch_store import Changes, SketchStore, StoreUnavailable
from shared.webhook_tokens import Stage

log = logging.getLogger(__name__)

DEFAULT_BATCH = 50
DEFAULT_SECONDS = 40.0


@dataclass
class SweepReport:
    examined: int = 0
    changed: int = 0
    errors: list[str] = field(default_factory=list)


class Recovery:
    def __init__(
        self, settings: Settings, store: SketchStore, novita: NovitaClient, pipeline: Pipeline
    ) -> None:
        self._settings = settings
        self._store = store
        self._novita = novita
        self._pipeline = pipeline

    def refresh(self, sketch: Sketch) -> Sketch:
        """If `sketch` waits on Novita and its check is due, ask task-result once and apply it.

        However many callers refresh one sketch at once, only the one that moves its
        `recovery_due_at` forward asks Novita.
        """
        logs.bind_sketch(sketch.id)
        now = utcnow()
        due = sketch.recovery_due_at
        if sketch.status.is_final or due is None or due > now:
            return sketch
        next_due = self._pipeline.recovery_due(now)

        def take_turn(s: Sketch) -> Changes | None:
            return {"recovery_due_at": next_due} if s.recovery_due_at == due else None

        claimed_sketch, won = self._store.mutate(sketch.id, take_turn, known=sketch)
        if claimed_sketch is None or not won:
            return claimed_sketch or sketch
        try:
            self._recover(claimed_sketch, now)
        except (NovitaError, RetryLater, MalformedResult) as exc:
            log.warning("recovery did not finish: %s", exc)
        return self._store.get(sketch.id) or claimed_sketch

    def _recover(self, s: Sketch, now: datetime) -> None:
        max_age = timedelta(seconds=self._settings.max_sketch_age_seconds)
        if s.created_at + max_age <= now:
            self._give_up_old(s, max_age)
            return
        if s.submission_unknown is not None:
            if self._unknown_outcome_expired(s, now):
                self._give_up_unknown(s)
            return
        if s.status is Status.IMAGE_COMPLETE:
            if s.image_task_id is not None and self._pipeline.may_chain(s, s.image_task_id, now):
                log.warning("taking up an abandoned image-to-video chain")
                self._apply_recovered(s, s.image_task_id, "image")
            return
        task_id = s.current_task_id
        if task_id is not None:
            self._apply_recovered(s, task_id, "image" if s.status is Status.IMAGE_PENDING else "video")

    def _give_up_old(self, s: Sketch, max_age: timedelta) -> None:
        """Fail a sketch that is still not finished long after it was made, whatever holds it up
        (a still that never downloads, a task-result that keeps failing, a lost result)."""
        reason = (
            f"not finished within {max_age.total_seconds():.0f} s of its creation (last status {s.status})"
        )
        self._store.mutate(s.id, lambda cur: None if cur.status.is_final else fail_changes(reason))
        log.warning("gave up on a sketch that did not finish")

    def _give_up_unknown(self, s: Sketch) -> None:
        """Fail a sketch whose unconfirmed request brought no result within the grace period.

        Sending it again might pay for a second task, so it is not sent again.
        """
        stage = s.submission_unknown
        what = "text-to-image" if stage == "image" else "image-to-video"
        grace = self._settings.unknown_outcome_grace_seconds
        reason = (
            f"Novita did not confirm the {what} request and no result arrived within {grace:.0f} s; "
            "it was not sent again, so that it is not paid for twice"
        )

        def fail(cur: Sketch) -> Changes | None:
            return (
                fail_changes(reason) if cur.submission_unknown == stage and not cur.status.is_final else None
            )

        self._store.mutate(s.id, fail)
        log.warning("gave up on an unconfirmed %s request", what)

    def _apply_recovered(self, s: Sketch, task_id: str, stage: Stage) -> None:
        result = self._novita.task_result(task_id)
        try:
            outcome = self._pipeline.apply(s.id, result, stage)
        except MalformedResult as exc:
            reason = str(exc)
            self._store.mutate(s.id, lambda cur: None if cur.status.is_final else fail_changes(reason))
            return
        log.info("recovered through task-result: %s", outcome.value, extra={"task_id": task_id})

    def _unknown_outcome_expired(self, s: Sketch, now: datetime) -> bool:
        since = s.submission_unknown_since
        grace = timedelta(seconds=self._settings.unknown_outcome_grace_seconds)
        return since is None or since + grace <= now

    def sweep(self, *, limit: int, deadline: datetime) -> SweepReport:
        """Refresh up to `limit` sketches whose check is due, stopping at `deadline`."""
        report = SweepReport()
        for sketch in self._store.due_for_recovery(utcnow(), limit):
            if utcnow() >= deadline:
                break
            report.examined += 1
            try:
                after = self.refresh(sketch)
            except (StoreUnavailable, RetryLater) as exc:
                report.errors.append(f"{sketch.id}: {exc}")
                continue
            if after.status is not sketch.status:
                report.changed += 1
        return report


def sweep(limit: int = DEFAULT_BATCH, seconds: float = DEFAULT_SECONDS) -> SweepReport:
    # Imported here: the runtime imports this module.
    from shared.runtime import get_runtime

    return get_runtime().recovery.sweep(limit=limit, deadline=utcnow() + timedelta(seconds=seconds))


def main(argv: list[str] | None = None) -> int:
    from shared.runtime import load_settings_or_exit

    parser = argparse.ArgumentParser(prog="python -m shared.recovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=DEFAULT_BATCH, help="sketches per run at most")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="time budget of a run")
    args = parser.parse_args(argv)
    load_settings_or_exit()
    report = sweep(args.limit, args.seconds)
    print(json.dumps({"examined": report.examined, "changed": report.changed, "errors": report.errors}))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())

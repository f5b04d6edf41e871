"""Recovery: finish sketches whose webhooks never came, from Novita's task-result.

Novita gives up on a webhook after five attempts, and its reference documents no webhook for Kling
at all, so recovery may be what finishes every video. Every unfinished sketch carries
`recovery_due_at`, when it should next be looked at:

- a webhook delivery hands a `check` of the task it names on to the queue, once per interval
  (`delivered`);
- a `GET ?id=` of a sketch that is due hands a `check` step on to the queue (`refresh`). However
  many clients poll at once, the turn is claimed with a conditional write, so Novita is asked at
  most once per `RECOVERY_INTERVAL_SECONDS` per sketch;
- the sweep looks at every due sketch, in pages and in parallel, within a time budget, and can be
  called again to go on (`sweep`). It asks task-result itself and hands any slow work on as steps.
  Cloud Scheduler calls it (`novita_webhook?action=sweep`, with the sweep token); an operator can run
  it as `python -m shared.ops sweep`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.core import logs, timings
from shared.core.deadline import Deadline
from shared.pipeline.queue import Hint, QueueUnavailable, Step, StepQueue
from shared.pipeline.results import Outcome, Results, note_ignored, waits_on
from shared.pipeline.work import TRANSIENT, WAITS
from shared.sketch.model import Sketch, StepKind, utcnow
from shared.sketch.store import Changes, SketchStore

if TYPE_CHECKING:
    from shared.pipeline.steps import Worker

log = logging.getLogger(__name__)

SWEEP_SECONDS = timings.SWEEP_BUDGET
PAGE_SIZE = 100
# Sketches looked at at once: each mostly waits on task-result.
PARALLEL = 16
# A page is not started with less time than this left: its sketches would be claimed and then
# left for the next sweep.
PAGE_MARGIN_SECONDS = timings.SWEEP_PAGE_MARGIN
# Copies of a delivery within this (or RECOVERY_INTERVAL_SECONDS, if longer) hand nothing on.
HINT_SECONDS = 5.0


@dataclass
class SweepReport:
    examined: int = 0
    changed: int = 0
    errors: list[str] = field(default_factory=list)
    # True when the time budget ran out before every due sketch was looked at: call again.
    more: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "examined": self.examined,
            "changed": self.changed,
            "errors": self.errors[:20],
            "more": self.more,
        }


class Recovery:
    def __init__(
        self, store: SketchStore, results: Results, worker: Callable[[], Worker], queue: StepQueue
    ) -> None:
        self._store = store
        self._results = results
        self._worker = worker
        self._queue = queue

    def _take_turn(self, sketch: Sketch, now: datetime) -> Sketch | None:
        """The sketch with its next look moved on, if it was due and this caller moved it first."""
        due = sketch.recovery_due_at
        if sketch.status.is_final or due is None or due > now:
            return None
        next_due = self._results.recovery_due(now, sketch.next_step())

        def take(s: Sketch) -> Changes | None:
            return {"recovery_due_at": next_due} if s.recovery_due_at == due else None

        claimed, won = self._store.mutate(sketch.id, take, known=sketch)
        return claimed if won else None

    def refresh(self, sketch: Sketch) -> Sketch:
        """For a GET: if the sketch is due, hand a check on to the queue; the sketch as it is now."""
        logs.bind_sketch(sketch.id)
        claimed = self._take_turn(sketch, utcnow())
        if claimed is None:
            return sketch
        try:
            self._queue.publish(Step(kind=StepKind.CHECK, sketch_id=sketch.id))
        except QueueUnavailable as exc:
            # The sweep looks again once the turn taken here is due.
            log.warning("recovery check not handed on: %s", exc)
        return claimed

    def delivered(self, sketch_id: str, hint: Hint) -> str:
        """A webhook delivery naming a task: a check is handed on only when the sketch waits on that
        task and none was handed on for it within the interval (one conditional claim, so a leaked
        webhook URL called a thousand times costs a read each and one check). The outcome, in a word.
        QueueUnavailable when the check could not be handed on (the claim is given back)."""
        sketch = self._store.get(sketch_id)
        if sketch is None or sketch.status.is_final:
            return "ignored"
        if not waits_on(sketch, hint.task_id, hint.stage):
            note_ignored(sketch, hint.task_id)
            return "ignored"
        now = utcnow()
        until = now + timedelta(seconds=max(self._results.interval, HINT_SECONDS))

        def claim(s: Sketch) -> Changes | None:
            if s.status.is_final or (s.hint_task_id == hint.task_id and s.hint_until and s.hint_until > now):
                return None
            return {"hint_task_id": hint.task_id, "hint_stage": hint.stage, "hint_until": until}

        claimed, won = self._store.mutate(sketch_id, claim, known=sketch)
        if not won or claimed is None:
            return "duplicate"
        step = Step(
            kind=StepKind.CHECK,
            sketch_id=sketch_id,
            task_id=hint.task_id,
            stage=hint.stage,
            result=hint.result,
        )
        try:
            self._queue.publish(step)
        except QueueUnavailable:
            # Novita delivers again; that copy must find no claim.
            self._store.mutate(sketch_id, lambda s: {"hint_until": None} if s.hint_until == until else None)
            raise
        return "queued"

    def sweep(self, deadline: Deadline) -> SweepReport:
        """Look at every sketch that is due, until `deadline`."""
        report = SweepReport()
        # Sketches looked at now become due again later than this, so no page shows them twice.
        now = utcnow()
        after: Sketch | None = None
        with ThreadPoolExecutor(PARALLEL, thread_name_prefix="sweep") as pool:
            while True:
                if deadline.remaining() < PAGE_MARGIN_SECONDS:
                    report.more = True
                    break
                page = self._store.due_for_recovery(now, PAGE_SIZE, after=after)
                for sketch, (outcome, error) in zip(
                    page, pool.map(lambda s: self._sweep_one(s, now, deadline), page), strict=True
                ):
                    report.examined += 1
                    report.changed += outcome is Outcome.APPLIED
                    if error:
                        report.errors.append(f"{sketch.id}: {error}")
                if len(page) < PAGE_SIZE:
                    break
                after = page[-1]
        return report

    def _sweep_one(
        self, sketch: Sketch, now: datetime, deadline: Deadline
    ) -> tuple[Outcome | None, str | None]:
        logs.bind_sketch(sketch.id)
        try:
            claimed = self._take_turn(sketch, now)
            if claimed is None:
                return None, None
            return self._worker().examine(claimed, deadline), None
        except (*TRANSIENT, *WAITS) as exc:
            log.warning("recovery did not finish: %s", exc)
            return None, str(exc)[:300]

"""The `check` step: ask Novita's task-result about a sketch's task and apply what it says.

A webhook delivery only names a task; this is where it is confirmed. `GET ?id=` and the sweep run the
same look. It also gives up on what waited too long, and hands on the slow step the sketch needs next.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pydantic import ValidationError

from shared.core.deadline import Deadline
from shared.novita.errors import NovitaRejected
from shared.novita.models import TaskResult
from shared.pipeline import paid
from shared.pipeline.queue import Hint, Step
from shared.pipeline.results import MalformedResult, Outcome, note_ignored, waits_on
from shared.pipeline.work import Tools, fail_unless_final
from shared.sketch.model import Sketch, Stage, Status, StepKind, utcnow

log = logging.getLogger(__name__)


def examine(tools: Tools, sketch: Sketch, deadline: Deadline, hint: Hint | None = None) -> Outcome:
    """Look at a sketch that may wait on Novita: ask task-result and apply what it says, give up on
    what waited too long, and hand on any slow work the sketch now needs."""
    now = utcnow()
    if sketch.status.is_final:
        return Outcome.DUPLICATE
    max_age = timedelta(seconds=tools.settings.max_sketch_age_seconds)
    if sketch.life_began + max_age <= now:
        began = "its creation" if sketch.retried_at is None else "its retry"
        reason = (
            f"not finished within {max_age.total_seconds():.0f} s of {began} (last status {sketch.status})"
        )
        return fail_unless_final(tools.store, sketch, reason, "gave up on a sketch that did not finish")
    asked = _task_to_ask(sketch, hint)
    if asked is None:
        if hint is not None:
            note_ignored(sketch, hint.task_id)
            return Outcome.IGNORED
        unanswered = _unanswered(tools, sketch, now)
        if unanswered is not None:
            return unanswered
        outcome, latest = Outcome.IN_PROGRESS, sketch
    else:
        task_id, stage = asked
        try:
            result = _result(tools, task_id, hint, deadline)
        except MalformedResult as exc:
            return fail_unless_final(tools.store, sketch, str(exc), "refused a result for good")
        if result is None:
            return Outcome.IGNORED
        adopted = task_id != sketch.task_of(stage)
        if adopted and not _plausible(result, stage):
            log.warning("a task of another kind was not adopted", extra={"task_id": task_id})
            return Outcome.IGNORED
        try:
            outcome, latest = tools.results.apply(sketch, result, stage)
        except MalformedResult as exc:
            return fail_unless_final(tools.store, sketch, str(exc), "refused a result for good")
        if adopted and outcome is Outcome.APPLIED:
            log.warning("adopted a task whose request had no known outcome", extra={"task_id": task_id})
        elif adopted and hint is None:
            # The task a delivery named is not finished yet: the unanswered request waits as ever.
            unanswered = _unanswered(tools, latest or sketch, now)
            if unanswered is not None:
                return unanswered
    if latest is not None:
        hand_on(tools, latest, now)
    return outcome


def hand_on(tools: Tools, sketch: Sketch, now: datetime) -> None:
    """Publish the slow step the sketch needs, unless a live holder has it or a request awaits its
    answer (one that can no longer be adopted is sent again by that step: `shared/pipeline/paid.py`)."""
    kind = sketch.next_step()
    if kind is None or not kind.is_slow or sketch.lease_is_live(now):
        return
    if sketch.submission_unknown is None or paid.may_send(
        sketch, sketch.submission_unknown, now, tools.settings.unknown_outcome_grace_seconds
    ):
        tools.queue.publish(Step(kind=kind, sketch_id=sketch.id))


def _unanswered(tools: Tools, sketch: Sketch, now: datetime) -> Outcome | None:
    """Settle a sketch whose paid request went unanswered, or whose create died before sending it;
    None when there is nothing of the kind to settle."""
    if sketch.lease_is_live(now):
        return Outcome.IN_PROGRESS if sketch.submission_unknown is not None else None
    grace = tools.settings.unknown_outcome_grace_seconds
    create_request = sketch.status is Status.IMAGE_PENDING and sketch.image_form == "task"
    if sketch.submission_unknown is None:
        if create_request and sketch.image_task_id is None:
            return fail_unless_final(tools.store, sketch, paid.NEVER_SENT, "a create died before its request")
        return None
    if not paid.abandoned(sketch, now, grace):
        return Outcome.IN_PROGRESS  # its task may still show up and be adopted
    if create_request or len(sketch.repaid) >= paid.MAX_REPAYS:
        reason = paid.unanswered_reason(sketch, grace)
        return fail_unless_final(tools.store, sketch, reason, "gave up on an unanswered request")
    return None  # the step that sends it again is handed on


def _task_to_ask(sketch: Sketch, hint: Hint | None) -> tuple[str, Stage] | None:
    """Which task to ask Novita about: the one a webhook named, if the sketch waits on it; else the
    task the sketch waits on; else, for a request whose answer was lost, the task a delivery named
    (`hint_task_id`): the check that delivery handed on may have been lost with Pub/Sub, and asking
    beats waiting out the grace and paying again. A task a retry muted has no stage, and is not."""
    if hint is not None:
        return (hint.task_id, hint.stage) if waits_on(sketch, hint.task_id, hint.stage) else None
    if sketch.next_step() is StepKind.CHECK:
        stage: Stage = "image" if sketch.status is Status.IMAGE_PENDING else "video"
        task_id = sketch.task_of(stage)
        if task_id is not None:
            return task_id, stage
    named, named_stage = sketch.hint_task_id, sketch.hint_stage
    if named is None or named_stage is None or sketch.submission_unknown != named_stage:
        return None
    return (named, named_stage) if waits_on(sketch, named, named_stage) else None


def _result(tools: Tools, task_id: str, hint: Hint | None, deadline: Deadline) -> TaskResult | None:
    """Novita's word on the task; in webhook test mode, where no real task exists, the delivery's."""
    try:
        if hint is not None and hint.result is not None and tools.settings.webhook_test_mode:
            result = TaskResult.model_validate(hint.result)
        else:
            result = tools.novita.task_result(task_id, deadline)
    except ValidationError as exc:
        raise MalformedResult(
            f"Novita's result for task {task_id} was refused: {exc.error_count()} value(s) break a bound"
        ) from exc
    except NovitaRejected as exc:
        log.warning("task-result refused to answer: %s", exc.describe(), extra={"task_id": task_id})
        return None
    if result.task.task_id != task_id:
        log.warning("task-result answered for another task", extra={"task_id": task_id})
        return None
    return result


def _plausible(result: TaskResult, stage: Stage) -> bool:
    """Whether an unrecorded task reported for `stage` could be of that kind (Novita names text to
    image TXT_TO_IMG; its video tasks have other names)."""
    kind = result.task.task_type
    if kind is None:
        return True
    return (kind == "TXT_TO_IMG") == (stage == "image")

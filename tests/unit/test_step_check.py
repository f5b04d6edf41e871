"""The `check` step by itself: what Novita's task-result says is applied, what the sketch does not
wait on is ignored (a paid task nobody adopts is a WARNING), and what waited too long is settled
(shared/pipeline/check.py, results.py, paid.py)."""

from __future__ import annotations

import logging

import pytest

from shared.pipeline import paid
from shared.pipeline.queue import Hint, Step
from shared.pipeline.results import Outcome
from shared.sketch.model import Sketch, Status, StepKind
from tests.unit.world import STILL_URL, World, ago, image_result, later, result, video_result


def check(world: World, sketch: Sketch, hint: Hint | None = None) -> Outcome:
    step = Step(
        kind=StepKind.CHECK,
        sketch_id=sketch.id,
        task_id=None if hint is None else hint.task_id,
        stage=None if hint is None else hint.stage,
    )
    return world.run(step)


def test_a_finished_still_is_applied_and_the_chain_handed_on() -> None:
    world = World()
    sketch = world.sketch(image_task_id="img-1")
    world.novita.script["task_result"] = [image_result("img-1")]

    assert check(world, sketch) is Outcome.APPLIED
    after = world.stored(sketch.id)
    assert after.status is Status.IMAGE_COMPLETE and after.novita_image_url == STILL_URL
    assert after.progress == 30 and world.published_kinds() == ["chain"]


def test_novitas_progress_moves_the_bar_within_its_part_and_never_back() -> None:
    world = World()
    sketch = world.sketch(Status.VIDEO_PENDING, image_task_id="img-1", video_task_id="vid-1", progress=60)
    world.novita.script["task_result"] = [
        result("vid-1", "TASK_STATUS_PROCESSING", progress_percent=10, eta=42),
        result("vid-1", "TASK_STATUS_PROCESSING", progress_percent=80, eta=5),
    ]

    check(world, sketch)
    assert (world.stored(sketch.id).progress, world.stored(sketch.id).eta_seconds) == (60, 42)
    check(world, world.stored(sketch.id))
    assert world.stored(sketch.id).progress == 35 + round(55 * 0.8)


def test_a_webhook_naming_the_task_of_a_lost_answer_is_adopted(caplog: pytest.LogCaptureFixture) -> None:
    world = World()
    sketch = world.sketch(
        Status.IMAGE_COMPLETE,
        image_task_id="img-1",
        submission_unknown="video",
        submission_unknown_since=ago(5),
        submission_webhook=True,
    )
    world.novita.script["task_result"] = [video_result("vid-9")]

    with caplog.at_level(logging.WARNING):
        assert check(world, sketch, Hint("vid-9", "video")) is Outcome.APPLIED
    after = world.stored(sketch.id)
    assert after.video_task_id == "vid-9" and after.submission_unknown is None
    assert "adopted a task whose request had no known outcome" in caplog.text


def test_the_task_a_delivery_named_is_adopted_by_recovery_when_its_check_was_lost() -> None:
    """A webhook named the task of a lost answer, but the check it handed on never ran (Pub/Sub lost
    it): the next hint-less check asks about that task, rather than wait out the grace and pay again."""
    world = World()
    lost = {"submission_unknown": "video", "submission_unknown_since": ago(5), "submission_webhook": True}
    sketch = world.sketch(Status.IMAGE_COMPLETE, image_task_id="img-1", **lost)
    assert world.recovery.delivered(sketch.id, Hint("vid-9", "video")) == "queued"
    world.pubsub.published.clear()  # the check it handed on is lost
    world.novita.script["task_result"] = [result("vid-9", "TASK_STATUS_PROCESSING"), video_result("vid-9")]

    assert check(world, world.stored(sketch.id)) is Outcome.IN_PROGRESS  # still drawing: it waits
    assert world.stored(sketch.id).submission_unknown == "video"
    assert check(world, world.stored(sketch.id)) is Outcome.APPLIED
    after = world.stored(sketch.id)
    assert after.video_task_id == "vid-9" and after.submission_unknown is None
    assert world.novita.count("kling") == 0 and world.novita.count("task_result") == 2


def test_a_task_the_sketch_never_made_is_ignored_with_a_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World()
    sketch = world.sketch(image_task_id="img-1")

    with caplog.at_level(logging.INFO):
        assert check(world, sketch, Hint("stranger", "image")) is Outcome.IGNORED
    assert world.novita.calls == [] and world.stored(sketch.id).status is Status.IMAGE_PENDING
    warning = next(r for r in caplog.records if r.message == "a paid task that no sketch adopts")
    assert warning.levelno == logging.WARNING and warning.task_id == "stranger"  # type: ignore[attr-defined]


def test_a_create_that_died_before_sending_fails_saying_nothing_was_paid() -> None:
    world = World()
    sketch = world.sketch(step_lease_owner="dead-create", step_lease_until=ago(1))

    assert check(world, sketch) is Outcome.APPLIED
    failed = world.stored(sketch.id)
    assert failed.status is Status.FAILED and failed.error_message == paid.NEVER_SENT
    assert world.novita.calls == []


def test_a_create_that_died_after_sending_waits_for_its_webhook_then_fails_with_what_is_known() -> None:
    world = World()
    dead = {"step_lease_owner": "dead-create", "step_lease_until": ago(1), "submission_unknown": "image"}
    waiting = world.sketch(**dead, submission_unknown_since=ago(5), submission_webhook=True)
    too_late = world.sketch(**dead, submission_unknown_since=ago(700), submission_webhook=True)

    assert check(world, waiting) is Outcome.IN_PROGRESS
    assert check(world, too_late) is Outcome.APPLIED
    failed = world.stored(too_late.id)
    assert failed.status is Status.FAILED
    assert "was sent but Novita's answer never arrived" in (failed.error_message or "")
    assert world.stored(waiting.id).status is Status.IMAGE_PENDING and world.novita.calls == []


def test_a_chain_whose_answer_can_no_longer_come_is_handed_on_to_pay_again() -> None:
    world = World()
    sketch = world.sketch(
        Status.IMAGE_COMPLETE,
        image_task_id="img-1",
        submission_unknown="video",
        submission_unknown_since=ago(700),
        submission_webhook=True,
    )

    assert check(world, sketch) is Outcome.IN_PROGRESS
    assert world.published_kinds() == ["chain"]


def test_nothing_is_handed_on_while_a_live_holder_works() -> None:
    world = World()
    sketch = world.sketch(
        Status.IMAGE_COMPLETE, image_task_id="img-1", step_lease_owner="x", step_lease_until=later(9)
    )

    assert check(world, sketch) is Outcome.IN_PROGRESS
    assert world.published() == []


def test_a_sketch_too_old_to_finish_fails_saying_so() -> None:
    world = World(MAX_SKETCH_AGE_SECONDS="60")
    sketch = world.sketch(image_task_id="img-1", created_at=ago(61))

    assert check(world, sketch) is Outcome.APPLIED
    assert "not finished within 60 s" in (world.stored(sketch.id).error_message or "")

"""What a step's failures count for: a fault that may pass is counted on the sketch, a wait is not,
and a dead letter fails the sketch only as far as that count bears it out (shared/pipeline/steps.py)."""

from __future__ import annotations

from shared.pipeline.queue import Step
from shared.pipeline.results import Outcome
from shared.pipeline.steps import DEAD_LETTER_FAILURES
from shared.pipeline.work import RetryLater
from shared.sketch.model import Status, StepKind
from tests.unit.world import World


def test_a_replayed_step_on_the_dead_letter_route_changes_a_healthy_sketch_in_nothing() -> None:
    world = World()
    sketch = world.sketch(Status.IMAGE_COMPLETE, image_task_id="img-1")

    assert world.worker.dead_letter(Step(kind=StepKind.CHAIN, sketch_id=sketch.id)) is Outcome.DUPLICATE
    assert world.stored(sketch.id) == sketch


def test_failures_in_a_row_are_counted_and_a_dead_letter_then_fails_the_sketch_with_the_last_reason() -> None:
    world = World()
    sketch = world.sketch(Status.IMAGE_COMPLETE, image_task_id="img-1")
    step = Step(kind=StepKind.CHAIN, sketch_id=sketch.id)
    for attempt in range(DEAD_LETTER_FAILURES):
        world.worker.note_failure(step, RetryLater(f"Kling 503, try {attempt + 1}"))

    counted = world.stored(sketch.id)
    assert counted.failed_step is StepKind.CHAIN and counted.step_failures == DEAD_LETTER_FAILURES
    assert world.worker.dead_letter(step) is Outcome.APPLIED
    failed = world.stored(sketch.id)
    assert failed.status is Status.FAILED
    assert (
        failed.error_message
        == f"the chain step failed {DEAD_LETTER_FAILURES} times; the last time: chain: Kling 503, try 3"
    )


def test_failures_of_another_step_do_not_count_for_this_one() -> None:
    world = World()
    sketch = world.sketch(
        Status.VIDEO_PENDING, image_task_id="img-1", video_task_id="v", novita_video_url="u"
    )
    world.store.mutate(sketch.id, lambda s: {"failed_step": StepKind.CHAIN, "step_failures": 9})

    world.worker.note_failure(Step(kind=StepKind.COPY, sketch_id=sketch.id), RetryLater("bucket away"))

    assert world.stored(sketch.id).step_failures == 1
    assert world.worker.dead_letter(Step(kind=StepKind.COPY, sketch_id=sketch.id)) is Outcome.DUPLICATE

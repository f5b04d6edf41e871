"""What a webhook delivery hands on (shared/pipeline/recovery.py, `delivered`): a check of the task
it names, once per interval, and only for a task the sketch waits on; a leaked URL called a
thousand times costs a read each and one check."""

from __future__ import annotations

import pytest

from shared.pipeline.queue import Hint, QueueUnavailable
from shared.sketch.model import Status
from tests.unit.world import World


def test_a_thousand_deliveries_naming_one_task_hand_on_one_check() -> None:
    world = World()
    sketch = world.sketch(image_task_id="img-1")

    outcomes = [world.recovery.delivered(sketch.id, Hint("img-1", "image")) for _ in range(1000)]

    assert outcomes[0] == "queued" and set(outcomes[1:]) == {"duplicate"}
    assert [(s.kind.value, s.task_id) for s in world.published()] == [("check", "img-1")]


def test_deliveries_for_a_finished_sketch_or_a_task_it_does_not_wait_on_hand_on_nothing() -> None:
    world = World()
    done = world.sketch(Status.COMPLETE, image_task_id="img-1", video_task_id="vid-1")
    waiting = world.sketch(image_task_id="img-2")

    assert [world.recovery.delivered(done.id, Hint("vid-1", "video")) for _ in range(300)] == [
        "ignored"
    ] * 300
    assert world.recovery.delivered(waiting.id, Hint("someone-elses", "image")) == "ignored"
    assert world.recovery.delivered("f" * 32, Hint("img-2", "image")) == "ignored"
    assert world.published() == []


def test_a_claim_whose_check_could_not_be_queued_is_given_back_for_novitas_next_try() -> None:
    world = World()
    sketch = world.sketch(image_task_id="img-1")
    world.pubsub.down = True

    with pytest.raises(QueueUnavailable):
        world.recovery.delivered(sketch.id, Hint("img-1", "image"))
    world.pubsub.down = False

    assert world.recovery.delivered(sketch.id, Hint("img-1", "image")) == "queued"


def test_a_new_task_of_the_sketch_hands_on_its_own_check() -> None:
    world = World()
    sketch = world.sketch(Status.VIDEO_PENDING, image_task_id="img-1", video_task_id="vid-1")
    world.recovery.delivered(sketch.id, Hint("img-1", "image"))  # late: the sketch has moved on

    assert world.recovery.delivered(sketch.id, Hint("vid-1", "video")) == "queued"
    assert [s.task_id for s in world.published()] == ["vid-1"]

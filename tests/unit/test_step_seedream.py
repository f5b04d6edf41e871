"""The `seedream` step by itself: Seedream 3.0's synchronous still, whose answer is the only way it
reaches the sketch (shared/pipeline/seedream.py)."""

from __future__ import annotations

import pytest

from shared.novita.errors import NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable
from shared.pipeline.queue import Step
from shared.pipeline.results import Outcome
from shared.pipeline.work import RetryLater
from shared.sketch.model import Sketch, Status, StepKind
from tests.unit.world import STILL_URL, World, ago


def waiting_for_seedream(world: World, **fields: object) -> Sketch:
    return world.sketch(Status.IMAGE_PENDING, image_form="sync", **fields)


def seedream(world: World, sketch: Sketch) -> Outcome:
    return world.run(Step(kind=StepKind.SEEDREAM, sketch_id=sketch.id))


def test_the_still_is_drawn_once_and_the_chain_handed_on() -> None:
    world = World()
    sketch = waiting_for_seedream(world)
    world.novita.script["seedream"] = [STILL_URL]

    assert seedream(world, sketch) is Outcome.APPLIED
    drawn = world.stored(sketch.id)
    assert drawn.status is Status.IMAGE_COMPLETE and drawn.novita_image_url == STILL_URL
    assert drawn.image_task_id is None and drawn.submission_unknown is None
    assert drawn.step_lease_owner is None and world.published_kinds() == ["chain"]


def test_the_still_is_kept_at_once_for_its_link_can_never_be_renewed() -> None:
    """However late the chain runs, it takes the still from the bucket: Novita's link to a Seedream
    still has no task to renew it from once it expires."""
    world = World()
    sketch = waiting_for_seedream(world)
    world.novita.script["seedream"] = [STILL_URL]
    world.novita.script["kling"] = ["vid-1"]

    seedream(world, sketch)
    kept = world.stored(sketch.id)
    assert kept.image_object is not None and kept.still_source == kept.image_url != STILL_URL
    world.media.files["/still.jpg"] = (403, b"")  # the link has expired by the time the chain runs
    world.run(world.published()[0])

    assert world.stored(sketch.id).status is Status.VIDEO_PENDING and world.novita.count("task_result") == 0


def test_a_still_that_cannot_be_kept_just_now_is_left_to_the_chain() -> None:
    world = World()
    sketch = waiting_for_seedream(world)
    world.novita.script["seedream"] = [STILL_URL]
    world.media.files["/still.jpg"] = (503, b"")

    assert seedream(world, sketch) is Outcome.APPLIED
    drawn = world.stored(sketch.id)
    assert drawn.status is Status.IMAGE_COMPLETE and drawn.image_object is None
    assert drawn.step_lease_owner is None and world.published_kinds() == ["chain"]


def test_a_lost_answer_can_never_reach_the_sketch_so_the_next_delivery_asks_again() -> None:
    world = World()
    sketch = waiting_for_seedream(world)
    world.novita.script["seedream"] = [NovitaOutcomeUnknown("reset after sending")]

    with pytest.raises(RetryLater):
        seedream(world, sketch)
    lost = world.stored(sketch.id)
    assert lost.submission_unknown == "image" and lost.submission_webhook is False
    assert lost.step_lease_owner is None

    world.novita.script["seedream"] = [STILL_URL]
    assert seedream(world, lost) is Outcome.APPLIED
    drawn = world.stored(sketch.id)
    assert drawn.status is Status.IMAGE_COMPLETE and len(drawn.repaid) == 1
    assert drawn.repaid[0].startswith("image: the text-to-image request sent at")
    assert world.novita.count("seedream") == 2


def test_a_killed_holders_request_is_asked_again_once_its_lease_is_gone() -> None:
    world = World()
    sketch = waiting_for_seedream(
        world,
        submission_unknown="image",
        submission_unknown_since=ago(4),
        submission_webhook=False,
        submission_owner="dead",
        step_lease_owner="dead",
        step_lease_until=ago(1),
    )
    world.novita.script["seedream"] = [STILL_URL]

    assert seedream(world, sketch) is Outcome.APPLIED
    assert len(world.stored(sketch.id).repaid) == 1


def test_a_refusal_fails_the_sketch_and_an_outage_holds_off_the_next_try() -> None:
    world = World()
    refused, unreachable = waiting_for_seedream(world), waiting_for_seedream(world)
    world.novita.script["seedream"] = [
        NovitaRejected("no", status_code=400, reason="INVALID_REQUEST_BODY"),
        NovitaUnavailable("down", status_code=502),
    ]

    assert seedream(world, refused) is Outcome.APPLIED
    with pytest.raises(RetryLater):
        seedream(world, unreachable)

    assert world.stored(refused.id).status is Status.FAILED
    after = world.stored(unreachable.id)
    assert after.status is Status.IMAGE_PENDING and after.retry_not_before is not None
    assert after.submission_unknown is None

"""The `chain` step by itself: the still fetched, checked and kept, Kling asked once, and what each
of Novita's answers does to the sketch (shared/pipeline/chain.py, paid.py, lease.py)."""

from __future__ import annotations

import pytest

from shared.novita.errors import NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable
from shared.pipeline.queue import Step
from shared.pipeline.results import Outcome
from shared.pipeline.work import Busy, RetryLater, Waiting
from shared.sketch.model import Sketch, Status, StepKind
from shared.spending.breaker import BalanceExhausted
from tests.unit.world import BUCKET, STILL_URL, World, ago, jpeg, later


def waiting_for_chain(world: World, **fields: object) -> Sketch:
    return world.sketch(
        Status.IMAGE_COMPLETE,
        image_task_id="img-1",
        novita_image_url=STILL_URL,
        novita_image_url_expires_at=later(3600),
        **fields,
    )


def chain(world: World, sketch: Sketch) -> Outcome:
    return world.run(Step(kind=StepKind.CHAIN, sketch_id=sketch.id))


def test_the_still_is_kept_and_kling_is_asked_once_with_its_sending_recorded_first() -> None:
    world = World()
    sketch = waiting_for_chain(world)

    def kling_answers() -> str:
        # As the request goes out, the sketch already says it is being sent, by this holder.
        sending = world.stored(sketch.id)
        assert sending.submission_unknown == "video" and sending.submission_owner == sending.step_lease_owner
        assert sending.submission_webhook is True  # the guide's form registers a webhook
        return "vid-1"

    world.novita.script["kling"] = [kling_answers]
    assert chain(world, sketch) is Outcome.APPLIED

    done = world.stored(sketch.id)
    assert done.status is Status.VIDEO_PENDING and done.video_task_id == "vid-1"
    assert done.submission_unknown is None and done.step_lease_owner is None and done.repaid == []
    assert done.image_object == f"sketches/{sketch.id}/still.jpg"
    data, metadata = world.storage.objects[(BUCKET, done.image_object)]
    assert data == jpeg() and metadata["sketch_id"] == sketch.id
    assert done.image_url and done.image_url.startswith("http://storage.test/download/")
    assert world.novita.count("kling") == 1 and world.media.asked == ["/still.jpg"]


def test_a_copy_of_the_step_while_a_live_holder_works_waits_and_sends_nothing() -> None:
    world = World()
    sketch = waiting_for_chain(world, step_lease_owner="someone-alive", step_lease_until=later(20))

    with pytest.raises(Busy):
        chain(world, sketch)
    assert world.novita.calls == [] and world.media.asked == []


def test_a_step_for_a_sketch_that_moved_on_is_a_duplicate() -> None:
    world = World()
    sketch = world.sketch(Status.VIDEO_PENDING, video_task_id="vid-1")

    assert chain(world, sketch) is Outcome.DUPLICATE
    assert world.novita.calls == []


def test_kling_out_of_reach_gives_the_work_back_and_holds_off_the_next_try() -> None:
    world = World()
    sketch = waiting_for_chain(world)
    world.novita.script["kling"] = [NovitaUnavailable("busy", status_code=503)]

    with pytest.raises(RetryLater):
        chain(world, sketch)
    after = world.stored(sketch.id)
    assert after.status is Status.IMAGE_COMPLETE and after.submission_unknown is None
    assert after.step_lease_owner is None and after.retry_not_before is not None

    # A replay of the step before then asks Novita nothing.
    with pytest.raises(Waiting):
        chain(world, after)
    assert world.novita.count("kling") == 1


def test_a_lost_answer_with_a_webhook_is_waited_for_then_sent_again_once_and_said_so() -> None:
    world = World()
    sketch = waiting_for_chain(world)
    world.novita.script["kling"] = [NovitaOutcomeUnknown("connection reset after sending")]

    assert chain(world, sketch) is Outcome.IN_PROGRESS
    lost = world.stored(sketch.id)
    assert lost.submission_unknown == "video" and lost.submission_webhook and lost.step_lease_owner is None
    # While its webhook may still bring the task, however often the step comes back, nothing is sent.
    assert chain(world, lost) is Outcome.IN_PROGRESS
    assert world.novita.count("kling") == 1

    # Past the grace, the task can no longer reach the sketch: it is asked again, and the sketch says why.
    world.store.mutate(sketch.id, lambda s: {"submission_unknown_since": ago(601)})
    world.novita.script["kling"] = ["vid-2"]
    assert chain(world, world.stored(sketch.id)) is Outcome.APPLIED
    done = world.stored(sketch.id)
    assert done.video_task_id == "vid-2" and len(done.repaid) == 1
    assert done.repaid[0].startswith("video: the image-to-video request sent at")


def test_a_lost_answer_without_a_webhook_is_sent_again_by_the_next_delivery() -> None:
    world = World()
    world.novita.remember("image_to_video", "reference")
    sketch = waiting_for_chain(world)
    world.novita.script["kling"] = [NovitaOutcomeUnknown("timed out after sending")]

    with pytest.raises(RetryLater):
        chain(world, sketch)
    assert world.stored(sketch.id).submission_webhook is False

    world.novita.script["kling"] = ["vid-2"]
    assert chain(world, world.stored(sketch.id)) is Outcome.APPLIED
    assert len(world.stored(sketch.id).repaid) == 1 and world.novita.count("kling") == 2


def test_a_dead_holders_request_is_not_sent_again_while_its_webhook_may_come() -> None:
    """A predecessor was killed with its request in flight: its record and an expired lease are all
    that is left. Its webhook names the sketch, so the successor waits for it."""
    world = World()
    sketch = waiting_for_chain(
        world,
        submission_unknown="video",
        submission_unknown_since=ago(5),
        submission_webhook=True,
        submission_owner="dead",
        step_lease_owner="dead",
        step_lease_until=ago(1),
    )

    assert chain(world, sketch) is Outcome.IN_PROGRESS
    assert world.novita.calls == []


def test_after_two_lost_answers_the_chain_is_not_sent_a_third_time() -> None:
    world = World()
    sketch = waiting_for_chain(
        world,
        submission_unknown="video",
        submission_unknown_since=ago(700),
        submission_webhook=True,
        repaid=["video: one", "video: two"],
    )

    assert chain(world, sketch) is Outcome.IN_PROGRESS
    assert world.novita.calls == []


def test_a_refusal_fails_the_sketch_with_novitas_reason() -> None:
    world = World()
    sketch = waiting_for_chain(world)
    world.novita.script["kling"] = [NovitaRejected("bad image", status_code=422, reason="INVALID_IMAGE")]

    assert chain(world, sketch) is Outcome.APPLIED
    failed = world.stored(sketch.id)
    assert failed.status is Status.FAILED and "INVALID_IMAGE" in (failed.error_message or "")
    assert failed.submission_unknown is None


def test_a_balance_refusal_waits_and_opens_the_breaker_for_everyone() -> None:
    world = World()
    sketch, other = waiting_for_chain(world), waiting_for_chain(world)
    world.novita.script["kling"] = [NovitaRejected("no money", status_code=403, reason="NOT_ENOUGH_BALANCE")]

    with pytest.raises(Waiting):
        chain(world, sketch)
    assert world.stored(sketch.id).status is Status.IMAGE_COMPLETE  # waiting, not failed
    with pytest.raises(BalanceExhausted):
        chain(world, other)
    assert world.novita.count("kling") == 1 and world.stored(other.id).step_lease_owner is None


def test_a_still_that_breaks_a_rule_fails_the_sketch_before_kling_is_asked() -> None:
    world = World()
    world.media.files["/still.jpg"] = (200, jpeg(200, 200))
    sketch = waiting_for_chain(world)

    assert chain(world, sketch) is Outcome.APPLIED
    failed = world.stored(sketch.id)
    assert failed.status is Status.FAILED and "at least 300x300" in (failed.error_message or "")
    assert world.novita.calls == []


def test_once_kept_the_still_comes_from_the_bucket_and_kling_is_given_the_copy() -> None:
    """Kling answered 503 after the still was kept; by the next try Novita's link has expired (and a
    Seedream still's cannot be renewed, having no task): the copy in the bucket serves both the fetch
    and Kling's reference form, and no link is renewed."""
    world = World()
    world.novita.remember("image_to_video", "reference")
    sketch = world.sketch(
        Status.IMAGE_COMPLETE,
        image_form="sync",
        novita_image_url=STILL_URL,
        novita_image_url_expires_at=later(3600),
    )
    world.novita.script["kling"] = [NovitaUnavailable("busy", status_code=503), "vid-1"]
    with pytest.raises(RetryLater):
        chain(world, sketch)
    kept = world.stored(sketch.id)
    assert kept.image_object is not None and kept.image_url != STILL_URL
    world.media.files["/still.jpg"] = (403, b"")  # Novita's link expired meanwhile, as its backoff ran
    world.store.mutate(sketch.id, lambda s: {"retry_not_before": None, "novita_image_url_expires_at": ago(1)})

    assert chain(world, world.stored(sketch.id)) is Outcome.APPLIED
    after = world.stored(sketch.id)
    assert after.status is Status.VIDEO_PENDING and after.video_task_id == "vid-1"
    assert [request["still_url"] for name, request in world.novita.calls if name == "kling"] == [
        kept.image_url
    ] * 2
    assert world.novita.count("task_result") == 0 and world.media.asked.count("/still.jpg") == 1

"""A retry from the kept still by itself (shared/pipeline/retry.py): one new Kling task through the
chain's paid path, no text-to-image task; the move out of `failed` committed with the key's record
and the daily counts; what each refusal and each of Novita's answers leaves."""

from __future__ import annotations

from typing import Any

import pytest

from shared.edge.callers import NOBODY, Caller
from shared.google.firestore import Write
from shared.novita.errors import NovitaRejected, NovitaUnavailable
from shared.pipeline.queue import Hint, Step
from shared.pipeline.results import Outcome
from shared.pipeline.retry import NotRetryable, Retrier, SketchNotFound
from shared.sketch.model import Sketch, Status, StepKind
from shared.spending.breaker import BalanceExhausted
from shared.spending.daily import DailyLimitReached
from shared.spending.idempotency import IdempotencyKeys, KeyInUse, KeyReused
from tests.unit.world import World, ago, jpeg, result, video_result

KEPT_URL = "http://media.test/kept/still.jpg"
OWNER = Caller("uid-owner")


def retrier(world: World) -> Retrier:
    keys = IdempotencyKeys(world.db, world.settings.sketches_collection)
    return Retrier(world.db, world.tools, world.caps, keys)


def failed_after_the_still(world: World, **fields: Any) -> Sketch:
    """A sketch whose Kling task failed after its still was kept in the bucket."""
    world.media.files["/kept/still.jpg"] = (200, jpeg())
    failed: dict[str, Any] = {
        "status": Status.FAILED,
        "image_task_id": "img-1",
        "video_task_id": "vid-1",
        "image_object": "sketches/x/still.jpg",
        "image_url": KEPT_URL,
        "novita_image_url": "http://media.test/expired.jpg",
        "novita_image_url_expires_at": ago(3600),
        "progress": 60,
        "error_message": "Novita could not make the video",
        "recovery_due_at": None,
    }
    return world.sketch(**{**failed, **fields})


def project_count(world: World) -> int:
    counts = world.db.query(f"{world.settings.sketches_collection}_daily", limit=10)
    return sum(int(c.data["count"]) for c in counts if c.id.startswith("project-"))


def test_a_retry_pays_one_kling_task_on_the_kept_still_and_no_text_to_image() -> None:
    world = World()
    sketch = failed_after_the_still(world)

    def kling_answers() -> str:
        # Sent under the lease, its sending recorded first, as every Kling request is.
        sending = world.stored(sketch.id)
        assert sending.status is Status.IMAGE_COMPLETE and sending.submission_unknown == "video"
        assert sending.step_lease_owner is not None and sending.submission_owner == sending.step_lease_owner
        return "vid-2"

    world.novita.script["kling"] = [kling_answers]
    retried = retrier(world).retry(sketch.id, NOBODY, None)

    assert retried.answer.status == 202 and not retried.replayed
    done = world.stored(sketch.id)
    assert done.status is Status.VIDEO_PENDING and done.video_task_id == "vid-2"
    assert done.error_message is None and done.retried_at is not None
    assert done.progress == 60  # never goes down
    assert done.step_lease_owner is None and done.submission_unknown is None
    assert retried.sketch.video_task_id == "vid-2"
    # The still came back from its kept copy (Novita's own link has expired), and was not stored again.
    assert world.media.asked == ["/kept/still.jpg"]
    assert [call for call, _ in world.novita.calls] == ["kling"]
    assert world.storage.objects == {}
    assert project_count(world) == 1


def test_a_result_for_the_old_video_task_changes_nothing_during_and_after_the_retry() -> None:
    world = World()
    sketch = failed_after_the_still(world)

    def kling_answers() -> str:
        # A late delivery of the old task while the new request is out: it hands nothing on.
        assert world.recovery.delivered(sketch.id, Hint("vid-1", "video")) != "queued"
        return "vid-2"

    world.novita.script["kling"] = [kling_answers]
    retrier(world).retry(sketch.id, NOBODY, None)
    after = world.stored(sketch.id)

    world.novita.script["task_result"] = [video_result("vid-1")]
    outcome = world.run(Step(kind=StepKind.CHECK, sketch_id=sketch.id, task_id="vid-1", stage="video"))

    assert outcome is Outcome.IGNORED
    assert world.stored(sketch.id) == after
    assert world.published_kinds() == []


def test_an_old_failed_sketch_is_retried_and_its_age_counts_from_the_retry() -> None:
    """A sketch failed days ago may be retried: recovery does not fail it again for its age right
    after Kling was paid, but only once MAX_SKETCH_AGE_SECONDS have passed since the retry."""
    world = World(MAX_SKETCH_AGE_SECONDS="7200")
    sketch = failed_after_the_still(world, created_at=ago(3 * 86400))
    world.novita.script["kling"] = ["vid-2"]
    retrier(world).retry(sketch.id, NOBODY, None)

    world.novita.script["task_result"] = [
        result("vid-2", "TASK_STATUS_PROCESSING", task_type="KLING_V2.1_I2V_MASTER")
    ]
    world.run(Step(kind=StepKind.CHECK, sketch_id=sketch.id, task_id="vid-2", stage="video"))
    assert world.stored(sketch.id).status is Status.VIDEO_PENDING

    world.store.mutate(sketch.id, lambda s: {"retried_at": ago(7201)})
    world.run(Step(kind=StepKind.CHECK, sketch_id=sketch.id, task_id="vid-2", stage="video"))
    failed = world.stored(sketch.id)
    assert failed.status is Status.FAILED
    assert "not finished within 7200 s of its retry" in (failed.error_message or "")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": Status.COMPLETE}, "complete"),
        ({"status": Status.VIDEO_PENDING}, "in_progress"),
        ({"image_object": None}, "still_not_kept"),
    ],
)
def test_a_sketch_that_cannot_be_retried_is_refused_saying_why_and_nothing_changes(
    fields: dict[str, Any], reason: str
) -> None:
    world = World()
    sketch = failed_after_the_still(world, **fields)
    before = world.stored(sketch.id)

    with pytest.raises(NotRetryable) as refused:
        retrier(world).retry(sketch.id, NOBODY, None)

    assert refused.value.reason == reason and str(refused.value)
    assert world.stored(sketch.id) == before
    assert world.novita.calls == [] and project_count(world) == 0


def test_another_users_sketch_or_none_is_not_found() -> None:
    world = World()
    sketch = failed_after_the_still(world, user_id="uid-someone-else")

    with pytest.raises(SketchNotFound):
        retrier(world).retry(sketch.id, OWNER, None)
    with pytest.raises(SketchNotFound):
        retrier(world).retry("0" * 32, OWNER, None)
    assert world.novita.calls == []


def test_the_owner_may_retry_and_the_retry_takes_a_place_in_progress() -> None:
    world = World()
    sketch = failed_after_the_still(world, user_id=OWNER.user_id)
    world.novita.script["kling"] = ["vid-2"]

    retrier(world).retry(sketch.id, OWNER, None)

    assert world.stored(sketch.id).status is Status.VIDEO_PENDING
    slots = world.db.query(f"{world.settings.sketches_collection}_slots", limit=10)
    assert [slot.data["sketch_id"] for slot in slots] == [sketch.id]


def test_a_repeated_key_answers_the_same_sketch_and_asks_kling_no_more() -> None:
    world = World()
    sketch = failed_after_the_still(world)
    world.novita.script["kling"] = ["vid-2"]

    first = retrier(world).retry(sketch.id, NOBODY, "key-1")
    again = retrier(world).retry(sketch.id, NOBODY, "key-1")

    assert again.replayed and again.answer == first.answer and again.sketch.id == sketch.id
    assert world.novita.count("kling") == 1 and project_count(world) == 1
    other = failed_after_the_still(world)
    with pytest.raises(KeyReused):
        retrier(world).retry(other.id, NOBODY, "key-1")


def test_a_key_whose_first_request_is_still_handled_is_in_use() -> None:
    world = World()
    sketch = failed_after_the_still(world)

    def kling_answers() -> str:
        with pytest.raises(KeyInUse):
            retrier(world).retry(sketch.id, NOBODY, "key-1")
        return "vid-2"

    world.novita.script["kling"] = [kling_answers]
    retrier(world).retry(sketch.id, NOBODY, "key-1")
    assert world.novita.count("kling") == 1


def test_a_retry_past_the_daily_cap_is_undone_whole_before_kling_is_asked() -> None:
    world = World(MAX_SKETCHES_PER_DAY_TOTAL="1")
    sketch = failed_after_the_still(world)
    before = world.stored(sketch.id)
    full = world.caps.counts(None, False, before.created_at)[0]
    world.db.commit([Write(full.collection, full.counter, full.data, None, {"count": 1})])

    with pytest.raises(DailyLimitReached):
        retrier(world).retry(sketch.id, NOBODY, "key-1")

    after = world.stored(sketch.id)
    assert after.status is Status.FAILED and after.error_message == before.error_message
    assert after.video_task_id == "vid-1" and after.retried_at is None
    assert project_count(world) == 1  # the retry's count is given back
    assert world.db.query(f"{world.settings.sketches_collection}_idempotency", limit=5) == []
    assert world.novita.calls == []


def test_an_open_balance_breaker_refuses_the_retry_before_anything_is_written() -> None:
    world = World()
    sketch = failed_after_the_still(world)
    before = world.stored(sketch.id)
    world.breaker.open(NovitaRejected("no money", status_code=403, reason="NOT_ENOUGH_BALANCE"))

    with pytest.raises(BalanceExhausted):
        retrier(world).retry(sketch.id, NOBODY, None)
    assert world.stored(sketch.id) == before and world.novita.calls == []


def test_kling_out_of_reach_leaves_the_retry_waiting_on_its_chain_step_not_lost_nor_paid_twice() -> None:
    world = World()
    sketch = failed_after_the_still(world)
    world.novita.script["kling"] = [NovitaUnavailable("busy", status_code=503)]

    retried = retrier(world).retry(sketch.id, NOBODY, None)

    waiting = world.stored(sketch.id)
    assert retried.answer.status == 202 and retried.sketch.status is Status.IMAGE_COMPLETE
    assert waiting.status is Status.IMAGE_COMPLETE and waiting.video_task_id is None
    assert waiting.submission_unknown is None and waiting.step_lease_owner is None
    assert waiting.retry_not_before is not None and waiting.retry_not_before > waiting.updated_at
    assert world.published_kinds() == ["chain"]

    # The chain step, once Novita's backoff is over, asks Kling once more and the sketch goes on.
    world.store.mutate(sketch.id, lambda s: {"retry_not_before": ago(1)})
    world.novita.script["kling"] = ["vid-2"]
    assert world.run(world.published()[0]) is Outcome.APPLIED
    assert world.stored(sketch.id).video_task_id == "vid-2"
    assert world.novita.count("kling") == 2 and world.media.asked == ["/kept/still.jpg"] * 2


def test_kling_refusing_the_still_fails_the_sketch_again_and_answers_502() -> None:
    world = World()
    sketch = failed_after_the_still(world)
    world.novita.script["kling"] = [NovitaRejected("nope", status_code=400, reason="ILLEGAL_IMAGE_CONTENT")]

    retried = retrier(world).retry(sketch.id, NOBODY, "key-1")

    assert retried.answer.status == 502 and retried.answer.code == "novita_rejected"
    assert retried.sketch.status is Status.FAILED and "ILLEGAL_IMAGE_CONTENT" in (
        retried.sketch.error_message or ""
    )
    assert retrier(world).retry(sketch.id, NOBODY, "key-1").answer == retried.answer


def test_a_second_retry_while_the_first_is_on_its_way_is_refused() -> None:
    world = World()
    sketch = failed_after_the_still(world)
    world.novita.script["kling"] = ["vid-2"]
    retrier(world).retry(sketch.id, NOBODY, None)

    with pytest.raises(NotRetryable) as refused:
        retrier(world).retry(sketch.id, NOBODY, None)
    assert refused.value.reason == "in_progress" and world.novita.count("kling") == 1


def test_a_stale_video_copy_of_the_failed_attempt_is_removed_before_the_new_one() -> None:
    world = World()
    sketch = failed_after_the_still(world, video_task_id=None)
    name = f"sketches/{sketch.id}/video.mp4"
    world.storage.objects[(world.settings.media_bucket, name)] = (b"old", {"sketch_id": sketch.id})
    world.novita.script["kling"] = ["vid-2"]

    retrier(world).retry(sketch.id, NOBODY, None)

    assert (world.settings.media_bucket, name) not in world.storage.objects

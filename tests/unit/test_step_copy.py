"""The `copy` step by itself: the finished video into the bucket, then complete
(shared/pipeline/copy.py, links.py)."""

from __future__ import annotations

from shared.pipeline.queue import Step
from shared.pipeline.results import Outcome
from shared.sketch.model import Sketch, Status, StepKind
from tests.unit.world import BUCKET, VIDEO_URL, World, ago, later, video_result


def waiting_for_copy(world: World, **fields: object) -> Sketch:
    defaults: dict[str, object] = {
        "image_task_id": "img-1",
        "video_task_id": "vid-1",
        "novita_video_url": VIDEO_URL,
        "novita_video_url_expires_at": later(3600),
    }
    return world.sketch(Status.VIDEO_PENDING, **{**defaults, **fields})


def copy(world: World, sketch: Sketch) -> Outcome:
    return world.run(Step(kind=StepKind.COPY, sketch_id=sketch.id))


def test_the_video_is_stored_and_the_sketch_is_complete() -> None:
    world = World()
    sketch = waiting_for_copy(world)

    assert copy(world, sketch) is Outcome.APPLIED
    done = world.stored(sketch.id)
    name = f"sketches/{sketch.id}/video.mp4"
    assert done.status is Status.COMPLETE and done.progress == 100 and done.video_object == name
    assert world.storage.objects[(BUCKET, name)][0] == world.media.files["/video.mp4"][1]
    assert done.video_url and done.step_lease_owner is None and done.recovery_due_at is None


def test_an_expired_link_is_renewed_from_task_result_first() -> None:
    world = World()
    world.media.files["/fresh.mp4"] = world.media.files.pop("/video.mp4")
    sketch = waiting_for_copy(world, novita_video_url_expires_at=ago(1))
    world.novita.script["task_result"] = [video_result("vid-1", "http://media.test/fresh.mp4")]

    assert copy(world, sketch) is Outcome.APPLIED
    assert world.stored(sketch.id).status is Status.COMPLETE
    assert world.media.asked == ["/fresh.mp4"]


def test_a_name_taken_by_another_sketchs_object_fails_the_sketch_and_replaces_nothing() -> None:
    world = World()
    sketch = waiting_for_copy(world)
    name = f"sketches/{sketch.id}/video.mp4"
    world.storage.objects[(BUCKET, name)] = (b"someone else's", {"sketch_id": "another"})

    assert copy(world, sketch) is Outcome.APPLIED
    failed = world.stored(sketch.id)
    assert failed.status is Status.FAILED and "is not this sketch's" in (failed.error_message or "")
    assert world.storage.objects[(BUCKET, name)][0] == b"someone else's"

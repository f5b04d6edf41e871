"""Deleting a sketch by itself (shared/pipeline/deletion.py): its media, then its document; and a
step or a webhook that arrives for a deleted sketch changes nothing and stores nothing
(shared/pipeline/links.py, chain.py, copy.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import pytest

from shared.google.api import Unavailable
from shared.pipeline.deletion import Deletion, MediaNotRemoved
from shared.pipeline.queue import Hint, Step
from shared.pipeline.results import Outcome
from shared.sketch.model import Sketch, Status, StepKind
from tests.unit.world import BUCKET, STILL_URL, VIDEO_URL, World, later, video_result


def deletion(world: World) -> Deletion:
    return Deletion(world.db, world.store, world.storage, world.settings)


def complete(world: World, **fields: Any) -> Sketch:
    sketch = world.sketch(Status.COMPLETE, image_task_id="img-1", video_task_id="vid-1", **fields)
    names = {
        "image_object": f"sketches/{sketch.id}/still.jpg",
        "video_object": f"sketches/{sketch.id}/video.mp4",
    }
    for name in names.values():
        world.storage.objects[(BUCKET, name)] = (b"media", {"sketch_id": sketch.id})
    world.store.mutate(sketch.id, lambda s: names)
    return world.stored(sketch.id)


def names_in_bucket(world: World) -> set[str]:
    return {name for _, name in world.storage.objects}


def test_the_media_and_then_the_document_are_removed() -> None:
    world = World()
    sketch = complete(world)
    other = complete(world)

    removed = deletion(world).delete(sketch)

    assert removed.sketch_id == sketch.id
    assert set(removed.objects) == {sketch.image_object, sketch.video_object}
    assert world.store.get(sketch.id) is None
    assert names_in_bucket(world) == {other.image_object, other.video_object}
    assert world.stored(other.id) == other


def test_media_that_cannot_be_removed_keeps_the_document_for_the_next_try() -> None:
    world = World()
    sketch = complete(world)

    def down(bucket: str, name: str) -> None:
        raise Unavailable("UNAVAILABLE", "the fake Cloud Storage is down")

    world.storage.delete = down  # type: ignore[method-assign]
    with pytest.raises(MediaNotRemoved):
        deletion(world).delete(sketch)
    assert world.store.get(sketch.id) is not None


def test_an_object_a_step_recorded_while_the_media_went_is_removed_after_the_document() -> None:
    world = World()
    sketch = world.sketch(Status.VIDEO_PENDING, video_task_id="vid-1", novita_video_url=VIDEO_URL)
    name = f"sketches/{sketch.id}/video.mp4"
    remove = world.store.remove

    def copy_lands_first(sketch_id: str, **kwargs: Any) -> None:
        # The copy step stored and recorded the video between the first pass and the document.
        world.storage.objects[(BUCKET, name)] = (b"video", {"sketch_id": sketch.id})
        remove(sketch_id, **kwargs)

    world.store.remove = copy_lands_first  # type: ignore[method-assign]
    deletion(world).delete(sketch)

    assert world.store.get(sketch.id) is None and names_in_bucket(world) == set()


def delete_during_upload(world: World, sketch: Sketch) -> None:
    """The sketch is deleted while a step's upload goes on: the document goes before its write."""
    upload = world.storage.upload

    def upload_then_deleted(bucket: str, name: str, data: bytes | Iterable[bytes], **kwargs: Any) -> Any:
        stored = upload(bucket, name, data, **kwargs)
        world.store.remove(sketch.id)
        return stored

    world.storage.upload = upload_then_deleted  # type: ignore[method-assign]


def test_a_chain_storing_the_still_of_a_deleted_sketch_removes_it_and_asks_kling_nothing() -> None:
    world = World()
    sketch = world.sketch(
        Status.IMAGE_COMPLETE,
        image_task_id="img-1",
        novita_image_url=STILL_URL,
        novita_image_url_expires_at=later(3600),
    )
    delete_during_upload(world, sketch)

    assert world.run(Step(kind=StepKind.CHAIN, sketch_id=sketch.id)) is Outcome.IGNORED
    assert names_in_bucket(world) == set() and world.store.get(sketch.id) is None
    assert world.novita.calls == []


def test_a_copy_storing_the_video_of_a_deleted_sketch_removes_it() -> None:
    world = World()
    sketch = world.sketch(
        Status.VIDEO_PENDING,
        video_task_id="vid-1",
        novita_video_url=VIDEO_URL,
        novita_video_url_expires_at=later(3600),
    )
    delete_during_upload(world, sketch)

    assert world.run(Step(kind=StepKind.COPY, sketch_id=sketch.id)) is Outcome.IGNORED
    assert names_in_bucket(world) == set() and world.store.get(sketch.id) is None


@pytest.mark.parametrize(
    "arrives",
    [
        lambda world, sketch_id: world.recovery.delivered(sketch_id, Hint("vid-1", "video")),
        lambda world, sketch_id: world.run(
            Step(kind=StepKind.CHECK, sketch_id=sketch_id, task_id="vid-1", stage="video")
        ),
        lambda world, sketch_id: world.run(Step(kind=StepKind.COPY, sketch_id=sketch_id)),
        lambda world, sketch_id: world.worker.dead_letter(Step(kind=StepKind.COPY, sketch_id=sketch_id)),
    ],
    ids=["webhook", "check", "copy", "dead-letter"],
)
def test_whatever_arrives_for_a_deleted_sketch_changes_and_stores_nothing(
    arrives: Callable[[World, str], object],
) -> None:
    world = World()
    sketch = world.sketch(Status.VIDEO_PENDING, video_task_id="vid-1", novita_video_url=VIDEO_URL)
    deletion(world).delete(sketch)
    world.novita.script["task_result"] = [video_result("vid-1")]

    arrives(world, sketch.id)

    assert world.store.get(sketch.id) is None and names_in_bucket(world) == set()
    assert world.published() == [] and world.novita.calls == []


def test_a_users_sketches_are_deleted_page_by_page_and_no_one_elses() -> None:
    world = World()
    mine = [complete(world, user_id="uid-1") for _ in range(53)]
    theirs = complete(world, user_id="uid-2")
    # The gallery pages by creation time: make each distinct.
    for index, sketch in enumerate(mine):
        world.store.mutate(sketch.id, lambda s, i=index: {"created_at": s.created_at - timedelta(seconds=i)})

    removed = list(deletion(world).delete_user("uid-1"))

    assert sorted(r.sketch_id for r in removed) == sorted(s.id for s in mine)
    assert world.store.newest("uid-1", 10, None) == []
    assert world.stored(theirs.id) == theirs
    assert names_in_bucket(world) == {theirs.image_object, theirs.video_object}


def test_forgetting_a_user_removes_what_names_them_and_nothing_else() -> None:
    world = World()
    collection = world.settings.sketches_collection
    for user, n in (("uid-gone", 150), ("uid-kept", 2)):  # more than one page of the one
        for i in range(n):
            world.db.create(f"{collection}_daily", f"{user}-{i}", {"user_id": user, "count": 1})
        world.db.create(f"{collection}_slots", f"{user}-0", {"user_id": user, "sketch_id": None})
        world.db.create(f"{collection}_idempotency", f"{user}-key", {"scope": user})

    assert deletion(world).forget_user("uid-gone") == 152

    left = [
        d.data
        for c in ("_daily", "_slots", "_idempotency")
        for d in world.db.query(collection + c, limit=500)
    ]
    assert left and {data.get("user_id") or data.get("scope") for data in left} == {"uid-kept"}

"""Novita's links to a sketch's still and video (renewed from task-result when they expire), and
the uploads of their copies to the bucket: the media work the chain and the copy share.

The copies' names are made here and nowhere else, so that a deletion finds every object a step may
have stored for a sketch (`shared/pipeline/deletion.py`). A step whose sketch was deleted while it
uploaded removes what it just stored: nothing stays in the bucket for a sketch that is gone.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from pydantic import ValidationError

from shared.core.deadline import Deadline
from shared.google.api import ApiError
from shared.google.storage import TOKEN_METADATA, ObjectExists
from shared.media.policy import MediaExpired, MediaRejected, MediaUnavailable
from shared.novita.errors import NovitaError
from shared.pipeline.lease import Lease
from shared.pipeline.results import fail_changes
from shared.pipeline.work import RetryLater, Tools
from shared.sketch.model import Sketch, Stage, utcnow
from shared.sketch.store import Changes

log = logging.getLogger(__name__)
R = TypeVar("R")


def removed_if_gone(tools: Tools, sketch_id: str, name: str) -> bool:
    """After a write under the lease that recorded the object `name` did not land: whether the
    sketch was deleted meanwhile. The object just stored for it is then removed."""
    if tools.store.get(sketch_id) is not None:
        return False
    assert tools.storage is not None and tools.settings.media_bucket is not None
    try:
        tools.storage.delete(tools.settings.media_bucket, name)
    except ApiError as exc:
        # The step will find no sketch next time either: only an operator can remove it now.
        log.error(
            "an object stored for a deleted sketch could not be removed: %s", exc, extra={"object": name}
        )
        return True
    log.warning(
        "the sketch was deleted while its media was stored; the copy is removed", extra={"object": name}
    )
    return True


def renew_link(tools: Tools, lease: Lease, stage: Stage, deadline: Deadline) -> Sketch | None:
    """The sketch with a new Novita link to its still or its video, from task-result; None when
    it has no task to ask (the sketch is then failed)."""
    sketch = lease.sketch
    task_id = sketch.task_of(stage)
    what = "still" if stage == "image" else "video"
    if task_id is None:
        # Seedream's synchronous answer has no task to ask again.
        lease.finish(fail_changes(f"the {what}'s link expired before it could be fetched"))
        log.warning("the %s's link expired and cannot be renewed", what)
        return None
    try:
        result = tools.novita.task_result(task_id, deadline)
    except (NovitaError, ValidationError) as exc:
        lease.release()
        raise RetryLater(f"a fresh link to the {what} could not be fetched: {exc}") from exc
    now = utcnow()
    changes: Changes
    if stage == "image" and result.images:
        link, expires = result.images[0].image_url, result.images[0].expires_at(now)
        changes = {"novita_image_url": link, "novita_image_url_expires_at": expires}
        if sketch.image_object is None:
            changes |= {"image_url": link, "image_url_expires_at": expires}
    elif stage == "video" and result.videos:
        link, expires = result.videos[0].video_url, result.videos[0].expires_at(now)
        changes = {"novita_video_url": link, "novita_video_url_expires_at": expires}
    else:
        lease.release()
        raise RetryLater(f"task-result gave no {what} for a finished task")
    renewed = lease.finish(changes)
    if renewed is None:
        raise RetryLater(f"the step lost its lease while renewing the {what}'s link")
    return renewed


def from_novita(
    tools: Tools, lease: Lease, stage: Stage, deadline: Deadline, use: Callable[[Sketch], R]
) -> tuple[Sketch, R] | None:
    """`use` the sketch's Novita link to its still or video. A medium refused for good fails the
    sketch (None); an expired link is renewed from task-result once; a fault that may pass gives the
    work back for the next delivery of the step."""
    what = "still" if stage == "image" else "video"
    expires = lease.sketch.link_expires_at(stage)
    fresh = expires is None or expires > utcnow()
    # None once a link with no task to renew it from has failed the sketch.
    sketch = lease.sketch if fresh else renew_link(tools, lease, stage, deadline)
    for attempt in (1, 2):
        if sketch is None:
            return None
        try:
            return sketch, use(sketch)
        except MediaRejected as exc:
            lease.finish(fail_changes(f"the {what} was refused: {exc}"))
            log.warning("%s refused: %s", what, exc)
            return None
        except MediaExpired as exc:
            if attempt == 2:
                lease.release()
                raise RetryLater(f"the {what}'s link keeps expiring: {exc}") from exc
            sketch = renew_link(tools, lease, stage, deadline)
        except MediaUnavailable as exc:
            lease.release()
            raise RetryLater(f"the {what} could not be downloaded: {exc}") from exc
    raise AssertionError("unreachable: the second attempt returns or raises")


def upload(
    tools: Tools,
    lease: Lease,
    name: str,
    data: bytes | Iterable[bytes],
    content_type: str,
    deadline: Deadline,
) -> str | None:
    """Store a new object; its download token. None if the name is taken by something that is not
    this sketch's (the sketch is then failed: nothing is replaced)."""
    assert tools.storage is not None and tools.settings.media_bucket is not None
    sketch_id = lease.sketch.id
    try:
        return tools.storage.upload(
            tools.settings.media_bucket,
            name,
            data,
            content_type=content_type,
            token=uuid.uuid4().hex,
            metadata={"sketch_id": sketch_id},
            deadline=deadline,
        ).token
    except ObjectExists as exists:
        metadata = exists.existing.get("metadata") or {}
        if metadata.get("sketch_id") == sketch_id and metadata.get(TOKEN_METADATA):
            # An upload of this sketch's whose answer was lost: it is the copy.
            return str(metadata[TOKEN_METADATA]).split(",")[0]
        lease.finish(fail_changes(f"{name} exists in the bucket and is not this sketch's"))
        return None
    except ApiError as exc:
        lease.release()
        raise RetryLater(f"Cloud Storage did not take {name}: {exc}") from exc

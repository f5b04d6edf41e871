"""The `chain` step: download the still Novita drew, check it, keep a copy in the bucket, and start
Kling on it. This is where the image-to-video task is paid for."""

from __future__ import annotations

import logging
from datetime import timedelta

from shared.core.deadline import Deadline
from shared.media.fetch import fetch_media
from shared.media.still import Still, inspect_still
from shared.novita.errors import NovitaError, NovitaRejected, NovitaUnavailable
from shared.pipeline import lease as leases
from shared.pipeline import paid
from shared.pipeline.lease import Lease
from shared.pipeline.links import from_novita, removed_if_gone, upload
from shared.pipeline.results import NO_LEASE, OUTCOME_KNOWN, Outcome, progress_at
from shared.pipeline.work import RetryLater, Tools, record_paid
from shared.sketch.model import Sketch, Status, StepKind, utcnow
from shared.sketch.objects import still_name
from shared.sketch.store import Changes

log = logging.getLogger(__name__)


def run(tools: Tools, sketch: Sketch, deadline: Deadline) -> Outcome:
    grace = tools.settings.unknown_outcome_grace_seconds

    def may(s: Sketch) -> bool:
        return (
            s.status is Status.IMAGE_COMPLETE
            and s.video_task_id is None
            and paid.may_send(s, "video", utcnow(), grace)
        )

    with leases.take(tools, sketch, may) as lease:
        if lease is None:
            return Outcome.IN_PROGRESS
        still = fetch_and_keep(tools, lease, deadline)
        if isinstance(still, Outcome):
            return still
        return start_kling(tools, lease, still, deadline)


def fetch_and_keep(tools: Tools, lease: Lease, deadline: Deadline) -> Still | Outcome:
    """The still, fetched and checked, and kept in the bucket if it is not yet; or the outcome that
    ends the step instead (the still was refused, its name is taken, the sketch was deleted)."""
    still = _fetch_still(tools, lease, deadline)
    if still is None:
        return Outcome.APPLIED
    if tools.storage is not None and lease.sketch.image_object is None:
        kept = _store_still(tools, lease, still, deadline)
        if kept is not None:
            return kept
    return still


def start_kling(tools: Tools, lease: Lease, still: Still, deadline: Deadline) -> Outcome:
    """Ask Kling to animate `still` for the lease's sketch, and record its task: the one place an
    image-to-video task is paid for (the chain, and a retry from the kept still)."""
    sketch = lease.sketch
    started = paid.ask(
        tools,
        lambda: tools.novita.start_image_to_video(
            still=still,
            still_url=sketch.still_source or "",
            prompt=sketch.video_prompt,
            negative_prompt=sketch.negative_prompt,
            duration=sketch.duration,
            webhook_url=tools.webhook_url(sketch.id, "video"),
            deadline=deadline,
            # Kling's guide form registers a webhook, which names the sketch; the reference's has none.
            sending=lambda form: paid.send(lease, "video", webhook=form == "guide"),
        ),
    )
    if isinstance(started, NovitaRejected | NovitaUnavailable):
        return paid.refused(lease, started, "Kling")
    if isinstance(started, NovitaError):  # no answer: the task may or may not exist
        # The record says which form was in flight: only the guide's can be adopted through its webhook.
        webhook = lease.sketch.submission_webhook
        now = utcnow()
        due = now + timedelta(seconds=tools.settings.unknown_outcome_grace_seconds) if webhook else now
        lease.release(due=due)
        if not webhook:
            # Its task can never reach the sketch: the next delivery pays again, and says so.
            raise RetryLater(f"Kling's answer was lost and its task cannot be found: {started.describe()}")
        log.warning(
            "image-to-video answer lost; waiting for its webhook, not sending it again: %s",
            started.describe(),
        )
        return Outcome.IN_PROGRESS
    video_task_id, form = started

    def record(s: Sketch) -> Changes | None:
        if s.status is not Status.IMAGE_COMPLETE or s.video_task_id is not None:
            return None  # the video's own result got here first and adopted the task
        return {
            "status": Status.VIDEO_PENDING,
            "video_task_id": video_task_id,
            "progress": max(s.progress, progress_at("video")),
            **NO_LEASE,
            **OUTCOME_KNOWN,
            "recovery_due_at": tools.results.recovery_due(utcnow(), StepKind.CHECK),
        }

    try:
        recorded, changed = record_paid(
            f"the image-to-video task {video_task_id}",
            lambda: tools.store.mutate(sketch.id, record, known=lease.sketch),
            deadline,
        )
    except RetryLater:
        # The request's record stays: no other step asks Kling before this task's result is adopted.
        log.error("image-to-video task started but not recorded", extra={"task_id": video_task_id})
        raise
    if not changed and (recorded is None or recorded.video_task_id != video_task_id):
        log.warning("a paid task that no sketch adopts", extra={"task_id": video_task_id, "stage": "video"})
        return Outcome.DUPLICATE
    log.info("image-to-video task started", extra={"task_id": video_task_id, "form": form})
    return Outcome.APPLIED


def _fetch_still(tools: Tools, lease: Lease, deadline: Deadline) -> Still | None:
    """The still, checked; None if it was refused for good (the sketch is then failed)."""

    def fetch(s: Sketch) -> Still:
        assert s.still_source is not None
        return inspect_still(
            fetch_media(
                s.still_source,
                policy=tools.settings.media_url_policy,
                client=tools.media_http,
                deadline=deadline,
                resolve=tools.resolve,
            )
        )

    fetched = from_novita(tools, lease, "image", deadline, fetch)
    return None if fetched is None else fetched[1]


def _store_still(tools: Tools, lease: Lease, still: Still, deadline: Deadline) -> Outcome | None:
    """Keep the bytes just fetched in the bucket; the sketch then shows the copy. None once it is
    kept, else the step's outcome: the sketch failed instead (its name in the bucket is taken), or
    it was deleted meanwhile (the copy is removed again)."""
    assert tools.storage is not None and tools.settings.media_bucket is not None
    name = still_name(lease.sketch.id, still.extension)
    token = upload(tools, lease, name, still.data, still.mime, deadline)
    if token is None:
        return Outcome.APPLIED
    stored = lease.finish(
        {
            "image_object": name,
            "image_url": tools.storage.download_url(tools.settings.media_bucket, name, token),
            "image_url_expires_at": None,
        }
    )
    if stored is None:
        if removed_if_gone(tools, lease.sketch.id, name):
            return Outcome.IGNORED
        raise RetryLater("the step lost its lease while storing the still")
    return None

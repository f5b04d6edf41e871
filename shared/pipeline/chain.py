"""The `chain` step: download the still Novita drew, check it, keep a copy in the bucket, and start
Kling on it. This is where the image-to-video task is paid for."""

from __future__ import annotations

import logging
from datetime import timedelta

from shared.core.deadline import Deadline
from shared.media.fetch import fetch_media
from shared.media.still import Still, inspect_still
from shared.novita.client import NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable
from shared.pipeline import lease as leases
from shared.pipeline.lease import Lease
from shared.pipeline.links import from_novita, upload
from shared.pipeline.results import NO_LEASE, Outcome, fail_changes, progress_at
from shared.pipeline.work import RetryLater, Tools, record_paid
from shared.sketch.model import Sketch, Status, StepKind, utcnow
from shared.sketch.store import Changes

log = logging.getLogger(__name__)

# Connect, write and read timeouts of a Kling request: the lease must still run this long when it is sent.
KLING_REQUEST_BUDGET = timedelta(seconds=95)


def run(tools: Tools, sketch: Sketch, deadline: Deadline) -> Outcome:
    def may(s: Sketch) -> bool:
        # A request whose outcome is unknown may have started a paid task: never send it again.
        return s.status is Status.IMAGE_COMPLETE and s.video_task_id is None and s.submission_unknown is None

    with leases.take(tools, sketch, may) as lease:
        if lease is None:
            return Outcome.IN_PROGRESS
        still = _fetch_still(tools, lease, deadline)
        if still is None:
            return Outcome.APPLIED
        if (
            tools.storage is not None
            and lease.sketch.image_object is None
            and not _store_still(tools, lease, still, deadline)
        ):
            return Outcome.APPLIED
        sketch = lease.hold(KLING_REQUEST_BUDGET)
        tools.breaker.check()
        assert sketch.novita_image_url is not None
        try:
            video_task_id, form = tools.novita.start_image_to_video(
                still=still,
                still_url=sketch.novita_image_url,
                prompt=sketch.video_prompt,
                negative_prompt=sketch.negative_prompt,
                duration=sketch.duration,
                webhook_url=tools.webhook_url(sketch.id, "video"),
                deadline=deadline,
            )
        except NovitaRejected as exc:
            if exc.is_balance:
                # The chain can wait: its step comes back, with backoff, until the balance does.
                tools.breaker.open(exc)
                lease.release()
                raise RetryLater(f"Kling refused for the balance: {exc.describe()}") from exc
            lease.finish(fail_changes(exc.describe()))
            log.warning("Kling refused the still: %s", exc.describe())
            return Outcome.APPLIED
        except NovitaUnavailable as exc:
            lease.release()
            raise RetryLater(f"image-to-video could not be started: {exc.describe()}") from exc
        except NovitaOutcomeUnknown as exc:
            now = utcnow()
            grace = timedelta(seconds=tools.settings.unknown_outcome_grace_seconds)
            lease.finish(
                {
                    **NO_LEASE,
                    "submission_unknown": "video",
                    "submission_unknown_since": now,
                    "recovery_due_at": now + grace,
                }
            )
            log.warning("image-to-video outcome unknown; it is not sent again: %s", exc.describe())
            return Outcome.IN_PROGRESS

        def record(s: Sketch) -> Changes | None:
            if s.status is not Status.IMAGE_COMPLETE or s.video_task_id is not None:
                return None  # the video's own result got here first and adopted the task
            return {
                "status": Status.VIDEO_PENDING,
                "video_task_id": video_task_id,
                "progress": max(s.progress, progress_at("video")),
                **NO_LEASE,
                "recovery_due_at": tools.results.recovery_due(utcnow(), StepKind.CHECK),
            }

        try:
            record_paid(
                f"the image-to-video task {video_task_id}",
                lambda: tools.store.mutate(sketch.id, record, known=sketch),
                deadline,
            )
        except RetryLater:
            # The lease stays, so no other step asks Kling before this task's result is adopted,
            # unless the lease runs out first.
            log.error("image-to-video task started but not recorded", extra={"task_id": video_task_id})
            raise
    log.info("image-to-video task started", extra={"task_id": video_task_id, "form": form})
    return Outcome.APPLIED


def _fetch_still(tools: Tools, lease: Lease, deadline: Deadline) -> Still | None:
    """The still, checked; None if it was refused for good (the sketch is then failed)."""

    def fetch(s: Sketch) -> Still:
        assert s.novita_image_url is not None
        return inspect_still(
            fetch_media(
                s.novita_image_url,
                policy=tools.settings.media_url_policy,
                client=tools.media_http,
                deadline=deadline,
                resolve=tools.resolve,
            )
        )

    fetched = from_novita(tools, lease, "image", deadline, fetch)
    return None if fetched is None else fetched[1]


def _store_still(tools: Tools, lease: Lease, still: Still, deadline: Deadline) -> bool:
    """Keep the bytes just fetched in the bucket; the sketch then shows the copy. False if the sketch
    failed instead (its name in the bucket is taken)."""
    assert tools.storage is not None and tools.settings.media_bucket is not None
    name = f"sketches/{lease.sketch.id}/still.{still.extension}"
    token = upload(tools, lease, name, still.data, still.mime, deadline)
    if token is None:
        return False
    stored = lease.finish(
        {
            "image_object": name,
            "image_url": tools.storage.download_url(tools.settings.media_bucket, name, token),
            "image_url_expires_at": None,
        }
    )
    if stored is None:
        raise RetryLater("the step lost its lease while storing the still")
    return True

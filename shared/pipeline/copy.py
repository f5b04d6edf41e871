"""The `copy` step: stream the finished video from Novita into the bucket, never whole in memory;
then the sketch is complete (or, if it was deleted meanwhile, the copy is removed again)."""

from __future__ import annotations

import logging
from datetime import datetime

from shared.core.deadline import Deadline
from shared.media.fetch import stream_media
from shared.pipeline import lease as leases
from shared.pipeline.links import from_novita, removed_if_gone, upload
from shared.pipeline.results import NO_LEASE, Outcome
from shared.pipeline.work import Tools
from shared.sketch.model import Sketch, Status, utcnow
from shared.sketch.objects import video_name
from shared.sketch.store import Changes

log = logging.getLogger(__name__)

MAX_VIDEO_BYTES = 512 * 1024 * 1024


def run(tools: Tools, sketch: Sketch, deadline: Deadline) -> Outcome:
    def may(s: Sketch) -> bool:
        return s.status is Status.VIDEO_PENDING and s.novita_video_url is not None and s.video_object is None

    with leases.take(tools, sketch, may) as lease:
        if lease is None:
            return Outcome.IN_PROGRESS
        if tools.storage is None or tools.settings.media_bucket is None:
            # The bucket was taken out of the configuration after the video was made.
            lease.finish(complete_changes(lease.sketch.novita_video_url, None, None))
            return Outcome.APPLIED
        storage, bucket = tools.storage, tools.settings.media_bucket
        name = video_name(lease.sketch.id)

        def copy(s: Sketch) -> str | None:
            assert s.novita_video_url is not None
            with stream_media(
                s.novita_video_url,
                policy=tools.settings.media_url_policy,
                client=tools.media_http,
                deadline=deadline,
                max_bytes=MAX_VIDEO_BYTES,
                resolve=tools.resolve,
            ) as chunks:
                return upload(tools, lease, name, chunks, "video/mp4", deadline)

        copied = from_novita(tools, lease, "video", deadline, copy)
        if copied is None or copied[1] is None:
            return Outcome.APPLIED
        stored = lease.finish(complete_changes(storage.download_url(bucket, name, copied[1]), None, name))
        if stored is None and removed_if_gone(tools, lease.sketch.id, name):
            return Outcome.IGNORED
    log.info("video stored; sketch complete")
    return Outcome.APPLIED


def complete_changes(video_url: str | None, expires: datetime | None, name: str | None) -> Changes:
    return {
        "status": Status.COMPLETE,
        "video_url": video_url,
        "video_url_expires_at": expires,
        "video_object": name,
        "progress": 100,
        "eta_seconds": None,
        "completed_at": utcnow(),
        "error_message": None,
        **NO_LEASE,
        "recovery_due_at": None,
    }

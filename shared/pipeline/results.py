"""The one place a task result changes a sketch, wherever the result came from (a step asking
task-result after a webhook, a `GET ?id=`, the sweep; or a test-mode delivery).

Every change is decided by a pure function of the sketch as it is in Firestore and written through
`SketchStore.mutate`, so the same result applied by any number of concurrent steps changes the
sketch once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from shared.core.config import Settings
from shared.sketch.model import Sketch, Stage, Status, StepKind, utcnow
from shared.sketch.store import Changes, SketchStore

if TYPE_CHECKING:
    # A result arrives already read by the caller (a check, a test-mode delivery): a request that
    # applies none never imports the models.
    from shared.novita.models import TaskResult

log = logging.getLogger(__name__)

IMAGE_FAILED_DEFAULT = "Novita could not make the image (text-to-image task failed)"
VIDEO_FAILED_DEFAULT = "Novita could not make the video (image-to-video task failed)"
MAX_ERROR_MESSAGE = 1000

# The share of the progress bar each part of the work stands for. Novita's own progress_percent
# moves the bar within its part; the chain and the copy are the project's own.
Part = Literal["image", "chain", "video", "copy"]
_SPANS: dict[Part, tuple[int, int]] = {
    "image": (0, 30),
    "chain": (30, 35),
    "video": (35, 90),
    "copy": (90, 99),
}


def progress_at(part: Part, percent: float | None = None) -> int:
    low, high = _SPANS[part]
    share = min(max((percent or 0.0) / 100.0, 0.0), 1.0)
    return low + round((high - low) * share)


class Outcome(StrEnum):
    APPLIED = "applied"  # the result changed the sketch
    DUPLICATE = "duplicate"  # this result was applied before
    IGNORED = "ignored"  # not the sketch's task, not finished, or no such sketch
    IN_PROGRESS = "in_progress"  # another step holds the work, or a submission awaits its outcome


class MalformedResult(Exception):
    """A finished task result without the output it should carry, or with a value beyond a bound:
    refused for good."""


# Parts of a change: the step's lease given back, and a submission's outcome no longer unknown.
NO_LEASE: Changes = {"step_lease_owner": None, "step_lease_until": None}
OUTCOME_KNOWN: Changes = {
    "submission_unknown": None,
    "submission_unknown_since": None,
    "submission_owner": None,
}


def fail_changes(message: str) -> Changes:
    """The change that fails a sketch with `message`, whatever it was waiting on."""
    return {
        "status": Status.FAILED,
        "error_message": message[:MAX_ERROR_MESSAGE],
        "eta_seconds": None,
        **NO_LEASE,
        **OUTCOME_KNOWN,
        "recovery_due_at": None,
    }


def stage_of(sketch: Sketch, task_id: str, hint: Stage | None) -> Stage | None:
    """Which of the sketch's tasks a result belongs to, or None for a stale or foreign task.

    A task id the sketch has not recorded yet is adopted only for the stage its webhook was
    registered for (the token covers it), and only while that stage's submission has no recorded
    id because its answer was lost.
    """
    if task_id == sketch.image_task_id:
        return "image"
    if task_id == sketch.video_task_id:
        return "video"
    if hint == "image" and sketch.status is Status.IMAGE_PENDING and sketch.submission_unknown == "image":
        return "image"
    if hint == "video" and sketch.status is Status.IMAGE_COMPLETE and sketch.submission_unknown == "video":
        return "video"
    return None


def waits_on(sketch: Sketch, task_id: str, stage: Stage) -> bool:
    """Whether the sketch waits on the task a webhook named: its own task of that stage, or a task of
    a stage whose request's answer is not known yet (adopted once task-result confirms it)."""
    found = stage_of(sketch, task_id, stage)
    if found == "image":
        return sketch.status is Status.IMAGE_PENDING
    if found == "video":
        return sketch.status is Status.IMAGE_COMPLETE or (
            sketch.status is Status.VIDEO_PENDING and sketch.novita_video_url is None
        )
    return False


def is_unadopted(sketch: Sketch, task_id: str) -> bool:
    """Whether a task reported for the sketch is none of its own: a paid task that no sketch adopts."""
    return task_id not in (sketch.image_task_id, sketch.video_task_id)


def note_ignored(sketch: Sketch, task_id: str) -> None:
    """Log a result the sketch does not wait on: a WARNING when the task is none of the sketch's."""
    if is_unadopted(sketch, task_id):
        # Someone paid for it: an operator reconciling Novita's bill looks for these.
        log.warning(
            "a paid task that no sketch adopts", extra={"task_id": task_id, "status": str(sketch.status)}
        )
    else:
        log.info("a result already applied: ignored", extra={"task_id": task_id})


class Results:
    def __init__(self, settings: Settings, store: SketchStore) -> None:
        self._settings = settings
        self._store = store

    @property
    def interval(self) -> float:
        """RECOVERY_INTERVAL_SECONDS: the least time between two looks at one sketch."""
        return self._settings.recovery_interval_seconds

    def recovery_due(self, now: datetime, waits_on: StepKind | None) -> datetime:
        """When recovery may next look at a sketch changed at `now` that now `waits_on` a step.

        A slow step handed to the queue gets as long as a lease lasts to take its work up before
        recovery hands it on again: under a backlog the queue may be minutes behind, and handing
        the same step on at every interval would only lengthen it.
        """
        slow = waits_on is not None and waits_on.is_slow
        seconds = self._settings.step_lease_seconds if slow else self._settings.recovery_interval_seconds
        return now + timedelta(seconds=seconds)

    def apply(self, known: Sketch, result: TaskResult, stage: Stage) -> tuple[Outcome, Sketch | None]:
        """Apply `result` of the sketch's `stage` task; the outcome and the sketch as it now is."""
        task = result.task
        if not result.is_final:
            return self._progress(known, task.task_id, stage, task.progress_percent, task.eta)
        if stage == "image":
            return self._image(known, result)
        return self._video(known, result)

    def _progress(
        self, known: Sketch, task_id: str, stage: Stage, percent: float | None, eta: float | None
    ) -> tuple[Outcome, Sketch | None]:
        """Novita is still working: show how far it has come (never less than shown before)."""
        waiting = Status.IMAGE_PENDING if stage == "image" else Status.VIDEO_PENDING
        progress = progress_at(stage, percent)
        eta_seconds = None if eta is None else round(eta)

        def decide(s: Sketch) -> Changes | None:
            if s.status is not waiting or s.task_of(stage) != task_id:
                return None
            changes: Changes = {"progress": max(s.progress, progress), "eta_seconds": eta_seconds}
            return None if all(getattr(s, k) == v for k, v in changes.items()) else changes

        sketch, _ = self._store.mutate(known.id, decide, known=known)
        return Outcome.IGNORED, sketch

    def _image(self, known: Sketch, result: TaskResult) -> tuple[Outcome, Sketch | None]:
        task_id = result.task.task_id
        now = utcnow()
        if result.failed:
            changes = {**fail_changes(result.task.reason or IMAGE_FAILED_DEFAULT), "image_task_id": task_id}
        else:
            if not result.images:
                raise MalformedResult(f"image task {task_id} succeeded without an image")
            image = result.images[0]
            link_expires = image.expires_at(now)
            changes = {
                "status": Status.IMAGE_COMPLETE,
                "image_task_id": task_id,
                "image_url": image.image_url,
                "image_url_expires_at": link_expires,
                "novita_image_url": image.image_url,
                "novita_image_url_expires_at": link_expires,
                "progress": progress_at("chain"),
                "eta_seconds": None,
                **OUTCOME_KNOWN,
                "recovery_due_at": self.recovery_due(now, StepKind.CHAIN),
            }

        def decide(s: Sketch) -> Changes | None:
            waiting = s.status is Status.IMAGE_PENDING and s.image_task_id in (None, task_id)
            return changes if waiting else None

        return self._applied(*self._store.mutate(known.id, decide, known=known))

    def _video(self, known: Sketch, result: TaskResult) -> tuple[Outcome, Sketch | None]:
        task_id = result.task.task_id
        now = utcnow()
        if result.failed:
            changes = {**fail_changes(result.task.reason or VIDEO_FAILED_DEFAULT), "video_task_id": task_id}
        else:
            if not result.videos:
                raise MalformedResult(f"video task {task_id} succeeded without a video")
            video = result.videos[0]
            link_expires = video.expires_at(now)
            found: Changes = {
                "video_task_id": task_id,
                "novita_video_url": video.video_url,
                "novita_video_url_expires_at": link_expires,
                "eta_seconds": None,
                **NO_LEASE,
                **OUTCOME_KNOWN,
            }
            if self._settings.media_bucket:
                # `complete` means the video is stored: the copy step comes first.
                changes = {
                    **found,
                    "status": Status.VIDEO_PENDING,
                    "progress": progress_at("copy"),
                    "recovery_due_at": self.recovery_due(now, StepKind.COPY),
                }
            else:
                changes = {
                    **found,
                    "status": Status.COMPLETE,
                    "video_url": video.video_url,
                    "video_url_expires_at": link_expires,
                    "progress": 100,
                    "completed_at": now,
                    "error_message": None,
                    "recovery_due_at": None,
                }

        def decide(s: Sketch) -> Changes | None:
            waiting = (
                s.status is Status.VIDEO_PENDING and s.video_task_id == task_id and s.novita_video_url is None
            ) or (s.status is Status.IMAGE_COMPLETE and s.video_task_id is None)
            if not waiting:
                return None
            if changes.get("status") is Status.VIDEO_PENDING and s.status is Status.VIDEO_PENDING:
                return {k: v for k, v in changes.items() if k != "status"}
            return changes

        return self._applied(*self._store.mutate(known.id, decide, known=known))

    @staticmethod
    def _applied(sketch: Sketch | None, changed: bool) -> tuple[Outcome, Sketch | None]:
        if sketch is None:
            return Outcome.IGNORED, None
        return (Outcome.APPLIED if changed else Outcome.DUPLICATE), sketch

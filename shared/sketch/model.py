"""The sketch: the create request, the stored document, its public JSON, its states, and what it
needs next."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, PrivateAttr

from shared.sketch.request import DEFAULT_VIDEO_PROMPT, CreateSketchRequest

_SKETCH_ID = re.compile(r"[0-9a-f]{32}")


class Status(StrEnum):
    IMAGE_PENDING = "image_pending"
    IMAGE_COMPLETE = "image_complete"
    VIDEO_PENDING = "video_pending"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (Status.COMPLETE, Status.FAILED)


# Position of each status on the only path a sketch moves along.
_ORDER = {
    Status.IMAGE_PENDING: 0,
    Status.IMAGE_COMPLETE: 1,
    Status.VIDEO_PENDING: 2,
    Status.COMPLETE: 3,
    Status.FAILED: 3,
}


def can_move(current: Status, new: Status) -> bool:
    """Whether the state machine allows `current -> new`: forward only, finals never move.

    A step may be skipped (`image_complete -> complete` when Kling's result is adopted before the
    answer to the Kling request is recorded); FAILED is reachable from any status that is not final.
    """
    if current.is_final:
        return False
    return new is Status.FAILED or _ORDER[new] > _ORDER[current]


class StepKind(StrEnum):
    """The work a sketch can wait on; each runs as a Pub/Sub step (`shared/pipeline/queue.py`)."""

    CHECK = "check"  # ask Novita's task-result about the current task and apply what it says
    SEEDREAM = "seedream"  # make the still with Seedream 3.0's synchronous endpoint
    CHAIN = "chain"  # download the still, keep a copy, and start Kling on it
    COPY = "copy"  # stream the finished video into the bucket

    @property
    def is_slow(self) -> bool:
        """Whether the step holds the sketch's lease while it works (Seedream, the chain, the copy)."""
        return self is not StepKind.CHECK


# Fields of the public sketch, in the order the contract lists them.
PUBLIC_FIELDS = (
    "id",
    "status",
    "prompt",
    "negative_prompt",
    "video_prompt",
    "width",
    "height",
    "duration",
    "seed",
    "image_task_id",
    "video_task_id",
    "image_url",
    "image_url_expires_at",
    "video_url",
    "video_url_expires_at",
    "progress",
    "eta_seconds",
    "error_message",
    "created_at",
    "updated_at",
    "completed_at",
)

Stage = Literal["image", "video"]
# How the still is made: Novita's async text-to-image task (with a webhook), or Seedream 3.0's
# synchronous endpoint, which runs as a queued step.
ImageForm = Literal["task", "sync"]


class Sketch(BaseModel):
    """A sketch as stored in Firestore. Bookkeeping fields follow the public ones."""

    id: str
    status: Status
    prompt: str
    negative_prompt: str
    video_prompt: str
    width: int
    height: int
    duration: int
    seed: int
    image_task_id: str | None = None
    video_task_id: str | None = None
    # What the app shows: the durable copies once they are stored, Novita's links until then.
    image_url: str | None = None
    image_url_expires_at: datetime | None = None
    video_url: str | None = None
    video_url_expires_at: datetime | None = None
    progress: int = 0
    eta_seconds: int | None = None
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    user_id: str | None = None
    image_form: ImageForm = "task"
    # Novita's own links (they expire about an hour after the task ends), and the durable copies.
    novita_image_url: str | None = None
    novita_image_url_expires_at: datetime | None = None
    novita_video_url: str | None = None
    novita_video_url_expires_at: datetime | None = None
    image_object: str | None = None
    video_object: str | None = None
    # A paid request that is being sent or whose answer was lost: its stage, since when, whether its
    # task can still find the sketch (a webhook names the sketch; Seedream's answer and Kling's
    # reference form have none), and which lease holder sent it. Written before the request is sent.
    submission_unknown: Stage | None = None
    submission_unknown_since: datetime | None = None
    submission_webhook: bool = False
    submission_owner: str | None = None
    # Why each paid request was sent again (a lost answer no task could be adopted for): one line each.
    repaid: list[str] = []
    # Who holds the sketch's slow work (a create, or a step: Seedream, the chain, the copy), and until
    # when; a live holder renews it.
    step_lease_owner: str | None = None
    step_lease_until: datetime | None = None
    # When recovery may next look at this sketch; None once the sketch is final.
    recovery_due_at: datetime | None = None
    # No paid request is sent for this sketch before this (after Novita failed one).
    retry_not_before: datetime | None = None
    # The step that last failed with a fault that may pass, how many times in a row, and why.
    failed_step: StepKind | None = None
    step_failures: int = 0
    last_step_error: str | None = None
    # The last task a webhook delivery handed on a check for, and until when its copies publish nothing.
    hint_task_id: str | None = None
    hint_until: datetime | None = None
    # The document's update time when this copy was read or written, as Firestore gave it: lets
    # the next conditional write go out without reading the document again.
    _version: str | None = PrivateAttr(default=None)

    @classmethod
    def new(
        cls,
        sketch_id: str,
        request: CreateSketchRequest,
        now: datetime,
        user_id: str | None,
        recovery_due_at: datetime,
        image_form: ImageForm,
        lease: tuple[str, datetime] | None = None,
    ) -> Sketch:
        """A sketch about to ask for its still. A create that sends the text-to-image request itself
        holds the sketch's `lease` (owner, until) while it does."""
        return cls(
            id=sketch_id,
            status=Status.IMAGE_PENDING,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            video_prompt=request.video_prompt or DEFAULT_VIDEO_PROMPT,
            width=request.width,
            height=request.height,
            duration=request.duration,
            seed=request.seed,
            created_at=now,
            updated_at=now,
            user_id=user_id,
            image_form=image_form,
            step_lease_owner=None if lease is None else lease[0],
            step_lease_until=None if lease is None else lease[1],
            recovery_due_at=recovery_due_at,
        )

    def task_of(self, stage: Stage) -> str | None:
        return self.image_task_id if stage == "image" else self.video_task_id

    def lease_is_live(self, now: datetime) -> bool:
        return self.step_lease_until is not None and self.step_lease_until > now

    def next_step(self) -> StepKind | None:
        """The work this sketch waits on now, whoever is doing it."""
        if self.status is Status.IMAGE_PENDING:
            if self.image_task_id is not None:
                return StepKind.CHECK
            return StepKind.SEEDREAM if self.image_form == "sync" else None
        if self.status is Status.IMAGE_COMPLETE:
            return StepKind.CHAIN
        if self.status is Status.VIDEO_PENDING:
            return StepKind.COPY if self.novita_video_url is not None else StepKind.CHECK
        return None

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="python", include=set(PUBLIC_FIELDS))
        out: dict[str, Any] = {}
        for name in PUBLIC_FIELDS:
            value = data[name]
            out[name] = iso_utc(value) if isinstance(value, datetime) else value
        if self.user_id is not None:
            out["user_id"] = self.user_id
        return out


def new_sketch_id() -> str:
    return uuid.uuid4().hex


def is_sketch_id(value: str) -> bool:
    """Whether `value` could be a sketch id (anything else need not be looked up)."""
    return _SKETCH_ID.fullmatch(value) is not None


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)

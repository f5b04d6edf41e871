"""The sketch: the create request, the stored document, its public JSON, its states, and what it
needs next."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PrivateAttr, WithJsonSchema

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
    The one way out of FAILED is its owner's retry (`retry_refusal`), which
    `shared/pipeline/retry.py` writes in a commit of its own, never through this rule.
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


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Firestore timestamps are answered as ISO 8601 UTC strings, to the millisecond.
UtcTime = Annotated[
    datetime,
    PlainSerializer(iso_utc, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class PublicSketch(BaseModel):
    """A sketch as `create_sketch` answers it (the contract's fields, in its order): what an app may
    rely on. Bookkeeping stays in the document."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    id: str = Field(description="32 hexadecimal characters")
    status: Status = Field(
        description="image_pending -> image_complete -> video_pending -> complete, or failed at any "
        "point; only the owner's retry moves a failed sketch on again"
    )
    prompt: str
    negative_prompt: str
    video_prompt: str
    width: int
    height: int
    duration: int
    seed: int
    image_task_id: str | None = Field(description="Novita's text-to-image task (none for Seedream 3.0's)")
    video_task_id: str | None = Field(description="the current Kling task (a retry starts a new one)")
    image_url: str | None = Field(
        description="the still: its kept copy once stored, Novita's link until then"
    )
    image_url_expires_at: UtcTime | None
    video_url: str | None = Field(description="the video's kept copy; null until complete")
    video_url_expires_at: UtcTime | None
    progress: int = Field(ge=0, le=100, description="never goes down; 100 once complete")
    eta_seconds: int | None = Field(description="Novita's estimate for the current task")
    error_message: str | None = Field(description="why the sketch failed")
    created_at: UtcTime
    updated_at: UtcTime
    completed_at: UtcTime | None
    user_id: str | None = Field(default=None, description="the creator's Firebase uid (AUTH_MODE=firebase)")


class SketchPage(BaseModel):
    """One page of the caller's sketches, newest first (`GET create_sketch` without `id`)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    sketches: list[PublicSketch]
    next_page_token: str | None = Field(description="the next page's `page_token`; null on the last page")


Stage = Literal["image", "video"]
# How the still is made: Novita's async text-to-image task (with a webhook), or Seedream 3.0's
# synchronous endpoint, which runs as a queued step.
ImageForm = Literal["task", "sync"]


class Sketch(BaseModel):
    """A sketch as stored in Firestore. Bookkeeping fields follow the public ones."""

    model_config = ConfigDict(defer_build=True)

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
    # When its owner last started it again from its kept still (`shared/pipeline/retry.py`, which
    # also knows its own commit by it when the commit's answer was lost).
    retried_at: datetime | None = None
    # When recovery may next look at this sketch; None once the sketch is final.
    recovery_due_at: datetime | None = None
    # No paid request is sent for this sketch before this (after Novita failed one).
    retry_not_before: datetime | None = None
    # The step that last failed with a fault that may pass, how many times in a row, and why.
    failed_step: StepKind | None = None
    step_failures: int = 0
    last_step_error: str | None = None
    # The last task a webhook delivery handed on a check for, the stage its token named, and until
    # when its copies publish nothing. (A retry mutes its failed attempt's task here, with no stage.)
    hint_task_id: str | None = None
    hint_stage: Stage | None = None
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

    @property
    def still_source(self) -> str | None:
        """Where the still is fetched from, and the URL Kling's reference form is given: the copy
        kept in the bucket once there is one (its link does not expire; Novita's does, and a
        Seedream still's cannot be renewed), else Novita's link."""
        return self.image_url if self.image_object is not None else self.novita_image_url

    def link_expires_at(self, stage: Stage) -> datetime | None:
        """When the link a step fetches the stage's medium from expires: never for a kept still."""
        if stage == "video":
            return self.novita_video_url_expires_at
        return None if self.image_object is not None else self.novita_image_url_expires_at

    def task_of(self, stage: Stage) -> str | None:
        return self.image_task_id if stage == "image" else self.video_task_id

    @property
    def life_began(self) -> datetime:
        """Where `MAX_SKETCH_AGE_SECONDS` counts from: the sketch's creation, or its latest retry."""
        return self.retried_at or self.created_at

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

    def public(self) -> PublicSketch:
        """The sketch as the API answers it (`user_id` only when there is one: answered with
        `exclude_unset`)."""
        fields = [name for name in PublicSketch.model_fields if name != "user_id" or self.user_id is not None]
        return PublicSketch.model_validate({name: getattr(self, name) for name in fields})


RetryRefusal = Literal["in_progress", "complete", "still_not_kept"]


def retry_refusal(sketch: Sketch) -> tuple[RetryRefusal, str] | None:
    """Why the owner cannot start `sketch` again from its kept still (a word and a sentence), or
    None when they can: it failed after its still was copied into the bucket. A retry gives the
    sketch a new life (`Sketch.life_began`), so its age does not matter."""
    if sketch.status is Status.COMPLETE:
        return "complete", "the sketch is complete; only a failed sketch can be retried"
    if sketch.status is not Status.FAILED:
        return (
            "in_progress",
            f"the sketch is still in progress ({sketch.status}); only a failed one can be retried",
        )
    if sketch.image_object is None:
        return (
            "still_not_kept",
            "the sketch failed before its still was kept, so there is nothing to start from",
        )
    return None


def new_sketch_id() -> str:
    return uuid.uuid4().hex


def is_sketch_id(value: str) -> bool:
    """Whether `value` could be a sketch id (anything else need not be looked up)."""
    return _SKETCH_ID.fullmatch(value) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)

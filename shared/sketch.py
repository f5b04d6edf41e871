"""The sketch: the create request, the stored document, its public JSON and its states."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, field_validator

from shared.text import Utf8Str

_SKETCH_ID = re.compile(r"[0-9a-f]{32}")
DEFAULT_VIDEO_PROMPT = "gentle cinematic camera movement, the scene comes to life"
DEFAULT_NEGATIVE_PROMPT = ""


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

    A step may be skipped (`image_complete -> complete` when Kling's webhook arrives before the
    answer to the Kling request is recorded); FAILED is reachable from any status that is not final.
    """
    if current.is_final:
        return False
    return new is Status.FAILED or _ORDER[new] > _ORDER[current]


class CreateSketchRequest(BaseModel):
    """The body of `POST create_sketch`; any field not listed here is refused."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[Utf8Str, Field(strict=True, min_length=1, max_length=2000)]
    negative_prompt: Annotated[Utf8Str, Field(strict=True, max_length=2000)] = DEFAULT_NEGATIVE_PROMPT
    video_prompt: Annotated[Utf8Str, Field(strict=True, max_length=2500)] | None = None
    width: Annotated[StrictInt, Field(ge=300, le=2048)] = 720
    height: Annotated[StrictInt, Field(ge=300, le=2048)] = 1280
    duration: Literal[5, 10] = 5
    seed: Annotated[StrictInt, Field(ge=-1, le=2147483647)] = -1

    @field_validator("prompt", mode="before")
    @classmethod
    def _trim_prompt(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("duration", mode="before")
    @classmethod
    def _strict_duration(cls, value: Any) -> Any:
        # Literal[5, 10] would otherwise accept True (== 1 is not 5, but 5.0 == 5 would pass).
        if type(value) is not int:
            raise ValueError("must be the integer 5 or 10")
        return value


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
    "error_message",
    "created_at",
    "updated_at",
    "completed_at",
)


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
    image_url: str | None = None
    image_url_expires_at: datetime | None = None
    video_url: str | None = None
    video_url_expires_at: datetime | None = None
    error_message: str | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    user_id: str | None = None
    # Which paid submission ("image" or "video") was sent without a known outcome, and when.
    submission_unknown: Literal["image", "video"] | None = None
    submission_unknown_since: datetime | None = None
    # The delivery that holds the image-to-video chain, and until when.
    chain_lease_owner: str | None = None
    chain_lease_until: datetime | None = None
    # When recovery may next ask Novita about this sketch; None once the sketch is final.
    recovery_due_at: datetime | None = None
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
    ) -> Sketch:
        """A sketch about to ask for its still: until Novita answers, the outcome of that request is
        unknown, and recovery resolves it if the answer is never recorded."""
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
            submission_unknown="image",
            submission_unknown_since=now,
            recovery_due_at=recovery_due_at,
        )

    @property
    def current_task_id(self) -> str | None:
        if self.status is Status.IMAGE_PENDING:
            return self.image_task_id
        if self.status is Status.VIDEO_PENDING:
            return self.video_task_id
        return None

    def lease_is_live(self, now: datetime) -> bool:
        return self.chain_lease_until is not None and self.chain_lease_until > now

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

"""The sketch: the stored document, its public JSON, its states, and what it needs next.

The standard library only: every request reads a sketch, and a function's first request should not
wait for pydantic's import. The document is our own (only the functions write it), so reading it
back checks its shape and converts its words; `shared/sketch/schemas.py` describes the public JSON
that `Sketch.public` builds, and the tests hold the two equal.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from shared.sketch.request import CreateSketchRequest

DEFAULT_VIDEO_PROMPT = "gentle cinematic camera movement, the scene comes to life"
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


Stage = Literal["image", "video"]
# How the still is made: Novita's async text-to-image task (with a webhook), or Seedream 3.0's
# synchronous endpoint, which runs as a queued step.
ImageForm = Literal["task", "sync"]

# The public JSON's fields, in the contract's order (`shared/sketch/schemas.py` describes them).
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
    "user_id",
)


@dataclass(kw_only=True)
class Sketch:
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
    repaid: list[str] = field(default_factory=list)
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
    # the next conditional write go out without reading the document again. Not stored.
    version: str | None = field(default=None, compare=False, repr=False)

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

    def replace(self, **changes: Any) -> Sketch:
        """A copy with `changes` (the version comes along: the caller says when it is stale)."""
        return dataclasses.replace(self, **changes)

    def to_document(self) -> dict[str, Any]:
        """The Firestore document: every field but the version, as Python values."""
        return {name: getattr(self, name) for name in _STORED}

    @classmethod
    def from_document(cls, data: dict[str, Any], version: str | None = None) -> Sketch:
        """The sketch a stored document holds (fields it does not know are left out). ValueError
        names the first field that is missing or not what the functions write."""
        values: dict[str, Any] = {}
        for name, check in _READERS.items():
            if name not in data:
                if name in _REQUIRED:
                    raise ValueError(f"sketch document: {name} is missing")
                continue
            value = data[name]
            try:
                values[name] = check(value)
            except (TypeError, ValueError):
                raise ValueError(f"sketch document: {name} is {value!r:.80}") from None
        return cls(**values, version=version)

    def public(self) -> dict[str, Any]:
        """The sketch as the API answers it, as JSON (`user_id` only when there is one)."""
        answer: dict[str, Any] = {}
        for name in PUBLIC_FIELDS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = iso_utc(value)
            elif isinstance(value, Status):
                value = value.value
            answer[name] = value
        if self.user_id is None:
            del answer["user_id"]
        return answer


Reader = Callable[[Any], Any]


def _of(kind: type) -> Reader:
    def read(value: Any) -> Any:
        # bool is an int to Python, never to the document.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError
        return value

    return read


def _optional(read: Reader) -> Reader:
    return lambda value: None if value is None else read(value)


def _word(literal: Any) -> Reader:
    words = get_args(literal)

    def read(value: Any) -> Any:
        if value not in words:
            raise ValueError
        return value

    return read


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError
    return list(value)


# How each stored field is read back, by its annotation.
_BY_ANNOTATION: dict[str, Reader] = {
    "str": _of(str),
    "int": _of(int),
    "bool": _of(bool),
    "datetime": _of(datetime),
    "Status": Status,
    "StepKind": StepKind,
    "Stage": _word(Stage),
    "ImageForm": _word(ImageForm),
    "list[str]": _strings,
}


def _readers() -> dict[str, Reader]:
    """Each stored field's reader, from its annotation (None allowed where the annotation allows it)."""
    readers = {}
    for stored in dataclasses.fields(Sketch):
        annotation = str(stored.type)
        base = annotation.removesuffix(" | None")
        read = _BY_ANNOTATION[base]
        readers[stored.name] = _optional(read) if base != annotation else read
    return readers


_READERS: dict[str, Reader] = {name: read for name, read in _readers().items() if name != "version"}
_STORED = tuple(_READERS)
_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(Sketch)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)


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

"""The models `shared/openapi.py` describes `create_sketch`'s answers with: a sketch, a page of them,
and the error answer.

The function builds the same JSON without them (`Sketch.public`, `shared.edge.answers.error_response`),
so that a request imports no pydantic; `tests/unit/test_answers_match_schemas.py` holds every answer
the function can build to these models, field for field and in order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from shared.sketch.errors import ErrorCode
from shared.sketch.model import Status, iso_utc

# Firestore timestamps are answered as ISO 8601 UTC strings, to the millisecond.
UtcTime = Annotated[
    datetime,
    PlainSerializer(iso_utc, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class PublicSketch(BaseModel):
    """A sketch as `create_sketch` answers it (the contract's fields, in its order): what an app may
    rely on. Bookkeeping stays in the document."""

    model_config = ConfigDict(extra="forbid")

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

    model_config = ConfigDict(extra="forbid")

    sketches: list[PublicSketch]
    next_page_token: str | None = Field(description="the next page's `page_token`; null on the last page")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str = Field(description="what went wrong, in a sentence; it names the field or rule")
    field: str | None = Field(default=None, description="the field, parameter or header refused (400)")
    reason: str | None = Field(
        default=None,
        description="Novita's reason for a refusal (502, 503), or why a sketch cannot be retried (409 "
        "`not_retryable`: in_progress, complete, still_not_kept)",
    )
    sketch: PublicSketch | None = Field(
        default=None, description="the sketch the request made or moved, as it now is (502, 503)"
    )


class ErrorAnswer(BaseModel):
    """Every error `create_sketch` answers, the body guard's own included."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail

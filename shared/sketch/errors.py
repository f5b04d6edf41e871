"""The error answer of `create_sketch`: every code it may send, and the body around it. The function
builds each error from these models, so a code nobody described cannot go out; `shared/openapi.py`
describes them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.sketch.model import PublicSketch

ErrorCode = Literal[
    "invalid_json",
    "invalid_field",
    "invalid_header",
    "malformed_body",
    "incomplete_body",
    "unauthenticated",
    "app_check_failed",
    "not_found",
    "method_not_allowed",
    "body_timeout",
    "idempotency_key_in_use",
    "not_retryable",
    "body_too_large",
    "unsupported_media_type",
    "idempotency_key_reused",
    "daily_limit",
    "project_daily_limit",
    "too_many_sketches",
    "internal",
    "novita_rejected",
    "novita_balance",
    "novita_unavailable",
    "store_unavailable",
    "storage_unavailable",
    "auth_unavailable",
]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

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

    model_config = ConfigDict(extra="forbid", defer_build=True)

    error: ErrorDetail

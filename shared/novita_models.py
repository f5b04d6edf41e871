"""Novita's task result, as the webhook delivers it and as task-result answers it.

Novita's reference puts `images` / `videos` at the top of the payload; the integration guide puts
them under `payload.extra`. Both are read. TTLs arrive as numbers or numeric strings; statuses
beyond the documented ones are kept as they are and treated as "not finished".
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shared.text import Utf8Str

SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
ASYNC_TASK_RESULT = "ASYNC_TASK_RESULT"


# Longer than any presigned link lives; a larger TTL is not a TTL.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600


def _ttl(value: Any) -> int | None:
    """Seconds from a number or a numeric string; None for anything else, so an odd TTL never
    costs the result it came with."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= MAX_TTL_SECONDS:
        return None
    return int(value)


Ttl = Annotated[int | None, BeforeValidator(_ttl)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Task(_Lenient):
    task_id: Annotated[Utf8Str, Field(min_length=1, max_length=256)]
    status: Annotated[Utf8Str, Field(min_length=1)]
    reason: Utf8Str | None = None
    task_type: Utf8Str | None = None


class Image(_Lenient):
    image_url: Annotated[Utf8Str, Field(min_length=1)]
    image_type: Utf8Str | None = None
    image_url_ttl: Ttl = None


class Video(_Lenient):
    video_url: Annotated[Utf8Str, Field(min_length=1)]
    video_type: Utf8Str | None = None
    video_url_ttl: Ttl = None


class TaskResult(_Lenient):
    """A task and its outputs, whichever layout carried them."""

    task: Task
    images: list[Image] = []
    videos: list[Video] = []

    @model_validator(mode="before")
    @classmethod
    def _merge_layouts(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
        for key in ("images", "videos"):
            if not merged.get(key):
                # An empty or null list at the top says nothing; the guide's layout may have it.
                merged[key] = extra.get(key) if isinstance(extra.get(key), list) else []
        return merged

    @property
    def succeeded(self) -> bool:
        return self.task.status == SUCCEED

    @property
    def failed(self) -> bool:
        return self.task.status == FAILED

    @property
    def is_final(self) -> bool:
        return self.succeeded or self.failed


class WebhookEvent(_Lenient):
    event_type: Utf8Str
    payload: Any = None

    def task_result(self) -> TaskResult:
        """The result carried by an `ASYNC_TASK_RESULT` event; raises ValidationError if malformed."""
        return TaskResult.model_validate(self.payload)


def expires_at(received: datetime, ttl_seconds: int | None) -> datetime | None:
    return received + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None

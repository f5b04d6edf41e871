"""Novita's task result, as the webhook delivers it and as task-result answers it.

Novita's reference puts `images` / `videos` at the top of the payload; the integration guide puts
them under `payload.extra`. Both are read. TTLs arrive as numbers or numeric strings; statuses
beyond the documented ones are kept as they are and treated as "not finished".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
ASYNC_TASK_RESULT = "ASYNC_TASK_RESULT"


def _ttl(value: Any) -> Any:
    if isinstance(value, str):
        stripped = value.strip()
        try:
            return int(float(stripped))
        except ValueError:
            return None
    if isinstance(value, bool):
        return None
    return value


Ttl = Annotated[int | None, BeforeValidator(_ttl)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Task(_Lenient):
    task_id: Annotated[str, Field(min_length=1)]
    status: Annotated[str, Field(min_length=1)]
    reason: str | None = None
    task_type: str | None = None


class Image(_Lenient):
    image_url: Annotated[str, Field(min_length=1)]
    image_type: str | None = None
    image_url_ttl: Ttl = None


class Video(_Lenient):
    video_url: Annotated[str, Field(min_length=1)]
    video_type: str | None = None
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
        extra = data.get("extra")
        if not isinstance(extra, dict):
            return data
        merged = dict(data)
        for key in ("images", "videos"):
            if not merged.get(key) and isinstance(extra.get(key), list):
                merged[key] = extra[key]
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
    event_type: str
    payload: Any = None

    def task_result(self) -> TaskResult:
        """The result carried by an `ASYNC_TASK_RESULT` event; raises ValidationError if malformed."""
        return TaskResult.model_validate(self.payload)


def expires_at(received: datetime, ttl_seconds: int | None) -> datetime | None:
    return received + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None

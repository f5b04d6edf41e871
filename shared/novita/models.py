"""What Novita answers: task results (from task-result, or in a webhook's test mode), and Seedream
3.0's synchronous answer. What a webhook delivery says of its task is read in `webhook`.

Novita's reference puts `images` / `videos` at the top of the payload; the integration guide puts
them under `payload.extra`. Both are read. TTLs, `eta` and `progress_percent` arrive as numbers or
numeric strings; statuses beyond the documented ones are kept as they are and treated as "not
finished". Every value that may be stored or logged has a bound: a result that breaks one is
refused as a whole (it is not cut short, as a cut URL plays nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from shared.core.text import encodable
from shared.novita.webhook import MAX_TASK_ID, TASK_ID_PATTERN

SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"

# Longer than any presigned link lives; a larger TTL is not a TTL.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
MAX_URL = 8192  # presigned S3 links run to about 1,500 characters
MAX_REASON = 1000
MAX_TASK_TYPE = 64


def _number(value: Any, maximum: float) -> float | None:
    """A number from a number or a numeric string; None for anything else, so an odd value never
    costs the result it came with."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()[:32])
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value <= maximum:
        return None
    return float(value)


def _ttl(value: Any) -> int | None:
    number = _number(value, MAX_TTL_SECONDS)
    return None if number is None else int(number)


def _cut(limit: int) -> Callable[[Any], str | None]:
    """Text only ever shown to people: a long one is cut, not refused; one that is no text is
    dropped. A lone surrogate is refused, as for all text here: nothing could store it."""

    def cut(value: Any) -> str | None:
        if not isinstance(value, str):
            return None
        return encodable(value[:limit])

    return cut


def _expires_at(received: datetime, ttl_seconds: int | None) -> datetime | None:
    return received + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None


Ttl = Annotated[int | None, BeforeValidator(_ttl)]
Number = Annotated[float | None, BeforeValidator(lambda v: _number(v, 1e9))]
_UTF8 = AfterValidator(encodable)
Url = Annotated[str, Field(min_length=1, max_length=MAX_URL), _UTF8]
TaskId = Annotated[str, Field(min_length=1, max_length=MAX_TASK_ID, pattern=TASK_ID_PATTERN)]
ShortText = Annotated[str, Field(min_length=1, max_length=64), _UTF8]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", defer_build=True)


class Task(_Lenient):
    task_id: TaskId
    status: ShortText
    reason: Annotated[str | None, BeforeValidator(_cut(MAX_REASON))] = None
    task_type: Annotated[str | None, BeforeValidator(_cut(MAX_TASK_TYPE))] = None
    eta: Number = None  # seconds
    progress_percent: Number = None


class Image(_Lenient):
    image_url: Url
    image_type: ShortText | None = None
    image_url_ttl: Ttl = None

    def expires_at(self, received: datetime) -> datetime | None:
        """When the link stops working, counted from when the answer carrying it was received."""
        return _expires_at(received, self.image_url_ttl)


class Video(_Lenient):
    video_url: Url
    video_type: ShortText | None = None
    video_url_ttl: Ttl = None

    def expires_at(self, received: datetime) -> datetime | None:
        """When the link stops working, counted from when the answer carrying it was received."""
        return _expires_at(received, self.video_url_ttl)


class TaskResult(_Lenient):
    """A task and its outputs, whichever layout carried them."""

    task: Task
    images: list[Image] = Field(default=[], max_length=16)
    videos: list[Video] = Field(default=[], max_length=16)

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


class SeedreamImages(_Lenient):
    """Seedream 3.0's synchronous answer (`response_format: url`)."""

    image_urls: list[Url] = Field(default=[], max_length=16)

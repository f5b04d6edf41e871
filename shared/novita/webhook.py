"""What a webhook delivery says: its event's type and, for a task result, which task and its status;
only a hint of which task to look at (the pipeline asks task-result about it).

The standard library only: a delivery is the public door's first request, and should not wait for
pydantic's import. The rules are those of the task models (`shared/novita/models.py`, which takes
its task id rule from here); unknown fields are left alone, as there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shared.core.text import encodable

ASYNC_TASK_RESULT = "ASYNC_TASK_RESULT"
MAX_TASK_ID = 128
# Novita's task ids are UUIDs; anything printable without spaces is kept, within a bound.
TASK_ID_PATTERN = r"^[\x21-\x7e]+$"
MAX_EVENT_TYPE = 256
MAX_STATUS = 64
_TASK_ID = re.compile(TASK_ID_PATTERN)


def is_task_id(value: str) -> bool:
    # fullmatch: `$` would also match before a final line feed.
    return 1 <= len(value) <= MAX_TASK_ID and _TASK_ID.fullmatch(value) is not None


def _text(value: object, what: str, longest: int, shortest: int = 1) -> str:
    """`value` if it is text of `shortest` to `longest` characters that UTF-8 can carry; else
    ValueError."""
    if not isinstance(value, str) or not shortest <= len(value) <= longest:
        raise ValueError(f"{what} must be text of {shortest} to {longest} characters")
    return encodable(value)


@dataclass(frozen=True)
class WebhookEvent:
    event_type: str
    payload: Any

    @classmethod
    def read(cls, body: object) -> WebhookEvent:
        """The event in a delivery's JSON body; ValueError when it is none."""
        if not isinstance(body, dict):
            raise ValueError("a webhook event is a JSON object")
        # An empty type is a type, one that is ignored.
        event_type = _text(body.get("event_type"), "event_type", MAX_EVENT_TYPE, shortest=0)
        return cls(event_type, body.get("payload"))


@dataclass(frozen=True)
class WebhookTask:
    """The task a task-result event names, and the status it reports."""

    task_id: str
    status: str

    @classmethod
    def read(cls, value: object) -> WebhookTask:
        """The task in a task-result event's `payload.task`; ValueError when it is none."""
        if not isinstance(value, dict):
            raise ValueError("payload.task must be an object")
        task_id = value.get("task_id")
        if not isinstance(task_id, str) or not is_task_id(task_id):
            raise ValueError(f"task_id must be 1 to {MAX_TASK_ID} printable ASCII characters")
        return cls(task_id, _text(value.get("status"), "status", MAX_STATUS))

"""Reading Novita's task results in both layouts, with TTLs as numbers or strings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.novita_models import TaskResult, WebhookEvent

IMAGE = {"image_url": "https://cdn.test/a.jpg", "image_type": "jpeg"}


@pytest.mark.parametrize("ttl", [3600, "3600", " 3600 ", 3600.0])
def test_guide_layout_with_any_ttl_form(ttl: object) -> None:
    result = WebhookEvent.model_validate(
        {
            "event_type": "ASYNC_TASK_RESULT",
            "payload": {
                "task": {"task_id": "t", "status": "TASK_STATUS_SUCCEED"},
                "extra": {"images": [{**IMAGE, "image_url_ttl": ttl}]},
            },
        }
    ).task_result()

    assert result.succeeded and result.images[0].image_url_ttl == 3600


def test_reference_layout_and_extra_fields() -> None:
    result = TaskResult.model_validate(
        {
            "task": {
                "task_id": "t",
                "status": "TASK_STATUS_SUCCEED",
                "task_type": "KLING",
                "eta": 0,
                "progress_percent": 100,
            },
            "videos": [{"video_url": "https://cdn.test/v.mp4", "video_url_ttl": "60", "duration": 5.0}],
            "extra": {"seed": 3},
        }
    )

    assert result.videos[0].video_url_ttl == 60 and not result.images


def test_unknown_status_is_kept_and_not_final() -> None:
    result = TaskResult.model_validate({"task": {"task_id": "t", "status": "TASK_STATUS_QUEUED"}})
    assert not result.is_final


@pytest.mark.parametrize(
    "payload",
    [
        None,
        5,
        {},
        {"task": {}},
        {"task": {"task_id": "", "status": "x"}},
        {"task": {"task_id": "t"}},
        {"task": {"task_id": "t", "status": "s"}, "images": [{"image_type": "jpeg"}]},
    ],
)
def test_malformed_payloads_are_refused(payload: object) -> None:
    with pytest.raises(ValidationError):
        WebhookEvent.model_validate({"event_type": "ASYNC_TASK_RESULT", "payload": payload}).task_result()


@pytest.mark.parametrize("ttl", ["inf", "-5", 10**15, float("inf"), "nan", {"s": 1}, [3600], True])
def test_unusable_ttls_are_dropped_not_fatal(ttl: object) -> None:
    result = TaskResult.model_validate(
        {
            "task": {"task_id": "t", "status": "TASK_STATUS_SUCCEED"},
            "images": [{**IMAGE, "image_url_ttl": ttl}],
        }
    )
    assert result.images[0].image_url_ttl is None


def test_null_lists_fall_back_to_the_other_layout() -> None:
    result = TaskResult.model_validate(
        {
            "task": {"task_id": "t", "status": "TASK_STATUS_SUCCEED"},
            "images": None,
            "extra": {"images": [IMAGE]},
        }
    )
    assert result.images[0].image_url == IMAGE["image_url"]


def test_text_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(
            {"task": {"task_id": "t", "status": "TASK_STATUS_FAILED", "reason": "x\ud800"}}
        )

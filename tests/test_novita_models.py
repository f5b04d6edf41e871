"""Reading what Novita sends back: task results in both layouts, with TTLs, eta and progress as
numbers or strings, within bounds; a webhook delivery's hint; Seedream 3.0's answer."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from shared.novita.models import MAX_REASON, SeedreamImages, TaskResult
from shared.novita.webhook import WebhookEvent, WebhookTask

IMAGE = {"image_url": "https://cdn.test/a.jpg", "image_type": "jpeg"}
SUCCEEDED = {"task_id": "t", "status": "TASK_STATUS_SUCCEED"}


def result_with(**task: Any) -> TaskResult:
    return TaskResult.model_validate({"task": {**SUCCEEDED, **task}})


@pytest.mark.parametrize("ttl", [3600, "3600", " 3600 ", 3600.0])
def test_guide_layout_with_any_ttl_form(ttl: object) -> None:
    # The guide's webhook payload: outputs under `extra`.
    result = TaskResult.model_validate(
        {"task": SUCCEEDED, "extra": {"images": [{**IMAGE, "image_url_ttl": ttl}]}}
    )

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
    assert (result.task.task_type, result.task.eta, result.task.progress_percent) == ("KLING", 0, 100)


def test_top_level_outputs_win_over_the_guides_layout() -> None:
    result = TaskResult.model_validate(
        {
            "task": SUCCEEDED,
            "images": [IMAGE],
            "extra": {"images": [{"image_url": "https://cdn.test/other.jpg"}]},
        }
    )
    assert [i.image_url for i in result.images] == [IMAGE["image_url"]]


def test_unknown_status_is_kept_and_not_final() -> None:
    result = TaskResult.model_validate({"task": {"task_id": "t", "status": "TASK_STATUS_QUEUED"}})
    assert result.task.status == "TASK_STATUS_QUEUED"
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
        {"task": {"task_id": "t", "status": ""}},
        {"task": {"task_id": "t", "status": "s"}, "images": [{"image_type": "jpeg"}]},
        {"task": {"task_id": "t", "status": "s"}, "videos": [{"video_url": ""}]},
    ],
)
def test_malformed_payloads_are_refused(payload: object) -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(payload)


@pytest.mark.parametrize("ttl", ["inf", "-5", 10**15, float("inf"), "nan", {"s": 1}, [3600], True])
def test_unusable_ttls_are_dropped_not_fatal(ttl: object) -> None:
    result = TaskResult.model_validate({"task": SUCCEEDED, "images": [{**IMAGE, "image_url_ttl": ttl}]})
    assert result.images[0].image_url_ttl is None


def test_null_lists_fall_back_to_the_other_layout() -> None:
    result = TaskResult.model_validate({"task": SUCCEEDED, "images": None, "extra": {"images": [IMAGE]}})
    assert result.images[0].image_url == IMAGE["image_url"]


def test_text_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(
            {"task": {"task_id": "t", "status": "TASK_STATUS_FAILED", "reason": "x\ud800"}}
        )


# ------------------------------------------------------------------------------------ bounds


def test_a_megabyte_url_is_refused() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate(
            {"task": SUCCEEDED, "images": [{"image_url": "https://cdn.test/" + "a" * 1_000_000}]}
        )


def test_a_presigned_url_of_ordinary_length_is_kept() -> None:
    url = "https://cdn.test/v.mp4?X-Amz-Signature=" + "a" * 2000
    result = TaskResult.model_validate({"task": SUCCEEDED, "videos": [{"video_url": url}]})
    assert result.videos[0].video_url == url


def test_a_100_kb_status_is_refused() -> None:
    with pytest.raises(ValidationError):
        result_with(status="S" * 100_000)


@pytest.mark.parametrize("task_id", ["x" * 129, "a b", "t\n", "t\u00e9", "\x00"])
def test_task_ids_beyond_the_bound_are_refused(task_id: str) -> None:
    with pytest.raises(ValidationError):
        result_with(task_id=task_id)


def test_a_task_id_of_128_printable_characters_is_kept() -> None:
    task_id = "f6aec953-2e81-4e8b-938e-2ceab54d6df9:" + "~" * 91
    assert len(task_id) == 128
    assert result_with(task_id=task_id).task.task_id == task_id


def test_a_long_reason_and_task_type_are_cut_not_refused() -> None:
    task = result_with(status="TASK_STATUS_FAILED", reason="r" * 50_000, task_type="T" * 500).task
    assert task.reason == "r" * MAX_REASON
    assert task.task_type == "T" * 64


@pytest.mark.parametrize("odd", ["soon", "", "-1", -3, "nan", float("inf"), 1e12, True, {"s": 1}, [5]])
def test_odd_eta_and_progress_become_none(odd: object) -> None:
    task = result_with(status="TASK_STATUS_PROCESSING", eta=odd, progress_percent=odd).task
    assert (task.eta, task.progress_percent) == (None, None)


def test_eta_and_progress_are_read_from_numbers_or_numeric_strings() -> None:
    task = result_with(status="TASK_STATUS_PROCESSING", eta=" 42 ", progress_percent="37.5").task
    assert (task.eta, task.progress_percent) == (42, 37.5)


def test_more_than_sixteen_outputs_are_refused() -> None:
    with pytest.raises(ValidationError):
        TaskResult.model_validate({"task": SUCCEEDED, "images": [IMAGE] * 17})
    assert len(TaskResult.model_validate({"task": SUCCEEDED, "images": [IMAGE] * 16}).images) == 16


# -------------------------------------------------------------------------- webhook, Seedream


def test_a_webhook_delivery_yields_only_a_hint_of_its_task() -> None:
    event = WebhookEvent.read(
        {
            "event_type": "ASYNC_TASK_RESULT",
            "payload": {"task": {**SUCCEEDED, "reason": ""}, "images": [IMAGE]},
        }
    )
    hint = WebhookTask.read(event.payload["task"])
    assert (hint.task_id, hint.status) == ("t", "TASK_STATUS_SUCCEED")
    assert not hasattr(event, "task_result")  # a delivery's result never reaches the pipeline


@pytest.mark.parametrize(
    "task",
    [
        {"task_id": "a b", "status": "s"},
        {"task_id": "t"},
        {"task_id": "t", "status": "S" * 65},
        {"task_id": "t", "status": ""},
        {"task_id": "t" * 129, "status": "s"},
        {"task_id": "t\n", "status": "s"},
        {"task_id": 7, "status": "s"},
        {"task_id": "t", "status": "\ud800"},
        ["t", "s"],
    ],
)
def test_a_webhook_hint_beyond_the_bounds_is_refused(task: object) -> None:
    with pytest.raises(ValueError):
        WebhookTask.read(task)


@pytest.mark.parametrize("body", [{"event_type": "E" * 257, "payload": {}}, {"payload": {}}, [], "x"])
def test_a_webhook_event_type_is_bounded_and_required(body: object) -> None:
    with pytest.raises(ValueError):
        WebhookEvent.read(body)


def test_a_webhook_event_of_another_type_is_read_for_what_it_is() -> None:
    assert WebhookEvent.read({"event_type": "", "extra": 1}) == WebhookEvent("", None)


def test_seedream_answer_is_read_from_image_urls() -> None:
    answer = SeedreamImages.model_validate(
        {"image_urls": ["https://cdn.test/a.jpeg"], "binary_data_base64": [], "created": 1}
    )
    assert answer.image_urls == ["https://cdn.test/a.jpeg"]
    assert SeedreamImages.model_validate({"binary_data_base64": ["aGk="]}).image_urls == []


@pytest.mark.parametrize(
    "urls",
    [["https://cdn.test/" + "a" * 9000], [""], ["https://cdn.test/a.jpeg"] * 17, "https://cdn.test/a.jpeg"],
)
def test_seedream_urls_beyond_the_bounds_are_refused(urls: object) -> None:
    with pytest.raises(ValidationError):
        SeedreamImages.model_validate({"image_urls": urls})

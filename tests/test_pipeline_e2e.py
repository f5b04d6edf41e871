"""The whole machine over real HTTP: create_sketch -> simulator -> novita_webhook -> Kling -> complete."""

from __future__ import annotations

import uuid
from typing import Any

import av
import httpx
import pytest
from conftest import Stack


def create(stack: Stack, **fields: Any) -> dict[str, Any]:
    return stack.create_sketch(**fields)


def deliver(
    stack: Stack, sketch_id: str, body: Any, *, token: str | None = "valid", stage: str = "image"
) -> httpx.Response:
    """POST to the sketch's webhook URL, with its own token or with `token` in its place."""
    url = stack.webhook_url(sketch_id, stage)  # type: ignore[arg-type]
    if token != "valid":
        url = url.split("&token=")[0] + (f"&token={token}" if token is not None else "")
    return stack.http.post(url, json=body)


def result_event(task_id: str, status: str = "TASK_STATUS_SUCCEED", **payload: Any) -> dict[str, Any]:
    return {
        "event_type": "ASYNC_TASK_RESULT",
        "payload": {"task": {"task_id": task_id, "status": status}, **payload},
    }


def assert_real_mp4(url: str) -> None:
    data = httpx.get(url, timeout=10).content
    assert data[4:8] == b"ftyp"
    import io

    with av.open(io.BytesIO(data)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0


@pytest.mark.parametrize(
    ("layout", "ttl_as_string"), [("extra", False), ("top", True)], ids=["guide-layout", "reference-layout"]
)
def test_prompt_becomes_a_video(stack: Stack, layout: str, ttl_as_string: bool) -> None:
    stack.simulator.configure(layout=layout, ttl_as_string=ttl_as_string)

    sketch = create(stack)
    done = stack.wait_for_status(sketch["id"], "complete")

    assert done.video_url and done.image_url and done.video_task_id
    assert done.completed_at is not None and done.error_message is None
    assert done.video_url_expires_at is not None and done.image_url_expires_at is not None
    assert stack.tasks_created("kling") == 1
    assert_real_mp4(done.video_url)
    api = stack.get_sketch(sketch["id"]).json()
    assert api["status"] == "complete" and api["completed_at"].endswith("Z")


def test_five_concurrent_deliveries_of_each_result_ask_kling_once(stack: Stack) -> None:
    stack.simulator.configure(deliveries=5, concurrent_deliveries=True)

    sketch = create(stack)
    stack.wait_for_status(sketch["id"], "complete")
    stack.simulator.wait_idle(15)

    assert stack.kling_requests() == 1
    assert stack.tasks_created("kling") == 1
    statuses = [d["status_code"] for d in stack.simulator.stats()["webhook_deliveries"]]
    assert len(statuses) >= 10 and all(code == 200 for code in statuses)


def test_five_sequential_duplicates_change_nothing_after_the_first(stack: Stack) -> None:
    stack.simulator.configure(deliveries=5)

    sketch = create(stack)
    done = stack.wait_for_status(sketch["id"], "complete")
    stack.simulator.wait_idle(15)

    assert stack.tasks_created("kling") == 1
    assert stack.stored(sketch["id"]) == done


@pytest.mark.parametrize(
    "token", [None, "", "forged-token", "A" * 43], ids=["none", "empty", "forged", "shaped"]
)
def test_webhook_without_a_valid_token_is_refused_and_changes_nothing(
    stack: Stack, token: str | None
) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    before = stack.stored(sketch["id"])

    response = deliver(
        stack, sketch["id"], result_event(sketch["image_task_id"], "TASK_STATUS_FAILED"), token=token
    )

    assert response.status_code == 401
    assert stack.stored(sketch["id"]) == before


def test_token_of_another_sketch_is_refused(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    mine, other = create(stack), create(stack)
    other_url = stack.webhook_url(other["id"])
    token = other_url.split("token=")[1]

    response = deliver(
        stack, mine["id"], result_event(mine["image_task_id"], "TASK_STATUS_FAILED"), token=token
    )

    assert response.status_code == 401
    assert stack.stored(mine["id"]).status.value == "image_pending"  # type: ignore[union-attr]


def test_result_for_a_foreign_or_stale_task_is_ignored(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    before = stack.stored(sketch["id"])

    foreign = deliver(
        stack, sketch["id"], result_event(str(uuid.uuid4()), "TASK_STATUS_FAILED", reason="nope")
    )
    foreign_video = deliver(
        stack,
        sketch["id"],
        result_event(str(uuid.uuid4()), videos=[{"video_url": "http://127.0.0.1:9/x.mp4"}]),
        stage="video",
    )

    assert foreign.status_code == 200 and foreign.json()["outcome"] == "ignored"
    assert foreign_video.status_code == 200 and foreign_video.json()["outcome"] == "ignored"
    assert stack.stored(sketch["id"]) == before


def test_result_after_completion_is_ignored(stack: Stack) -> None:
    sketch = create(stack)
    done = stack.wait_for_status(sketch["id"], "complete")

    late = deliver(
        stack, sketch["id"], result_event(sketch["image_task_id"], "TASK_STATUS_FAILED", reason="late")
    )

    assert late.status_code == 200
    assert stack.stored(sketch["id"]) == done


def test_text_to_image_failure_fails_the_sketch_with_the_reason(stack: Stack) -> None:
    stack.simulator.configure(fail_tasks={"txt2img": 1})

    sketch = create(stack)
    failed = stack.wait_for_status(sketch["id"], "failed")

    assert failed.error_message and "simulated" in failed.error_message
    assert stack.tasks_created("kling") == 0


def test_failure_without_a_reason_gets_a_clear_default(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)

    response = deliver(stack, sketch["id"], result_event(sketch["image_task_id"], "TASK_STATUS_FAILED"))

    assert response.status_code == 200
    assert (
        stack.stored(sketch["id"]).error_message
        == "Novita could not make the image (text-to-image task failed)"
    )  # type: ignore[union-attr]


def test_video_failure_fails_the_sketch_with_the_reason(stack: Stack) -> None:
    stack.simulator.configure(fail_tasks={"kling": 1})

    sketch = create(stack)
    failed = stack.wait_for_status(sketch["id"], "failed")

    assert failed.video_task_id and failed.image_url
    assert failed.error_message and "simulated" in failed.error_message


def test_kling_refusal_fails_the_sketch(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"kling": [403]})

    sketch = create(stack)
    failed = stack.wait_for_status(sketch["id"], "failed")

    assert failed.error_message and "NOT_ENOUGH_BALANCE" in failed.error_message
    assert stack.tasks_created("kling") == 0


def test_kling_5xx_answers_503_keeps_the_sketch_and_the_next_delivery_completes_it(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"kling": [500]})

    sketch = create(stack)
    done = stack.wait_for_status(sketch["id"], "complete")
    stack.simulator.wait_idle(15)

    image_deliveries = [
        d for d in stack.simulator.stats()["webhook_deliveries"] if d["task_id"] == sketch["image_task_id"]
    ]
    assert [d["status_code"] for d in image_deliveries] == [503, 200]
    assert stack.kling_requests() == 2
    assert stack.tasks_created("kling") == 1
    assert done.error_message is None


def test_kling_5xx_leaves_the_sketch_waiting_not_failed(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"kling": [500]}, drop_webhooks=True)
    sketch = create(stack)
    event = stack.finished_event(sketch["image_task_id"])

    first = deliver(stack, sketch["id"], event)
    waiting = stack.stored(sketch["id"])
    second = deliver(stack, sketch["id"], event)

    assert first.status_code == 503
    assert waiting is not None and waiting.status.value != "failed" and waiting.video_task_id is None
    assert waiting.chain_lease_owner is None  # given back, so the next delivery takes it up at once
    assert second.status_code == 200
    assert stack.stored(sketch["id"]).status.value == "video_pending"  # type: ignore[union-attr]
    assert stack.tasks_created("kling") == 1


@pytest.mark.parametrize(
    ("mode", "rule"),
    [("small", "at least 300x300"), ("large", "larger than 10 MB"), ("not_image", "not a JPEG or PNG")],
)
def test_unusable_still_fails_the_sketch_naming_the_rule(stack: Stack, mode: str, rule: str) -> None:
    stack.simulator.configure(image_mode=mode)

    sketch = create(stack)
    failed = stack.wait_for_status(sketch["id"], "failed")

    assert failed.error_message and rule in failed.error_message
    assert stack.kling_requests() == 0


def test_png_still_is_accepted(stack: Stack) -> None:
    stack.simulator.configure(image_mode="png")
    sketch = create(stack)
    assert stack.wait_for_status(sketch["id"], "complete")


def test_other_event_types_are_acknowledged_and_change_nothing(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    before = stack.stored(sketch["id"])

    response = deliver(
        stack,
        sketch["id"],
        {
            "event_type": "TASK_PROGRESS",
            "payload": {"task": {"task_id": sketch["image_task_id"], "status": "TASK_STATUS_FAILED"}},
        },
    )

    assert response.status_code == 200
    assert stack.stored(sketch["id"]) == before


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"event_type": "ASYNC_TASK_RESULT"}',
        b'{"event_type": "ASYNC_TASK_RESULT", "payload": {"task": {}}}',
        b'{"payload": 1}',
    ],
    ids=["broken", "array", "no-payload", "empty-task", "no-event-type"],
)
def test_bad_body_with_a_valid_token_is_a_4xx_and_changes_nothing(stack: Stack, body: bytes) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    before = stack.stored(sketch["id"])
    url = stack.webhook_url(sketch["id"])

    response = stack.http.post(url, content=body, headers={"Content-Type": "application/json"})

    assert 400 <= response.status_code < 500
    assert stack.stored(sketch["id"]) == before


def test_unfinished_status_changes_nothing(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    before = stack.stored(sketch["id"])

    for status in ("TASK_STATUS_PROCESSING", "TASK_STATUS_QUEUED", "TASK_STATUS_SOMETHING_NEW"):
        response = deliver(stack, sketch["id"], result_event(sketch["image_task_id"], status))
        assert response.status_code == 200

    assert stack.stored(sketch["id"]) == before


def test_webhook_answers_options_and_refuses_other_methods(stack: Stack) -> None:
    options = stack.http.options(stack.webhook.url, headers={"Origin": "http://localhost:3000"})
    get = stack.http.get(stack.webhook.url)
    put = stack.http.put(stack.webhook.url, json={})

    assert options.status_code == 204
    assert get.status_code == 405 and put.status_code == 405


def test_hostile_bodies_with_a_valid_token_are_4xx_or_200_and_change_nothing(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    before = stack.stored(sketch["id"])
    url = stack.webhook_url(sketch["id"])
    task = sketch["image_task_id"]
    bodies = [
        b"[" * 70000,  # nested deeper than any parser recurses
        rb'{"event_type": "X\ud800"}',  # a lone surrogate, which UTF-8 cannot carry
        b'{"event_type": "ASYNC_TASK_RESULT", "payload": {"task": {"task_id": "%s", '
        b'"status": "TASK_STATUS_FAILED", "reason": "bad \\ud800"}}}' % task.encode(),
    ]

    answers = [stack.http.post(url, content=b, headers={"Content-Type": "application/json"}) for b in bodies]

    assert [a.status_code for a in answers] == [400, 400, 400]
    assert stack.stored(sketch["id"]) == before


def test_huge_or_infinite_ttls_are_ignored_not_fatal(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = create(stack)
    event = stack.finished_event(sketch["image_task_id"])
    event["payload"]["images"][0]["image_url_ttl"] = "inf"

    response = deliver(stack, sketch["id"], event)

    assert response.status_code == 200
    after = stack.stored(sketch["id"])
    assert after is not None and after.status.value == "video_pending" and after.image_url_expires_at is None

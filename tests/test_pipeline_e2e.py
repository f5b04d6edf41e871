"""The whole machine over real HTTP: create_sketch -> Novita (the simulator) -> webhook -> Pub/Sub
steps -> Kling -> the video copied into the bucket -> complete. Tests that take `either_stack` run
once with Novita as the integration guide says it is, once as its public reference says."""

from __future__ import annotations

import base64
import io
import re
import socket
import time
import uuid
from typing import Any

import av
import httpx
import pytest
from conftest import Stack

from shared.pipeline.queue import Step, message
from shared.pipeline.steps import DEAD_LETTER_FAILURES
from shared.sketch.model import StepKind

FORGED_VIDEO = "http://127.0.0.1:9/forged.mp4"


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


def mp4_frames(url: str) -> int:
    data = httpx.get(url, timeout=10).content
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


# ------------------------------------------------------------------------------ the happy path


def test_prompt_becomes_a_video_kept_in_the_bucket(either_stack: Stack) -> None:
    stack = either_stack
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)

    assert done.progress == 100 and done.completed_at is not None and done.error_message is None
    assert done.video_object == f"sketches/{sketch['id']}/video.mp4"
    assert done.image_object == f"sketches/{sketch['id']}/still.jpg"
    # The app gets the copies, which do not expire; Novita's own links are bookkeeping.
    assert (
        done.video_url and done.video_url.startswith(stack.storage.url) and done.video_url_expires_at is None
    )
    assert (
        done.image_url and done.image_url.startswith(stack.storage.url) and done.image_url_expires_at is None
    )
    assert done.novita_video_url and done.novita_video_url.startswith(stack.simulator.base_url)
    assert mp4_frames(done.video_url) > 0
    assert httpx.get(done.image_url, timeout=10).content[:3] == b"\xff\xd8\xff"
    assert stack.tasks_created("kling") == 1
    api = stack.get_sketch(sketch["id"]).json()
    assert api["status"] == "complete" and api["video_url"] == done.video_url and api["progress"] == 100


def test_each_personality_takes_its_own_forms(either_stack: Stack) -> None:
    stack = either_stack
    sketch = stack.create_sketch()
    stack.wait_for_status(sketch["id"], "complete", timeout=30)
    stats = stack.simulator.stats()

    if stack.personality == "guide":
        assert sketch["image_task_id"] is not None and stats["seedream_images"] == 0
        assert stats["webhook_attempts"] >= 2  # the still's and the video's
    else:
        # Seedream 3.0 answers synchronously, in a queued step, so the sketch has no image task.
        assert sketch["image_task_id"] is None and stats["seedream_images"] == 1
        assert stats["tasks_created"]["txt2img"] == 0
        assert stats["webhook_attempts"] == 0  # Kling calls no webhook: recovery found the video
    assert stats["tasks_created"]["kling"] == 1


def test_the_delivery_is_answered_at_once_and_the_work_follows_from_the_queue(stack: Stack) -> None:
    stack.simulator.configure(deliveries=3)
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    stack.simulator.wait_idle(15)

    deliveries = stack.simulator.stats()["webhook_deliveries"]
    assert len(deliveries) >= 6 and all(d["status_code"] == 200 for d in deliveries)
    assert max(d["elapsed_ms"] for d in deliveries) < 500
    # One check per task is handed on; its copies find it claimed, or the sketch moved on.
    queued = stack.log_lines("delivery queued", sketch["id"])
    assert len(queued) == 2 and {line["task_id"] for line in queued} == {
        done.image_task_id,
        done.video_task_id,
    }
    answered = [
        line for line in stack.log_lines("delivery ", sketch["id"]) if line["message"] != "delivery queued"
    ]
    assert len(queued) + len(answered) == len(deliveries)
    assert stack.tasks_created("kling") == 1


# ---------------------------------------------------------------------------------- duplicates


def test_five_concurrent_deliveries_of_each_result_ask_kling_once(stack: Stack) -> None:
    stack.simulator.configure(deliveries=5, concurrent_deliveries=True)

    sketch = stack.create_sketch()
    stack.wait_for_status(sketch["id"], "complete", timeout=30)
    stack.simulator.wait_idle(15)

    assert stack.kling_requests() == 1
    assert stack.tasks_created("kling") == 1
    statuses = [d["status_code"] for d in stack.simulator.stats()["webhook_deliveries"]]
    assert len(statuses) >= 10 and all(code == 200 for code in statuses)


def test_every_step_delivered_five_times_at_once_pays_once(either_stack: Stack) -> None:
    """Pub/Sub delivers at least once: however many copies of each step arrive, each paid request
    is made once."""
    stack = either_stack
    stack.simulator.configure(image_delay=0.5, drop_webhooks=True)
    sketch = stack.create_sketch()
    for kind in (StepKind.SEEDREAM, StepKind.CHAIN, StepKind.CHECK, StepKind.COPY):
        for _ in range(5):
            stack.publish(Step(kind=kind, sketch_id=sketch["id"]))

    deadline = time.monotonic() + 40
    while stack.stored(sketch["id"]).status.value != "complete" and time.monotonic() < deadline:  # type: ignore[union-attr]
        for _ in range(3):
            stack.publish(Step(kind=StepKind.CHECK, sketch_id=sketch["id"]))
            stack.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch["id"]))
            stack.publish(Step(kind=StepKind.COPY, sketch_id=sketch["id"]))
        time.sleep(0.5)

    assert stack.stored(sketch["id"]).status.value == "complete"  # type: ignore[union-attr]
    stats = stack.simulator.stats()
    assert stats["tasks_created"]["kling"] == 1 and stats["requests"]["kling"] <= 2  # the refused first form
    assert stats["seedream_images"] + stats["tasks_created"]["txt2img"] == 1


def test_five_sequential_duplicates_change_nothing_after_the_first(stack: Stack) -> None:
    stack.simulator.configure(deliveries=5)

    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    stack.simulator.wait_idle(15)
    time.sleep(0.5)  # the late duplicates' steps

    assert stack.tasks_created("kling") == 1
    assert stack.stored(sketch["id"]) == done


# ------------------------------------------------------------------------------------ tokens


@pytest.mark.parametrize(
    "token", [None, "", "forged-token", "A" * 43], ids=["none", "empty", "forged", "shaped"]
)
def test_webhook_without_a_valid_token_is_refused_and_changes_nothing(
    stack: Stack, token: str | None
) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    before = stack.stored(sketch["id"])

    response = deliver(
        stack, sketch["id"], result_event(sketch["image_task_id"], "TASK_STATUS_FAILED"), token=token
    )

    assert response.status_code == 401
    assert stack.stored(sketch["id"]) == before
    assert stack.log_lines("delivery ", sketch["id"]) == []


def test_the_token_covers_the_sketch_and_the_stage(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    mine, other = stack.create_sketch(), stack.create_sketch()
    event = result_event(mine["image_task_id"], "TASK_STATUS_FAILED")
    other_token = stack.webhook_url(other["id"]).split("token=")[1]
    video_token = stack.webhook_url(mine["id"], "video").split("token=")[1]
    image_url = stack.webhook_url(mine["id"])

    answers = [
        deliver(stack, mine["id"], event, token=other_token),  # another sketch's token
        deliver(stack, mine["id"], event, token=video_token),  # the video stage's token, sent as image
        stack.http.post(image_url.replace("stage=image", "stage=video"), json=event),  # the stage changed
        stack.http.post(image_url.replace(mine["id"], other["id"]), json=event),  # the sketch changed
    ]

    assert [a.status_code for a in answers] == [401, 401, 401, 401]
    assert stack.stored(mine["id"]).status.value == "image_pending"  # type: ignore[union-attr]
    assert stack.stored(other["id"]).status.value == "image_pending"  # type: ignore[union-attr]


@pytest.mark.parametrize("sketch_id", ["../x", "a/b", "..", "__x__", "x" * 60000])
def test_a_url_that_names_no_sketch_is_refused_before_anything_else(stack: Stack, sketch_id: str) -> None:
    response = stack.http.post(
        stack.webhook.url,
        params={"sketch": sketch_id, "stage": "image", "token": "t"},
        json=result_event("t"),
    )
    assert response.status_code == 400 and len(response.text) < 500


# ---------------------------------------------------------------------- bodies that lie


def test_a_lying_body_with_a_valid_token_changes_nothing(recovery_stack: Stack) -> None:
    """Webhooks are hints: only what Novita's task-result says is applied. A body that claims another
    video, a failure that did not happen, or a task that is not the sketch's, changes nothing."""
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True, image_delay=1.0, video_delay=2.0)
    sketch = stack.create_sketch()
    image_task = sketch["image_task_id"]
    lies = [
        ("image", result_event(image_task, "TASK_STATUS_FAILED", reason="it never failed")),
        ("image", result_event(image_task, images=[{"image_url": FORGED_VIDEO, "image_url_ttl": 99}])),
        ("image", result_event(str(uuid.uuid4()), "TASK_STATUS_FAILED", reason="not the sketch's task")),
        ("video", result_event(str(uuid.uuid4()), videos=[{"video_url": FORGED_VIDEO}])),
    ]

    answers = [deliver(stack, sketch["id"], body, stage=stage) for stage, body in lies]
    # Tasks that are not the sketch's are refused at the door; the sketch's own task is checked once.
    stack.wait_for_steps(sketch["id"], 1)
    assert len(stack.log_lines("a paid task that no sketch adopts", sketch["id"])) == 2
    early = stack.stored(sketch["id"])

    assert [a.status_code for a in answers] == [200] * len(lies)
    assert early is not None and early.status.value == "image_pending" and early.error_message is None
    # The task itself goes on; the real results finish the sketch, through recovery alone.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and stack.stored(sketch["id"]).status.value != "complete":  # type: ignore[union-attr]
        stack.sweep()
        time.sleep(0.3)
    done = stack.stored(sketch["id"])
    assert done is not None and done.status.value == "complete"
    assert FORGED_VIDEO not in (done.video_url, done.novita_video_url, done.image_url, done.novita_image_url)
    assert done.image_task_id == image_task


def test_a_lie_about_the_video_while_kling_works_changes_nothing(recovery_stack: Stack) -> None:
    """The lie takes the delivery's claim for the task: the real result's own delivery, inside the
    interval, is answered and hands nothing on, and recovery finds the video instead."""
    stack = recovery_stack
    stack.simulator.configure(video_delay=3.0)
    sketch = stack.create_sketch()
    pending = stack.wait_for_status(sketch["id"], "video_pending", timeout=20)
    assert pending.video_task_id is not None

    forged = result_event(pending.video_task_id, videos=[{"video_url": FORGED_VIDEO}])
    assert deliver(stack, sketch["id"], forged, stage="video").status_code == 200
    steps = stack.wait_for_steps(sketch["id"], 1)
    still_pending = stack.stored(sketch["id"])

    assert still_pending is not None and still_pending.status.value == "video_pending"
    assert still_pending.novita_video_url is None and steps
    with stack.scheduled():
        done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    assert done.novita_video_url != FORGED_VIDEO and mp4_frames(done.video_url or "") > 0


def test_a_result_after_completion_changes_nothing(stack: Stack) -> None:
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)

    late = deliver(
        stack, sketch["id"], result_event(sketch["image_task_id"], "TASK_STATUS_FAILED", reason="late")
    )
    time.sleep(1.0)

    assert late.status_code == 200
    assert stack.stored(sketch["id"]) == done


# ------------------------------------------------------------------------------------ failures


def test_text_to_image_failure_fails_the_sketch_with_the_reason(stack: Stack) -> None:
    stack.simulator.configure(fail_tasks={"txt2img": 1})

    sketch = stack.create_sketch()
    failed = stack.wait_for_status(sketch["id"], "failed")

    assert failed.error_message and "simulated" in failed.error_message
    assert stack.tasks_created("kling") == 0


def test_seedream_refusal_fails_the_sketch_with_the_reason(reference_stack: Stack) -> None:
    stack = reference_stack.clean()
    stack.simulator.configure(http_errors={"seedream": [400]})

    sketch = stack.create_sketch()
    failed = stack.wait_for_status(sketch["id"], "failed")

    assert failed.error_message and "INVALID_REQUEST_BODY" in failed.error_message
    assert stack.tasks_created("kling") == 0


def test_seedream_out_of_reach_is_tried_again_through_the_queue(reference_stack: Stack) -> None:
    with reference_stack.clean().scheduled() as stack:
        stack.simulator.configure(http_errors={"seedream": [503, 502]})

        sketch = stack.create_sketch()
        done = stack.wait_for_status(sketch["id"], "complete", timeout=40)

    assert done.error_message is None
    assert (
        stack.simulator.stats()["requests"]["seedream"] == 3
        and stack.simulator.stats()["seedream_images"] == 1
    )


def test_video_failure_fails_the_sketch_with_the_reason(either_stack: Stack) -> None:
    stack = either_stack
    stack.simulator.configure(fail_tasks={"kling": 1})

    sketch = stack.create_sketch()
    failed = stack.wait_for_status(sketch["id"], "failed", timeout=30)

    assert failed.video_task_id and failed.image_url
    assert failed.error_message and "simulated" in failed.error_message


def test_kling_refusal_fails_the_sketch(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"kling": [422]})

    sketch = stack.create_sketch()
    failed = stack.wait_for_status(sketch["id"], "failed")

    # The guide's form was refused, then the reference's form too: a refusal about the request itself.
    assert failed.error_message and "Novita 4" in failed.error_message
    assert stack.tasks_created("kling") == 0


def test_kling_5xx_is_tried_again_through_the_queue_and_completes(either_stack: Stack) -> None:
    stack = either_stack
    stack.simulator.configure(http_errors={"kling": [500]})

    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=40)

    retried = stack.log_lines("step not done; Pub/Sub will deliver it again", sketch["id"])
    assert retried and retried[0]["step"] == "chain"
    assert stack.tasks_created("kling") == 1
    assert done.error_message is None


@pytest.mark.parametrize(
    ("mode", "rule"),
    [("small", "at least 300x300"), ("large", "larger than 10 MB"), ("not_image", "not a JPEG or PNG")],
)
def test_unusable_still_fails_the_sketch_naming_the_rule(either_stack: Stack, mode: str, rule: str) -> None:
    stack = either_stack
    stack.simulator.configure(image_mode=mode)

    sketch = stack.create_sketch()
    failed = stack.wait_for_status(sketch["id"], "failed", timeout=30)

    assert failed.error_message and rule in failed.error_message
    assert stack.kling_requests() == 0


def test_png_still_is_accepted_and_kept_as_png(stack: Stack) -> None:
    stack.simulator.configure(image_mode="png")
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    assert done.image_object and done.image_object.endswith("still.png")


def test_a_step_that_keeps_failing_ends_in_the_dead_letters_and_fails_the_sketch(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"kling": [503] * 30})

    sketch = stack.create_sketch()
    failed = stack.wait_for_status(sketch["id"], "failed", timeout=90)

    assert failed.error_message is not None and "503" in failed.error_message
    # The dead letter fails the sketch once the sketch's own count bears it out.
    failures = re.search(r"the chain step failed (\d+) times", failed.error_message)
    assert failures is not None and int(failures.group(1)) >= DEAD_LETTER_FAILURES
    assert stack.tasks_created("kling") == 0


# -------------------------------------------------------------------------------- the push


@pytest.mark.parametrize("action", ["step", "dead_letter"])
def test_a_forged_push_is_refused_and_changes_nothing(stack: Stack, action: str) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    before = stack.stored(sketch["id"])
    forged = message(Step(kind=StepKind.CHECK, sketch_id=sketch["id"]), "not-the-secret", 3600, time.time())
    body = {
        "message": {"data": base64.b64encode(forged.data).decode(), "attributes": dict(forged.attributes)},
        "subscription": f"projects/{stack.project}/subscriptions/sketch-steps-push",
    }

    answer = stack.http.post(stack.steps.url, params={"action": action}, json=body)
    unsigned = stack.http.post(stack.steps.url, params={"action": action}, json={"message": {"data": ""}})

    assert answer.status_code == 401 and unsigned.status_code == 401
    assert stack.stored(sketch["id"]) == before
    assert stack.simulator.stats()["requests"]["task_result"] == 0


# ----------------------------------------------------------------------------------- bodies


def test_other_event_types_are_acknowledged_and_change_nothing(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    before = stack.stored(sketch["id"])

    response = deliver(
        stack,
        sketch["id"],
        {
            "event_type": "TASK_PROGRESS",
            "payload": {"task": {"task_id": sketch["image_task_id"], "status": "TASK_STATUS_FAILED"}},
        },
    )

    assert response.status_code == 200 and response.json()["outcome"] == "ignored"
    assert stack.stored(sketch["id"]) == before


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"event_type": "ASYNC_TASK_RESULT"}',
        b'{"event_type": "ASYNC_TASK_RESULT", "payload": {"task": {}}}',
        b'{"payload": 1}',
        b"[" * 70000,  # nested deeper than any parser recurses
        rb'{"event_type": "X\ud800"}',  # a lone surrogate, which UTF-8 cannot carry
        b'{"event_type": "ASYNC_TASK_RESULT", "payload": {"task": {"task_id": "'
        + b"t" * 1000
        + b'", "status": "S"}}}',
        b'{"event_type": "ASYNC_TASK_RESULT", "payload": {"task": {"task_id": "t", "status": "'
        + b"S" * 100000
        + b'"}}}',
    ],
    ids=[
        "broken",
        "array",
        "no-payload",
        "empty-task",
        "no-event-type",
        "deep",
        "surrogate",
        "long-id",
        "long-status",
    ],
)
def test_bad_body_with_a_valid_token_is_a_4xx_and_changes_nothing(stack: Stack, body: bytes) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    before = stack.stored(sketch["id"])
    url = stack.webhook_url(sketch["id"])

    response = stack.http.post(url, content=body, headers={"Content-Type": "application/json"})

    assert 400 <= response.status_code < 500 and len(response.text) < 1000
    assert stack.stored(sketch["id"]) == before


def test_unfinished_status_changes_nothing_final(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True, image_delay=5.0)
    sketch = stack.create_sketch()

    answers = [
        deliver(stack, sketch["id"], result_event(sketch["image_task_id"], status)).json()["outcome"]
        for status in ("TASK_STATUS_PROCESSING", "TASK_STATUS_QUEUED", "TASK_STATUS_SOMETHING_NEW")
    ]
    # The first hands a check on; the others find it claimed within the interval.
    assert answers == ["queued", "duplicate", "duplicate"]
    stack.wait_for_steps(sketch["id"], 1)

    after = stack.stored(sketch["id"])
    assert after is not None and after.status.value == "image_pending" and after.error_message is None
    assert stack.kling_requests() == 0


@pytest.mark.parametrize("action", ["step", "dead_letter", "sweep", "anything"])
def test_the_public_door_answers_google_actions_404_without_reading_the_body(
    stack: Stack, action: str
) -> None:
    """Steps, dead letters and the sweep are the private door's: on the public one, a request that
    names an action is refused before a byte of its body is read, however slowly that body comes."""
    with socket.create_connection(("127.0.0.1", stack.webhook.port), timeout=5) as sock:
        sock.sendall(
            f"POST /?action={action} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 60000\r\n\r\n{".encode()
        )
        started = time.monotonic()
        answer = sock.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 404") and time.monotonic() - started < 2
    assert "connection: close" in answer.lower()
    assert (
        stack.http.post(stack.steps.url, params={"sketch": "0" * 32, "stage": "image"}, json={}).status_code
        == 404
    )


def test_webhook_answers_options_and_refuses_other_methods(stack: Stack) -> None:
    options = stack.http.options(stack.webhook.url, headers={"Origin": "http://localhost:3000"})
    get = stack.http.get(stack.webhook.url)
    put = stack.http.put(stack.webhook.url, json={})

    assert options.status_code == 204
    assert get.status_code == 405 and put.status_code == 405


def test_in_webhook_test_mode_the_delivery_itself_is_applied(stack_factory) -> None:  # noqa: ANN001
    stack: Stack = stack_factory("test-mode", NOVITA_WEBHOOK_TEST_MODE="TASK_STATUS_SUCCEED")
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    assert done.video_object is not None and stack.tasks_created("kling") == 1

"""Nothing lost, nothing paid twice: recovery through task-result, the in-flight claim, leases
that run out, and requests whose answers were lost."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import WEBHOOK_SECRET, Stack

from devstack.functions import ROOT
from shared.webhook_tokens import sweep_token


def poll_until_final(stack: Stack, sketch_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll GET ?id= as the frontend does, until the sketch is complete or failed."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = stack.get_sketch(sketch_id).json()
        if body["status"] in ("complete", "failed"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"sketch {sketch_id} stuck in {body.get('status')}")


def sweep(stack: Stack, authorization: str | None = None) -> httpx.Response:
    authorization = authorization if authorization is not None else f"Bearer {sweep_token(WEBHOOK_SECRET)}"
    headers = {"Authorization": authorization} if authorization else {}
    return stack.http.post(stack.webhook.url, params={"action": "sweep"}, headers=headers)


def test_polling_get_finishes_a_sketch_whose_webhooks_never_come(recovery_stack: Stack) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True)

    sketch = stack.create_sketch()
    final = poll_until_final(stack, sketch["id"])

    assert final["status"] == "complete" and final["video_url"]
    assert stack.tasks_created("kling") == 1
    assert stack.simulator.stats()["webhook_attempts"] == 0


def test_many_clients_polling_at_once_ask_novita_once_per_interval(stack_factory) -> None:  # noqa: ANN001
    stack: Stack = stack_factory("poll-once", RECOVERY_INTERVAL_SECONDS="3")
    stack.simulator.configure(drop_webhooks=True, image_delay=0.1)
    sketch = stack.create_sketch()
    stack.wait_for(sketch["id"], lambda s: s.recovery_due_at is not None)
    time.sleep(3.2)  # the first check is now due
    asked_before = stack.simulator.stats()["requests"]["task_result"]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: stack.get_sketch(sketch["id"]), range(20)))

    assert all(a.status_code == 200 for a in answers)
    assert stack.simulator.stats()["requests"]["task_result"] - asked_before == 1
    assert stack.wait_for_status(sketch["id"], "video_pending")
    assert stack.tasks_created("kling") == 1


def test_sweep_action_finishes_every_stale_sketch(recovery_stack: Stack) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True)
    ids = [stack.create_sketch()["id"] for _ in range(5)]

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        response = sweep(stack)
        assert response.status_code == 200 and response.json()["errors"] == []
        if all(stack.stored(i).status.value == "complete" for i in ids):  # type: ignore[union-attr]
            break
        time.sleep(0.6)

    assert [stack.stored(i).status.value for i in ids] == ["complete"] * 5  # type: ignore[union-attr]
    assert stack.tasks_created("kling") == 5


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer wrong", f"Bearer {sweep_token('another-secret')}", sweep_token(WEBHOOK_SECRET)],
    ids=["none", "wrong", "other-secret", "no-scheme"],
)
def test_sweep_action_needs_its_token(recovery_stack: Stack, authorization: str) -> None:
    recovery_stack.simulator.configure(drop_webhooks=True)
    sketch = recovery_stack.create_sketch()
    time.sleep(0.6)

    response = sweep(recovery_stack, authorization)

    assert response.status_code == 401
    assert recovery_stack.simulator.stats()["requests"]["task_result"] == 0
    assert recovery_stack.stored(sketch["id"]).status.value == "image_pending"  # type: ignore[union-attr]


def test_sweep_command_runs_from_the_shell(recovery_stack: Stack) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    stack.finished_event(sketch["image_task_id"])
    time.sleep(0.6)
    env = {**os.environ, **stack.env, "PYTHONPATH": str(ROOT)}

    run = subprocess.run(
        [sys.executable, "-m", "shared.recovery", "--limit", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    token = subprocess.run(
        ["python3", "-m", "shared.webhook_tokens", "sweep-token"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "WEBHOOK_SECRET": WEBHOOK_SECRET},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert '"examined": 1' in run.stdout
    assert stack.stored(sketch["id"]).status.value == "video_pending"  # type: ignore[union-attr]
    assert token.stdout.strip() == sweep_token(WEBHOOK_SECRET)


def test_expired_still_url_is_renewed_through_task_result(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True, media_ttl=1)
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])
    time.sleep(1.3)  # the URL in the event has expired

    response = stack.deliver(sketch["id"], event)

    assert response.status_code == 200 and response.json()["outcome"] == "applied"
    after = stack.stored(sketch["id"])
    assert after is not None and after.status.value == "video_pending"
    assert after.image_url != event["payload"]["images"][0]["image_url"]


def test_still_url_that_answers_403_is_renewed_through_task_result(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True, media_ttl=1)
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])
    for image in event["payload"]["images"]:
        del image["image_url_ttl"]  # no TTL: the expiry shows only as a 403
    time.sleep(1.3)
    stack.simulator.configure(media_ttl=3600)

    response = stack.deliver(sketch["id"], event)

    assert response.status_code == 200
    assert stack.stored(sketch["id"]).status.value == "video_pending"  # type: ignore[union-attr]


def test_duplicate_during_a_slow_chain_answers_at_once_and_sends_nothing(stack: Stack) -> None:
    stack.simulator.configure(deliveries=2, concurrent_deliveries=True, kling_accept_delay=3.0)

    sketch = stack.create_sketch()
    stack.wait_for_status(sketch["id"], "complete", timeout=30)
    stack.simulator.wait_idle(15)

    image = [
        d for d in stack.simulator.stats()["webhook_deliveries"] if d["task_id"] == sketch["image_task_id"]
    ]
    times = sorted(d["elapsed_ms"] for d in image)
    assert [d["status_code"] for d in image] == [200, 200]
    assert times[0] < 1000 <= 3000 <= times[1]
    assert stack.kling_requests() == 1


def test_chain_killed_half_way_is_taken_up_once_its_lease_runs_out(stack_factory) -> None:  # noqa: ANN001
    """The one way a second Kling request can happen: the process holding the chain died."""
    stack: Stack = stack_factory("lease", CHAIN_LEASE_SECONDS="6")
    stack.simulator.configure(drop_webhooks=True, image_delay=0.1, kling_accept_delay=4.0)
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])
    first = threading.Thread(target=lambda: _swallow(lambda: stack.deliver(sketch["id"], event)))
    first.start()
    stack.wait_for_status(sketch["id"], "image_complete")
    deadline = time.monotonic() + 10
    while stack.kling_requests() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the Kling request is under way

    stack.webhook.kill()
    first.join(10)
    stack.webhook.start()
    stack.simulator.configure(kling_accept_delay=0.0)
    early = stack.deliver(sketch["id"], event)
    held = stack.stored(sketch["id"])
    assert held is not None and held.chain_lease_until is not None
    time.sleep(max(0.0, held.chain_lease_until.timestamp() - time.time()) + 0.2)
    late = stack.deliver(sketch["id"], event)

    assert early.status_code == 200 and early.json()["outcome"] == "in_progress"
    assert late.status_code == 200 and late.json()["outcome"] == "applied"
    assert stack.stored(sketch["id"]).status.value == "video_pending"  # type: ignore[union-attr]
    assert stack.kling_requests() == 2


def _swallow(call: Any) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server is killed under this request
        call()


def test_kling_answer_lost_is_resolved_by_its_own_webhook_without_a_second_request(stack: Stack) -> None:
    stack.simulator.configure(accept_then_drop_response={"kling": 1})

    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete")

    assert stack.kling_requests() == 1 and stack.tasks_created("kling") == 1
    assert done.video_task_id is not None and done.submission_unknown is None


def test_text_to_image_answer_lost_is_resolved_by_its_own_webhook(stack: Stack) -> None:
    stack.simulator.configure(accept_then_drop_response={"txt2img": 1})

    response = stack.post_sketch({"prompt": "a moose knitting a moose"})
    body = response.json()
    done = stack.wait_for_status(body["id"], "complete")

    assert response.status_code == 202 and body["image_task_id"] is None
    assert done.image_task_id is not None
    assert stack.simulator.stats()["requests"]["txt2img"] == 1


def test_lost_answer_with_no_webhook_fails_after_the_grace_period_and_is_never_resent(
    recovery_stack: Stack,
) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True, accept_then_drop_response={"kling": 1})
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])

    response = stack.deliver(sketch["id"], event)
    unknown = stack.stored(sketch["id"])
    again = stack.deliver(sketch["id"], event)
    final = poll_until_final(stack, sketch["id"], timeout=20)

    assert response.status_code == 503
    assert unknown is not None and unknown.submission_unknown == "video"
    assert again.status_code == 200 and again.json()["outcome"] == "in_progress"
    assert final["status"] == "failed"
    assert "not sent again" in final["error_message"]
    assert stack.kling_requests() == 1


def test_a_sketch_that_cannot_finish_fails_once_it_is_too_old(stack_factory) -> None:  # noqa: ANN001
    stack: Stack = stack_factory("max-age", MAX_SKETCH_AGE_SECONDS="3", RECOVERY_INTERVAL_SECONDS="0.5")
    # No webhook, and task-result never answers usefully: nothing else could ever finish it.
    stack.simulator.configure(drop_webhooks=True, http_errors={"task_result": [404] * 100})
    sketch = stack.create_sketch()

    final = poll_until_final(stack, sketch["id"], timeout=20)

    assert final["status"] == "failed"
    assert "not finished within 3 s" in final["error_message"]

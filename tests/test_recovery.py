"""Nothing lost, nothing paid twice: recovery through task-result (GET and the sweep), steps taken up
after their lease runs out, and requests whose answers were lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import WEBHOOK_SECRET, Stack

from devstack.functions import ROOT
from shared.core.tokens import sweep_token
from shared.pipeline.queue import Step
from shared.sketch.model import Sketch, StepKind, new_sketch_id, utcnow
from shared.sketch.request import CreateSketchRequest


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


def write_due_sketches(stack: Stack, count: int) -> list[str]:
    """`count` sketches waiting on text-to-image tasks Novita does not know, all due for a look."""
    past = utcnow() - timedelta(seconds=5)
    batch = stack.db.batch()
    ids = []
    for i in range(count):
        sketch = Sketch.new(new_sketch_id(), CreateSketchRequest(prompt=f"due {i}"), past, None, past, "task")
        sketch = sketch.model_copy(update={"image_task_id": f"unknown-task-{i}", "submission_unknown": None})
        batch.set(stack.db.collection(stack.collection).document(sketch.id), sketch.to_document())
        ids.append(sketch.id)
        if len(ids) % 400 == 0:
            batch.commit()
            batch = stack.db.batch()
    batch.commit()
    return ids


def test_polling_get_finishes_a_sketch_whose_webhooks_never_come(recovery_stack: Stack) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True)

    sketch = stack.create_sketch()
    final = poll_until_final(stack, sketch["id"])

    assert final["status"] == "complete" and final["video_url"] and final["progress"] == 100
    assert stack.tasks_created("kling") == 1
    assert stack.simulator.stats()["webhook_attempts"] == 0


def test_many_clients_polling_at_once_ask_novita_once_per_interval(stack_factory) -> None:  # noqa: ANN001
    stack: Stack = stack_factory("poll-once", RECOVERY_INTERVAL_SECONDS="3")
    stack.simulator.configure(drop_webhooks=True, image_delay=0.1)
    sketch = stack.create_sketch()
    stack.wait_for(sketch["id"], lambda s: s.recovery_due_at is not None)
    time.sleep(3.2)  # the first check is now due

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: stack.get_sketch(sketch["id"]), range(20)))
    stack.wait_for_status(sketch["id"], "video_pending")

    assert all(a.status_code == 200 for a in answers)
    assert stack.simulator.stats()["requests"]["task_result"] == 1
    assert len(stack.log_lines("step done", sketch["id"])) >= 1
    assert stack.tasks_created("kling") == 1


def test_progress_follows_novitas_own_and_never_goes_down(recovery_stack: Stack) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True, image_delay=3.0, video_delay=3.0)
    sketch = stack.create_sketch()

    seen: list[tuple[str, int, int | None]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = stack.get_sketch(sketch["id"]).json()
        seen.append((body["status"], body["progress"], body["eta_seconds"]))
        if body["status"] == "complete":
            break
        time.sleep(0.2)

    progress = [p for _, p, _ in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    drawing = [p for s, p, _ in seen if s == "image_pending"]
    animating = [p for s, p, _ in seen if s == "video_pending"]
    assert any(0 < p < 30 for p in drawing), seen  # Novita's progress_percent, within the still's part
    assert any(35 < p < 90 for p in animating), seen  # and within the video's
    assert any(eta for s, _, eta in seen if s != "complete"), seen


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


@pytest.fixture(scope="module")
def sweep_stack(stack_factory) -> Stack:  # noqa: ANN001
    """Looks are due again only two minutes later, so a sweep's work shows in the next sweep."""
    return stack_factory("sweep-pages", RECOVERY_INTERVAL_SECONDS="120")


def test_the_sweep_examines_every_due_sketch_in_pages_and_in_parallel(sweep_stack: Stack) -> None:
    stack = sweep_stack.clean()
    stack.simulator.configure(task_result_delay=0.2)
    ids = write_due_sketches(stack, 250)

    before = utcnow()
    started = time.monotonic()
    report = sweep(stack).json()
    took = time.monotonic() - started

    assert report["examined"] == 250 and report["more"] is False
    assert stack.simulator.stats()["requests"]["task_result"] == 250
    # 250 looks of 200 ms each, one after another, would take 50 s.
    assert took < 15, took
    after = [stack.stored(i) for i in ids]
    assert all(s is not None and s.recovery_due_at > before for s in after)


def test_a_sweep_out_of_time_says_so_and_the_next_one_goes_on(sweep_stack: Stack) -> None:
    stack = sweep_stack.clean()
    stack.simulator.configure(task_result_delay=0.5)
    write_due_sketches(stack, 300)
    env = {**os.environ, **stack.env, "PYTHONPATH": str(ROOT)}

    def run_sweep(seconds: float) -> dict[str, Any]:
        run = subprocess.run(
            [sys.executable, "-m", "shared.ops", "sweep", "--seconds", str(seconds)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return dict(json.loads(run.stdout.strip().splitlines()[-1]))

    first = run_sweep(11)  # time for one page and its margin, not for three
    second = run_sweep(60)

    assert first["more"] is True and 0 < first["examined"] < 300
    assert second["more"] is False and first["examined"] + second["examined"] == 300
    assert stack.simulator.stats()["requests"]["task_result"] == 300


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


def test_sweep_command_and_token_run_from_the_shell(recovery_stack: Stack) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    stack.finished_event(sketch["image_task_id"])
    time.sleep(0.6)
    env = {**os.environ, **stack.env, "PYTHONPATH": str(ROOT)}

    run = subprocess.run(
        [sys.executable, "-m", "shared.ops", "sweep", "--seconds", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # deploy.sh pipes the secret in, so that it never shows on a command line.
    token = subprocess.run(
        [sys.executable, "-m", "shared.core.tokens", "sweep-token"],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
        input=WEBHOOK_SECRET,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    assert '"examined": 1' in run.stdout
    assert stack.wait_for_status(sketch["id"], "video_pending")
    assert token.returncode == 0 and token.stdout.strip() == sweep_token(WEBHOOK_SECRET)


# ----------------------------------------------------------------------------- expired links


def _complete_image_with_an_expired_link(stack: Stack, ttl_known: bool) -> str:
    """A sketch whose still is made, holding a Novita link that has expired since."""
    stack.simulator.configure(drop_webhooks=True, media_ttl=1)
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])
    link = event["payload"]["images"][0]["image_url"]
    time.sleep(1.3)  # the link has expired
    stack.simulator.configure(media_ttl=3600)
    assert httpx.get(link).status_code == 403
    past = utcnow() - timedelta(seconds=1)
    stack.db.collection(stack.collection).document(sketch["id"]).update(
        {
            "status": "image_complete",
            "image_task_id": sketch["image_task_id"],
            "novita_image_url": link,
            "novita_image_url_expires_at": past if ttl_known else None,
            "image_url": link,
            "submission_unknown": None,
        }
    )
    stack.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch["id"]))
    return str(sketch["id"])


@pytest.mark.parametrize("ttl_known", [True, False], ids=["by-its-ttl", "by-a-403"])
def test_an_expired_still_link_is_renewed_through_task_result(stack: Stack, ttl_known: bool) -> None:
    sketch_id = _complete_image_with_an_expired_link(stack, ttl_known)

    after = stack.wait_for_status(sketch_id, "video_pending")

    assert after.novita_image_url and httpx.get(after.novita_image_url).status_code == 200
    assert stack.tasks_created("kling") == 1


def test_an_expired_video_link_is_renewed_before_the_copy(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    stack.deliver(sketch["id"], stack.finished_event(sketch["image_task_id"]))
    pending = stack.wait_for_status(sketch["id"], "video_pending")
    stack.simulator.configure(media_ttl=1)
    link = stack.finished_event(pending.video_task_id or "")["payload"]["videos"][0]["video_url"]
    time.sleep(1.3)  # the link has expired
    stack.simulator.configure(media_ttl=3600)
    assert httpx.get(link).status_code == 403
    stack.db.collection(stack.collection).document(sketch["id"]).update(
        {"novita_video_url": link, "novita_video_url_expires_at": utcnow() - timedelta(seconds=1)}
    )

    stack.publish(Step(kind=StepKind.COPY, sketch_id=sketch["id"]))
    done = stack.wait_for_status(sketch["id"], "complete")

    assert done.novita_video_url != link and done.video_object == f"sketches/{sketch['id']}/video.mp4"
    assert httpx.get(done.video_url or "").status_code == 200


# ------------------------------------------------------------------------- leases and crashes


def test_a_duplicate_step_during_a_slow_chain_acknowledges_at_once_and_sends_nothing(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True, kling_accept_delay=3.0)
    sketch = stack.create_sketch()
    stack.deliver(sketch["id"], stack.finished_event(sketch["image_task_id"]))
    stack.wait_for(sketch["id"], lambda s: s.step_lease_owner is not None)

    stack.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch["id"]))
    done = stack.wait_for_steps(sketch["id"], 3, timeout=20)  # the check, the duplicate, the chain

    outcomes = [line["outcome"] for line in done]
    assert outcomes.count("in_progress") >= 1 and outcomes.count("applied") == 2
    assert stack.kling_requests() == 1


def test_chain_killed_half_way_is_taken_up_once_its_lease_runs_out(stack_factory) -> None:  # noqa: ANN001
    """The one way a second Kling request can happen: the process holding the chain died."""
    stack: Stack = stack_factory("lease", STEP_LEASE_SECONDS="6")
    stack.simulator.configure(drop_webhooks=True, image_delay=0.1, kling_accept_delay=4.0)
    sketch = stack.create_sketch()
    stack.deliver(sketch["id"], stack.finished_event(sketch["image_task_id"]))
    deadline = time.monotonic() + 15
    while stack.kling_requests() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the Kling request is under way

    stack.webhook.kill()
    stack.webhook.start()
    stack.simulator.configure(kling_accept_delay=0.0)
    held = stack.stored(sketch["id"])
    assert held is not None and held.status.value == "image_complete" and held.step_lease_until is not None
    done_before = len(stack.log_lines("step done", sketch["id"]))
    stack.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch["id"]))
    early = stack.wait_for_steps(sketch["id"], done_before + 1)[done_before:]
    time.sleep(max(0.0, held.step_lease_until.timestamp() - time.time()) + 0.2)
    report = stack.sweep().json()  # Cloud Scheduler's sweep finds the abandoned chain
    late = stack.wait_for_status(sketch["id"], "video_pending")

    # While the dead step's lease runs, its work is not taken up, however the step comes back.
    assert {line["outcome"] for line in early} == {"in_progress"}
    assert report["examined"] >= 1 and late.video_task_id is not None
    assert stack.kling_requests() == 2


def test_seedream_killed_half_way_fails_the_sketch_without_asking_again(stack_factory) -> None:  # noqa: ANN001
    stack: Stack = stack_factory(
        "seedream-lease", personality="reference", STEP_LEASE_SECONDS="4", RECOVERY_INTERVAL_SECONDS="0.5"
    )
    stack.simulator.configure(seedream_delay=3.0)
    sketch = stack.create_sketch()
    deadline = time.monotonic() + 15
    while stack.simulator.stats()["requests"]["seedream"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)

    stack.webhook.kill()
    stack.webhook.start()
    held = stack.stored(sketch["id"])
    assert held is not None and held.submission_unknown == "image" and held.step_lease_until is not None
    time.sleep(max(0.0, held.step_lease_until.timestamp() - time.time()) + 0.2)
    stack.sweep()
    final = poll_until_final(stack, sketch["id"])

    assert final["status"] == "failed" and "not sent again" in final["error_message"]
    assert stack.simulator.stats()["requests"]["seedream"] == 1


# -------------------------------------------------------------------------------- lost answers


def test_kling_answer_lost_is_resolved_by_its_own_webhook_without_a_second_request(stack: Stack) -> None:
    stack.simulator.configure(accept_then_drop_response={"kling": 1})

    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)

    assert stack.kling_requests() == 1 and stack.tasks_created("kling") == 1
    assert done.video_task_id is not None and done.submission_unknown is None


def test_text_to_image_answer_lost_is_resolved_by_its_own_webhook(stack: Stack) -> None:
    stack.simulator.configure(accept_then_drop_response={"txt2img": 1})

    response = stack.post_sketch({"prompt": "a moose knitting a moose"})
    body = response.json()
    done = stack.wait_for_status(body["id"], "complete", timeout=30)

    assert response.status_code == 202 and body["image_task_id"] is None
    assert done.image_task_id is not None
    assert stack.simulator.stats()["requests"]["txt2img"] == 1


def test_lost_answer_with_no_webhook_fails_after_the_grace_period_and_is_never_resent(
    recovery_stack: Stack,
) -> None:
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True, accept_then_drop_response={"kling": 1})
    sketch = stack.create_sketch()
    stack.deliver(sketch["id"], stack.finished_event(sketch["image_task_id"]))

    unknown = stack.wait_for(sketch["id"], lambda s: s.submission_unknown == "video")
    for _ in range(3):
        stack.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch["id"]))
    final = poll_until_final(stack, sketch["id"], timeout=20)

    assert unknown.status.value == "image_complete"
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

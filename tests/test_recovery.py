"""Nothing lost, nothing paid twice: recovery through task-result (GET and the sweep), steps taken up
after their lease runs out, and requests whose answers were lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from conftest import WEBHOOK_SECRET, Stack, record_figure

from devstack.functions import ROOT, FunctionServer
from shared.core.tokens import SWEEP_HEADER, sweep_token
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


def sweep(stack: Stack, token: str | None = None) -> httpx.Response:
    """The sweep on the private door, with its token (or `token` in its place; "" for none)."""
    token = token if token is not None else sweep_token(WEBHOOK_SECRET)
    headers = {SWEEP_HEADER: token} if token else {}
    return stack.http.post(stack.steps.url, params={"action": "sweep"}, headers=headers)


def write_due_sketches(stack: Stack, count: int) -> list[str]:
    """`count` sketches waiting on text-to-image tasks Novita does not know, all due for a look."""
    past = utcnow() - timedelta(seconds=5)
    batch = stack.db.batch()
    ids = []
    for i in range(count):
        sketch = Sketch.new(new_sketch_id(), CreateSketchRequest(prompt=f"due {i}"), past, None, past, "task")
        sketch = sketch.replace(image_task_id=f"unknown-task-{i}", submission_unknown=None)
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
    "token",
    ["", "wrong", sweep_token("another-secret"), f"Bearer {sweep_token(WEBHOOK_SECRET)}"],
    ids=["none", "wrong", "other-secret", "bearer-form"],
)
def test_sweep_action_needs_its_token(recovery_stack: Stack, token: str) -> None:
    recovery_stack.simulator.configure(drop_webhooks=True)
    sketch = recovery_stack.create_sketch()
    time.sleep(0.6)

    response = sweep(recovery_stack, token)

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


def kill_worker(server: FunctionServer) -> float:
    """kill -9 of the gunicorn worker serving `server`'s requests (its master starts another); when."""
    os.kill(server.worker_pid(), signal.SIGKILL)
    return time.monotonic()


def wait_for_request(stack: Stack, endpoint: str, count: int = 1, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while stack.simulator.stats()["requests"][endpoint] < count:
        assert time.monotonic() < deadline, f"no {endpoint} request within {timeout} s"
        time.sleep(0.02)


def test_a_chain_killed_with_klings_request_in_flight_adopts_its_task_and_pays_once(stack_factory) -> None:  # noqa: ANN001
    """kill -9 of the worker while Kling makes the task: the answer dies with the process, the sketch's
    record says a request was sent, and the task's own webhook, which names the sketch, brings it
    back. The dead worker's lease runs out in seconds and nothing is sent twice."""
    stack: Stack = stack_factory(
        "crash-chain", sweep_every=1.0, STEP_LEASE_SECONDS="3", RECOVERY_INTERVAL_SECONDS="1"
    )
    stack.simulator.configure(image_delay=0.1, video_delay=1.0, kling_accept_delay=1.5)
    sketch = stack.create_sketch()
    wait_for_request(stack, "kling")
    killed = kill_worker(stack.steps)
    done = stack.wait_for_status(sketch["id"], "complete", timeout=40)
    settled = time.monotonic() - killed

    ledger = [entry for entry in stack.simulator.ledger()["paid"] if entry["endpoint"] == "kling"]
    assert len(ledger) == 1 and not ledger[0]["answered"]  # made, and its answer lost with the worker
    assert done.video_task_id == ledger[0]["task_id"] and done.repaid == []
    assert stack.log_lines("adopted a task whose request had no known outcome", sketch["id"])
    assert settled < 20
    record_figure(
        "crash", "chain killed mid-Kling (guide): Kling tasks, settled after the kill", f"1, {settled:.1f} s"
    )


def test_a_chain_killed_with_no_webhook_to_wait_for_pays_again_and_says_so(stack_factory) -> None:  # noqa: ANN001
    """Under Novita's reference Kling calls no webhook: a task whose answer died with its process can
    never reach the sketch, so the next holder pays again as soon as the dead one's lease runs out, and
    the sketch and the log say so (the one documented double payment)."""
    stack: Stack = stack_factory(
        "crash-chain-reference",
        personality="reference",
        sweep_every=1.0,
        STEP_LEASE_SECONDS="3",
        RECOVERY_INTERVAL_SECONDS="1",
    )
    with stack.scheduled():
        # A first sketch, so that the project knows the forms Novita takes (as it would in production).
        stack.wait_for_status(stack.create_sketch()["id"], "complete", timeout=30)
        stack.simulator.reset()
        stack.simulator.configure(
            personality="reference", seedream_delay=0.1, video_delay=1.0, kling_accept_delay=1.5
        )
        sketch = stack.create_sketch()
        wait_for_request(stack, "kling")
        killed = kill_worker(stack.steps)
        stack.simulator.configure(kling_accept_delay=0.0)
        done = stack.wait_for(sketch["id"], lambda s: s.video_task_id is not None, timeout=40)
        settled = time.monotonic() - killed

    kling = [entry for entry in stack.simulator.ledger()["paid"] if entry["endpoint"] == "kling"]
    assert len(kling) == 2 and done.video_task_id == kling[1]["task_id"]
    assert len(done.repaid) == 1 and done.repaid[0].startswith("video: the image-to-video request sent at")
    assert stack.log_lines("paying again for a request whose answer was lost", sketch["id"])
    assert settled < 20


def test_seedream_killed_half_way_pays_again_once_its_holder_is_gone(stack_factory) -> None:  # noqa: ANN001
    """Seedream's still comes only with its answer: once the step that asked died, the still can never
    reach the sketch, and the next delivery asks again, saying so."""
    stack: Stack = stack_factory(
        "crash-seedream",
        personality="reference",
        sweep_every=1.0,
        STEP_LEASE_SECONDS="3",
        RECOVERY_INTERVAL_SECONDS="1",
    )
    with stack.scheduled():
        stack.simulator.configure(seedream_delay=2.0)
        sketch = stack.create_sketch()
        wait_for_request(stack, "seedream")
        killed = kill_worker(stack.steps)
        stack.simulator.configure(seedream_delay=0.1)
        drawn = stack.wait_for(sketch["id"], lambda s: s.status.value != "image_pending", timeout=40)
        settled = time.monotonic() - killed

    assert drawn.status.value in ("image_complete", "video_pending", "complete")
    assert stack.simulator.stats()["seedream_images"] == 2
    assert len(drawn.repaid) == 1 and drawn.repaid[0].startswith("image: the text-to-image request")
    assert settled < 20


# -------------------------------------------------------------------------------- lost answers


def test_kling_answer_lost_is_resolved_by_its_own_webhook_without_paying_twice(stack: Stack) -> None:
    stack.simulator.configure(accept_then_drop_response={"kling": 1})

    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)

    paid = [e["task_id"] for e in stack.simulator.ledger()["paid"] if e["endpoint"] == "kling"]
    assert paid == [done.video_task_id], stack.simulator.stats()
    assert done.submission_unknown is None and done.repaid == []


def test_text_to_image_answer_lost_is_resolved_by_its_own_webhook(stack: Stack) -> None:
    stack.simulator.configure(accept_then_drop_response={"txt2img": 1})

    response = stack.post_sketch({"prompt": "a moose knitting a moose"})
    body = response.json()
    done = stack.wait_for_status(body["id"], "complete", timeout=30)

    assert response.status_code == 202 and body["image_task_id"] is None
    assert done.image_task_id is not None
    assert stack.simulator.stats()["requests"]["txt2img"] == 1


def test_a_lost_answer_whose_task_never_shows_up_is_paid_again_once_after_the_grace(
    recovery_stack: Stack,
) -> None:
    """Kling's answer is lost and its webhook never comes: nothing is sent again while the task may
    still show up (the grace, 3 s here); then the request is sent once more, and the sketch says why."""
    stack = recovery_stack
    stack.simulator.configure(drop_webhooks=True, accept_then_drop_response={"kling": 1})
    sketch = stack.create_sketch()
    stack.deliver(sketch["id"], stack.finished_event(sketch["image_task_id"]))

    unknown = stack.wait_for(sketch["id"], lambda s: s.submission_unknown == "video")
    for _ in range(3):
        stack.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch["id"]))
    time.sleep(1.0)
    assert stack.kling_requests() == 1  # within the grace, however often the step comes back
    final = poll_until_final(stack, sketch["id"], timeout=30)

    assert unknown.status.value == "image_complete" and unknown.submission_webhook is True
    assert final["status"] == "complete"
    assert stack.kling_requests() == 2
    repaid = stack.stored(sketch["id"]).repaid  # type: ignore[union-attr]
    assert len(repaid) == 1 and "no task of it can reach the sketch" in repaid[0]


def test_a_sketch_that_cannot_finish_fails_once_it_is_too_old(stack_factory) -> None:  # noqa: ANN001
    stack: Stack = stack_factory("max-age", MAX_SKETCH_AGE_SECONDS="3", RECOVERY_INTERVAL_SECONDS="0.5")
    # No webhook, and task-result never answers usefully: nothing else could ever finish it.
    stack.simulator.configure(drop_webhooks=True, http_errors={"task_result": [404] * 100})
    sketch = stack.create_sketch()

    final = poll_until_final(stack, sketch["id"], timeout=20)

    assert final["status"] == "failed"
    assert "not finished within 3 s" in final["error_message"]

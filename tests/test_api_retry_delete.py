"""Retry and delete over real HTTP, on the whole stack: a failed sketch started again from its kept
still (one Kling task, no text to image), a deleted sketch gone with its media, another user's
sketch out of reach, and the operator's `delete-user`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from conftest import Stack, record_figure

from devstack.auth import Guest
from shared.sketch.model import Sketch

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "retry and delete"


def retry(stack: Stack, sketch_id: str, **kwargs: Any) -> httpx.Response:
    return stack.http.post(stack.create.url, params={"id": sketch_id, "action": "retry"}, **kwargs)


def delete(stack: Stack, sketch_id: str, **kwargs: Any) -> httpx.Response:
    return stack.http.delete(stack.create.url, params={"id": sketch_id}, **kwargs)


def counted(stack: Stack) -> dict[str, int]:
    stats = stack.simulator.stats()
    return {
        "txt2img": stats["requests"]["txt2img"] + stats["requests"]["seedream"],
        "kling": stats["tasks_created"]["kling"],
        "task_result": stats["requests"]["task_result"],
        "novita_media": stats["requests"]["media"],
        "paid": len(stack.simulator.ledger()["paid"]),
    }


def objects_left(stack: Stack, sketch: Sketch) -> int:
    names = [sketch.image_object, sketch.video_object, f"sketches/{sketch.id}/still.jpg"]
    return sum(stack.storage.object(name) is not None for name in dict.fromkeys(n for n in names if n))


# ------------------------------------------------------------------------------------------ retry


def test_a_failed_sketch_is_retried_from_its_kept_still_with_one_kling_task(stack: Stack) -> None:
    failed = stack.failed_after_its_still()
    before = counted(stack)

    response = retry(stack, failed.id)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "video_pending" and body["error_message"] is None
    assert body["video_task_id"] and body["video_task_id"] != failed.video_task_id
    assert body["image_task_id"] == failed.image_task_id and body["image_url"] == failed.image_url
    done = stack.wait_for_status(failed.id, "complete", timeout=30)
    assert stack.simulator.wait_idle(10)
    after = counted(stack)
    calls = {name: after[name] - before[name] for name in after}
    for name, value in calls.items():
        record_figure(SCENARIO, f"a retry's Novita calls: {name}", value)
    # One Kling task and one task-result that confirmed it; no text to image; the still came from the
    # bucket, so the only download from Novita is the video's copy.
    assert calls == {"txt2img": 0, "kling": 1, "task_result": 1, "novita_media": 1, "paid": 1}
    assert done.video_task_id == body["video_task_id"] and done.video_object and done.retried_at
    api = stack.get_sketch(failed.id).json()
    assert api["status"] == "complete" and api["progress"] == 100 and api["video_url"] == done.video_url


def test_a_retry_that_meets_a_novita_5xx_waits_on_its_chain_and_completes_paying_once(stack: Stack) -> None:
    failed = stack.failed_after_its_still()
    stack.simulator.configure(http_errors={"kling": [503]})

    response = retry(stack, failed.id)

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "image_complete" and response.json()["video_task_id"] is None
    done = stack.wait_for_status(failed.id, "complete", timeout=60)
    assert done.error_message is None and done.video_task_id != failed.video_task_id
    assert stack.tasks_created("kling") == 2  # the failed attempt's, and the retry's once


def test_a_sketch_that_cannot_be_retried_is_refused_saying_why(stack: Stack) -> None:
    sketch = stack.create_sketch()

    in_progress = retry(stack, sketch["id"])
    assert in_progress.status_code == 409
    assert in_progress.json()["error"]["code"] == "not_retryable"
    assert in_progress.json()["error"]["reason"] == "in_progress"

    stack.wait_for_status(sketch["id"], "complete", timeout=30)
    complete = retry(stack, sketch["id"]).json()["error"]
    assert complete["code"] == "not_retryable" and complete["reason"] == "complete"

    assert retry(stack, "0" * 32).status_code == 404
    assert retry(stack, "not-an-id").status_code == 404
    missing = stack.http.post(stack.create.url, params={"id": sketch["id"]})
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "action"
    with_body = retry(stack, sketch["id"], json={"prompt": "another"})
    assert with_body.status_code == 400 and with_body.json()["error"]["field"] == "body"
    assert stack.tasks_created("kling") == 1


def test_a_repeated_idempotency_key_answers_the_same_retry_and_pays_once(stack: Stack) -> None:
    failed = stack.failed_after_its_still()
    headers = {"Idempotency-Key": "retry-once"}

    first = retry(stack, failed.id, headers=headers)
    again = retry(stack, failed.id, headers=headers)

    assert first.status_code == again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.json()["id"] == failed.id and again.json()["video_task_id"] == first.json()["video_task_id"]
    reused = stack.post_sketch({"prompt": "something else"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert stack.tasks_created("kling") == 2  # the failed attempt's and the retry's


# ----------------------------------------------------------------------------------------- delete


def test_deleting_a_complete_sketch_leaves_no_document_and_no_object(stack: Stack) -> None:
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    assert objects_left(stack, done) == 2

    response = delete(stack, done.id)

    assert response.status_code == 204 and response.content == b""
    assert "Content-Type" not in response.headers
    documents, objects = int(stack.stored(done.id) is not None), objects_left(stack, done)
    record_figure(SCENARIO, "a deleted complete sketch: documents left", documents)
    record_figure(SCENARIO, "a deleted complete sketch: objects left", objects)
    assert (documents, objects) == (0, 0)
    assert stack.get_sketch(done.id).status_code == 404
    assert delete(stack, done.id).status_code == 404
    assert stack.http.delete(stack.create.url).json()["error"]["field"] == "id"


def test_what_novita_reports_for_a_deleted_sketch_changes_and_stores_nothing(stack: Stack) -> None:
    stack.simulator.configure(video_delay=1.5)
    sketch = stack.create_sketch()
    waiting = stack.wait_for_status(sketch["id"], "video_pending", timeout=30)

    assert delete(stack, waiting.id).status_code == 204
    assert stack.simulator.wait_idle(10)  # Kling's result is delivered to the webhook meanwhile

    assert stack.log_lines("delivery ignored", waiting.id)
    assert stack.stored(waiting.id) is None
    assert stack.storage.object(f"sketches/{waiting.id}/video.mp4") is None
    assert objects_left(stack, waiting) == 0


def test_the_preflight_allows_delete(stack: Stack) -> None:
    response = stack.http.options(stack.create.url, headers={"Origin": "https://app.example"})
    assert "DELETE" in response.headers["Access-Control-Allow-Methods"]


# ------------------------------------------------------------------------------------- many users


def test_another_users_sketch_cannot_be_read_retried_or_deleted(stack: Stack) -> None:
    failed = stack.failed_after_its_still()  # the stack's own guest made it
    other = stack.auth.sign_in_guest()

    for response in (
        stack.http.get(stack.create.url, params={"id": failed.id}, headers=other.headers),
        retry(stack, failed.id, headers=other.headers),
        delete(stack, failed.id, headers=other.headers),
    ):
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    anonymous = httpx.post(stack.create.url, params={"id": failed.id, "action": "retry"}, timeout=10)
    assert anonymous.status_code == 401
    assert stack.stored(failed.id) == failed

    assert retry(stack, failed.id).status_code == 202
    assert delete(stack, failed.id).status_code == 204


def test_the_document_is_served_without_credentials(stack: Stack) -> None:
    response = httpx.get(stack.create.url, params={"openapi": ""}, timeout=10)

    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert response.text == (ROOT / "openapi.json").read_text()


def test_delete_user_removes_each_of_a_users_sketches_and_prints_them(stack: Stack) -> None:
    assert stack.guest is not None
    user, other = stack.guest, stack.auth.sign_in_guest()
    mine = [made(stack, user, key=f"k-{n}") for n in range(2)]
    theirs = made(stack, other, key="k-0")
    done = [stack.wait_for_status(sketch_id, "complete", timeout=30) for sketch_id in [*mine, theirs]]
    kept = sum(records_of(stack, user.uid).values())
    assert set(records_of(stack, user.uid)) == {"_slots", "_daily", "_idempotency"}

    ran = subprocess.run(
        [sys.executable, "-m", "shared.ops", "delete-user", user.uid],
        env={**os.environ, **stack.env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert ran.returncode == 0, ran.stderr
    lines = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    deleted = {line["deleted"]: line["objects"] for line in lines if "deleted" in line}
    assert set(deleted) == set(mine) and all(len(objects) == 2 for objects in deleted.values())
    assert {"user": user.uid, "sketches": 2, "objects": 4, "records": kept} in lines
    # Nothing is kept about the user any more: places in progress, daily counts, idempotency keys.
    assert records_of(stack, user.uid) == {} and records_of(stack, other.uid) != {}
    assert [stack.stored(sketch_id) for sketch_id in mine] == [None, None]
    assert sum(objects_left(stack, sketch) for sketch in done[:2]) == 0
    assert stack.stored(theirs) is not None and objects_left(stack, done[2]) == 2


def records_of(stack: Stack, uid: str) -> dict[str, int]:
    """How many documents of each bookkeeping collection name the user (by uid, or as a key's scope)."""
    found = {}
    for suffix in ("_slots", "_daily", "_idempotency", "_breakers", "_novita"):
        documents = stack.db.collection(stack.collection + suffix).stream()
        count = sum(1 for d in documents if uid in (d.to_dict().get("user_id"), d.to_dict().get("scope")))
        if count:
            found[suffix] = count
    return found


def made(stack: Stack, guest: Guest, key: str) -> str:
    headers = {**guest.headers, "Idempotency-Key": key}
    response = stack.post_sketch({"prompt": "a walrus giving a TED talk about spoons"}, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])

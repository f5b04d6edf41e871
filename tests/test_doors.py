"""Only Novita, Google and the app get in: the public door takes Novita's deliveries and nothing else,
a leaked webhook URL costs little, and a captured step cannot be replayed into harm (through real
HTTP on the stack, raw sockets where a client would not send the bytes)."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import Stack, record_figure

from shared.pipeline.queue import DEAD_LETTER_SOURCE_ATTRIBUTE
from shared.pipeline.topology import TOPIC

CAPTURE = "capture"


def capture_steps(stack: Stack) -> str:
    """A pull subscription on the steps topic, as an eavesdropper with the messages would have."""
    url = f"{stack.pubsub.url}/v1/projects/{stack.project}/subscriptions/{CAPTURE}"
    stack.http.put(url, json={"topic": f"projects/{stack.project}/topics/{TOPIC}"})
    return url


def captured(stack: Stack, subscription: str, kind: str, timeout: float = 20.0) -> dict[str, Any]:
    """The first captured message of `kind`, as its push body would carry it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pulled = stack.http.post(f"{subscription}:pull", json={"maxMessages": 50}).json()
        for received in pulled.get("receivedMessages", []):
            message = received["message"]
            if message.get("attributes", {}).get("kind") == kind:
                return {"data": message["data"], "attributes": message["attributes"]}
        time.sleep(0.1)
    raise AssertionError(f"no {kind} step was published")


def push(stack: Stack, route: str, message: dict[str, Any]) -> httpx.Response:
    return stack.http.post(stack.steps.url, params={"action": route}, json={"message": message})


def test_a_thousand_deliveries_naming_one_task_publish_and_ask_novita_at_most_twice(stack: Stack) -> None:
    # No webhook of Novita's own, and a slow video: the calls counted are the still's check alone.
    stack.simulator.configure(drop_webhooks=True, video_delay=60.0)
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])
    task_results_before = stack.simulator.stats()["requests"]["task_result"]

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: stack.deliver(sketch["id"], event).status_code, range(1000)))
    took = time.monotonic() - started
    stack.wait_for_status(sketch["id"], "video_pending", timeout=30)
    time.sleep(1.0)  # any late step of the flood would have asked by now

    handed_on = len(stack.log_lines("delivery queued", sketch["id"]))
    asked = stack.simulator.stats()["requests"]["task_result"] - task_results_before
    record_figure(
        "doors",
        f"1,000 deliveries naming one task in {took:.0f} s: publishes / task-result calls",
        f"{handed_on} / {asked}",
    )
    assert set(answers) == {200} and took < 60
    assert handed_on <= 2 and asked <= 2


def test_deliveries_to_a_finished_sketch_hand_on_nothing(stack: Stack) -> None:
    sketch = stack.create_sketch()
    done = stack.wait_for_status(sketch["id"], "complete", timeout=30)
    event = stack.finished_event(done.video_task_id or "")
    # Novita's own webhooks may still be on their way, and a step they handed on may still end.
    stack.simulator.wait_idle(10)
    time.sleep(1.0)
    before = len(stack.log_lines("step done", sketch["id"]))

    answers = [stack.deliver(sketch["id"], event, stage="video").json()["outcome"] for _ in range(300)]

    assert set(answers) == {"ignored"}
    time.sleep(0.5)
    assert len(stack.log_lines("step done", sketch["id"])) == before


def test_a_captured_step_replayed_as_a_dead_letter_or_past_its_time_changes_nothing(
    stack_factory: Callable[..., Stack],
) -> None:
    """A step's lifetime is its sketch's longest life (MAX_SKETCH_AGE_SECONDS, 8 s here)."""
    stack = stack_factory("replay", MAX_SKETCH_AGE_SECONDS="8", RECOVERY_INTERVAL_SECONDS="30")
    stack.simulator.configure(drop_webhooks=True, video_delay=30.0)
    subscription = capture_steps(stack)
    sketch = stack.create_sketch()
    stack.deliver(sketch["id"], stack.finished_event(sketch["image_task_id"]))
    check = captured(stack, subscription, "check")
    healthy = stack.wait_for_status(sketch["id"], "video_pending", timeout=20)

    misrouted = push(stack, "dead_letter", check)
    forged = {
        **check,
        "attributes": {**check["attributes"], DEAD_LETTER_SOURCE_ATTRIBUTE: "x", "count": "99999"},
    }
    marked = push(stack, "dead_letter", forged)
    unchanged = stack.stored(sketch["id"])
    time.sleep(max(0.0, healthy.created_at.timestamp() + 8.5 - time.time()))
    expired = push(stack, "step", check)

    record_figure(
        "doors",
        "a captured step replayed as a dead letter (unmarked / marked) and after its expiry: answers",
        f"{misrouted.status_code} / {marked.json()['outcome']} / {expired.json()['outcome']}",
    )
    assert misrouted.status_code == 400 and misrouted.json()["error"]["code"] == "misrouted"
    assert marked.status_code == 200 and marked.json()["outcome"] == "duplicate"
    assert expired.status_code == 200 and expired.json()["outcome"] == "expired"
    assert unchanged == healthy and stack.stored(sketch["id"]).status.value == "video_pending"  # type: ignore[union-attr]


def test_an_options_while_the_step_route_drips_on_the_public_door_is_answered_at_once(stack: Stack) -> None:
    """A thread's worth of connections drip-feeding bodies to ?action=step on the public door: each
    is answered 404 at once, so none holds a thread, and a preflight goes straight through."""
    drips = []
    started = time.monotonic()
    for _ in range(32):
        sock = socket.create_connection(("127.0.0.1", stack.webhook.port), timeout=5)
        sock.sendall(
            b"POST /?action=step HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 65000\r\n\r\n{"
        )
        drips.append(sock)
    answers = [sock.recv(4096).split(b"\r\n", 1)[0] for sock in drips]
    drip_time = time.monotonic() - started
    preflight_started = time.monotonic()
    preflight = stack.http.options(stack.webhook.url, headers={"Origin": "https://app.example"})
    preflight_time = time.monotonic() - preflight_started
    for sock in drips:
        sock.close()

    record_figure(
        "doors",
        "32 drip-fed bodies on the public door's step route: answered / OPTIONS answered in",
        f"{answers.count(b'HTTP/1.1 404 NOT FOUND')} x 404 in {drip_time:.2f} s"
        f" / {preflight_time * 1000:.0f} ms",
    )
    assert answers == [b"HTTP/1.1 404 NOT FOUND"] * 32 and drip_time < 5
    assert preflight.status_code == 204 and preflight_time < 1


@pytest.fixture(scope="module")
def short_lived(stack_factory: Callable[..., Stack]) -> Stack:
    """Sketches live 60 s here: their webhook tokens an hour and a minute."""
    return stack_factory("token-age", MAX_SKETCH_AGE_SECONDS="60")


@pytest.mark.parametrize(("hours", "status"), [(0, 200), (1.1, 401)])
def test_a_webhook_token_expires_a_bounded_time_after_its_task_was_started(
    short_lived: Stack, hours: float, status: int
) -> None:
    """Tokens live MAX_SKETCH_AGE_SECONDS and an hour more: far past Novita's last retry."""
    stack = short_lived.clean()
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    event = stack.finished_event(sketch["image_task_id"])

    answer = stack.http.post(
        stack.webhook_url(sketch["id"], "image", issued=time.time() - hours * 3600), json=event
    )

    assert answer.status_code == status


def test_the_guards_own_refusals_carry_the_functions_cors_headers(stack: Stack) -> None:
    """A body over the limit is refused by the guard before the function runs; a browser must still
    be told why, not see a network error."""
    origin = "https://app.example"
    with socket.create_connection(("127.0.0.1", stack.create.port), timeout=5) as sock:
        sock.sendall(
            f"POST / HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\nContent-Type: application/json\r\n"
            "Content-Length: 999999\r\n\r\n".encode()
        )
        head = sock.recv(4096).decode("latin-1").lower()
    assert head.startswith("http/1.1 413")
    assert (
        "access-control-allow-origin: *" in head
        and "access-control-expose-headers: idempotent-replayed" in head
    )


def test_signed_pushes_reach_only_the_private_door(stack: Stack) -> None:
    body = {"message": {"data": base64.b64encode(b"{}").decode(), "attributes": {}}}
    assert stack.http.post(stack.webhook.url, params={"action": "step"}, json=body).status_code == 404
    assert stack.http.post(stack.steps.url, params={"action": "step"}, json=body).status_code == 401

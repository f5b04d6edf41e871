"""`create_sketch` over real HTTP: validation (Novita's own limits at the door), Novita refusing or
absent, GET, OPTIONS, methods."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from conftest import Stack

from devstack.processes import free_port

VALID = {"prompt": "a giraffe conducting an orchestra of teapots"}


def test_post_records_the_sketch_and_starts_text_to_image(stack: Stack) -> None:
    response = stack.post_sketch({**VALID, "width": 512, "height": 768, "duration": 10, "seed": 42})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "image_pending"
    assert body["image_task_id"]
    assert (body["width"], body["height"], body["duration"], body["seed"]) == (512, 768, 10, 42)
    assert body["video_prompt"]  # a default motion prompt when none was given
    assert body["created_at"].endswith("Z")
    stored = stack.stored(body["id"])
    assert stored is not None and stored.image_task_id == body["image_task_id"]
    assert stack.tasks_created("txt2img") == 1


def test_post_trims_the_prompt(stack: Stack) -> None:
    response = stack.post_sketch({"prompt": "   a cat in a teacup  \n"})
    assert response.status_code == 202
    assert response.json()["prompt"] == "a cat in a teacup"


INVALID_BODIES: list[tuple[str, Any, str]] = [
    ("missing prompt", {}, "prompt"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("blank prompt", {"prompt": "   \t "}, "prompt"),
    ("prompt too long", {"prompt": "x" * 1025}, "prompt"),
    ("prompt of zero-width spaces", {"prompt": "\u200b\u200b\ufeff"}, "prompt"),
    ("prompt with NUL", {"prompt": "a cat\u0000"}, "prompt"),
    ("prompt not a string", {"prompt": 12}, "prompt"),
    ("negative prompt too long", {**VALID, "negative_prompt": "x" * 1025}, "negative_prompt"),
    ("video prompt too long", {**VALID, "video_prompt": "x" * 2501}, "video_prompt"),
    ("width as string", {**VALID, "width": "720"}, "width"),
    ("width fractional", {**VALID, "width": 720.5}, "width"),
    ("height boolean", {**VALID, "height": True}, "height"),
    ("width too small", {**VALID, "width": 100}, "width"),
    ("height too large", {**VALID, "height": 100000}, "height"),
    ("area under 512x512", {**VALID, "width": 500, "height": 500}, "Seedream 3.0 needs at least 512 x 512"),
    ("ratio beyond 2.5:1", {**VALID, "width": 2048, "height": 800}, "at most 2.5:1"),
    ("duration 7", {**VALID, "duration": 7}, "duration"),
    ("duration as string", {**VALID, "duration": "5"}, "duration"),
    ("duration float", {**VALID, "duration": 5.0}, "duration"),
    ("seed below -1", {**VALID, "seed": -2}, "seed"),
    ("seed too large", {**VALID, "seed": 2147483648}, "seed"),
    ("unknown field", {**VALID, "model": "other"}, "model"),
]


@pytest.mark.parametrize(("case", "body", "field"), INVALID_BODIES, ids=[c[0] for c in INVALID_BODIES])
def test_invalid_body_is_refused_naming_the_field_and_changes_nothing(
    stack: Stack, case: str, body: Any, field: str
) -> None:
    response = stack.post_sketch(body)

    assert response.status_code == 400, case
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert field in error["message"]
    assert stack.stored_count() == 0
    assert stack.simulator.stats()["requests"]["txt2img"] == 0


def test_length_errors_speak_of_characters(stack: Stack) -> None:
    error = stack.post_sketch({"prompt": "é" * 1025}).json()["error"]
    assert error["message"] == "prompt: String should have at most 1024 characters"


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"a string"',
        b"",
        b"\xff\xfe\x00",
        b'{"prompt": "p", "seed": NaN}',
        b'{"prompt": "p", "seed": Infinity}',
        b'{"prompt": "p", "prompt": "q"}',
        '{"prompt": "p"}'.encode("utf-16"),
        '{"prompt": "p"}'.encode("utf-32"),
    ],
    ids=[
        "broken",
        "array",
        "string",
        "empty",
        "bytes",
        "nan",
        "infinity",
        "duplicate-key",
        "utf-16",
        "utf-32",
    ],
)
def test_body_that_is_not_a_json_object_is_refused(stack: Stack, raw: bytes) -> None:
    response = stack.http.post(stack.create.url, content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert stack.stored_count() == 0


def test_body_over_64_kib_is_refused_with_413(stack: Stack) -> None:
    raw = json.dumps({"prompt": "p", "negative_prompt": "x" * (65 * 1024)}).encode()
    response = stack.http.post(stack.create.url, content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert stack.stored_count() == 0


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-16", None],
    ids=["text", "form", "utf-16", "none"],
)
def test_a_body_that_is_not_declared_json_in_utf8_is_415(stack: Stack, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = stack.http.post(stack.create.url, content=json.dumps(VALID).encode(), headers=headers)

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert stack.stored_count() == 0


def test_json_declared_with_utf8_charset_is_accepted(stack: Stack) -> None:
    response = stack.http.post(
        stack.create.url,
        content=json.dumps(VALID).encode(),
        headers={"Content-Type": "Application/JSON; charset=UTF-8"},
    )
    assert response.status_code == 202


def test_novita_refusal_fails_the_sketch_and_answers_502_with_the_reason(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"txt2img": [401]})

    response = stack.post_sketch(VALID)

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "novita_rejected" and error["reason"] == "INVALID_API_KEY"
    sketch = stack.stored(error["sketch"]["id"])
    assert sketch is not None and sketch.status.value == "failed"
    assert sketch.error_message is not None and "INVALID_API_KEY" in sketch.error_message


def test_novita_out_of_reach_fails_the_sketch_and_answers_503(stack_factory) -> None:  # noqa: ANN001
    stack = stack_factory("novita-down", NOVITA_BASE_URL=f"http://127.0.0.1:{free_port()}")

    response = stack.post_sketch(VALID)

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "novita_unavailable"
    sketch = stack.stored(error["sketch"]["id"])
    assert sketch is not None and sketch.status.value == "failed"
    assert sketch.error_message and "could not be reached" in sketch.error_message
    assert stack.stored_count() == 1


def test_novita_busy_twice_then_accepting_is_retried_without_a_second_task(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"txt2img": [429, 429]})

    response = stack.post_sketch(VALID)

    assert response.status_code == 202
    assert stack.tasks_created("txt2img") == 1
    assert stack.simulator.stats()["requests"]["txt2img"] == 3


def test_novita_500_is_not_resent_and_the_sketch_fails(stack: Stack) -> None:
    stack.simulator.configure(http_errors={"txt2img": [500]})

    response = stack.post_sketch(VALID)

    assert response.status_code == 503
    assert stack.simulator.stats()["requests"]["txt2img"] == 1
    assert response.json()["error"]["sketch"]["status"] == "failed"


def test_get_returns_the_sketch_and_404_for_an_unknown_id(stack: Stack) -> None:
    created = stack.post_sketch(VALID).json()

    found = stack.get_sketch(created["id"])
    missing = stack.get_sketch("no-such-sketch")
    no_id = stack.http.get(stack.create.url, params={"id": ""})

    assert found.status_code == 200
    assert found.json()["id"] == created["id"]
    assert set(found.json()) >= {
        "id",
        "status",
        "prompt",
        "negative_prompt",
        "video_prompt",
        "width",
        "height",
        "duration",
        "seed",
        "image_task_id",
        "video_task_id",
        "image_url",
        "image_url_expires_at",
        "video_url",
        "video_url_expires_at",
        "progress",
        "eta_seconds",
        "error_message",
        "created_at",
        "updated_at",
        "completed_at",
    }
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert no_id.status_code == 400


def test_options_answers_the_cors_preflight(stack: Stack) -> None:
    response = stack.http.options(
        stack.create.url,
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_other_methods_answer_405(stack: Stack, method: str) -> None:
    response = stack.http.request(method, stack.create.url, json=VALID)

    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST", "DELETE", "OPTIONS"}
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert stack.stored_count() == 0


def test_preflight_without_an_origin_still_names_the_allowed_origin(stack: Stack) -> None:
    response = stack.http.options(stack.create.url)

    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_deeply_nested_json_is_a_400_not_a_crash(stack: Stack) -> None:
    response = stack.http.post(
        stack.create.url, content=b"[" * 60000, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_text_that_cannot_be_stored_is_refused_naming_the_field(stack: Stack) -> None:
    response = stack.http.post(
        stack.create.url, content=b'{"prompt": "a cat \\ud800"}', headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["field"] == "prompt"
    assert stack.stored_count() == 0


@pytest.mark.parametrize("sketch_id", ["__x__", ".", "..", "a" * 1500, "0" * 31, "Z" * 32])
def test_get_of_an_id_that_cannot_exist_is_404(stack: Stack, sketch_id: str) -> None:
    response = stack.get_sketch(sketch_id)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert len(response.json()["error"]["message"]) < 120  # a long id is not echoed whole


def test_a_refusal_about_the_request_moves_text_to_image_to_seedream_and_is_remembered(stack_factory) -> None:  # noqa: ANN001
    """The guide's async text-to-image form refused (a 4xx that started no task): the still is made
    by Seedream 3.0's synchronous endpoint, as a queued step, and the next sketch goes straight to it."""
    stack = stack_factory("form-switch")
    stack.simulator.configure(http_errors={"txt2img": [400]})

    first = stack.post_sketch(VALID)
    second = stack.post_sketch(VALID)
    done = [stack.wait_for_status(a.json()["id"], "complete", timeout=40) for a in (first, second)]

    assert first.status_code == second.status_code == 202
    assert first.json()["image_task_id"] is None and second.json()["image_task_id"] is None
    stats = stack.simulator.stats()
    assert stats["requests"]["txt2img"] == 1 and stats["seedream_images"] == 2  # the refused first try, once
    assert all(d.image_form == "sync" for d in done)


@pytest.mark.parametrize("function", ["create", "webhook"])
def test_both_functions_refuse_an_announced_300_mib_body_before_it_is_sent(
    stack: Stack, function: str
) -> None:
    """The body guard is installed under each real function, not only under the test's fixture."""
    server = getattr(stack, function)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /?action=step HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 314572800\r\n\r\n{"
        )
        received = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            received += chunk
        answer = received.decode("latin-1")

    assert answer.startswith("HTTP/1.1 413") and "body_too_large" in answer
    assert "connection: close" in answer.lower()
    assert stack.stored_count() == 0

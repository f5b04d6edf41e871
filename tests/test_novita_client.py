"""The Novita client: what it sends, and how it types and retries Novita's answers."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from shared.config import settings_from
from shared.novita_client import NovitaClient, NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable

ENV = {
    "NOVITA_API_KEY": "key-1",
    "WEBHOOK_URL": "https://hooks.test/",
    "WEBHOOK_SECRET": "s",
    "GOOGLE_CLOUD_PROJECT": "p",
    "NOVITA_BASE_URL": "http://novita.test",
}
Handler = Callable[[httpx.Request], httpx.Response]


def client_with(handler: Handler, **env: str) -> tuple[NovitaClient, list[httpx.Request], list[float]]:
    requests: list[httpx.Request] = []
    sleeps: list[float] = []

    def record(request: httpx.Request) -> httpx.Response:
        request.read()
        requests.append(request)
        return handler(request)

    client = NovitaClient(
        settings_from({**ENV, **env}), transport=httpx.MockTransport(record), sleep=sleeps.append
    )
    return client, requests, sleeps


def start_image(client: NovitaClient) -> str:
    return client.start_text_to_image(
        prompt="p",
        negative_prompt="n",
        width=720,
        height=1280,
        seed=-1,
        webhook_url="https://hooks.test/?sketch=a",
    )


def test_text_to_image_sends_the_nested_body_novita_requires() -> None:
    client, requests, _ = client_with(lambda r: httpx.Response(200, json={"task_id": "t-1"}))

    assert start_image(client) == "t-1"
    body = json.loads(requests[0].content)
    assert requests[0].url.path == "/v3/async/txt2img"
    assert requests[0].headers["Authorization"] == "Bearer key-1"
    assert body["extra"] == {
        "response_image_type": "jpeg",
        "webhook": {"url": "https://hooks.test/?sketch=a"},
    }
    assert body["request"] == {
        "model_name": "seedream_3_0",
        "prompt": "p",
        "negative_prompt": "n",
        "width": 720,
        "height": 1280,
        "image_num": 1,
        "steps": 20,
        "guidance_scale": 7.5,
        "sampler_name": "Euler a",
        "seed": -1,
    }


def test_test_mode_and_model_come_from_configuration() -> None:
    client, requests, _ = client_with(
        lambda r: httpx.Response(200, json={"task_id": "t"}),
        NOVITA_WEBHOOK_TEST_MODE="TASK_STATUS_FAILED",
        NOVITA_T2I_MODEL="sd_xl_base_1.0.safetensors",
    )
    start_image(client)
    body = json.loads(requests[0].content)
    assert body["extra"]["webhook"]["test_mode"] == {
        "enabled": True,
        "return_task_status": "TASK_STATUS_FAILED",
    }
    assert body["request"]["model_name"] == "sd_xl_base_1.0.safetensors"


def test_image_to_video_is_multipart_with_the_still_as_a_file() -> None:
    client, requests, _ = client_with(lambda r: httpx.Response(200, json={"task_id": "v-1"}))

    task_id = client.start_image_to_video(
        image=b"\xff\xd8\xffjpeg-bytes",
        image_filename="still.jpg",
        image_mime="image/jpeg",
        prompt="zoom",
        negative_prompt="blur",
        duration=10,
        webhook_url="https://hooks.test/?stage=video",
    )

    assert task_id == "v-1"
    request = requests[0]
    assert request.url.path == "/v3/async/kling-v2.1-i2v-master"
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    content = request.content
    assert b'name="image"; filename="still.jpg"' in content and b"\xff\xd8\xffjpeg-bytes" in content
    assert b'name="duration"\r\n\r\n10\r\n' in content
    assert b'name="cfg_scale"\r\n\r\n0.5\r\n' in content
    assert b'{"webhook": {"url": "https://hooks.test/?stage=video"}}' in content


def test_refusal_carries_novitas_code_reason_and_message() -> None:
    client, requests, _ = client_with(
        lambda r: httpx.Response(400, json={"code": 400, "reason": "INVALID_REQUEST_BODY", "message": "bad"})
    )
    with pytest.raises(NovitaRejected) as caught:
        start_image(client)
    assert (caught.value.status_code, caught.value.code, caught.value.reason, caught.value.message) == (
        400,
        400,
        "INVALID_REQUEST_BODY",
        "bad",
    )
    assert caught.value.describe() == "Novita 400 INVALID_REQUEST_BODY: bad"
    assert len(requests) == 1


def test_429_is_retried_after_retry_after_and_then_succeeds() -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "2"}, json={"reason": "RATE_LIMIT_EXCEEDED"}),
            httpx.Response(200, json={"task_id": "t"}),
        ]
    )
    client, requests, sleeps = client_with(lambda r: next(answers))

    assert start_image(client) == "t"
    assert len(requests) == 2 and sleeps == [2.0]


def test_5xx_on_a_post_is_never_resent() -> None:
    client, requests, _ = client_with(
        lambda r: httpx.Response(500, json={"reason": "INTERNAL_ERROR", "message": "x"})
    )
    with pytest.raises(NovitaUnavailable):
        start_image(client)
    assert len(requests) == 1


def test_connection_refused_is_retried_a_bounded_number_of_times() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client, requests, _ = client_with(refuse)
    with pytest.raises(NovitaUnavailable):
        start_image(client)
    assert len(requests) == 3


@pytest.mark.parametrize("fault", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
def test_no_answer_after_sending_is_an_unknown_outcome_and_not_resent(
    fault: type[httpx.TransportError],
) -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise fault("gone", request=request)

    client, requests, _ = client_with(drop)
    with pytest.raises(NovitaOutcomeUnknown):
        start_image(client)
    assert len(requests) == 1


def test_200_without_a_task_id_is_an_unknown_outcome() -> None:
    client, _, _ = client_with(lambda r: httpx.Response(200, json={"oops": True}))
    with pytest.raises(NovitaOutcomeUnknown):
        start_image(client)


def test_task_result_retries_503_and_504_then_reads_the_result() -> None:
    answers = iter(
        [
            httpx.Response(503),
            httpx.Response(504),
            httpx.Response(
                200,
                json={
                    "task": {"task_id": "t", "status": "TASK_STATUS_SUCCEED"},
                    "images": [{"image_url": "https://cdn.test/i.jpg", "image_url_ttl": "10"}],
                },
            ),
        ]
    )
    client, requests, sleeps = client_with(lambda r: next(answers))

    result = client.task_result("t")

    assert result.images[0].image_url_ttl == 10
    assert len(requests) == 3 and len(sleeps) == 2
    assert requests[0].url.params["task_id"] == "t"


def test_task_result_gives_up_within_its_attempts() -> None:
    client, requests, _ = client_with(lambda r: httpx.Response(503, json={"reason": "SERVICE_UNAVAILABLE"}))
    with pytest.raises(NovitaUnavailable):
        client.task_result("t")
    assert len(requests) == 4


def test_task_result_does_not_retry_a_404() -> None:
    client, requests, _ = client_with(
        lambda r: httpx.Response(404, json={"reason": "TASK_NOT_FOUND", "message": "no"})
    )
    with pytest.raises(NovitaRejected):
        client.task_result("t")
    assert len(requests) == 1


@pytest.mark.parametrize("status", [201, 202])
def test_any_2xx_with_a_task_id_is_a_started_task(status: int) -> None:
    client, _, _ = client_with(lambda r: httpx.Response(status, json={"task_id": "t-2"}))
    assert start_image(client) == "t-2"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_5xx_on_a_post_is_unavailable_without_a_novita_body_too(status: int) -> None:
    client, requests, _ = client_with(lambda r: httpx.Response(status, text="upstream trouble"))
    with pytest.raises(NovitaUnavailable) as caught:
        start_image(client)
    assert caught.value.status_code == status
    assert len(requests) == 1


def test_unreadable_task_result_does_not_quote_its_urls() -> None:
    secret_url = "https://cdn.test/still.jpg?X-Amz-Signature=abc"
    client, _, _ = client_with(
        lambda r: httpx.Response(200, json={"task": {"task_id": "t"}, "images": [{"image_url": secret_url}]})
    )
    with pytest.raises(NovitaUnavailable) as caught:
        client.task_result("t")
    assert "X-Amz-Signature" not in str(caught.value)

"""The Novita client: what it sends in each form, how it types and retries Novita's answers, when it
moves to the other form, and that no call outlives its deadline."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError

from novita_simulator import NovitaSimulator, SimulatorConfig
from shared.core.config import settings_from
from shared.core.deadline import Deadline
from shared.media.still import Still, inspect_still
from shared.novita.client import MIN_POST_SECONDS, NovitaClient
from shared.novita.errors import NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable
from tests.conftest import Scripted

ENV = {
    "NOVITA_API_KEY": "key-1",
    "WEBHOOK_URL": "https://hooks.test/",
    "WEBHOOK_SECRET": "s",
    "GOOGLE_CLOUD_PROJECT": "p",
    "NOVITA_BASE_URL": "http://novita.test",
}
STILL = Still(data=b"\xff\xd8\xffjpeg-bytes", format="jpeg", width=720, height=1280)
STILL_URL = "https://cdn.test/still.jpg?X-Amz-Signature=abc"
# How long past its deadline a call may take to give up: scheduling, not waiting on the server.
MARGIN = 0.5


def ample() -> Deadline:
    return Deadline.after(30)


def client_for(script: Scripted, **env: str) -> tuple[NovitaClient, list[float]]:
    sleeps: list[float] = []
    client = NovitaClient(
        settings_from({**ENV, **env}), transport=httpx.MockTransport(script), sleep=sleeps.append
    )
    return client, sleeps


def error(status: int, reason: str | None = None, message: str = "refused") -> httpx.Response:
    """An error answer in Novita's `{code, reason, message, metadata}` form."""
    body = {"code": status, "message": message, "metadata": {}}
    return httpx.Response(status, json=body if reason is None else {**body, "reason": reason})


def accepted(task_id: str = "t-1") -> httpx.Response:
    return httpx.Response(200, json={"task_id": task_id})


def start_image(client: NovitaClient, *, negative_prompt: str = "n", deadline: Deadline | None = None) -> str:
    return client.start_text_to_image(
        prompt="p",
        negative_prompt=negative_prompt,
        width=720,
        height=1280,
        seed=-1,
        webhook_url="https://hooks.test/?sketch=a",
        deadline=deadline or ample(),
    )


def start_video(
    client: NovitaClient,
    *,
    still: Still = STILL,
    still_url: str = STILL_URL,
    negative_prompt: str = "blur",
    deadline: Deadline | None = None,
    sent: list[str] | None = None,
) -> tuple[str, str]:
    return client.start_image_to_video(
        still=still,
        still_url=still_url,
        prompt="zoom",
        negative_prompt=negative_prompt,
        duration=10,
        webhook_url="https://hooks.test/?stage=video",
        deadline=deadline or ample(),
        sending=(sent if sent is not None else []).append,
    )


def is_multipart(request: httpx.Request) -> bool:
    return request.headers["Content-Type"].startswith("multipart/form-data; boundary=")


def is_json(request: httpx.Request) -> bool:
    return request.headers["Content-Type"] == "application/json"


# ------------------------------------------------------------------------------ text to image


def test_text_to_image_sends_the_nested_body_novita_requires() -> None:
    script = Scripted(accepted("t-1"))
    client, _ = client_for(script)

    assert start_image(client) == "t-1"
    request = script.requests[0]
    body = json.loads(request.content)
    assert request.url.path == "/v3/async/txt2img"
    assert request.headers["Authorization"] == "Bearer key-1"
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


def test_an_empty_negative_prompt_is_left_out_of_text_to_image() -> None:
    script = Scripted(accepted())
    client, _ = client_for(script)

    start_image(client, negative_prompt="")

    assert "negative_prompt" not in json.loads(script.requests[0].content)["request"]


def test_test_mode_and_model_come_from_configuration() -> None:
    script = Scripted(accepted())
    client, _ = client_for(
        script, NOVITA_WEBHOOK_TEST_MODE="TASK_STATUS_FAILED", NOVITA_T2I_MODEL="sd_xl_base_1.0.safetensors"
    )
    start_image(client)
    body = json.loads(script.requests[0].content)
    assert body["extra"]["webhook"]["test_mode"] == {
        "enabled": True,
        "return_task_status": "TASK_STATUS_FAILED",
    }
    assert body["request"]["model_name"] == "sd_xl_base_1.0.safetensors"


# ------------------------------------------------------------------------------------ Seedream


def test_seedream_sends_the_references_body_and_returns_the_first_url() -> None:
    script = Scripted(
        httpx.Response(
            200,
            json={
                "image_urls": ["https://cdn.test/a.jpeg", "https://cdn.test/b.jpeg"],
                "binary_data_base64": [],
            },
        )
    )
    client, _ = client_for(script)

    url = client.seedream(prompt="a walrus", width=720, height=1280, seed=7, deadline=ample())

    assert url == "https://cdn.test/a.jpeg"
    request = script.requests[0]
    assert request.url.path == "/v3/seedream-3-0-txt2img"
    assert request.headers["Authorization"] == "Bearer key-1"
    assert json.loads(request.content) == {
        "model": "seedream-3-0-t2i-250415",
        "prompt": "a walrus",
        "size": "720x1280",
        "seed": 7,
        "response_format": "url",
        "watermark": False,
    }


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"image_urls": [], "binary_data_base64": ["aGk="]}),
        httpx.Response(200, json={"images": [{"image_url": "https://cdn.test/a.jpeg"}]}),
        httpx.Response(200, json={"image_urls": [""]}),
        httpx.Response(200, json={"image_urls": ["https://cdn.test/" + "a" * 9000]}),
        httpx.Response(200, json={"image_urls": None}),
        httpx.Response(200, json=["https://cdn.test/a.jpeg"]),
        httpx.Response(200, text="<html>ok</html>"),
    ],
)
def test_seedream_without_a_usable_url_is_an_unknown_outcome_and_not_resent(answer: httpx.Response) -> None:
    script = Scripted(answer)
    client, _ = client_for(script)
    with pytest.raises(NovitaOutcomeUnknown):
        client.seedream(prompt="p", width=720, height=1280, seed=-1, deadline=ample())
    assert len(script.requests) == 1


# ---------------------------------------------------------------------------- image to video


def test_image_to_video_is_multipart_with_the_still_as_a_file_in_the_guides_form() -> None:
    script = Scripted(accepted("v-1"))
    client, _ = client_for(script)

    assert start_video(client) == ("v-1", "guide")

    request = script.requests[0]
    assert request.url.path == "/v3/async/kling-v2.1-i2v-master"
    assert is_multipart(request)
    content = request.content
    assert b'name="image"; filename="still.jpg"' in content and b"\xff\xd8\xffjpeg-bytes" in content
    assert b"Content-Type: image/jpeg" in content
    assert b'name="duration"\r\n\r\n10\r\n' in content
    assert b'name="cfg_scale"\r\n\r\n0.5\r\n' in content
    assert b'{"webhook": {"url": "https://hooks.test/?stage=video"}}' in content
    assert STILL_URL.encode() not in content  # the guide's form carries the bytes, not the link


def test_the_references_form_is_json_with_the_stills_url() -> None:
    script = Scripted(accepted("v-1"))
    client, _ = client_for(script)
    client.remember("image_to_video", "reference")

    assert start_video(client) == ("v-1", "reference")

    request = script.requests[0]
    assert request.url.path == "/v3/async/kling-v2.1-i2v-master"
    assert is_json(request)
    assert json.loads(request.content) == {
        "image": STILL_URL,
        "prompt": "zoom",
        "negative_prompt": "blur",
        "duration": "10",
        "guidance_scale": 0.5,
    }


def test_an_empty_negative_prompt_is_left_out_of_klings_json() -> None:
    script = Scripted(accepted())
    client, _ = client_for(script)
    client.remember("image_to_video", "reference")

    start_video(client, negative_prompt="")

    assert "negative_prompt" not in json.loads(script.requests[0].content)


def test_a_refused_guide_form_moves_to_json_which_is_remembered() -> None:
    script = Scripted(error(400, "INVALID_REQUEST_BODY"), accepted("v-1"), accepted("v-2"))
    client, _ = client_for(script)
    sent: list[str] = []

    assert start_video(client, sent=sent) == ("v-1", "reference")
    assert client.form("image_to_video") == "reference"
    assert start_video(client, sent=sent) == ("v-2", "reference")

    # The refused multipart, the JSON that worked, then straight to JSON; the caller told of each.
    assert [is_multipart(r) for r in script.requests] == [True, False, False]
    assert sent == ["guide", "reference", "reference"]
    assert all(is_json(r) for r in script.requests[1:])


def test_a_refused_remembered_form_moves_back_to_the_other_once() -> None:
    script = Scripted(error(415, None), accepted("v-1"))
    client, _ = client_for(script)
    client.remember("image_to_video", "reference")

    assert start_video(client) == ("v-1", "guide")

    assert [is_json(r) for r in script.requests] == [True, False]
    assert client.form("image_to_video") == "guide"


def test_when_both_forms_are_refused_both_refusals_are_told_and_nothing_is_remembered() -> None:
    """Which refusal was about the still and which about the form is not known (a still Novita could
    not download is a 400 too), so the reason a sketch fails with names both."""
    script = Scripted(
        error(400, "INVALID_REQUEST_BODY", "image: could not download the still: HTTP 403"),
        error(422, None, "Content-Type must be application/json"),
    )
    client, _ = client_for(script)

    with pytest.raises(NovitaRejected) as caught:
        start_video(client)

    assert caught.value.status_code == 422 and caught.value.message == (
        "Content-Type must be application/json (the guide form before it: Novita 400 "
        "INVALID_REQUEST_BODY: image: could not download the still: HTTP 403)"
    )
    assert len(script.requests) == 2
    assert client.form("image_to_video") == "guide"


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        (error(400, "BILLING_BALANCE_NOT_ENOUGH"), NovitaRejected),
        (error(403, "NOT_ENOUGH_BALANCE"), NovitaRejected),
        (error(403, "INVALID_API_KEY"), NovitaRejected),
        (error(400, "MISSING_API_KEY"), NovitaRejected),
        (error(400, "ILLEGAL_PROMPT"), NovitaRejected),
        (error(401, None), NovitaRejected),
        (error(500, "INTERNAL_ERROR"), NovitaUnavailable),
        (httpx.Response(502, text="bad gateway"), NovitaUnavailable),
        (error(503, "SERVICE_UNAVAILABLE"), NovitaUnavailable),
        (httpx.ReadTimeout("timed out"), NovitaOutcomeUnknown),
        (httpx.WriteTimeout("timed out"), NovitaOutcomeUnknown),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), NovitaOutcomeUnknown),
        (httpx.ReadError("connection reset"), NovitaOutcomeUnknown),
    ],
)
def test_kling_keeps_its_form_when_the_refusal_or_fault_is_not_about_the_form(
    answer: httpx.Response | Exception, raised: type[Exception]
) -> None:
    script = Scripted(answer, accepted("never"))
    client, _ = client_for(script)

    with pytest.raises(raised):
        start_video(client)

    assert len(script.requests) == 1
    assert client.form("image_to_video") == "guide"


def test_a_rate_limited_kling_request_is_retried_in_its_own_form_only() -> None:
    script = Scripted(error(429, "RATE_LIMIT_EXCEEDED"))
    client, sleeps = client_for(script)

    with pytest.raises(NovitaUnavailable) as caught:
        start_video(client)

    assert caught.value.status_code == 429
    assert len(script.requests) == 3 and all(is_multipart(r) for r in script.requests)
    assert len(sleeps) == 2
    assert client.form("image_to_video") == "guide"


# ------------------------------------------------------------------------------------ errors


def test_refusal_carries_novitas_code_reason_and_message() -> None:
    script = Scripted(
        httpx.Response(400, json={"code": 400, "reason": "INVALID_REQUEST_BODY", "message": "bad"})
    )
    client, _ = client_for(script)
    with pytest.raises(NovitaRejected) as caught:
        start_image(client)
    assert (caught.value.status_code, caught.value.code, caught.value.reason, caught.value.message) == (
        400,
        400,
        "INVALID_REQUEST_BODY",
        "bad",
    )
    assert caught.value.describe() == "Novita 400 INVALID_REQUEST_BODY: bad"
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("answer", "is_balance", "refuses_form"),
    [
        (error(400, "BILLING_BALANCE_NOT_ENOUGH"), True, False),  # Novita's reference
        (error(403, "NOT_ENOUGH_BALANCE"), True, False),  # seen in practice
        (error(400, "INVALID_REQUEST_BODY"), False, True),
        (error(404, None), False, True),
        (error(405, "METHOD_NOT_ALLOWED"), False, True),
        (error(422, None), False, True),
        (error(403, "INVALID_API_KEY"), False, False),
        (error(403, "FEATURE_NOT_ALLOWED"), False, False),
        (error(400, "ILLEGAL_IMAGE_CONTENT"), False, False),
        (error(409, "CONFLICT"), False, False),
    ],
)
def test_what_a_refusal_says_about_the_balance_and_the_form(
    answer: httpx.Response, is_balance: bool, refuses_form: bool
) -> None:
    client, _ = client_for(Scripted(answer))
    with pytest.raises(NovitaRejected) as caught:
        start_image(client)
    assert (caught.value.is_balance, caught.value.refuses_form) == (is_balance, refuses_form)


def test_error_texts_are_cut_and_storable() -> None:
    body = (
        b'{"code": 400, "reason": "BAD\\ud800'
        + b"R" * 200
        + b'", "message": "m\\ud800'
        + b"x" * 10_000
        + b'"}'
    )
    client, _ = client_for(Scripted(httpx.Response(400, content=body)))

    with pytest.raises(NovitaRejected) as caught:
        start_image(client)

    described = caught.value.describe()
    described.encode("utf-8")  # a lone surrogate would make the sketch unstorable
    assert len(str(caught.value)) <= 500 and len(caught.value.reason or "") <= 64
    assert len(described) < 600


def test_429_is_retried_after_retry_after_and_then_succeeds() -> None:
    script = Scripted(
        httpx.Response(429, headers={"Retry-After": "2"}, json={"reason": "RATE_LIMIT_EXCEEDED"}),
        accepted("t"),
    )
    client, sleeps = client_for(script)

    assert start_image(client) == "t"
    assert len(script.requests) == 2 and sleeps == [2.0]


def test_429_is_not_retried_when_the_wait_would_pass_the_deadline() -> None:
    script = Scripted(
        httpx.Response(429, headers={"Retry-After": "1"}, json={"reason": "RATE_LIMIT_EXCEEDED"}),
        accepted("t"),
    )
    client, sleeps = client_for(script)

    with pytest.raises(NovitaUnavailable):
        start_image(client, deadline=Deadline.after(MIN_POST_SECONDS + 0.5))
    assert len(script.requests) == 1 and sleeps == []


def test_5xx_on_a_post_is_never_resent() -> None:
    script = Scripted(httpx.Response(500, json={"reason": "INTERNAL_ERROR", "message": "x"}))
    client, _ = client_for(script)
    with pytest.raises(NovitaUnavailable):
        start_image(client)
    assert len(script.requests) == 1


def test_connection_refused_is_retried_a_bounded_number_of_times() -> None:
    script = Scripted(httpx.ConnectError("refused"))
    client, _ = client_for(script)
    with pytest.raises(NovitaUnavailable):
        start_image(client)
    assert len(script.requests) == 3


@pytest.mark.parametrize("fault", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError])
def test_no_answer_after_sending_is_an_unknown_outcome_and_not_resent(
    fault: type[httpx.TransportError],
) -> None:
    script = Scripted(fault("gone"))
    client, _ = client_for(script)
    with pytest.raises(NovitaOutcomeUnknown):
        start_image(client)
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"oops": True},
        {"task_id": ""},
        {"task_id": "a b"},
        {"task_id": "t\u00e9"},
        {"task_id": "x" * 129},
        {"task_id": 5},
        [],
    ],
)
def test_200_without_a_usable_task_id_is_an_unknown_outcome(body: object) -> None:
    client, _ = client_for(Scripted(httpx.Response(200, json=body)))
    with pytest.raises(NovitaOutcomeUnknown):
        start_image(client)


@pytest.mark.parametrize(("status", "task_id"), [(200, "x" * 128), (201, "t-2"), (202, "t-2")])
def test_any_2xx_with_a_task_id_is_a_started_task(status: int, task_id: str) -> None:
    client, _ = client_for(Scripted(httpx.Response(status, json={"task_id": task_id})))
    assert start_image(client) == task_id


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_5xx_on_a_post_is_unavailable_without_a_novita_body_too(status: int) -> None:
    script = Scripted(httpx.Response(status, text="upstream trouble"))
    client, _ = client_for(script)
    with pytest.raises(NovitaUnavailable) as caught:
        start_image(client)
    assert caught.value.status_code == status
    assert len(script.requests) == 1


# -------------------------------------------------------------------------------- task-result


def test_task_result_retries_503_and_504_then_reads_the_result() -> None:
    script = Scripted(
        httpx.Response(503),
        httpx.Response(504),
        httpx.Response(
            200,
            json={
                "task": {"task_id": "t", "status": "TASK_STATUS_SUCCEED"},
                "images": [{"image_url": "https://cdn.test/i.jpg", "image_url_ttl": "10"}],
            },
        ),
    )
    client, sleeps = client_for(script)

    result = client.task_result("t", ample())

    assert result.images[0].image_url_ttl == 10
    assert len(script.requests) == 3 and len(sleeps) == 2
    assert script.requests[0].url.params["task_id"] == "t"
    assert script.requests[0].headers["Authorization"] == "Bearer key-1"


def test_task_result_gives_up_within_its_attempts() -> None:
    script = Scripted(httpx.Response(503, json={"reason": "SERVICE_UNAVAILABLE"}))
    client, _ = client_for(script)
    with pytest.raises(NovitaUnavailable):
        client.task_result("t", ample())
    assert len(script.requests) == 4


def test_task_result_does_not_wait_past_its_deadline_for_a_retry() -> None:
    script = Scripted(httpx.Response(503, headers={"Retry-After": "5"}), httpx.Response(200, json={}))
    client, sleeps = client_for(script)
    with pytest.raises(NovitaUnavailable):
        client.task_result("t", Deadline.after(1))
    assert len(script.requests) == 1 and sleeps == []


def test_task_result_does_not_retry_a_404() -> None:
    script = Scripted(httpx.Response(404, json={"reason": "TASK_NOT_FOUND", "message": "no"}))
    client, _ = client_for(script)
    with pytest.raises(NovitaRejected):
        client.task_result("t", ample())
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"images": [{"image_url": STILL_URL}]}),
        httpx.Response(200, json={"task": "t", "images": [{"image_url": STILL_URL}]}),
        httpx.Response(200, json=[{"image_url": STILL_URL}]),
        httpx.Response(200, text=f"<html>{STILL_URL}</html>"),
    ],
)
def test_a_task_result_without_a_task_is_unavailable_and_does_not_quote_its_urls(
    answer: httpx.Response,
) -> None:
    client, _ = client_for(Scripted(answer))
    with pytest.raises(NovitaUnavailable) as caught:
        client.task_result("t", ample())
    assert "X-Amz-Signature" not in str(caught.value)


@pytest.mark.parametrize(
    "task",
    [
        {"task_id": "t"},
        {"task_id": "t", "status": "S" * 100_000},
        {"task_id": "t t", "status": "TASK_STATUS_SUCCEED"},
    ],
)
def test_a_task_that_breaks_a_bound_is_refused_for_good(task: dict[str, str]) -> None:
    client, _ = client_for(Scripted(httpx.Response(200, json={"task": task})))
    with pytest.raises(ValidationError):
        client.task_result("t", ample())


# ----------------------------------------------------------------------------------- deadlines


@pytest.fixture
def silent_novita() -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback server that takes every connection and request, and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    taken: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                taken.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, name="silent-novita", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", taken
    stop.set()
    thread.join(1)
    for connection in taken:
        connection.close()
    listener.close()


def silent_client(base_url: str) -> NovitaClient:
    return NovitaClient(settings_from({**ENV, "NOVITA_BASE_URL": base_url}))


def test_seedream_waits_no_longer_than_its_deadline(silent_novita: tuple[str, list[socket.socket]]) -> None:
    base_url, taken = silent_novita
    seconds = MIN_POST_SECONDS + 0.5  # Seedream alone would wait 100 s for its still
    started = time.monotonic()

    with closing(silent_client(base_url)) as client, pytest.raises(NovitaOutcomeUnknown):
        client.seedream(prompt="p", width=720, height=1280, seed=-1, deadline=Deadline.after(seconds))

    assert time.monotonic() - started < seconds + MARGIN
    assert len(taken) == 1


def test_kling_waits_no_longer_than_its_deadline_and_tries_no_other_form(
    silent_novita: tuple[str, list[socket.socket]],
) -> None:
    base_url, taken = silent_novita
    seconds = MIN_POST_SECONDS + 0.5  # Kling would wait 30 s for its task id
    started = time.monotonic()

    with closing(silent_client(base_url)) as client:
        with pytest.raises(NovitaOutcomeUnknown):
            start_video(client, deadline=Deadline.after(seconds))
        assert client.form("image_to_video") == "guide"

    assert time.monotonic() - started < seconds + MARGIN
    assert len(taken) == 1  # the multipart request only: a lost answer never moves to JSON


def test_task_result_waits_no_longer_than_its_deadline_retries_included(
    silent_novita: tuple[str, list[socket.socket]],
) -> None:
    base_url, _ = silent_novita
    started = time.monotonic()

    with closing(silent_client(base_url)) as client, pytest.raises(NovitaUnavailable):
        client.task_result("t", Deadline.after(0.5))

    assert time.monotonic() - started < 0.5 + MARGIN


def test_a_paid_request_is_not_sent_when_too_little_time_is_left_to_hear_its_answer() -> None:
    script = Scripted(accepted())
    client, _ = client_for(script)
    for send in (
        lambda d: start_image(client, deadline=d),
        lambda d: client.seedream(prompt="p", width=720, height=1280, seed=-1, deadline=d),
        lambda d: start_video(client, deadline=d),
    ):
        with pytest.raises(NovitaUnavailable):
            send(Deadline.after(MIN_POST_SECONDS / 2))
    assert script.requests == []


# ------------------------------------------------------------------- against the simulator

SIM_KEY = "sim-key"


def jpeg(width: int = 720, height: int = 1280) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 200)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(params=["guide", "reference"])
def personality(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def simulated(personality: str) -> Iterator[tuple[NovitaSimulator, NovitaClient]]:
    config = SimulatorConfig(
        personality=personality, image_delay=0.1, video_delay=0.1, seedream_delay=0.0, drop_webhooks=True
    )
    with NovitaSimulator(api_key=SIM_KEY, config=config) as simulator:
        client = NovitaClient(
            settings_from({**ENV, "NOVITA_API_KEY": SIM_KEY, "NOVITA_BASE_URL": simulator.base_url})
        )
        yield simulator, client
        client.close()


def test_kling_starts_on_the_simulator_in_the_form_its_personality_takes(
    simulated: tuple[NovitaSimulator, NovitaClient], personality: str
) -> None:
    simulator, client = simulated
    data = jpeg()
    still_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()

    task_id, form = start_video(client, still=inspect_still(data), still_url=still_url)

    assert form == personality
    # The reference refuses the guide's multipart first; no refused request started a task.
    assert simulator.stats()["requests"]["kling"] == (1 if personality == "guide" else 2)
    assert simulator.stats()["tasks_created"]["kling"] == 1
    assert client.task_result(task_id, ample()).task.task_id == task_id


@pytest.mark.parametrize("personality", ["guide"])
def test_the_guide_simulator_takes_seedream_as_an_async_task(
    simulated: tuple[NovitaSimulator, NovitaClient],
) -> None:
    _, client = simulated
    task_id = start_image(client)
    assert client.task_result(task_id, ample()).task.task_id == task_id


@pytest.mark.parametrize("personality", ["reference"])
def test_the_reference_simulator_refuses_async_seedream_as_a_matter_of_form(
    simulated: tuple[NovitaSimulator, NovitaClient],
) -> None:
    simulator, client = simulated
    with pytest.raises(NovitaRejected) as caught:
        start_image(client)
    assert caught.value.refuses_form and not caught.value.is_balance
    assert simulator.stats()["tasks_created"]["txt2img"] == 0


def test_a_spent_balance_is_not_a_form_refusal_on_the_simulator(
    simulated: tuple[NovitaSimulator, NovitaClient],
) -> None:
    simulator, client = simulated
    simulator.configure(balance_exhausted=True)
    data = jpeg()

    with pytest.raises(NovitaRejected) as caught:
        start_video(client, still=inspect_still(data), still_url=STILL_URL)

    assert caught.value.is_balance and not caught.value.refuses_form
    assert simulator.stats()["requests"]["kling"] == 1


@pytest.mark.parametrize("personality", ["reference"])
def test_seedream_draws_on_the_reference_simulator_and_kling_animates_its_url(
    simulated: tuple[NovitaSimulator, NovitaClient],
) -> None:
    simulator, client = simulated

    url = client.seedream(prompt="a walrus", width=720, height=1280, seed=3, deadline=ample())
    still = inspect_still(httpx.get(url).content)
    _, form = start_video(client, still=still, still_url=url)

    assert (still.width, still.height) == (720, 1280)
    assert form == "reference"
    assert simulator.stats()["tasks_created"]["kling"] == 1

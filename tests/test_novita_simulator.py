"""The Novita simulator over real loopback HTTP: its API, its media, its webhooks and its injected faults."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from novita_simulator import NovitaSimulator, SimulatorConfig
from novita_simulator.multipart import parse_form_data

pytestmark = [pytest.mark.timeout(30), pytest.mark.stack]

KEY = "sim-test-key"
REPO_ROOT = Path(__file__).resolve().parent.parent
TXT2IMG = "/v3/async/txt2img"
SEEDREAM = "/v3/seedream-3-0-txt2img"
KLING = "/v3/async/kling-v2.1-i2v-master"
TASK_RESULT = "/v3/async/task-result"
CLIENT_TIMEOUT = httpx.Timeout(10.0)
SUCCEED = "TASK_STATUS_SUCCEED"
FAILED = "TASK_STATUS_FAILED"
PERSONALITIES = ("guide", "reference")
NO_TASKS = {"txt2img": 0, "kling": 0}


class WebhookReceiver:
    """A stdlib HTTP server recording every webhook body; it can fail or stall the first calls."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.arrival_times: list[float] = []
        self.fail_first = 0
        self.stall_first = 0
        self.stall_seconds = 0.0
        self._calls = 0
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._changed:
                    receiver._calls += 1
                    call = receiver._calls
                if call <= receiver.stall_first:
                    time.sleep(receiver.stall_seconds)
                status = 500 if call <= receiver.fail_first else 200
                if status == 200:
                    with receiver._changed:
                        receiver.bodies.append(body)
                        receiver.arrival_times.append(time.monotonic())
                        receiver._changed.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook?sketch=abc"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.bodies) >= count, timeout)
            return list(self.bodies)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    yield hook
    hook.stop()


class StillHost:
    """A stdlib HTTP server standing for a public image host: it serves `files` by path, else 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = host.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.base_url + path

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def still_host() -> Iterator[StillHost]:
    host = StillHost()
    yield host
    host.stop()


@pytest.fixture
def sim() -> Iterator[NovitaSimulator]:
    config = SimulatorConfig(
        image_delay=0.05,
        video_delay=0.05,
        seedream_delay=0.05,
        webhook_timeout=1.0,
        webhook_retry_backoff=0.05,
    )
    simulator = NovitaSimulator(api_key=KEY, host="127.0.0.1", port=0, config=config).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def client(sim: NovitaSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=CLIENT_TIMEOUT
    ) as http:
        yield http


def txt2img_body(webhook_url: str | None, **settings: Any) -> dict[str, Any]:
    webhook = {"webhook": {"url": webhook_url}} if webhook_url else {}
    request = {
        "model_name": "sd_xl_base_1.0.safetensors",
        "prompt": "a giraffe riding a unicycle, pencil sketch",
        "negative_prompt": "blurry",
        "width": 640,
        "height": 960,
        "image_num": 1,
        "steps": 20,
        "guidance_scale": 7.5,
        "sampler_name": "Euler a",
        "seed": -1,
        **settings,
    }
    return {"extra": {"response_image_type": "jpeg", **webhook}, "request": request}


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def post_kling(
    client: httpx.Client, still: bytes, webhook_url: str | None = None, **fields: str
) -> httpx.Response:
    data = {
        "prompt": "slow zoom in",
        "negative_prompt": "blurry",
        "duration": "5",
        "cfg_scale": "0.5",
        **fields,
    }
    if webhook_url:
        data["extra"] = json.dumps({"webhook": {"url": webhook_url}})
    return client.post(KLING, files={"image": ("frame.jpg", still, "image/jpeg")}, data=data)


def create_image_task(client: httpx.Client, webhook_url: str | None, **settings: Any) -> str:
    response = client.post(TXT2IMG, json=txt2img_body(webhook_url, **settings))
    assert response.status_code == 200, response.text
    return str(response.json()["task_id"])


def task_result(client: httpx.Client, task_id: str) -> dict[str, Any]:
    response = client.get(TASK_RESULT, params={"task_id": task_id})
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_novita_error(response: httpx.Response, status: int, reason: str, message: str = "") -> None:
    """`message`, when given, is a part of the message that names the rule broken."""
    assert response.status_code == status, response.text
    body = response.json()
    assert (body["code"], body["reason"]) == (status, reason)
    assert body["message"] and message in body["message"]
    assert body["metadata"] == {}


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 90, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def data_uri(still: bytes, media_type: str = "image/jpeg") -> str:
    return f"data:{media_type};base64,{base64.b64encode(still).decode()}"


def picture(data: bytes) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.format, opened.size


def post_seedream(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post(SEEDREAM, json={"prompt": "a walrus giving a TED talk about spoons", **fields})


def post_kling_json(client: httpx.Client, image: str, **fields: Any) -> httpx.Response:
    return client.post(KLING, json={"image": image, "prompt": "slow zoom in", **fields})


def seedream_still_url(client: httpx.Client, **fields: Any) -> str:
    response = post_seedream(client, **fields)
    assert response.status_code == 200, response.text
    return str(response.json()["image_urls"][0])


def finished_result(sim: NovitaSimulator, client: httpx.Client, task_id: str) -> dict[str, Any]:
    assert sim.wait_idle(10)
    return task_result(client, task_id)


def test_every_api_endpoint_needs_the_bearer_key(sim: NovitaSimulator, receiver: WebhookReceiver) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=CLIENT_TIMEOUT) as anonymous:
        assert_novita_error(anonymous.post(TXT2IMG, json=txt2img_body(receiver.url)), 401, "INVALID_API_KEY")
        wrong = {"Authorization": "Bearer not-the-key"}
        assert_novita_error(
            anonymous.post(TXT2IMG, json=txt2img_body(None), headers=wrong), 401, "INVALID_API_KEY"
        )
        assert_novita_error(post_kling(anonymous, jpeg(400, 400)), 401, "INVALID_API_KEY")
        assert_novita_error(post_seedream(anonymous), 401, "INVALID_API_KEY")
        assert_novita_error(anonymous.get(TASK_RESULT, params={"task_id": "x"}), 401, "INVALID_API_KEY")
    stats = sim.stats()
    assert (stats["tasks_created"], stats["seedream_images"]) == (NO_TASKS, 0)


def test_the_guides_flat_txt2img_body_is_refused(sim: NovitaSimulator, client: httpx.Client) -> None:
    nested = txt2img_body("http://127.0.0.1:9/hook")
    flat = {**nested["request"], "extra": nested["extra"]}
    assert_novita_error(client.post(TXT2IMG, json=flat), 400, "INVALID_REQUEST_BODY")
    assert sim.stats()["tasks_created"]["txt2img"] == 0


@pytest.mark.parametrize("personality", PERSONALITIES)
@pytest.mark.parametrize(
    "settings",
    [{"width": 127}, {"height": 2049}, {"prompt": " "}, {"width": "720"}, {"prompt": None}],
    ids=["narrow", "tall", "blank-prompt", "width-as-string", "no-prompt"],
)
def test_bad_txt2img_settings_are_refused(
    sim: NovitaSimulator, client: httpx.Client, settings: dict[str, Any], personality: str
) -> None:
    sim.configure(personality=personality)
    body = txt2img_body(None, **settings)
    body["request"] = {name: value for name, value in body["request"].items() if value is not None}
    assert_novita_error(client.post(TXT2IMG, json=body), 400, "INVALID_REQUEST_BODY")
    assert sim.stats()["tasks_created"] == NO_TASKS


def test_a_non_json_txt2img_body_is_refused(client: httpx.Client) -> None:
    response = client.post(TXT2IMG, content=b"prompt=cat", headers={"Content-Type": "application/json"})
    assert_novita_error(response, 400, "INVALID_REQUEST_BODY")


def test_txt2img_delivers_a_real_jpeg_of_the_requested_size(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    task_id = create_image_task(client, receiver.url, width=640, height=960)
    [event] = receiver.wait_for(1)
    assert event["event_type"] == "ASYNC_TASK_RESULT"
    task = event["payload"]["task"]
    assert (task["task_id"], task["task_type"], task["status"]) == (task_id, "TXT_TO_IMG", SUCCEED)
    assert isinstance(task["created_at"], int) and task["finished_at"] >= task["created_at"]
    [image] = event["payload"]["extra"]["images"]
    assert (image["image_type"], image["image_url_ttl"]) == ("jpeg", 3600)
    assert "images" not in event["payload"]

    media = httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT)
    assert media.status_code == 200
    assert media.headers["Content-Type"] == "image/jpeg"
    assert int(media.headers["Content-Length"]) == len(media.content)
    with Image.open(io.BytesIO(media.content)) as still:
        assert (still.format, still.size) == ("JPEG", (640, 960))

    result = task_result(client, task_id)
    assert result["task"]["status"] == SUCCEED and result["task"]["progress_percent"] == 100
    assert result["images"][0]["image_url"] != image["image_url"]  # each look-up presigns anew
    assert result["videos"] == []
    assert sim.wait_idle(5)
    stats = sim.stats()
    assert stats["tasks_created"]["txt2img"] == 1 and stats["pending"] == 0
    assert [(d["task_id"], d["status_code"]) for d in stats["webhook_deliveries"]] == [(task_id, 200)]


def test_top_layout_with_string_ttls(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(layout="top", ttl_as_string=True)
    task_id = create_image_task(client, receiver.url)
    [event] = receiver.wait_for(1)
    payload = event["payload"]
    assert "images" not in payload["extra"]
    [image] = payload["images"]
    assert image["image_url_ttl"] == "3600"
    assert payload["videos"] == []
    assert httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT).status_code == 200
    assert task_result(client, task_id)["images"][0]["image_url_ttl"] == "3600"


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_task_result_walks_through_the_statuses_with_progress_and_eta(
    sim: NovitaSimulator, client: httpx.Client, personality: str
) -> None:
    # 1.5 s in all: queued for the first 0.3 s, then processing
    sim.configure(personality=personality, image_delay=1.5)
    task_id = create_image_task(client, None)
    queued = task_result(client, task_id)["task"]
    assert (queued["status"], queued["progress_percent"], queued["eta"]) == ("TASK_STATUS_QUEUED", 0, 2)
    time.sleep(0.6)
    early = task_result(client, task_id)["task"]
    assert early["status"] == "TASK_STATUS_PROCESSING"
    assert 5 <= early["progress_percent"] <= 60 and early["eta"] == 1
    time.sleep(0.4)
    later = task_result(client, task_id)["task"]
    assert later["status"] == "TASK_STATUS_PROCESSING"
    assert early["progress_percent"] < later["progress_percent"] <= 99 and later["eta"] == 1
    finished = finished_result(sim, client, task_id)["task"]
    assert (finished["status"], finished["progress_percent"], finished["eta"]) == (SUCCEED, 100, 0)


def test_task_result_of_an_unknown_task_is_404(client: httpx.Client) -> None:
    response = client.get(TASK_RESULT, params={"task_id": "no-such-task"})
    assert_novita_error(response, 404, "TASK_NOT_FOUND")


def test_kling_turns_an_uploaded_still_into_a_real_mp4(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    response = post_kling(client, jpeg(720, 1280), receiver.url, duration="10")
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    [event] = receiver.wait_for(1)
    task = event["payload"]["task"]
    assert (task["task_id"], task["task_type"], task["status"]) == (task_id, "KLING_V2.1_I2V_MASTER", SUCCEED)
    [video] = event["payload"]["extra"]["videos"]
    assert (video["video_type"], video["video_url_ttl"], video["duration"]) == ("mp4", 3600, 10.0)

    media = httpx.get(video["video_url"], timeout=CLIENT_TIMEOUT)
    assert media.status_code == 200 and media.headers["Content-Type"] == "video/mp4"
    with av.open(io.BytesIO(media.content), mode="r") as container:
        frames = len(list(container.decode(video=0)))
        stream = container.streams.video[0]
        assert stream.codec_context.name in ("h264", "mpeg4")
        assert stream.codec_context.width <= 320
    assert frames > 0
    assert sim.stats()["kling_tasks_by_webhook_url"] == {receiver.url: 1}


def test_kling_accepts_a_png_still(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300), (10, 90, 200)).save(buffer, "PNG")
    response = client.post(
        KLING, files={"image": ("frame.png", buffer.getvalue(), "image/png")}, data={"prompt": "p"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("still", "fields"),
    [
        (jpeg(200, 200), {}),
        (jpeg(299, 600), {}),
        (b"<html>not an image</html>", {}),
        (jpeg(400, 400), {"duration": "7"}),
        (jpeg(400, 400), {"cfg_scale": "1.5"}),
        (jpeg(400, 400), {"extra": "{not json"}),
    ],
    ids=["200x200", "too-narrow", "not-an-image", "bad-duration", "bad-cfg-scale", "bad-extra"],
)
def test_kling_refuses_bad_uploads(
    sim: NovitaSimulator, client: httpx.Client, still: bytes, fields: dict[str, str]
) -> None:
    assert_novita_error(post_kling(client, still, **fields), 400, "INVALID_REQUEST_BODY")
    assert sim.stats()["tasks_created"]["kling"] == 0


def test_kling_refuses_json_and_a_missing_image(sim: NovitaSimulator, client: httpx.Client) -> None:
    as_json = client.post(KLING, json={"image": "https://example.invalid/frame.jpg", "prompt": "zoom"})
    assert_novita_error(as_json, 400, "INVALID_REQUEST_BODY")
    without_image = client.post(KLING, files={"prompt": (None, "zoom")})
    assert_novita_error(without_image, 400, "INVALID_REQUEST_BODY")
    assert sim.stats()["tasks_created"]["kling"] == 0


def test_kling_refuses_a_still_over_10_mb(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(image_mode="large")
    create_image_task(client, receiver.url)
    [event] = receiver.wait_for(1)
    big = httpx.get(event["payload"]["extra"]["images"][0]["image_url"], timeout=CLIENT_TIMEOUT).content
    assert len(big) > 10 * 1024 * 1024
    with Image.open(io.BytesIO(big)) as still:
        assert still.format == "JPEG"
    assert_novita_error(post_kling(client, big), 400, "INVALID_REQUEST_BODY")


@pytest.mark.parametrize(
    ("mode", "content_type", "image_format", "size"),
    [("small", "image/jpeg", "JPEG", (200, 200)), ("png", "image/png", "PNG", (640, 960))],
)
def test_image_modes(
    sim: NovitaSimulator,
    client: httpx.Client,
    receiver: WebhookReceiver,
    mode: str,
    content_type: str,
    image_format: str,
    size: tuple[int, int],
) -> None:
    sim.configure(image_mode=mode)
    create_image_task(client, receiver.url)
    [image] = receiver.wait_for(1)[0]["payload"]["extra"]["images"]
    media = httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT)
    assert media.headers["Content-Type"] == content_type
    assert image["image_url"].endswith("." + image["image_type"].replace("jpeg", "jpg"))
    with Image.open(io.BytesIO(media.content)) as still:
        assert (still.format, still.size) == (image_format, size)


def test_not_image_mode_serves_html_as_a_jpeg(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(image_mode="not_image")
    create_image_task(client, receiver.url)
    [image] = receiver.wait_for(1)[0]["payload"]["extra"]["images"]
    assert image["image_url"].endswith(".jpg") and image["image_type"] == "jpeg"
    media = httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT)
    assert media.headers["Content-Type"] == "image/jpeg"
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(media.content))


def test_http_errors_are_answered_in_order_and_create_no_task(
    sim: NovitaSimulator, client: httpx.Client
) -> None:
    sim.configure(http_errors={"txt2img": [429, 503], "kling": [403, 500], "task_result": [503]})
    rate_limited = client.post(TXT2IMG, json=txt2img_body(None))
    assert_novita_error(rate_limited, 429, "RATE_LIMIT_EXCEEDED")
    assert rate_limited.headers["Retry-After"] == "1"
    assert_novita_error(client.post(TXT2IMG, json=txt2img_body(None)), 503, "SERVICE_UNAVAILABLE")
    assert_novita_error(post_kling(client, jpeg(400, 400)), 403, "NOT_ENOUGH_BALANCE")
    assert_novita_error(post_kling(client, jpeg(400, 400)), 500, "INTERNAL_ERROR")
    assert sim.stats()["tasks_created"] == {"txt2img": 0, "kling": 0}

    task_id = create_image_task(client, None)
    assert_novita_error(client.get(TASK_RESULT, params={"task_id": task_id}), 503, "SERVICE_UNAVAILABLE")
    task_result(client, task_id)
    stats = sim.stats()
    assert stats["tasks_created"] == {"txt2img": 1, "kling": 0}
    assert stats["requests"] == {"txt2img": 3, "seedream": 0, "kling": 2, "task_result": 2, "media": 0}
    assert stats["config"]["http_errors"] == {"txt2img": [], "kling": [], "task_result": []}


def test_fail_tasks_fails_the_next_tasks_of_that_kind(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(fail_tasks={"txt2img": 1})
    failed_id = create_image_task(client, receiver.url)
    receiver.wait_for(1)
    ok_id = create_image_task(client, receiver.url)
    failed, succeeded = receiver.wait_for(2)
    assert failed["payload"]["task"]["task_id"] == failed_id
    assert failed["payload"]["task"]["status"] == FAILED
    assert failed["payload"]["task"]["reason"].startswith("simulated failure")
    assert failed["payload"]["extra"] == {}
    assert succeeded["payload"]["task"]["task_id"] == ok_id
    assert succeeded["payload"]["task"]["status"] == SUCCEED
    assert task_result(client, failed_id)["images"] == []


def test_concurrent_duplicate_deliveries_all_arrive(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(deliveries=5, concurrent_deliveries=True)
    task_id = create_image_task(client, receiver.url)
    events = receiver.wait_for(5)
    assert sim.wait_idle(5)
    assert len(events) == 5 == len(receiver.bodies)
    assert {event["payload"]["task"]["task_id"] for event in events} == {task_id}
    assert max(receiver.arrival_times) - min(receiver.arrival_times) < 0.5
    assert sim.stats()["webhook_attempts"] == 5


def test_sequential_duplicate_deliveries(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(deliveries=3)
    create_image_task(client, receiver.url)
    assert sim.wait_idle(5)
    assert len(receiver.bodies) == 3


def test_a_failing_webhook_is_retried_until_it_answers_2xx(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    receiver.fail_first = 2
    task_id = create_image_task(client, receiver.url)
    receiver.wait_for(1)
    assert sim.wait_idle(5)
    deliveries = sim.stats()["webhook_deliveries"]
    assert [(d["task_id"], d["attempt"], d["status_code"]) for d in deliveries] == [
        (task_id, 1, 500),
        (task_id, 2, 500),
        (task_id, 3, 200),
    ]
    assert sim.stats()["webhook_attempts"] == 3


def test_retries_stop_after_the_last_attempt(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(webhook_attempts=3)
    receiver.fail_first = 100
    create_image_task(client, receiver.url)
    assert sim.wait_idle(5)
    assert [d["status_code"] for d in sim.stats()["webhook_deliveries"]] == [500, 500, 500]
    assert receiver.bodies == []


def test_a_slow_webhook_times_out_and_is_retried(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(webhook_timeout=0.3)
    receiver.stall_first, receiver.stall_seconds = 1, 0.8
    create_image_task(client, receiver.url)
    receiver.wait_for(1)
    assert sim.wait_idle(5)
    first, second = sim.stats()["webhook_deliveries"]
    assert (first["status_code"], first["error"]) == (None, "timeout")
    assert 250 <= first["elapsed_ms"] < 800
    assert (second["attempt"], second["status_code"]) == (2, 200)


def test_dropped_webhooks_leave_the_result_to_task_result(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(drop_webhooks=True)
    task_id = create_image_task(client, receiver.url)
    assert sim.wait_idle(5)
    time.sleep(0.1)
    assert receiver.bodies == [] and sim.stats()["webhook_attempts"] == 0
    result = task_result(client, task_id)
    assert result["task"]["status"] == SUCCEED and len(result["images"]) == 1


def test_media_links_expire_like_presigned_urls(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(media_ttl=1)
    task_id = create_image_task(client, receiver.url)
    [image] = receiver.wait_for(1)[0]["payload"]["extra"]["images"]
    assert image["image_url_ttl"] == 1
    assert httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT).status_code == 200
    time.sleep(1.1)
    expired = httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT)
    assert expired.status_code == 403
    assert b"AccessDenied" in expired.content and b"Request has expired" in expired.content
    fresh = task_result(client, task_id)["images"][0]["image_url"]
    assert httpx.get(fresh, timeout=CLIENT_TIMEOUT).status_code == 200
    assert httpx.get(f"{sim.base_url}/media/unknown.jpg", timeout=CLIENT_TIMEOUT).status_code == 404


def test_accept_then_drop_response_creates_the_task_without_answering(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(accept_then_drop_response={"kling": 1})
    with pytest.raises(httpx.TransportError):
        post_kling(client, jpeg(400, 400), receiver.url)
    [event] = receiver.wait_for(1)
    assert event["payload"]["task"]["status"] == SUCCEED
    assert sim.stats()["tasks_created"]["kling"] == 1
    assert post_kling(client, jpeg(400, 400)).status_code == 200  # only the next one was dropped


def test_a_slow_kling_request_can_outlast_the_client(sim: NovitaSimulator, receiver: WebhookReceiver) -> None:
    sim.configure(kling_accept_delay=0.5)
    impatient = httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=0.2)
    with impatient, pytest.raises(httpx.ReadTimeout):
        post_kling(impatient, jpeg(400, 400), receiver.url)
    receiver.wait_for(1)
    assert sim.stats()["tasks_created"]["kling"] == 1


@pytest.mark.parametrize("asked", [SUCCEED, FAILED])
def test_test_mode_answers_at_once_with_the_status_asked_for(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver, asked: str
) -> None:
    sim.configure(image_delay=20.0)
    body = txt2img_body(receiver.url)
    body["extra"]["webhook"]["test_mode"] = {"enabled": True, "return_task_status": asked}
    started = time.monotonic()
    assert client.post(TXT2IMG, json=body).status_code == 200
    [event] = receiver.wait_for(1)
    assert time.monotonic() - started < 2
    assert event["payload"]["task"]["status"] == asked
    images = event["payload"]["extra"].get("images", [])
    if asked == SUCCEED:
        media = httpx.get(images[0]["image_url"], timeout=CLIENT_TIMEOUT)
        with Image.open(io.BytesIO(media.content)) as still:
            assert still.size == (640, 960)
    else:
        assert images == [] and event["payload"]["task"]["reason"]


def test_reset_and_wait_idle(sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver) -> None:
    sim.configure(layout="top", fail_tasks={"kling": 3})
    create_image_task(client, receiver.url)
    assert sim.wait_idle(5)
    sim.reset()
    stats = sim.stats()
    assert stats["tasks_created"] == {"txt2img": 0, "kling": 0} and stats["webhook_deliveries"] == []
    assert stats["config"]["layout"] == "extra" and stats["config"]["fail_tasks"] == {}
    assert stats["config"]["image_delay"] == 0.05
    with pytest.raises(ValueError):
        sim.configure(no_such_setting=1)


def test_control_api_over_http(sim: NovitaSimulator) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=CLIENT_TIMEOUT) as control:
        changed = control.post("/_sim/config", json={"layout": "top", "fail_tasks": {"txt2img": 2}})
        assert changed.status_code == 200 and changed.json()["config"]["layout"] == "top"
        assert control.post("/_sim/config", json={"no_such_setting": 1}).status_code == 400
        assert control.post("/_sim/config", json={"layout": "sideways"}).status_code == 400
        assert sim.config.fail_tasks == {"txt2img": 2}
        switched = control.post("/_sim/config", json={"personality": "reference", "balance_exhausted": True})
        assert switched.json()["config"]["personality"] == "reference" and sim.config.balance_exhausted
        paid = control.post(SEEDREAM, json={"prompt": "p"}, headers={"Authorization": f"Bearer {KEY}"})
        assert_novita_error(paid, 400, "BILLING_BALANCE_NOT_ENOUGH", "Insufficient balance")
        assert control.post("/_sim/config", json={"personality": "llm"}).status_code == 400
        assert control.post("/_sim/reset").status_code == 200
        stats = control.get("/_sim/stats").json()
    assert stats["config"]["layout"] == "extra"
    assert stats["config"]["personality"] == "guide" and stats["config"]["balance_exhausted"] is False
    assert set(stats) >= {
        "requests",
        "tasks_created",
        "seedream_images",
        "kling_tasks_by_webhook_url",
        "webhook_attempts",
        "webhook_deliveries",
        "pending",
    }


# --- Seedream 3.0, the synchronous endpoint (both personalities) ---


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_seedream_answers_with_a_jpeg_link_after_its_delay(
    sim: NovitaSimulator, client: httpx.Client, personality: str
) -> None:
    sim.configure(personality=personality, seedream_delay=0.4)
    started = time.monotonic()
    response = post_seedream(
        client, model="seedream-3-0-t2i-250415", size="1280x720", seed=7, guidance_scale=3, n=4
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert 0.4 <= elapsed < 2.0
    body = response.json()
    assert set(body) == {"image_urls", "binary_data_base64"} and body["binary_data_base64"] == []
    [url] = body["image_urls"]
    media = httpx.get(url, timeout=CLIENT_TIMEOUT)
    assert media.status_code == 200 and media.headers["Content-Type"] == "image/jpeg"
    assert picture(media.content) == ("JPEG", (1280, 720))
    stats = sim.stats()
    assert stats["requests"]["seedream"] == 1 and stats["seedream_images"] == 1
    assert stats["tasks_created"] == NO_TASKS and stats["pending"] == 0


def test_seedream_b64_json_defaults_to_1024_square_with_a_watermark(client: httpx.Client) -> None:
    def still(**fields: Any) -> bytes:
        response = post_seedream(client, response_format="b64_json", **fields)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image_urls"] == []
        return base64.b64decode(body["binary_data_base64"][0], validate=True)

    marked, plain = still(), still(watermark=False)
    assert picture(marked) == picture(plain) == ("JPEG", (1024, 1024))
    with Image.open(io.BytesIO(marked)) as with_mark, Image.open(io.BytesIO(plain)) as without:
        corner = (704, 960, 1024, 1024)  # "AI generated", bottom right
        assert with_mark.crop(corner).tobytes() != without.crop(corner).tobytes()
        assert with_mark.crop((0, 0, 512, 512)).tobytes() == without.crop((0, 0, 512, 512)).tobytes()


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"prompt": "x" * 1025}, "at most 1024 characters"),
        ({"prompt": "  "}, "must not be blank"),
        ({"prompt": None}, "prompt"),
        ({"size": "2100x1024"}, "each side must be between 300 and 2048"),
        ({"size": "1024x299"}, "each side must be between 300 and 2048"),
        ({"size": "500x500"}, "at least 262144 pixels"),
        ({"size": "2048x800"}, "aspect ratio must be between 1:2.5 and 2.5:1"),
        ({"size": "1024*1024"}, "WIDTHxHEIGHT"),
        ({"model": "seedream_3_0"}, "seedream-3-0-t2i-250415"),
        ({"response_format": "png"}, "response_format"),
        ({"seed": -2}, "seed"),
        ({"seed": 2147483648}, "seed"),
        ({"guidance_scale": 10.5}, "guidance_scale"),
        ({"watermark": "no"}, "watermark"),
    ],
    ids=[
        "long-prompt",
        "blank-prompt",
        "no-prompt",
        "wide-side",
        "short-side",
        "small-area",
        "aspect-ratio",
        "size-format",
        "model",
        "response-format",
        "seed-low",
        "seed-high",
        "guidance-scale",
        "watermark-as-string",
    ],
)
def test_seedream_refuses_what_breaks_its_rules(
    sim: NovitaSimulator, client: httpx.Client, fields: dict[str, Any], rule: str
) -> None:
    body = {"prompt": "a walrus", **fields}
    response = client.post(SEEDREAM, json={name: value for name, value in body.items() if value is not None})
    assert_novita_error(response, 400, "INVALID_REQUEST_BODY", rule)
    stats = sim.stats()
    assert (stats["requests"]["seedream"], stats["seedream_images"]) == (1, 0)


def test_seedream_injected_errors_and_a_dropped_answer(sim: NovitaSimulator, client: httpx.Client) -> None:
    sim.configure(http_errors={"seedream": [503]}, accept_then_drop_response={"seedream": 1})
    assert_novita_error(post_seedream(client), 503, "SERVICE_UNAVAILABLE")
    assert sim.stats()["seedream_images"] == 0
    with pytest.raises(httpx.TransportError):
        post_seedream(client)
    assert sim.stats()["seedream_images"] == 1  # made and paid for, though never received
    assert post_seedream(client).status_code == 200
    stats = sim.stats()
    assert (stats["requests"]["seedream"], stats["seedream_images"]) == (3, 2)
    assert stats["config"]["http_errors"] == {"seedream": []}
    assert stats["config"]["accept_then_drop_response"] == {"seedream": 0}


# --- txt2img: any model in the guide, Stable Diffusion checkpoints only in the reference ---


def test_the_guide_accepts_seedream_on_txt2img(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    task_id = create_image_task(client, receiver.url, model_name="seedream_3_0", prompt="p" * 1500)
    [event] = receiver.wait_for(1)
    assert event["payload"]["task"]["task_id"] == task_id


def test_the_reference_refuses_a_model_that_is_not_a_checkpoint(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(personality="reference")
    response = client.post(TXT2IMG, json=txt2img_body(receiver.url, model_name="seedream_3_0"))
    assert_novita_error(response, 400, "INVALID_REQUEST_BODY", "'seedream_3_0' is not a Stable Diffusion")
    stats = sim.stats()
    assert (stats["requests"]["txt2img"], stats["tasks_created"]) == (1, NO_TASKS)

    create_image_task(client, receiver.url, model_name="sd_xl_base_1.0.safetensors")
    create_image_task(client, receiver.url, model_name="v1-5-pruned-emaonly.ckpt")
    assert len(receiver.wait_for(2)) == 2
    assert sim.stats()["tasks_created"]["txt2img"] == 2


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_the_reference_refuses_txt2img_prompts_over_1024_characters(
    sim: NovitaSimulator, client: httpx.Client, field: str
) -> None:
    sim.configure(personality="reference")
    create_image_task(client, None, **{field: "p" * 1024})
    response = client.post(TXT2IMG, json=txt2img_body(None, **{field: "p" * 1025}))
    assert_novita_error(response, 400, "INVALID_REQUEST_BODY", f"request.{field}: String should have at most")
    assert sim.stats()["tasks_created"]["txt2img"] == 1


# --- where results sit ---


def test_the_reference_puts_results_on_top_with_string_ttls(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(personality="reference", layout="extra", ttl_as_string=False)
    task_id = create_image_task(client, receiver.url)
    [event] = receiver.wait_for(1)
    payload = event["payload"]
    # the task-result schema, as the reference says of webhook payloads
    assert set(payload) == {"task", "images", "videos", "extra"} and payload["extra"] == {}
    task = payload["task"]
    assert set(task) == {"task_id", "task_type", "status", "reason", "eta", "progress_percent"}
    assert (task["task_id"], task["status"], task["progress_percent"], task["eta"]) == (
        task_id,
        SUCCEED,
        100,
        0,
    )
    [image] = payload["images"]
    assert (image["image_type"], image["image_url_ttl"]) == ("jpeg", "3600")
    assert payload["videos"] == []
    assert httpx.get(image["image_url"], timeout=CLIENT_TIMEOUT).status_code == 200
    assert task_result(client, task_id)["images"][0]["image_url_ttl"] == "3600"


# --- Kling: multipart with a webhook in the guide, JSON without one in the reference ---


def test_the_reference_refuses_multipart_kling(sim: NovitaSimulator, client: httpx.Client) -> None:
    sim.configure(personality="reference")
    response = post_kling(client, jpeg(720, 1280), "http://127.0.0.1:9/hook")
    assert_novita_error(response, 400, "INVALID_REQUEST_BODY", "Content-Type must be application/json")
    assert sim.stats()["tasks_created"] == NO_TASKS


def test_reference_kling_animates_its_own_media_link_and_calls_no_webhook(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(personality="reference")
    still_url = seedream_still_url(client, size="720x1280")
    extra = {"webhook": {"url": receiver.url}}
    response = post_kling_json(client, still_url, duration="10", guidance_scale=0.7, extra=extra)
    assert response.status_code == 200, response.text
    result = finished_result(sim, client, response.json()["task_id"])
    assert result["task"]["status"] == SUCCEED and result["images"] == []
    [video] = result["videos"]
    assert (video["video_type"], video["video_url_ttl"], video["duration"]) == ("mp4", "3600", 10.0)
    media = httpx.get(video["video_url"], timeout=CLIENT_TIMEOUT)
    assert media.status_code == 200 and media.headers["Content-Type"] == "video/mp4"
    stats = sim.stats()  # wait_idle covered webhook deliveries too: none was made
    assert receiver.bodies == [] and stats["webhook_attempts"] == 0
    assert stats["kling_tasks_by_webhook_url"] == {}
    assert stats["requests"]["media"] == 1  # the still was read from the simulator's own store


def test_reference_kling_downloads_a_url_and_decodes_a_data_uri(
    sim: NovitaSimulator, client: httpx.Client, still_host: StillHost
) -> None:
    sim.configure(personality="reference")
    by_url = post_kling_json(client, still_host.serve("/frame.jpg", jpeg(400, 600)), negative_prompt="blur")
    by_data_uri = post_kling_json(client, data_uri(png(600, 400), "image/png"))
    for response in (by_url, by_data_uri):
        assert response.status_code == 200, response.text
        result = finished_result(sim, client, response.json()["task_id"])
        assert result["task"]["status"] == SUCCEED
        assert result["videos"][0]["duration"] == 5.0  # the default duration, "5"
    assert sim.stats()["tasks_created"]["kling"] == 2


def test_the_guide_keeps_kling_multipart_without_an_aspect_ratio_rule(
    sim: NovitaSimulator, client: httpx.Client
) -> None:
    assert post_kling(client, jpeg(300, 800)).status_code == 200
    as_json = post_kling_json(client, data_uri(jpeg(400, 400)))
    assert_novita_error(as_json, 400, "INVALID_REQUEST_BODY", "multipart/form-data")
    assert sim.stats()["tasks_created"]["kling"] == 1


@pytest.mark.parametrize(
    ("image", "fields", "rule"),
    [
        (data_uri(jpeg(300, 800)), {}, "aspect ratio 300x800 is outside 1:2.5 to 2.5:1"),
        (data_uri(png(1000, 390), "image/png"), {}, "aspect ratio 1000x390"),
        (data_uri(jpeg(200, 200)), {}, "below 300x300"),
        (data_uri(b"<html>not an image</html>"), {}, "valid jpg, jpeg or png"),
        (data_uri(jpeg(400, 400), "image/gif"), {}, "data:image/jpeg;base64"),
        ("data:image/jpeg;base64,@@@", {}, "not valid base64"),
        ("ftp://example.invalid/frame.jpg", {}, "http(s) URL"),
        ("http://127.0.0.1:9/frame.jpg", {}, "could not download"),
        (data_uri(jpeg(400, 400)), {"prompt": None}, "prompt"),
        (data_uri(jpeg(400, 400)), {"prompt": "p" * 2501}, "at most 2500 characters"),
        (data_uri(jpeg(400, 400)), {"negative_prompt": "n" * 2501}, "at most 2500 characters"),
        (data_uri(jpeg(400, 400)), {"duration": 5}, "duration"),
        (data_uri(jpeg(400, 400)), {"duration": "7"}, "duration"),
        (data_uri(jpeg(400, 400)), {"guidance_scale": 1.5}, "guidance_scale"),
        ("", {}, "image"),
    ],
    ids=[
        "tall",
        "wide",
        "200x200",
        "not-an-image",
        "gif-data-uri",
        "bad-base64",
        "not-http",
        "unreachable",
        "no-prompt",
        "long-prompt",
        "long-negative-prompt",
        "duration-as-number",
        "bad-duration",
        "bad-guidance-scale",
        "empty-image",
    ],
)
def test_reference_kling_refuses_bad_json(
    sim: NovitaSimulator, client: httpx.Client, image: str, fields: dict[str, Any], rule: str
) -> None:
    sim.configure(personality="reference")
    body = {"image": image, "prompt": "slow zoom in", **fields}
    response = client.post(KLING, json={name: value for name, value in body.items() if value is not None})
    assert_novita_error(response, 400, "INVALID_REQUEST_BODY", rule)
    assert sim.stats()["tasks_created"]["kling"] == 0


def test_reference_kling_refuses_missing_expired_and_oversized_stills(
    sim: NovitaSimulator, client: httpx.Client, still_host: StillHost
) -> None:
    sim.configure(personality="reference")
    missing = post_kling_json(client, still_host.base_url + "/gone.jpg")
    assert_novita_error(missing, 400, "INVALID_REQUEST_BODY", "HTTP 404")
    sim.configure(media_ttl=0)
    expired = post_kling_json(client, seedream_still_url(client))
    assert_novita_error(expired, 400, "INVALID_REQUEST_BODY", "the link has expired")
    unknown = post_kling_json(client, f"{sim.base_url}/media/unknown.jpg")
    assert_novita_error(unknown, 400, "INVALID_REQUEST_BODY", "HTTP 404")
    sim.configure(media_ttl=3600, image_mode="large")
    large = post_kling_json(
        client,
        still_host.serve("/big.jpg", httpx.get(seedream_still_url(client), timeout=CLIENT_TIMEOUT).content),
    )
    assert_novita_error(large, 400, "INVALID_REQUEST_BODY", "must not exceed 10MB")
    assert sim.stats()["tasks_created"]["kling"] == 0


# --- balance, task-result timing ---


@pytest.mark.parametrize(
    ("personality", "status", "reason", "message"),
    [
        ("guide", 403, "NOT_ENOUGH_BALANCE", "not enough balance"),
        ("reference", 400, "BILLING_BALANCE_NOT_ENOUGH", "Insufficient balance"),
    ],
)
def test_an_exhausted_balance_refuses_every_paid_request(
    sim: NovitaSimulator, client: httpx.Client, personality: str, status: int, reason: str, message: str
) -> None:
    sim.configure(personality=personality)
    task_id = create_image_task(client, None)
    sim.configure(balance_exhausted=True)
    kling = (
        post_kling(client, jpeg(400, 400))
        if personality == "guide"
        else post_kling_json(client, data_uri(jpeg(400, 400)))
    )
    for response in (client.post(TXT2IMG, json=txt2img_body(None)), post_seedream(client), kling):
        assert_novita_error(response, status, reason, message)
    assert task_result(client, task_id)["task"]["task_id"] == task_id  # not paid, still answered
    stats = sim.stats()
    assert stats["tasks_created"] == {"txt2img": 1, "kling": 0} and stats["seedream_images"] == 0
    assert stats["requests"] == {"txt2img": 2, "seedream": 1, "kling": 1, "task_result": 1, "media": 0}
    sim.configure(balance_exhausted=False)
    assert post_seedream(client).status_code == 200


def test_task_result_answers_after_its_delay(sim: NovitaSimulator, client: httpx.Client) -> None:
    task_id = create_image_task(client, None)
    sim.configure(task_result_delay=0.3)
    started = time.monotonic()
    task_result(client, task_id)
    assert 0.3 <= time.monotonic() - started < 1.5


def test_stopping_does_not_wait_for_slow_answers() -> None:
    config = SimulatorConfig(task_result_delay=20.0, seedream_delay=20.0)
    sim = NovitaSimulator(api_key=KEY, config=config).start()
    outcomes: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> None:
        with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {KEY}"}) as http:
            try:
                http.request(method, path, timeout=10.0, **kwargs)
                outcomes.append("answered")
            except httpx.TransportError:
                outcomes.append("closed")

    callers = [
        threading.Thread(target=call, args=("GET", TASK_RESULT), kwargs={"params": {"task_id": "x"}}),
        threading.Thread(target=call, args=("POST", SEEDREAM), kwargs={"json": {"prompt": "p"}}),
    ]
    for caller in callers:
        caller.start()
    time.sleep(0.3)
    started = time.monotonic()
    sim.stop()
    for caller in callers:
        caller.join(5)
    assert time.monotonic() - started < 2.0
    assert outcomes == ["closed", "closed"]
    assert sim.stats()["seedream_images"] == 0


def test_multipart_parser_keeps_binary_parts_intact() -> None:
    payload = b"\r\n--not-the-boundary\r\n\r\n\x00\xff" * 1000
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="image"; filename="frame.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + payload + b"\r\n"
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="prompt"\r\n\r\n'
        b"zoom\r\n"
        b"--b0undary--\r\n"
    )
    parts = parse_form_data('multipart/form-data; boundary="b0undary"', body)
    assert parts["image"].data == payload and parts["image"].filename == "frame.jpg"
    assert parts["prompt"].data == b"zoom" and parts["prompt"].filename is None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cli_serves_until_sigterm() -> None:
    port = free_port()
    command = [sys.executable, "-m", "novita_simulator", "--host", "127.0.0.1", "--port", str(port)]
    command += [
        "--api-key",
        KEY,
        "--webhook-delay",
        "0.1",
        "--video-delay",
        "0.2",
        "--layout",
        "top",
        "--ttl",
        "60",
        "--personality",
        "reference",
        "--seedream-delay",
        "0.3",
        "--task-result-delay",
        "0.2",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        assert line == f"novita-simulator listening on http://127.0.0.1:{port}"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=CLIENT_TIMEOUT) as control:
            control.post("/_sim/config", json={"personality": "guide", "seedream_delay": 0})
            assert control.post("/_sim/reset").status_code == 200  # back to the settings given at start
            config = control.get("/_sim/stats").json()["config"]
        assert config["layout"] == "top" and config["media_ttl"] == 60 and config["image_delay"] == 0.1
        assert config["personality"] == "reference"
        assert (config["seedream_delay"], config["task_result_delay"]) == (0.3, 0.2)
        seedream_on_txt2img = httpx.post(
            f"http://127.0.0.1:{port}{TXT2IMG}",
            json=txt2img_body(None, model_name="seedream_3_0"),
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=CLIENT_TIMEOUT,
        )
        assert_novita_error(seedream_on_txt2img, 400, "INVALID_REQUEST_BODY", "not a Stable Diffusion")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)

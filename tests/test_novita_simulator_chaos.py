"""What the simulator offers a chaos run, over real loopback HTTP: the ledger of paid calls, media that
carry the id of the task that made them, and the faults a chaos run turns on all at once."""

from __future__ import annotations

import base64
import io
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import av
import httpx
import pytest
import test_novita_simulator as simulator_tests
from PIL import Image, UnidentifiedImageError
from test_novita_simulator import (
    CLIENT_TIMEOUT,
    SUCCEED,
    TASK_RESULT,
    TXT2IMG,
    WebhookReceiver,
    assert_novita_error,
    create_image_task,
    finished_result,
    jpeg,
    post_kling,
    post_kling_json,
    post_seedream,
    txt2img_body,
)

from novita_simulator import NovitaSimulator, media
from novita_simulator.media import media_id, strip_media_id

pytestmark = [pytest.mark.timeout(30), pytest.mark.stack]

# The simulator tests' fixtures: pytest finds fixtures by name in the test module.
sim, client, receiver = simulator_tests.sim, simulator_tests.client, simulator_tests.receiver

NO_REFUSALS = {"txt2img": {}, "seedream": {}, "kling": {}}
# every probabilistic fault at once, as a chaos run sets them
CHAOS = {
    "http_error_probability": 0.2,
    "http_error_statuses": [429, 503],
    "drop_response_probability": 0.2,
    "drop_webhook_probability": 0.2,
    "duplicate_webhook_probability": 0.3,
}


def sketch_hook(receiver: WebhookReceiver, stage: str) -> str:
    """A webhook URL like the pipeline's: ?sketch=&stage=&token= (the receiver's URL has sketch=abc)."""
    return f"{receiver.url}&stage={stage}&token=not-for-the-ledger"


def download(url: str) -> bytes:
    response = httpx.get(url, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.content


def event_image_url(event: dict[str, Any]) -> str:
    return str(event["payload"]["extra"]["images"][0]["image_url"])


def picture_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return opened.size


def decoded_frames(video: bytes) -> int:
    with av.open(io.BytesIO(video), mode="r") as container:
        return len(list(container.decode(video=0)))


# --- the ledger of paid calls ---


def test_the_ledger_lists_every_paid_call_in_order(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    started = time.time()
    image_task = create_image_task(client, sketch_hook(receiver, "image"), prompt="a walrus on stilts")
    still = download(event_image_url(receiver.wait_for(1)[0]))
    seedream = post_seedream(client, prompt="a heron in a hat")
    assert seedream.status_code == 200, seedream.text
    seedream_still = download(seedream.json()["image_urls"][0])
    video = post_kling(client, still, sketch_hook(receiver, "video"), prompt="the walrus wobbles")
    assert video.status_code == 200, video.text
    sim.configure(accept_then_drop_response={"kling": 1})
    with pytest.raises(httpx.TransportError):
        post_kling(client, still, prompt="never answered")
    assert sim.wait_idle(10)

    ledger = sim.ledger()
    assert ledger["refused"] == NO_REFUSALS
    first, second, third, fourth = ledger["paid"]
    assert first == {
        "seq": 1,
        "time": first["time"],
        "endpoint": "txt2img",
        "task_id": image_task,
        "webhook_url": sketch_hook(receiver, "image"),
        "sketch": "abc",
        "stage": "image",
        "prompt": "a walrus on stilts",
        "answered": True,
        "still_media_id": None,
    }
    assert started <= first["time"] <= second["time"] <= third["time"] <= fourth["time"] <= time.time()
    # Seedream makes no task: its entry names the id its image carries
    assert (second["seq"], second["endpoint"], second["prompt"], second["answered"]) == (
        2,
        "seedream",
        "a heron in a hat",
        True,
    )
    assert second["task_id"].startswith("seedream-") and media_id(seedream_still) == second["task_id"]
    assert (second["webhook_url"], second["sketch"], second["stage"]) == (None, None, None)
    assert (third["seq"], third["endpoint"], third["task_id"], third["stage"]) == (
        3,
        "kling",
        video.json()["task_id"],
        "video",
    )
    assert (third["prompt"], third["answered"], third["still_media_id"]) == (
        "the walrus wobbles",
        True,
        image_task,
    )
    # made and paid for, though the client never heard of it
    assert (fourth["endpoint"], fourth["answered"], fourth["still_media_id"]) == ("kling", False, image_task)
    assert fourth["webhook_url"] is None and fourth["prompt"] == "never answered"
    assert sim.stats()["tasks_created"] == {"txt2img": 1, "kling": 2}

    with httpx.Client(base_url=sim.base_url, timeout=CLIENT_TIMEOUT) as control:
        assert control.get("/_sim/ledger").json() == ledger
        assert control.post("/_sim/reset").status_code == 200
        assert control.get("/_sim/ledger").json() == {"paid": [], "refused": NO_REFUSALS}


def test_a_dropped_seedream_answer_is_paid_and_reference_kling_names_its_still(
    sim: NovitaSimulator, client: httpx.Client
) -> None:
    sim.configure(personality="reference", accept_then_drop_response={"seedream": 1})
    with pytest.raises(httpx.TransportError):
        post_seedream(client)
    still_url = post_seedream(client, size="720x1280").json()["image_urls"][0]
    response = post_kling_json(client, still_url, extra={"webhook": {"url": "http://127.0.0.1:9/hook"}})
    assert response.status_code == 200, response.text
    assert finished_result(sim, client, response.json()["task_id"])["task"]["status"] == SUCCEED
    dropped, drawn, video = sim.ledger()["paid"]
    assert (dropped["endpoint"], dropped["answered"]) == ("seedream", False)
    assert (drawn["endpoint"], drawn["answered"]) == ("seedream", True)
    assert media_id(download(still_url)) == drawn["task_id"] != dropped["task_id"]
    # the reference's Kling calls no webhook, so none is recorded; the still came from Seedream
    assert (video["endpoint"], video["webhook_url"], video["still_media_id"]) == (
        "kling",
        None,
        drawn["task_id"],
    )


def test_a_client_that_gave_up_waiting_is_paid_for_but_unanswered(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(kling_accept_delay=0.5)
    impatient = httpx.Client(base_url=sim.base_url, headers=dict(client.headers), timeout=0.2)
    with impatient, pytest.raises(httpx.ReadTimeout):
        post_kling(impatient, jpeg(400, 400), receiver.url)
    receiver.wait_for(1)
    assert post_kling(client, jpeg(400, 400)).status_code == 200
    assert [call["answered"] for call in sim.ledger()["paid"]] == [False, True]


def test_refused_calls_are_counted_by_reason_and_not_paid(sim: NovitaSimulator, client: httpx.Client) -> None:
    sim.configure(http_errors={"txt2img": [429], "task_result": [503]})
    assert_novita_error(client.post(TXT2IMG, json=txt2img_body(None)), 429, "RATE_LIMIT_EXCEEDED")
    assert_novita_error(client.post(TXT2IMG, json=txt2img_body(None, width=64)), 400, "INVALID_REQUEST_BODY")
    assert_novita_error(client.get(TASK_RESULT, params={"task_id": "x"}), 503, "SERVICE_UNAVAILABLE")
    assert_novita_error(post_kling(client, jpeg(100, 100)), 400, "INVALID_REQUEST_BODY")
    with httpx.Client(base_url=sim.base_url, timeout=CLIENT_TIMEOUT) as anonymous:
        assert_novita_error(post_kling(anonymous, jpeg(400, 400)), 401, "INVALID_API_KEY")
    sim.configure(balance_exhausted=True)
    assert_novita_error(post_seedream(client), 403, "NOT_ENOUGH_BALANCE")
    # an injected 403 looks like a spent balance to the client, but the ledger tells them apart
    sim.configure(balance_exhausted=False, http_error_probability=1.0, http_error_statuses=[403])
    assert_novita_error(post_seedream(client), 403, "NOT_ENOUGH_BALANCE")
    assert_novita_error(client.get(TASK_RESULT, params={"task_id": "x"}), 403, "NOT_ENOUGH_BALANCE")

    assert sim.ledger() == {
        "paid": [],
        "refused": {
            "txt2img": {"injected 429": 1, "INVALID_REQUEST_BODY": 1},
            "seedream": {"NOT_ENOUGH_BALANCE": 1, "injected 403": 1},
            "kling": {"INVALID_REQUEST_BODY": 1, "INVALID_API_KEY": 1},
        },
    }
    stats = sim.stats()
    assert stats["tasks_created"] == {"txt2img": 0, "kling": 0} and stats["seedream_images"] == 0


# --- media that carry the id of the task that made them ---


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [("normal", "JPEG"), ("png", "PNG"), ("small", "JPEG"), ("large", "JPEG"), ("not_image", None)],
)
def test_every_still_carries_its_task_id(
    sim: NovitaSimulator,
    client: httpx.Client,
    receiver: WebhookReceiver,
    mode: str,
    image_format: str | None,
) -> None:
    sim.configure(image_mode=mode)
    task_id = create_image_task(client, receiver.url, image_num=2)
    urls = [image["image_url"] for image in receiver.wait_for(1)[0]["payload"]["extra"]["images"]]
    urls.append(finished_result(sim, client, task_id)["images"][0]["image_url"])
    stills = [download(url) for url in urls]
    assert [media_id(still) for still in stills] == [task_id] * 3
    if image_format is None:
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(stills[0]))
        return
    with Image.open(io.BytesIO(stills[0])) as still:
        still.load()
        assert still.format == image_format
    if mode == "large":
        assert len(stills[0]) > 10 * 1024 * 1024  # still too large for Kling


def test_stills_of_one_prompt_differ_only_by_their_id(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    task_ids = {create_image_task(client, receiver.url, prompt="one prompt, two sketches") for _ in range(2)}
    stills = [download(event_image_url(event)) for event in receiver.wait_for(2)]
    assert {media_id(still) for still in stills} == task_ids
    assert stills[0] != stills[1] and strip_media_id(stills[0]) == strip_media_id(stills[1])
    assert media_id(strip_media_id(stills[0])) is None
    assert picture_size(strip_media_id(stills[0])) == picture_size(stills[0]) == (640, 960)


def test_seedream_images_carry_their_own_id_as_a_link_or_as_base64(
    sim: NovitaSimulator, client: httpx.Client
) -> None:
    by_link = download(post_seedream(client).json()["image_urls"][0])
    encoded = post_seedream(client, response_format="b64_json").json()["binary_data_base64"][0]
    as_base64 = base64.b64decode(encoded)
    ids = [call["task_id"] for call in sim.ledger()["paid"]]
    assert [media_id(by_link), media_id(as_base64)] == ids and ids[0] != ids[1]
    assert strip_media_id(by_link) == strip_media_id(as_base64)


def test_a_kling_video_carries_its_task_id_and_still_decodes(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    response = post_kling(client, jpeg(720, 1280), receiver.url)
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    video = download(receiver.wait_for(1)[0]["payload"]["extra"]["videos"][0]["video_url"])
    assert media_id(video) == task_id
    label = b"novita-media-id:" + task_id.encode()
    assert video.endswith((8 + len(label)).to_bytes(4, "big") + b"free" + label)  # a top-level box, last
    assert decoded_frames(video) == decoded_frames(strip_media_id(video)) == media.VIDEO_FRAMES
    assert sim.ledger()["paid"][0]["still_media_id"] is None  # an upload of the client's own


def test_many_sketches_of_one_prompt_draw_one_still_and_encode_one_video(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    prompt = f"a thousand alike sketches {time.monotonic_ns()}"  # a key no earlier test cached
    draws, encodings = media.make_still.cache_info().misses, media.make_video.cache_info().misses
    sketches = 8
    image_tasks = [
        create_image_task(client, receiver.url, prompt=prompt, width=400, height=400) for _ in range(sketches)
    ]
    stills = [download(event_image_url(event)) for event in receiver.wait_for(sketches)]
    assert sorted(media_id(still) or "" for still in stills) == sorted(image_tasks)
    # all at once, so that their encodings would overlap if each task made its own
    with ThreadPoolExecutor(sketches) as pool:
        answers = list(pool.map(lambda still: post_kling(client, still, receiver.url), stills))
    video_tasks = sorted(answer.json()["task_id"] for answer in answers)
    events = receiver.wait_for(2 * sketches)[sketches:]
    videos = [download(event["payload"]["extra"]["videos"][0]["video_url"]) for event in events]
    assert sorted(media_id(video) or "" for video in videos) == video_tasks
    assert len({strip_media_id(video) for video in videos}) == 1
    assert media.make_still.cache_info().misses - draws == 1
    assert media.make_video.cache_info().misses - encodings == 1
    assert sorted(call["still_media_id"] for call in sim.ledger()["paid"][sketches:]) == sorted(image_tasks)


# --- faults for the chaos run ---


def test_a_slow_media_host_answers_late_and_trickles_the_body(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    create_image_task(client, receiver.url)
    url = event_image_url(receiver.wait_for(1)[0])
    fast = download(url)
    rate = len(fast) * 2  # the body should take about half a second
    sim.configure(media_delay=0.4, media_bytes_per_second=rate)
    started = time.monotonic()
    with httpx.stream("GET", url, timeout=CLIENT_TIMEOUT) as response:
        headers_after = time.monotonic() - started
        assert response.status_code == 200 and int(response.headers["Content-Length"]) == len(fast)
        body = response.read()
    body_took = time.monotonic() - started - headers_after
    assert body == fast and media_id(body) == media_id(fast)
    assert 0.4 <= headers_after < 1.5
    assert 0.4 <= body_took < 2.0  # the last twentieth may leave at once

    started = time.monotonic()
    missing = httpx.get(f"{sim.base_url}/media/unknown.jpg", timeout=CLIENT_TIMEOUT)
    assert missing.status_code == 404 and time.monotonic() - started >= 0.4
    # a client that gives up halfway leaves the host serving the next one
    with httpx.stream("GET", url, timeout=CLIENT_TIMEOUT) as response:
        next(response.iter_bytes())
    sim.configure(media_delay=0, media_bytes_per_second=0)
    assert download(url) == fast


def test_late_webhooks_arrive_out_of_order(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(webhook_delay_max=1.0, fault_seed=3)
    created = [create_image_task(client, receiver.url) for _ in range(8)]
    started = time.monotonic()
    events = receiver.wait_for(8)
    arrived = [event["payload"]["task"]["task_id"] for event in events]
    assert sorted(arrived) == sorted(created) and arrived != created
    assert 0.3 <= max(receiver.arrival_times) - min(receiver.arrival_times) < 1.5
    assert max(receiver.arrival_times) - started < 2.0
    assert sim.wait_idle(5) and sim.stats()["webhook_attempts"] == 8  # late, but each sent once


def chaos_round(sim: NovitaSimulator, client: httpx.Client, webhook_url: str) -> tuple[list[str], list[int]]:
    """Thirty txt2img calls in turn: what each answer was, and how many webhooks each paid task delivered."""
    first = len(sim.ledger()["paid"])
    answers = []
    for _ in range(30):
        try:
            answers.append(str(client.post(TXT2IMG, json=txt2img_body(webhook_url)).status_code))
        except httpx.TransportError:
            answers.append("dropped")
    assert sim.wait_idle(10)
    paid = sim.ledger()["paid"][first:]
    # an answered call is a paid one, and a dropped answer a paid one that went unanswered
    assert ["200" if call["answered"] else "dropped" for call in paid] == [
        answer for answer in answers if answer in ("200", "dropped")
    ]
    # answered ones: a burst of deliveries can overflow the receiver's backlog, and a retry follows
    delivered = Counter(
        attempt["task_id"] for attempt in sim.stats()["webhook_deliveries"] if attempt["status_code"] == 200
    )
    return answers, [delivered[call["task_id"]] for call in paid]


def test_probabilistic_faults_replay_under_the_same_seed(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(fault_seed=11, **CHAOS)
    answers, webhooks = chaos_round(sim, client, receiver.url)
    assert set(answers) == {"200", "429", "503", "dropped"}
    assert set(webhooks) == {0, 1, 2}  # dropped, sent, sent twice
    refused = sim.ledger()["refused"]["txt2img"]
    assert refused == {f"injected {status}": answers.count(status) for status in ("429", "503")}

    sim.configure(fault_seed=11)  # setting the seed again restarts its decisions
    assert chaos_round(sim, client, receiver.url) == (answers, webhooks)
    sim.reset()
    sim.configure(fault_seed=12, **CHAOS)
    assert chaos_round(sim, client, receiver.url) != (answers, webhooks)
    sim.reset()
    assert chaos_round(sim, client, receiver.url) == (["200"] * 30, [1] * 30)  # all off by default


def test_a_dropped_webhook_leaves_the_task_to_task_result(
    sim: NovitaSimulator, client: httpx.Client, receiver: WebhookReceiver
) -> None:
    sim.configure(drop_webhook_probability=1.0)
    task_id = create_image_task(client, receiver.url)
    assert finished_result(sim, client, task_id)["task"]["status"] == SUCCEED
    assert receiver.bodies == [] and sim.stats()["webhook_attempts"] == 0
    sim.configure(drop_webhook_probability=0.0, duplicate_webhook_probability=1.0, deliveries=2)
    create_image_task(client, receiver.url)
    assert sim.wait_idle(5) and len(receiver.bodies) == 3  # one more than `deliveries`


@pytest.mark.parametrize(
    "changes",
    [
        {"drop_webhook_probability": 1.5},
        {"duplicate_webhook_probability": -0.1},
        {"drop_response_probability": "often"},
        {"http_error_probability": 2},
        {"http_error_statuses": []},
        {"http_error_statuses": [200]},
        {"media_delay": -1},
        {"media_bytes_per_second": 0.5},
        {"webhook_delay_max": -0.5},
        {"fault_seed": "seven"},
    ],
)
def test_chaos_settings_are_validated(sim: NovitaSimulator, changes: dict[str, Any]) -> None:
    with httpx.Client(base_url=sim.base_url, timeout=CLIENT_TIMEOUT) as control:
        refused = control.post("/_sim/config", json=changes)
        assert refused.status_code == 400 and refused.json()["reason"] == "INVALID_CONFIG"
        config = control.get("/_sim/stats").json()["config"]
    assert {name: config[name] for name in changes} != changes
    assert config["http_error_statuses"] == [429, 500, 503]
    assert all(config[name] == 0 for name in CHAOS if name.endswith("_probability"))
    assert (config["media_delay"], config["media_bytes_per_second"], config["webhook_delay_max"]) == (0, 0, 0)

"""Publishing over Pub/Sub's REST API: against the real emulator (read back with a pull
subscription), and what is retried, with a scripted transport."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from devstack.pubsub import PubSubEmulator
from shared.core.http import KeptAlive, Request, Response, tls_context
from shared.google.api import RETRY_WINDOW, TIMEOUT, GoogleApi, NotFound
from shared.google.pubsub import MAX_BATCH, Message, PubSub
from tests.conftest import Scripted, firestore_error
from tests.google_http import MockHttp

# A project of these tests' own on the shared emulator.
PROJECT = "rest-tests"


class Counting(KeptAlive):
    """Passes requests to the emulator, keeping each one's method, path and JSON body."""

    def __init__(self) -> None:
        super().__init__(tls_context(), TIMEOUT)
        self.requests: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, request: Request) -> Response:
        self.requests.append((request.method, urlsplit(request.url).path, json.loads(request.body or b"{}")))
        return super().send(request)


@dataclass
class Topic:
    """A topic of the tests' project, with a pull subscription that reads it back."""

    emulator: PubSubEmulator
    name: str

    @property
    def subscription(self) -> str:
        return f"{self.emulator.url}/v1/projects/{PROJECT}/subscriptions/{self.name}-pull"

    def create(self) -> Topic:
        topic = f"projects/{PROJECT}/topics/{self.name}"
        httpx.put(f"{self.emulator.url}/v1/{topic}", json={}, timeout=10).raise_for_status()
        httpx.put(self.subscription, json={"topic": topic}, timeout=10).raise_for_status()
        return self

    def pull(self, count: int, timeout: float = 20.0) -> list[dict[str, object]]:
        """The next `count` messages (acknowledged as they arrive), within `timeout` seconds."""
        received: list[dict[str, object]] = []
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10) as http:
            while len(received) < count and time.monotonic() < deadline:
                answer = http.post(
                    f"{self.subscription}:pull", json={"maxMessages": 1000, "returnImmediately": True}
                )
                answer.raise_for_status()
                pulled = answer.json().get("receivedMessages", [])
                if pulled:
                    ack_ids = [m["ackId"] for m in pulled]
                    http.post(f"{self.subscription}:acknowledge", json={"ackIds": ack_ids}).raise_for_status()
                    received += [m["message"] for m in pulled]
                else:
                    time.sleep(0.05)
        return received


@pytest.fixture
def counting() -> Counting:
    return Counting()


@pytest.fixture
def client(pubsub: PubSubEmulator, counting: Counting) -> Iterator[PubSub]:
    with closing(counting) as http:
        yield PubSub(GoogleApi(http), PROJECT, base_url=pubsub.url)


@pytest.fixture
def topic(pubsub: PubSubEmulator) -> Topic:
    return Topic(pubsub, f"steps-{uuid.uuid4().hex[:8]}").create()


def test_published_messages_arrive_with_their_data_and_attributes(client: PubSub, topic: Topic) -> None:
    messages = [
        Message(b'{"kind": "check"}', {"signature": "abc", "kind": "check"}),
        Message(bytes(range(256)), {}),  # any bytes, not only text
        Message(b"x", {"kind": "copy"}),
    ]
    ids = client.publish(topic.name, messages)
    received = topic.pull(len(messages))
    assert len(ids) == 3 and len(set(ids)) == 3
    assert sorted(
        (str(m["messageId"]), base64.b64decode(str(m["data"])), m.get("attributes", {})) for m in received
    ) == sorted(zip(ids, [m.data for m in messages], [dict(m.attributes) for m in messages], strict=True))


def test_more_messages_than_one_call_takes_are_published_in_batches(
    client: PubSub, topic: Topic, counting: Counting
) -> None:
    count = 2 * MAX_BATCH + 500
    ids = client.publish(topic.name, [Message(str(i).encode()) for i in range(count)])
    publishes = [body for method, path, body in counting.requests if path.endswith(":publish")]
    assert [len(body["messages"]) for body in publishes] == [MAX_BATCH, MAX_BATCH, 500]
    assert len(set(ids)) == count
    received = topic.pull(count)
    assert sorted(int(base64.b64decode(str(m["data"]))) for m in received) == list(range(count))


def test_publishing_to_a_topic_that_is_not_there_is_not_found_at_once(
    client: PubSub, counting: Counting
) -> None:
    with pytest.raises(NotFound):
        client.publish("no-such-topic", [Message(b"x")])
    assert len(counting.requests) == 1  # a refusal, not a fault that may pass


def test_publishing_nothing_calls_nothing(client: PubSub, counting: Counting) -> None:
    assert client.publish("no-such-topic", []) == []
    assert counting.requests == []


def test_a_fault_that_passes_is_tried_again_within_the_window() -> None:
    ok = httpx.Response(200, json={"messageIds": ["7"]})
    script, sleeps = Scripted(firestore_error(503, "UNAVAILABLE"), httpx.ConnectError("refused"), ok), []
    client = PubSub(GoogleApi(MockHttp(script), sleep=sleeps.append), "p", base_url="http://pubsub.test")
    assert client.publish("steps", [Message(b"step", {"kind": "check"})]) == ["7"]
    assert len(script.requests) == 3 and len(sleeps) == 2 and sum(sleeps) < RETRY_WINDOW
    for request in script.requests:
        assert str(request.url) == "http://pubsub.test/v1/projects/p/topics/steps:publish"
        assert json.loads(request.content) == {
            "messages": [{"data": base64.b64encode(b"step").decode(), "attributes": {"kind": "check"}}]
        }

"""The slow work of a sketch as Pub/Sub steps: the message, its signature, and reading a push.

A webhook delivery, a `GET ?id=` and the sweep hand work on as a step message on `TOPIC`. Its push
subscription calls the private door (`novita_webhook?action=step`), which does the step within its
deadline and answers 2xx (done, or nothing to do) or 5xx (a fault that may pass: Pub/Sub delivers
it again, with backoff). A step that keeps failing is moved to `DEAD_LETTER_TOPIC`, whose
subscription calls `?action=dead_letter` (`shared/pipeline/topology.py`).

Each message's data is signed (`shared/core/tokens.py`) and names its route (`step`), when it was
published and until when it may be done: a push the project did not publish is refused, and so is
one past its time. Pub/Sub hands a dead letter on unchanged, so the dead-letter route cannot be told
apart by the signature: it takes only messages that carry Pub/Sub's dead-letter attributes, and it
changes a sketch only when the sketch's own record shows that step failing (`shared/pipeline/steps.py`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

from shared.core.tokens import step_signature, verify
from shared.google.api import ApiError
from shared.google.pubsub import Message, PubSub
from shared.novita.webhook import is_task_id
from shared.pipeline.topology import TOPIC
from shared.sketch.model import Stage, StepKind, is_sketch_id

SIGNATURE_ATTRIBUTE = "signature"
# Set by Pub/Sub on every message it moves to a dead-letter topic.
DEAD_LETTER_SOURCE_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"
MAX_MESSAGE_BYTES = 16 * 1024
MAX_ATTRIBUTE = 1024
Route = Literal["step", "dead_letter"]


@dataclass(frozen=True, kw_only=True)
class Step:
    """One step: what to do for which sketch. A webhook's hint names the task and stage it reported;
    `result` is the delivery's own result, carried only in Novita's webhook test mode."""

    kind: StepKind
    sketch_id: str
    task_id: str | None = None
    stage: Stage | None = None
    result: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, StepKind):
            raise ValueError(f"step kind {self.kind!r:.40} is none of {[k.value for k in StepKind]}")
        if not isinstance(self.sketch_id, str) or not is_sketch_id(self.sketch_id):
            raise ValueError("step sketch_id must be 32 hexadecimal characters")
        if self.task_id is not None and not (isinstance(self.task_id, str) and is_task_id(self.task_id)):
            raise ValueError("step task_id must be 1 to 128 printable ASCII characters")
        if self.stage is not None and self.stage not in get_args(Stage):
            raise ValueError(f"step stage {self.stage!r:.40} is neither image nor video")
        if self.result is not None and not isinstance(self.result, dict):
            raise ValueError("step result must be an object")

    def to_json(self) -> dict[str, Any]:
        """The step as its message carries it (no null fields)."""
        fields = {"kind": self.kind.value, "sketch_id": self.sketch_id, "task_id": self.task_id}
        fields |= {"stage": self.stage, "result": self.result}
        return {name: value for name, value in fields.items() if value is not None}

    @classmethod
    def from_json(cls, value: object) -> Step:
        """The step `to_json` wrote; ValueError for anything else."""
        if not isinstance(value, dict) or not {"kind", "sketch_id"} <= value.keys() <= _STEP_FIELDS:
            raise ValueError("not a step: it needs kind and sketch_id, and may name task_id, stage, result")
        return cls(**{**value, "kind": StepKind(value["kind"])})  # ValueError for a kind it is not


_STEP_FIELDS = frozenset({"kind", "sketch_id", "task_id", "stage", "result"})


@dataclass(frozen=True)
class Hint:
    """What a webhook delivery said: the task it reported, for the stage its URL was registered for.
    `result` is the delivery's own result, used only in Novita's webhook test mode."""

    task_id: str
    stage: Stage
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Signed:
    """A message's data: the step, the route it is published for, and its lifetime (epoch seconds)."""

    route: Literal["step"]
    published_at: float
    expires_at: float
    step: Step

    def to_bytes(self) -> bytes:
        data = {"route": self.route, "published_at": self.published_at, "expires_at": self.expires_at}
        return json.dumps({**data, "step": self.step.to_json()}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> _Signed:
        value = json.loads(data)
        if not isinstance(value, dict) or value.keys() != {"route", "published_at", "expires_at", "step"}:
            raise ValueError("not a signed step: route, published_at, expires_at and step, no more")
        if value["route"] != "step":
            raise ValueError(f"route {value['route']!r:.40} is not step")
        published_at, expires_at = _seconds(value["published_at"]), _seconds(value["expires_at"])
        return cls("step", published_at, expires_at, Step.from_json(value["step"]))


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r:.40} is not a time in epoch seconds")
    return float(value)


def message(step: Step, secret: str, lifetime: float, now: float) -> Message:
    data = _Signed("step", now, now + lifetime, step).to_bytes()
    attributes = {
        "kind": step.kind.value,
        "sketch_id": step.sketch_id,
        SIGNATURE_ATTRIBUTE: step_signature(secret, data),
    }
    return Message(data, attributes)


@dataclass(frozen=True)
class _Push:
    """What a push request carries that a step needs (Pub/Sub's other fields are left alone)."""

    data: bytes
    attributes: dict[str, str]
    delivery_attempt: int | None

    @classmethod
    def read(cls, body: object) -> _Push:
        """The push in `body`; MalformedPush when it is none."""
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(message, dict):
            raise MalformedPush("the body is not a Pub/Sub push message")
        data = message.get("data", "")
        attributes = message.get("attributes", {})
        attempt = body.get("deliveryAttempt")
        if (
            not isinstance(data, str)
            or len(data) > MAX_MESSAGE_BYTES * 2
            or not isinstance(attributes, dict)
            or not all(isinstance(v, str) and len(v) <= MAX_ATTRIBUTE for v in attributes.values())
            or not (attempt is None or (isinstance(attempt, int) and not isinstance(attempt, bool)))
        ):
            raise MalformedPush("the body is not a Pub/Sub push message")
        try:
            decoded = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise MalformedPush("the push message's data is not base64") from exc
        return cls(decoded, attributes, attempt)


class MalformedPush(Exception):
    """The body is not a Pub/Sub push of a step."""


class Misrouted(Exception):
    """A signed step that did not come the way its route says (a step replayed as a dead letter)."""


class Expired(Exception):
    """A signed step past the time it could be done: it changes nothing."""


@dataclass(frozen=True)
class Delivery:
    step: Step
    # Set by Pub/Sub when the subscription has a dead-letter policy; the emulator leaves it out.
    attempt: int | None
    published_at: float


def read_push(body: object, secret: str, route: Route, now: float | None = None) -> Delivery:
    """The step a Pub/Sub push carries on `route`. InvalidToken if the project did not sign it,
    Misrouted or Expired when it may not be done here or now, MalformedPush for anything else."""
    push = _Push.read(body)
    verify(step_signature(secret, push.data), push.attributes.get(SIGNATURE_ATTRIBUTE))
    try:
        signed = _Signed.from_bytes(push.data)
    except ValueError as exc:
        # Signed by us, yet not a step this code knows: nothing to do with it, ever.
        raise MalformedPush("the message is not a step") from exc
    dead_lettered = DEAD_LETTER_SOURCE_ATTRIBUTE in push.attributes
    if dead_lettered != (route == "dead_letter"):
        raise Misrouted(f"a {signed.route} message that Pub/Sub did not route to {route}")
    if (now if now is not None else time.time()) > signed.expires_at:
        raise Expired("the step is past the time it could be done")
    return Delivery(signed.step, push.delivery_attempt, signed.published_at)


class QueueUnavailable(Exception):
    """Pub/Sub could not take the step now; the caller answers 5xx so that its own sender tries again."""


class StepQueue:
    def __init__(self, pubsub: PubSub, secret: str, lifetime: float) -> None:
        self._pubsub = pubsub
        self._secret = secret
        # A step is worth doing only while its sketch may still finish (MAX_SKETCH_AGE_SECONDS).
        self._lifetime = lifetime

    def publish(self, *steps: Step) -> None:
        if not steps:
            return
        now = time.time()
        try:
            self._pubsub.publish(TOPIC, [message(step, self._secret, self._lifetime, now) for step in steps])
        except ApiError as exc:
            # Any refusal, a missing topic included (a deploy or an emulator half done), is answered
            # 5xx by the caller: its sender tries again, and nothing is lost meanwhile.
            raise QueueUnavailable(f"Pub/Sub did not take {len(steps)} step(s): {exc}") from exc

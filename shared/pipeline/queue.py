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
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.core.tokens import step_signature, verify
from shared.google.api import ApiError
from shared.google.pubsub import Message, PubSub
from shared.novita.models import TaskId
from shared.pipeline.topology import TOPIC
from shared.sketch.model import Stage, StepKind

SIGNATURE_ATTRIBUTE = "signature"
# Set by Pub/Sub on every message it moves to a dead-letter topic.
DEAD_LETTER_SOURCE_ATTRIBUTE = "CloudPubSubDeadLetterSourceSubscription"
MAX_MESSAGE_BYTES = 16 * 1024
Route = Literal["step", "dead_letter"]

SketchId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Step(BaseModel):
    """One step: what to do for which sketch. A webhook's hint names the task and stage it reported;
    `result` is the delivery's own result, carried only in Novita's webhook test mode."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    kind: StepKind
    sketch_id: SketchId
    task_id: TaskId | None = None
    stage: Stage | None = None
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Hint:
    """What a webhook delivery said: the task it reported, for the stage its URL was registered for.
    `result` is the delivery's own result, used only in Novita's webhook test mode."""

    task_id: str
    stage: Stage
    result: dict[str, Any] | None = None


class _Signed(BaseModel):
    """A message's data: the step, the route it is published for, and its lifetime (epoch seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    route: Literal["step"]
    published_at: float
    expires_at: float
    step: Step


def message(step: Step, secret: str, lifetime: float, now: float) -> Message:
    signed = _Signed(route="step", published_at=now, expires_at=now + lifetime, step=step)
    data = json.dumps(signed.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode()
    attributes = {
        "kind": step.kind.value,
        "sketch_id": step.sketch_id,
        SIGNATURE_ATTRIBUTE: step_signature(secret, data),
    }
    return Message(data, attributes)


class _PushMessage(BaseModel):
    model_config = ConfigDict(defer_build=True)

    data: Annotated[str, Field(max_length=MAX_MESSAGE_BYTES * 2)] = ""
    attributes: dict[str, Annotated[str, Field(max_length=1024)]] = {}


class _Push(BaseModel):
    model_config = ConfigDict(defer_build=True)

    message: _PushMessage
    deliveryAttempt: int | None = None  # noqa: N815 (Pub/Sub's own name)


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
    try:
        push = _Push.model_validate(body)
        data = base64.b64decode(push.message.data, validate=True)
    except (ValidationError, binascii.Error) as exc:
        raise MalformedPush("the body is not a Pub/Sub push message") from exc
    verify(step_signature(secret, data), push.message.attributes.get(SIGNATURE_ATTRIBUTE))
    try:
        signed = _Signed.model_validate_json(data)
    except ValidationError as exc:
        # Signed by us, yet not a step this code knows: nothing to do with it, ever.
        raise MalformedPush("the message is not a step") from exc
    dead_lettered = DEAD_LETTER_SOURCE_ATTRIBUTE in push.message.attributes
    if dead_lettered != (route == "dead_letter"):
        raise Misrouted(f"a {signed.route} message that Pub/Sub did not route to {route}")
    if (now if now is not None else time.time()) > signed.expires_at:
        raise Expired("the step is past the time it could be done")
    return Delivery(signed.step, push.deliveryAttempt, signed.published_at)


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

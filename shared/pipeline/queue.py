"""The slow work of a sketch as Pub/Sub steps: the message and its signature.

A webhook delivery, a `GET ?id=` and the sweep hand work on as a step message on `TOPIC`. Its push
subscription calls `novita_webhook?action=step` back, which does the step within
`STEP_DEADLINE_SECONDS` and answers 2xx (done, or nothing to do) or 5xx (a fault that may pass:
Pub/Sub delivers it again, with backoff). A step that keeps failing is moved to `DEAD_LETTER_TOPIC`,
whose subscription calls `novita_webhook?action=dead_letter`, which fails the sketch with the reason.

Each message carries a signature over its data (`shared/core/tokens.py`), so a push the project did not
publish is refused with 401. The topics and subscriptions are defined in `shared/pipeline/topology.py`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.core.tokens import step_signature, verify
from shared.google.api import ApiError
from shared.google.pubsub import Message, PubSub
from shared.novita.models import TaskId
from shared.pipeline.topology import TOPIC
from shared.sketch.model import Stage, StepKind

SIGNATURE_ATTRIBUTE = "signature"
MAX_MESSAGE_BYTES = 16 * 1024


SketchId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]


class Step(BaseModel):
    """One step: what to do for which sketch. A webhook's hint names the task and stage it reported;
    `result` is the delivery's own result, carried only in Novita's webhook test mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: StepKind
    sketch_id: SketchId
    task_id: TaskId | None = None
    stage: Stage | None = None
    result: dict[str, Any] | None = None

    def message(self, secret: str) -> Message:
        data = json.dumps(self.model_dump(mode="json", exclude_none=True), separators=(",", ":")).encode()
        attributes = {
            "kind": self.kind.value,
            "sketch_id": self.sketch_id,
            SIGNATURE_ATTRIBUTE: step_signature(secret, data),
        }
        return Message(data, attributes)


class _PushMessage(BaseModel):
    data: Annotated[str, Field(max_length=MAX_MESSAGE_BYTES * 2)] = ""
    attributes: dict[str, Annotated[str, Field(max_length=1024)]] = {}


class _Push(BaseModel):
    message: _PushMessage
    deliveryAttempt: int | None = None  # noqa: N815 (Pub/Sub's own name)


class MalformedPush(Exception):
    """The body is not a Pub/Sub push of a step."""


@dataclass(frozen=True)
class Delivery:
    step: Step
    # Set by Pub/Sub when the subscription has a dead-letter policy; the emulator leaves it out.
    attempt: int | None
    attributes: dict[str, str]


def read_push(body: object, secret: str) -> Delivery:
    """The step a Pub/Sub push carries; InvalidToken if the project did not sign it."""
    try:
        push = _Push.model_validate(body)
        data = base64.b64decode(push.message.data, validate=True)
    except (ValidationError, binascii.Error) as exc:
        raise MalformedPush("the body is not a Pub/Sub push message") from exc
    verify(step_signature(secret, data), push.message.attributes.get(SIGNATURE_ATTRIBUTE))
    try:
        step = Step.model_validate_json(data)
    except ValidationError as exc:
        # Signed by us, yet not a step this code knows: nothing to do with it, ever.
        raise MalformedPush("the message is not a step") from exc
    return Delivery(step, push.deliveryAttempt, dict(push.message.attributes))


class QueueUnavailable(Exception):
    """Pub/Sub could not take the step now; the caller answers 5xx so that its own sender tries again."""


class StepQueue:
    def __init__(self, pubsub: PubSub, secret: str) -> None:
        self._pubsub = pubsub
        self._secret = secret

    def publish(self, *steps: Step) -> None:
        if not steps:
            return
        try:
            self._pubsub.publish(TOPIC, [step.message(self._secret) for step in steps])
        except ApiError as exc:
            # Any refusal, a missing topic included (a deploy or an emulator half done), is answered
            # 5xx by the caller: its sender tries again, and nothing is lost meanwhile.
            raise QueueUnavailable(f"Pub/Sub did not take {len(steps)} step(s): {exc}") from exc

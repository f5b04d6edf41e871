"""The project's own signatures: webhook URL tokens over the sketch, its stage and when they were
issued; step messages signed with their route and lifetime; the sweep token."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.core.tokens import (
    InvalidToken,
    sketch_token,
    step_signature,
    sweep_token,
    verify,
    verify_webhook,
    webhook_url,
)
from shared.pipeline.queue import (
    DEAD_LETTER_SOURCE_ATTRIBUTE,
    Expired,
    MalformedPush,
    Misrouted,
    Step,
    message,
    read_push,
)
from shared.sketch.model import StepKind

SECRET = "s3cret-for-tokens"
SKETCH = "0123456789abcdef0123456789abcdef"
ISSUED = 1_800_000_000
LIFETIME = 3 * 3600.0


def test_url_keeps_its_own_query_and_carries_a_token_over_sketch_stage_and_issue_time() -> None:
    url = webhook_url("https://fn.example/hook?x=1", SECRET, SKETCH, "video", ISSUED)
    query = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}

    assert query["x"] == "1" and query["sketch"] == SKETCH and query["stage"] == "video"
    assert query["t"] == str(ISSUED)
    verify_webhook(SECRET, SKETCH, "video", query["t"], query["token"], ISSUED + 60, LIFETIME)


@pytest.mark.parametrize(
    ("sketch_id", "stage", "issued", "secret"),
    [
        ("f" * 32, "video", ISSUED, SECRET),  # another sketch
        (SKETCH, "image", ISSUED, SECRET),  # another stage
        (SKETCH, "video", ISSUED + 1, SECRET),  # another issue time (a token made to look younger)
        (SKETCH, "video", ISSUED, "another-secret"),  # another secret (a rotated one)
    ],
)
def test_a_token_is_good_for_its_own_sketch_stage_time_and_secret_only(
    sketch_id: str, stage: str, issued: int, secret: str
) -> None:
    token = sketch_token(SECRET, SKETCH, "video", ISSUED)
    with pytest.raises(InvalidToken):
        verify_webhook(secret, sketch_id, stage, str(issued), token, ISSUED, LIFETIME)


@pytest.mark.parametrize(
    ("now", "valid"),
    [
        (ISSUED, True),
        (ISSUED + LIFETIME, True),
        (ISSUED + LIFETIME + 1, False),  # past its lifetime: well after Novita's last retry
        (ISSUED - 3600, False),  # issued in the future: not one of ours
    ],
)
def test_a_webhook_token_lives_a_bounded_time_after_its_task_was_started(now: float, valid: bool) -> None:
    token = sketch_token(SECRET, SKETCH, "image", ISSUED)
    if valid:
        verify_webhook(SECRET, SKETCH, "image", str(ISSUED), token, now, LIFETIME)
    else:
        with pytest.raises(InvalidToken):
            verify_webhook(SECRET, SKETCH, "image", str(ISSUED), token, now, LIFETIME)


@pytest.mark.parametrize("issued", [None, "", "soon", "-1", "1" * 13, "1e9"])
def test_a_missing_or_malformed_issue_time_is_refused(issued: str | None) -> None:
    token = sketch_token(SECRET, SKETCH, "image", ISSUED)
    with pytest.raises(InvalidToken):
        verify_webhook(SECRET, SKETCH, "image", issued, token, ISSUED, LIFETIME)


@pytest.mark.parametrize("presented", [None, "", "x", "é" * 43, sweep_token(SECRET)])
def test_invalid_tokens_are_refused(presented: str | None) -> None:
    with pytest.raises(InvalidToken):
        verify(sketch_token(SECRET, SKETCH, "image", ISSUED), presented)


def _push(data: bytes, signature: str | None, **attributes: str) -> dict[str, object]:
    if signature is not None:
        attributes["signature"] = signature
    return {
        "message": {"data": base64.b64encode(data).decode(), "attributes": attributes},
        "subscription": "s",
    }


STEP = Step(kind=StepKind.CHECK, sketch_id=SKETCH, task_id="task-1", stage="image")


def test_a_signed_step_reads_back_and_any_change_to_it_is_refused() -> None:
    signed = message(STEP, SECRET, LIFETIME, ISSUED)

    delivered = read_push(_push(signed.data, signed.attributes["signature"]), SECRET, "step", now=ISSUED + 1)
    assert delivered.step == STEP and delivered.published_at == ISSUED

    for data, signature in (
        (signed.data.replace(b"task-1", b"task-2"), signed.attributes["signature"]),  # another task
        (signed.data.replace(str(ISSUED + LIFETIME).encode(), b"9999999999"), signed.attributes["signature"]),
        (signed.data, None),  # no signature
        (signed.data, step_signature("another-secret", signed.data)),  # signed by someone else
    ):
        with pytest.raises(InvalidToken):
            read_push(_push(data, signature), SECRET, "step", now=ISSUED + 1)


def test_a_step_past_its_lifetime_is_refused_on_either_route() -> None:
    signed = message(STEP, SECRET, LIFETIME, ISSUED)
    later = ISSUED + LIFETIME + 1
    with pytest.raises(Expired):
        read_push(_push(signed.data, signed.attributes["signature"]), SECRET, "step", now=later)
    dead = _push(
        signed.data, signed.attributes["signature"], **{DEAD_LETTER_SOURCE_ATTRIBUTE: "projects/p/s"}
    )
    with pytest.raises(Expired):
        read_push(dead, SECRET, "dead_letter", now=later)


def test_a_step_replayed_on_the_dead_letter_route_is_misrouted_and_so_is_a_dead_letter_as_a_step() -> None:
    """Pub/Sub marks every message it dead-letters; a step captured on its way to the step route
    and posted to the dead-letter route lacks the mark, and a dead letter has no place on the step route."""
    signed = message(STEP, SECRET, LIFETIME, ISSUED)
    plain = _push(signed.data, signed.attributes["signature"])
    dead = _push(
        signed.data, signed.attributes["signature"], **{DEAD_LETTER_SOURCE_ATTRIBUTE: "projects/p/s"}
    )

    with pytest.raises(Misrouted):
        read_push(plain, SECRET, "dead_letter", now=ISSUED + 1)
    with pytest.raises(Misrouted):
        read_push(dead, SECRET, "step", now=ISSUED + 1)
    assert read_push(dead, SECRET, "dead_letter", now=ISSUED + 1).step == STEP


def test_the_signature_covers_the_route_and_the_lifetime() -> None:
    signed = json.loads(message(STEP, SECRET, LIFETIME, ISSUED).data)
    assert signed["route"] == "step"
    assert (signed["published_at"], signed["expires_at"]) == (ISSUED, ISSUED + LIFETIME)


@pytest.mark.parametrize("body", [None, [], {"message": "x"}, {"message": {"data": "not base64!"}}])
def test_a_body_that_is_no_push_is_malformed(body: object) -> None:
    with pytest.raises(MalformedPush):
        read_push(body, SECRET, "step")


@pytest.mark.parametrize(
    "data",
    [
        b'{"kind": "launch-missiles", "sketch_id": "x"}',  # no envelope
        json.dumps({"route": "sweep", "published_at": 1, "expires_at": 2, "step": STEP.to_json()}).encode(),
    ],
    ids=["no-envelope", "another-route"],
)
def test_a_signed_message_that_is_no_step_is_malformed_not_trusted(data: bytes) -> None:
    with pytest.raises(MalformedPush):
        read_push(_push(data, step_signature(SECRET, data)), SECRET, "step")

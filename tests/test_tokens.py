"""The project's own signatures: webhook URL tokens over the sketch and its stage, step message
signatures, the sweep token."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.core.tokens import InvalidToken, sketch_token, step_signature, sweep_token, verify, webhook_url
from shared.pipeline.queue import MalformedPush, Step, read_push
from shared.sketch.model import StepKind

SECRET = "s3cret-for-tokens"
SKETCH = "0123456789abcdef0123456789abcdef"


def test_url_keeps_its_own_query_and_carries_a_token_over_sketch_and_stage() -> None:
    url = webhook_url("https://fn.example/hook?x=1", SECRET, SKETCH, "video")
    query = parse_qs(urlsplit(url).query)

    assert query["x"] == ["1"] and query["sketch"] == [SKETCH] and query["stage"] == ["video"]
    verify(sketch_token(SECRET, SKETCH, "video"), query["token"][0])


@pytest.mark.parametrize(
    ("sketch_id", "stage", "secret"),
    [
        ("f" * 32, "video", SECRET),  # another sketch
        (SKETCH, "image", SECRET),  # another stage
        (SKETCH, "video", "another-secret"),  # another secret (a rotated one)
    ],
)
def test_a_token_is_good_for_its_own_sketch_stage_and_secret_only(
    sketch_id: str, stage: str, secret: str
) -> None:
    token = sketch_token(SECRET, SKETCH, "video")
    with pytest.raises(InvalidToken):
        verify(sketch_token(secret, sketch_id, stage), token)  # type: ignore[arg-type]


@pytest.mark.parametrize("presented", [None, "", "x", "é" * 43, sweep_token(SECRET)])
def test_invalid_tokens_are_refused(presented: str | None) -> None:
    with pytest.raises(InvalidToken):
        verify(sketch_token(SECRET, SKETCH, "image"), presented)


def _push(data: bytes, signature: str | None) -> dict[str, object]:
    attributes = {} if signature is None else {"signature": signature}
    return {
        "message": {"data": base64.b64encode(data).decode(), "attributes": attributes},
        "subscription": "s",
    }


def test_a_signed_step_reads_back_and_any_change_to_it_is_refused() -> None:
    step = Step(kind=StepKind.CHECK, sketch_id=SKETCH, task_id="task-1", stage="image")
    message = step.message(SECRET)

    delivered = read_push(
        {
            "message": {
                "data": base64.b64encode(message.data).decode(),
                "attributes": dict(message.attributes),
            }
        },
        SECRET,
    )
    assert delivered.step == step

    tampered = message.data.replace(b"task-1", b"task-2")
    for body in (
        _push(tampered, message.attributes["signature"]),  # another task under the old signature
        _push(message.data, None),  # no signature
        _push(message.data, step_signature("another-secret", message.data)),  # signed by someone else
    ):
        with pytest.raises(InvalidToken):
            read_push(body, SECRET)


@pytest.mark.parametrize("body", [None, [], {"message": "x"}, {"message": {"data": "not base64!"}}])
def test_a_body_that_is_no_push_is_malformed(body: object) -> None:
    with pytest.raises(MalformedPush):
        read_push(body, SECRET)


def test_a_signed_message_that_is_no_step_is_malformed_not_trusted() -> None:
    data = b'{"kind": "launch-missiles", "sketch_id": "x"}'
    with pytest.raises(MalformedPush):
        read_push(_push(data, step_signature(SECRET, data)), SECRET)

"""`create_sketch` builds its answers without pydantic (`Sketch.public`, `error_response`); the OpenAPI
document describes them with `shared/sketch/schemas.py`. Each answer the code can build is held to
those models here: the same fields, in the same order, with the same values."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any, get_args

import pytest

from shared.edge.answers import error_response
from shared.sketch.errors import DETAILS, ERROR_CODES, ErrorCode, described
from shared.sketch.model import PUBLIC_FIELDS, Sketch, Status, StepKind
from shared.sketch.schemas import ErrorAnswer, ErrorDetail, PublicSketch
from tests.unit.world import World, ago


def _as_the_model_answers(body: dict[str, Any]) -> dict[str, Any]:
    """What the model makes of `body`, dumped as the API's JSON (validation refuses any drift)."""
    return PublicSketch.model_validate(body).model_dump(mode="json", exclude_unset=True)


def test_the_public_fields_are_the_models_in_its_order() -> None:
    assert tuple(PublicSketch.model_fields) == PUBLIC_FIELDS


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("user_id", [None, "uid-1"])
def test_a_sketch_answers_what_the_model_would_in_every_status(status: Status, user_id: str | None) -> None:
    world = World()
    sketch = world.sketch(
        status,
        user_id=user_id,
        image_task_id="img-1",
        video_task_id="vid-1" if status is not Status.IMAGE_PENDING else None,
        image_url="https://example.test/still.jpg",
        image_url_expires_at=ago(-3600),
        video_url="https://example.test/video.mp4" if status is Status.COMPLETE else None,
        progress=100 if status is Status.COMPLETE else 40,
        eta_seconds=12,
        error_message="Novita 400 ILLEGAL_PROMPT: no" if status is Status.FAILED else None,
        completed_at=ago(1) if status.is_final else None,
    )
    body = sketch.public()
    assert list(body) == [name for name in PUBLIC_FIELDS if name != "user_id" or user_id is not None]
    assert body == _as_the_model_answers(body)
    assert body["status"] == status.value
    assert body["image_url_expires_at"].endswith("Z") and body["created_at"].endswith("Z")


def test_timestamps_are_answered_in_utc_to_the_millisecond_as_the_model_serialises_them() -> None:
    world = World()
    odd = ago(0).astimezone(timezone(timedelta(hours=5, minutes=30)))
    body = world.sketch(Status.COMPLETE, completed_at=odd.replace(microsecond=123456)).public()
    assert body["completed_at"].endswith(".123Z")
    assert body == _as_the_model_answers(body)


def test_the_error_codes_and_details_are_the_models() -> None:
    assert get_args(ErrorDetail.model_fields["code"].annotation) == get_args(ErrorCode)
    assert frozenset(get_args(ErrorCode)) == ERROR_CODES
    assert set(ErrorDetail.model_fields) == {"code", "message", *DETAILS}


def test_an_error_with_its_sketch_is_what_the_model_would_answer() -> None:
    sketch = World().sketch(Status.FAILED, error_message="Novita 400 ILLEGAL_PROMPT: no").public()
    details = {"reason": "ILLEGAL_PROMPT", "sketch": sketch}
    described("novita_rejected", details)
    body = error_response(502, "novita_rejected", "refused", **details).get_json()
    assert body == ErrorAnswer.model_validate(body).model_dump(mode="json", exclude_unset=True)


@pytest.mark.parametrize(
    ("code", "details"), [("made_up", {}), ("not_found", {"hint": "x"}), ("invalid_field", {"fields": "a"})]
)
def test_an_undescribed_code_or_detail_is_refused_before_it_goes_out(
    code: str, details: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="not described"):
        described(code, details)


def test_a_document_reads_back_as_the_sketch_that_wrote_it() -> None:
    world = World()
    sketch = world.sketch(
        Status.VIDEO_PENDING,
        user_id="uid-1",
        repaid=["image: Seedream's answer lost"],
        failed_step=StepKind.CHAIN,
        step_failures=2,
        submission_unknown="video",
        submission_unknown_since=ago(3),
        hint_stage="image",
        image_form="sync",
    )
    document = sketch.to_document()
    assert "version" not in document
    again = Sketch.from_document({**document, "a_field_from_elsewhere": 1}, "v1")
    assert again == sketch and again.version == "v1"
    assert again.status is Status.VIDEO_PENDING and again.failed_step is StepKind.CHAIN


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("status", "lost", "status is 'lost'"),
        ("width", "512", "width is '512'"),
        ("width", True, "width is True"),
        ("hint_stage", "audio", "hint_stage is 'audio'"),
        ("created_at", "2026-12-06T00:00:00Z", "created_at is"),
        ("repaid", ["ok", 3], "repaid is"),
        ("id", None, "id is None"),
    ],
)
def test_a_document_the_functions_did_not_write_is_refused_naming_its_field(
    name: str, value: object, said: str
) -> None:
    document = World().sketch().to_document()
    with pytest.raises(ValueError, match=said):
        Sketch.from_document({**document, name: value})


@pytest.mark.parametrize("name", ["id", "status", "prompt", "width", "created_at", "updated_at"])
def test_a_document_without_a_required_field_is_refused_naming_it(name: str) -> None:
    document = World().sketch().to_document()
    del document[name]
    with pytest.raises(ValueError, match=f"{name} is missing"):
        Sketch.from_document(document)

"""The OpenAPI document of `create_sketch` (shared/openapi.py): `openapi.json` is what the code
generates, it is a document Schemathesis can drive, and the answers the code builds conform to it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import schemathesis

from shared.edge.answers import error_response
from shared.edge.guard import BodyRefused
from shared.openapi import ERRORS, ErrorCode, document, document_text
from shared.sketch.model import Status
from shared.sketch.schemas import ErrorAnswer
from tests.unit.world import World

FILE = Path(__file__).resolve().parents[2] / "openapi.json"
URL = "http://create-sketch.test/"


def test_openapi_json_is_the_document_the_code_generates() -> None:
    assert FILE.read_text() == document_text(), (
        "openapi.json differs from the code: regenerate it with `python -m shared.openapi > openapi.json`"
    )


def test_the_document_is_openapi_3_1_with_one_operation_per_method() -> None:
    schema = schemathesis.openapi.from_dict(json.loads(FILE.read_text()))
    labels = sorted(result.ok().label for result in schema.get_all_operations())
    assert labels == ["DELETE /", "GET /", "OPTIONS /", "POST /"]
    assert document()["openapi"] == "3.1.0"


def test_every_error_code_is_documented_under_a_status_and_the_guards_everywhere() -> None:
    listed = {code for statuses in ERRORS.values() for codes in statuses.values() for code in codes}
    assert listed | {"method_not_allowed"} == set(get_args(ErrorCode))
    for cls in BodyRefused.__subclasses__():
        for method, statuses in ERRORS.items():
            assert cls.code in statuses[cls.status], (method, cls.code)
    post = document()["paths"]["/"]["post"]
    assert {"Idempotency-Key"} <= {parameter["name"] for parameter in post["parameters"]}
    assert set(document()["components"]["securitySchemes"]) == {"firebase", "appCheck"}


def answered(method: str, query: str, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    """Assert that the document describes this answer (status, headers, body)."""
    schema = schemathesis.openapi.from_dict(document())
    response = httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        request=httpx.Request(method, URL + query),
    )
    response.elapsed = timedelta(0)  # as a client sets it once the answer is read
    schema["/"][method].validate_response(response)


@pytest.mark.parametrize("status", list(Status))
def test_a_sketch_in_every_status_conforms_as_a_read_a_page_and_a_create(status: Status) -> None:
    world = World()
    body = world.sketch(status, image_task_id="img-1", user_id="uid-1", progress=50).public()
    assert body["created_at"].endswith("Z")

    answered("GET", f"?id={body['id']}", 200, body)
    answered("POST", "", 202, body, {"Idempotent-Replayed": "true"})
    answered("GET", "", 200, {"sketches": [body], "next_page_token": None})
    answered("GET", "?openapi", 200, document())


def test_an_error_with_its_sketch_conforms_and_an_unknown_code_is_refused_by_the_model() -> None:
    world = World()
    sketch = world.sketch(Status.FAILED, error_message="Novita 400 ILLEGAL_PROMPT: no").public()
    error = error_response(502, "novita_rejected", "no", reason="ILLEGAL_PROMPT", sketch=sketch)
    answered("POST", "", 502, error.get_json())
    with pytest.raises(ValueError):
        ErrorAnswer.model_validate({"error": {"code": "made_up", "message": "no"}})

"""The HTTP API of `create_sketch`, described: the OpenAPI 3.1 document built from the model the
function validates a create with (`CreateSketchRequest`) and the models of its answers
(`shared/sketch/schemas.py`: `PublicSketch`, `SketchPage`, `ErrorAnswer`), which the tests hold the
function's answers to, so that the document cannot drift from what is sent.

`openapi.json` at the repository root is this document, and `GET create_sketch?openapi` serves it;
`tests/unit/test_openapi_document.py` fails when the file and the code differ. To regenerate it:

    python -m shared.openapi > openapi.json

One path carries every operation, told apart by the query (`GET` with `id`, without, `?openapi`;
`POST` a create, or `?id=&action=retry`): OpenAPI has one operation per method and path, so each
method is described once, with its optional parameters and an answer for each of its readings.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any, Literal

from pydantic.json_schema import models_json_schema

from shared.edge.cors import DEFAULT_REQUEST_HEADERS, EXPOSED
from shared.sketch.errors import ErrorCode
from shared.sketch.gallery import DEFAULT_LIMIT, MAX_LIMIT
from shared.sketch.request import CreateSketchRequest
from shared.sketch.schemas import ErrorAnswer, PublicSketch, SketchPage
from shared.spending.idempotency import MAX_KEY_LENGTH

Method = Literal["get", "post", "delete"]

# The error codes each method can answer, by status (the body guard's 400, 408 and 413 included).
_BODY_FAULTS: tuple[ErrorCode, ...] = ("malformed_body", "incomplete_body")
ERRORS: dict[Method, dict[int, tuple[ErrorCode, ...]]] = {
    "get": {
        400: ("invalid_field", *_BODY_FAULTS),
        401: ("unauthenticated", "app_check_failed"),
        404: ("not_found",),
        408: ("body_timeout",),
        413: ("body_too_large",),
        500: ("internal",),
        503: ("store_unavailable", "auth_unavailable"),
    },
    "post": {
        400: ("invalid_json", "invalid_field", "invalid_header", *_BODY_FAULTS),
        401: ("unauthenticated", "app_check_failed"),
        404: ("not_found",),
        408: ("body_timeout",),
        409: ("idempotency_key_in_use", "not_retryable"),
        413: ("body_too_large",),
        415: ("unsupported_media_type",),
        422: ("idempotency_key_reused",),
        429: ("daily_limit", "project_daily_limit", "too_many_sketches"),
        500: ("internal",),
        502: ("novita_rejected",),
        503: ("novita_balance", "novita_unavailable", "store_unavailable", "auth_unavailable"),
    },
    "delete": {
        400: ("invalid_field", *_BODY_FAULTS),
        401: ("unauthenticated", "app_check_failed"),
        404: ("not_found",),
        408: ("body_timeout",),
        413: ("body_too_large",),
        500: ("internal",),
        503: ("store_unavailable", "storage_unavailable", "auth_unavailable"),
    },
}

_WHEN: dict[int, str] = {
    400: "a bad body, field, parameter or header (`field` names it), or a body whose framing broke",
    401: "no valid Firebase ID token (`AUTH_MODE=firebase`) or App Check token (`APP_CHECK=enforce`)",
    404: "no such sketch, or it is another user's, or the sketch a repeated `Idempotency-Key` made has "
    "been deleted",
    408: "the body stopped arriving",
    409: "the request that first used the `Idempotency-Key` is still being handled (`Retry-After`), "
    "or the sketch cannot be retried (`reason` says why)",
    413: "the body is over 64 KiB (answered without reading the rest)",
    415: "the body is not `application/json` (optionally `; charset=utf-8`)",
    422: "the `Idempotency-Key` was used for another request",
    429: "a daily cap (`Retry-After`: until the next UTC day) or the sketches in progress are at their limit",
    500: "a fault nobody foresaw; it is logged",
    502: "Novita refused the request; `sketch` is failed with the reason",
    503: "Novita's balance is not enough (`Retry-After`), Novita or a Google service could not be reached",
}

_REPLAYED = {
    "description": "`true` on the answer to a repeated `Idempotency-Key`: the first answer's status, with "
    "the sketch as it is now",
    "schema": {"type": "string", "enum": ["true"]},
}
_RETRY_AFTER = {
    "description": "seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 1},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(method: Method, status: int) -> dict[str, Any]:
    codes = ERRORS[method][status]
    schema = {
        "allOf": [
            _ref("ErrorAnswer"),
            {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}},
        ]
    }
    answer: dict[str, Any] = {
        "description": f"{_WHEN[status]}: {', '.join(f'`{code}`' for code in codes)}",
        "content": _json(schema),
    }
    headers: dict[str, Any] = {}
    if method == "post" and status in (502, 503):
        headers["Idempotent-Replayed"] = _REPLAYED
    if status in (409, 429, 503):
        headers["Retry-After"] = _RETRY_AFTER
    if headers:
        answer["headers"] = headers
    return answer


def _errors(method: Method) -> dict[str, Any]:
    return {str(status): _error(method, status) for status in ERRORS[method]}


def _query(name: str, description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


_SKETCH_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "1 to 255 printable ASCII characters, kept at least 24 h, for the caller alone. A "
    "repeat of the same request answers the first answer's status with the sketch as it is now (and "
    "`Idempotent-Replayed: true`) and pays Novita nothing; the same key with another request is 422, "
    "and a repeat while the first is still handled is 409.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[\\x20-\\x7e]+$"},
}
_CORS = {
    name: {"description": description, "schema": {"type": "string"}}
    for name, description in (
        ("Access-Control-Allow-Origin", "the caller's origin, when `CORS_ALLOWED_ORIGINS` allows it"),
        ("Access-Control-Allow-Methods", "the methods described here"),
        ("Access-Control-Allow-Headers", f"the headers asked for, or {DEFAULT_REQUEST_HEADERS}"),
        ("Access-Control-Expose-Headers", f"{EXPOSED}, on every answer"),
        ("Access-Control-Max-Age", "how long the preflight may be cached"),
    )
}


def _operations() -> dict[str, Any]:
    return {
        "get": {
            "operationId": "read",
            "summary": "This document, one sketch, or a page of the gallery",
            "description": "`?openapi`: this document (no credentials needed). `?id=`: one of the "
            "caller's sketches. Neither: the caller's sketches (everyone's with `AUTH_MODE=none`), "
            "newest first, a page at a time.",
            "parameters": [
                _query("openapi", "any value, or none: answer this document", {"type": "string"}),
                _query("id", "the sketch to read", _SKETCH_ID),
                _query(
                    "limit",
                    "sketches in a page",
                    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                ),
                _query("page_token", "the previous page's `next_page_token`", {"type": "string"}),
            ],
            "responses": {
                "200": {
                    "description": "the document, the sketch, or a page of sketches",
                    "content": _json(
                        {"oneOf": [_ref("PublicSketch"), _ref("SketchPage"), _ref("OpenApiDocument")]}
                    ),
                },
                **_errors("get"),
            },
        },
        "post": {
            "operationId": "createOrRetry",
            "summary": "Make a sketch, or retry a failed one from its kept still",
            "description": "Without `id`: make a sketch from the body; it answers 202 in `image_pending`. "
            "With `id` and `action=retry`, and no body (or `{}`): start the caller's failed sketch again "
            "from its kept still, paying one new Kling task and no text-to-image task; it answers 202 in "
            "`video_pending` with a new `video_task_id`, or in `image_complete` when Novita could not take "
            "the request just now (it moves on by itself), and 409 `not_retryable` when the sketch cannot "
            "be retried. Both count against the daily caps, and keep the `Idempotency-Key` rules.",
            "parameters": [
                _query("id", "the sketch to retry (with `action=retry`)", _SKETCH_ID),
                _query("action", "`retry` (with `id`)", {"type": "string", "enum": ["retry"]}),
                _IDEMPOTENCY_KEY,
            ],
            "requestBody": {"required": False, "content": _json(_ref("CreateSketchRequest"))},
            "responses": {
                "202": {
                    "description": "the sketch made or retried (for a repeated `Idempotency-Key`: the "
                    "first answer's status, with the sketch as it is now)",
                    "headers": {"Idempotent-Replayed": _REPLAYED},
                    "content": _json(_ref("PublicSketch")),
                },
                **_errors("post"),
            },
        },
        "delete": {
            "operationId": "delete",
            "summary": "Delete a sketch and its media",
            "description": "The caller's sketch: its still and video in the bucket, then its document. "
            "A `GET ?id=` then answers 404, and whatever Novita reports for it later changes nothing.",
            "parameters": [_query("id", "the sketch to delete", _SKETCH_ID, required=True)],
            "responses": {"204": {"description": "deleted"}, **_errors("delete")},
        },
        "options": {
            "operationId": "preflight",
            "summary": "CORS preflight",
            "security": [{}],
            "responses": {"204": {"description": "no body", "headers": _CORS}},
        },
    }


@cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of `create_sketch`."""
    _, schemas = models_json_schema(
        [
            (CreateSketchRequest, "validation"),
            (PublicSketch, "serialization"),
            (SketchPage, "serialization"),
            (ErrorAnswer, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    components = {
        **schemas["$defs"],
        "OpenApiDocument": {
            "type": "object",
            "description": "this document",
            "required": ["openapi", "info", "paths"],
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "create_sketch",
            "version": "1.0.0",
            "description": "The HTTP API of the Absurdity AI Sketch Machine: a prompt becomes a still "
            "(Novita's text to image), then a short video (Kling). Every answer carries the CORS headers "
            "for an allowed origin; a method not described here is answered 405 (`method_not_allowed`, "
            'with `Allow`). Errors are `{"error": {"code", "message", ...}}`.',
        },
        "security": [{"firebase": [], "appCheck": []}, {"firebase": []}, {}],
        "paths": {"/": _operations()},
        "components": {
            "schemas": components,
            "securitySchemes": {
                "firebase": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a Firebase ID token; required with `AUTH_MODE=firebase`, which scopes "
                    "reads, retries, deletes and idempotency keys to its user",
                },
                "appCheck": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Firebase-AppCheck",
                    "description": "a Firebase App Check token; required with `APP_CHECK=enforce`",
                },
            },
        },
    }


@cache
def document_text() -> str:
    """The document as `openapi.json` holds it: pretty, keys in a stable order."""
    return json.dumps(document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document_text())

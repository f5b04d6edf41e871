"""`create_sketch`: the HTTP API the frontend calls to start a sketch and to read it back."""

from __future__ import annotations

import logging

import flask
import functions_framework
from pydantic import ValidationError

from shared import logs
from shared.caller_auth import AuthError, KeysUnavailable, authenticate
from shared.http_api import (
    BodyTooLarge,
    cors_headers,
    error_response,
    internal_error,
    json_response,
    method_not_allowed,
    parse_json,
    preflight,
    read_body,
)
from shared.novita_client import NovitaUnavailable
from shared.pipeline import StartFailed, TooManySketches
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch import CreateSketchRequest, is_sketch_id
from shared.sketch_store import StoreUnavailable

log = logging.getLogger("create_sketch")
settings = load_settings_or_exit()

MAX_BODY_BYTES = 64 * 1024
METHODS = "GET, POST, OPTIONS"


@functions_framework.http
def create_sketch(request: flask.Request) -> flask.Response:
    logs.bind_trace(request.headers.get("X-Cloud-Trace-Context"), settings.project)
    if request.method == "OPTIONS":
        return preflight(request, settings.cors_allowed_origins, METHODS)
    cors = cors_headers(request, settings.cors_allowed_origins, METHODS)
    if request.method not in ("GET", "POST"):
        return method_not_allowed(METHODS, cors)
    try:
        user_id = authenticate(request, settings)
    except KeysUnavailable as exc:
        return error_response(503, "auth_unavailable", str(exc), cors)
    except AuthError as exc:
        return error_response(401, "unauthenticated", str(exc), cors)
    try:
        if request.method == "GET":
            response = _get(request, user_id)
        else:
            response = _post(request, user_id)
    except StoreUnavailable as exc:
        log.warning("Firestore unavailable: %s", exc)
        response = error_response(503, "store_unavailable", "the sketch store is unavailable; try again")
    except Exception:
        log.exception("unexpected error")
        response = internal_error()
    response.headers.update(cors)
    return response


def _get(request: flask.Request, user_id: str | None) -> flask.Response:
    sketch_id = request.args.get("id", "").strip()
    if not sketch_id:
        return error_response(400, "invalid_field", "id: query parameter is required", field="id")
    runtime = get_runtime()
    sketch = runtime.store.get(sketch_id) if is_sketch_id(sketch_id) else None
    if sketch is None or (user_id is not None and sketch.user_id != user_id):
        return error_response(404, "not_found", f"no sketch with id {sketch_id!r}")
    return json_response(200, runtime.recovery.refresh(sketch).to_json())


def _post(request: flask.Request, user_id: str | None) -> flask.Response:
    try:
        raw = read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        return error_response(413, "body_too_large", f"the body is over {MAX_BODY_BYTES // 1024} KiB")
    try:
        body = parse_json(raw)
    except ValueError:
        return error_response(400, "invalid_json", "the body is not valid JSON")
    if not isinstance(body, dict):
        return error_response(400, "invalid_json", "the body must be a JSON object")
    try:
        create = CreateSketchRequest.model_validate(body)
    except ValidationError as exc:
        return _validation_error(exc)
    try:
        sketch = get_runtime().pipeline.create(create, user_id)
    except TooManySketches as exc:
        return error_response(429, "too_many_sketches", str(exc))
    except StartFailed as failure:
        status, code = (
            (503, "novita_unavailable")
            if isinstance(failure.cause, NovitaUnavailable)
            else (502, "novita_rejected")
        )
        return error_response(
            status,
            code,
            failure.cause.describe(),
            reason=failure.cause.reason,
            sketch=failure.sketch.to_json(),
        )
    return json_response(202, sketch.to_json())


def _validation_error(exc: ValidationError) -> flask.Response:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        message = f"{field}: unknown field"
    else:
        message = f"{field}: {first['msg']}"
    return error_response(400, "invalid_field", message, field=field)

"""`create_sketch`: the HTTP API the frontend calls to start a sketch, read it back, and list a
user's sketches."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from functools import cache

import flask
import functions_framework
from pydantic import ValidationError

from shared.core import logs
from shared.edge.answers import (
    UnsupportedMediaType,
    error_response,
    internal_error,
    json_response,
    method_not_allowed,
    parse_json,
    require_json_content_type,
)
from shared.edge.appcheck import HEADER as APP_CHECK_HEADER
from shared.edge.appcheck import AppCheck, AppCheckFailed
from shared.edge.callers import AuthError, Caller, KeysUnavailable, authenticate
from shared.edge.cors import cors_headers, preflight
from shared.edge.guard import install as install_body_guard
from shared.pipeline.creation import StartFailed, TooManySketches, answer_for
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch import gallery
from shared.sketch.model import Sketch, is_sketch_id, utcnow
from shared.sketch.request import CreateSketchRequest
from shared.sketch.store import StoreUnavailable
from shared.spending.breaker import BalanceExhausted
from shared.spending.daily import DailyLimitReached
from shared.spending.idempotency import Answer, KeyInUse, KeyReused, valid_key

log = logging.getLogger("create_sketch")
settings = load_settings_or_exit()

MAX_BODY_BYTES = 64 * 1024
# Under the function: hostile bodies cost neither memory, threads, 5xx answers nor ERROR lines.
METHODS = "GET, POST, OPTIONS"
install_body_guard(
    flask.current_app, limit=MAX_BODY_BYTES, origins=settings.cors_allowed_origins, methods=METHODS
)
# Enough of a value echoed back in an error to recognise it.
ECHO = 64


@functions_framework.http
def create_sketch(request: flask.Request) -> flask.Response:
    logs.bind_trace(request.headers.get("X-Cloud-Trace-Context"), settings.project)
    if request.method == "OPTIONS":
        return preflight(request, settings.cors_allowed_origins, METHODS)
    cors = cors_headers(request, settings.cors_allowed_origins, METHODS)
    if request.method not in ("GET", "POST"):
        return method_not_allowed(METHODS, cors)
    refused = _app_check(request)
    if refused is not None:
        refused.headers.update(cors)
        return refused
    try:
        caller = authenticate(request, settings)
    except KeysUnavailable as exc:
        return error_response(503, "auth_unavailable", str(exc), cors)
    except AuthError as exc:
        return error_response(401, "unauthenticated", str(exc), cors)
    try:
        if request.method == "GET":
            response = (
                _get(request, caller.user_id) if "id" in request.args else _list(request, caller.user_id)
            )
        else:
            response = _post(request, caller)
    except StoreUnavailable as exc:
        log.warning("Firestore unavailable: %s", exc)
        response = error_response(503, "store_unavailable", "the sketch store is unavailable; try again")
    except Exception:
        log.exception("unexpected error")
        response = internal_error()
    response.headers.update(cors)
    return response


def _app_check(request: flask.Request) -> flask.Response | None:
    """The answer that refuses a call without a valid App Check token (APP_CHECK=enforce); None to go on.
    With APP_CHECK=monitor, what enforce would refuse is logged and let through."""
    if settings.app_check == "off":
        return None
    try:
        _app_checker().verify(request.headers.get(APP_CHECK_HEADER))
    except AppCheckFailed as exc:
        if settings.app_check == "monitor":
            log.warning("App Check would refuse this call: %s", exc)
            return None
        log.info("App Check refused the call: %s", exc)
        return error_response(401, "app_check_failed", str(exc))
    return None


@cache
def _app_checker() -> AppCheck:
    assert settings.firebase_project_number is not None  # configuration refuses App Check without it
    return AppCheck(settings.firebase_project_number, settings.app_check_jwks_url)


def _get(request: flask.Request, user_id: str | None) -> flask.Response:
    sketch_id = request.args.get("id", "").strip()
    if not sketch_id:
        return error_response(400, "invalid_field", "id: query parameter is required", field="id")
    runtime = get_runtime()
    sketch = runtime.store.get(sketch_id) if is_sketch_id(sketch_id) else None
    if sketch is None or (user_id is not None and sketch.user_id != user_id):
        return error_response(404, "not_found", f"no sketch with id {sketch_id[:ECHO]!r}")
    return json_response(200, runtime.recovery.refresh(sketch).to_json())


def _list(request: flask.Request, user_id: str | None) -> flask.Response:
    raw_limit = request.args.get("limit", str(gallery.DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= gallery.MAX_LIMIT:
        return error_response(
            400,
            "invalid_field",
            f"limit: must be a whole number from 1 to {gallery.MAX_LIMIT}",
            field="limit",
        )
    try:
        sketches, next_token = gallery.page(
            get_runtime().store, user_id, int(raw_limit), request.args.get("page_token") or None
        )
    except gallery.InvalidPageToken as exc:
        return error_response(400, "invalid_field", f"page_token: {exc}", field="page_token")
    return json_response(200, {"sketches": [s.to_json() for s in sketches], "next_page_token": next_token})


def _post(request: flask.Request, caller: Caller) -> flask.Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not valid_key(key):
        return error_response(
            400,
            "invalid_header",
            "Idempotency-Key: must be 1 to 255 printable ASCII characters",
            field="Idempotency-Key",
        )
    try:
        require_json_content_type(request)
        body = parse_json(request.get_data())
    except UnsupportedMediaType as exc:
        return error_response(415, "unsupported_media_type", str(exc))
    except ValueError as exc:
        return error_response(400, "invalid_json", str(exc))
    if not isinstance(body, dict):
        return error_response(400, "invalid_json", "the body must be a JSON object")
    try:
        create = CreateSketchRequest.model_validate(body)
    except ValidationError as exc:
        return _validation_error(exc)
    try:
        created = get_runtime().creator.create(create, body, caller, key)
    except BalanceExhausted as exc:
        return error_response(
            503,
            "novita_balance",
            "new sketches are paused: Novita's balance is not enough",
            _retry_after(exc.until),
        )
    except DailyLimitReached as exc:
        code = "project_daily_limit" if exc.cap == "project" else "daily_limit"
        return error_response(429, code, str(exc), _retry_after(exc.resets_at))
    except TooManySketches as exc:
        return error_response(429, "too_many_sketches", str(exc))
    except KeyInUse:
        return error_response(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being handled",
            {"Retry-After": "1"},
        )
    except KeyReused:
        return error_response(
            422, "idempotency_key_reused", "this Idempotency-Key was used for a request with another body"
        )
    except StartFailed as failure:
        return _answer(failure.sketch, answer_for(failure), replayed=False)
    return _answer(created.sketch, created.answer, replayed=created.replayed)


def _answer(sketch: Sketch, answer: Answer, *, replayed: bool) -> flask.Response:
    """The sketch's answer, as the first request got it."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if answer.status == 202:
        return json_response(202, sketch.to_json(), headers)
    if answer.code == "novita_balance":
        headers["Retry-After"] = str(math.ceil(settings.balance_breaker_seconds))
    return error_response(
        answer.status,
        answer.code or "novita_rejected",
        answer.message or "Novita refused the request",
        headers,
        reason=answer.reason,
        sketch=sketch.to_json(),
    )


def _retry_after(moment: datetime) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil((moment - utcnow()).total_seconds())))}


def _validation_error(exc: ValidationError) -> flask.Response:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        message = f"{field[:ECHO]}: unknown field"
    else:
        message = f"{field[:ECHO]}: {first['msg']}"
    return error_response(400, "invalid_field", message, field=field[:ECHO])

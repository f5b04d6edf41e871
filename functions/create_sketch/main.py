"""`create_sketch`: the HTTP API the frontend calls to start a sketch, retry or delete it, read it
back, and list a user's sketches; `GET ?openapi` describes it (`shared/openapi.py`).

Every answer is JSON built without pydantic (`Sketch.public`, `error_body`), so that a read imports
none; the OpenAPI document describes the same answers from `shared/sketch/schemas.py`, and the tests
hold each answer to those models.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any

import flask
import functions_framework

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
from shared.edge.callers import AuthError, Caller, KeysUnavailable, authenticate
from shared.edge.cors import cors_headers, preflight
from shared.edge.guard import install as install_body_guard
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch import gallery
from shared.sketch.errors import described
from shared.sketch.model import Sketch, is_sketch_id, utcnow
from shared.sketch.store import StoreUnavailable
from shared.spending.breaker import BalanceExhausted
from shared.spending.daily import DailyLimitReached
from shared.spending.idempotency import Answer, KeyInUse, KeyReused, SketchGone, valid_key

if TYPE_CHECKING:
    from pydantic import ValidationError

    from shared.edge.appcheck import AppCheck
    from shared.pipeline.creation import TooManySketches

# What only one path needs is imported on that path (a create and its request model, a retry, App
# Check, the document), so that a cold start pays for what its first request uses.
log = logging.getLogger("create_sketch")
settings = load_settings_or_exit()

MAX_BODY_BYTES = 64 * 1024
# Under the function: hostile bodies cost neither memory, threads, 5xx answers nor ERROR lines.
METHODS = "GET, POST, DELETE, OPTIONS"
install_body_guard(
    flask.current_app, limit=MAX_BODY_BYTES, origins=settings.cors_allowed_origins, methods=METHODS
)
# Enough of a value echoed back in an error to recognise it.
ECHO = 64
# What a retry may carry as its body: nothing, or an empty JSON object.
EMPTY_BODIES = (b"", b"{}")
GONE = "the sketch this Idempotency-Key made has been deleted"


@functions_framework.http
def create_sketch(request: flask.Request) -> flask.Response:
    logs.bind_trace(request.headers.get("X-Cloud-Trace-Context"), settings.project)
    if request.method == "OPTIONS":
        return preflight(request, settings.cors_allowed_origins, METHODS)
    cors = cors_headers(request, settings.cors_allowed_origins, METHODS)
    if request.method not in ("GET", "POST", "DELETE"):
        return method_not_allowed(METHODS, cors)
    if request.method == "GET" and "openapi" in request.args:
        # The API's description is public: no token is needed to read it.
        response = _openapi()
        response.headers.update(cors)
        return response
    refused = _app_check(request)
    if refused is not None:
        refused.headers.update(cors)
        return refused
    try:
        caller = authenticate(request, settings)
    except KeysUnavailable as exc:
        return _error(503, "auth_unavailable", str(exc), cors)
    except AuthError as exc:
        return _error(401, "unauthenticated", str(exc), cors)
    try:
        if request.method == "GET":
            response = (
                _get(request, caller.user_id) if "id" in request.args else _list(request, caller.user_id)
            )
        elif request.method == "DELETE":
            response = _delete(request, caller.user_id)
        elif "id" in request.args or "action" in request.args:
            response = _retry(request, caller)
        else:
            response = _post(request, caller)
    except StoreUnavailable as exc:
        log.warning("Firestore unavailable: %s", exc)
        response = _error(503, "store_unavailable", "the sketch store is unavailable; try again")
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
    from shared.edge.appcheck import HEADER, AppCheckFailed

    try:
        _app_checker().verify(request.headers.get(HEADER))
    except AppCheckFailed as exc:
        if settings.app_check == "monitor":
            log.warning("App Check would refuse this call: %s", exc)
            return None
        log.info("App Check refused the call: %s", exc)
        return _error(401, "app_check_failed", str(exc))
    return None


@cache
def _app_checker() -> AppCheck:
    from shared.edge.appcheck import AppCheck

    assert settings.firebase_project_number is not None  # configuration refuses App Check without it
    return AppCheck(settings.firebase_project_number, settings.app_check_jwks_url)


def _openapi() -> flask.Response:
    from shared.openapi import document_text

    return flask.Response(document_text(), status=200, headers={"Content-Type": "application/json"})


# ------------------------------------------------------------------------------------------ reads


def _sketch_id(request: flask.Request) -> str | flask.Response:
    """The `id` query parameter, or the answer refusing its absence."""
    sketch_id = request.args.get("id", "").strip()
    if not sketch_id:
        return _error(400, "invalid_field", "id: query parameter is required", field="id")
    return sketch_id


def _own_sketch(request: flask.Request, user_id: str | None) -> Sketch | flask.Response:
    """The sketch `?id=` names, if it is there and the caller's (anyone's with AUTH_MODE=none), or
    the answer refusing the request."""
    sketch_id = _sketch_id(request)
    if isinstance(sketch_id, flask.Response):
        return sketch_id
    sketch = get_runtime().store.get(sketch_id) if is_sketch_id(sketch_id) else None
    if sketch is None or (user_id is not None and sketch.user_id != user_id):
        return _not_found(sketch_id)
    return sketch


def _not_found(sketch_id: str) -> flask.Response:
    return _error(404, "not_found", f"no sketch with id {sketch_id[:ECHO]!r}")


def _get(request: flask.Request, user_id: str | None) -> flask.Response:
    sketch = _own_sketch(request, user_id)
    if isinstance(sketch, flask.Response):
        return sketch
    return json_response(200, get_runtime().recovery.refresh(sketch).public())


def _list(request: flask.Request, user_id: str | None) -> flask.Response:
    raw_limit = request.args.get("limit", str(gallery.DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= gallery.MAX_LIMIT:
        return _error(
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
        return _error(400, "invalid_field", f"page_token: {exc}", field="page_token")
    return json_response(200, {"sketches": [s.public() for s in sketches], "next_page_token": next_token})


# ----------------------------------------------------------------------------------------- writes


def _idempotency_key(request: flask.Request) -> str | None | flask.Response:
    """The `Idempotency-Key` header (None without one), or the answer refusing it."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not valid_key(key):
        return _error(
            400,
            "invalid_header",
            "Idempotency-Key: must be 1 to 255 printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


def _post(request: flask.Request, caller: Caller) -> flask.Response:
    from pydantic import ValidationError

    from shared.pipeline.creation import StartFailed, TooManySketches, answer_for
    from shared.sketch.request import CreateSketchRequest

    key = _idempotency_key(request)
    if isinstance(key, flask.Response):
        return key
    try:
        require_json_content_type(request)
        body = parse_json(request.get_data())
    except UnsupportedMediaType as exc:
        return _error(415, "unsupported_media_type", str(exc))
    except ValueError as exc:
        return _error(400, "invalid_json", str(exc))
    if not isinstance(body, dict):
        return _error(400, "invalid_json", "the body must be a JSON object")
    try:
        create = CreateSketchRequest.model_validate(body)
    except ValidationError as exc:
        return _validation_error(exc)
    try:
        created = get_runtime().creator.create(create, body, caller, key)
    except (BalanceExhausted, DailyLimitReached, TooManySketches, KeyInUse, KeyReused) as exc:
        return _refused(exc)
    except StartFailed as failure:
        return _answer(failure.sketch, answer_for(failure), replayed=False)
    except SketchGone:
        return _error(404, "not_found", GONE)
    return _answer(created.sketch, created.answer, replayed=created.replayed)


def _retry(request: flask.Request, caller: Caller) -> flask.Response:
    """`POST ?id=<id>&action=retry`: start the caller's failed sketch again from its kept still."""
    from shared.pipeline.creation import TooManySketches
    from shared.pipeline.retry import NotRetryable, SketchNotFound

    if request.args.get("action") != "retry":
        return _error(400, "invalid_field", "action: must be retry (with id)", field="action")
    sketch_id = _sketch_id(request)
    if isinstance(sketch_id, flask.Response):
        return sketch_id
    key = _idempotency_key(request)
    if isinstance(key, flask.Response):
        return key
    raw = request.get_data()
    if raw.strip() not in EMPTY_BODIES:
        return _error(400, "invalid_field", "body: a retry takes no body (or {})", field="body")
    if not is_sketch_id(sketch_id):
        return _not_found(sketch_id)
    try:
        retried = get_runtime().retrier.retry(sketch_id, caller, key)
    except (BalanceExhausted, DailyLimitReached, TooManySketches, KeyInUse, KeyReused) as exc:
        return _refused(exc)
    except SketchNotFound:
        return _not_found(sketch_id)
    except SketchGone:
        return _error(404, "not_found", GONE)
    except NotRetryable as exc:
        return _error(409, "not_retryable", str(exc), reason=exc.reason)
    return _answer(retried.sketch, retried.answer, replayed=retried.replayed)


def _delete(request: flask.Request, user_id: str | None) -> flask.Response:
    """`DELETE ?id=<id>`: the caller's sketch, its media then its document; 204."""
    from shared.pipeline.deletion import MediaNotRemoved

    sketch = _own_sketch(request, user_id)
    if isinstance(sketch, flask.Response):
        return sketch
    try:
        get_runtime().deletion.delete(sketch)
    except MediaNotRemoved as exc:
        log.warning("a deletion did not finish: %s", exc)
        return _error(503, "storage_unavailable", "the sketch's media could not be removed; try again")
    deleted = flask.Response(status=204)
    del deleted.headers["Content-Type"]  # no body
    return deleted


# ---------------------------------------------------------------------------------------- answers


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> flask.Response:
    """`{"error": {"code", "message", ...}}` (a code it does not know is a bug)."""
    described(code, details)
    return error_response(status, code, message, headers, **details)


def _refused(
    exc: BalanceExhausted | DailyLimitReached | TooManySketches | KeyInUse | KeyReused,
) -> flask.Response:
    """The answer to a create or a retry that the spending guards or its key refused; nothing was
    written."""
    from shared.pipeline.creation import TooManySketches

    if isinstance(exc, BalanceExhausted):
        message = "new sketches are paused: Novita's balance is not enough"
        return _error(503, "novita_balance", message, _retry_after(exc.until))
    if isinstance(exc, DailyLimitReached):
        code = "project_daily_limit" if exc.cap == "project" else "daily_limit"
        return _error(429, code, str(exc), _retry_after(exc.resets_at))
    if isinstance(exc, TooManySketches):
        return _error(429, "too_many_sketches", str(exc))
    if isinstance(exc, KeyInUse):
        return _error(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being handled",
            {"Retry-After": "1"},
        )
    return _error(
        422, "idempotency_key_reused", "this Idempotency-Key was used for a request with another body"
    )


def _answer(sketch: Sketch, answer: Answer, *, replayed: bool) -> flask.Response:
    """The sketch's answer, with the status the first request got (the sketch as it is now)."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if answer.status == 202:
        return json_response(202, sketch.public(), headers)
    if answer.code == "novita_balance":
        headers["Retry-After"] = str(math.ceil(settings.balance_breaker_seconds))
    return _error(
        answer.status,
        answer.code or "novita_rejected",
        answer.message or "Novita refused the request",
        headers,
        reason=answer.reason,
        sketch=sketch.public(),
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
    return _error(400, "invalid_field", message, field=field[:ECHO])

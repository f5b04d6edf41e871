"""`novita_webhook`: where Novita reports finished tasks, and the recovery sweep's HTTP action."""

from __future__ import annotations

import logging

import flask
import functions_framework
from pydantic import ValidationError

from shared import logs
from shared.http_api import (
    BodyTooLarge,
    error_response,
    internal_error,
    json_response,
    method_not_allowed,
    parse_json,
    preflight,
    read_body,
)
from shared.novita_models import ASYNC_TASK_RESULT, WebhookEvent
from shared.pipeline import MalformedResult, RetryLater
from shared.recovery import sweep
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch_store import StoreUnavailable
from shared.webhook_tokens import (
    SKETCH_PARAM,
    STAGE_PARAM,
    TOKEN_PARAM,
    InvalidToken,
    sweep_token,
    verify,
    verify_sketch_token,
)

log = logging.getLogger("novita_webhook")
settings = load_settings_or_exit()

MAX_BODY_BYTES = 1024 * 1024


@functions_framework.http
def novita_webhook(request: flask.Request) -> flask.Response:
    logs.bind_trace(request.headers.get("X-Cloud-Trace-Context"), settings.project)
    if request.method == "OPTIONS":
        return preflight(request, settings.cors_allowed_origins, "POST, OPTIONS")
    if request.method != "POST":
        return method_not_allowed("POST, OPTIONS")
    if request.args.get("action") == "sweep":
        return _sweep(request)
    secret = settings.webhook_secret.get_secret_value()
    try:
        sketch_id = verify_sketch_token(secret, request.args.get(SKETCH_PARAM), request.args.get(TOKEN_PARAM))
    except InvalidToken:
        log.warning("webhook call without a valid token refused")
        return error_response(401, "unauthenticated", "missing or invalid webhook token")
    logs.bind_sketch(sketch_id)
    stage = request.args.get(STAGE_PARAM)
    stage_hint = stage if stage in ("image", "video") else None
    try:
        event = WebhookEvent.model_validate(parse_json(read_body(request, MAX_BODY_BYTES)))
    except BodyTooLarge:
        return error_response(413, "body_too_large", "the body is over 1 MiB")
    except (ValueError, ValidationError):
        return error_response(400, "invalid_body", "the body is not a Novita webhook event")
    if event.event_type != ASYNC_TASK_RESULT:
        log.info("event %r ignored", event.event_type[:64])
        return json_response(200, {"outcome": "ignored", "event_type": event.event_type[:64]})
    try:
        result = event.task_result()
    except ValidationError:
        return error_response(400, "invalid_body", "the payload is not a Novita task result")
    extra = {"task_id": result.task.task_id, "task_status": result.task.status}
    try:
        outcome = get_runtime().pipeline.apply(sketch_id, result, stage_hint)
    except MalformedResult as exc:
        log.warning("malformed result: %s", exc, extra=extra)
        return error_response(400, "invalid_body", str(exc))
    except (RetryLater, StoreUnavailable) as exc:
        # Answer 5xx so Novita delivers again; the sketch keeps its state for that delivery.
        log.warning("delivery not applied, Novita will retry: %s", exc, extra=extra)
        return error_response(503, "retry_later", str(exc))
    except Exception:
        log.exception("unexpected error applying a delivery", extra=extra)
        return internal_error()
    log.info("delivery handled", extra={**extra, "outcome": outcome.value})
    return json_response(200, {"outcome": outcome.value})


def _sweep(request: flask.Request) -> flask.Response:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    bearer = presented.strip() if scheme.lower() == "bearer" else None
    try:
        verify(sweep_token(settings.webhook_secret.get_secret_value()), bearer)
    except InvalidToken:
        return error_response(401, "unauthenticated", "missing or invalid sweep token")
    try:
        report = sweep()
    except StoreUnavailable as exc:
        return error_response(503, "store_unavailable", str(exc))
    log.info("sweep finished", extra={"examined": report.examined, "changed": report.changed})
    return json_response(
        200, {"examined": report.examined, "changed": report.changed, "errors": report.errors}
    )

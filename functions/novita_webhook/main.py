"""`novita_webhook`: where Novita reports finished tasks, where Pub/Sub pushes the steps, and the
recovery sweep's action.

- `POST ?sketch=&stage=&token=` (Novita): a delivery is a hint. Its token is checked, a `check`
  step naming its task is published, and it is answered at once; the step asks Novita's
  task-result and applies what that says.
- `POST ?action=step` / `?action=dead_letter` (Pub/Sub push): a signed step, done within its deadline.
- `POST ?action=sweep` (Cloud Scheduler, with the sweep token): the recovery sweep.
"""

from __future__ import annotations

import logging
from typing import cast

import flask
import functions_framework
from pydantic import ValidationError

from shared.core import logs
from shared.core.deadline import Deadline
from shared.core.tokens import (
    SKETCH_PARAM,
    STAGE_PARAM,
    TOKEN_PARAM,
    InvalidToken,
    sketch_token,
    sweep_token,
    verify,
)
from shared.edge.answers import error_response, internal_error, json_response, method_not_allowed, parse_json
from shared.edge.cors import preflight
from shared.edge.guard import install as install_body_guard
from shared.novita.models import ASYNC_TASK_RESULT, WebhookEvent, WebhookTask
from shared.pipeline.queue import MalformedPush, QueueUnavailable, Step, read_push
from shared.pipeline.recovery import SWEEP_SECONDS
from shared.pipeline.topology import DEAD_LETTER_ACTION, STEP_ACTION
from shared.pipeline.work import TRANSIENT
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch.model import Stage, StepKind, is_sketch_id
from shared.sketch.store import StoreUnavailable

log = logging.getLogger("novita_webhook")
settings = load_settings_or_exit()

MAX_BODY_BYTES = 64 * 1024
# Under the function: hostile bodies cost neither memory, threads, 5xx answers nor ERROR lines.
install_body_guard(flask.current_app, limit=MAX_BODY_BYTES)
SECRET = settings.webhook_secret.get_secret_value()


@functions_framework.http
def novita_webhook(request: flask.Request) -> flask.Response:
    logs.bind_trace(request.headers.get("X-Cloud-Trace-Context"), settings.project)
    if request.method == "OPTIONS":
        return preflight(request, settings.cors_allowed_origins, "POST, OPTIONS")
    if request.method != "POST":
        return method_not_allowed("POST, OPTIONS")
    action = request.args.get("action")
    try:
        if action == "sweep":
            return _sweep(request)
        if action in (STEP_ACTION, DEAD_LETTER_ACTION):
            return _push(request, dead=action == DEAD_LETTER_ACTION)
        return _delivery(request)
    except Exception:
        log.exception("unexpected error", extra={"action": (action or "delivery")[:32]})
        return internal_error()


def _delivery(request: flask.Request) -> flask.Response:
    """A webhook from Novita: checked, handed on as a step, answered."""
    sketch_id = request.args.get(SKETCH_PARAM, "")
    stage = cast(Stage, request.args.get(STAGE_PARAM, ""))
    if not is_sketch_id(sketch_id) or stage not in ("image", "video"):
        # The form first: nothing that could not be a sketch's goes any further, token or not.
        log.warning("webhook call for no sketch refused")
        return error_response(400, "invalid_webhook_url", "the URL names no sketch and stage")
    try:
        verify(sketch_token(SECRET, sketch_id, stage), request.args.get(TOKEN_PARAM))
    except InvalidToken:
        log.warning("webhook call without a valid token refused")
        return error_response(401, "unauthenticated", "missing or invalid webhook token")
    logs.bind_sketch(sketch_id)
    try:
        event = WebhookEvent.model_validate(parse_json(request.get_data()))
        if event.event_type != ASYNC_TASK_RESULT:
            log.info("event ignored", extra={"event_type": event.event_type[:64]})
            return json_response(200, {"outcome": "ignored"})
        payload = event.payload if isinstance(event.payload, dict) else {}
        task = WebhookTask.model_validate(payload.get("task"))
    except (ValueError, ValidationError):
        return error_response(400, "invalid_body", "the body is not a Novita task result event")
    extra = {"task_id": task.task_id, "task_status": task.status}
    # Novita's test mode has no real task to ask about: only then does the delivery's own result count.
    result = payload if settings.webhook_test_mode else None
    step = Step(kind=StepKind.CHECK, sketch_id=sketch_id, task_id=task.task_id, stage=stage, result=result)
    try:
        get_runtime().queue.publish(step)
    except QueueUnavailable as exc:
        # 5xx, so that Novita delivers it again.
        log.warning("delivery not handed on; Novita will retry: %s", exc, extra=extra)
        return error_response(503, "retry_later", "the delivery could not be queued; deliver it again")
    log.info("delivery handed on", extra=extra)
    return json_response(200, {"outcome": "queued"})


def _push(request: flask.Request, *, dead: bool) -> flask.Response:
    """A step pushed by Pub/Sub: done, or answered 5xx to be delivered again."""
    try:
        delivery = read_push(parse_json(request.get_data()), SECRET)
    except InvalidToken:
        log.warning("push without a valid signature refused")
        return error_response(401, "unauthenticated", "the step is not signed by this project")
    except (ValueError, MalformedPush) as exc:
        # Acknowledged: a body that is not a step will never become one.
        log.warning("push that carries no step dropped: %s", exc)
        return json_response(200, {"outcome": "ignored"})
    step = delivery.step
    logs.bind_sketch(step.sketch_id)
    extra = {"step": step.kind.value, "attempt": delivery.attempt}
    worker = get_runtime().worker
    if dead:
        outcome = worker.dead_letter(step, _attempts(delivery.attributes, delivery.attempt))
        return json_response(200, {"outcome": outcome.value})
    try:
        outcome = worker.run(step)
    except TRANSIENT as exc:
        log.warning("step not done; Pub/Sub will deliver it again: %s", exc, extra=extra)
        worker.note_failure(step, exc)
        return error_response(503, "retry_later", str(exc)[:300])
    log.info("step done", extra={**extra, "outcome": outcome.value})
    return json_response(200, {"outcome": outcome.value})


def _attempts(attributes: dict[str, str], attempt: int | None) -> int | None:
    """How many times Pub/Sub tried the step before it gave up (its dead-letter attribute)."""
    count = attributes.get("CloudPubSubDeadLetterSourceDeliveryCount", "")
    return int(count) if count.isdigit() else attempt


def _sweep(request: flask.Request) -> flask.Response:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    try:
        verify(sweep_token(SECRET), presented.strip() if scheme.lower() == "bearer" else None)
    except InvalidToken:
        return error_response(401, "unauthenticated", "missing or invalid sweep token")
    try:
        report = get_runtime().recovery.sweep(Deadline.after(SWEEP_SECONDS))
    except StoreUnavailable as exc:
        return error_response(503, "store_unavailable", str(exc))
    log.info("sweep finished", extra=report.to_json())
    return json_response(200, report.to_json())

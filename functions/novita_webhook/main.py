"""`novita_webhook`: one source, deployed as two doors (`WEBHOOK_DOOR`).

- The public door takes Novita's deliveries only: `POST ?sketch=&stage=&t=&token=`. A delivery is a
  hint: its token is checked, and a `check` of the task it names is handed on to the queue when one
  is due; it is answered at once. Any `?action=` there is answered 404 without its body being read.
- The private door, which Cloud Run IAM opens only to the service account of the push subscriptions
  and the Scheduler job, takes Google's calls: `?action=step` and `?action=dead_letter` (Pub/Sub
  push: a signed step, done within its deadline) and `?action=sweep` (Cloud Scheduler, with the
  sweep token). A delivery there is answered 404.
"""

from __future__ import annotations

import logging
import time
from typing import cast

import flask
import functions_framework

from shared.core import logs
from shared.core.deadline import Deadline
from shared.core.timings import WEBHOOK_TOKEN_MARGIN
from shared.core.tokens import (
    ISSUED_PARAM,
    SKETCH_PARAM,
    STAGE_PARAM,
    SWEEP_HEADER,
    TOKEN_PARAM,
    InvalidToken,
    sweep_token,
    verify,
    verify_webhook,
)
from shared.edge.answers import error_response, internal_error, json_response, method_not_allowed, parse_json
from shared.edge.cors import preflight
from shared.edge.guard import install as install_body_guard
from shared.novita.webhook import ASYNC_TASK_RESULT, WebhookEvent, WebhookTask
from shared.pipeline.queue import Expired, Hint, MalformedPush, Misrouted, QueueUnavailable, Route, read_push
from shared.pipeline.recovery import SWEEP_SECONDS
from shared.pipeline.topology import DEAD_LETTER_ACTION, STEP_ACTION, SWEEP_ACTION
from shared.pipeline.work import TRANSIENT, WAITS
from shared.runtime import get_runtime, load_settings_or_exit
from shared.sketch.model import Stage, is_sketch_id
from shared.sketch.store import StoreUnavailable

log = logging.getLogger("novita_webhook")
settings = load_settings_or_exit()

MAX_BODY_BYTES = 64 * 1024
METHODS = "POST, OPTIONS"
# Under the function: hostile bodies cost neither memory, threads, 5xx answers nor ERROR lines.
install_body_guard(
    flask.current_app, limit=MAX_BODY_BYTES, origins=settings.cors_allowed_origins, methods=METHODS
)
SECRET = settings.webhook_secret.get_secret_value()
# A token outlives the longest a sketch may live: its task's webhook changes nothing after that.
TOKEN_LIFETIME = settings.max_sketch_age_seconds + WEBHOOK_TOKEN_MARGIN
PRIVATE_ACTIONS = (STEP_ACTION, DEAD_LETTER_ACTION, SWEEP_ACTION)


@functions_framework.http
def novita_webhook(request: flask.Request) -> flask.Response:
    logs.bind_trace(request.headers.get("X-Cloud-Trace-Context"), settings.project)
    if request.method == "OPTIONS":
        return preflight(request, settings.cors_allowed_origins, METHODS)
    if request.method != "POST":
        return method_not_allowed(METHODS)
    action = request.args.get("action")
    private = settings.webhook_door == "private"
    if private != (action is not None) or (private and action not in PRIVATE_ACTIONS):
        # Answered before the body is read: the guard closes the connection on whatever was sent.
        return error_response(404, "not_found", "nothing here answers that; see the other door")
    try:
        if action == SWEEP_ACTION:
            return _sweep(request)
        if action is not None:
            return _push(request, "dead_letter" if action == DEAD_LETTER_ACTION else "step")
        return _delivery(request)
    except Exception:
        log.exception("unexpected error", extra={"action": (action or "delivery")[:32]})
        return internal_error()


def _delivery(request: flask.Request) -> flask.Response:
    """A webhook from Novita: checked, handed on as a check when one is due, answered."""
    sketch_id = request.args.get(SKETCH_PARAM, "")
    stage = cast(Stage, request.args.get(STAGE_PARAM, ""))
    if not is_sketch_id(sketch_id) or stage not in ("image", "video"):
        # The form first: nothing that could not be a sketch's goes any further, token or not.
        log.warning("webhook call for no sketch refused")
        return error_response(400, "invalid_webhook_url", "the URL names no sketch and stage")
    try:
        verify_webhook(
            SECRET,
            sketch_id,
            stage,
            request.args.get(ISSUED_PARAM),
            request.args.get(TOKEN_PARAM),
            time.time(),
            TOKEN_LIFETIME,
        )
    except InvalidToken as exc:
        log.warning("webhook call refused: %s", exc)
        return error_response(401, "unauthenticated", "missing, invalid or expired webhook token")
    logs.bind_sketch(sketch_id)
    try:
        event = WebhookEvent.read(parse_json(request.get_data()))
        if event.event_type != ASYNC_TASK_RESULT:
            log.info("event ignored", extra={"event_type": event.event_type[:64]})
            return json_response(200, {"outcome": "ignored"})
        payload = event.payload if isinstance(event.payload, dict) else {}
        task = WebhookTask.read(payload.get("task"))
    except ValueError:
        return error_response(400, "invalid_body", "the body is not a Novita task result event")
    extra = {"task_id": task.task_id, "task_status": task.status}
    # Novita's test mode has no real task to ask about: only then does the delivery's own result count.
    hint = Hint(task.task_id, stage, payload if settings.webhook_test_mode else None)
    try:
        outcome = get_runtime().recovery.delivered(sketch_id, hint)
    except (QueueUnavailable, StoreUnavailable) as exc:
        # 5xx, so that Novita delivers it again.
        log.warning("delivery not handed on; Novita will retry: %s", exc, extra=extra)
        return error_response(503, "retry_later", "the delivery could not be handed on; deliver it again")
    log.info("delivery %s", outcome, extra=extra)
    return json_response(200, {"outcome": outcome})


def _push(request: flask.Request, route: Route) -> flask.Response:
    """A step pushed by Pub/Sub: done, or answered 5xx to be delivered again."""
    try:
        delivery = read_push(parse_json(request.get_data()), SECRET, route)
    except InvalidToken:
        log.warning("push without a valid signature refused")
        return error_response(401, "unauthenticated", "the step is not signed by this project")
    except Misrouted as exc:
        log.warning("push refused: %s", exc)
        return error_response(400, "misrouted", str(exc))
    except Expired as exc:
        # Acknowledged: recovery looks after a sketch whose step is this old.
        log.warning("push refused: %s", exc)
        return json_response(200, {"outcome": "expired"})
    except (ValueError, MalformedPush) as exc:
        # Acknowledged: a body that is not a step will never become one.
        log.warning("push that carries no step dropped: %s", exc)
        return json_response(200, {"outcome": "ignored"})
    step = delivery.step
    logs.bind_sketch(step.sketch_id)
    extra = {"step": step.kind.value, "attempt": delivery.attempt}
    worker = get_runtime().worker
    try:
        outcome = worker.dead_letter(step) if route == "dead_letter" else worker.run(step)
    except WAITS as exc:
        log.info("step waits; Pub/Sub will deliver it again: %s", exc, extra=extra)
        return error_response(503, "wait", str(exc)[:300])
    except TRANSIENT as exc:
        log.warning("step not done; Pub/Sub will deliver it again: %s", exc, extra=extra)
        if route == "step":
            worker.note_failure(step, exc)
        return error_response(503, "retry_later", str(exc)[:300])
    log.info("step done", extra={**extra, "outcome": outcome.value})
    return json_response(200, {"outcome": outcome.value})


def _sweep(request: flask.Request) -> flask.Response:
    try:
        verify(sweep_token(SECRET), request.headers.get(SWEEP_HEADER))
    except InvalidToken:
        return error_response(401, "unauthenticated", f"missing or invalid {SWEEP_HEADER}")
    try:
        report = get_runtime().recovery.sweep(Deadline.after(SWEEP_SECONDS))
    except StoreUnavailable as exc:
        return error_response(503, "store_unavailable", str(exc))
    log.info("sweep finished", extra=report.to_json())
    return json_response(200, report.to_json())

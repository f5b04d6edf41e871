"""Novita's API: text to image (an async task, or Seedream 3.0's synchronous endpoint), Kling image
to video, and task-result.

Every request body Novita receives is built here and nowhere else. The integration guide and
Novita's public reference disagree on two of them (`../shared/novita-api-notes.md`), so each has two
forms: the guide's is sent first; a refusal that started no task and is about the request's shape
moves to the reference's form, and the project remembers what worked (`FormMemory`), so the next
request goes straight to it. A request whose answer is lost, times out or is a 5xx is never sent
again in another form: it may have started a paid task. Its errors are `shared/novita/errors.py`'s.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import httpx
from pydantic import ValidationError

from shared.core import timings
from shared.core.backoff import RETRY_STATUSES, backoff_delay, retry_after_seconds
from shared.core.config import Settings
from shared.core.deadline import Deadline
from shared.media.still import Still
from shared.novita.errors import (
    NovitaError,
    NovitaOutcomeUnknown,
    NovitaRejected,
    NovitaUnavailable,
    error_from_response,
)
from shared.novita.models import SeedreamImages, TaskResult
from shared.novita.webhook import is_task_id

log = logging.getLogger(__name__)

TXT2IMG_PATH = "/v3/async/txt2img"
SEEDREAM_PATH = "/v3/seedream-3-0-txt2img"
KLING_I2V_PATH = "/v3/async/kling-v2.1-i2v-master"
TASK_RESULT_PATH = "/v3/async/task-result"
SEEDREAM_MODEL = "seedream-3-0-t2i-250415"
KLING_GUIDANCE = 0.5

# Each phase's limit lives with the timings it must stay in order with (shared/core/timings.py).
CONNECT_SECONDS = timings.NOVITA_CONNECT
READ_SECONDS = timings.NOVITA_READ
WRITE_SECONDS = timings.NOVITA_WRITE
SEEDREAM_READ_SECONDS = timings.SEEDREAM_READ
# A POST is re-sent only when Novita surely did not receive it (connect failure, 429).
POST_ATTEMPTS = 3
POST_DEADLINE_SECONDS = timings.NOVITA_POST_RETRY_WINDOW
MIN_POST_SECONDS = timings.MIN_POST_SECONDS
# task-result is a GET: tried again through 429, 503, 504 and network faults, within the deadline.
GET_ATTEMPTS = 4
GET_BASE_DELAY = 0.25
GET_MAX_DELAY = 4.0

Form = Literal["guide", "reference"]
FORMS: tuple[Form, Form] = ("guide", "reference")
Request = Literal["text_to_image", "image_to_video"]


class FormMemory(Protocol):
    """Where the forms Novita takes are remembered between instances."""

    def load(self) -> dict[Request, Form]: ...

    def save(self, request: Request, form: Form) -> None: ...


class FormsInMemory:
    """This instance's memory only (the client's default; tests)."""

    def __init__(self) -> None:
        self._forms: dict[Request, Form] = {}

    def load(self) -> dict[Request, Form]:
        return dict(self._forms)

    def save(self, request: Request, form: Form) -> None:
        self._forms[request] = form


class NovitaClient:
    """One per instance: it keeps its connections open, and remembers which forms Novita takes."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        memory: FormMemory | None = None,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=settings.novita_base_url,
            headers={"Authorization": f"Bearer {settings.novita_api_key.get_secret_value()}"},
            timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS, write=WRITE_SECONDS),
            # No retrying transport: its own clock would not stop at the caller's deadline.
            transport=transport or httpx.HTTPTransport(),
        )
        self._lock = threading.Lock()
        self._memory = memory or FormsInMemory()
        self._forms: dict[Request, Form] | None = None

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------------------------- forms

    def form(self, request: Request) -> Form:
        with self._lock:
            if self._forms is None:
                # Learnt once per instance from what the project remembers: a new instance does not
                # send a form Novita has refused before (and a request cut short by a crash is then
                # in the form Novita takes).
                self._forms = {"text_to_image": "guide", "image_to_video": "guide", **self._memory.load()}
            return self._forms[request]

    def remember(self, request: Request, form: Form) -> None:
        if self.form(request) == form:
            return
        with self._lock:
            assert self._forms is not None
            self._forms[request] = form
        log.warning("Novita takes the %s form of %s from now on", form, request.replace("_", " "))
        self._memory.save(request, form)

    # ----------------------------------------------------------------------------- requests

    def _webhook(self, url: str) -> dict[str, Any]:
        webhook: dict[str, Any] = {"url": url}
        if self._settings.webhook_test_mode:
            webhook["test_mode"] = {
                "enabled": True,
                "return_task_status": self._settings.webhook_test_mode,
            }
        return webhook

    def start_text_to_image(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        seed: int,
        webhook_url: str,
        deadline: Deadline,
    ) -> str:
        """The guide's form: an async task that reports through its webhook. Its task id."""
        request: dict[str, Any] = {
            "model_name": self._settings.t2i_model,
            "prompt": prompt,
            "width": width,
            "height": height,
            "image_num": 1,
            "steps": 20,
            "guidance_scale": 7.5,
            "sampler_name": "Euler a",
            "seed": seed,
        }
        if negative_prompt:  # Novita's range for it starts at one character
            request["negative_prompt"] = negative_prompt
        body = {
            "extra": {"response_image_type": "jpeg", "webhook": self._webhook(webhook_url)},
            "request": request,
        }
        return self._task_id(self._post(TXT2IMG_PATH, deadline, json=body))

    def seedream(self, *, prompt: str, width: int, height: int, seed: int, deadline: Deadline) -> str:
        """The reference's form: Seedream 3.0 draws while the request waits. The still's URL."""
        body = {
            "model": SEEDREAM_MODEL,
            "prompt": prompt,
            "size": f"{width}x{height}",
            "seed": seed,
            "response_format": "url",
            "watermark": False,  # Novita's default stamps "AI generated" on the still
        }
        response = self._post(SEEDREAM_PATH, deadline, read=SEEDREAM_READ_SECONDS, json=body)
        try:
            urls = SeedreamImages.model_validate(response.json()).image_urls
        except (ValueError, ValidationError):
            urls = []
        if not urls:
            raise NovitaOutcomeUnknown(
                "Seedream answered without a usable image URL", status_code=response.status_code
            )
        return urls[0]

    def start_image_to_video(
        self,
        *,
        still: Still,
        still_url: str,
        prompt: str,
        negative_prompt: str,
        duration: int,
        webhook_url: str,
        deadline: Deadline,
        sending: Callable[[Form], None],
    ) -> tuple[str, Form]:
        """Start Kling on the still, in the form Novita takes; its task id and that form.

        The guide's form uploads the still's bytes as multipart (and registers the webhook); the
        reference's sends JSON with the still's URL (and has no webhook). `sending` is told each form
        before its request goes out, so that the caller's record says which one may be in flight.
        """
        first = self.form("image_to_video")
        refused: NovitaRejected | None = None
        for form in (first, *(f for f in FORMS if f != first)):
            sending(form)
            try:
                if form == "guide":
                    fields = {
                        "prompt": prompt,
                        "negative_prompt": negative_prompt,
                        "duration": str(duration),
                        "cfg_scale": str(KLING_GUIDANCE),
                        "extra": json.dumps({"webhook": self._webhook(webhook_url)}),
                    }
                    files = {"image": (f"still.{still.extension}", still.data, still.mime)}
                    response = self._post(KLING_I2V_PATH, deadline, data=fields, files=files)
                else:
                    body: dict[str, Any] = {
                        "image": still_url,
                        "prompt": prompt,
                        "duration": str(duration),
                        "guidance_scale": KLING_GUIDANCE,
                    }
                    if negative_prompt:
                        body["negative_prompt"] = negative_prompt
                    response = self._post(KLING_I2V_PATH, deadline, json=body)
            except NovitaRejected as exc:
                if refused is not None:
                    # Both refused: which refusal was about the still and which about the form is
                    # not known, so the sketch's reason names both.
                    raise NovitaRejected(
                        f"{exc.message} (the {first} form before it: {refused.describe()})",
                        status_code=exc.status_code,
                        code=exc.code,
                        reason=exc.reason,
                    ) from exc
                if not exc.refuses_form:
                    raise
                log.warning("Kling refused the %s form: %s", form, exc.describe())
                refused = exc
                continue
            task_id = self._task_id(response)
            self.remember("image_to_video", form)
            log.info("Kling took the %s form", form, extra={"task_id": task_id, "form": form})
            return task_id, form
        raise AssertionError("unreachable: the last form raises")

    def task_result(self, task_id: str, deadline: Deadline) -> TaskResult:
        response = self._get(TASK_RESULT_PATH, deadline, params={"task_id": task_id})
        if response.status_code != 200:
            raise error_from_response(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise NovitaUnavailable("task-result answered a body that is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("task"), dict):
            raise NovitaUnavailable("task-result answered a body without a task")
        # A body with a task that breaks a bound raises ValidationError: a result refused for good.
        return TaskResult.model_validate(body)

    # ------------------------------------------------------------------------------ plumbing

    def _get(self, path: str, deadline: Deadline, **request: Any) -> httpx.Response:
        """A GET, tried again through faults that may pass while the deadline allows; the last
        answer otherwise (its status is for the caller to judge)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._call(
                    "GET", path, timeout=deadline.timeout(CONNECT_SECONDS, READ_SECONDS), **request
                )
            except httpx.TransportError as exc:
                error: NovitaError = NovitaUnavailable(f"{path} could not be fetched: {exc!r}")
                delay = backoff_delay(attempt, GET_BASE_DELAY, GET_MAX_DELAY)
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                error = error_from_response(response)
                hinted = retry_after_seconds(response)
                delay = (
                    hinted if hinted is not None else backoff_delay(attempt, GET_BASE_DELAY, GET_MAX_DELAY)
                )
            if attempt >= GET_ATTEMPTS or delay >= deadline.remaining():
                raise error
            log.warning("retrying %s after %.2fs: %s", path, delay, error.describe())
            self._sleep(delay)

    def _post(
        self, path: str, deadline: Deadline, *, read: float = READ_SECONDS, **request: Any
    ) -> httpx.Response:
        """A POST that may start a paid task: re-sent only when Novita surely did not receive it."""
        if deadline.remaining() < MIN_POST_SECONDS:
            raise NovitaUnavailable(f"too little time left to send {path}; it was not sent")
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            timeout = deadline.timeout(CONNECT_SECONDS, read, WRITE_SECONDS)
            try:
                response = self._call("POST", path, timeout=timeout, **request)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # Nothing reached Novita, so sending again cannot create a second task.
                error: NovitaError = NovitaUnavailable(f"Novita could not be reached: {exc!r}")
                delay = 0.2 * 2 ** (attempt - 1)
            except httpx.TransportError as exc:
                raise NovitaOutcomeUnknown(
                    f"no answer from Novita after the request was sent: {exc!r}"
                ) from exc
            else:
                if response.is_success:
                    return response
                error = error_from_response(response)
                if response.status_code != 429:
                    raise error
                delay = retry_after_seconds(response) or 0.5 * 2 ** (attempt - 1)
            elapsed = time.monotonic() - started
            if (
                attempt >= POST_ATTEMPTS
                or elapsed + delay > POST_DEADLINE_SECONDS
                or delay + MIN_POST_SECONDS > deadline.remaining()
            ):
                raise error
            log.warning("retrying %s after %.2fs: %s", path, delay, error.describe())
            self._sleep(delay)

    def _call(self, method: str, path: str, **request: Any) -> httpx.Response:
        """One request to Novita, logged with its outcome and duration."""
        started = time.perf_counter()
        outcome: int | str = "no answer"
        try:
            response = self._http.request(method, path, **request)
            outcome = response.status_code
            return response
        finally:
            log.info(
                "Novita %s %s answered %s",
                method,
                path,
                outcome,
                extra={
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "http_status": outcome,
                },
            )

    @staticmethod
    def _task_id(response: httpx.Response) -> str:
        """The task id of a 2xx answer, held to the same bound as every stored task id."""
        try:
            task_id = response.json().get("task_id")
            if not isinstance(task_id, str) or not is_task_id(task_id):
                raise ValueError("no task_id within the bound")
            return task_id
        except (ValueError, AttributeError):  # not JSON, not an object, or no usable id
            # Novita said 2xx, so a task may well exist; a usable id is what we lack.
            raise NovitaOutcomeUnknown(
                "Novita accepted the request but its answer has no usable task_id",
                status_code=response.status_code,
            ) from None

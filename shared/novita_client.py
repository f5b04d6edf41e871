"""Novita's API: text to image, Kling image to video, and task-result.

Every request body Novita receives is built here and nowhere else. Errors are typed by what the
caller can do about them:

- `NovitaRejected`: Novita refused the request (4xx other than 429); sending it again won't help.
- `NovitaUnavailable`: Novita could not be reached or asked us to come back (429, 5xx, network);
  the contract treats these as faults that pass, so a later delivery sends the request again.
- `NovitaOutcomeUnknown`: a POST was sent but no answer came back (a timeout, a dropped
  connection), so a paid task may exist and the request is never sent again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import ValidationError

from shared.config import Settings
from shared.http_retry import RetryingTransport, retry_after_seconds
from shared.novita_models import TaskResult

log = logging.getLogger(__name__)

TXT2IMG_PATH = "/v3/async/txt2img"
KLING_I2V_PATH = "/v3/async/kling-v2.1-i2v-master"
TASK_RESULT_PATH = "/v3/async/task-result"

# Connecting is quick or not at all; an upload of a 10 MB still may take a while to write.
TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=60.0, pool=5.0)
# A POST is re-sent only when Novita surely did not receive it (connect failure, 429).
POST_ATTEMPTS = 3
POST_DEADLINE_SECONDS = 10.0
KLING_CFG_SCALE = "0.5"


class NovitaError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: Any = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.reason = reason

    def describe(self) -> str:
        """One line for a sketch's `error_message` and for an API error."""
        parts = [f"Novita {self.status_code}" if self.status_code else "Novita"]
        if self.reason:
            parts.append(self.reason)
        return f"{' '.join(parts)}: {self.message}"


class NovitaRejected(NovitaError):
    pass


class NovitaUnavailable(NovitaError):
    pass


class NovitaOutcomeUnknown(NovitaError):
    pass


def error_from_response(response: httpx.Response) -> NovitaError:
    """Build the typed error from Novita's `{code, reason, message}` error body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.reason_phrase or "request failed")
    kind: type[NovitaError]
    if response.status_code == 429 or response.status_code >= 500:
        kind = NovitaUnavailable
    else:
        kind = NovitaRejected
    return kind(
        message,
        status_code=response.status_code,
        code=body.get("code"),
        reason=body.get("reason") if isinstance(body.get("reason"), str) else None,
    )


class NovitaClient:
    """One per instance: it keeps its connections open between requests."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=settings.novita_base_url,
            headers={"Authorization": f"Bearer {settings.novita_api_key.get_secret_value()}"},
            timeout=TIMEOUT,
            transport=RetryingTransport(transport or httpx.HTTPTransport(), sleep=sleep),
        )

    def close(self) -> None:
        self._http.close()

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
    ) -> str:
        body = {
            "extra": {"response_image_type": "jpeg", "webhook": self._webhook(webhook_url)},
            "request": {
                "model_name": self._settings.t2i_model,
                "prompt": prompt,
                "negative_prompt": negative_prompt,
                "width": width,
                "height": height,
                "image_num": 1,
                "steps": 20,
                "guidance_scale": 7.5,
                "sampler_name": "Euler a",
                "seed": seed,
            },
        }
        return self._start_task(TXT2IMG_PATH, json=body)

    def start_image_to_video(
        self,
        *,
        image: bytes,
        image_filename: str,
        image_mime: str,
        prompt: str,
        negative_prompt: str,
        duration: int,
        webhook_url: str,
    ) -> str:
        fields = {
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "duration": str(duration),
            "cfg_scale": KLING_CFG_SCALE,
            "extra": json.dumps({"webhook": self._webhook(webhook_url)}),
        }
        return self._start_task(
            KLING_I2V_PATH, data=fields, files={"image": (image_filename, image, image_mime)}
        )

    def task_result(self, task_id: str) -> TaskResult:
        try:
            response = self._call("GET", TASK_RESULT_PATH, params={"task_id": task_id})
        except httpx.TransportError as exc:
            raise NovitaUnavailable(f"task-result could not be fetched: {exc!r}") from exc
        if response.status_code != 200:
            raise error_from_response(response)
        try:
            return TaskResult.model_validate(response.json())
        except ValidationError as exc:
            # The count only: the values would put presigned URLs into the logs.
            raise NovitaUnavailable(
                f"task-result answered a body that is not a task result ({exc.error_count()} problems)"
            ) from exc
        except ValueError as exc:
            raise NovitaUnavailable("task-result answered a body that is not JSON") from exc

    def _start_task(self, path: str, **request: Any) -> str:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._call("POST", path, **request)
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
                    return self._task_id(response)
                error = error_from_response(response)
                if response.status_code != 429:
                    raise error
                delay = retry_after_seconds(response) or 0.5 * 2 ** (attempt - 1)
            if attempt >= POST_ATTEMPTS or time.monotonic() - started + delay > POST_DEADLINE_SECONDS:
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
        try:
            task_id = response.json().get("task_id")
        except (ValueError, AttributeError):
            task_id = None
        if not isinstance(task_id, str) or not 0 < len(task_id) <= 256 or not task_id.isprintable():
            # Novita said 2xx, so a task may well exist; a usable id is what we lack.
            raise NovitaOutcomeUnknown(
                "Novita accepted the request but its answer has no usable task_id",
                status_code=response.status_code,
            )
        return task_id

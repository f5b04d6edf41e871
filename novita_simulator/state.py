"""What the simulator remembers: settings and faults, tasks, media links, counters, the ledger of paid
calls, work in flight."""

import dataclasses
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from novita_simulator.chaos import FaultDice
from novita_simulator.config import Endpoint, PaidEndpoint, SimulatorConfig, TaskKind
from novita_simulator.errors import NovitaError
from novita_simulator.ledger import Ledger
from novita_simulator.media import MediaAsset
from novita_simulator.task import FAILED, PROCESSING, QUEUED, SUCCEED, Task

DELIVERY_LOG_SIZE = 500
# Media links are `<base_url>/media/<token>.<extension>`, like a presigned object URL.
MEDIA_PREFIX = "/media/"
COUNTED_REQUESTS = ("txt2img", "seedream", "kling", "task_result", "media")

ConsumableFault = Literal["fail_tasks", "accept_then_drop_response"]


@dataclass(frozen=True)
class DeliveryAttempt:
    task_id: str
    url: str
    attempt: int
    status_code: int | None
    error: str | None
    elapsed_ms: int


@dataclass(frozen=True)
class MediaLink:
    asset: MediaAsset
    expires_monotonic: float

    def expired(self) -> bool:
        return time.monotonic() >= self.expires_monotonic


class SimulatorState:
    def __init__(self, config: SimulatorConfig) -> None:
        self._initial = config.model_copy(deep=True)
        self._changed = threading.Condition()
        self._clear()

    def _clear(self) -> None:
        # Faults are consumed by replacing the config, so snapshots handed out never change.
        self._config = self._initial.model_copy(deep=True)
        self._tasks: dict[str, Task] = {}
        self._links: dict[str, MediaLink] = {}
        self._requests = dict.fromkeys(COUNTED_REQUESTS, 0)
        self._tasks_created: dict[TaskKind, int] = {"txt2img": 0, "kling": 0}
        self._seedream_images = 0
        self._kling_tasks_by_webhook_url: dict[str, int] = {}
        self._webhook_attempts = 0
        self._deliveries: deque[DeliveryAttempt] = deque(maxlen=DELIVERY_LOG_SIZE)
        self._ledger = Ledger()
        self._dice = FaultDice(self._config.fault_seed)
        # One token per task or webhook delivery still under way; reset forgets them all.
        self._pending: set[object] = set()

    @property
    def config(self) -> SimulatorConfig:
        with self._changed:
            return self._config

    def configure(self, changes: Mapping[str, object]) -> SimulatorConfig:
        with self._changed:
            self._config = self._config.with_changes(changes)
            if "fault_seed" in changes:
                self._dice = FaultDice(self._config.fault_seed)
            return self._config

    def reset(self) -> None:
        with self._changed:
            self._clear()
            self._changed.notify_all()

    def count_request(self, name: str) -> None:
        with self._changed:
            self._requests[name] += 1

    def take_http_error(self, endpoint: Endpoint) -> int | None:
        """The status to answer an API call with instead of serving it: the queue's next, or a roll's."""
        with self._changed:
            queued = self._config.http_errors.get(endpoint)
            if not queued:
                return self._dice.http_error(self._config)
            self._config = self._config.model_copy(
                update={"http_errors": {**self._config.http_errors, endpoint: queued[1:]}}
            )
            return queued[0]

    def take_fault(self, fault: ConsumableFault, kind: PaidEndpoint) -> bool:
        with self._changed:
            counts: dict[PaidEndpoint, int] = getattr(self._config, fault)
            if counts.get(kind, 0) <= 0:
                return False
            self._config = self._config.model_copy(update={fault: {**counts, kind: counts[kind] - 1}})
            return True

    def drop_answer(self, endpoint: PaidEndpoint) -> bool:
        """Whether a paid call, already made, goes unanswered: a queued drop, or a roll's."""
        with self._changed:  # reentrant: take_fault takes it again
            if self.take_fault("accept_then_drop_response", endpoint):
                return True
            return self._dice.drop_response(self._config)

    def webhook_delays(self, config: SimulatorConfig) -> tuple[float, ...]:
        with self._changed:
            return self._dice.webhook_delays(config)

    def add_task(self, task: Task) -> object:
        """Register an accepted (so paid) task; returns the token that keeps it pending until it settles."""
        with self._changed:
            self._tasks[task.task_id] = task
            self._tasks_created[task.kind] += 1
            self._ledger.record(task.kind, task.task_id, task.prompt, task.webhook_url, task.still_media_id)
            if task.kind == "kling" and task.webhook_url:
                by_url = self._kling_tasks_by_webhook_url
                by_url[task.webhook_url] = by_url.get(task.webhook_url, 0) + 1
            return self._begin_work_locked()

    def add_seedream_image(self, image_id: str, prompt: str) -> None:
        with self._changed:
            self._seedream_images += 1
            self._ledger.record("seedream", image_id, prompt)

    def mark_answered(self, task_id: str) -> None:
        """The client was sent the answer to the paid call that made this task or Seedream image."""
        with self._changed:
            self._ledger.mark_answered(task_id)

    def refuse(self, endpoint: PaidEndpoint, error: NovitaError) -> None:
        with self._changed:
            self._ledger.refuse(endpoint, error)

    def ledger(self) -> dict[str, Any]:
        """Paid calls since the last reset, in order, and per endpoint the refusals by reason."""
        with self._changed:
            return self._ledger.snapshot()

    def task(self, task_id: str) -> Task | None:
        with self._changed:
            task = self._tasks.get(task_id)
            return dataclasses.replace(task) if task else None

    def mark_processing(self, task_id: str) -> bool:
        """False when the task is gone (a reset forgot it), so its worker should stop."""
        with self._changed:
            task = self._tasks.get(task_id)
            if task is None or task.status != QUEUED:
                return False
            task.status = PROCESSING
            task.processing_monotonic = time.monotonic()
            return True

    def finish_task(
        self, task_id: str, failure_reason: str | None, media: tuple[MediaAsset, ...]
    ) -> Task | None:
        with self._changed:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            task.status, task.reason = (FAILED, failure_reason) if failure_reason else (SUCCEED, "")
            task.media = () if failure_reason else media
            task.finished_at = time.time()
            return dataclasses.replace(task)

    def begin_work(self) -> object:
        with self._changed:
            return self._begin_work_locked()

    def _begin_work_locked(self) -> object:
        token = object()
        self._pending.add(token)
        return token

    def end_work(self, token: object) -> None:
        with self._changed:
            self._pending.discard(token)
            self._changed.notify_all()

    def is_live(self, token: object) -> bool:
        with self._changed:
            return token in self._pending

    def record_attempt(self, token: object, attempt: DeliveryAttempt) -> None:
        with self._changed:
            if token in self._pending:
                self._webhook_attempts += 1
                self._deliveries.append(attempt)

    def issue_link(self, asset: MediaAsset, ttl_seconds: int) -> str:
        token = secrets.token_urlsafe(18)
        with self._changed:
            self._links[token] = MediaLink(asset, time.monotonic() + ttl_seconds)
        return f"{token}.{asset.extension}"

    def find_media(self, name: str) -> MediaLink | None:
        """The link a media name (`<token>.<extension>`, as issue_link made it) stands for, expired or not."""
        token, _, extension = name.rpartition(".")
        with self._changed:
            link = self._links.get(token)
        return link if link is not None and link.asset.extension == extension else None

    def wait_idle(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending, timeout)

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset.

        `requests`: API calls per endpoint (refused ones too) and media downloads. `tasks_created`:
        async tasks accepted, per kind. `seedream_images`: images the synchronous Seedream endpoint
        made; each is paid, but none is a task (task-result does not know them).
        """
        with self._changed:
            return {
                "requests": dict(self._requests),
                "tasks_created": dict(self._tasks_created),
                "seedream_images": self._seedream_images,
                "kling_tasks_by_webhook_url": dict(self._kling_tasks_by_webhook_url),
                "webhook_attempts": self._webhook_attempts,
                "webhook_deliveries": [dataclasses.asdict(attempt) for attempt in self._deliveries],
                "pending": len(self._pending),
                "config": self._config.model_dump(),
            }

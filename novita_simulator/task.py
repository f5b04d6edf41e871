"""A simulated async task and the status vocabulary Novita uses for it."""

import math
import time
from dataclasses import dataclass, field
from typing import Final

from novita_simulator.config import SimulatorConfig, TaskKind
from novita_simulator.media import MediaAsset

QUEUED: Final = "TASK_STATUS_QUEUED"
PROCESSING: Final = "TASK_STATUS_PROCESSING"
SUCCEED: Final = "TASK_STATUS_SUCCEED"
FAILED: Final = "TASK_STATUS_FAILED"

TASK_TYPES: dict[TaskKind, str] = {"txt2img": "TXT_TO_IMG", "kling": "KLING_V2.1_I2V_MASTER"}


@dataclass
class Task:
    task_id: str
    kind: TaskKind
    # The settings in force when the task was accepted shape its outcome and its webhook.
    config: SimulatorConfig
    webhook_url: str | None
    delay: float
    # Decided at acceptance (an injected fault or test mode); None means the task succeeds.
    failure_reason: str | None
    prompt: str
    # How long each copy of the webhook waits before its first attempt; empty when none is sent.
    # Decided at acceptance too, so that a fault seed replays it (see chaos).
    webhook_delays: tuple[float, ...] = ()
    # Kling: the id the still to animate carries, when it came from the simulator
    still_media_id: str | None = None
    video_duration: float = 5.0
    created_at: float = field(default_factory=time.time)
    accepted_monotonic: float = field(default_factory=time.monotonic)
    status: str = QUEUED
    processing_monotonic: float | None = None
    reason: str = ""
    finished_at: float | None = None
    media: tuple[MediaAsset, ...] = ()

    @property
    def task_type(self) -> str:
        return TASK_TYPES[self.kind]

    @property
    def due_monotonic(self) -> float:
        return self.accepted_monotonic + self.delay

    def progress_percent(self) -> int:
        """0 while queued, then the share of the processing time gone by (at most 99), 100 once finished."""
        if self.status in (SUCCEED, FAILED):
            return 100
        if self.processing_monotonic is None:
            return 0
        processing_time = self.due_monotonic - self.processing_monotonic
        if processing_time <= 0:
            return 0
        return min(99, int(100 * (time.monotonic() - self.processing_monotonic) / processing_time))

    def eta_seconds(self) -> int:
        """Whole seconds until the task is due; rounded up, so an unfinished task says 0 only when overdue."""
        if self.status in (SUCCEED, FAILED):
            return 0
        return max(0, math.ceil(self.due_monotonic - time.monotonic()))

"""Runtime settings of the simulator, including the faults it injects."""

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

TaskKind = Literal["txt2img", "kling"]
Endpoint = Literal["txt2img", "kling", "task_result"]
ErrorStatus = Annotated[int, Field(ge=400, le=599)]


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_delay: NonNegativeFloat = 0.5
    video_delay: NonNegativeFloat = 1.0
    layout: Literal["extra", "top"] = "extra"
    ttl_as_string: bool = False
    media_ttl: NonNegativeInt = 3600
    fail_tasks: dict[TaskKind, NonNegativeInt] = Field(default_factory=dict)
    http_errors: dict[Endpoint, list[ErrorStatus]] = Field(default_factory=dict)
    deliveries: PositiveInt = 1
    concurrent_deliveries: bool = False
    drop_webhooks: bool = False
    image_mode: Literal["normal", "small", "large", "not_image", "png"] = "normal"
    kling_accept_delay: NonNegativeFloat = 0.0
    webhook_timeout: PositiveFloat = 5.0
    webhook_attempts: PositiveInt = 5
    webhook_retry_backoff: NonNegativeFloat = 0.2
    accept_then_drop_response: dict[TaskKind, NonNegativeInt] = Field(default_factory=dict)

    def with_changes(self, changes: Mapping[str, object]) -> "SimulatorConfig":
        """Validate the changed settings as a whole; raises ValueError on unknown or bad fields."""
        return SimulatorConfig.model_validate({**self.model_dump(), **changes})

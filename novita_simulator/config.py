"""Runtime settings of the simulator: its personality, its timings and the faults it injects.

The personality decides which of Novita's two descriptions the API follows:

- `guide` (the integration guide): `/v3/async/txt2img` takes any model name, Seedream included;
  Kling takes `multipart/form-data` with the still as the file field `image` and the webhook in
  the `extra` JSON string; results sit where `layout` says, TTLs are numbers unless
  `ttl_as_string`; a spent balance is 403 `NOT_ENOUGH_BALANCE`.
- `reference` (Novita's public API reference): `/v3/async/txt2img` takes Stable Diffusion
  checkpoints only, with prompts of at most 1024 characters; Kling takes JSON with `image` as a URL
  or data URI and calls no webhook; results sit at the top of the payload (the task-result
  schema) with TTLs as strings; a spent balance is 400 `BILLING_BALANCE_NOT_ENOUGH`.

The synchronous Seedream 3.0 endpoint, `POST /v3/seedream-3-0-txt2img`, answers in both.

Besides the switches that inject one fault at a time, a chaos run can turn on probabilistic faults
(the `*_probability` fields): each is decided per event by one generator seeded by `fault_seed` (see
chaos), so a seed replays the same decisions for the same sequence of requests.
"""

from collections.abc import Mapping
from typing import Annotated, Literal, TypeGuard, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)

Personality = Literal["guide", "reference"]
Layout = Literal["extra", "top"]
TaskKind = Literal["txt2img", "kling"]
# The requests Novita bills: each makes media, so a spent balance refuses them.
PaidEndpoint = Literal["txt2img", "seedream", "kling"]
PAID_ENDPOINTS: tuple[PaidEndpoint, ...] = get_args(PaidEndpoint)
Endpoint = Literal["txt2img", "seedream", "kling", "task_result"]
ErrorStatus = Annotated[int, Field(ge=400, le=599)]
Probability = Annotated[float, Field(ge=0, le=1)]


def is_paid(endpoint: Endpoint) -> TypeGuard[PaidEndpoint]:
    return endpoint in PAID_ENDPOINTS


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    personality: Personality = "guide"
    image_delay: NonNegativeFloat = 0.5
    video_delay: NonNegativeFloat = 1.0
    # Seedream 3.0 answers with the image itself, so the caller waits this long.
    seedream_delay: NonNegativeFloat = 1.0
    task_result_delay: NonNegativeFloat = 0.0
    layout: Layout = "extra"
    ttl_as_string: bool = False
    media_ttl: NonNegativeInt = 3600
    fail_tasks: dict[TaskKind, NonNegativeInt] = Field(default_factory=dict)
    http_errors: dict[Endpoint, list[ErrorStatus]] = Field(default_factory=dict)
    balance_exhausted: bool = False
    deliveries: PositiveInt = 1
    concurrent_deliveries: bool = False
    drop_webhooks: bool = False
    image_mode: Literal["normal", "small", "large", "not_image", "png"] = "normal"
    kling_accept_delay: NonNegativeFloat = 0.0
    webhook_timeout: PositiveFloat = 5.0
    webhook_attempts: PositiveInt = 5
    webhook_retry_backoff: NonNegativeFloat = 0.2
    accept_then_drop_response: dict[PaidEndpoint, NonNegativeInt] = Field(default_factory=dict)
    # A slow media host: every /media/ answer waits media_delay, then a body trickles out at this
    # rate (0: as fast as the socket takes it).
    media_delay: NonNegativeFloat = 0.0
    media_bytes_per_second: NonNegativeInt = 0
    # Late webhooks: each copy waits a random time up to this before its first attempt, so the
    # deliveries of different tasks arrive out of order.
    webhook_delay_max: NonNegativeFloat = 0.0
    # Setting it, even to the value it has, restarts the generator behind the faults below.
    fault_seed: int = 0
    drop_webhook_probability: Probability = 0.0
    # a duplicated webhook is sent once more than `deliveries` says
    duplicate_webhook_probability: Probability = 0.0
    drop_response_probability: Probability = 0.0
    http_error_probability: Probability = 0.0
    http_error_statuses: list[ErrorStatus] = Field(default_factory=lambda: [429, 500, 503], min_length=1)

    def with_changes(self, changes: Mapping[str, object]) -> "SimulatorConfig":
        """Validate the changed settings as a whole; raises ValueError on unknown or bad fields."""
        return SimulatorConfig.model_validate({**self.model_dump(), **changes})

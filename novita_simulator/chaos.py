"""The probabilistic faults of a chaos run, all decided by one generator seeded by `fault_seed`.

Every decision is drawn while the request it concerns is handled, in that request's thread, webhook
fates included (they are settled when the task is accepted, not when it finishes). So a client that
sends the same requests one after another meets the same faults again under the same seed.
"""

import random

from novita_simulator.config import SimulatorConfig


class FaultDice:
    """Not locked: SimulatorState rolls it under its own lock, which also orders the draws."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def http_error(self, config: SimulatorConfig) -> int | None:
        """The status an API call is answered with instead of being served, or None."""
        if self._random.random() >= config.http_error_probability:
            return None
        return self._random.choice(config.http_error_statuses)

    def drop_response(self, config: SimulatorConfig) -> bool:
        return self._random.random() < config.drop_response_probability

    def webhook_delays(self, config: SimulatorConfig) -> tuple[float, ...]:
        """How long each copy of a task's webhook waits before its first attempt; none when dropped."""
        if self._random.random() < config.drop_webhook_probability:
            return ()
        copies = config.deliveries + (self._random.random() < config.duplicate_webhook_probability)
        return tuple(self._random.uniform(0.0, config.webhook_delay_max) for _ in range(copies))

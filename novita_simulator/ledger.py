"""The ledger of paid calls: every request Novita bills that it carried out, and a count of those it refused.

A chaos run audits the client against it. Each entry says which sketch and stage asked (read from the
webhook URL), whether the answer reached the client (a dropped answer is paid all the same), and for
Kling, which task or Seedream image the animated still came from (the id the still carries).
"""

import dataclasses
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from novita_simulator.config import PAID_ENDPOINTS, PaidEndpoint
from novita_simulator.errors import InjectedError, NovitaError


@dataclass
class PaidCall:
    seq: int
    time: float
    endpoint: PaidEndpoint
    # the async task's id, or for Seedream the id its image carries
    task_id: str
    webhook_url: str | None
    sketch: str | None
    stage: str | None
    prompt: str
    # sent to the client: not dropped by a fault, nor too late for a client that had hung up
    answered: bool
    still_media_id: str | None


class Ledger:
    """Not locked: SimulatorState calls it under its own lock."""

    def __init__(self) -> None:
        self._paid: list[PaidCall] = []
        self._by_task_id: dict[str, PaidCall] = {}
        self._refused: dict[PaidEndpoint, dict[str, int]] = {endpoint: {} for endpoint in PAID_ENDPOINTS}

    def record(
        self,
        endpoint: PaidEndpoint,
        task_id: str,
        prompt: str,
        webhook_url: str | None = None,
        still_media_id: str | None = None,
    ) -> None:
        """A paid call made; it counts as answered once mark_answered says so, just before the answer goes."""
        query = parse_qs(urlsplit(webhook_url).query) if webhook_url else {}
        call = PaidCall(
            seq=len(self._paid) + 1,
            time=time.time(),
            endpoint=endpoint,
            task_id=task_id,
            webhook_url=webhook_url,
            sketch=query.get("sketch", [None])[0],
            stage=query.get("stage", [None])[0],
            prompt=prompt,
            answered=False,
            still_media_id=still_media_id,
        )
        self._paid.append(call)
        self._by_task_id[task_id] = call

    def mark_answered(self, task_id: str) -> None:
        call = self._by_task_id.get(task_id)
        if call is not None:  # None when a reset came between the call and its answer
            call.answered = True

    def refuse(self, endpoint: PaidEndpoint, error: NovitaError) -> None:
        # an injected error is named apart, so that it is not taken for the refusal it imitates
        reason = f"injected {error.status}" if isinstance(error, InjectedError) else error.reason
        counts = self._refused[endpoint]
        counts[reason] = counts.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "paid": [dataclasses.asdict(call) for call in self._paid],
            "refused": {endpoint: dict(counts) for endpoint, counts in self._refused.items()},
        }

"""What every step shares: the tools it works with, the faults that may pass, and how a result Novita
was paid for is written down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from shared.core.config import Settings
from shared.core.deadline import Deadline, DeadlinePassed
from shared.core.tokens import webhook_url
from shared.google.api import Unavailable
from shared.google.storage import Storage
from shared.media.policy import MediaUnavailable, Resolver
from shared.novita.client import NovitaClient, NovitaUnavailable
from shared.pipeline.queue import QueueUnavailable, StepQueue
from shared.pipeline.results import Outcome, Results, fail_changes
from shared.sketch.model import Sketch, Stage
from shared.sketch.store import SketchStore, StoreUnavailable
from shared.spending.breaker import BalanceBreaker, BalanceExhausted

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryLater(Exception):
    """A fault that may pass: the step is answered 5xx so that Pub/Sub delivers it again."""


# Faults that may pass, whichever layer raised them; each is answered as RetryLater is.
TRANSIENT = (
    RetryLater,
    StoreUnavailable,
    QueueUnavailable,
    DeadlinePassed,
    NovitaUnavailable,
    BalanceExhausted,
    MediaUnavailable,
    Unavailable,
)


@dataclass(frozen=True)
class Tools:
    """The instance's clients a step works with, built once (`shared/runtime.py`)."""

    settings: Settings
    store: SketchStore
    results: Results
    novita: NovitaClient
    queue: StepQueue
    breaker: BalanceBreaker
    media_http: httpx.Client
    storage: Storage | None
    resolve: Resolver

    def webhook_url(self, sketch_id: str, stage: Stage) -> str:
        """The URL Novita reports the sketch's `stage` task to."""
        secret = self.settings.webhook_secret.get_secret_value()
        return webhook_url(self.settings.webhook_url, secret, sketch_id, stage)


def record_paid(what: str, write: Callable[[], T], deadline: Deadline) -> T:
    """Write down a result Novita was paid for. While Firestore is away it is tried again, until the
    step's deadline: giving up would mean the result is lost, or paid for again."""
    attempt = 0
    while True:
        try:
            return write()
        except StoreUnavailable as exc:
            attempt += 1
            delay = min(2.0, 0.25 * 2**attempt)
            if deadline.remaining() <= delay:
                raise RetryLater(f"{what} could not be recorded: {exc}") from exc
            log.warning("%s not recorded yet, trying again: %s", what, exc)
            time.sleep(delay)


def fail_unless_final(store: SketchStore, sketch: Sketch, reason: str, what: str) -> Outcome:
    """Fail the sketch with `reason` unless it is final already; `what` is logged with it."""
    _, changed = store.mutate(
        sketch.id, lambda s: None if s.status.is_final else fail_changes(reason), known=sketch
    )
    if changed:
        log.warning("%s: %s", what, reason)
    return Outcome.APPLIED if changed else Outcome.DUPLICATE

"""What every step shares: the tools it works with, the faults that may pass, and how a result Novita
was paid for is written down."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

from shared.core.deadline import Deadline, DeadlinePassed
from shared.core.timings import PAID_RETRY_BACKOFF_BASE, PAID_RETRY_BACKOFF_MAX
from shared.core.tokens import webhook_url
from shared.google.api import Unavailable
from shared.media.policy import MediaUnavailable
from shared.novita.errors import NovitaUnavailable
from shared.pipeline.queue import QueueUnavailable
from shared.pipeline.results import Outcome, fail_changes
from shared.sketch.model import Sketch, Stage, utcnow
from shared.sketch.store import Changes, SketchStore, StoreUnavailable
from shared.spending.breaker import BalanceExhausted

if TYPE_CHECKING:  # the clients themselves are built once, by shared/runtime.py
    import httpx

    from shared.core.config import Settings
    from shared.google.storage import Storage
    from shared.media.policy import Resolver
    from shared.novita.client import NovitaClient
    from shared.pipeline.queue import StepQueue
    from shared.pipeline.results import Results
    from shared.spending.breaker import BalanceBreaker

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryLater(Exception):
    """A fault that may pass: the step is answered 5xx so that Pub/Sub delivers it again, and the
    sketch counts it among its step's failures."""


class Waiting(Exception):
    """The step cannot be done yet, though nothing failed (another holder works on the sketch, or no
    paid request may be sent before `until`): answered 5xx so that Pub/Sub brings it back, and not
    counted as a failure."""

    def __init__(self, until: datetime | None, message: str) -> None:
        super().__init__(message)
        self.until = until


class Busy(Waiting):
    """A live holder has the sketch's lease: the step comes back once that holder is done or dead."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


# Faults that may pass, whichever layer raised them; each is answered as RetryLater is.
TRANSIENT = (
    RetryLater,
    StoreUnavailable,
    QueueUnavailable,
    DeadlinePassed,
    NovitaUnavailable,
    MediaUnavailable,
    Unavailable,
)
# What makes a step wait without failing: answered 5xx, never counted against the sketch.
WAITS = (Waiting, BalanceExhausted)


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
        """The URL Novita reports the sketch's `stage` task to, issued now."""
        return webhook_url_for(self.settings, sketch_id, stage)


def webhook_url_for(settings: Settings, sketch_id: str, stage: Stage) -> str:
    """The URL Novita reports a sketch's `stage` task to: its token lives past the sketch's own end."""
    secret = settings.webhook_secret.get_secret_value()
    return webhook_url(settings.webhook_url, secret, sketch_id, stage, int(time.time()))


def after_novita_failed(sketch: Sketch) -> Changes:
    """No paid request for the sketch for a while after Novita failed one (429, 5xx, unreachable):
    Pub/Sub's redeliveries, the sweep and any replay of the step wait instead of asking again."""
    delay = min(PAID_RETRY_BACKOFF_MAX, PAID_RETRY_BACKOFF_BASE * 2**sketch.step_failures)
    return {"retry_not_before": utcnow() + timedelta(seconds=delay)}


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

"""Making a sketch: the guards on spending, the record, and the start of its still.

In order: the balance breaker (nothing written while it is open), an `Idempotency-Key` seen before
(its sketch again, nothing paid), the user's daily cap and in-progress places (`AUTH_MODE=firebase`),
then the sketch (and its key's record, in the same atomic commit), written before Novita is asked,
so that no paid task can point at a sketch that does not exist.

The still is made in the form Novita takes (`shared/novita/client.py`): the guide's async task,
started here; or, once Novita has refused that form, Seedream 3.0's synchronous endpoint, which
runs as a queued step and never inside this request's answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.core import logs
from shared.core.config import Settings
from shared.core.deadline import Deadline
from shared.core.tokens import webhook_url
from shared.google.api import AlreadyExists
from shared.novita.client import (
    NovitaClient,
    NovitaError,
    NovitaOutcomeUnknown,
    NovitaRejected,
    NovitaUnavailable,
)
from shared.pipeline.queue import QueueUnavailable, Step, StepQueue
from shared.pipeline.results import OUTCOME_KNOWN, Results, fail_changes
from shared.sketch.model import Sketch, Status, StepKind, new_sketch_id, utcnow
from shared.sketch.request import CreateSketchRequest
from shared.sketch.store import Changes, SketchStore
from shared.spending.breaker import BalanceBreaker
from shared.spending.daily import DailyCap
from shared.spending.idempotency import Answer, Claim, IdempotencyKeys, KeyInUse, Seen

log = logging.getLogger(__name__)

# The text-to-image request is answered within this, or the sketch is answered 202 with its
# outcome unknown (recovery resolves it).
START_SECONDS = 25.0


class TooManySketches(Exception):
    """The user already has as many sketches in progress as they may."""


class StartFailed(Exception):
    """Novita refused or could not be reached to start the sketch's still; the sketch is failed."""

    def __init__(self, sketch: Sketch, cause: NovitaError) -> None:
        super().__init__(cause.describe())
        self.sketch = sketch
        self.cause = cause


@dataclass(frozen=True)
class Created:
    sketch: Sketch
    answer: Answer
    replayed: bool = False


def answer_for(failure: StartFailed) -> Answer:
    cause = failure.cause
    if cause.is_balance:
        status, code = 503, "novita_balance"
    elif isinstance(cause, NovitaUnavailable):
        status, code = 503, "novita_unavailable"
    else:
        status, code = 502, "novita_rejected"
    return Answer(status, code, cause.describe(), cause.reason)


class Creator:
    def __init__(
        self,
        settings: Settings,
        store: SketchStore,
        results: Results,
        novita: NovitaClient,
        queue: StepQueue,
        breaker: BalanceBreaker,
        daily: DailyCap,
        keys: IdempotencyKeys,
    ) -> None:
        self._settings = settings
        self._store = store
        self._results = results
        self._novita = novita
        self._queue = queue
        self._breaker = breaker
        self._daily = daily
        self._keys = keys

    def create(
        self, request: CreateSketchRequest, body: dict[str, Any], user_id: str | None, key: str | None
    ) -> Created:
        """Make the sketch `request` asks for (or, for a key seen before, find the one it made).

        Raises BalanceExhausted, DailyLimitReached, TooManySketches, KeyInUse or KeyReused without
        writing anything; StartFailed, with the failed sketch, when Novita refuses or cannot be reached.
        """
        self._breaker.check()
        now = utcnow()
        claim: Claim | None = None
        if key is not None:
            looked = self._keys.look(self._keys.claim(user_id or "*", key, body), now)
            if isinstance(looked, Seen):
                return self._replay(looked)
            claim = looked
        form = self._novita.form("text_to_image")
        sketch = Sketch.new(
            new_sketch_id(),
            request,
            now,
            user_id,
            self._results.recovery_due(now, StepKind.SEEDREAM if form == "reference" else StepKind.CHECK),
            "task" if form == "guide" else "sync",
        )
        logs.bind_sketch(sketch.id)
        undo: list[Callable[[], None]] = []
        try:
            if user_id is not None:
                undo.append(self._daily.take(user_id, now))
                limit = self._settings.max_sketches_in_progress
                if not self._store.claim_slot(user_id, sketch.id, limit):
                    raise TooManySketches(f"at most {limit} sketches may be in progress at once")
                undo.append(lambda: self._store.release_slot(user_id, sketch.id, limit))
            also = [self._keys.write(claim, sketch.id, now)] if claim is not None else []
            try:
                sketch = self._store.create(sketch, also=also)
            except AlreadyExists:
                assert claim is not None
                if self._keys.sketch_of(claim) != sketch.id:
                    raise
                stored = self._store.get(sketch.id)  # our own commit, its answer lost
                sketch = stored or sketch
        except AlreadyExists:
            # Another request took the key first.
            for give_back in reversed(undo):
                give_back()
            assert claim is not None
            looked = self._keys.look(claim, utcnow())
            if not isinstance(looked, Seen):
                raise KeyInUse from None  # its record went between the refusal and the look
            return self._replay(looked)
        except Exception:
            for give_back in reversed(undo):
                give_back()
            raise
        log.info("sketch created", extra={"status": sketch.status.value, "form": sketch.image_form})
        try:
            sketch = self._start(sketch)
        except StartFailed as failure:
            if claim is not None:
                self._keys.answered(claim, answer_for(failure))
            raise
        if claim is not None:
            self._keys.answered(claim, Answer(202))
        return Created(sketch, Answer(202))

    def _replay(self, seen: Seen) -> Created:
        """The answer a repeated key gets: its first answer, with its sketch as it is now."""
        sketch = self._store.get(seen.sketch_id)
        if sketch is None:
            raise KeyInUse  # the record is written with its sketch; one without is mid-commit
        logs.bind_sketch(seen.sketch_id)
        log.info("a repeated Idempotency-Key answered with its sketch")
        return Created(sketch, seen.answer, replayed=True)

    # ------------------------------------------------------------------------------ the still

    def _start(self, sketch: Sketch) -> Sketch:
        if sketch.image_form == "sync":
            return self._queue_seedream(sketch)
        try:
            task_id = self._novita.start_text_to_image(
                prompt=sketch.prompt,
                negative_prompt=sketch.negative_prompt,
                width=sketch.width,
                height=sketch.height,
                seed=sketch.seed,
                webhook_url=webhook_url(
                    self._settings.webhook_url,
                    self._settings.webhook_secret.get_secret_value(),
                    sketch.id,
                    "image",
                ),
                deadline=Deadline.after(START_SECONDS),
            )
        except NovitaRejected as exc:
            if exc.refuses_form:
                # Nothing was started: Seedream 3.0's own endpoint is the other form.
                log.warning("text to image refused in the guide's form: %s", exc.describe())
                self._novita.remember("text_to_image", "reference")
                return self._switch_to_seedream(sketch)
            if exc.is_balance:
                self._breaker.open(exc)
            raise StartFailed(self._fail_unanswered(sketch, exc), exc) from exc
        except NovitaUnavailable as exc:
            raise StartFailed(self._fail_unanswered(sketch, exc), exc) from exc
        except NovitaOutcomeUnknown as exc:
            log.warning("text-to-image outcome unknown: %s", exc.describe())
            return sketch
        self._breaker.succeeded()
        started = {"image_task_id": task_id, **OUTCOME_KNOWN}

        def record(s: Sketch) -> Changes | None:
            if s.image_task_id is not None or s.status is not Status.IMAGE_PENDING:
                return None  # an early result adopted the task id already
            return started

        self._store.mutate(sketch.id, record, known=sketch)
        log.info("text-to-image task started", extra={"task_id": task_id, "form": "guide"})
        # The sketch as it was when its task started, even if a quick result has moved it on since.
        return sketch.model_copy(update=started)

    def _switch_to_seedream(self, sketch: Sketch) -> Sketch:
        due = self._results.recovery_due(utcnow(), StepKind.SEEDREAM)

        def switch(s: Sketch) -> Changes | None:
            if s.image_task_id is not None:
                return None
            return {"image_form": "sync", **OUTCOME_KNOWN, "recovery_due_at": due}

        switched, _ = self._store.mutate(sketch.id, switch, known=sketch)
        return self._queue_seedream(switched or sketch)

    def _queue_seedream(self, sketch: Sketch) -> Sketch:
        try:
            self._queue.publish(Step(kind=StepKind.SEEDREAM, sketch_id=sketch.id))
        except QueueUnavailable as exc:
            # The sketch says what it waits on: the sweep hands the step on once it is due.
            log.warning("the Seedream step was not handed on yet: %s", exc)
        log.info("still queued for Seedream 3.0", extra={"form": "reference"})
        return sketch

    def _fail_unanswered(self, sketch: Sketch, exc: NovitaError) -> Sketch:
        reason = exc.describe()

        def fail(s: Sketch) -> Changes | None:
            unanswered = s.status is Status.IMAGE_PENDING and s.image_task_id is None
            return fail_changes(reason) if unanswered else None

        return self._store.mutate(sketch.id, fail, known=sketch)[0] or sketch

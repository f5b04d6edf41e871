"""Making a sketch: the guards on spending, the record, and the start of its still.

In order: the balance breaker (nothing written while it is open), an `Idempotency-Key` seen before
(its sketch again, nothing paid), then one atomic commit of the sketch with its key's record and its
daily counts (the caller's and the project's); a commit whose counts are past a cap is undone before
Novita is asked anything. The sketch is written before Novita is asked, so that no paid task can
point at a sketch that does not exist.

The still is made in the form Novita takes (`shared/novita/client.py`): the guide's async task,
started here under the sketch's lease, its sending recorded first (`shared/pipeline/paid.py`); or,
once Novita has refused that form, Seedream 3.0's synchronous endpoint, which runs as a queued step
and never inside this request's answer. A create that dies on the way is settled by recovery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from shared.core import logs
from shared.core.config import Settings
from shared.core.deadline import Deadline
from shared.core.timings import CREATE_LEASE, CREATE_START
from shared.edge.callers import Caller
from shared.google.api import AlreadyExists
from shared.google.firestore import Delete, Write
from shared.novita.client import NovitaClient
from shared.novita.errors import NovitaError, NovitaOutcomeUnknown, NovitaRejected, NovitaUnavailable
from shared.pipeline import paid
from shared.pipeline.lease import Lease, new_owner
from shared.pipeline.queue import QueueUnavailable, Step, StepQueue
from shared.pipeline.results import NO_LEASE, OUTCOME_KNOWN, Results, fail_changes
from shared.pipeline.work import webhook_url_for
from shared.sketch.model import Sketch, Status, StepKind, new_sketch_id, utcnow
from shared.sketch.request import CreateSketchRequest
from shared.sketch.store import Changes, SketchStore, StoreUnavailable
from shared.spending.breaker import BalanceBreaker, Probe
from shared.spending.daily import Count, DailyCaps, DailyLimitReached
from shared.spending.idempotency import (
    Answer,
    Claim,
    IdempotencyKeys,
    KeyInUse,
    Seen,
    Started,
    replay,
)

log = logging.getLogger(__name__)


class TooManySketches(Exception):
    """The user already has as many sketches in progress as they may."""


class StartFailed(Exception):
    """Novita refused or could not be reached to start the sketch's still; the sketch is failed."""

    def __init__(self, sketch: Sketch, cause: NovitaError) -> None:
        super().__init__(cause.describe())
        self.sketch = sketch
        self.cause = cause


def take_slot(store: SketchStore, user_id: str, sketch_id: str, limit: int) -> Callable[[], None]:
    """One of the user's `limit` places for a sketch in progress, or TooManySketches; its release."""
    if not store.claim_slot(user_id, sketch_id, limit):
        raise TooManySketches(f"at most {limit} sketches may be in progress at once")
    return lambda: store.release_slot(user_id, sketch_id, limit)


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
        caps: DailyCaps,
        keys: IdempotencyKeys,
    ) -> None:
        self._settings = settings
        self._store = store
        self._results = results
        self._novita = novita
        self._queue = queue
        self._breaker = breaker
        self._caps = caps
        self._keys = keys

    def create(
        self, request: CreateSketchRequest, body: dict[str, Any], caller: Caller, key: str | None
    ) -> Started:
        """Make the sketch `request` asks for (or, for a key seen before, find the one it made).

        Raises BalanceExhausted, DailyLimitReached, TooManySketches, KeyInUse or KeyReused without
        leaving anything written; StartFailed, with the failed sketch, when Novita refuses or cannot
        be reached.
        """
        form = self._novita.form("text_to_image")
        # Only a create that asks Novita itself takes the probe of a breaker that has run out.
        probe = self._breaker.check(probe=form == "guide")
        try:
            return self._create(request, body, caller, key, form == "guide", probe)
        finally:
            self._breaker.release(probe)

    def _create(
        self,
        request: CreateSketchRequest,
        body: dict[str, Any],
        caller: Caller,
        key: str | None,
        task_form: bool,
        probe: Probe | None,
    ) -> Started:
        now = utcnow()
        claim: Claim | None = None
        if key is not None:
            looked = self._keys.look(self._keys.claim(caller.user_id or "*", key, body), now)
            if isinstance(looked, Seen):
                return replay(self._store, looked)
            claim = looked
        counts = self._caps.counts(caller.user_id, caller.guest, now)
        owner = new_owner() if task_form else None
        sketch = Sketch.new(
            new_sketch_id(),
            request,
            now,
            caller.user_id,
            # A create that dies is settled by recovery once its lease has run out.
            now + timedelta(seconds=CREATE_LEASE)
            if task_form
            else self._results.recovery_due(now, StepKind.SEEDREAM),
            "task" if task_form else "sync",
            lease=(owner, now + timedelta(seconds=CREATE_LEASE)) if owner else None,
        )
        logs.bind_sketch(sketch.id)
        undo: list[Callable[[], None]] = []
        try:
            if caller.user_id is not None:
                limit = self._settings.max_sketches_in_progress
                undo.append(take_slot(self._store, caller.user_id, sketch.id, limit))
            also = [self._keys.write(claim, sketch.id, now) for claim in [claim] if claim is not None]
            sketch, sums = self._store.create(sketch, also=[*also, *(count.write() for count in counts)])
            self._judge(sketch, counts, sums, claim)
        except AlreadyExists:
            # Another request took the key first.
            for give_back in reversed(undo):
                give_back()
            assert claim is not None
            looked = self._keys.look(claim, utcnow())
            if not isinstance(looked, Seen):
                raise KeyInUse from None  # its record went between the refusal and the look
            return replay(self._store, looked)
        except Exception:
            for give_back in reversed(undo):
                give_back()
            raise
        log.info("sketch created", extra={"status": sketch.status.value, "form": sketch.image_form})
        try:
            sketch = self._start(sketch, owner, probe)
        except StartFailed as failure:
            if claim is not None:
                self._keys.answered(claim, answer_for(failure))
            raise
        if claim is not None:
            self._keys.answered(claim, Answer(202))
        return Started(sketch, Answer(202))

    def _judge(
        self, sketch: Sketch, counts: list[Count], sums: list[int] | None, claim: Claim | None
    ) -> None:
        """Undo the create, key and counts together, when a count is past its cap."""
        if sums is None:  # our own commit, its answer lost: the counts as they are now
            sums = [self._store.count(count.write()) for count in counts]
        try:
            self._caps.judge(counts, sums, utcnow())
        except DailyLimitReached:
            undo: list[Write | Delete] = [count.write(-1) for count in counts]
            if claim is not None:
                undo.append(self._keys.delete(claim))
            try:
                self._store.remove(sketch.id, also=undo)
            except StoreUnavailable as exc:
                # It was never sent: recovery fails it once its lease has run out.
                log.warning("a sketch past the daily cap could not be removed: %s", exc)
            raise

    # ------------------------------------------------------------------------------ the still

    def _start(self, sketch: Sketch, owner: str | None, probe: Probe | None) -> Sketch:
        if owner is None:
            return self._queue_seedream(sketch)
        lease = Lease(self._store, self._results, sketch, owner, CREATE_LEASE)
        sent = paid.send(lease, "image", webhook=True)
        error: NovitaError | None = None
        try:
            task_id = self._novita.start_text_to_image(
                prompt=sent.prompt,
                negative_prompt=sent.negative_prompt,
                width=sent.width,
                height=sent.height,
                seed=sent.seed,
                webhook_url=webhook_url_for(self._settings, sent.id, "image"),
                deadline=Deadline.after(CREATE_START),
            )
        except NovitaError as exc:
            error = exc
        self._breaker.settle(probe, error)
        if isinstance(error, NovitaRejected) and error.refuses_form:
            # Nothing was started: Seedream 3.0's own endpoint is the other form.
            log.warning("text to image refused in the guide's form: %s", error.describe())
            self._novita.remember("text_to_image", "reference")
            return self._switch_to_seedream(lease)
        if isinstance(error, NovitaOutcomeUnknown):
            log.warning("text-to-image answer lost; waiting for its webhook: %s", error.describe())
            grace = timedelta(seconds=self._settings.unknown_outcome_grace_seconds)
            lease.release(due=utcnow() + grace)
            return lease.sketch
        if error is not None:
            failed = lease.finish(fail_changes(error.describe()))
            raise StartFailed(failed or lease.sketch, error) from error
        started = {"image_task_id": task_id, **OUTCOME_KNOWN, **NO_LEASE}

        def record(s: Sketch) -> Changes | None:
            if s.image_task_id is not None or s.status is not Status.IMAGE_PENDING:
                return None  # an early result adopted the task id already
            return {**started, "recovery_due_at": self._results.recovery_due(utcnow(), StepKind.CHECK)}

        self._store.mutate(sent.id, record, known=lease.sketch)
        log.info("text-to-image task started", extra={"task_id": task_id, "form": "guide"})
        # The sketch as it was when its task started, even if a quick result has moved it on since.
        return sent.replace(**started)

    def _switch_to_seedream(self, lease: Lease) -> Sketch:
        due = self._results.recovery_due(utcnow(), StepKind.SEEDREAM)
        switched = lease.finish({"image_form": "sync", **OUTCOME_KNOWN, **NO_LEASE, "recovery_due_at": due})
        return self._queue_seedream(switched or lease.sketch)

    def _queue_seedream(self, sketch: Sketch) -> Sketch:
        try:
            self._queue.publish(Step(kind=StepKind.SEEDREAM, sketch_id=sketch.id))
        except QueueUnavailable as exc:
            # The sketch says what it waits on: the sweep hands the step on once it is due.
            log.warning("the Seedream step was not handed on yet: %s", exc)
        log.info("still queued for Seedream 3.0", extra={"form": "reference"})
        return sketch

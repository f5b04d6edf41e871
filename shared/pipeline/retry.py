"""Starting a failed sketch again from its kept still (`POST create_sketch?id=<id>&action=retry`).

A sketch that failed after its still was copied into the bucket (Kling refused the still or its task
failed, the copy or a step gave up) can be started again by its owner: one new Kling task on the same
still, and no text-to-image task paid again. A retry keeps the rules of a create, in the same order:

1. the balance breaker: nothing is written while it is open;
2. an `Idempotency-Key` seen before: its first answer again, with the sketch as it is now;
3. the sketch: the caller's own (else it is not found), and one that can be retried
   (`shared.sketch.model.retry_refusal` says why not);
4. one atomic commit of the sketch's move back to `image_complete`, its key's record and its daily
   counts, conditional on the document as it was read, so that of racing retries one moves it; a
   count past its cap undoes all three before Novita is asked anything;
5. the `chain` step, run within the request (`shared/pipeline/chain.py`): it takes the sketch's
   lease, fetches the still back from its kept copy (`Sketch.still_source`: Novita's own link has
   expired long since) and asks Kling through `start_kling`, which records the request before it
   is sent.

The caller gets `202` and the sketch in `video_pending` with its new `video_task_id`; or `202` and
the sketch still in `image_complete` when Novita could not take the request just now (429, 5xx, no
answer, the balance): the chain step is then handed on to the queue, which asks again with backoff
as for any sketch, so the retry is neither lost nor paid twice; or `502 novita_rejected` and the
sketch failed again when Kling refuses the still.

`failed` is final for everything else. The move out of it is written here and not through
`SketchStore.mutate`, because it commits with the key's record and the counts (mutate writes one
document); it keeps mutate's rule: read, decide, and write only if the document has not changed.
While the new Kling request's answer may still be unknown, the sketch would adopt a task named by a
delivery for its video stage, so deliveries of the old task are muted meanwhile (`hint_task_id`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.core import logs
from shared.core.deadline import Deadline
from shared.core.timings import CREATE_START
from shared.edge.callers import Caller
from shared.google.api import AlreadyExists, ApiError, PreconditionFailed, Unavailable
from shared.google.firestore import Delete, Document, Firestore, Write
from shared.pipeline import chain
from shared.pipeline.creation import take_slot
from shared.pipeline.queue import QueueUnavailable, Step
from shared.pipeline.results import NO_LEASE, OUTCOME_KNOWN, fail_changes, progress_at
from shared.pipeline.work import TRANSIENT, WAITS, Tools
from shared.sketch.model import RetryRefusal, Sketch, Status, StepKind, retry_refusal, utcnow
from shared.sketch.objects import video_name
from shared.sketch.store import MUTATE_ATTEMPTS, Changes, StoreUnavailable
from shared.spending.daily import Count, DailyCaps, DailyLimitReached
from shared.spending.idempotency import Answer, Claim, IdempotencyKeys, Seen, Started, replay

log = logging.getLogger(__name__)


class SketchNotFound(Exception):
    """No such sketch, or not the caller's."""


class NotRetryable(Exception):
    def __init__(self, reason: RetryRefusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Restarted:
    """The sketch as the retry's commit left it (its version that commit's update time), and the sums
    its counts came to (None when an attempt whose answer was lost committed it)."""

    sketch: Sketch
    sums: list[int] | None


class Retrier:
    def __init__(self, db: Firestore, tools: Tools, caps: DailyCaps, keys: IdempotencyKeys) -> None:
        self._db = db
        self._tools = tools
        self._caps = caps
        self._keys = keys
        self._collection = tools.settings.sketches_collection

    def retry(self, sketch_id: str, caller: Caller, key: str | None) -> Started:
        """Start the caller's failed sketch again from its kept still (or, for a key seen before,
        answer as the first request was answered).

        Raises BalanceExhausted, SketchNotFound, NotRetryable, DailyLimitReached, TooManySketches,
        KeyInUse or KeyReused without leaving anything written.
        """
        # A probe of a breaker that has run out is taken by the Kling request itself (start_kling).
        self._tools.breaker.check(probe=False)
        now = utcnow()
        claim: Claim | None = None
        if key is not None:
            # The body a key is held to: a retry of this sketch (a create's body never looks like it).
            body = {"action": "retry", "id": sketch_id}
            looked = self._keys.look(self._keys.claim(caller.user_id or "*", key, body), now)
            if isinstance(looked, Seen):
                return replay(self._tools.store, looked)
            claim = looked
        logs.bind_sketch(sketch_id)
        restarted = self._restart(sketch_id, caller, claim, now)
        if isinstance(restarted, Seen):
            return replay(self._tools.store, restarted)
        self._forget_old_video(sketch_id)
        try:
            chain.run(self._tools, restarted.sketch, Deadline.after(CREATE_START))
        except (*TRANSIENT, *WAITS) as exc:
            log.warning("the retry's Kling request did not go through now; the chain goes on: %s", exc)
            self._hand_on(sketch_id)
        sketch = self._tools.store.get(sketch_id)
        if sketch is None:
            raise SketchNotFound  # deleted meanwhile
        answer = Answer(202)
        if sketch.status is Status.FAILED:
            message = f"the retry failed: {sketch.error_message}"
            answer = Answer(502, "novita_rejected", message)
        if claim is not None:
            self._keys.answered(claim, answer)
        return Started(sketch, answer)

    def _restart(
        self, sketch_id: str, caller: Caller, claim: Claim | None, now: datetime
    ) -> _Restarted | Seen:
        """Move the sketch back to `image_complete`, in one commit with the key's record and the
        daily counts; undone, with DailyLimitReached, when a count is past its cap. Seen when
        another request with the same key got there first."""
        counts = self._caps.counts(caller.user_id, caller.guest, now)
        release_slot: Callable[[], None] | None = None
        sketch: Sketch | None = None
        try:
            for attempt in range(MUTATE_ATTEMPTS):
                document = self._read(sketch_id)
                if document is None:
                    raise SketchNotFound
                sketch = Sketch.from_document(document.data, document.update_time)
                if not _owns(caller, sketch):
                    raise SketchNotFound
                if sketch.retried_at == now:  # our own commit, its answer lost on the way
                    return self._judged(_Restarted(sketch, None), counts, claim, None)
                if attempt and claim is not None:
                    # The commit was refused: maybe because another request took the key first.
                    looked = self._keys.look(claim, utcnow())
                    if isinstance(looked, Seen):
                        return looked
                    claim = looked
                refusal = retry_refusal(sketch)
                if refusal is not None:
                    raise NotRetryable(*refusal)
                if release_slot is None and caller.user_id is not None:
                    limit = self._tools.settings.max_sketches_in_progress
                    release_slot = take_slot(self._tools.store, caller.user_id, sketch_id, limit)
                changes = self._changes(sketch, now)
                also: list[Write] = [count.write() for count in counts]
                if claim is not None:
                    also.append(self._keys.write(claim, sketch_id, now))
                move = Write(self._collection, sketch_id, changes, document.update_time)
                try:
                    results = self._commit([move, *also])
                except (AlreadyExists, PreconditionFailed):
                    continue  # the sketch or the key changed under us: look again
                log.info(
                    "sketch retried from its kept still",
                    extra={"previous_error": sketch.error_message, "previous_task_id": sketch.video_task_id},
                )
                sums = [int(result[1][0]) for result in results[1 : 1 + len(counts)]]
                restarted = _Restarted(sketch.replace(**changes, version=results[0][0]), sums)
                return self._judged(restarted, counts, claim, sketch)
            raise StoreUnavailable(f"sketch {sketch_id} kept changing under {MUTATE_ATTEMPTS} attempts")
        except Exception:
            # A place in progress is the sketch's, whoever took it: kept while another retry runs it.
            if release_slot is not None and (sketch is None or sketch.status.is_final):
                release_slot()
            raise

    def _judged(
        self, restarted: _Restarted, counts: list[Count], claim: Claim | None, before: Sketch | None
    ) -> _Restarted:
        """The restart, if its counts keep their caps; else it is undone with its key and counts,
        the sketch failed as `before` it (DailyLimitReached)."""
        sums = restarted.sums
        if sums is None:  # our own commit, its answer lost: the counts as they are now
            sums = [self._tools.store.count(count.write()) for count in counts]
        try:
            self._caps.judge(counts, sums, utcnow())
        except DailyLimitReached as exc:
            now = utcnow()
            if before is not None:
                back = {name: getattr(before, name) for name in self._changes(before, now)}
            else:  # what it was is not known here: failed, saying why it stays so
                back = fail_changes(f"not retried: {exc}")
            undo: list[Write | Delete] = [
                Write(
                    self._collection,
                    restarted.sketch.id,
                    {**back, "updated_at": now},
                    restarted.sketch.version,
                ),
                *(count.write(-1) for count in counts),
            ]
            if claim is not None:
                undo.append(self._keys.delete(claim))
            try:
                self._commit(undo)
            except (ApiError, StoreUnavailable) as err:
                # Nothing else writes to it meanwhile; if this did not land, recovery chains it.
                log.error("a retry past the daily cap could not be undone: %s", err)
            raise
        return restarted

    def _changes(self, sketch: Sketch, now: datetime) -> Changes:
        """The failed sketch's move back to `image_complete`, to be chained from its kept still."""
        changes: Changes = {
            "status": Status.IMAGE_COMPLETE,
            "video_task_id": None,
            "novita_video_url": None,
            "novita_video_url_expires_at": None,
            # Never down: the bar stays where the failed attempt left it until the new one passes it.
            "progress": max(sketch.progress, progress_at("chain")),
            "eta_seconds": None,
            "error_message": None,
            **NO_LEASE,
            **OUTCOME_KNOWN,
            "retry_not_before": None,
            "failed_step": None,
            "step_failures": 0,
            "last_step_error": None,
            "retried_at": now,
            "updated_at": now,
            "recovery_due_at": self._tools.results.recovery_due(now, StepKind.CHAIN),
        }
        if sketch.video_task_id is not None:
            # Until the new request's answer is recorded (or its webhook's grace is over), a
            # delivery for the old task could be adopted as the new one's: its copies hand nothing on.
            grace = CREATE_START + self._tools.settings.unknown_outcome_grace_seconds
            changes |= {
                "hint_task_id": sketch.video_task_id,
                "hint_stage": None,
                "hint_until": now + timedelta(seconds=grace),
            }
        return changes

    def _forget_old_video(self, sketch_id: str) -> None:
        """Remove a video copy of the failed attempt that was stored but never recorded (its copy
        was cut short): the new copy would take it for its own."""
        storage, bucket = self._tools.storage, self._tools.settings.media_bucket
        if storage is None or bucket is None:
            return
        try:
            storage.delete(bucket, video_name(sketch_id))
        except ApiError as exc:
            log.warning("a video copy of the failed attempt may be left: %s", exc)

    def _hand_on(self, sketch_id: str) -> None:
        try:
            self._tools.queue.publish(Step(kind=StepKind.CHAIN, sketch_id=sketch_id))
        except QueueUnavailable as exc:
            # The sketch says what it waits on: recovery hands the step on once it is due.
            log.warning("the chain step was not handed on yet: %s", exc)

    def _read(self, sketch_id: str) -> Document | None:
        try:
            return self._db.get(self._collection, sketch_id)
        except Unavailable as exc:
            raise StoreUnavailable(f"Firestore did not read sketch {sketch_id}: {exc}") from exc

    def _commit(self, writes: Sequence[Write | Delete]) -> list[tuple[str, list[object]]]:
        try:
            return self._db.commit(writes)
        except Unavailable as exc:
            raise StoreUnavailable(f"Firestore did not take the retry: {exc}") from exc


def _owns(caller: Caller, sketch: Sketch) -> bool:
    """Whether the caller may retry the sketch: its creator (anyone with AUTH_MODE=none)."""
    return caller.user_id is None or sketch.user_id == caller.user_id

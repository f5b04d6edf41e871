"""Sketches in Firestore.

Every change to a sketch goes through `SketchStore.mutate`: read the document, let a pure function
decide the change from what is there now, and write it only if the document has not changed since
it was read (a precondition on its update time). A lost race re-reads and decides again, so a
change happens once however many requests race for it, and the race is settled by the first write
instead of by transaction lock contention.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import firestore

from shared.sketch import Sketch, can_move, utcnow

log = logging.getLogger(__name__)

# A Firestore call gives up after about 4.5 s (2 s per attempt, retried within 2.5 s), so a store
# that does not answer makes a delivery answer 503 inside Novita's 5 s webhook timeout.
CALL_TIMEOUT = 2.0
RETRY = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=2.5)
MUTATE_ATTEMPTS = 8
SLOT_GRACE = timedelta(seconds=60)

Changes = dict[str, Any]
Decide = Callable[[Sketch], Changes | None]

_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.RetryError,
    gexc.TooManyRequests,
    gexc.Unknown,
)


class StoreUnavailable(Exception):
    """Firestore could not be reached or did not answer in time; trying later may succeed."""


@contextmanager
def _firestore(what: str) -> Iterator[None]:
    """Turn a fault that may pass into StoreUnavailable, saying what could not be done."""
    try:
        yield
    except _TRANSIENT as exc:
        raise StoreUnavailable(f"Firestore did not {what}: {exc}") from exc


def _encode(changes: Changes) -> Changes:
    return {k: v.value if isinstance(v, Enum) else v for k, v in changes.items()}


def _versioned(sketch: Sketch, update_time: datetime) -> Sketch:
    sketch._version = update_time
    return sketch


class SketchStore:
    def __init__(self, client: firestore.Client, collection: str) -> None:
        self._client = client
        self._collection = client.collection(collection)
        # One document per place a user may have in progress (see claim_slot).
        self._slots = client.collection(f"{collection}_slots")

    def create(self, sketch: Sketch) -> Sketch:
        """Store a new sketch; returns it as stored."""
        with _firestore("store the sketch"):
            try:
                result = self._collection.document(sketch.id).create(
                    _encode(sketch.to_document()), retry=RETRY, timeout=CALL_TIMEOUT
                )
            except gexc.AlreadyExists:
                # Ids are random: this is our own create, committed by an attempt whose answer was lost.
                return sketch
        return _versioned(sketch.model_copy(), result.update_time)

    def get(self, sketch_id: str) -> Sketch | None:
        with _firestore(f"read sketch {sketch_id}"):
            snapshot = self._collection.document(sketch_id).get(retry=RETRY, timeout=CALL_TIMEOUT)
        if not snapshot.exists:
            return None
        return _versioned(Sketch.model_validate(snapshot.to_dict()), snapshot.update_time)

    def mutate(
        self, sketch_id: str, decide: Decide, known: Sketch | None = None
    ) -> tuple[Sketch | None, bool]:
        """Apply `decide`'s change atomically; return the sketch as it now is and whether it changed.

        `decide` returns None to leave the sketch as it is. It may run more than once (after a lost
        race), so it must be free of side effects. `known`, a copy this request has just read or
        written, saves the first read; if the document has changed since, the write is refused
        and the sketch is read again.
        """
        sketch = known if known is not None and known._version is not None else self.get(sketch_id)
        for _ in range(MUTATE_ATTEMPTS):
            if sketch is None:
                return None, False
            changes = decide(sketch)
            if changes is None:
                return sketch, False
            new_status = changes.get("status", sketch.status)
            if new_status != sketch.status and not can_move(sketch.status, new_status):
                raise ValueError(f"sketch {sketch_id} cannot move from {sketch.status} to {new_status}")
            changes = {**changes, "updated_at": utcnow()}
            ref = self._collection.document(sketch_id)
            with _firestore(f"update sketch {sketch_id}"):
                written = self._write_if_unchanged(ref, _encode(changes), sketch._version)
            if written is None:
                sketch = self.get(sketch_id)  # somebody else changed it first: decide again on that
                continue
            if new_status != sketch.status:
                log.info("sketch status changed", extra={"sketch_id": sketch_id, "status": str(new_status)})
            return _versioned(sketch.model_copy(update=changes), written), True
        raise StoreUnavailable(f"sketch {sketch_id} kept changing under {MUTATE_ATTEMPTS} attempts")

    def due_for_recovery(self, now: datetime, limit: int) -> list[Sketch]:
        """Pending sketches whose next task-result check is due, oldest first."""
        query = (
            self._collection.where(filter=firestore.FieldFilter("recovery_due_at", "<=", now))
            .order_by("recovery_due_at")
            .limit(limit)
        )
        with _firestore("list pending sketches"):
            return [
                _versioned(Sketch.model_validate(s.to_dict()), s.update_time)
                for s in query.stream(retry=RETRY, timeout=CALL_TIMEOUT)
            ]

    def claim_slot(self, user_id: str, sketch_id: str, slots: int) -> bool:
        """Reserve one of the user's `slots` places for a sketch in progress; False if all are taken.

        A place is a document of its own. It is free when it does not exist yet, or when the sketch
        it holds is final (or was never written, and the place is older than SLOT_GRACE). It is
        taken with create(), or with an update conditional on the version that was read, so two
        concurrent requests can never take the same place.
        """
        owner = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        taken = {"user_id": user_id, "sketch_id": sketch_id, "taken_at": utcnow()}
        with _firestore("reserve a place"):
            for index in range(slots):
                place = self._slots.document(f"{owner}-{index}")
                try:
                    place.create(taken, retry=RETRY, timeout=CALL_TIMEOUT)
                    return True
                except gexc.AlreadyExists:
                    pass
                snapshot = place.get(retry=RETRY, timeout=CALL_TIMEOUT)
                if not snapshot.exists or not self._slot_is_free(snapshot.to_dict()):
                    continue
                if self._write_if_unchanged(place, taken, snapshot.update_time) is not None:
                    return True
        return False

    def _write_if_unchanged(
        self, ref: firestore.DocumentReference, data: dict[str, Any], update_time: datetime | None
    ) -> datetime | None:
        """Update `ref` only if it is still at `update_time`; the new update time, None if not."""
        try:
            result = ref.update(
                data,
                option=self._client.write_option(last_update_time=update_time),
                retry=RETRY,
                timeout=CALL_TIMEOUT,
            )
        except gexc.FailedPrecondition:
            return None
        return result.update_time

    def _slot_is_free(self, place: dict[str, Any]) -> bool:
        holder = self.get(str(place.get("sketch_id")))
        if holder is not None:
            return holder.status.is_final
        # The sketch of a place taken a moment ago may still be on its way to Firestore.
        return place.get("taken_at") is None or place["taken_at"] + SLOT_GRACE <= utcnow()

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from shared.google.api import AlreadyExists, PreconditionFailed, Unavailable
from shared.google.firestore import NAME_FIELD, Delete, Document, Firestore, Write
from shared.sketch.model import Sketch, can_move, utcnow

log = logging.getLogger(__name__)

MUTATE_ATTEMPTS = 8
SLOT_GRACE = timedelta(seconds=60)

Changes = dict[str, Any]
Decide = Callable[[Sketch], Changes | None]


class StoreUnavailable(Exception):
    """Firestore could not be reached or did not answer in time; trying later may succeed."""


@contextmanager
def _firestore(what: str) -> Iterator[None]:
    """Turn a fault that may pass into StoreUnavailable, saying what could not be done."""
    try:
        yield
    except Unavailable as exc:
        raise StoreUnavailable(f"Firestore did not {what}: {exc}") from exc


def _holds(place: Document | None, sketch_id: str) -> bool:
    return place is not None and place.data.get("sketch_id") == sketch_id


def _sketch(document: Document) -> Sketch:
    return Sketch.from_document(document.data, document.update_time)


class SketchStore:
    def __init__(self, db: Firestore, collection: str) -> None:
        self._db = db
        self._collection = collection
        # One document per place a user may have in progress (see claim_slot).
        self._slots = f"{collection}_slots"

    def create(self, sketch: Sketch, *, also: Sequence[Write] = ()) -> tuple[Sketch, list[int] | None]:
        """Store a new sketch, and `also` in the same atomic commit; the sketch as stored, and the
        sums `also`'s increments came to (None when an attempt whose answer was lost committed it).

        AlreadyExists when a document of `also` is taken (nothing was written).
        """
        with _firestore("store the sketch"):
            try:
                results = self._db.commit(
                    [Write(self._collection, sketch.id, sketch.to_document(), "absent"), *also]
                )
            except (AlreadyExists, PreconditionFailed) as exc:
                # Ids are random: a sketch already there is our own create, committed by an attempt
                # whose answer was lost.
                stored = self.get(sketch.id)
                if stored is None:
                    raise AlreadyExists(exc.status, "a document of the commit is taken") from exc
                return stored, None
        sums = [
            int(result[1][0]) for result, write in zip(results[1:], also, strict=True) if write.increments
        ]
        return sketch.replace(version=results[0][0]), sums

    def remove(self, sketch_id: str, *, also: Sequence[Write | Delete] = ()) -> None:
        """Delete the sketch's document, and apply `also` in the same atomic commit."""
        with _firestore(f"delete sketch {sketch_id}"):
            self._db.commit([Delete(self._collection, sketch_id), *also])
        log.info("sketch deleted", extra={"sketch_id": sketch_id})

    def count(self, write: Write) -> int:
        """The current value of the counter an increment `write` adds to (0 when there is none)."""
        with _firestore("read a count"):
            document = self._db.get(write.collection, write.doc_id)
        return 0 if document is None else int(document.data.get("count", 0))

    def get(self, sketch_id: str) -> Sketch | None:
        with _firestore(f"read sketch {sketch_id}"):
            document = self._db.get(self._collection, sketch_id)
        return None if document is None else _sketch(document)

    def mutate(
        self, sketch_id: str, decide: Decide, known: Sketch | None = None
    ) -> tuple[Sketch | None, bool]:
        """Apply `decide`'s change atomically; return the sketch as it now is and whether it changed.

        `decide` returns None to leave the sketch as it is. It may run more than once (after a lost
        race), so it must be free of side effects. `known`, a copy this request has just read or
        written, saves the first read; if the document has changed since, the write is refused
        and the sketch is read again.
        """
        sketch = known if known is not None and known.version is not None else self.get(sketch_id)
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
            with _firestore(f"update sketch {sketch_id}"):
                written = self._write_if_unchanged(self._collection, sketch_id, changes, sketch.version)
            if written is None:
                sketch = self.get(sketch_id)  # somebody else changed it first: decide again on that
                continue
            if new_status != sketch.status:
                log.info("sketch status changed", extra={"sketch_id": sketch_id, "status": str(new_status)})
            return sketch.replace(**changes, version=written), True
        raise StoreUnavailable(f"sketch {sketch_id} kept changing under {MUTATE_ATTEMPTS} attempts")

    def due_for_recovery(self, now: datetime, limit: int, after: Sketch | None = None) -> list[Sketch]:
        """Unfinished sketches whose next look is due, oldest due first, after `after` (a cursor)."""
        cursor = None if after is None else [after.recovery_due_at, after.id]
        with _firestore("list the sketches due for recovery"):
            documents = self._db.query(
                self._collection,
                where=[("recovery_due_at", "LESS_THAN_OR_EQUAL", now)],
                order_by=[("recovery_due_at", "ASCENDING"), (NAME_FIELD, "ASCENDING")],
                start_after=cursor,
                limit=limit,
            )
        return [_sketch(document) for document in documents]

    def newest(self, user_id: str | None, limit: int, after: tuple[datetime, str] | None) -> list[Sketch]:
        """The user's sketches (everyone's for None), newest first, after the position `after`."""
        where = [("user_id", "EQUAL", user_id)] if user_id is not None else []
        with _firestore("list sketches"):
            documents = self._db.query(
                self._collection,
                where=where,
                order_by=[("created_at", "DESCENDING"), (NAME_FIELD, "DESCENDING")],
                start_after=None if after is None else list(after),
                limit=limit,
            )
        return [_sketch(document) for document in documents]

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
                place = f"{owner}-{index}"
                try:
                    self._db.create(self._slots, place, taken)
                    return True
                except AlreadyExists:
                    pass
                document = self._db.get(self._slots, place)
                if (
                    document is not None
                    and not _holds(document, sketch_id)
                    and self._slot_is_free(document.data)
                ):
                    if self._write_if_unchanged(self._slots, place, taken, document.update_time) is not None:
                        return True
                    document = self._db.get(self._slots, place)
                # A create or update of ours may have landed with its answer lost, its retry refused.
                if _holds(document, sketch_id):
                    return True
        return False

    def release_slot(self, user_id: str, sketch_id: str, slots: int) -> None:
        """Free the place taken for a sketch that was not made after all (its request lost a race)."""
        owner = hashlib.sha256(user_id.encode()).hexdigest()[:32]
        with _firestore("free a place"):
            for index in range(slots):
                document = self._db.get(self._slots, f"{owner}-{index}")
                if _holds(document, sketch_id):
                    assert document is not None
                    self._write_if_unchanged(
                        self._slots, document.id, {"sketch_id": None}, document.update_time
                    )
                    return

    def _write_if_unchanged(
        self, collection: str, doc_id: str, data: dict[str, Any], update_time: str | None
    ) -> str | None:
        """Update a document only if it is still at `update_time`; its new update time, None if not."""
        if update_time is None:
            return None
        try:
            return self._db.update(collection, doc_id, data, if_update_time=update_time)
        except PreconditionFailed:
            return None

    def _slot_is_free(self, place: dict[str, Any]) -> bool:
        if place.get("sketch_id") is None:
            return True  # given back
        holder = self.get(str(place["sketch_id"]))
        if holder is not None:
            return holder.status.is_final
        # The sketch of a place taken a moment ago may still be on its way to Firestore.
        return place.get("taken_at") is None or place["taken_at"] + SLOT_GRACE <= utcnow()

"""`Idempotency-Key` for `POST create_sketch` (the IETF httpapi draft "The Idempotency-Key HTTP
Header Field", and Stripe's behaviour).

A key is scoped to its caller (the Firebase uid; the whole service with `AUTH_MODE=none`) and kept
for at least 24 hours (Firestore's TTL policy on `expires_at` removes it after that). Its record is
written in the same atomic commit as the sketch it made, so two requests can never both believe
they are first: the second commit is refused, and that request reads the record instead:

- the same body, answered already: the same answer again, for the same sketch (`Idempotent-Replayed`);
- the same body, still being handled: 409, try again in a moment;
- another body: 422, a key is for one request only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.core import logs
from shared.core.timings import CREATE_LEASE
from shared.google.api import PreconditionFailed, Unavailable
from shared.google.firestore import Delete, Document, Firestore, Write
from shared.sketch.model import Sketch
from shared.sketch.store import SketchStore, StoreUnavailable

KEEP = timedelta(hours=25)
# How long a first request may be still at work (its create's lease); after that a repeat is
# answered with the sketch it made, whatever became of that request.
IN_FLIGHT = timedelta(seconds=CREATE_LEASE)
MAX_KEY_LENGTH = 255

log = logging.getLogger(__name__)


class KeyReused(Exception):
    """The key was used before for another request."""


class KeyInUse(Exception):
    """The request that first used the key is still being handled."""


class SketchGone(Exception):
    """The key made a sketch that has been deleted since: its first answer cannot be given again."""


@dataclass(frozen=True)
class Answer:
    """What `create_sketch` answered the first request: replayed for every repeat."""

    status: int
    code: str | None = None
    message: str | None = None
    reason: str | None = None

    def to_data(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "message": self.message, "reason": self.reason}


@dataclass(frozen=True)
class Claim:
    """A key as this request holds it: where its record is, what the body looked like, and what
    the record's create must find ("absent", or the update time of an expired record it replaces)."""

    record_id: str
    scope: str
    fingerprint: str
    precondition: str = "absent"


@dataclass(frozen=True)
class Seen:
    """A key used before: the sketch it made, and the answer its first request got."""

    sketch_id: str
    answer: Answer


@dataclass(frozen=True)
class Started:
    """A create or a retry: its sketch, the answer its first request got, and whether this request
    repeated a key seen before."""

    sketch: Sketch
    answer: Answer
    replayed: bool = False


def replay(store: SketchStore, seen: Seen) -> Started:
    """The answer a repeated key gets: its first answer, with its sketch as it is now."""
    sketch = store.get(seen.sketch_id)
    if sketch is None:
        # The record was committed with its sketch, so a record without one outlived a deletion.
        raise SketchGone
    logs.bind_sketch(seen.sketch_id)
    log.info("a repeated Idempotency-Key answered with its sketch")
    return Started(sketch, seen.answer, replayed=True)


def valid_key(value: str) -> bool:
    """1 to 255 printable ASCII characters, as the contract asks."""
    return 0 < len(value) <= MAX_KEY_LENGTH and all(0x20 <= ord(ch) < 0x7F for ch in value)


def fingerprint(body: dict[str, Any]) -> str:
    """The request body, as the same JSON however its keys were ordered or spaced."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, db: Firestore, collection: str) -> None:
        self._db = db
        self._collection = f"{collection}_idempotency"

    def claim(self, scope: str, key: str, body: dict[str, Any]) -> Claim:
        record_id = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:40]
        return Claim(record_id, scope, fingerprint(body))

    def write(self, claim: Claim, sketch_id: str, now: datetime) -> Write:
        """The record's create, to commit with the sketch's."""
        data = {
            "scope": claim.scope,
            "fingerprint": claim.fingerprint,
            "sketch_id": sketch_id,
            "created_at": now,
            "in_flight_until": now + IN_FLIGHT,
            "answer": None,
            "expires_at": now + KEEP,
        }
        return Write(self._collection, claim.record_id, data, claim.precondition)

    def delete(self, claim: Claim) -> Delete:
        """The record's removal, to commit with its sketch's when that sketch is undone."""
        return Delete(self._collection, claim.record_id)

    def look(self, claim: Claim, now: datetime) -> Seen | Claim:
        """What a repeat of `claim` gets (Seen), or the claim ready for a new record. KeyReused or
        KeyInUse when the key cannot be used now."""
        record = self._get(claim.record_id)
        if record is None:
            return claim
        if record.data["expires_at"] <= now:
            # Past its time but not yet removed by the TTL policy: the new record replaces it.
            return Claim(claim.record_id, claim.scope, claim.fingerprint, record.update_time)
        if record.data["fingerprint"] != claim.fingerprint:
            raise KeyReused
        answer = record.data.get("answer")
        if answer is None:
            if record.data["in_flight_until"] > now:
                raise KeyInUse
            return Seen(str(record.data["sketch_id"]), Answer(202))
        return Seen(str(record.data["sketch_id"]), Answer(**answer))

    def sketch_of(self, claim: Claim) -> str | None:
        record = self._get(claim.record_id)
        return None if record is None else str(record.data["sketch_id"])

    def answered(self, claim: Claim, answer: Answer) -> None:
        """Keep the first answer for the repeats. If Firestore is away, repeats get the sketch as 202
        once the in-flight window has passed."""
        try:
            record = self._db.get(self._collection, claim.record_id)
            if record is not None:
                self._db.update(
                    self._collection,
                    claim.record_id,
                    {"answer": answer.to_data()},
                    if_update_time=record.update_time,
                )
        except (PreconditionFailed, Unavailable):
            return

    def _get(self, record_id: str) -> Document | None:
        try:
            return self._db.get(self._collection, record_id)
        except Unavailable as exc:
            raise StoreUnavailable(f"Firestore did not read an idempotency key: {exc}") from exc

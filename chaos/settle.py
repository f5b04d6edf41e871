"""After the faults: the sketches as Firestore holds them, and the wait for every one of them to be
final, within the bound (`SETTLE_BOUND`).

The bound is the longest a sketch may rightly need once the faults stop, with the run's settings
(`chaos/run.py`): the grace for a lost answer's webhook (UNKNOWN_OUTCOME_GRACE_SECONDS, 30 s), then the
backoff after Novita failed the request sent again (at most 60 s, `PAID_RETRY_BACKOFF_MAX`); a killed
holder's lease (STEP_LEASE_SECONDS, 20 s) or a dead balance probe's (`BREAKER_PROBE`, 10 s); a step
coming back from Pub/Sub (at most 4 s), the sweep finding it (every 3 s), and Novita's and the copy's
few seconds: about 125 s, and the bound leaves 25 s more.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore

from devstack.stack import COLLECTION, PROJECT, LocalStack
from shared.sketch.model import Status

SETTLE_BOUND = 150.0
LOOK_EVERY = 2.0
FINAL = tuple(status.value for status in Status if status.is_final)


@dataclass
class Settle:
    bound: float
    # Seconds from the faults' end until every sketch was final; None if some were not within the bound.
    took: float | None
    # Sketches not final when the faults stopped.
    unfinished: int
    # The longest one of those took to become final, and which.
    slowest: float
    slowest_sketch: str | None


class Sketches:
    """The stack's sketches, read as a client of its Firestore emulator (through its gate)."""

    def __init__(self, stack: LocalStack) -> None:
        os.environ["FIRESTORE_EMULATOR_HOST"] = stack.firestore.host
        self._db = firestore.Client(project=PROJECT)
        self._collection = stack.env.get("SKETCHES_COLLECTION", COLLECTION)

    def all(self) -> dict[str, dict[str, Any]]:
        return {
            snapshot.id: snapshot.to_dict() or {}
            for snapshot in self._db.collection(self._collection).stream()
        }

    def close(self) -> None:
        self._db.close()


def settle(
    sketches: Sketches, calm: float, say: Callable[[str], None], bound: float = SETTLE_BOUND
) -> tuple[dict[str, dict[str, Any]], Settle]:
    """Wait until every sketch is final or `bound` seconds have passed since `calm` (the faults' end,
    wall clock); the sketches as they are then, and how long they took."""
    documents = sketches.all()
    unfinished = {i for i, d in documents.items() if d["status"] not in FINAL}
    say(f"{len(unfinished)} of {len(documents)} sketches unfinished as the faults stopped")
    say(f"waiting for them, up to {bound:.0f} s")
    while any(d["status"] not in FINAL for d in documents.values()) and time.time() < calm + bound:
        time.sleep(LOOK_EVERY)
        documents = sketches.all()
    took = None
    finished = {i: _finished_at(documents[i]) - calm for i in unfinished if documents[i]["status"] in FINAL}
    if all(d["status"] in FINAL for d in documents.values()):
        took = max([0.0, *finished.values()])
    slowest = max(finished, key=lambda i: finished[i], default=None)
    return documents, Settle(
        bound=bound,
        took=None if took is None else round(took, 1),
        unfinished=len(unfinished),
        slowest=round(finished[slowest], 1) if slowest else 0.0,
        slowest_sketch=slowest,
    )


def _finished_at(document: dict[str, Any]) -> float:
    """When a final sketch became final: its completion, or its last change (a failed sketch changes
    no more)."""
    moment: datetime = document.get("completed_at") or document["updated_at"]
    return moment.timestamp()

"""The step lease: a step that does a sketch's slow work (Seedream, the chain, the copy) holds it.

It is taken with a conditional write, so however many times Pub/Sub delivers a step and however many
deliveries race, one of them does the work. Every write the holder makes is conditional on still
holding it; a fault inside gives it back so that the next delivery takes the work up at once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from shared.pipeline.results import NO_LEASE, OUTCOME_KNOWN
from shared.pipeline.work import RetryLater, Tools
from shared.sketch.model import Sketch, utcnow
from shared.sketch.store import Changes, StoreUnavailable

log = logging.getLogger(__name__)


class Lease:
    """One step's hold on a sketch: `sketch` is its latest copy, which shows the lease."""

    def __init__(self, tools: Tools, sketch: Sketch, owner: str) -> None:
        self._tools = tools
        self.sketch = sketch
        self.owner = owner

    def finish(self, changes: Changes) -> Sketch | None:
        """Write `changes` if this step still holds the lease; the sketch as written, else None."""

        def decide(s: Sketch) -> Changes | None:
            return changes if s.step_lease_owner == self.owner and not s.status.is_final else None

        # A copy that does not show this step's lease predates the claim, and deciding on it would
        # leave the lease held: the document is read instead.
        latest = self.sketch if self.sketch.step_lease_owner == self.owner else None
        sketch, changed = self._tools.store.mutate(self.sketch.id, decide, known=latest)
        if changed and sketch is not None:
            self.sketch = sketch
            return sketch
        return None

    def release(self, extra: Changes | None = None) -> None:
        """Give the work back so that the next delivery of the step takes it up at once.

        If Firestore is out of reach, the lease simply runs out instead.
        """
        due = self._tools.results.recovery_due(utcnow(), self.sketch.next_step())
        try:
            self.finish({**NO_LEASE, **(extra or {}), "recovery_due_at": due})
        except StoreUnavailable:
            log.warning("the step's lease could not be given back; it will run out")

    def hold(self, budget: timedelta) -> Sketch:
        """Make sure the lease outlasts the paid request about to be sent, or give up the work.

        A slow download may have used up most of the lease; another step must not take the work up
        while this one is still asking Novita.
        """
        now = utcnow()
        sketch = self.sketch
        if sketch.step_lease_until is not None and sketch.step_lease_until - now >= budget:
            return sketch
        until = now + max(budget, timedelta(seconds=self._tools.settings.step_lease_seconds))

        def renew(s: Sketch) -> Changes | None:
            held = s.step_lease_owner == self.owner and not s.status.is_final
            return {"step_lease_until": until, "recovery_due_at": until} if held else None

        renewed, held = self._tools.store.mutate(sketch.id, renew, known=sketch)
        if not held or renewed is None:
            raise RetryLater("the step's lease ran out before the paid request could be sent")
        self.sketch = renewed
        return renewed


@contextmanager
def take(
    tools: Tools, sketch: Sketch, may: Callable[[Sketch], bool], extra: Changes | None = None
) -> Iterator[Lease | None]:
    """Take the sketch's step lease if `may` allows it and no live lease is held; yields the Lease,
    or None when another step holds the work or it is done. Any other fault inside gives it back."""
    owner = uuid.uuid4().hex
    now = utcnow()
    until = now + timedelta(seconds=tools.settings.step_lease_seconds)

    def claim(s: Sketch) -> Changes | None:
        if not may(s) or s.lease_is_live(now):
            return None
        return {
            "step_lease_owner": owner,
            "step_lease_until": until,
            "recovery_due_at": until,
            **(extra or {}),
        }

    claimed, changed = tools.store.mutate(sketch.id, claim, known=sketch)
    # A claim whose first answer was lost and retried reads back as somebody else's change.
    if claimed is None or not (changed or claimed.step_lease_owner == owner):
        yield None
        return
    lease = Lease(tools, claimed, owner)
    try:
        yield lease
    except (RetryLater, StoreUnavailable):
        raise  # the lease was dealt with where it was raised, or cannot be written to
    except Exception:
        lease.release(OUTCOME_KNOWN if extra else None)
        raise

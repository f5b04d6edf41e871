"""The lease on a sketch's slow work: whoever sends its paid requests (a create, or a step: Seedream,
the chain, the copy) holds it.

It is taken with a conditional write, so however many times Pub/Sub delivers a step and however many
deliveries race, one of them does the work; the others are answered 5xx and come back. A live
holder renews it every third of `STEP_LEASE_SECONDS`, so a holder that dies (a killed process, an
evicted instance) loses it within seconds, not minutes. Every write the holder makes is conditional
on still holding it; a fault inside gives it back so that the next delivery takes the work up.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from shared.core.timings import LEASE_RENEWALS_PER_LEASE
from shared.pipeline.results import NO_LEASE, Results
from shared.pipeline.work import Busy, RetryLater, Tools, Waiting
from shared.sketch.model import Sketch, utcnow
from shared.sketch.store import Changes, SketchStore, StoreUnavailable

log = logging.getLogger(__name__)


class Lease:
    """One holder's lease on a sketch; `sketch` is the holder's latest copy, which shows the lease."""

    def __init__(
        self, store: SketchStore, results: Results, sketch: Sketch, owner: str, seconds: float
    ) -> None:
        self._store = store
        self._results = results
        self._seconds = seconds
        self._lock = threading.Lock()
        self._sketch = sketch
        self.owner = owner

    @property
    def sketch(self) -> Sketch:
        with self._lock:
            return self._sketch

    def _keep(self, sketch: Sketch | None) -> Sketch | None:
        if sketch is not None:
            with self._lock:
                self._sketch = sketch
        return sketch

    def finish(self, changes: Changes) -> Sketch | None:
        """Write `changes` if this holder still holds the lease; the sketch as written, else None."""

        def decide(s: Sketch) -> Changes | None:
            return changes if s.step_lease_owner == self.owner and not s.status.is_final else None

        sketch, changed = self._store.mutate(self.sketch.id, decide, known=self.sketch)
        return self._keep(sketch) if changed else None

    def release(self, extra: Changes | None = None, *, due: datetime | None = None) -> None:
        """Give the work back so that the next delivery of the step takes it up at once (or at
        `due`). If Firestore is out of reach, the lease simply runs out instead."""
        due = due or self._results.recovery_due(utcnow(), self.sketch.next_step())
        try:
            self.finish({**NO_LEASE, **(extra or {}), "recovery_due_at": due})
        except StoreUnavailable:
            log.warning("the lease could not be given back; it will run out")

    def renew(self) -> bool:
        """Push the lease's end on; False once it is no longer held."""
        until = utcnow() + timedelta(seconds=self._seconds)

        def decide(s: Sketch) -> Changes | None:
            held = s.step_lease_owner == self.owner and not s.status.is_final
            return {"step_lease_until": until, "recovery_due_at": until} if held else None

        sketch, changed = self._store.mutate(self.sketch.id, decide, known=self.sketch)
        self._keep(sketch if changed else None)
        return changed

    @contextmanager
    def kept_alive(self) -> Iterator[Lease]:
        """Renew the lease in the background while the holder works; stopped before it answers."""
        stop = threading.Event()

        def beat() -> None:
            interval = self._seconds / LEASE_RENEWALS_PER_LEASE
            while not stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except Exception as exc:  # a renewal that fails lets the lease run out: never worse
                    log.warning("the lease was not renewed: %s", exc)

        thread = threading.Thread(target=beat, name=f"lease-{self.owner[:8]}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def new_owner() -> str:
    return uuid.uuid4().hex


@contextmanager
def take(
    tools: Tools,
    sketch: Sketch,
    may: Callable[[Sketch], bool],
    extra: Callable[[Sketch], Changes] | None = None,
) -> Iterator[Lease | None]:
    """Take the sketch's lease if `may` allows the work; yields the Lease (kept alive while held),
    or None when there is nothing to do. Busy when a live holder has it; Waiting while the sketch
    says no paid request may be sent yet. Any other fault inside gives the lease back."""
    owner = new_owner()
    now = utcnow()
    seconds = tools.settings.step_lease_seconds
    until = now + timedelta(seconds=seconds)

    def claim(s: Sketch) -> Changes | None:
        if (
            not may(s)
            or s.lease_is_live(now)
            or (s.retry_not_before is not None and s.retry_not_before > now)
        ):
            return None
        taken: Changes = {"step_lease_owner": owner, "step_lease_until": until, "recovery_due_at": until}
        return {**taken, **(extra(s) if extra else {})}

    claimed, changed = tools.store.mutate(sketch.id, claim, known=sketch)
    # A claim whose first answer was lost and retried reads back as somebody else's change.
    if claimed is None or not (changed or claimed.step_lease_owner == owner):
        if claimed is not None and may(claimed):
            if claimed.lease_is_live(now):
                raise Busy(f"another step holds the sketch's work until {claimed.step_lease_until:%H:%M:%S}")
            if claimed.retry_not_before is not None and claimed.retry_not_before > now:
                raise Waiting(
                    claimed.retry_not_before, "Novita failed the last paid request; trying again later"
                )
        yield None
        return
    lease = Lease(tools.store, tools.results, claimed, owner, seconds)
    with lease.kept_alive():
        try:
            yield lease
        except (RetryLater, Waiting, StoreUnavailable):
            raise  # the lease was dealt with where it was raised, or cannot be written to
        except Exception:
            lease.release()
            raise

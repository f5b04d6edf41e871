"""The steps: the slow work of a sketch, each run from Pub/Sub (`shared/pipeline/queue.py`) within one
deadline. Each kind lives in its own module: `check`, `seedream`, `chain`, `copy`.

A fault that may pass raises one of `TRANSIENT`: the push is answered 5xx, Pub/Sub delivers the step
again, and the sketch counts the failure. A step that cannot run yet raises one of `WAITS` (another
holder works on the sketch, the balance breaker is open): answered 5xx too, but never counted. A
step that ends in the dead letters fails its sketch only as far as the sketch's own count bears out.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from shared.core import logs
from shared.core.deadline import Deadline
from shared.pipeline.queue import Hint, Step
from shared.pipeline.results import Outcome, fail_changes
from shared.pipeline.topology import STEP_DEADLINE_SECONDS
from shared.pipeline.work import Tools
from shared.sketch.model import Sketch, StepKind
from shared.sketch.store import Changes, SketchStore, StoreUnavailable

log = logging.getLogger(__name__)

# Failures in a row of one step that a dead letter needs to see on the sketch before it fails it.
DEAD_LETTER_FAILURES = 3


def _slow(kind: StepKind) -> Callable[[Tools, Sketch, Deadline], Outcome]:
    """The module of a slow step, imported when one is first run: a copy that finds the sketch moved
    on, or a door that never runs it, needs none of it (a cold start loads no more than it uses; so
    does the check, `examine`)."""
    if kind is StepKind.SEEDREAM:
        from shared.pipeline import seedream

        return seedream.run
    if kind is StepKind.CHAIN:
        from shared.pipeline import chain

        return chain.run
    from shared.pipeline import copy

    return copy.run


class Worker:
    """Runs steps. Its tools (Novita's client, the media client, the bucket) come from `tools`, which
    builds them the first time a step needs them: a step that finds its sketch moved on needs only the
    store."""

    def __init__(self, store: SketchStore, tools: Callable[[], Tools]) -> None:
        self._store = store
        self._tools = tools

    @property
    def tools(self) -> Tools:
        return self._tools()

    def run(self, step: Step) -> Outcome:
        """Do `step` within its deadline; raises one of TRANSIENT for a fault that may pass."""
        logs.bind_sketch(step.sketch_id)
        deadline = Deadline.after(STEP_DEADLINE_SECONDS)
        sketch = self._store.get(step.sketch_id)
        if sketch is None:
            log.warning("step for an unknown sketch ignored", extra={"step": step.kind.value})
            return Outcome.IGNORED
        if step.kind is StepKind.CHECK:
            hint = Hint(step.task_id, step.stage, step.result) if step.task_id and step.stage else None
            return self.examine(sketch, deadline, hint)
        if sketch.next_step() is not step.kind:
            return Outcome.DUPLICATE  # the sketch has moved on since the step was published
        return _slow(step.kind)(self.tools, sketch, deadline)

    def examine(self, sketch: Sketch, deadline: Deadline, hint: Hint | None = None) -> Outcome:
        """Ask Novita about the sketch's task (`hint`'s, when a webhook named one) and apply it."""
        from shared.pipeline import check

        return check.examine(self.tools, sketch, deadline, hint)

    def note_failure(self, step: Step, error: Exception) -> None:
        """Count the step's failure on the sketch, with why: a dead letter fails the sketch only when
        its own record shows that step failing (`dead_letter`)."""
        message = f"{step.kind.value}: {error}"[:500]

        def note(s: Sketch) -> Changes | None:
            if s.status.is_final or s.next_step() is not step.kind:
                return None
            failures = s.step_failures + 1 if s.failed_step is step.kind else 1
            return {"failed_step": step.kind, "step_failures": failures, "last_step_error": message}

        # If Firestore is what failed, there is nothing to keep the reason in.
        with contextlib.suppress(StoreUnavailable):
            self._store.mutate(step.sketch_id, note)

    def dead_letter(self, step: Step) -> Outcome:
        """A step Pub/Sub gave up on. Pub/Sub hands the message on unchanged, so it proves nothing by
        itself: the sketch fails only if it still waits on that step and its own record shows the
        step failing at least DEAD_LETTER_FAILURES times in a row (a wait, such as an open balance
        breaker or a busy lease, is never counted). Otherwise recovery takes the sketch up again."""
        logs.bind_sketch(step.sketch_id)

        def fail(s: Sketch) -> Changes | None:
            if s.status.is_final or s.next_step() is not step.kind:
                return None
            if s.failed_step is not step.kind or s.step_failures < DEAD_LETTER_FAILURES:
                return None
            last = s.last_step_error or "no reason was recorded"
            return fail_changes(
                f"the {step.kind.value} step failed {s.step_failures} times; the last time: {last}"
            )

        sketch, changed = self._store.mutate(step.sketch_id, fail)
        if changed:
            log.error("a step ended in the dead letters; the sketch failed", extra={"step": step.kind.value})
            return Outcome.APPLIED
        if sketch is not None and not sketch.status.is_final:
            log.warning(
                "a dead letter the sketch's own record does not bear out changed nothing",
                extra={"step": step.kind.value, "failures": sketch.step_failures},
            )
        return Outcome.IGNORED if sketch is None else Outcome.DUPLICATE

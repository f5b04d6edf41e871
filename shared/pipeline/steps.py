"""The steps: the slow work of a sketch, each run from Pub/Sub (`shared/pipeline/queue.py`) within one
deadline. Each kind lives in its own module: `check`, `seedream`, `chain`, `copy`.

A fault that may pass raises one of `TRANSIENT`: the push is answered 5xx and Pub/Sub delivers the
step again. Once a step ends in the dead letters, the sketch fails with the reason (`dead_letter`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from shared.core import logs
from shared.core.deadline import Deadline
from shared.pipeline import chain, check, copy, seedream
from shared.pipeline.check import Hint
from shared.pipeline.queue import Step
from shared.pipeline.results import Outcome, fail_changes
from shared.pipeline.topology import STEP_DEADLINE_SECONDS
from shared.pipeline.work import Tools
from shared.sketch.model import Sketch, StepKind
from shared.sketch.store import Changes, StoreUnavailable

log = logging.getLogger(__name__)

_SLOW: dict[StepKind, Callable[[Tools, Sketch, Deadline], Outcome]] = {
    StepKind.SEEDREAM: seedream.run,
    StepKind.CHAIN: chain.run,
    StepKind.COPY: copy.run,
}


class Worker:
    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    def run(self, step: Step) -> Outcome:
        """Do `step` within its deadline; raises one of TRANSIENT for a fault that may pass."""
        logs.bind_sketch(step.sketch_id)
        deadline = Deadline.after(STEP_DEADLINE_SECONDS)
        sketch = self.tools.store.get(step.sketch_id)
        if sketch is None:
            log.warning("step for an unknown sketch ignored", extra={"step": step.kind.value})
            return Outcome.IGNORED
        if step.kind is StepKind.CHECK:
            hint = Hint(step.task_id, step.stage, step.result) if step.task_id and step.stage else None
            return check.examine(self.tools, sketch, deadline, hint)
        if sketch.next_step() is not step.kind:
            return Outcome.DUPLICATE  # the sketch has moved on since the step was published
        return _SLOW[step.kind](self.tools, sketch, deadline)

    def examine(self, sketch: Sketch, deadline: Deadline) -> Outcome:
        return check.examine(self.tools, sketch, deadline)

    def note_failure(self, step: Step, error: Exception) -> None:
        """Keep why the step did not finish, for the reason the sketch fails with if it never does."""
        message = f"{step.kind.value}: {error}"[:500]
        # If Firestore is what failed, there is nothing to keep the reason in.
        with contextlib.suppress(StoreUnavailable):
            self.tools.store.mutate(
                step.sketch_id, lambda s: None if s.status.is_final else {"last_step_error": message}
            )

    def dead_letter(self, step: Step, attempts: int | None) -> Outcome:
        """A step Pub/Sub gave up on: the sketch fails with the reason, if it still waits on it."""
        logs.bind_sketch(step.sketch_id)
        tries = f"{attempts} times" if attempts else "every time Pub/Sub tried"

        def fail(s: Sketch) -> Changes | None:
            if s.status.is_final or s.next_step() is not step.kind:
                return None
            last = s.last_step_error or "no reason was recorded"
            return fail_changes(f"the {step.kind.value} step failed {tries}; the last time: {last}")

        sketch, changed = self.tools.store.mutate(step.sketch_id, fail)
        if changed:
            log.error("a step ended in the dead letters; the sketch failed", extra={"step": step.kind.value})
        return Outcome.APPLIED if changed else Outcome.IGNORED if sketch is None else Outcome.DUPLICATE

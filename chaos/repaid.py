"""The one documented double payment (`docs/architecture.md`): a paid request whose answer was lost,
whose task can no longer be adopted, sent again, with a line in the sketch's `repaid` that says so.

A second paid call is that case only when the lost call's task really could not be adopted. Read
from the sketch's log lines (JSON, one per event, with `sketch_id`), each is told apart by what became
of the lost call's answer, and whether its webhook reached the function before the sketch decided
to pay again: if it did, the task could have been adopted, and the second call is not the
documented case, whatever its `repaid` line says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.novita.client import KLING_I2V_PATH, SEEDREAM_PATH, TXT2IMG_PATH

# Where each paid request goes, as the client logs its answer.
PATHS = {"txt2img": TXT2IMG_PATH, "seedream": SEEDREAM_PATH, "kling": KLING_I2V_PATH}
# The WARNING a step writes as it sends a request again (shared/pipeline/paid.py).
PAYING_AGAIN = "paying again for a request"

Line = dict[str, Any]


@dataclass(frozen=True)
class Repaid:
    """A second paid call of a sketch's stage, with the `repaid` line that accounts for it."""

    sketch_id: str
    stage: str
    line: str
    # The call whose answer was lost (its ledger entry): paid, and not the task the sketch kept.
    lost: dict[str, Any]
    # When the call that paid again was made (epoch seconds).
    again: float
    # Why, as `cause` reads it from the logs.
    cause: str = ""


@dataclass(frozen=True)
class Cause:
    # What became of the lost call's answer, and why its task was not adopted.
    text: str
    # When its webhook reached the function before the sketch decided to pay again (epoch seconds):
    # then it could have been adopted. None when it never did.
    adoptable_at: float | None


def cause(repaid: Repaid, lines: Iterable[Line]) -> Cause:
    lost = repaid.lost
    mine = list(lines)
    decided = min(
        [
            repaid.again,
            *(at(line) for line in mine if _says(line, PAYING_AGAIN) and at(line) > lost["time"]),
        ]
    )
    sent = f"Novita POST {PATHS[lost['endpoint']]} answered"
    heard = [line for line in mine if _says(line, sent) and lost["time"] - 1.0 <= at(line) < decided]
    if not heard:
        answer = "the instance that sent it was killed before it heard the answer"
    elif str(heard[0]["message"]).endswith("no answer"):
        answer = "its answer never arrived, though Novita made the task"
    else:
        answer = "its answer arrived, but the instance was killed before it recorded the task"
    delivered = [
        at(line) for line in mine if line.get("task_id") == lost["task_id"] and line.get("door") == "public"
    ]
    in_time = [moment for moment in delivered if moment < decided]
    if lost["webhook_url"] is None:
        back = "no webhook could bring the task back (Seedream's answer, Kling's reference form)"
    elif in_time:
        back = (
            f"yet its webhook reached the function {in_time[0] - lost['time']:.0f} s after it was sent, "
            f"{decided - in_time[0]:.0f} s before the sketch paid again: it could have been adopted"
        )
    elif delivered:
        back = "its webhook came only after the grace"
    else:
        back = "its webhook never reached the function (dropped, or all five attempts met a killed door)"
    return Cause(f"{answer}; {back}", in_time[0] if in_time else None)


def at(line: Line) -> float:
    """When a log line was written (epoch seconds)."""
    return datetime.fromisoformat(str(line["time"])).timestamp()


def _says(line: Line, start: str) -> bool:
    return str(line.get("message", "")).startswith(start)

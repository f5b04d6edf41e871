"""The chaos run (`python -m chaos`, docs/chaos.md).

Its short form runs here: 30 sketches through every fault at once, under each simulator personality
with a fixed seed; the run must end with its one `chaos:` line, nothing stuck, nothing paid twice
outside the documented cases, and every check of its audit passed. Its figures are recorded.

Before it, what the run stands on, without a stack: a seed replays its schedule, and the audit
counts a second payment as documented only when the sketch's `repaid` says so and the lost task
could not have been adopted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import record_figure

from chaos.audit import join, payments, unreadable
from chaos.schedule import EPISODES, FUNCTIONS, MIN_EPISODES, PER_FUNCTION, plan
from devstack.functions import ROOT

SHORT_FORM = 30
SEEDS = {"guide": 101, "reference": 202}
FINAL_LINE = re.compile(
    r"chaos: (\d+) sketches, (\d+) complete, (\d+) failed, (\d+) stuck, (\d+) paid tasks, (\d+) paid twice"
)


# ------------------------------------------------------------------------------ the schedule


def test_a_seed_replays_its_schedule_and_another_seed_draws_another() -> None:
    assert plan(7, 200) == plan(7, 200)
    assert plan(7, 200).episodes != plan(8, 200).episodes


def test_every_fault_happens_repeatedly_each_kill_to_each_function_and_never_two_of_a_kind_at_once() -> None:
    schedule = plan(3, SHORT_FORM)
    for kind in EPISODES:
        targets = FUNCTIONS if kind in PER_FUNCTION else (None,)
        for target in targets:
            series = [e for e in schedule.episodes if e.kind == kind and e.target == target]
            assert len(series) >= MIN_EPISODES, (kind, target)
            for first, second in zip(series, series[1:], strict=False):
                assert first.at + first.seconds <= second.at, (kind, target)
    assert all(e.at >= 0 and e.at + e.seconds <= schedule.fault_seconds for e in schedule.episodes)


# --------------------------------------------------------------------------------- the audit


def sketch(sketch_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": sketch_id,
        "status": "complete",
        "prompt": f"prompt of {sketch_id}",
        "video_prompt": f"motion of {sketch_id}",
        "created_at": datetime.now(UTC),
        "repaid": [],
        **fields,
    }


def call(
    endpoint: str, task_id: str, prompt: str, sketch_id: str | None = None, at: float = 0.0
) -> dict[str, Any]:
    """A paid call as the simulator's ledger keeps it; one made with a webhook names its sketch."""
    return {
        "endpoint": endpoint,
        "task_id": task_id,
        "prompt": prompt,
        "sketch": sketch_id,
        "webhook_url": None if sketch_id is None else f"http://127.0.0.1:1/?sketch={sketch_id}",
        "answered": False,
        "time": at or time.time(),
    }


def test_a_second_payment_is_documented_only_by_a_repaid_line_of_its_stage() -> None:
    a = "a" * 32
    b = "b" * 32
    documents = {
        a: sketch(a, repaid=["video: the image-to-video request sent at ... sent again at ..."]),
        b: sketch(b),
    }
    ledger = [
        call("txt2img", "t1", f"prompt of {a}", a),
        call("kling", "k1", f"motion of {a}"),  # the reference form: no webhook, joined by its prompt
        call("kling", "k2", f"motion of {a}"),
        call("seedream", "s1", f"prompt of {b}"),
        call("seedream", "s2", f"prompt of {b}"),  # no line explains it
        call("txt2img", "t9", "a prompt no sketch has"),
    ]

    joined, strays = join(documents, ledger)
    check, extra, documented = payments(documents, joined, strays, {})

    assert [c["task_id"] for c in joined[a, "video"]] == ["k1", "k2"]
    assert [(r.sketch_id, r.stage, r.lost["task_id"]) for r in documented] == [(a, "video", "k1")]
    assert extra == 2  # b's second Seedream image, and the task no sketch can be joined to
    assert not check.passed and check.sketches == {b}


def test_a_second_payment_whose_lost_task_reached_the_function_in_time_is_not_the_documented_case() -> None:
    c = "c" * 32
    documents = {c: sketch(c, repaid=["video: the image-to-video request sent at ... sent again at ..."])}
    sent = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    ledger = [
        call("txt2img", "t1", f"prompt of {c}", c, at=sent - 10),
        call("kling", "k1", f"motion of {c}", c, at=sent),
        call("kling", "k2", f"motion of {c}", c, at=sent + 40),
    ]
    # k1's webhook was handed on 6 s after k1 was sent: k1 could have been adopted.
    told = {
        c: [
            {
                "time": "2026-01-01T12:00:06+00:00",
                "door": "public",
                "message": "delivery queued",
                "task_id": "k1",
            }
        ]
    }

    joined, strays = join(documents, ledger)
    check, extra, documented = payments(documents, joined, strays, told)

    assert (extra, documented) == (1, [])
    assert "it could have been adopted" in check.cases[0]


def test_a_reason_with_a_traceback_or_a_repr_is_not_one_a_person_can_read() -> None:
    assert unreadable("Novita 503 SERVICE_UNAVAILABLE: service unavailable, please retry later") is None
    assert unreadable("check: Novita could not be reached: ConnectError('refused')") is not None
    assert unreadable("Traceback (most recent call last):\n  ...") is not None
    assert unreadable("") is not None


# ------------------------------------------------------------------------------- the short form


@pytest.mark.stack
@pytest.mark.faults
@pytest.mark.timeout(600)
@pytest.mark.parametrize("personality", sorted(SEEDS))
def test_thirty_sketches_through_every_fault_settle_and_pass_the_audit(
    tmp_path: Path, personality: str
) -> None:
    seed = SEEDS[personality]
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "chaos", "--sketches", str(SHORT_FORM), "--seed", str(seed)]
        + ["--personality", personality, "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=570,
    )
    took = time.monotonic() - started
    lines = run.stdout.strip().splitlines()
    (folder,) = tmp_path.iterdir()
    audit = json.loads((folder / "audit.json").read_text())
    final = FINAL_LINE.fullmatch(lines[-1])
    assert final is not None, run.stdout + run.stderr
    sketches, complete, failed, stuck, paid, extra = map(int, final.groups())

    scenario = f"chaos, {SHORT_FORM} sketches ({personality}, seed {seed})"
    record_figure(scenario, "final line", lines[-1])
    record_figure(scenario, "documented double payments", len(audit["documented"]))
    record_figure(scenario, "settled after the faults stopped", f"{audit['settle']['took']} s")
    record_figure(scenario, "creates refused for the balance once it was back", len(audit["late_refusals"]))
    record_figure(scenario, "wall time of the run", f"{took:.0f} s")
    failed_checks = [check["name"] for check in audit["checks"] if not check["passed"]]
    assert run.returncode == 0, f"checks failed: {failed_checks}; the run's folder: {folder}\n{run.stdout}"
    assert sum(line.startswith("chaos: ") for line in lines) == 1
    assert (sketches, stuck, extra) == (SHORT_FORM, 0, 0)
    assert complete + failed == SHORT_FORM and complete > 0
    assert paid >= complete * 2
    assert failed_checks == []
    assert audit["settle"]["took"] is not None and audit["settle"]["took"] <= audit["settle"]["bound"]

"""One chaos run, start to end: the local stack with the run's settings, the sketches sent while the
schedule's faults happen, the faults stopped, the wait for every sketch to settle, and the audit.

Everything the run leaves is in its folder (`out/chaos/<personality>-seed<S>-<N>-<time>/`): the
stack's logs (`logs/`: each function's JSON lines, the emulators', the simulator's), the schedule
(`plan.json`), each episode as carried out (`faults.jsonl`), what the app asked and heard
(`asks.json`), the ledger, the sketches, the audit (`audit.json`), and the story of every sketch the
audit found wrong (`evidence/`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos import evidence
from chaos.audit import Audit, audit
from chaos.faults import HarnessError, Injector
from chaos.schedule import EPISODES, LINK_TTL, STEADY, Plan, plan
from chaos.settle import Settle, Sketches, settle
from chaos.traffic import SKETCHES_PER_GUEST, App, Ask, asks, guests_for, sign_in
from devstack.stack import local_stack

# The simulator's pace: a still in 2 s, a video in 3 s, as the local run has them.
IMAGE_DELAY, VIDEO_DELAY = 2.0, 3.0
PROGRESS_EVERY = 15.0


def settings(sketches: int) -> dict[str, str]:
    """What the functions are told for the run, beside the stack's own defaults."""
    return {
        # Never a Novita named in the environment: the stack then starts the simulator, the only
        # Novita whose faults the run can turn on and whose ledger it can read.
        "NOVITA_BASE_URL": "",
        "NOVITA_API_KEY": "",
        # A guest may make and have in progress every sketch it is given, with room to spare; the
        # project may make every sketch of the run.
        "MAX_GUEST_SKETCHES_PER_DAY": str(4 * SKETCHES_PER_GUEST),
        "MAX_SKETCHES_IN_PROGRESS": str(2 * SKETCHES_PER_GUEST),
        "MAX_SKETCHES_PER_DAY_TOTAL": str(max(100, 4 * sketches)),
        # Production's 600 s would hold a sketch whose answer was lost for ten minutes; 30 s is still
        # well past the simulator's latest webhook (a task's 3 s, held back up to 4 s, five attempts).
        "UNKNOWN_OUTCOME_GRACE_SECONDS": "30",
        # Production's 30 s: a killed holder's work is taken up sooner; 20 s still outlasts the run's
        # Firestore outages (downtime and the emulator's start: up to 10 s), so a live holder that
        # cannot renew its lease during one keeps it.
        "STEP_LEASE_SECONDS": "20",
        # Production's 300 s would refuse every create long after the balance is back; a balance
        # episode lasts 4-10 s.
        "BALANCE_BREAKER_SECONDS": "10",
        # The local stack's own: the sweep runs every 3 s, and looks at a sketch at most this often.
        "RECOVERY_INTERVAL_SECONDS": "3",
    }


class Clock:
    def __init__(self) -> None:
        self._started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._started:7.1f}s] {text}", flush=True)


def run(seed: int, sketches: int, personality: str, out: Path) -> int:
    clock = Clock()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = out / f"{personality}-seed{seed}-{sketches}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    schedule = plan(seed, sketches)
    chosen = settings(sketches)
    _save(folder / "plan.json", schedule.to_json())
    clock.say(f"run folder {folder}")
    clock.say(
        f"{sketches} sketches, one every {schedule.send_every:g} s; {len(schedule.episodes)} episodes over "
        f"{schedule.fault_seconds:g} s of faults: {dict(Counter(e.kind for e in schedule.episodes))}"
    )
    stack_log = (folder / "stack.log").open("a")

    def stack_say(text: str) -> None:
        stack_log.write(f"{datetime.now(UTC).isoformat()} {text}\n")
        stack_log.flush()

    try:
        with local_stack(
            folder / "logs",
            personality=personality,
            image_delay=IMAGE_DELAY,
            video_delay=VIDEO_DELAY,
            ttl=LINK_TTL,
            say=stack_say,
            settings=chosen,
            restartable=True,
        ) as stack:
            clock.say(f"stack up: the simulator as Novita's {personality}, logs in {folder / 'logs'}")
            asked = asks(seed, sketches, sign_in(stack, guests_for(sketches), clock.say))
            found = Sketches(stack)
            try:
                started = time.monotonic()
                injector = Injector(stack, schedule, folder / "faults.jsonl").start(started)
                app = App(stack, asked, schedule.send_every).start(started)
                _fault_phase(app, schedule, started, clock)
                injector.stop()
                calm = time.time()
                clock.say(f"faults stopped; function instances started again: {stack.supervisor.restarts}")
                documents, settled = settle(found, calm, clock.say)
                app.stop()
                assert stack.simulator is not None  # a chaos run drives the simulator
                ledger = stack.simulator.ledger()
                lines = evidence.read_logs(
                    {"create": stack.create, "public": stack.webhook, "private": stack.steps}
                )
                told = evidence.by_sketch(lines)
                clock.say(
                    "auditing: the ledger joined to the sketches, every still and video from the bucket"
                )
                result = audit(
                    documents,
                    ledger["paid"],
                    asked,
                    stack.storage,
                    [f"app: {t} s {request}: {body}" for t, request, body in app.unexpected]
                    + evidence.unexpected(lines),
                    _balance_out(folder / "faults.jsonl"),
                    float(chosen["BALANCE_BREAKER_SECONDS"]),
                    told,
                )
            finally:
                found.close()
    except HarnessError as exc:
        clock.say(f"the run itself failed, so nothing can be said of the machine: {exc}")
        return 2
    finally:
        stack_log.close()
    wrong = set().union(*(check.sketches for check in result.checks))
    stories = evidence.write_stories(folder / "evidence", wrong, documents, result.joined, asked, told)
    _save(folder / "asks.json", [_ask_json(ask) for ask in asked])
    _save(folder / "ledger.json", ledger)
    _save(folder / "sketches.json", documents)
    _save(folder / "audit.json", _audit_json(result, settled, schedule, personality))
    _report(result, settled, folder, len(stories))
    print(result.final_line(), flush=True)
    return 0 if result.passed else 1


def _fault_phase(app: App, schedule: Plan, started: float, clock: Clock) -> None:
    """Until every sketch has been sent and the schedule has run out; how it goes, now and then."""
    end = started + schedule.fault_seconds
    report = started + PROGRESS_EVERY
    while not (app.sent() and time.monotonic() >= end):
        time.sleep(0.5)
        if time.monotonic() >= report:
            clock.say(app.progress())
            report += PROGRESS_EVERY


def _report(result: Audit, settled: Settle, folder: Path, stories: int) -> None:
    took = f"{settled.took:.1f} s" if settled.took is not None else f"not within {settled.bound:.0f} s"
    print(
        f"settled: {took} after the faults stopped (bound {settled.bound:.0f} s); "
        f"{settled.unfinished} sketches were unfinished then, the slowest took {settled.slowest:.1f} s "
        f"({settled.slowest_sketch})"
    )
    for check in result.checks:
        print(f"check {check.name}: {'ok' if check.passed else 'FAILED'} ({check.what})")
        for case in check.cases[:20]:
            print(f"    {case}")
        if len(check.cases) > 20:
            print(f"    ... {len(check.cases) - 20} more in audit.json")
    late = result.late_refusals
    print(
        f"creates refused for Novita's balance after it had been back longer than the breaker's time: "
        f"{len(late)}" + (f", the last {late[-1]:.0f} s after it came back" if late else "")
    )
    print(f"documented double payments: {len(result.documented)}")
    for repaid in result.documented:
        lost = f"{repaid.lost['endpoint']} {repaid.lost['task_id']}"
        print(f"    {repaid.sketch_id} {repaid.stage}, {lost}: {repaid.cause}")
    print("failed sketches by reason:")
    for reason, count in result.reasons.items():
        print(f"    {count:4d}  {reason}")
    if stories:
        print(f"the story of each sketch found wrong: {folder / 'evidence'} ({stories})")
    print(f"everything the run left: {folder}", flush=True)


def _balance_out(journal: Path) -> list[tuple[float, float]]:
    """When the balance was out, as the episodes were carried out (seconds into the run)."""
    episodes = [json.loads(line) for line in journal.read_text().splitlines()]
    return [(e["began"], e["ended"]) for e in episodes if e["kind"] == "balance_out"]


def _ask_json(ask: Ask) -> dict[str, Any]:
    return {k: v for k, v in asdict(ask).items() if k != "guest"} | {"guest": ask.guest.uid}


def _audit_json(result: Audit, settled: Settle, schedule: Plan, personality: str) -> dict[str, Any]:
    return {
        "final_line": result.final_line(),
        "passed": result.passed,
        "seed": schedule.seed,
        "personality": personality,
        "settle": asdict(settled),
        "figures": {
            k: getattr(result, k) for k in ("sketches", "complete", "failed", "stuck", "paid", "extra")
        },
        "documented": [asdict(repaid) for repaid in result.documented],
        "checks": [
            asdict(check) | {"passed": check.passed, "sketches": sorted(check.sketches)}
            for check in result.checks
        ],
        "reasons": result.reasons,
        "late_refusals": result.late_refusals,
        "rates": {"steady": STEADY, "episodes": {k: asdict(v) for k, v in EPISODES.items()}},
    }


def _save(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")

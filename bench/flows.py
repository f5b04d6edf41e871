"""Figures of whole sketches, through Pub/Sub and the simulator as they run locally: prompt to
stored video under each of the simulator's personalities, the 1,000-sketch backlog drained by the
sweep, and the Firestore calls a sketch costs."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.hot import log_time, parts_by_step, spread_parts
from bench.measure import TraceTail, busy_union, cpu_seconds, most_at_once, percentile, read_trace, say
from bench.stack import HTTP_TIMEOUT, SIMULATOR_DEFAULTS, Deployment, Stack
from devstack.pubsub import EMULATOR_PUSH_LOOPS
from devstack.stack import LOCAL_DEFAULTS, SWEEP_EVERY_SECONDS
from shared.core.tokens import SWEEP_HEADER
from shared.pipeline.recovery import PAGE_SIZE, PARALLEL, SWEEP_SECONDS
from shared.sketch.model import Sketch, Status

# How often the playground (devstack/playground) asks GET ?id= while a sketch is under way.
CLIENT_POLL_SECONDS = 1.0
_SIM = SIMULATOR_DEFAULTS
E2E_SETUP = (
    f"simulator: image {_SIM['image_delay']:g} s, video {_SIM['video_delay']:g} s, Seedream "
    f"{_SIM['seedream_delay']:g} s; RECOVERY_INTERVAL_SECONDS={LOCAL_DEFAULTS['RECOVERY_INTERVAL_SECONDS']}, "
    f"a sweep every {SWEEP_EVERY_SECONDS:g} s, GET ?id= every {CLIENT_POLL_SECONDS:g} s (the local stack)"
)
PERSONALITIES = ("guide", "reference")
CALLS = ("txt2img", "seedream", "kling", "task_result")
BACKLOG_GOAL = 180.0
CREATE_CLIENTS = 8


def wait_final(dep: Deployment, sketch_id: str, timeout: float) -> Sketch:
    deadline = time.monotonic() + timeout
    sketch = None
    while time.monotonic() < deadline:
        sketch = dep.sketch(sketch_id)
        if sketch is not None and sketch.status.is_final:
            return sketch
        time.sleep(0.05)
    raise TimeoutError(f"sketch {sketch_id} not final within {timeout:.0f} s; it is {sketch!r}")


def calls_since(stack: Stack, before: dict[str, int]) -> dict[str, int]:
    now = stack.sim_stats()["requests"]
    return {name: now[name] - before[name] for name in (*CALLS, "media")}


def settle(path: Path, quiet: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until nothing has been added to `path` for `quiet` seconds (every step has ended)."""
    size, still_since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = path.stat().st_size if path.exists() else 0
        if now != size:
            size, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet:
            return
        time.sleep(0.05)


# ----------------------------------------------------------------------------- prompt to video


@dataclass
class SketchRun:
    seconds: float  # the POST to completed_at
    calls: dict[str, int]
    refused: dict[str, int]  # first tries Novita refused for their form, by request
    # The still's arrival (guide: its webhook; reference: Seedream's answer) to the request to Kling.
    to_kling: float | None


@dataclass
class PersonalityResult:
    personality: str
    runs: list[SketchRun] = field(default_factory=list)


class Poller:
    """A client as the playground is: GET ?id= every second until the sketch is final."""

    def __init__(self, dep: Deployment, sketch_id: str) -> None:
        assert dep.create is not None
        self._url = dep.create.url
        self._id = sketch_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=HTTP_TIMEOUT) as http:
            while not self._stop.wait(CLIENT_POLL_SECONDS):
                answer = http.get(self._url, params={"id": self._id})
                if answer.status_code == 200 and answer.json().get("status") in ("complete", "failed"):
                    return


def _stages(
    dep: Deployment, done: Sketch, posted: float, personality: str
) -> tuple[float | None, dict[str, float]]:
    """Where the sketch's time went, from the functions' own JSON log lines."""
    hooks = {line.get("task_id"): log_time(line) for line in dep.log_lines("delivery queued", done.id)}
    # When the first request to Kling was sent: its answer's log time less the request's duration.
    kling = [
        log_time(line) - float(line["duration_ms"]) / 1000
        for line in dep.log_lines("Novita POST /v3/async/kling", done.id)
    ]
    drawn = [log_time(line) for line in dep.log_lines("Seedream drew the still", done.id)]
    still = hooks.get(done.image_task_id) if personality == "guide" else (drawn[0] if drawn else None)
    assert done.completed_at is not None
    end = done.completed_at.timestamp()
    stages: dict[str, float] = {}
    if still is not None and kling:
        stages["prompt to still"] = still - posted
        stages["still to Kling"] = kling[0] - still
        video = hooks.get(done.video_task_id)
        if video is not None:
            stages["Kling to video webhook"] = video - kling[0]
            stages["video webhook to stored"] = end - video
        else:
            stages["Kling to stored (recovery)"] = end - kling[0]
    return (kling[0] - still if still is not None and kling else None), stages


def prompt_to_video(stack: Stack, later: int) -> list[PersonalityResult]:
    """Under each personality, freshly started functions as the local stack runs them
    (devstack: RECOVERY_INTERVAL_SECONDS=3, the sweep every 3 s), a client polling GET ?id= every
    second as the playground does, and the simulator's default delays: the instance's first
    sketch (it meets the refused forms), then `later` more, one at a time."""
    results = []
    for personality in PERSONALITIES:
        stack.simulate(personality=personality)
        dep = stack.deploy(f"e2e-{personality}", env=dict(LOCAL_DEFAULTS), sweep_every=SWEEP_EVERY_SECONDS)
        result = PersonalityResult(personality)
        try:
            for n in range(1 + later):
                stack.wait_sim_idle()
                before = stack.sim_stats()["requests"]
                posted = time.time()
                sketch = dep.create_sketch(f"a walrus giving a TED talk about spoons, take {n}")
                with Poller(dep, sketch["id"]):
                    done = wait_final(dep, sketch["id"], 90)
                if done.status is not Status.COMPLETE:
                    raise RuntimeError(f"{personality} sketch ended {done.status}: {done.error_message}")
                stack.wait_sim_idle()
                time.sleep(0.3)  # a request on its way when the sketch completed is counted with it
                calls = calls_since(stack, before)
                refused = {
                    "txt2img": len(dep.log_lines("text to image refused", sketch["id"], dep.create)),
                    "kling": len(dep.log_lines("Kling refused the", sketch["id"])),
                }
                to_kling, stages = _stages(dep, done, posted, personality)
                assert done.completed_at is not None
                run = SketchRun(done.completed_at.timestamp() - posted, calls, refused, to_kling)
                result.runs.append(run)
                say(
                    f"  {personality} sketch {n + 1}{' (first of the instance)' if n == 0 else ''}: "
                    f"{run.seconds:.2f} s to stored; Novita calls {calls} (refused first tries {refused}); "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items())
                )
        finally:
            stack.retire(dep)
        results.append(result)
    stack.simulate()
    return results


# ------------------------------------------------------------------------------------- backlog


@dataclass
class BacklogResult:
    count: int
    setup: str
    settings: str
    seconds: float | None = None  # clock start to the last sketch stored; None: not drained
    complete: int = 0
    failed: int = 0
    sweeps: list[tuple[float, float, dict[str, Any]]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)  # the trace of the drain
    cpu: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)  # function processes that ended: exit codes

    @property
    def answered_sweeps(self) -> int:
        return sum("error" not in report for _, _, report in self.sweeps)


def _create_many(dep: Deployment, count: int) -> None:
    local = threading.local()

    def one(n: int) -> str:
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=HTTP_TIMEOUT)
        # One prompt for all: the simulator draws it (and animates it) once, so its encoding does not
        # take the functions' CPU on this machine; Novita's work is not on the instance either.
        return str(dep.create_sketch("a backlog of walruses", local.http)["id"])

    with ThreadPoolExecutor(CREATE_CLIENTS) as pool:
        list(pool.map(one, range(count)))


def backlog(stack: Stack, count: int, sweep_every: float, interval: float, timeout: float) -> BacklogResult:
    """`count` sketches whose stills are ready and whose webhooks never come, drained by the sweep
    (called every `sweep_every` s) with RECOVERY_INTERVAL_SECONDS=`interval`."""
    trace = stack.log_dir / "backlog-trace.jsonl"
    sim = {"drop_webhooks": True, "image_delay": 0.2, "task_result_delay": 0.2}
    stack.simulate(**sim)
    # create_sketch makes each sketch due for recovery at once, as if its webhook were an interval
    # late already, and may make the whole backlog in one day; the webhook (the sweep and the
    # steps) runs with `interval`.
    dep = stack.deploy(
        "backlog",
        env={"RECOVERY_INTERVAL_SECONDS": f"{interval:g}"},
        create_env={"RECOVERY_INTERVAL_SECONDS": "0", "MAX_SKETCHES_PER_DAY_TOTAL": str(count)},
        trace=trace,
    )
    result = BacklogResult(
        count,
        setup=(
            f"{count} sketches of one prompt, created through create_sketch ({CREATE_CLIENTS} clients "
            "at once; its RECOVERY_INTERVAL_SECONDS=0, so each is due for recovery at once), the "
            "simulator dropping every webhook; the clock starts once every text-to-image task has finished; "
            "a complete sketch's still and video are deleted from the bucket"
        ),
        settings=(
            f"RECOVERY_INTERVAL_SECONDS={interval:g}; the sweep (the private door's ?action=sweep, with "
            f"{SWEEP_HEADER}) called "
            f"every {sweep_every:g} s, or as soon as the previous one answered when it took longer; the "
            f"sweep's own settings (shared/pipeline/recovery.py): pages of {PAGE_SIZE}, {PARALLEL} "
            f"sketches at once, {SWEEP_SECONDS:g} s budget; simulator: task-result answers in "
            f"{sim['task_result_delay']:g} s, image {sim['image_delay']:g} s, video "
            f"{_SIM['video_delay']:g} s, webhooks dropped; Pub/Sub emulator: {EMULATOR_PUSH_LOOPS} pushes "
            "at a time"
        ),
    )
    try:
        t0 = time.monotonic()
        _create_many(dep, count)
        say(f"  {count} sketches created in {time.monotonic() - t0:.1f} s")
        stack.wait_sim_idle(300)
        pending = dep.count("image_pending")
        if pending != count:
            raise RuntimeError(f"{pending} of {count} sketches are image_pending before the clock")
        say(
            f"  every still is ready ({time.monotonic() - t0:.1f} s after the first create); the clock starts"
        )
        _drain(stack, dep, trace, result, sweep_every, timeout)
    finally:
        stack.retire(dep)
        stack.simulate()
    return result


def _drain(
    stack: Stack, dep: Deployment, trace: Path, result: BacklogResult, sweep_every: float, timeout: float
) -> None:
    tail = TraceTail(trace)  # from here on: the creates' lines are not the drain's
    pids = dep.pids()
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    calls0 = stack.sim_stats()["requests"]
    stopping = threading.Event()

    def sweeper() -> None:
        with httpx.Client(timeout=httpx.Timeout(150.0, connect=5.0)) as http:
            while not stopping.is_set():
                s0 = time.time()
                # A call that fails is followed by the next, as Cloud Scheduler's are.
                try:
                    answer = dep.sweep(http)
                    report = answer.json() if answer.status_code == 200 else {"status": answer.status_code}
                except httpx.HTTPError as exc:
                    report = {"error": repr(exc)}
                result.sweeps.append((s0, time.time(), report))
                stopping.wait(max(0.0, s0 + sweep_every - time.time()))

    result.started = time.time()
    thread = threading.Thread(target=sweeper, daemon=True)
    thread.start()
    stored: set[str] = set()
    objects: dict[str, list[str]] = {}  # what each sketch stored in the bucket, by its id
    last_look = time.monotonic()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            lines = tail.new()
            result.lines += lines
            for line in lines:
                if line["ev"] == "call" and line["fn"] == "upload" and not line["err"]:
                    objects.setdefault(line["object"].split("/")[1], []).append(line["object"])
            complete = {
                ln["sketch"]
                for ln in lines
                if ln["ev"] == "step" and ln["kind"] == "copy" and ln["outcome"] == "applied"
            }
            # A complete sketch's objects are read by nobody during the drain: deleted, as the other
            # figures delete theirs, so that the emulator's cost per upload stays that of a small
            # bucket (it rewrites its record of every object it holds on each one).
            dep.delete_objects([name for sketch in complete for name in objects.pop(sketch, [])])
            stored |= complete
            if len(stored) >= result.count:
                break
            if time.monotonic() - last_look >= 10:
                last_look = time.monotonic()
                result.failed = dep.count("failed")
                say(
                    f"  {time.time() - result.started:.0f} s: {len(stored)} stored, {result.failed} failed, "
                    f"{result.answered_sweeps} sweeps answered"
                )
                if len(stored) + result.failed >= result.count:
                    break
                result.ended = dep.ended()
                if result.ended:  # nothing brings a function back here: the drain is over
                    break
    finally:
        stopping.set()
        thread.join(160)
    result.cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    result.calls = calls_since(stack, calls0)
    settle(trace)
    result.lines += tail.new()
    copies = [
        ln
        for ln in result.lines
        if ln["ev"] == "step" and ln["kind"] == "copy" and ln["outcome"] == "applied"
    ]
    result.complete = dep.count("complete")
    result.failed = dep.count("failed")
    if result.complete == result.count and copies:
        result.seconds = max(ln["t1"] for ln in copies) - result.started


@dataclass
class Phase:
    name: str
    count: int
    first_start: float
    last_end: float
    median: float
    total: float
    waits: list[float]


def backlog_breakdown(result: BacklogResult) -> tuple[list[str], dict[str, float]]:
    """Where the drain's time went: the sweeps, the steps Pub/Sub pushed (and how long each waited
    for a push loop), and the CPU of every process."""
    t0 = result.started
    published: dict[tuple[str, str], float] = {}
    for line in result.lines:
        if line["ev"] == "publish" and not line["err"]:
            for step in line["steps"]:
                published.setdefault((step["kind"], step["sketch"]), line["t1"])
    steps = [ln for ln in result.lines if ln["ev"] == "step"]
    phases = []
    for kind in ("chain", "copy"):
        runs = [ln for ln in steps if ln["kind"] == kind]
        if not runs:
            continue
        firsts: dict[str, dict[str, Any]] = {}
        for ln in sorted(runs, key=lambda x: x["t0"]):
            firsts.setdefault(ln["sketch"], ln)
        waits = [ln["t0"] - published[(kind, s)] for s, ln in firsts.items() if (kind, s) in published]
        durations = [ln["t1"] - ln["t0"] for ln in runs]
        phases.append(
            Phase(
                kind,
                len(runs),
                min(ln["t0"] for ln in runs) - t0,
                max(ln["t1"] for ln in runs) - t0,
                statistics.median(durations),
                sum(durations),
                waits,
            )
        )
    spans = [(ln["t0"], ln["t1"]) for ln in steps]
    pushed = busy_union(spans)
    wall = (result.seconds or (max((s[1] for s in result.sweeps), default=t0) - t0)) or 1.0
    sweeps = [(s0, s1) for s0, s1, _ in result.sweeps if s0 - t0 <= wall]
    sweeping = busy_union(sweeps)
    last_chain = max((published[k] for k in published if k[0] == "chain"), default=t0) - t0
    examined = sum(int(r.get("examined", 0)) for _, _, r in result.sweeps)
    fs = Counter(ln["op"] for ln in result.lines if ln["ev"] == "fs")
    lines = [
        f"sweeps: {result.answered_sweeps} answered of {len(result.sweeps)} called, busy {sweeping:.1f} s "
        f"of the {wall:.1f} s; they examined "
        f"{examined} sketches in all (a sketch is examined again each time it is due) and had handed every "
        f"still's chain on {last_chain:.1f} s after the clock started",
    ]
    for phase in phases:
        waits = sorted(phase.waits)
        lines.append(
            f"{phase.name} steps: {phase.count} pushed between {phase.first_start:.1f} s and "
            f"{phase.last_end:.1f} s; each took {phase.median * 1000:.0f} ms (median), "
            f"{phase.total:.1f} s in all; waited for a push loop {percentile(waits, 50):.1f} s (median), "
            f"{percentile(waits, 99):.1f} s (p99), {max(waits):.1f} s (max) after it was published"
            if waits
            else f"{phase.name} steps: {phase.count}"
        )
    for kind in ("chain", "copy"):
        done = [ln for ln in steps if ln["kind"] == kind and ln["outcome"] == "applied"]
        if done:
            others = [ln for ln in result.lines if ln["ev"] != "step"]
            parts = parts_by_step(others + done)
            lines.append(f"a {kind} step that did the work (ms, median/worst): {spread_parts(parts)}")
    floor = sum(p.total for p in phases) / EMULATOR_PUSH_LOOPS
    lines.append(
        f"Pub/Sub pushes: at most {most_at_once(spans)} at once (the emulator's {EMULATOR_PUSH_LOOPS} "
        f"push loops); a step was being pushed {pushed:.1f} s of the {wall:.1f} s; all steps' own time "
        f"over {EMULATOR_PUSH_LOOPS} loops: {floor:.1f} s"
    )
    cores = os.cpu_count() or 1
    spent = sum(result.cpu.values())
    lines.append(
        "CPU during the drain: "
        + ", ".join(f"{name} {v:.1f} s" for name, v in sorted(result.cpu.items(), key=lambda x: -x[1]))
        + f"; {spent:.1f} s in all, {spent / cores:.1f} s of wall time on {cores} cores"
    )
    lines.append(
        f"calls: Firestore {dict(fs)} from the webhook; Novita {result.calls} "
        f"({sum(result.calls[c] for c in CALLS) / result.count:.1f} per sketch)"
    )
    figures = {"push floor": floor, "cpu floor": spent / cores}
    return lines, figures


# ------------------------------------------------------------------------------ Firestore work


@dataclass
class FirestoreWork:
    label: str
    per_sketch: list[dict[str, int]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        keys = sorted({k for counts in self.per_sketch for k in counts})
        return {k: int(statistics.median(c.get(k, 0) for c in self.per_sketch)) for k in keys}


def count_calls(lines: list[dict[str, Any]], roles: dict[int, str]) -> dict[str, int]:
    """Firestore calls, steps, deliveries and publishes in `lines` (one sketch's life); each
    Firestore call also by the process that made it (`roles`: a worker's pid to its name) and, when a
    step made it, by that step's kind."""
    counts: Counter[str] = Counter()
    steps = [ln for ln in lines if ln["ev"] == "step"]
    for line in lines:
        if line["ev"] == "fs":
            counts["calls"] += 1
            counts[f"by {roles.get(line['pid'], 'another process')}"] += 1
            inside = next((s for s in steps if _within(line, s)), None)
            if inside is not None:
                counts[f"in {inside['kind']}"] += 1
            if line["op"] == "get":
                counts["reads"] += 1
                counts[f"read {line['coll']}"] += 1
            elif line["op"] == "query":
                counts["queries"] += 1
            else:
                counts["commits"] += 1
                for write in line["writes"]:
                    counts[f"{write['kind']} write"] += 1
            if line["err"]:
                counts[f"refused: {line['err']}"] += 1
        elif line["ev"] == "step":
            counts[f"step {line['kind']}"] += 1
        elif line["ev"] == "delivery":
            counts[f"delivery {line['outcome']}"] += 1
        elif line["ev"] == "publish":
            counts["publishes"] += 1
    return dict(counts)


def _within(call: dict[str, Any], step: dict[str, Any]) -> bool:
    """Whether a traced call was made by `step` (its thread, during it)."""
    same = (call["pid"], call.get("tid")) == (step["pid"], step.get("tid"))
    return same and step["t0"] <= call["t0"] <= step["t1"]


def firestore_work(stack: Stack, sketches: int) -> list[FirestoreWork]:
    """Count the Firestore calls of both function processes from creation to `complete`, one sketch
    at a time, with Novita's webhooks delivered once, then twice at once."""
    trace = stack.log_dir / "firestore-trace.jsonl"
    trace.unlink(missing_ok=True)
    stack.simulate(image_delay=0.2, video_delay=0.3)
    dep = stack.deploy("firestore", trace=trace)
    assert dep.create is not None
    roles = {
        dep.create.worker_pid(): "create_sketch",
        dep.webhook.worker_pid(): "public door",
        dep.steps.worker_pid(): "private door",
    }
    results = []
    try:
        for label, changes in (
            ("one delivery per webhook", {"deliveries": 1, "concurrent_deliveries": False}),
            ("each webhook delivered twice at once", {"deliveries": 2, "concurrent_deliveries": True}),
        ):
            stack.configure(**changes)
            work = FirestoreWork(label)
            for n in range(sketches + 1):  # the first builds each instance's runtime: not counted
                settle(trace)
                trace.write_text("")
                sketch = dep.create_sketch(f"bench firestore work {n}")
                done = wait_final(dep, sketch["id"], 60)
                if done.status is not Status.COMPLETE:
                    raise RuntimeError(f"Firestore-work sketch ended {done.status}: {done.error_message}")
                stack.wait_sim_idle()
                settle(trace)
                if n:
                    work.per_sketch.append(count_calls(read_trace(trace), roles))
            results.append(work)
            say(f"  Firestore calls, {label}: {work.summary()}")
    finally:
        stack.retire(dep)
        stack.simulate()
    return results

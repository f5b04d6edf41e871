"""Figures of one request path each, with the yardstick each is held to, taken in the same run:
cold start (and what each function imports), a webhook delivery's answer, the chain step, 32 chain
steps at once, the copy of a 50 MB video, and the chain step under the profiler.

Steps are pushed straight to the private door's `?action=step` with the body Pub/Sub would send
(signed as the functions sign them), so that the emulator's own push loop is not in these figures.
"""

from __future__ import annotations

import bisect
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.measure import TraceTail, Watch, cpu_seconds, listen_overflows, p99, say
from bench.stack import (
    API_KEY,
    BENCH,
    HTTP_TIMEOUT,
    SHIPPED,
    WORKER,
    Deployment,
    Stack,
    image_success,
    kling_fields,
    shipped_env,
)
from bench.stills import BIG_NAME, TYPICAL_NAME, VIDEO_BYTES, VIDEO_NAME
from devstack.functions import ROOT, FunctionServer
from devstack.processes import free_port, wait_until
from shared.media.still import inspect_still
from shared.novita.client import KLING_I2V_PATH
from shared.pipeline.queue import Step
from shared.sketch.model import Sketch, Status, StepKind

# The first chains of an instance import Pillow, open connections and warm the emulator's JIT.
CHAIN_WARMUPS = 3
LOAD_CONCURRENCY = 32
LOAD_SINGLES = 3  # sequential single steps per run; their median is the run's single time
DELIVERIES_PER_RUN = 20
SLOW_RATE = 2_000_000  # bytes per second: the slow media host of the delivery figure
DELIVERY_GOAL = 0.5
# Between two runs of deliveries: how long the media host must have been idle (seconds).
DRAIN_QUIET = 1.0

# The functions whose imports the cold start breaks down, by target (novita_webhook as its private
# door; the others do not read WEBHOOK_DOOR).
IMPORTED = {
    "bare": BENCH / "bare" / "main.py",
    "create_sketch": ROOT / "functions" / "create_sketch" / "main.py",
    "novita_webhook": ROOT / "functions" / "novita_webhook" / "main.py",
}
# A line of `python -X importtime`: the module's own microseconds, its cumulative ones, its name.
IMPORT_TIME = re.compile(r"^import time:\s*(\d+) \|\s*\d+ \|\s*([\w.]+)$", re.MULTILINE)

Send = Callable[[httpx.Client], httpx.Response]
Check = Callable[[httpx.Response], bool]
Case = tuple[str, FunctionServer, Send, Check]


def outcome(response: httpx.Response) -> str | None:
    try:
        return str(response.json().get("outcome")) if response.status_code == 200 else None
    except ValueError:
        return None


def applied(response: httpx.Response) -> bool:
    return outcome(response) == "applied"


def log_time(line: dict[str, Any]) -> float:
    """A JSON log line's own timestamp, as epoch seconds."""
    return datetime.fromisoformat(line["time"]).timestamp()


def must(sketch: Sketch | None, status: Status, what: str) -> Sketch:
    if sketch is None or sketch.status is not status:
        found = None if sketch is None else f"{sketch.status} ({sketch.error_message})"
        raise RuntimeError(f"after {what} the sketch is {found}, not {status}")
    return sketch


# ---------------------------------------------------------------------------------- cold start


def _first_answer(proc: FunctionServer, send: Send, ok: Check) -> float:
    """Seconds from just before the process was spawned to the first answer `ok` accepts."""
    t0 = proc.launch()
    deadline = t0 + 120
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=1.0)) as client:
        while time.perf_counter() < deadline:
            if proc.process is not None and proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}; see {proc.log_path}")
            try:
                response = send(client)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
                time.sleep(0.005)  # not listening yet
                continue
            elapsed = time.perf_counter() - t0
            if not ok(response):
                raise RuntimeError(f"cold start: first answer {response.status_code}: {response.text[:300]}")
            return elapsed
    raise TimeoutError(f"no answer from {proc.name} within 120 s")


def _cold_cases(stack: Stack, cold: Deployment, sketch: Sketch) -> list[Case]:
    """The cold start's processes, in the order each run starts them, each with its first request
    and the answer that request must get. The bare function starts first and last: a process start
    is noisy, and the machine's state drifts while the others start."""
    logs = stack.log_dir / "cold"

    def server(name: str, target: str, env: dict[str, str], source: Path | None = None) -> FunctionServer:
        port = free_port()
        log = logs / f"{name.replace(' ', '-')}-{port}.log"
        return FunctionServer(
            target, shipped_env(env), log, port=port, source=source, pythonpath=[SHIPPED], label=name
        )

    bare = server("bare", "bare", cold.env, BENCH / "bare" / "main.py")
    create = server("create_sketch", "create_sketch", cold.env)
    private = server("private door", "novita_webhook", cold.door_env("private"))
    public = server("public door", "novita_webhook", cold.door_env("public"))
    step = Step(kind=StepKind.CHAIN, sketch_id=sketch.id)
    assert sketch.image_task_id is not None
    event = image_success(sketch.image_task_id, stack.media(TYPICAL_NAME))
    yardstick: Case = (
        "bare",
        bare,
        lambda c: c.get(bare.url),
        lambda r: r.status_code == 200 and r.text == "ok",
    )
    return [
        yardstick,
        (
            "create_sketch",
            create,
            lambda c: c.get(create.url, params={"id": sketch.id}),
            lambda r: r.status_code == 200 and r.json().get("id") == sketch.id,
        ),
        # The sketch is read and found to wait on its still: the chain step has nothing to do.
        (
            "private door",
            private,
            lambda c: cold.push(step, c, url=private.url)[1],
            lambda r: outcome(r) == "duplicate",
        ),
        # The sketch is read, its check claimed and handed on to the queue.
        (
            "public door",
            public,
            lambda c: cold.deliver(sketch.id, event, c, url=public.url)[1],
            lambda r: outcome(r) == "queued",
        ),
        yardstick,
    ]


def import_times(env: dict[str, str], target: str, source: Path) -> dict[str, float]:
    """Seconds each top-level package takes to import when functions-framework loads `target` from
    `source` in a process like the cold start's: its modules' own times (`python -X importtime`),
    whoever imported them."""
    load = f"from functions_framework import create_app; create_app({target!r}, {str(source)!r})"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", load],
        env={**os.environ, **shipped_env(env), "PYTHONPATH": os.pathsep.join(map(str, (SHIPPED, ROOT)))},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seconds: dict[str, float] = {}
    for own, module in IMPORT_TIME.findall(done.stderr):
        package = module.partition(".")[0]
        seconds[package] = seconds.get(package, 0.0) + int(own) / 1e6
    return seconds


@dataclass
class ColdResult:
    # Seconds from spawning each process to its first answer, one per run, by process.
    first_answer: dict[str, list[float]] = field(default_factory=dict)
    # Seconds each package takes to import, by function (import_times).
    imports: dict[str, dict[str, float]] = field(default_factory=dict)


def cold_start(stack: Stack, runs: int) -> ColdResult:
    """Process start to the first answer that reads Firestore: `GET ?id=` of a sketch
    (create_sketch), a pushed chain step for one (the private door: the sketch is read and found to
    wait on its still, so the step is a duplicate), and the first delivery of its task's webhook
    (the public door: the sketch is read, its check claimed and published). The yardstick is a bare
    function's first answer, taken twice a run. The deployment's topics have no subscription, so
    that the check each delivery publishes sets nothing running while the next process starts.
    Every process imports only what deploy.sh ships (bench/deployed). Also: each function's
    imports, by package."""
    stack.quiet()
    result = ColdResult()
    cold = stack.deploy("cold", create=False, pushes=False)
    try:
        for run in range(runs):
            sketch = cold.put_sketch(
                f"bench cold start {run}", Status.IMAGE_PENDING, image_task_id=f"cold-{run}"
            )
            times = []
            for name, proc, send, ok in _cold_cases(stack, cold, sketch):
                try:
                    seconds = _first_answer(proc, send, ok)
                finally:
                    proc.stop()
                result.first_answer.setdefault(name, []).append(seconds)
                times.append(f"{name} {seconds * 1000:.0f} ms")
            say(f"  cold start run {run + 1}: {', '.join(times)}")
        for target, source in IMPORTED.items():
            result.imports[target] = import_times(cold.door_env("private"), target, source)
    finally:
        stack.retire(cold)
    return result


# ------------------------------------------------------------------------------------ delivery


@dataclass
class DeliveryResult:
    latencies: list[float] = field(default_factory=list)
    run_p99: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    still_fetch: float = 0.0  # plain httpx fetching the still from the slow host
    to_kling: list[float] = field(default_factory=list)  # a delivery's answer to its chain's Kling request


def delivery(stack: Stack, runs: int) -> DeliveryResult:
    """Image-success deliveries whose still is 9.9 MB on a host serving 2 MB/s, answered one after
    the other while the chain steps of the earlier ones fetch that still in the background.

    The webhook runs in Novita's test mode (NOVITA_WEBHOOK_TEST_MODE): a delivery's own result is
    carried in its step and applied, so the chain really fetches the slow still named in the
    delivery (otherwise task-result's answer, the simulator's own fast link, would be fetched).
    A delivery's handling is the same in both modes: check the token, publish one step, answer.
    """
    stack.quiet()
    result = DeliveryResult()
    dep = stack.deploy("delivery", env={"NOVITA_WEBHOOK_TEST_MODE": "TASK_STATUS_SUCCEED"}, create=False)
    slow = stack.media(BIG_NAME, rate=SLOW_RATE)
    try:
        t0 = time.perf_counter()
        fetched = len(stack.http.get(slow).content)
        result.still_fetch = time.perf_counter() - t0
        say(f"  the still alone: {fetched / 1e6:.1f} MB from the slow host in {result.still_fetch:.2f} s")

        def one_run(count: int, label: str) -> tuple[list[float], Sketch, float]:
            sketches = [
                dep.put_sketch(
                    f"bench delivery {label}/{i}",
                    Status.IMAGE_PENDING,
                    image_task_id=f"bench-{uuid.uuid4().hex}",
                )
                for i in range(count)
            ]
            latencies = []
            answered = 0.0
            for sketch in sketches:
                assert sketch.image_task_id is not None
                elapsed, response = dep.deliver(sketch.id, image_success(sketch.image_task_id, slow))
                if outcome(response) != "queued":
                    result.errors.append(f"{response.status_code} {response.text[:120]}")
                latencies.append(elapsed)
                answered = answered or time.time()
            return latencies, sketches[0], answered

        def drain() -> None:
            dep.purge()
            # A chain step Pub/Sub pushed just before the purge starts its download within this;
            # one that got its still sends it to Kling within it too.
            stack.wait_media_idle(quiet=DRAIN_QUIET)
            stack.wait_sim_idle()

        one_run(3, "warm-up")  # the instance's first requests build its runtime
        drain()
        for run in range(runs):
            latencies, head, answered = one_run(DELIVERIES_PER_RUN, str(run))

            # The step logs that Kling took the still just after it wrote the sketch down.
            def kling_asked(sketch_id: str = head.id) -> bool:
                return bool(dep.log_lines("image-to-video task started", sketch_id))

            wait_until(kling_asked, 60, "the first delivery's chain")
            kling = dep.log_lines("image-to-video task started", head.id)
            result.to_kling.append(log_time(kling[0]) - answered)
            drain()
            result.latencies += latencies
            result.run_p99.append(p99(latencies))
            say(
                f"  delivery run {run + 1}: p50 {statistics.median(latencies) * 1000:.1f} ms, "
                f"p99 {result.run_p99[-1] * 1000:.1f} ms of {len(latencies)}; the first one's chain "
                f"asked Kling {result.to_kling[-1]:.2f} s after its delivery was answered"
            )
    finally:
        stack.retire(dep)
    return result


# --------------------------------------------------------------------------------------- chain


@dataclass
class ChainResult:
    chain: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    idle_kb: list[int] = field(default_factory=list)
    grown_mb: list[float] = field(default_factory=list)
    exact_peak: bool = True
    first: tuple[float, float] = (0.0, 0.0)  # the instance's first chain: seconds, RSS growth (MB)
    parts: list[dict[str, float]] = field(default_factory=list)  # the step's, from its trace
    baseline_parts: list[dict[str, float]] = field(default_factory=list)


# The parts of a step, as bench/instrument names them, in the order they happen.
STEP_PARTS = {
    "fetch_media": "download",
    "inspect_still": "check",
    "upload": "bucket",
    "check": "breaker read",
    "start_image_to_video": "Kling",
}


def step_parts(lines: list[dict[str, Any]], total: float) -> dict[str, float]:
    """Seconds of each part of one step, from its trace lines: the named parts, the Firestore calls
    made outside them, and the rest (the function's own work and the push's round trip)."""
    parts = dict.fromkeys(STEP_PARTS.values(), 0.0)
    spans = []
    for line in lines:
        if line["ev"] == "call" and line["fn"] in STEP_PARTS:
            parts[STEP_PARTS[line["fn"]]] += line["t1"] - line["t0"]
            spans.append((line["t0"], line["t1"]))
    firestore = [ln for ln in lines if ln["ev"] == "fs"]
    parts["Firestore"] = sum(
        ln["t1"] - ln["t0"] for ln in firestore if not any(a <= ln["t0"] and ln["t1"] <= b for a, b in spans)
    )
    parts["Firestore calls"] = len(firestore)
    parts["rest"] = total - sum(v for k, v in parts.items() if k != "Firestore calls")
    return parts


def parts_by_step(lines: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The parts of every step in `lines`, each from the lines of its own thread and time span."""
    by_thread: dict[tuple[int, int | None], list[dict[str, Any]]] = {}
    for line in lines:
        if line["ev"] != "step":
            by_thread.setdefault((line["pid"], line.get("tid")), []).append(line)
    starts = {}
    for key, own in by_thread.items():
        own.sort(key=lambda ln: ln["t0"])
        starts[key] = [ln["t0"] for ln in own]
    found = []
    for step in (ln for ln in lines if ln["ev"] == "step"):
        key = (step["pid"], step.get("tid"))
        own, times = by_thread.get(key, []), starts.get(key, [])
        inside = own[bisect.bisect_left(times, step["t0"]) : bisect.bisect_right(times, step["t1"])]
        found.append(step_parts(inside, step["t1"] - step["t0"]))
    return found


def spread_parts(found: list[dict[str, float]]) -> str:
    """Median and worst of each part over many steps, in ms."""
    names = [k for k in found[0] if k != "Firestore calls" and any(p[k] for p in found)]
    return ", ".join(
        f"{k} {statistics.median(p[k] for p in found) * 1000:.0f}/{max(p[k] for p in found) * 1000:.0f}"
        for k in names
    )


def describe_parts(parts: dict[str, float]) -> str:
    return ", ".join(
        f"{name} {int(v)}" if name == "Firestore calls" else f"{name} {v * 1000:.0f}"
        for name, v in parts.items()
    )


def plain_chain(
    stack: Stack, dep: Deployment, client: httpx.Client, sketch: Sketch, still: str
) -> tuple[float, dict[str, float]]:
    """The yardstick: the same work with plain httpx and nothing else. Download the still from the
    same URL, check it as every still must be checked (`inspect_still`: the header, then a JPEG
    decoded at an eighth of its size to find a truncated one), upload it to the storage emulator in
    the same chunks, post the same Kling form to the same endpoint. Its seconds, and each part's."""
    t0 = time.perf_counter()
    data = client.get(stack.media(still)).content
    t1 = time.perf_counter()
    inspect_still(data)
    t_check = time.perf_counter()
    name = f"yardstick/{uuid.uuid4().hex}/still.jpg"
    dep.upload(client, name, data, "image/jpeg")
    t2 = time.perf_counter()
    response = client.post(
        stack.simulator.url + KLING_I2V_PATH,
        headers={"Authorization": f"Bearer {API_KEY}"},
        data=kling_fields(sketch, dep.webhook_url(sketch.id, "video")),
        files={"image": ("still.jpg", data, "image/jpeg")},
    )
    t3 = time.perf_counter()
    if response.status_code != 200 or not response.json().get("task_id"):
        raise RuntimeError(f"yardstick Kling upload answered {response.status_code}: {response.text[:300]}")
    dep.delete_objects([name])
    return t3 - t0, {"download": t1 - t0, "check": t_check - t1, "bucket": t2 - t_check, "Kling": t3 - t2}


def run_chain(stack: Stack, dep: Deployment, sketch: Sketch) -> tuple[float, Watch, dict[str, float]]:
    """Push the chain step of `sketch` (its still on the media host); seconds to the answer, the
    worker's memory and CPU around it, and its parts (from the deployment's trace, if it has one)."""
    stack.wait_sim_idle()
    tail = TraceTail(dep.trace) if dep.trace is not None else None
    with Watch(dep.steps.worker_pid()) as watch:
        elapsed, response = dep.push(Step(kind=StepKind.CHAIN, sketch_id=sketch.id))
    if not applied(response):
        raise RuntimeError(f"chain step answered {response.status_code}: {response.text[:300]}")
    done = must(dep.sketch(sketch.id), Status.VIDEO_PENDING, "the chain")
    if done.image_object is None or dep.stored_object(done.image_object) is None:
        raise RuntimeError("the chain did not store the still in the bucket")
    dep.delete_objects([done.image_object])
    parts = step_parts(tail.new(), elapsed) if tail is not None else {}
    return elapsed, watch, parts


def chain(stack: Stack, main: Deployment, runs: int) -> ChainResult:
    stack.quiet()
    result = ChainResult()
    with httpx.Client(timeout=HTTP_TIMEOUT) as plain:
        # A check first builds the instance's runtime and a step's clients (Novita's, the media
        # host's, the bucket's; a duplicate step builds none), so that the first chain's growth
        # below is the chain's own (Pillow, the first big buffers).
        init = main.put_sketch("bench chain runtime", Status.IMAGE_PENDING, image_task_id="bench-init")
        main.push(Step(kind=StepKind.CHECK, sketch_id=init.id))
        time.sleep(0.2)
        for n in range(CHAIN_WARMUPS):
            sketch = main.image_complete(f"bench chain warm-up {n}", stack.media(BIG_NAME))
            elapsed, watch, _ = run_chain(stack, main, sketch)
            if n == 0:
                result.first = (elapsed, watch.grown_mb)
            plain_chain(stack, main, plain, sketch, BIG_NAME)
        for run in range(runs):
            sketch = main.image_complete(f"bench chain {run}", stack.media(BIG_NAME))
            # The yardstick just before and just after the step: it is noisy, and the machine's
            # state drifts between runs.
            stack.wait_sim_idle()
            bases = [plain_chain(stack, main, plain, sketch, BIG_NAME)]
            time.sleep(0.2)
            elapsed, watch, parts = run_chain(stack, main, sketch)
            stack.wait_sim_idle()
            bases.append(plain_chain(stack, main, plain, sketch, BIG_NAME))
            for base, base_parts in bases:
                result.baseline.append(base)
                result.baseline_parts.append(base_parts)
            result.chain.append(elapsed)
            result.parts.append(parts)
            result.idle_kb.append(watch.idle_kb)
            result.grown_mb.append(watch.grown_mb)
            result.exact_peak &= watch.exact
            say(
                f"  chain run {run + 1}: step {elapsed * 1000:.0f} ms (worker CPU {watch.cpu * 1000:.0f} ms; "
                f"ms: {describe_parts(parts)}), "
                f"plain httpx {bases[0][0] * 1000:.0f}, {bases[1][0] * 1000:.0f} ms "
                f"(ms: {describe_parts(bases[-1][1])}); worker RSS idle {watch.idle_kb / 1024:.1f} MB, "
                f"peak +{watch.grown_mb:.1f} MB"
            )
    return result


# ---------------------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    single: list[float] = field(default_factory=list)  # per run: median of LOAD_SINGLES steps
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    grown_mb: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process -> CPU seconds per run
    overflows: list[int] = field(default_factory=list)  # connections dropped by a full listen queue
    # The least wall time the CPU work of the crowd needs on this machine: all processes' CPU over
    # its cores, or the private door worker's CPU (one core: Python's GIL), whichever is more.
    cpu_floor: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)  # every crowd step's parts, all runs


def _crowd(dep: Deployment, sketches: list[Sketch]) -> tuple[list[float], list[str], float]:
    """Push a chain step for every sketch at once, one client (connection) each: latencies,
    errors, and the wall time from the start signal to the last answer."""
    clients = [httpx.Client(timeout=HTTP_TIMEOUT) for _ in sketches]  # built before the clock starts
    barrier = threading.Barrier(len(sketches) + 1)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(client: httpx.Client, sketch: Sketch) -> None:
        barrier.wait()
        try:
            elapsed, response = dep.push(Step(kind=StepKind.CHAIN, sketch_id=sketch.id), client)
            error = None if applied(response) else f"{response.status_code} {response.text[:120]}"
        except httpx.HTTPError as exc:
            elapsed, error = float("nan"), repr(exc)
        with lock:
            latencies.append(elapsed)
            if error:
                errors.append(f"concurrent: {error}")

    threads = [threading.Thread(target=one, args=pair) for pair in zip(clients, sketches, strict=True)]
    for thread in threads:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    for client in clients:
        client.close()
    return latencies, errors, wall


def load(stack: Stack, main: Deployment, runs: int, kling_latency: float) -> LoadResult:
    """`kling_latency`: seconds Novita takes to answer the image-to-video request."""
    stack.quiet(kling_accept_delay=kling_latency)
    result = LoadResult()
    for run in range(runs):
        sketches = [
            main.image_complete(f"bench load {run}/{i}", stack.media(TYPICAL_NAME))
            for i in range(LOAD_SINGLES + LOAD_CONCURRENCY)
        ]
        stack.wait_sim_idle()
        kling_before = stack.sim_stats()["tasks_created"]["kling"]
        singles = []
        for sketch in sketches[:LOAD_SINGLES]:
            elapsed, response = main.push(Step(kind=StepKind.CHAIN, sketch_id=sketch.id))
            if not applied(response):
                result.errors.append(f"single: {response.status_code} {response.text[:120]}")
            singles.append(elapsed)
        others = {name: pid for name, pid in main.pids().items() if name != WORKER}
        cpu0 = {name: cpu_seconds(pid) for name, pid in others.items()}
        overflows = listen_overflows()
        tail = TraceTail(main.trace) if main.trace is not None else None
        with Watch(main.steps.worker_pid()) as watch:
            latencies, errors, wall = _crowd(main, sketches[LOAD_SINGLES:])
        result.overflows.append(listen_overflows() - overflows)
        if tail is not None:
            time.sleep(0.1)
            result.parts += parts_by_step(tail.new())
        for name, pid in others.items():
            result.cpu.setdefault(name, []).append(cpu_seconds(pid) - cpu0[name])
        result.cpu.setdefault(WORKER, []).append(watch.cpu)
        spent = sum(v[-1] for v in result.cpu.values())
        result.cpu_floor.append(max(spent / (os.cpu_count() or 1), watch.cpu))
        result.errors += errors
        after = [main.sketch(s.id) or s for s in sketches]
        wrong = [s.id for s in after if s.status is not Status.VIDEO_PENDING]
        if wrong:
            result.errors.append(f"{len(wrong)} sketches not video_pending")
        main.delete_objects([s.image_object for s in after if s.image_object])
        stack.wait_sim_idle()
        kling = stack.sim_stats()["tasks_created"]["kling"] - kling_before
        if kling != len(sketches):
            result.errors.append(f"Kling asked {kling} times for {len(sketches)} sketches")
        finite = [x for x in latencies if x == x]
        result.single.append(statistics.median(singles))
        result.p50.append(statistics.median(finite))
        result.p99.append(p99(finite) if len(finite) > 1 else float("nan"))
        result.wall.append(wall)
        result.grown_mb.append(watch.grown_mb)
        say(
            f"  load run {run + 1}: single {result.single[-1] * 1000:.0f} ms; {LOAD_CONCURRENCY} at once: "
            f"p50 {result.p50[-1] * 1000:.0f} ms, p99 {result.p99[-1] * 1000:.0f} ms, all answered in "
            f"{wall * 1000:.0f} ms; private door worker CPU {watch.cpu * 1000:.0f} ms, "
            f"RSS +{watch.grown_mb:.1f} MB; listen-queue drops {result.overflows[-1]}; "
            f"errors so far {len(result.errors)}"
        )
    stack.quiet()
    return result


# ---------------------------------------------------------------------------------------- copy


@dataclass
class CopyResult:
    copy: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    grown_mb: list[float] = field(default_factory=list)
    idle_kb: list[int] = field(default_factory=list)
    first: tuple[float, float] = (0.0, 0.0)  # the instance's first copy: seconds, RSS growth (MB)


def plain_copy(stack: Stack, dep: Deployment, client: httpx.Client) -> float:
    """The yardstick: download the whole video with httpx, then upload it in the project's chunks."""
    name = f"yardstick/{uuid.uuid4().hex}/video.mp4"
    t0 = time.perf_counter()
    data = client.get(stack.media(VIDEO_NAME)).content
    dep.upload(client, name, data, "video/mp4")
    elapsed = time.perf_counter() - t0
    del data
    dep.delete_objects([name])
    return elapsed


def copy(stack: Stack, runs: int) -> CopyResult:
    """The `copy` step of a 50 MB video from the media host into the bucket, on an instance of its
    own (its first copy is measured on a heap no chain has grown)."""
    stack.quiet()
    result = CopyResult()
    dep = stack.deploy("copy", create=False)
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT) as plain:
            init = dep.put_sketch("bench copy runtime", Status.IMAGE_PENDING, image_task_id="bench-init")
            # Builds the runtime and a step's clients, as the chain's warm-up does.
            dep.push(Step(kind=StepKind.CHECK, sketch_id=init.id))
            for n in range(runs + 1):
                if n % 2:
                    result.baseline.append(plain_copy(stack, dep, plain))
                sketch = dep.video_ready(f"bench copy {n}", stack.media(VIDEO_NAME))
                with Watch(dep.steps.worker_pid()) as watch:
                    elapsed, response = dep.push(Step(kind=StepKind.COPY, sketch_id=sketch.id))
                if not applied(response):
                    raise RuntimeError(f"copy step answered {response.status_code}: {response.text[:300]}")
                done = must(dep.sketch(sketch.id), Status.COMPLETE, "the copy")
                assert done.video_object is not None
                stored = dep.stored_object(done.video_object) or {}
                if int(str(stored.get("size", 0))) != VIDEO_BYTES:
                    raise RuntimeError(f"the stored video is {stored.get('size')} bytes, not {VIDEO_BYTES}")
                dep.delete_objects([done.video_object])
                if not n % 2:
                    result.baseline.append(plain_copy(stack, dep, plain))
                if n == 0:
                    result.first = (elapsed, watch.grown_mb)
                else:
                    result.copy.append(elapsed)
                    result.grown_mb.append(watch.grown_mb)
                    result.idle_kb.append(watch.idle_kb)
                say(
                    f"  copy {'(first) ' if n == 0 else ''}{n}: step {elapsed * 1000:.0f} ms "
                    f"(worker CPU {watch.cpu * 1000:.0f} ms), "
                    f"plain httpx {result.baseline[-1] * 1000:.0f} ms; "
                    f"worker RSS idle {watch.idle_kb / 1024:.1f} MB, peak +{watch.grown_mb:.1f} MB"
                )
    finally:
        stack.retire(dep)
    return result


# ------------------------------------------------------------------------------------- profile


def profile(stack: Stack, chains: int, top: int) -> str:
    """Chain steps (big still, typical still) in a webhook process under pyinstrument."""
    stack.quiet()
    out = stack.log_dir / "profiles"
    dep = stack.deploy(
        "profile",
        env={"BENCH_PROFILE_DIR": str(out)},
        create=False,
        steps_source=BENCH / "profiled" / "main.py",
    )
    texts = []
    try:
        for n in range(CHAIN_WARMUPS):
            run_chain(stack, dep, dep.image_complete(f"bench profile warm-up {n}", stack.media(BIG_NAME)))
        for still, count in ((BIG_NAME, chains), (TYPICAL_NAME, 2 * chains)):
            folder = out / still.partition(".")[0]
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                old.unlink()
            times = []
            for n in range(count):
                sketch = dep.image_complete(f"bench profile {n}", stack.media(still))
                headers = {"X-Bench-Profile": "1", "X-Bench-Profile-Dir": still.partition(".")[0]}
                elapsed, response = dep.push(Step(kind=StepKind.CHAIN, sketch_id=sketch.id), headers=headers)
                if not applied(response):
                    raise RuntimeError(
                        f"profiled chain answered {response.status_code}: {response.text[:99]}"
                    )
                times.append(elapsed)
            texts.append(
                f"--- {count} chain steps of the {still} still, median "
                f"{statistics.median(times) * 1000:.0f} ms under the profiler\n"
                + _render(folder, top, tree=still == BIG_NAME)
            )
    finally:
        stack.retire(dep)
    return "\n\n".join(texts)


def _render(folder: Path, top: int, tree: bool) -> str:
    from pyinstrument.renderers import ConsoleRenderer
    from pyinstrument.session import Session

    sessions = sorted(folder.glob("*.pyisession"))
    if not sessions:
        return "(no profile was saved)"
    combined = Session.load(str(sessions[0]))
    for path in sessions[1:]:
        combined = Session.combine(combined, Session.load(str(path)))
    per = len(sessions)
    head = (
        f"wall {combined.duration / per * 1000:.0f} ms, CPU {combined.cpu_time / per * 1000:.0f} ms "
        "per step (worker thread)"
    )
    flat = ConsoleRenderer(flat=True, time="percent_of_total", flat_time="self", unicode=False, color=False)
    flat_lines = [ln for ln in flat.render(combined).splitlines() if "%" in ln]
    text = head + "\nself time, % of wall:\n" + "\n".join(flat_lines[:top])
    if tree:  # the tree of the median step (a combined tree splits by worker thread)
        loaded = sorted((Session.load(str(p)) for p in sessions), key=lambda x: x.duration)
        median = loaded[len(loaded) // 2]
        renderer = ConsoleRenderer(time="percent_of_total", unicode=False, color=False)
        tree_lines = [ln for ln in renderer.render(median).splitlines() if "%" in ln]
        text += f"\ncall tree of the median step ({median.duration * 1000:.0f} ms):\n"
        text += "\n".join(tree_lines[: top * 2])
    return text

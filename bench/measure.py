"""The measurements: each figure and the limit it is held to, taken in the same run."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.stack import API_KEY, BENCH, HTTP_TIMEOUT, KLING_PATH, Stack, function_server, image_success
from bench.stills import BIG_NAME, TYPICAL_NAME
from devstack.functions import FunctionServer
from devstack.processes import free_port

JSON = {"Content-Type": "application/json"}
CHAIN_WARMUPS = 3  # the first chains of an instance import Pillow, open connections, warm the emulator's JIT
LOAD_CONCURRENCY = 32
LOAD_SINGLES = 3  # sequential single deliveries per run; their median is the run's single time
TICK = os.sysconf("SC_CLK_TCK")

Send = Callable[[httpx.Client], httpx.Response]
Check = Callable[[httpx.Response], bool]


def say(text: str) -> None:
    print(text, flush=True)


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (other work on the machine makes every figure noisy)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


# ------------------------------------------------------------------------------ memory and CPU


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of `pid`, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm"):
            values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets)."""
    lines = [
        ln.split() for ln in Path("/proc/net/netstat").read_text().splitlines() if ln.startswith("TcpExt:")
    ]
    return int(dict(zip(lines[0], lines[1], strict=True)).get("ListenOverflows", 0))


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Samples VmRSS of `pid` every `interval` s in a thread; `.peak` is the maximum seen (kB)."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status(self.pid)["VmRSS"])


class Watch:
    """Idle RSS, peak RSS and CPU time of a process around a block. The peak is VmHWM after the
    kernel reset it (exact, and nothing runs beside the block); only where the reset is refused
    does a thread sample VmRSS every 2 ms instead."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._sampler: RssSampler | None = None

    def __enter__(self) -> Watch:
        self.exact = reset_peak(self.pid)
        self.idle_kb = proc_status(self.pid)["VmRSS"]
        self._cpu0 = cpu_seconds(self.pid)
        if not self.exact:
            self._sampler = RssSampler(self.pid).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        if self._sampler is not None:
            self._sampler.__exit__()
            self.peak_kb = self._sampler.peak
        else:
            self.peak_kb = proc_status(self.pid)["VmHWM"]
        self.peak_kb = max(self.peak_kb, self.idle_kb)  # the reset and the idle reading are µs apart

    @property
    def grown_mb(self) -> float:
        return (self.peak_kb - self.idle_kb) / 1024


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


def _cold_cases(stack: Stack, sid: str, run: int) -> list[tuple[str, FunctionServer, Send, Check]]:
    assert stack.webhook is not None
    env = stack.env(stack.webhook.port)
    foreign = image_success(f"foreign-task-{run}", stack.media(TYPICAL_NAME))
    bare = function_server("bare", env, stack.log_dir, source=BENCH / "bare" / "main.py")
    create = function_server("create_sketch", env, stack.log_dir)
    hook = function_server("novita_webhook", env, stack.log_dir)
    return [
        ("bare", bare, lambda c: c.get(bare.url), lambda r: r.status_code == 200 and r.text == "ok"),
        (
            "create_sketch",
            create,
            lambda c: c.get(create.url, params={"id": sid}),
            lambda r: r.status_code == 200 and r.json().get("id") == sid,
        ),
        (
            "novita_webhook",
            hook,
            lambda c: c.post(stack.webhook_url(hook.url, sid), json=foreign),
            lambda r: r.status_code == 200 and r.json().get("outcome") == "ignored",
        ),
    ]


def cold_start(stack: Stack, runs: int) -> dict[str, list[float]]:
    stack.quiet_simulator()  # nothing else runs while a process starts
    results: dict[str, list[float]] = {"bare": [], "create_sketch": [], "novita_webhook": []}
    for run in range(runs):
        # a fresh sketch, so that its GET never has a recovery check due
        sid = stack.create_sketch(f"bench cold start {run}")["id"]
        stack.wait_sim_idle()
        for name, proc, send, ok in _cold_cases(stack, sid, run):
            try:
                results[name].append(_first_answer(proc, send, ok))
            finally:
                proc.stop()
        times = ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in results.items())
        say(f"  cold start run {run + 1}: {times}")
    return results


# --------------------------------------------------------------------------------------- chain


@dataclass
class ChainResult:
    chain: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    idle_kb: list[int] = field(default_factory=list)
    grown_mb: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    exact_peak: bool = True
    first: tuple[float, float] = (0.0, 0.0)  # the instance's first chain: seconds, RSS growth (MB)


def deliver_image(
    stack: Stack,
    client: httpx.Client,
    webhook_base: str,
    sketch: dict[str, Any],
    still: str,
    headers: dict[str, str] | None = None,
) -> tuple[float, httpx.Response]:
    url = stack.webhook_url(webhook_base, sketch["id"])
    body = json.dumps(image_success(sketch["image_task_id"], stack.media(still))).encode()
    t0 = time.perf_counter()
    response = client.post(url, content=body, headers={**JSON, **(headers or {})})
    return time.perf_counter() - t0, response


def applied(response: httpx.Response) -> bool:
    try:
        return response.status_code == 200 and response.json().get("outcome") == "applied"
    except ValueError:
        return False


def plain_httpx(stack: Stack, client: httpx.Client, sketch: dict[str, Any], still: str) -> float:
    """The yardstick: download the same still from the same URL and upload it to the same Kling
    endpoint as the same multipart request, with plain httpx and nothing else."""
    assert stack.webhook is not None
    video_hook = stack.webhook_url(stack.webhook.url, sketch["id"], "video")
    fields = {
        "prompt": sketch["video_prompt"],
        "negative_prompt": sketch["negative_prompt"],
        "duration": str(sketch["duration"]),
        "cfg_scale": "0.5",
        "extra": json.dumps({"webhook": {"url": video_hook}}),
    }
    t0 = time.perf_counter()
    data = client.get(stack.media(still)).content
    response = client.post(
        stack.sim_url + KLING_PATH,
        headers={"Authorization": f"Bearer {API_KEY}"},
        data=fields,
        files={"image": ("still.jpg", data, "image/jpeg")},
    )
    elapsed = time.perf_counter() - t0
    if response.status_code != 200 or not response.json().get("task_id"):
        raise RuntimeError(f"baseline Kling upload answered {response.status_code}: {response.text[:300]}")
    return elapsed


def chain(stack: Stack, runs: int) -> ChainResult:
    assert stack.webhook is not None
    stack.quiet_simulator()
    result = ChainResult()
    base = stack.webhook.url
    with httpx.Client(timeout=HTTP_TIMEOUT) as plain:
        # an ignored result first: the instance builds its runtime (Firestore client, HTTP clients),
        # so that the first chain's growth below is the chain's own (Pillow import, first big buffers)
        init = stack.create_sketch("bench chain runtime init")
        foreign = image_success("foreign-task", stack.media(TYPICAL_NAME))
        stack.http.post(stack.webhook_url(base, init["id"]), json=foreign).raise_for_status()
        time.sleep(0.2)
        for n in range(CHAIN_WARMUPS):
            warm = stack.create_sketch(f"bench chain warm-up {n}")
            stack.wait_sim_idle()
            with Watch(stack.webhook.worker_pid()) as watch:
                first, response = deliver_image(stack, stack.http, base, warm, BIG_NAME)
            if n == 0:
                result.first = (first, watch.grown_mb)
            if not applied(response):
                raise RuntimeError(f"chain warm-up answered {response.status_code}: {response.text[:300]}")
            plain_httpx(stack, plain, warm, BIG_NAME)
        for run in range(runs):
            sketch = stack.create_sketch(f"bench chain {run}")
            if run % 2:  # alternate which of the two goes first
                result.baseline.append(plain_httpx(stack, plain, sketch, BIG_NAME))
            stack.wait_sim_idle()
            time.sleep(0.2)
            with Watch(stack.webhook.worker_pid()) as watch:
                elapsed, response = deliver_image(stack, stack.http, base, sketch, BIG_NAME)
            if not applied(response):
                raise RuntimeError(f"chain answered {response.status_code}: {response.text[:300]}")
            status = (stack.stored(sketch["id"]) or {}).get("status")
            if status != "video_pending":
                raise RuntimeError(f"after the chain the sketch is {status}, not video_pending")
            if not run % 2:
                stack.wait_sim_idle()
                result.baseline.append(plain_httpx(stack, plain, sketch, BIG_NAME))
            result.chain.append(elapsed)
            result.idle_kb.append(watch.idle_kb)
            result.grown_mb.append(watch.grown_mb)
            result.cpu.append(watch.cpu)
            result.exact_peak &= watch.exact
            say(
                f"  chain run {run + 1}: webhook {elapsed * 1000:.0f} ms "
                f"(worker CPU {watch.cpu * 1000:.0f} ms), "
                f"plain httpx {result.baseline[-1] * 1000:.0f} ms; RSS idle {watch.idle_kb / 1024:.1f} MB, "
                f"peak +{watch.grown_mb:.1f} MB"
            )
    return result


# ---------------------------------------------------------------------------------------- load


@dataclass
class LoadResult:
    single: list[float] = field(default_factory=list)  # per run: median of LOAD_SINGLES deliveries
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    grown_mb: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process -> CPU seconds per run
    overflows: list[int] = field(default_factory=list)  # connections dropped by a full listen queue
    # The least wall time the CPU work of the crowd needs on this machine: all processes' CPU over
    # its cores, or the webhook worker's CPU (one core: Python's GIL), whichever is more.
    cpu_floor: list[float] = field(default_factory=list)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _crowd(
    stack: Stack, base: str, sketches: list[dict[str, Any]], still: str
) -> tuple[list[float], list[str], float]:
    """Deliver to every sketch at once, one client (connection) each: latencies, errors, and the
    wall time from the start signal to the last answer."""
    clients = [httpx.Client(timeout=HTTP_TIMEOUT) for _ in sketches]  # built before the clock starts
    barrier = threading.Barrier(len(sketches) + 1)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(client: httpx.Client, sketch: dict[str, Any]) -> None:
        barrier.wait()
        try:
            elapsed, response = deliver_image(stack, client, base, sketch, still)
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


def load(stack: Stack, runs: int, kling_latency: float, still: str = TYPICAL_NAME) -> LoadResult:
    """`kling_latency`: seconds Novita takes to answer the image-to-video request."""
    assert stack.webhook is not None
    stack.quiet_simulator()
    stack.configure(kling_accept_delay=kling_latency)
    result = LoadResult()
    base = stack.webhook.url
    for run in range(runs):
        sketches = [
            stack.create_sketch(f"bench load {run}/{i}") for i in range(LOAD_SINGLES + LOAD_CONCURRENCY)
        ]
        stack.wait_sim_idle()
        kling_before = stack.sim_stats()["tasks_created"]["kling"]
        singles = []
        for sketch in sketches[:LOAD_SINGLES]:
            elapsed, response = deliver_image(stack, stack.http, base, sketch, still)
            if not applied(response):
                result.errors.append(f"single: {response.status_code} {response.text[:120]}")
            singles.append(elapsed)
        others = {name: pid for name, pid in stack.pids().items() if name != "webhook"}
        cpu0 = {name: cpu_seconds(pid) for name, pid in others.items()}
        overflows = listen_overflows()
        with Watch(stack.webhook.worker_pid()) as watch:
            latencies, errors, wall = _crowd(stack, base, sketches[LOAD_SINGLES:], still)
        result.overflows.append(listen_overflows() - overflows)
        for name, pid in others.items():
            result.cpu.setdefault(name, []).append(cpu_seconds(pid) - cpu0[name])
        result.cpu.setdefault("webhook worker", []).append(watch.cpu)
        spent = sum(v[-1] for v in result.cpu.values())
        result.cpu_floor.append(max(spent / (os.cpu_count() or 1), watch.cpu))
        result.errors += errors
        statuses = stack.statuses([s["id"] for s in sketches])
        wrong = [s for s in statuses.values() if s != "video_pending"]
        if wrong:
            result.errors.append(f"{len(wrong)} sketches not video_pending: {sorted(set(map(str, wrong)))}")
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
            f"{wall * 1000:.0f} ms; webhook worker CPU {watch.cpu * 1000:.0f} ms, "
            f"RSS +{watch.grown_mb:.1f} MB; listen-queue drops {result.overflows[-1]}; "
            f"errors so far {len(result.errors)}"
        )
    stack.configure(kling_accept_delay=0.0)
    return result


# ------------------------------------------------------------------------------ Firestore work


@dataclass
class FirestoreWork:
    label: str
    per_sketch: list[dict[str, int]] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        keys = sorted({k for counts in self.per_sketch for k in counts})
        return {k: int(statistics.median(c.get(k, 0) for c in self.per_sketch)) for k in keys}


def _count(lines: list[dict[str, Any]], sketch_id: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for op in lines:
        if op["doc"] not in (sketch_id, None):
            continue
        counts[op["op"] if op["doc"] else f"{op['op']} (no document)"] += 1
        if op["cond"]:
            counts["conditional"] += 1
        if op["err"]:
            counts[f"failed: {op['err']}"] += 1
    counts["reads"] = counts["read"] + counts["query (no document)"]
    counts["writes"] = counts["create"] + counts["update"]
    return {k: v for k, v in counts.items() if v or k in ("reads", "writes")}


def _wait_final(stack: Stack, sketch_id: str, timeout: float = 30.0) -> str | None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = (stack.stored(sketch_id) or {}).get("status")
        if status in ("complete", "failed"):
            break
        time.sleep(0.05)
    return status


def firestore_work(stack: Stack, sketches: int) -> list[FirestoreWork]:
    """Count Firestore calls in real function processes, from creation to `complete`."""
    log = stack.log_dir / "firestore-ops.jsonl"
    log.unlink(missing_ok=True)
    webhook_port = free_port()
    env = {**stack.env(webhook_port), "BENCH_FS_LOG": str(log)}
    extra = [BENCH / "fscount"]
    hook = function_server("novita_webhook", env, stack.log_dir, port=webhook_port, pythonpath=extra)
    create = function_server("create_sketch", env, stack.log_dir, pythonpath=extra)
    results = []
    try:
        hook.start()
        create.start()
        for label, changes in (
            ("one delivery per webhook", {"deliveries": 1, "concurrent_deliveries": False}),
            ("each webhook delivered twice at once", {"deliveries": 2, "concurrent_deliveries": True}),
        ):
            stack.live_simulator()
            stack.configure(**changes)
            work = FirestoreWork(label)
            for n in range(sketches):
                sketch = stack.create_sketch(f"bench firestore work {n}", create.url)
                status = _wait_final(stack, sketch["id"])
                if status != "complete":
                    raise RuntimeError(f"Firestore-work sketch ended {status}, not complete")
                stack.wait_sim_idle()
                time.sleep(0.1)
                lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
                work.per_sketch.append(_count(lines, sketch["id"]))
                log.write_text("")
            results.append(work)
            say(f"  Firestore calls, {label}: {work.summary()}")
    finally:
        create.stop()
        hook.stop()
        stack.live_simulator()
        stack.configure(deliveries=1, concurrent_deliveries=False)
    return results


# ------------------------------------------------------------------------------------- profile


def profile(stack: Stack, chains: int, top: int) -> str:
    """The chain (big still) and single typical deliveries in a webhook process under pyinstrument."""
    stack.quiet_simulator()
    out = stack.log_dir / "profiles"
    port = free_port()
    env = {**stack.env(port), "BENCH_PROFILE_DIR": str(out)}
    proc = function_server(
        "novita_webhook", env, stack.log_dir, port=port, source=BENCH / "profiled" / "main.py"
    )
    texts = []
    try:
        proc.start()
        for n in range(CHAIN_WARMUPS):
            deliver_image(
                stack, stack.http, proc.url, stack.create_sketch(f"bench profile warm-up {n}"), BIG_NAME
            )
        for still, count in ((BIG_NAME, chains), (TYPICAL_NAME, 2 * chains)):
            folder = out / still.partition(".")[0]
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                old.unlink()
            times = []
            for n in range(count):
                sketch = stack.create_sketch(f"bench profile {n}")
                headers = {"X-Bench-Profile": "1", "X-Bench-Profile-Dir": still.partition(".")[0]}
                elapsed, response = deliver_image(stack, stack.http, proc.url, sketch, still, headers)
                if not applied(response):
                    raise RuntimeError(
                        f"profiled chain answered {response.status_code}: {response.text[:200]}"
                    )
                times.append(elapsed)
            texts.append(
                f"--- {count} deliveries of the {still} still, median "
                f"{statistics.median(times) * 1000:.0f} ms under the profiler\n"
                + _render(folder, top, tree=still == BIG_NAME)
            )
    finally:
        proc.stop()
    return "\n\n".join(texts)


def _render(folder: Path, top: int, tree: bool) -> str:
    sessions = sorted(folder.glob("*.pyisession"))
    if sessions:
        from pyinstrument.renderers import ConsoleRenderer
        from pyinstrument.session import Session

        combined = Session.load(str(sessions[0]))
        for path in sessions[1:]:
            combined = Session.combine(combined, Session.load(str(path)))
        per = len(sessions)
        head = (
            f"wall {combined.duration / per * 1000:.0f} ms, CPU {combined.cpu_time / per * 1000:.0f} ms "
            "per delivery (worker thread)"
        )
        flat = ConsoleRenderer(
            flat=True, time="percent_of_total", flat_time="self", unicode=False, color=False
        )
        flat_lines = [ln for ln in flat.render(combined).splitlines() if "%" in ln]
        text = head + "\nself time, % of wall:\n" + "\n".join(flat_lines[:top])
        if tree:  # the tree of the median delivery (a combined tree splits by worker thread)
            loaded = sorted((Session.load(str(p)) for p in sessions), key=lambda x: x.duration)
            median = loaded[len(loaded) // 2]
            renderer = ConsoleRenderer(time="percent_of_total", unicode=False, color=False)
            tree_lines = [ln for ln in renderer.render(median).splitlines() if "%" in ln]
            text += f"\ncall tree of the median delivery ({median.duration * 1000:.0f} ms):\n"
            text += "\n".join(tree_lines[: top * 2])
        return text
    import pstats
    from io import StringIO

    stream = StringIO()
    stats = pstats.Stats(*[str(p) for p in sorted(folder.glob("*.pstats"))], stream=stream)
    stats.sort_stats("cumulative").print_stats(top)
    return "cProfile (pyinstrument not installed), cumulative:\n" + stream.getvalue()

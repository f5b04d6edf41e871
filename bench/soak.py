"""The soak: one process of the private door through the steps of 1,000 sketches, and what it holds
after the first 100 and after the last: its resident memory, its open file descriptors, its threads.

Each sketch is made by create_sketch, with the simulator answering at once and sending no webhook;
then the bench pushes its steps to the private door one after the other, as Pub/Sub would: the
check that finds its still, the chain (the still fetched, checked, kept in the bucket, sent to
Kling), the check that finds its video, and the copy of the video into the bucket. LANES sketches
are under way at once. The deployment's topics have no subscription, so the steps the door hands on
itself are kept by nobody: every step it runs is one the bench pushed.

The sketches go in rounds of ROUND; between two rounds nothing is under way, no connection of the
bench's is open to the door, and the process is looked at.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.hot import outcome
from bench.measure import cpu_seconds, proc_status, say
from bench.stack import HTTP_TIMEOUT, INSTANCE_CONCURRENCY, Deployment, Stack
from devstack.processes import LOOPBACK
from shared.pipeline.queue import Step
from shared.pipeline.topology import STEP_ACTION
from shared.sketch.model import Status, StepKind

ROUND = 100
LANES = 4
# A check pushed before the simulator has finished its task finds it still running (answered
# `ignored`, or `in_progress`): it is pushed again after this, at most CHECK_TRIES times in all. The
# simulator's first video takes it a few hundred ms to encode; later ones are copies.
CHECK_AGAIN = 0.02
CHECK_TRIES = 100
# After a round the bench's connections to the door are closed; gunicorn closes its side as soon
# as it sees the end, well within this.
SETTLE = 1.0
RSS_GOAL_MB = 10.0
# What may differ between the two looks without anything having leaked: the sockets of the
# process's HTTP clients. Each pool keeps a connection for every request that was once under way to
# its host at the same time, until that host closes it; with LANES sketches under way, the steps'
# requests to any one host overlap at most LANES at a time, so a pool may hold up to LANES more at
# the last look than at the first, all of them idle and reused. Fewer is never a leak (a host
# closed some idle ones). Files, pipes and threads have no such excuse: they must be the same.
SOCKET_MARGIN = LANES


@dataclass(frozen=True)
class Look:
    """The process between two rounds, and the round before it."""

    sketches: int  # sketches done before it
    in_round: int  # of which in the round before it
    rss_kb: int
    sockets: int
    other_fds: int  # files, pipes, event fds: anything but a socket
    threads: int
    seconds: float  # the round's wall time
    cpu: dict[str, float]  # CPU seconds each process of the stack spent in the round

    @property
    def fds(self) -> int:
        return self.sockets + self.other_fds

    def cpu_per_sketch(self, process: str) -> float:
        """CPU seconds `process` spent per sketch in the round."""
        return self.cpu[process] / self.in_round


@dataclass
class SoakResult:
    count: int
    looks: list[Look] = field(default_factory=list)
    steps: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def look(pid: int, sketches: int, in_round: int, seconds: float, cpu: dict[str, float]) -> Look:
    sockets = other = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:"):
            sockets += 1
        else:
            other += 1
    status = proc_status(pid)
    rss_kb, threads = status["VmRSS"], status["Threads"]
    return Look(sketches, in_round, rss_kb, sockets, other, threads, seconds, cpu)


def describe_cpu(after: Look) -> str:
    """The CPU each process spent per sketch in the round before `after`, the busiest first (ms)."""
    busiest = sorted(after.cpu, key=after.cpu_per_sketch, reverse=True)
    return ", ".join(f"{name} {after.cpu_per_sketch(name) * 1000:.0f}" for name in busiest)


def fill_pool(dep: Deployment) -> None:
    """Start every thread of the door's pool before the first look. gunicorn's pool starts a thread
    when a request finds none idle, up to INSTANCE_CONCURRENCY, and never stops one: a request that
    arrives while the thread that answered the one before is still finishing starts another, so
    the count creeps up over a long run, a leak of nothing. Full from the start, the pool cannot
    grow, and a thread counted later is one the function left behind.

    INSTANCE_CONCURRENCY pushes each hold a thread while their body is incomplete, then finish it.
    Each is a check of a sketch that does not exist: read, found missing, ignored."""
    body = dep.push_body(Step(kind=StepKind.CHECK, sketch_id="0" * 32))
    head = (
        f"POST /?action={STEP_ACTION} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sockets = [
        socket.create_connection((LOOPBACK, dep.steps.port), timeout=30) for _ in range(INSTANCE_CONCURRENCY)
    ]
    try:
        for sock in sockets:
            sock.sendall(head + body[:-1])
        time.sleep(0.5)  # each is now read by a thread of its own, waiting for its last byte
        for sock in sockets:
            sock.sendall(body[-1:])
        for sock in sockets:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            if b'"ignored"' not in answer:
                raise RuntimeError(f"a push that fills the pool was answered {answer[:200]!r}")
    finally:
        for sock in sockets:
            sock.close()


def soak(stack: Stack, count: int) -> SoakResult:
    """`count` sketches through one private door process, looked at after each round."""
    stack.simulate(drop_webhooks=True, image_delay=0.0, video_delay=0.0, seedream_delay=0.0)
    # create_sketch may make them all in one day.
    dep = stack.deploy("soak", pushes=False, create_env={"MAX_SKETCHES_PER_DAY_TOTAL": str(count)})
    result = SoakResult(count)
    lock = threading.Lock()

    def push(client: httpx.Client, kind: StepKind, sketch_id: str) -> str | None:
        _, response = dep.push(Step(kind=kind, sketch_id=sketch_id), client)
        with lock:
            result.steps[kind.value] += 1
        return outcome(response)

    def check(client: httpx.Client, sketch_id: str) -> bool:
        """Push the sketch's check until it applies its finished task."""
        for _ in range(CHECK_TRIES):
            found = push(client, StepKind.CHECK, sketch_id)
            if found == "applied":
                return True
            if found not in ("ignored", "in_progress"):
                break
            time.sleep(CHECK_AGAIN)
        return False

    def one(client: httpx.Client, n: int) -> None:
        sketch_id = str(dep.create_sketch("a soak of walruses", client)["id"])
        done = (
            check(client, sketch_id)
            and push(client, StepKind.CHAIN, sketch_id) == "applied"
            and check(client, sketch_id)
            and push(client, StepKind.COPY, sketch_id) == "applied"
        )
        sketch = dep.sketch(sketch_id)
        if not done or sketch is None or sketch.status is not Status.COMPLETE:
            with lock:
                result.errors.append(f"sketch {n} ended {sketch and sketch.status}")
        if sketch is not None:
            # The emulator rewrites every object's metadata on each upload: keep the bucket small.
            dep.delete_objects([name for name in (sketch.image_object, sketch.video_object) if name])

    def lane(numbers: range) -> None:
        with httpx.Client(timeout=HTTP_TIMEOUT) as client:
            for n in numbers:
                one(client, n)

    try:
        fill_pool(dep)
        pid = dep.steps.worker_pid()
        assert dep.create is not None
        pids = {**dep.pids(), "create_sketch worker": dep.create.worker_pid()}
        started = time.monotonic()
        for first in range(0, count, ROUND):
            size = min(ROUND, count - first)
            cpu0 = {name: cpu_seconds(p) for name, p in pids.items()}
            t0 = time.monotonic()
            with ThreadPoolExecutor(LANES) as pool:
                list(pool.map(lane, (range(first + i, first + size, LANES) for i in range(LANES))))
            seconds = time.monotonic() - t0
            spent = {name: cpu_seconds(p) - cpu0[name] for name, p in pids.items()}
            time.sleep(SETTLE)
            result.looks.append(look(pid, first + size, size, seconds, spent))
            last = result.looks[-1]
            say(
                f"  soak: {last.sketches} sketches ({time.monotonic() - started:.0f} s; this round "
                f"{last.seconds:.1f} s, CPU ms per sketch: {describe_cpu(last)}): RSS "
                f"{last.rss_kb / 1024:.1f} MB, fds {last.fds} ({last.sockets} sockets), threads "
                f"{last.threads}; steps {json.dumps(dict(result.steps))}; errors {len(result.errors)}"
            )
        result.seconds = time.monotonic() - started
    finally:
        stack.retire(dep)
        stack.simulate()
    return result

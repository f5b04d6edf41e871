"""What every figure is measured with: process memory and CPU from /proc, percentiles, and the
trace the instrumented function processes write (bench/instrument)."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


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
    """VmRSS, VmHWM, ... of `pid`, in kB, and its Threads."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") or key == "Threads":
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


# ---------------------------------------------------------------------------------- statistics


def p99(values: list[float]) -> float:
    return percentile(values, 99)


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (inclusive method); the value itself for a single value."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def spread(values: Iterable[float], scale: float = 1000, unit: str = "ms", digits: int = 0) -> str:
    values = list(values)
    return f"{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f} {unit}"


# --------------------------------------------------------------------------------------- trace


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The lines bench/instrument wrote to `path`, in the order they were written."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def busy_union(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds during which at least one of `intervals` was under way."""
    total, end = 0.0, float("-inf")
    for t0, t1 in sorted(intervals):
        if t0 > end:
            total += t1 - t0
            end = t1
        elif t1 > end:
            total += t1 - end
            end = t1
    return total


def most_at_once(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of `intervals` under way at the same moment."""
    spans = list(intervals)
    # At a tie an end comes first: a step that starts as another ends is not two at once.
    edges = sorted([(t0, 1) for t0, _ in spans] + [(t1, -1) for _, t1 in spans])
    most = now = 0
    for _, change in edges:
        now += change
        most = max(most, now)
    return most


class TraceTail:
    """The lines a trace file gains from now on, a look at a time."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self._lines()  # what is there already is not new (a line half written is finished later)

    def new(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._lines() if line.strip()]

    def _lines(self) -> list[bytes]:
        if not self._path.exists():
            return []
        with self._path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return complete

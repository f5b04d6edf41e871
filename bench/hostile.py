"""Hostile clients against functions under the body guard (shared/edge/guard.py), on loopback.

    PYTHONPATH=. .venv/bin/python -m bench.hostile

Serves tests/fixtures/guarded_function, and create_sketch and both doors of novita_webhook (public:
Novita's deliveries; private: Pub/Sub's pushes) as the tree has them when they install the guard,
each with 32 threads (deploy.sh's concurrency) and the guard's own timeouts, and prints for each,
beside its goal:
  uploads     peak RSS growth of the worker while 8 clients each send a 300 MiB body as fast as
              loopback takes it, until the server closes (Content-Length, then chunked); < 5 MB
  stalls      time for an OPTIONS from another client while as many bodies stall as the instance
              has threads; within the read timeout + 1 s
  drips       the public door only: an OPTIONS while as many bodies as it has threads are drip-fed
              to `?action=step` (a byte a second), which it must answer 404 without reading them;
              the OPTIONS and every drip answered within 1 s, each drip's connection closed
  5xx, ERROR  5xx answers over the run, and ERROR lines in the function's log; 0
Each function first answers one small POST on the figures' path, so that what its first request
loads is not counted as a hostile body's cost. Traffic stays on loopback and is bounded: at most
8 x 300 MiB per upload figure.
"""

from __future__ import annotations

import http.client
import select
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devstack.functions import ROOT, FunctionServer
from devstack.processes import LOOPBACK, free_port, wait_until
from shared.edge.guard import READ_TIMEOUT

THREADS = 32
UPLOADERS = 8
UPLOAD_BYTES = 300 * 1024 * 1024
BLOCK = bytes(1024 * 1024)
RSS_GOAL_MB = 5.0
ANSWER_TIMEOUT = 10.0
# A drip-fed body: this many bytes announced, one sent every DRIP_EVERY seconds until the answer.
DRIP_BYTES = 100
DRIP_EVERY = 1.0
# "At once": a door that read a drip-fed body would hold a thread for the guard's 30 s deadline, and
# an OPTIONS behind as many such bodies as it has threads would wait as long; an answer on loopback
# takes milliseconds, even on a busy machine. A second tells the two apart with room on both sides.
AT_ONCE = 1.0
FIXTURE = ROOT / "tests" / "fixtures" / "guarded_function" / "main.py"
# What the real functions need to import; nothing they are sent here reaches Firestore or Novita.
REAL_ENV = {
    "NOVITA_API_KEY": "bench-hostile-key",
    "NOVITA_BASE_URL": f"http://{LOOPBACK}:9",
    "WEBHOOK_URL": f"http://{LOOPBACK}:9/",
    "WEBHOOK_SECRET": "bench-hostile-secret-0123456789",
    "GOOGLE_CLOUD_PROJECT": "bench-hostile",
    "FIRESTORE_EMULATOR_HOST": f"{LOOPBACK}:9",
    "AUTH_MODE": "none",
}


@dataclass(frozen=True)
class Spec:
    """A function as it is deployed: how it is served, the POST that makes it read a body (or answer
    before it), and a path it must answer without reading the body, if it has one."""

    label: str
    target: str
    source: Path
    env: dict[str, str]
    post_path: str
    drip_path: str | None = None


@dataclass
class Target:
    """A function under test."""

    spec: Spec
    server: FunctionServer
    statuses: Counter[int | None] = field(default_factory=Counter)  # None: closed without an answer

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def post_path(self) -> str:
        return self.spec.post_path

    def count(self, statuses: Iterable[int | None]) -> None:
        self.statuses.update(statuses)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status is not None and status >= 500)


@dataclass
class Row:
    target: str
    figure: str
    measured: str
    goal: str
    met: bool | None  # None: counted, no goal


def head(path: str, *, content_length: int | None = None, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {LOOPBACK}", "Content-Type: application/json"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(target: Target) -> socket.socket:
    return socket.create_connection((LOOPBACK, target.server.port), timeout=ANSWER_TIMEOUT)


def answer_status(sock: socket.socket, timeout: float = ANSWER_TIMEOUT) -> int | None:
    """The status of the answer on `sock`; None when the connection ends without one."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()
        response.read()
    except (http.client.HTTPException, OSError):
        return None
    return response.status


def kilobytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


# ------------------------------------------------------------------------------------- figures


def uploads(target: Target, *, chunked: bool) -> tuple[float, int]:
    """Peak RSS growth (MB) of the worker while UPLOADERS clients each send UPLOAD_BYTES at once,
    and the most any of them got to send before the server closed."""
    pid = target.server.worker_pid()
    start = threading.Barrier(UPLOADERS)

    def upload() -> tuple[int, int | None]:
        with connect(target) as sock:
            if chunked:
                sock.sendall(head(target.post_path, chunked=True) + b"%x\r\n" % UPLOAD_BYTES)
            else:
                sock.sendall(head(target.post_path, content_length=UPLOAD_BYTES))
            start.wait()
            sent = 0
            try:
                while sent < UPLOAD_BYTES:
                    sock.sendall(BLOCK)
                    sent += len(BLOCK)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return sent, answer_status(sock)

    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS, so VmHWM is this block's peak
    before = kilobytes(pid, "VmRSS")
    with ThreadPoolExecutor(UPLOADERS) as pool:
        results = list(pool.map(lambda _: upload(), range(UPLOADERS)))
    target.count(status for _, status in results)
    return (kilobytes(pid, "VmHWM") - before) / 1024, max(sent for sent, _ in results)


def stalls(target: Target) -> tuple[float, Counter[int | None]]:
    """Seconds an OPTIONS waits while THREADS bodies stall, and what the stalled ones were answered."""
    stalled = [connect(target) for _ in range(THREADS)]
    try:
        for sock in stalled:
            sock.sendall(head(target.post_path, content_length=100) + b"{")
        time.sleep(0.5)  # each now holds a thread, waiting for the other 99 bytes
        started = time.monotonic()
        target.count([options_status(target, timeout=120)])
        waited = time.monotonic() - started
        answers = Counter(answer_status(sock, timeout=120) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    target.count(answers.elements())
    return waited, answers


def drips(target: Target, path: str) -> tuple[float, int | None, list[tuple[int | None, float, bool]]]:
    """THREADS connections each drip-feed a body to `path`, a byte every DRIP_EVERY s until answered.
    Once every one has begun: the seconds an OPTIONS from another client waits, and its status; then,
    for each drip, its answer, the seconds from its first byte to that answer, and whether the server
    closed the connection after it (no thread, nor gunicorn's keep-alive, still holds it)."""
    begun = threading.Barrier(THREADS + 1, timeout=ANSWER_TIMEOUT)  # broken, not stuck, if one fails

    def drip() -> tuple[int | None, float, bool]:
        with connect(target) as sock:
            sock.sendall(head(path, content_length=DRIP_BYTES) + b"{")
            started = time.monotonic()
            begun.wait()
            sent = 1
            # The next byte only while nothing has come back: the answer stops the drip.
            while sent < DRIP_BYTES and not select.select([sock], [], [], DRIP_EVERY)[0]:
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
                sent += 1
            status = answer_status(sock, timeout=DRIP_BYTES * DRIP_EVERY)
            return status, time.monotonic() - started, closed_by_server(sock)

    with ThreadPoolExecutor(THREADS) as pool:
        running = [pool.submit(drip) for _ in range(THREADS)]
        begun.wait()
        started = time.monotonic()
        options = options_status(target, timeout=DRIP_BYTES * DRIP_EVERY)
        waited = time.monotonic() - started
        found = [future.result() for future in running]
    target.count([options, *(status for status, _, _ in found)])
    return waited, options, found


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has let go of the connection after its answer (an end or a reset)."""
    sock.settimeout(AT_ONCE)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except OSError:  # nothing within AT_ONCE: the server still holds it
        return False


def faults(target: Target) -> None:
    """Malformed chunk sizes and hang-ups mid-body, THREADS of each: answers counted, none expected
    to be 5xx (a hang-up has nobody left to answer)."""

    def malformed() -> int | None:
        with connect(target) as sock:
            sock.sendall(head(target.post_path, chunked=True) + b"zz\r\nhello\r\n0\r\n\r\n")
            return answer_status(sock)

    def hang_up() -> None:
        with connect(target) as sock:
            sock.sendall(head(target.post_path, content_length=1000) + b"{" * 10)
            time.sleep(0.2)

    with ThreadPoolExecutor(THREADS) as pool:
        target.count(pool.map(lambda _: malformed(), range(THREADS)))
        list(pool.map(lambda _: hang_up(), range(THREADS)))


def error_lines(target: Target) -> int:
    logged = target.server.log_path.read_text(errors="replace")
    return sum('"severity": "ERROR"' in line or "[ERROR]" in line for line in logged.splitlines())


# -------------------------------------------------------------------------------------- targets


def guarded(target: Target) -> bool:
    """Whether the function refuses an over-limit Content-Length before its body (the guard's 413).

    An unguarded function would read all of each 300 MiB body into memory: it is not benchmarked.
    """
    with connect(target) as sock:
        sock.sendall(head(target.post_path, content_length=UPLOAD_BYTES))
        return answer_status(sock, timeout=3) == 413


def start(spec: Spec, logs: Path) -> Target:
    port = free_port()
    server = FunctionServer(
        spec.target,
        {**spec.env, "THREADS": str(THREADS)},
        logs / f"{spec.label}-{port}.log",
        port=port,
        source=spec.source,
        label=spec.label,
    )
    served = Target(spec, server)
    server.launch()
    try:
        # Ready when OPTIONS is answered: FunctionServer.start's GET would wait on Firestore, absent here.
        wait_until(lambda: options_status(served, timeout=0.5) == 204, 30, spec.label, server.process)
    except (RuntimeError, TimeoutError):
        server.stop()
        raise
    return served


def options_status(target: Target, timeout: float = ANSWER_TIMEOUT) -> int | None:
    try:
        with connect(target) as sock:
            sock.sendall(f"OPTIONS / HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
            return answer_status(sock, timeout)
    except OSError:
        return None


def warm(target: Target) -> None:
    """One small POST on the figures' path, answered as the function answers it: what its first
    request loads (lazy imports) is then in memory before any figure is taken, and not counted as
    what a hostile body cost."""
    with connect(target) as sock:
        sock.sendall(head(target.post_path, content_length=2) + b"{}")
        target.count([answer_status(sock)])


def bench(target: Target) -> list[Row]:
    warm(target)
    rows = []
    for chunked in (False, True):
        grown, sent = uploads(target, chunked=chunked)
        framing = "chunked" if chunked else "Content-Length"
        rows.append(
            Row(
                target.label,
                f"peak RSS growth, {UPLOADERS} x 300 MiB {framing}",
                f"{grown:.1f} MB (at most {sent >> 20} MiB sent before the close)",
                f"< {RSS_GOAL_MB:g} MB",
                grown < RSS_GOAL_MB,
            )
        )
    waited, answers = stalls(target)
    limit = READ_TIMEOUT + 1
    rows.append(
        Row(
            target.label,
            f"OPTIONS while {THREADS} bodies stall",
            f"{waited:.1f} s",
            f"<= {limit:g} s",
            waited <= limit,
        )
    )
    rows.append(
        Row(
            target.label,
            "what the stalled bodies were answered",
            ", ".join(f"{status or 'closed'} x{n}" for status, n in sorted(answers.items(), key=str)),
            "408, closed, or the function's own early answer",
            all(status is None or status < 500 for status in answers),
        )
    )
    if target.spec.drip_path is not None:
        rows += drip_rows(target, target.spec.drip_path)
    faults(target)
    fives = target.server_errors
    answered = target.statuses.total()
    rows.append(Row(target.label, f"5xx answers over the run (of {answered})", str(fives), "0", fives == 0))
    errors = error_lines(target)
    rows.append(Row(target.label, "ERROR lines logged over the run", str(errors), "0", errors == 0))
    return rows


def drip_rows(target: Target, path: str) -> list[Row]:
    waited, options, found = drips(target, path)
    action = path.partition("?")[2]
    slowest = max(seconds for _, seconds, _ in found)
    answers = Counter(status for status, _, _ in found)
    closed = sum(gone for _, _, gone in found)
    return [
        Row(
            target.label,
            f"OPTIONS while {THREADS} drip-fed bodies are open on ?{action}",
            f"{waited:.2f} s ({options or 'closed'})",
            f"<= {AT_ONCE:g} s, 204",
            waited <= AT_ONCE and options == 204,
        ),
        Row(
            target.label,
            f"what the drip-fed bodies on ?{action} were answered",
            ", ".join(f"{status or 'closed'} x{n}" for status, n in sorted(answers.items(), key=str))
            + f", the slowest {slowest:.2f} s after its first byte; {closed} of {THREADS} connections "
            "closed by the server",
            f"404 within {AT_ONCE:g} s, every connection closed (no thread held)",
            answers == Counter({404: THREADS}) and slowest <= AT_ONCE and closed == THREADS,
        ),
    ]


def render(rows: list[Row]) -> str:
    table = [["function", "figure", "measured", "goal", "met?"]]
    table += [
        [r.target, r.figure, r.measured, r.goal, {True: "yes", False: "NO", None: "n/a"}[r.met]] for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


WEBHOOK = ROOT / "functions/novita_webhook/main.py"
TARGETS = [
    Spec("guarded_function", "guarded", FIXTURE, {}, "/"),
    Spec("create_sketch", "create_sketch", ROOT / "functions/create_sketch/main.py", REAL_ENV, "/"),
    # A delivery with a token that does not match: answered before its body is read, the shape of
    # every refused delivery. An action is nothing the public door does: 404, body unread.
    Spec(
        "novita_webhook-public",
        "novita_webhook",
        WEBHOOK,
        {**REAL_ENV, "WEBHOOK_DOOR": "public"},
        f"/?sketch={'0' * 32}&stage=image&t=1700000000&token=bad",
        drip_path="/?action=step",
    ),
    # Pub/Sub's pushes: the private door reads the body of every one (its signature is in it).
    Spec(
        "novita_webhook-private",
        "novita_webhook",
        WEBHOOK,
        {**REAL_ENV, "WEBHOOK_DOOR": "private"},
        "/?action=step",
    ),
]


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    print(f"logs in {logs}", flush=True)
    rows: list[Row] = []
    for spec in TARGETS:
        try:
            target = start(spec, logs)
        except (RuntimeError, TimeoutError) as exc:
            rows.append(Row(spec.label, "skipped: it did not start", str(exc)[:60], "", None))
            continue
        try:
            if guarded(target):
                print(f"{spec.label}: measuring ...", flush=True)
                rows += bench(target)
            else:
                rows.append(
                    Row(spec.label, "skipped: no 413 before the body (guard not installed)", "", "", None)
                )
        finally:
            target.server.stop()
    print(render(rows))


if __name__ == "__main__":
    main()

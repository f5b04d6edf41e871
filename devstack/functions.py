"""The two Cloud Functions, each served by functions-framework in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devstack.processes import LOOPBACK, answers, free_port, kill, start, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent


def function_command(target: str, port: int, source: Path | None = None) -> list[str]:
    """functions-framework serving `target` from `source` (default: functions/<target>/main.py)."""
    source = source or ROOT / "functions" / target / "main.py"
    return [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        str(source),
        "--target",
        target,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]


class FunctionServer:
    """functions-framework serving one function on loopback, in its own process group.

    By default it serves `functions/<target>/main.py`, as the contract starts it; `source` serves
    another file (the benchmarks' bare function), and `pythonpath` puts folders before the root.
    """

    def __init__(
        self,
        target: str,
        env: dict[str, str],
        log_path: Path,
        *,
        port: int | None = None,
        source: Path | None = None,
        pythonpath: Sequence[Path] = (),
        label: str | None = None,
    ) -> None:
        self.name = label or target
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/"
        self.log_path = log_path
        self._command = function_command(target, self.port, source)
        path = os.pathsep.join([*(str(p) for p in pythonpath), str(ROOT)])
        self._env = {**os.environ, **env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> float:
        """Spawn the process without waiting; returns the perf_counter reading just before."""
        started = time.perf_counter()
        self.process = start(self._command, env=self._env, log_path=self.log_path, cwd=ROOT)
        return started

    def start(self, timeout: float = 60.0) -> FunctionServer:
        self.launch()
        # Any HTTP answer means the app is serving (OPTIONS is answered without Firestore).
        wait_until(answers(self.url), timeout, f"function {self.name}", self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            kill(self.process)
            self.process = None

    def log_lines(self, message: str = "", sketch_id: str | None = None) -> list[dict[str, Any]]:
        """The JSON lines the function logged whose message starts with `message` (about `sketch_id`),
        as it wrote them; gunicorn's plain lines, and a line a kill cut short, are left out."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if not raw.startswith("{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if str(line.get("message")).startswith(message) and sketch_id in (None, line.get("sketch_id")):
                lines.append(line)
        return lines

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def worker_pid(self) -> int:
        """The gunicorn worker that serves requests (the newest child of this process), else itself."""
        if self.pid is None:
            raise RuntimeError(f"function {self.name} is not running")
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rpartition(")")[2].split()[1]) == self.pid:
                    children.append(int(entry.name))
        return max(children, default=self.pid)

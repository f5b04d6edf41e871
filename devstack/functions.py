"""The two Cloud Functions, each served by functions-framework in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.processes import LOOPBACK, answers, free_port, kill, start, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("create_sketch", "novita_webhook")


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
    """`functions-framework --source functions/<name>/main.py --target <name>` on loopback."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path, *, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}/"
        self._env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> FunctionServer:
        self._proc = start(
            function_command(self.name, self.port), env=self._env, log_path=self._log_path, cwd=ROOT
        )
        # Any HTTP answer means the app is serving (OPTIONS is answered without Firestore).
        wait_until(answers(self.url), timeout, f"function {self.name}", self._proc)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def kill(self) -> None:
        if self._proc is not None:
            kill(self._proc)
            self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

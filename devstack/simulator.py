"""The Novita simulator as its own process (`python -m novita_simulator`), as the local run and
the benchmarks use it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from devstack.functions import ROOT
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until


class SimulatorProcess:
    def __init__(
        self,
        api_key: str,
        log_path: Path,
        *,
        port: int | None = None,
        image_delay: float | None = None,
        video_delay: float | None = None,
        personality: str | None = None,
        ttl: int | None = None,
        task_result_delay: float | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._cmd = [
            sys.executable,
            "-m",
            "novita_simulator",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--api-key",
            api_key,
        ]
        if image_delay is not None:
            self._cmd += ["--image-delay", str(image_delay)]
        if video_delay is not None:
            self._cmd += ["--video-delay", str(video_delay)]
        if personality is not None:
            self._cmd += ["--personality", personality]
        if ttl is not None:
            self._cmd += ["--ttl", str(ttl)]
        if task_result_delay is not None:
            self._cmd += ["--task-result-delay", str(task_result_delay)]
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> SimulatorProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = start(self._cmd, env=env, log_path=self._log_path, cwd=ROOT)
        wait_until(answers(f"{self.url}/_sim/stats"), timeout, "Novita simulator", self._proc)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def configure(self, **changes: Any) -> None:
        """Change some of the simulator's switches, keeping the rest as they are."""
        httpx.post(f"{self.url}/_sim/config", json=changes, timeout=10).raise_for_status()

    def ledger(self) -> dict[str, Any]:
        """Every paid call and every refusal, as the simulator recorded them."""
        return dict(httpx.get(f"{self.url}/_sim/ledger", timeout=30).raise_for_status().json())

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

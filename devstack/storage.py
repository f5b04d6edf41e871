"""A Cloud Storage emulator (PyPI's `gcp-storage-emulator`, pure Python) as its own process on
loopback (`devstack/storage_server.py`). The functions reach it through the standard
`STORAGE_EMULATOR_HOST`.

It keeps objects in memory, or with `data_dir` on disk, where they outlive a restart (a chaos run
restarts it). It has no authentication, and ignores preconditions: `ifGenerationMatch=0` is sent but
not enforced here (tests check that it is sent, and what the code does with a 412).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from devstack.functions import ROOT
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until


class StorageEmulator:
    def __init__(
        self, log_path: Path, bucket: str, *, port: int | None = None, data_dir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.bucket = bucket
        self._log_path = log_path
        self._data_dir = data_dir
        self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> StorageEmulator:
        # Where it keeps objects is an option of the emulator itself, given before its command.
        kept = ["--in-memory"] if self._data_dir is None else []
        where = [] if self._data_dir is None else [f"--data-dir={self._data_dir.resolve()}"]
        cmd = [
            sys.executable,
            "-m",
            "devstack.storage_server",
            *where,
            "start",
            f"--host={LOOPBACK}",
            f"--port={self.port}",
            *kept,
            f"--default-bucket={self.bucket}",
            "--quiet",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = start(cmd, env=env, log_path=self._log_path, cwd=ROOT)
        wait_until(answers(self.url + "/"), timeout, "Cloud Storage emulator", self._proc)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def restart(self, downtime: float) -> None:
        """Stop the emulator for `downtime` seconds and bring it back on its port; with a `data_dir`,
        with every object it held (it stops between two requests: `devstack/storage_server.py`)."""
        self.stop()
        time.sleep(downtime)
        self.start()

    def read(self, name: str) -> bytes | None:
        """An object's bytes, None if there is no such object."""
        answer = httpx.get(
            f"{self.url}/download/storage/v1/b/{self.bucket}/o/{quote(name, safe='')}?alt=media", timeout=30
        )
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return answer.content

    def object(self, name: str) -> dict[str, object] | None:
        """An object's metadata, None if there is no such object."""
        answer = httpx.get(f"{self.url}/storage/v1/b/{self.bucket}/o/{quote(name, safe='')}", timeout=10)
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        return dict(answer.json())

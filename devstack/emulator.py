"""Google's Firestore emulator, started as one JVM bound to loopback, and where the SDK's emulators are."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

import httpx

from devstack.gate import Gate
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until

JAR_IN_SDK = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
GATE_SETTLE_SECONDS = 0.5


@cache
def sdk_roots() -> list[Path]:
    """Where the Google Cloud SDK (and so its emulators) may be installed, the one gcloud names first."""
    roots: list[Path] = []
    gcloud = shutil.which("gcloud")
    if gcloud:
        try:
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout.strip()
            if out:
                roots.append(Path(out))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return [*roots, Path("/usr/lib/google-cloud-sdk"), Path("/usr/share/google-cloud-sdk")]


def find_jar() -> Path:
    """The emulator jar of the installed Google Cloud SDK (package google-cloud-cli-firestore-emulator)."""
    if os.environ.get("FIRESTORE_EMULATOR_JAR"):
        return Path(os.environ["FIRESTORE_EMULATOR_JAR"])
    for root in sdk_roots():
        if (root / JAR_IN_SDK).is_file():
            return root / JAR_IN_SDK
    raise FileNotFoundError(
        "Firestore emulator jar not found: install the Debian package google-cloud-cli-firestore-emulator"
    )


class FirestoreEmulator:
    """The emulator on `port`. `gated`: its clients reach it through a gate (`devstack/gate.py`) on
    `host`, which `restart` shuts first, so that a restart loses no write a client was told of."""

    def __init__(
        self, log_path: Path, *, port: int | None = None, rules: Path | None = None, gated: bool = False
    ) -> None:
        self.port = port or free_port()
        self._gate = Gate(self.port) if gated else None
        self.host = self._gate.host if self._gate else f"{LOOPBACK}:{self.port}"
        # The emulator's own address, for its readiness, exports and resets, even while gated.
        self._direct = f"http://{LOOPBACK}:{self.port}"
        self._log_path = log_path
        self._rules = rules
        self._import: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 60.0) -> FirestoreEmulator:
        cmd = [
            shutil.which("java") or "java",
            "-Duser.language=en",
            "-cp",
            str(find_jar()),
            MAIN_CLASS,
            "start",
            f"--host={LOOPBACK}",
            f"--port={self.port}",
        ]
        if self._rules is not None:
            cmd.append(f"--rules={self._rules}")
        if self._import is not None:
            cmd.append(f"--import-data={self._import}")
        self._proc = start(cmd, env=dict(os.environ), log_path=self._log_path)
        wait_until(
            answers(self._direct + "/", lambda r: r.status_code == 200 and r.text.strip() == "Ok"),
            timeout,
            "Firestore emulator",
            self._proc,
        )
        if self._gate is not None:
            self._gate.open()
        return self

    def reset(self, project: str) -> None:
        httpx.delete(
            f"{self._direct}/emulator/v1/projects/{project}/databases/(default)/documents", timeout=10
        ).raise_for_status()

    def export(self, project: str, directory: Path) -> Path:
        """Write every document to `directory`; returns the export's metadata file."""
        directory.mkdir(parents=True, exist_ok=True)
        httpx.post(
            f"{self._direct}/emulator/v1/projects/{project}:export",
            json={"database": f"projects/{project}/databases/(default)", "export_directory": str(directory)},
            timeout=60,
        ).raise_for_status()
        return max(directory.glob("*/*.overall_export_metadata"), key=lambda p: p.stat().st_mtime)

    def restart(self, project: str, downtime: float, export_dir: Path) -> None:
        """Stop the emulator for `downtime` seconds and bring it back, documents and all, on its port."""
        if self._gate is not None:
            self._gate.shut()
            # A request the emulator took just before is let finish, so that the export holds it.
            time.sleep(GATE_SETTLE_SECONDS)
        self._import = self.export(project, export_dir)
        self.stop()
        time.sleep(downtime)
        self.start()

    def stop(self) -> None:
        if self._gate is not None:
            self._gate.shut()
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

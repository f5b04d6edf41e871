"""The Firebase Auth emulator (npm's firebase-tools), started as one Node process bound to loopback,
and a guest signed in over its REST API as the app's `signInAnonymously` does.

The emulator's ID tokens are unsigned JWTs (`alg: none`) for the project it was started with:
`aud` the project id, `iss` `https://securetoken.google.com/<project>`, `sub` the uid, `exp` an hour
after `iat`, and `firebase.sign_in_provider` `anonymous` for a guest. The functions accept them only
while FIREBASE_AUTH_EMULATOR_HOST is set (shared/edge/callers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.node import node_command
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until

# Any key does: the emulator checks none (the Firebase JS SDK only needs one to be there).
API_KEY = "local-emulator-key"


@dataclass(frozen=True)
class Guest:
    """An anonymous Firebase user, as the emulator signed it in."""

    uid: str
    id_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.id_token}"}


def sign_in_guest(host: str, timeout: float = 10.0) -> Guest:
    """Sign a new guest in on the Auth emulator at `host` (host:port), as `signInAnonymously` does."""
    response = httpx.post(
        f"http://{host}/identitytoolkit.googleapis.com/v1/accounts:signUp",
        params={"key": API_KEY},
        json={"returnSecureToken": True},
        timeout=timeout,
    )
    response.raise_for_status()
    body = response.json()
    return Guest(uid=body["localId"], id_token=body["idToken"])


def _ready(response: httpx.Response) -> bool:
    try:
        return response.status_code == 200 and response.json()["authEmulator"]["ready"] is True
    except (ValueError, KeyError, TypeError):
        return False


class AuthEmulator:
    """`firebase emulators:start --only auth` for one project, on a free loopback port.

    It runs from a folder of its own holding the generated firebase.json, which is also its HOME and
    TMPDIR, with an environment of its own: no login, credential or emulator variable of whoever runs
    it reaches it (a `demo-` project needs none), and its hub locator file cannot meet another
    stack's. It needs no network: CI=true keeps it from checking for updates and from fetching the
    CLI's message of the day, and the VS Code notification it sends goes to port 0, where nothing
    listens. It needs no Java either: the Auth emulator is Node only.
    """

    def __init__(self, log_path: Path, project: str, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.host = f"{LOOPBACK}:{self.port}"
        self.project = project
        self._log_path = log_path
        self._home: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 60.0) -> AuthEmulator:
        firebase = node_command("firebase-tools/lib/bin/firebase.js")
        self._home = Path(tempfile.mkdtemp(prefix="auth-emulator-"))
        # The emulator hub and its logging service listen too; fixed free ports keep two stacks apart.
        emulators = {
            "auth": {"host": LOOPBACK, "port": self.port},
            "hub": {"host": LOOPBACK, "port": free_port()},
            "logging": {"host": LOOPBACK, "port": free_port()},
            "ui": {"enabled": False},
        }
        config = self._home / "firebase.json"
        config.write_text(json.dumps({"emulators": emulators}, indent=2))
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self._home),
            "TMPDIR": str(self._home),
            "CI": "true",
            "VSCODE_WEBHOOK_PORT": "0",
        }
        cmd = [
            *firebase,
            "emulators:start",
            "--only",
            "auth",
            "--project",
            self.project,
            "--config",
            str(config),
        ]
        self._proc = start(cmd, env=env, log_path=self._log_path, cwd=self._home)
        wait_until(answers(self.url + "/", _ready), timeout, "Firebase Auth emulator", self._proc)
        return self

    def sign_in_guest(self) -> Guest:
        return sign_in_guest(self.host)

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

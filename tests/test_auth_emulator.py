"""The Firebase Auth emulator of the local stack (devstack/auth.py, npm's firebase-tools): it starts
offline, with no Java and no login, signs guests in over REST as `signInAnonymously` does, and its
tokens are what `create_sketch` accepts while FIREBASE_AUTH_EMULATOR_HOST is set, and only then.

What its ID tokens look like, as this test pins them down: a JWT whose header is
`{"alg": "none", "typ": "JWT"}` and whose signature is empty; claims `aud` the project id, `iss`
`https://securetoken.google.com/<project>`, `sub` and `user_id` the uid, `iat`, `auth_time`, `exp`
an hour after `iat`, `provider_id` `anonymous` and `firebase` `{"identities": {}, "sign_in_provider":
"anonymous"}` for a guest.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import LOG_DIR

from devstack.auth import AuthEmulator, Guest, sign_in_guest
from devstack.emulator import FirestoreEmulator
from devstack.functions import FunctionServer
from devstack.processes import LOOPBACK

pytestmark = [pytest.mark.timeout(120), pytest.mark.stack]

PROJECT = "demo-auth-emulator-test"


def decode(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def node_only(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PATH with Node.js alone on it: no java, no gcloud, no firebase login helper."""
    folder = tmp_path_factory.mktemp("node-only")
    node = shutil.which("node")
    assert node is not None, "Node.js is required: scripts/setup.sh"
    (folder / "node").symlink_to(node)
    return str(folder)


@pytest.fixture(scope="module")
def auth(node_only: str) -> Iterator[AuthEmulator]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", node_only)
        emulator = AuthEmulator(LOG_DIR / "auth-emulator-test.log", PROJECT).start()
    yield emulator
    emulator.stop()


def create_sketch(firestore: FirestoreEmulator, name: str, **env: str) -> FunctionServer:
    """`create_sketch` requiring Firebase ID tokens for PROJECT, on the Firestore emulator."""
    server = FunctionServer(
        "create_sketch",
        {
            "NOVITA_API_KEY": "unused",
            "WEBHOOK_URL": f"http://{LOOPBACK}:9/",
            "WEBHOOK_SECRET": "auth-emulator-test-secret",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": firestore.host,
            "AUTH_MODE": "firebase",
            **env,
        },
        LOG_DIR / f"auth-emulator-{name}-create_sketch.log",
    )
    return server.start()


def test_it_starts_offline_with_no_java_and_no_login(auth: AuthEmulator, node_only: str) -> None:
    assert shutil.which("java", path=node_only) is None  # it was started with only Node on its PATH
    assert auth.pid is not None and Path(f"/proc/{auth.pid}").exists()
    assert auth.host == f"{LOOPBACK}:{auth.port}"
    logged = (LOG_DIR / "auth-emulator-test.log").read_text(errors="replace")
    assert "All emulators ready" in logged
    # CI=true: it did not try to fetch the CLI's message of the day from Firebase's servers.
    assert "MOTD" not in logged
    assert httpx.get(auth.url + "/", timeout=5).json()["authEmulator"]["ready"] is True


def test_a_guest_token_is_unsigned_and_names_the_project(auth: AuthEmulator) -> None:
    before = int(time.time())
    guest = auth.sign_in_guest()
    header, claims, signature = guest.id_token.split(".")

    assert decode(header) == {"alg": "none", "typ": "JWT"}
    assert signature == ""
    payload = decode(claims)
    assert payload["aud"] == PROJECT
    assert payload["iss"] == f"https://securetoken.google.com/{PROJECT}"
    assert payload["sub"] == payload["user_id"] == guest.uid
    assert payload["firebase"] == {"identities": {}, "sign_in_provider": "anonymous"}
    assert payload["provider_id"] == "anonymous"
    assert before - 5 <= payload["auth_time"] <= payload["iat"] <= time.time() + 5
    assert payload["exp"] - payload["iat"] == 3600
    assert guest.headers == {"Authorization": f"Bearer {guest.id_token}"}
    # Every sign-up is a new guest.
    assert sign_in_guest(auth.host).uid != guest.uid


def test_functions_accept_its_tokens_only_while_its_host_is_set(
    emulator: FirestoreEmulator, auth: AuthEmulator
) -> None:
    guest: Guest = auth.sign_in_guest()
    trusting = create_sketch(emulator, "trusting", FIREBASE_AUTH_EMULATOR_HOST=auth.host)
    # As deployed: the variable is not set (an empty value is not set either, whatever this
    # process's own environment holds).
    deployed = create_sketch(emulator, "deployed", FIREBASE_AUTH_EMULATOR_HOST="")
    try:
        with httpx.Client(timeout=10) as http:
            listed = http.get(trusting.url, params={"limit": 5}, headers=guest.headers)
            assert listed.status_code == 200, listed.text
            assert listed.json() == {"sketches": [], "next_page_token": None}
            missing = http.get(trusting.url, params={"id": "0" * 32}, headers=guest.headers)
            assert missing.status_code == 404, missing.text
            assert http.get(trusting.url, params={"limit": 5}).status_code == 401

            refused = http.get(deployed.url, params={"limit": 5}, headers=guest.headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "unauthenticated"
    finally:
        trusting.stop()
        deployed.stop()


def test_stop_ends_its_process() -> None:
    emulator = AuthEmulator(LOG_DIR / "auth-emulator-stop-test.log", PROJECT).start()
    pid, url = emulator.pid, emulator.url
    assert pid is not None
    sign_in_guest(emulator.host)
    emulator.stop()
    assert not Path(f"/proc/{pid}").exists()
    assert emulator.pid is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/", timeout=2)
    emulator.stop()  # a second stop is harmless

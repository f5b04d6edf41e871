"""firestore.rules, enforced by a real Firestore emulator of its own (started with --rules).

Documents are seeded with the emulator's admin credential (`Bearer owner`, which bypasses the
rules); clients are then played through the REST API with the unsigned ID tokens the emulator
accepts (`alg: none`, Firebase claims), as a signed-in owner, another user and nobody.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.emulator import FirestoreEmulator

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "sketch-rules-test"
ADMIN = {"Authorization": "Bearer owner"}
TIMEOUT = httpx.Timeout(10.0, connect=5.0)

pytestmark = pytest.mark.timeout(120)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(uid: str) -> str:
    """An unsigned Firebase ID token for `uid`; the emulator trusts it, production would not."""
    now = int(time.time())
    claims = {
        "sub": uid,
        "user_id": uid,
        "aud": PROJECT,
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "iat": now,
        "exp": now + 3600,
        "auth_time": now,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def as_user(uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {id_token(uid)}"}


NOBODY: dict[str, str] = {}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirestoreEmulator]:
    log = tmp_path_factory.mktemp("rules-emulator") / "firestore-emulator.log"
    emu = FirestoreEmulator(log, rules=ROOT / "firestore.rules").start()
    yield emu
    emu.stop()


class Docs:
    def __init__(self, emulator: FirestoreEmulator) -> None:
        self.base = f"{emulator.url}/v1/projects/{PROJECT}/databases/(default)/documents"
        self.http = httpx.Client(timeout=TIMEOUT)

    def seed(self, path: str, **fields: str) -> None:
        body = {"fields": {k: {"stringValue": v} for k, v in fields.items()}}
        self.http.patch(f"{self.base}/{path}", json=body, headers=ADMIN).raise_for_status()

    def get(self, path: str, headers: dict[str, str]) -> httpx.Response:
        return self.http.get(f"{self.base}/{path}", headers=headers)

    def query(self, headers: dict[str, str], user_id: str | None) -> httpx.Response:
        query: dict[str, Any] = {"from": [{"collectionId": "sketches"}]}
        if user_id is not None:
            query["where"] = {
                "fieldFilter": {
                    "field": {"fieldPath": "user_id"},
                    "op": "EQUAL",
                    "value": {"stringValue": user_id},
                }
            }
        return self.http.post(f"{self.base}:runQuery", json={"structuredQuery": query}, headers=headers)


@pytest.fixture
def docs(emulator: FirestoreEmulator) -> Iterator[Docs]:
    emulator.reset(PROJECT)
    client = Docs(emulator)
    client.seed("sketches/alice-1", user_id="alice", prompt="a red fox", status="image_pending")
    client.seed("sketches/bob-1", user_id="bob", prompt="a blue whale", status="complete")
    client.seed("sketches/anonymous-1", prompt="made with AUTH_MODE=none", status="complete")
    client.seed("other/alice", user_id="alice", note="not a sketch")
    yield client
    client.http.close()


def test_owner_reads_own_sketch(docs: Docs) -> None:
    response = docs.get("sketches/alice-1", as_user("alice"))
    assert response.status_code == 200, response.text
    assert response.json()["fields"]["user_id"] == {"stringValue": "alice"}


def test_other_user_is_denied(docs: Docs) -> None:
    assert docs.get("sketches/alice-1", as_user("bob")).status_code == 403
    assert docs.get("sketches/bob-1", as_user("alice")).status_code == 403


def test_nobody_is_denied(docs: Docs) -> None:
    assert docs.get("sketches/alice-1", NOBODY).status_code == 403


def test_sketch_without_owner_is_readable_by_no_client(docs: Docs) -> None:
    assert docs.get("sketches/anonymous-1", as_user("alice")).status_code == 403
    assert docs.get("sketches/anonymous-1", NOBODY).status_code == 403


def test_missing_sketch_is_not_readable(docs: Docs) -> None:
    assert docs.get("sketches/none-such", as_user("alice")).status_code == 403


def test_listing_is_limited_to_own_sketches(docs: Docs) -> None:
    own = docs.query(as_user("alice"), "alice")
    assert own.status_code == 200, own.text
    names = [row["document"]["name"].rsplit("/", 1)[1] for row in own.json() if "document" in row]
    assert names == ["alice-1"]
    assert docs.query(as_user("alice"), "bob").status_code == 403
    assert docs.query(as_user("alice"), None).status_code == 403
    assert docs.query(NOBODY, "alice").status_code == 403
    assert docs.http.get(f"{docs.base}/sketches", headers=as_user("alice")).status_code == 403


def test_owner_cannot_write_create_or_delete(docs: Docs) -> None:
    owner = as_user("alice")
    change = {"fields": {"user_id": {"stringValue": "alice"}, "status": {"stringValue": "complete"}}}
    assert docs.http.patch(f"{docs.base}/sketches/alice-1", json=change, headers=owner).status_code == 403
    assert (
        docs.http.post(
            f"{docs.base}/sketches",
            params={"documentId": "alice-2"},
            json={"fields": {"user_id": {"stringValue": "alice"}}},
            headers=owner,
        ).status_code
        == 403
    )
    assert docs.http.delete(f"{docs.base}/sketches/alice-1", headers=owner).status_code == 403
    assert docs.http.patch(f"{docs.base}/sketches/x", json=change, headers=NOBODY).status_code == 403
    stored = docs.get("sketches/alice-1", ADMIN).json()["fields"]
    assert stored["status"] == {"stringValue": "image_pending"}
    assert docs.get("sketches/alice-2", ADMIN).status_code == 404


def test_everything_else_is_denied(docs: Docs) -> None:
    assert docs.get("other/alice", as_user("alice")).status_code == 403
    assert (
        docs.http.patch(
            f"{docs.base}/users/alice",
            json={"fields": {"x": {"stringValue": "y"}}},
            headers=as_user("alice"),
        ).status_code
        == 403
    )


def test_admin_bypasses_the_rules(docs: Docs) -> None:
    # The seeding path the other tests rely on, and proof the denials come from the rules.
    assert docs.get("sketches/bob-1", ADMIN).status_code == 200

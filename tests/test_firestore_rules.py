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
from datetime import UTC, datetime
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


# The bookkeeping collections of the functions, next to `sketches`.
BOOKKEEPING = ("sketches_slots", "sketches_idempotency", "sketches_daily", "sketches_breakers")


def _value(value: str | datetime) -> dict[str, str]:
    if isinstance(value, datetime):
        return {"timestampValue": value.isoformat().replace("+00:00", "Z")}
    return {"stringValue": value}


class Docs:
    def __init__(self, emulator: FirestoreEmulator) -> None:
        self.base = f"{emulator.url}/v1/projects/{PROJECT}/databases/(default)/documents"
        self.http = httpx.Client(timeout=TIMEOUT)

    def seed(self, path: str, **fields: str | datetime) -> None:
        body = {"fields": {k: _value(v) for k, v in fields.items()}}
        self.http.patch(f"{self.base}/{path}", json=body, headers=ADMIN).raise_for_status()

    def get(self, path: str, headers: dict[str, str]) -> httpx.Response:
        return self.http.get(f"{self.base}/{path}", headers=headers)

    def query(
        self,
        headers: dict[str, str],
        user_id: str | None,
        *,
        limit: int | None = 20,
        collection: str = "sketches",
        all_descendants: bool = False,
    ) -> httpx.Response:
        """The gallery query (`GET create_sketch` without id), or a variation of it."""
        query: dict[str, Any] = {
            "from": [{"collectionId": collection, "allDescendants": all_descendants}],
            "orderBy": [
                {"field": {"fieldPath": "created_at"}, "direction": "DESCENDING"},
                {"field": {"fieldPath": "__name__"}, "direction": "DESCENDING"},
            ],
        }
        if user_id is not None:
            query["where"] = {
                "fieldFilter": {
                    "field": {"fieldPath": "user_id"},
                    "op": "EQUAL",
                    "value": {"stringValue": user_id},
                }
            }
        if limit is not None:
            query["limit"] = limit
        return self.http.post(f"{self.base}:runQuery", json={"structuredQuery": query}, headers=headers)


def names(response: httpx.Response) -> list[str]:
    return [row["document"]["name"].rsplit("/", 1)[1] for row in response.json() if "document" in row]


@pytest.fixture
def docs(emulator: FirestoreEmulator) -> Iterator[Docs]:
    emulator.reset(PROJECT)
    client = Docs(emulator)
    older, newer = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    client.seed(
        "sketches/alice-1", user_id="alice", prompt="a red fox", status="image_pending", created_at=older
    )
    client.seed(
        "sketches/alice-2", user_id="alice", prompt="a green owl", status="complete", created_at=newer
    )
    client.seed("sketches/bob-1", user_id="bob", prompt="a blue whale", status="complete", created_at=newer)
    client.seed(
        "sketches/anonymous-1", prompt="made with AUTH_MODE=none", status="complete", created_at=newer
    )
    client.seed("other/alice", user_id="alice", note="not a sketch")
    for collection in BOOKKEEPING:
        client.seed(f"{collection}/alice", user_id="alice", created_at=older)
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


def test_owner_lists_own_sketches_newest_first(docs: Docs) -> None:
    own = docs.query(as_user("alice"), "alice")
    assert own.status_code == 200, own.text
    assert names(own) == ["alice-2", "alice-1"]
    # A page of the API's largest size is allowed too.
    assert docs.query(as_user("alice"), "alice", limit=50).status_code == 200


def test_listing_another_users_sketches_is_denied(docs: Docs) -> None:
    assert docs.query(as_user("alice"), "bob").status_code == 403
    assert docs.query(as_user("bob"), "alice").status_code == 403


def test_listing_without_the_owner_filter_is_denied(docs: Docs) -> None:
    assert docs.query(as_user("alice"), None).status_code == 403
    assert docs.http.get(f"{docs.base}/sketches", headers=as_user("alice")).status_code == 403


def test_listing_needs_a_page_limit_of_at_most_50(docs: Docs) -> None:
    assert docs.query(as_user("alice"), "alice", limit=None).status_code == 403
    assert docs.query(as_user("alice"), "alice", limit=51).status_code == 403


def test_listing_unsigned_or_across_collections_is_denied(docs: Docs) -> None:
    assert docs.query(NOBODY, "alice").status_code == 403
    assert docs.query(as_user("alice"), "alice", all_descendants=True).status_code == 403


@pytest.mark.parametrize("collection", BOOKKEEPING)
def test_bookkeeping_collections_are_closed_to_clients(docs: Docs, collection: str) -> None:
    alice = as_user("alice")
    assert docs.get(f"{collection}/alice", alice).status_code == 403
    assert docs.query(alice, "alice", collection=collection).status_code == 403
    change = {"fields": {"user_id": {"stringValue": "alice"}}}
    assert docs.http.patch(f"{docs.base}/{collection}/alice", json=change, headers=alice).status_code == 403
    assert docs.get(f"{collection}/alice", ADMIN).status_code == 200


def test_owner_cannot_write_create_or_delete(docs: Docs) -> None:
    owner = as_user("alice")
    change = {"fields": {"user_id": {"stringValue": "alice"}, "status": {"stringValue": "complete"}}}
    assert docs.http.patch(f"{docs.base}/sketches/alice-1", json=change, headers=owner).status_code == 403
    assert (
        docs.http.post(
            f"{docs.base}/sketches",
            params={"documentId": "alice-3"},
            json={"fields": {"user_id": {"stringValue": "alice"}}},
            headers=owner,
        ).status_code
        == 403
    )
    assert docs.http.delete(f"{docs.base}/sketches/alice-1", headers=owner).status_code == 403
    assert docs.http.patch(f"{docs.base}/sketches/x", json=change, headers=NOBODY).status_code == 403
    stored = docs.get("sketches/alice-1", ADMIN).json()["fields"]
    assert stored["status"] == {"stringValue": "image_pending"}
    assert docs.get("sketches/alice-3", ADMIN).status_code == 404


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

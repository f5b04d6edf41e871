"""The sketch store where the emulator cannot reach: writes whose answers were lost."""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.firestore_rest import Firestore
from shared.sketch import utcnow
from shared.sketch_store import SketchStore
from tests.conftest import firestore_error

SLOT = "projects/p/databases/(default)/documents/sketches_slots/x"


def _slot(sketch_id: str, update_time: str) -> httpx.Response:
    fields = {
        "user_id": {"stringValue": "u"},
        "sketch_id": {"stringValue": sketch_id},
        "taken_at": {"timestampValue": utcnow().isoformat().replace("+00:00", "Z")},
    }
    return httpx.Response(200, json={"name": SLOT, "fields": fields, "updateTime": update_time})


def _store(*answers: httpx.Response) -> tuple[SketchStore, list[httpx.Request]]:
    script = list(answers)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return script.pop(0)

    http = httpx.Client(transport=httpx.MockTransport(answer))
    return SketchStore(Firestore(http, "p", base_url="http://firestore.test"), "sketches"), seen


def _calls(seen: list[httpx.Request]) -> list[str]:
    def describe(request: httpx.Request) -> str:
        if request.method == "GET":
            return "read"
        write: dict[str, Any] = json.loads(request.content)["writes"][0]
        return "create" if write["currentDocument"] == {"exists": False} else "update"

    return [describe(r) for r in seen]


def test_a_slot_our_own_lost_create_took_is_ours() -> None:
    # The create landed, its answer was lost, and the retry was refused as a duplicate.
    store, seen = _store(firestore_error(409, "ALREADY_EXISTS"), _slot("mine", "t1"))
    assert store.claim_slot("u", "mine", slots=1) is True
    assert _calls(seen) == ["create", "read"]


def test_a_slot_our_own_lost_update_took_is_ours() -> None:
    # A final sketch held the place; our conditional update landed but its retry was refused.
    final = {"status": {"stringValue": "complete"}}
    holder = httpx.Response(
        200,
        json={
            "name": "projects/p/databases/(default)/documents/sketches/old",
            "fields": {**final, **_sketch_fields("old")},
            "updateTime": "t0",
        },
    )
    store, seen = _store(
        firestore_error(409, "ALREADY_EXISTS"),
        _slot("old", "t1"),
        holder,
        firestore_error(400, "FAILED_PRECONDITION"),
        _slot("mine", "t2"),
    )
    assert store.claim_slot("u", "mine", slots=1) is True
    assert _calls(seen) == ["create", "read", "read", "update", "read"]


def test_a_slot_somebody_else_holds_is_not_taken() -> None:
    store, seen = _store(
        firestore_error(409, "ALREADY_EXISTS"), _slot("theirs", "t1"), firestore_error(404, "NOT_FOUND")
    )
    # "theirs" is not stored yet and the place was taken a moment ago: it stays taken.
    assert store.claim_slot("u", "mine", slots=1) is False
    assert _calls(seen) == ["create", "read", "read"]


def _sketch_fields(sketch_id: str) -> dict[str, Any]:
    text = {"stringValue": ""}
    number = {"integerValue": "720"}
    moment = {"timestampValue": "2026-11-24T00:00:00Z"}
    return {
        "id": {"stringValue": sketch_id},
        "prompt": text,
        "negative_prompt": text,
        "video_prompt": text,
        "width": number,
        "height": number,
        "duration": {"integerValue": "5"},
        "seed": {"integerValue": "-1"},
        "created_at": moment,
        "updated_at": moment,
    }

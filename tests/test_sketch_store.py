"""The sketch store where the emulator cannot reach: writes whose answers were lost."""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.google.api import GoogleApi
from shared.google.firestore import Firestore, encode_fields
from shared.sketch.model import Sketch, Status, utcnow
from shared.sketch.request import CreateSketchRequest
from shared.sketch.store import SketchStore
from tests.conftest import Scripted, firestore_error
from tests.google_http import MockHttp

DOCUMENTS = "projects/p/databases/(default)/documents"


def _document(path: str, data: dict[str, Any], update_time: str) -> httpx.Response:
    body = {"name": f"{DOCUMENTS}/{path}", "fields": encode_fields(data), "updateTime": update_time}
    return httpx.Response(200, json=body)


def _slot(sketch_id: str, update_time: str) -> httpx.Response:
    data = {"user_id": "u", "sketch_id": sketch_id, "taken_at": utcnow()}
    return _document("sketches_slots/x", data, update_time)


def _store(*answers: httpx.Response) -> tuple[SketchStore, list[httpx.Request]]:
    script = Scripted(*answers)
    http = MockHttp(script)
    return SketchStore(
        Firestore(GoogleApi(http), "p", base_url="http://firestore.test"), "sketches"
    ), script.requests


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
    old = Sketch.new("old", CreateSketchRequest(prompt="p"), utcnow(), "u", utcnow(), "task")
    final = old.replace(status=Status.COMPLETE).to_document()
    store, seen = _store(
        firestore_error(409, "ALREADY_EXISTS"),
        _slot("old", "t1"),
        _document("sketches/old", final, "t0"),
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

"""The Firestore REST client: its values, and its calls against the real emulator (writes, atomic
commits, increments, queries with cursors); the plumbing under it is tests/test_google_api.py's."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from devstack.emulator import FirestoreEmulator
from shared.core.http import KeptAlive, Request, Response, TransportError, tls_context
from shared.google.api import (
    TIMEOUT,
    AlreadyExists,
    ApiError,
    GoogleApi,
    PreconditionFailed,
    Unavailable,
)
from shared.google.firestore import (
    NAME_FIELD,
    Direction,
    Document,
    Firestore,
    Write,
    decode_fields,
    encode_fields,
    field_path,
)
from shared.sketch.model import Status
from tests.conftest import Scripted
from tests.google_http import MockHttp

# A project of these tests' own on the shared emulator.
PROJECT = "rest-tests"

# ------------------------------------------------------------------------------------- values


def test_values_survive_the_round_trip() -> None:
    moment = datetime(2026, 11, 24, 3, 57, 6, 123456, tzinfo=UTC)
    data = {
        "none": None,
        "yes": True,
        "count": 2**40,
        "ratio": 0.5,
        "text": "über 🦭",
        "at": moment,
        "map": {"inner": [1, "two", None]},
    }
    assert decode_fields(json.loads(json.dumps(encode_fields(data)))) == data


def test_values_are_encoded_as_firestore_expects() -> None:
    east = timezone(timedelta(hours=2))
    fields = encode_fields(
        {"n": 7, "flag": False, "status": Status.IMAGE_PENDING, "at": datetime(2026, 1, 1, 2, tzinfo=east)}
    )
    assert fields == {
        "n": {"integerValue": "7"},  # int64 travels as a string
        "flag": {"booleanValue": False},  # not an integer, although bool is an int in Python
        "status": {"stringValue": "image_pending"},
        "at": {"timestampValue": "2026-01-01T00:00:00.000000Z"},
    }


def test_nanosecond_timestamps_are_read() -> None:
    decoded = decode_fields({"at": {"timestampValue": "2026-11-24T03:57:06.123456789Z"}})
    assert decoded["at"] == datetime(2026, 11, 24, 3, 57, 6, 123456, tzinfo=UTC)


def test_values_the_store_cannot_keep_are_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        encode_fields({"at": datetime(2026, 1, 1)})
    with pytest.raises(TypeError, match="set"):
        encode_fields({"tags": {"a", "b"}})


def test_field_names_that_are_not_identifiers_are_quoted() -> None:
    assert field_path("recovery_due_at") == "recovery_due_at"
    assert field_path("odd-name") == "`odd-name`"
    assert field_path("a`b") == "`a\\`b`"


# ------------------------------------------------------------------------- against the emulator


@pytest.fixture
def http(emulator: FirestoreEmulator) -> Iterator[KeptAlive]:
    emulator.reset(PROJECT)
    with closing(KeptAlive(tls_context(), TIMEOUT)) as client:
        yield client


@pytest.fixture
def db(emulator: FirestoreEmulator, http: KeptAlive) -> Firestore:
    return Firestore(GoogleApi(http), PROJECT, base_url=emulator.url)


def test_create_get_and_conditional_update(db: Firestore) -> None:
    doc_id = uuid.uuid4().hex
    first = db.create("things", doc_id, {"n": 1, "name": "walrus"})
    got = db.get("things", doc_id)
    assert got is not None and got.data == {"n": 1, "name": "walrus"} and got.update_time == first

    second = db.update("things", doc_id, {"n": 2, "odd-name": True}, if_update_time=first)
    assert second != first
    got = db.get("things", doc_id)
    assert got is not None and got.data == {"n": 2, "name": "walrus", "odd-name": True}

    with pytest.raises(PreconditionFailed):
        db.update("things", doc_id, {"n": 3}, if_update_time=first)  # stale: someone wrote since
    with pytest.raises(AlreadyExists):
        db.create("things", doc_id, {"n": 9})
    got = db.get("things", doc_id)
    assert got is not None and got.data["n"] == 2 and got.update_time == second


def test_a_missing_document_reads_as_none_and_cannot_be_updated(db: Firestore) -> None:
    assert db.get("things", "nobody") is None
    with pytest.raises(PreconditionFailed):
        db.update("things", "nobody", {"n": 1}, if_update_time="2026-01-01T00:00:00.000001Z")
    assert db.get("things", "nobody") is None


def test_documents_written_here_read_the_same_through_the_sdk(db: Firestore) -> None:
    moment = datetime(2026, 11, 24, 3, 57, 6, 123456, tzinfo=UTC)
    db.create("things", "shared", {"at": moment, "n": 5, "none": None})
    snapshot = firestore.Client(project=PROJECT).collection("things").document("shared").get()
    assert snapshot.to_dict() == {"at": moment, "n": 5, "none": None}


def test_a_refused_call_says_why(db: Firestore) -> None:
    with pytest.raises(ApiError, match="INVALID_ARGUMENT") as caught:
        db.create("things", "x", {"": 1})  # an empty field name
    assert not isinstance(caught.value, Unavailable)


class LosesFirstAnswer(KeptAlive):
    """Passes requests to the emulator; the first answer is lost on its way back, as when a
    connection drops after Firestore applied the write."""

    def __init__(self) -> None:
        super().__init__(tls_context(), TIMEOUT)
        self.sent = 0

    def send(self, request: Request) -> Response:
        self.sent += 1
        response = super().send(request)
        if self.sent == 1:
            raise TransportError("connection reset")
        return response


def test_a_create_whose_answer_was_lost_is_refused_when_tried_again(emulator: FirestoreEmulator) -> None:
    emulator.reset(PROJECT)
    transport = LosesFirstAnswer()
    with closing(transport) as lossy:
        db = Firestore(GoogleApi(lossy), PROJECT, base_url=emulator.url)
        # The first attempt landed; its retry finds the document there, so the caller reads it again
        # rather than writing it twice.
        with pytest.raises(AlreadyExists):
            db.create("things", "once", {"n": 1})
        got = db.get("things", "once")
    assert transport.sent == 3  # the create, its retry, the read
    assert got is not None and got.data == {"n": 1}


def test_an_update_names_its_fields_and_the_version_it_expects() -> None:
    script = Scripted(httpx.Response(200, json={"writeResults": [{"updateTime": "t2"}]}))
    db = Firestore(GoogleApi(MockHttp(script)), "p", base_url="http://fs.test")
    assert db.update("c", "d", {"n": 1}, if_update_time="t1") == "t2"
    request = script.requests[0]
    assert str(request.url) == "http://fs.test/v1/projects/p/databases/(default)/documents:commit"
    assert json.loads(request.content) == {
        "writes": [
            {
                "update": {
                    "name": "projects/p/databases/(default)/documents/c/d",
                    "fields": {"n": {"integerValue": "1"}},
                },
                "updateMask": {"fieldPaths": ["n"]},
                "currentDocument": {"updateTime": "t1"},
            }
        ]
    }


# ------------------------------------------------------------------------------------- commits


def test_a_commit_lands_every_write(db: Firestore) -> None:
    before = db.create("things", "a", {"n": 1, "name": "walrus"})
    results = db.commit(
        [
            Write("things", "b", {"n": 1}, "absent"),
            Write("things", "a", {"n": 2}, before),
            Write("counters", "c", {"day": "mon"}, None, increments={"count": 5}),
        ]
    )
    assert [sums for _, sums in results] == [[], [], [5]]
    a, b, c = db.get("things", "a"), db.get("things", "b"), db.get("counters", "c")
    assert a is not None and a.data == {"n": 2, "name": "walrus"} and a.update_time == results[1][0]
    assert b is not None and b.data == {"n": 1} and b.update_time == results[0][0]
    assert c is not None and c.data == {"day": "mon", "count": 5}


@pytest.mark.parametrize(
    ("failing", "kind"),
    [("stale", PreconditionFailed), ("taken", AlreadyExists)],
)
def test_a_commit_with_one_failed_precondition_writes_nothing(
    db: Firestore, failing: str, kind: type[ApiError]
) -> None:
    stale = db.create("things", "a", {"n": 1})
    now = db.update("things", "a", {"n": 2}, if_update_time=stale)
    other = (
        Write("things", "a", {"n": 3}, stale)
        if failing == "stale"
        else Write("things", "a", {"n": 3}, "absent")
    )
    with pytest.raises(kind):
        db.commit(
            [
                Write("things", "b", {"n": 1}, "absent"),
                Write("counters", "c", {}, None, increments={"count": 1}),
                other,
            ]
        )
    assert db.get("things", "b") is None and db.get("counters", "c") is None
    a = db.get("things", "a")
    assert a is not None and a.data == {"n": 2} and a.update_time == now


def test_an_increment_creates_the_document_and_gives_the_sum(db: Firestore) -> None:
    assert db.increment("counters", "day", "count", 1, {"day": "2026-11-24"}) == 1
    assert db.increment("counters", "day", "count", 2, {"day": "2026-11-24"}) == 3
    assert db.increment("counters", "day", "count", -1, {"day": "2026-11-24"}) == 2
    got = db.get("counters", "day")
    assert got is not None and got.data == {"day": "2026-11-24", "count": 2}


def test_concurrent_increments_each_get_their_own_sum(db: Firestore) -> None:
    start = threading.Barrier(20)

    def take(_: int) -> int:
        start.wait(timeout=10)
        return db.increment("counters", "busy", "count", 1, {"day": "2026-11-24"})

    with ThreadPoolExecutor(max_workers=20) as pool:
        sums = list(pool.map(take, range(20), timeout=30))
    assert sorted(sums) == list(range(1, 21))
    got = db.get("counters", "busy")
    assert got is not None and got.data["count"] == 20


# ------------------------------------------------------------------------------------- queries


BASE = datetime(2026, 11, 24, tzinfo=UTC)


def _page_through(db: Firestore, direction: Direction, cutoff: datetime, page: int) -> list[Document]:
    found: list[Document] = []
    for _ in range(50):
        last = found[-1] if found else None
        documents = db.query(
            "things",
            where=[("kind", "EQUAL", "sketch"), ("due", "LESS_THAN_OR_EQUAL", cutoff)],
            order_by=[("due", direction), (NAME_FIELD, direction)],
            start_after=None if last is None else [last.data["due"], last.id],
            limit=page,
        )
        assert len(documents) <= page
        found += documents
        if len(documents) < page:
            return found
    raise AssertionError("the pages did not end")


@pytest.mark.parametrize("direction", ["ASCENDING", "DESCENDING"])
def test_query_pages_never_repeat_or_skip(db: Firestore, direction: Direction) -> None:
    # Many documents share a due time: only the name, as the last ordering, tells them apart.
    wanted: list[tuple[datetime, str]] = []
    for i in range(23):
        due, doc_id = BASE + timedelta(minutes=i % 4), f"s{i:02d}"
        db.create("things", doc_id, {"kind": "sketch", "due": due})
        wanted.append((due, doc_id))
    db.create("things", "late", {"kind": "sketch", "due": BASE + timedelta(hours=1)})
    db.create("things", "never", {"kind": "sketch", "due": None})
    db.create("things", "other", {"kind": "other", "due": BASE})
    wanted.sort(reverse=direction == "DESCENDING")

    found = _page_through(db, direction, BASE + timedelta(minutes=30), page=4)
    assert [(d.data["due"], d.id) for d in found] == wanted
    # Each carries the version a conditional write names.
    first = found[0]
    db.update("things", first.id, {"seen": True}, if_update_time=first.update_time)


def test_a_query_stops_at_its_limit(db: Firestore) -> None:
    for minutes in (30, 10, 20):
        db.create("things", f"m{minutes}", {"due": BASE + timedelta(minutes=minutes)})
    found = db.query("things", order_by=[("due", "ASCENDING")], limit=2)
    assert [d.id for d in found] == ["m10", "m20"]
    assert db.query("things", where=[("due", "LESS_THAN", BASE)], limit=2) == []


def test_a_query_whose_stream_breaks_off_is_an_error() -> None:
    document: dict[str, Any] = {"name": "projects/p/databases/(default)/documents/c/d", "updateTime": "t1"}
    stream = [
        {"document": document, "readTime": "t"},
        {"error": {"code": 503, "message": "stream reset", "status": "UNAVAILABLE"}},
    ]
    script = Scripted(httpx.Response(200, json=stream))
    db = Firestore(GoogleApi(MockHttp(script)), "p", base_url="http://fs.test")
    with pytest.raises(Unavailable, match="stream reset"):
        db.query("c", limit=10)

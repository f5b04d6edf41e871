"""The Firestore REST client: its values, its calls against the real emulator, what it retries,
and the access token it gets from a metadata server (a loopback stand-in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from devstack.emulator import FirestoreEmulator
from devstack.functions import ROOT
from shared.config import settings_from
from shared.firestore_rest import (
    EMULATOR_TOKEN,
    RETRY_WINDOW,
    TIMEOUT,
    AlreadyExists,
    Firestore,
    FirestoreError,
    MetadataToken,
    NotFound,
    PreconditionFailed,
    StaticToken,
    TokenSource,
    Unavailable,
    decode_fields,
    encode_fields,
    field_path,
)
from shared.runtime import firestore_client
from shared.sketch import Status
from tests.conftest import PROJECT, Scripted, firestore_error

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
def db(emulator: FirestoreEmulator) -> Iterator[Firestore]:
    emulator.reset(PROJECT)
    with httpx.Client(timeout=TIMEOUT) as http:
        yield Firestore(http, PROJECT, base_url=emulator.url)


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


def test_at_most_lists_in_order_up_to_the_limit(db: Firestore) -> None:
    base = datetime(2026, 11, 24, tzinfo=UTC)
    for minutes in (30, 10, 20, 40, 50):
        db.create("things", f"m{minutes}", {"due": base + timedelta(minutes=minutes)})
    db.create("things", "never", {"due": None})
    found = db.at_most("things", "due", base + timedelta(minutes=40), limit=3)
    assert [d.id for d in found] == ["m10", "m20", "m30"]
    assert all(d.update_time for d in found)
    assert db.at_most("things", "due", base, limit=3) == []


def test_a_refused_call_says_why(db: Firestore) -> None:
    with pytest.raises(FirestoreError, match="INVALID_ARGUMENT") as caught:
        db.create("things", "x", {"": 1})  # an empty field name
    assert not isinstance(caught.value, Unavailable)


# ------------------------------------------------------------------------------------ retries


DOC = {"name": "projects/p/databases/(default)/documents/c/d", "fields": {}, "updateTime": "t1"}


def _db(script: Scripted, sleeps: list[float], token: TokenSource = EMULATOR_TOKEN) -> Firestore:
    http = httpx.Client(transport=httpx.MockTransport(script))
    return Firestore(http, "p", base_url="http://firestore.test", token=token, sleep=sleeps.append)


@pytest.mark.parametrize(
    "fault",
    [
        firestore_error(503, "UNAVAILABLE"),
        firestore_error(409, "ABORTED"),
        firestore_error(429, "RESOURCE_EXHAUSTED"),
        firestore_error(504, "DEADLINE_EXCEEDED"),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["503", "aborted", "429", "504", "502-html", "connect", "read-timeout"],
)
def test_faults_that_pass_are_tried_again(fault: httpx.Response | Exception) -> None:
    script, sleeps = Scripted(fault, fault, httpx.Response(200, json=DOC)), []
    document = _db(script, sleeps).get("c", "d")
    assert document is not None and document.update_time == "t1"
    assert len(script.requests) == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (firestore_error(409, "ALREADY_EXISTS"), AlreadyExists),
        (firestore_error(404, "NOT_FOUND"), NotFound),
        (firestore_error(400, "FAILED_PRECONDITION"), PreconditionFailed),
        (firestore_error(403, "PERMISSION_DENIED"), FirestoreError),
        (firestore_error(400, "INVALID_ARGUMENT"), FirestoreError),
    ],
)
def test_refusals_are_typed_and_not_tried_again(answer: httpx.Response, kind: type[FirestoreError]) -> None:
    script, sleeps = Scripted(answer), []
    with pytest.raises(kind) as caught:
        _db(script, sleeps).create("c", "d", {"n": 1})
    assert not isinstance(caught.value, Unavailable)
    assert len(script.requests) == 1 and sleeps == []


def test_a_store_that_never_answers_gives_up_within_the_window() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    script = Scripted(httpx.ConnectError("refused"))
    http = httpx.Client(transport=httpx.MockTransport(script))
    db = Firestore(http, "p", base_url="http://firestore.test", sleep=sleep, clock=lambda: clock[0])
    with pytest.raises(Unavailable, match="no answer"):
        db.get("c", "d")
    assert 0 < clock[0] <= RETRY_WINDOW and len(script.requests) >= 3


def test_every_call_carries_the_access_token() -> None:
    script, sleeps = Scripted(httpx.Response(200, json={"writeResults": [{"updateTime": "t2"}]})), []
    db = _db(script, sleeps, token=StaticToken("secret-token"))
    assert db.update("c", "d", {"n": 1}, if_update_time="t1") == "t2"
    request = script.requests[0]
    assert request.headers["Authorization"] == "Bearer secret-token"
    assert str(request.url) == "http://firestore.test/v1/projects/p/databases/(default)/documents:commit"
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


# ------------------------------------------------------------------------------ access token


class Metadata:
    """A loopback metadata server: answers the token path when asked with `Metadata-Flavor`."""

    def __init__(self, expires_in: Any = 3599, status: int = 200) -> None:
        self.asked = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.asked += 1
                wanted = "/computeMetadata/v1/instance/service-accounts/default/token"
                ok = self.path == wanted and self.headers.get("Metadata-Flavor") == "Google"
                body = json.dumps(
                    {"access_token": f"token-{outer.asked}", "expires_in": expires_in, "token_type": "Bearer"}
                ).encode()
                self.send_response(status if ok else 403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata_factory() -> Iterator[Any]:
    servers: list[Metadata] = []

    def make(**kwargs: Any) -> Metadata:
        servers.append(Metadata(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_the_token_is_fetched_once_and_reused(metadata_factory: Any) -> None:
    metadata = metadata_factory()
    with httpx.Client(timeout=5) as http:
        token = MetadataToken(http, metadata.host)
        assert [token(), token(), token()] == ["token-1"] * 3
    assert metadata.asked == 1


def test_a_token_about_to_expire_is_fetched_again(metadata_factory: Any) -> None:
    metadata = metadata_factory(expires_in="30")  # less than the early-refresh margin
    with httpx.Client(timeout=5) as http:
        token = MetadataToken(http, metadata.host)
        assert [token(), token()] == ["token-1", "token-2"]


@pytest.mark.parametrize("answer", [{"status": 500}, {"expires_in": "soon"}])
def test_no_usable_token_is_a_fault_that_passes(metadata_factory: Any, answer: dict[str, Any]) -> None:
    metadata = metadata_factory(**answer)
    with httpx.Client(timeout=5) as http, pytest.raises(Unavailable, match="metadata server"):
        MetadataToken(http, metadata.host)()


class Tokens:
    """A token source that fails `failures` times, then hands out token-1, token-2, ..."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.asked = 0
        self.issued = 0
        self.current: str | None = None

    def __call__(self) -> str:
        self.asked += 1
        if self.asked <= self.failures:
            raise Unavailable("UNAUTHENTICATED", "no access token from the metadata server")
        if self.current is None:
            self.issued += 1
            self.current = f"token-{self.issued}"
        return self.current

    def forget(self) -> None:
        self.current = None


def test_calls_wait_for_a_token_instead_of_going_out_without_one() -> None:
    tokens = Tokens(failures=2)
    script, sleeps = Scripted(httpx.Response(200, json=DOC)), []
    assert _db(script, sleeps, token=tokens).get("c", "d") is not None
    assert tokens.asked == 3 and len(script.requests) == 1
    assert script.requests[0].headers["Authorization"] == "Bearer token-1"


def test_a_refused_token_is_replaced_once() -> None:
    tokens = Tokens()
    refused = firestore_error(401, "UNAUTHENTICATED")
    script, sleeps = Scripted(refused, httpx.Response(200, json=DOC)), []
    assert _db(script, sleeps, token=tokens).get("c", "d") is not None
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer token-1", "Bearer token-2"]

    script = Scripted(refused)  # refused again with the new token: a real refusal, said at once
    with pytest.raises(FirestoreError, match="UNAUTHENTICATED") as caught:
        _db(script, sleeps, token=tokens).get("c", "d")
    assert not isinstance(caught.value, Unavailable) and len(script.requests) == 2


def test_a_query_whose_stream_breaks_off_is_an_error() -> None:
    stream = [
        {"document": DOC, "readTime": "t"},
        {"error": {"code": 503, "message": "stream reset", "status": "UNAVAILABLE"}},
    ]
    script, sleeps = Scripted(httpx.Response(200, json=stream)), []
    with pytest.raises(Unavailable, match="stream reset"):
        _db(script, sleeps).at_most("c", "due", 1, limit=10)


def test_a_failed_token_fetch_is_remembered_briefly(metadata_factory: Any) -> None:
    metadata = metadata_factory(status=500)
    with httpx.Client(timeout=5) as http:
        token = MetadataToken(http, metadata.host)
        for _ in range(3):
            with pytest.raises(Unavailable, match="metadata server"):
                token()
    # Threads that queue behind a failed fetch fail at once instead of each asking again.
    assert metadata.asked == 1


def test_outside_the_emulator_firestore_is_asked_with_the_instance_token(metadata_factory: Any) -> None:
    metadata = metadata_factory()
    env = {
        "NOVITA_API_KEY": "k",
        "WEBHOOK_URL": "https://example.test/hook",
        "WEBHOOK_SECRET": "s",
        "GOOGLE_CLOUD_PROJECT": "prod-project",
        "GCE_METADATA_HOST": metadata.host,
    }
    tls = httpx.create_ssl_context()
    db = firestore_client(settings_from(env), tls)
    # Only the token is fetched here (from the loopback metadata server): nothing goes to Google.
    assert (
        db._url == "https://firestore.googleapis.com/v1/projects/prod-project/databases/(default)/documents"
    )
    assert isinstance(db._token, MetadataToken) and db._token() == "token-1"

    emulated = firestore_client(settings_from({**env, "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8686"}), tls)
    assert emulated._url.startswith("http://127.0.0.1:8686/v1/projects/prod-project/")
    assert emulated._token is EMULATOR_TOKEN


@pytest.mark.parametrize("function", ["create_sketch", "novita_webhook"])
def test_the_functions_leave_the_firestore_sdk_out_of_their_cold_start(function: str) -> None:
    code = (
        "import sys, main; from shared.runtime import get_runtime; get_runtime(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' "
        "or m.startswith(('google.cloud.firestore', 'google.api_core', 'google.protobuf'))))"
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "NOVITA_API_KEY": "k",
        "WEBHOOK_URL": "http://127.0.0.1:9/",
        "WEBHOOK_SECRET": "s",
        "GOOGLE_CLOUD_PROJECT": "p",
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
    }
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions" / function,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{function} loads {result.stdout[:300]}"

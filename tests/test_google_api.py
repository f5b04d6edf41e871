"""The Google REST plumbing every client shares: Google's errors as typed exceptions, the one rule
for trying again, the access token from a metadata server (a loopback stand-in), the clients'
wiring, and the cold start it keeps free of the Google SDKs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from devstack.functions import ROOT
from shared.core.config import settings_from
from shared.core.http import KeptAlive, Timeout, tls_context
from shared.google.api import (
    EMULATOR_TOKEN,
    RETRY_WINDOW,
    AlreadyExists,
    ApiError,
    GoogleApi,
    MetadataToken,
    NotFound,
    PreconditionFailed,
    StaticToken,
    TokenSource,
    Unavailable,
    error_from,
)
from shared.google.pubsub import Message
from shared.runtime import firestore_client, pubsub_client, storage_client
from tests.conftest import Scripted, firestore_error
from tests.google_http import MockHttp

URL = "http://api.test/v1/things/1"
OK = httpx.Response(200, json={"name": "things/1"})


def _api(script: Scripted, sleeps: list[float], token: TokenSource = EMULATOR_TOKEN) -> GoogleApi:
    return GoogleApi(MockHttp(script), token=token, sleep=sleeps.append)


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("answer", "kind", "status"),
    [
        (firestore_error(409, "ALREADY_EXISTS"), AlreadyExists, "ALREADY_EXISTS"),
        (firestore_error(400, "FAILED_PRECONDITION"), PreconditionFailed, "FAILED_PRECONDITION"),
        (firestore_error(404, "NOT_FOUND"), NotFound, "NOT_FOUND"),
        # A conflict that may pass, although its HTTP status is the one ALREADY_EXISTS has.
        (firestore_error(409, "ABORTED"), Unavailable, "ABORTED"),
        (firestore_error(403, "PERMISSION_DENIED"), ApiError, "PERMISSION_DENIED"),
        # Cloud Storage's JSON API names no canonical status; its HTTP status says it.
        (httpx.Response(412, json={"error": {"code": 412, "message": "no"}}), PreconditionFailed, "HTTP_412"),
        (httpx.Response(404, json={"error": {"code": 404, "message": "no"}}), NotFound, "HTTP_404"),
        # Firestore's runQuery answers a stream, even for an error.
        (httpx.Response(400, json=[{"error": {"status": "INVALID_ARGUMENT"}}]), ApiError, "INVALID_ARGUMENT"),
        # A proxy in front of the service answers in HTML.
        (httpx.Response(502, text="<html>bad gateway</html>"), Unavailable, "HTTP_502"),
        (httpx.Response(404, text="<html>not here</html>"), NotFound, "HTTP_404"),
    ],
)
def test_errors_are_typed_by_what_they_mean(
    answer: httpx.Response, kind: type[ApiError], status: str
) -> None:
    error = error_from(answer)
    assert type(error) is kind
    assert error.status == status and error.http_status == answer.status_code


# ---------------------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "fault",
    [
        firestore_error(503, "UNAVAILABLE"),
        firestore_error(409, "ABORTED"),
        firestore_error(429, "RESOURCE_EXHAUSTED"),
        firestore_error(504, "DEADLINE_EXCEEDED"),
        firestore_error(500, "INTERNAL"),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
    ],
    ids=["503", "aborted", "429", "504", "500", "502-html", "connect", "read-timeout"],
)
def test_faults_that_pass_are_tried_again(fault: httpx.Response | Exception) -> None:
    script, sleeps = Scripted(fault, fault, OK), []
    assert _api(script, sleeps).call("GET", URL).json() == {"name": "things/1"}
    assert len(script.requests) == 3 and len(sleeps) == 2


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (firestore_error(409, "ALREADY_EXISTS"), AlreadyExists),
        (firestore_error(404, "NOT_FOUND"), NotFound),
        (firestore_error(400, "FAILED_PRECONDITION"), PreconditionFailed),
        (firestore_error(403, "PERMISSION_DENIED"), ApiError),
        (firestore_error(400, "INVALID_ARGUMENT"), ApiError),
    ],
)
def test_refusals_are_typed_and_not_tried_again(answer: httpx.Response, kind: type[ApiError]) -> None:
    script, sleeps = Scripted(answer), []
    with pytest.raises(kind) as caught:
        _api(script, sleeps).call("POST", URL, json={"n": 1})
    assert not isinstance(caught.value, Unavailable)
    assert len(script.requests) == 1 and sleeps == []


def test_a_service_that_never_answers_is_given_up_on_within_the_window() -> None:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    script = Scripted(httpx.ConnectError("refused"))
    api = GoogleApi(MockHttp(script), sleep=sleep, clock=lambda: clock[0])
    with pytest.raises(Unavailable, match="no answer from api.test"):
        api.call("GET", URL)
    assert 0 < clock[0] <= RETRY_WINDOW and len(script.requests) >= 3


def test_every_call_carries_the_access_token_and_its_own_headers() -> None:
    script, sleeps = Scripted(firestore_error(503, "UNAVAILABLE"), OK), []
    api = _api(script, sleeps, token=StaticToken("secret-token"))
    api.call("POST", URL, headers={"X-Upload-Content-Type": "video/mp4"}, json={"n": 1})
    for request in script.requests:  # the retry too
        assert request.headers["Authorization"] == "Bearer secret-token"
        assert request.headers["X-Upload-Content-Type"] == "video/mp4"
        assert json.loads(request.content) == {"n": 1}


# ------------------------------------------------------------------------------------ access token


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


def _real_http() -> KeptAlive:
    return KeptAlive(tls_context(), Timeout(connect=5.0, read=5.0))


def test_the_token_is_fetched_once_and_reused(metadata_factory: Any) -> None:
    metadata = metadata_factory()
    with closing(_real_http()) as http:
        token = MetadataToken(http, metadata.host)
        assert [token(), token(), token()] == ["token-1"] * 3
    assert metadata.asked == 1


def test_a_token_about_to_expire_is_fetched_again(metadata_factory: Any) -> None:
    metadata = metadata_factory(expires_in="30")  # less than the early-refresh margin
    with closing(_real_http()) as http:
        token = MetadataToken(http, metadata.host)
        assert [token(), token()] == ["token-1", "token-2"]


def test_a_forgotten_token_is_fetched_again(metadata_factory: Any) -> None:
    metadata = metadata_factory()
    with closing(_real_http()) as http:
        token = MetadataToken(http, metadata.host)
        first = token()
        token.forget()
        assert [first, token(), token()] == ["token-1", "token-2", "token-2"]


@pytest.mark.parametrize("answer", [{"status": 500}, {"expires_in": "soon"}])
def test_no_usable_token_is_a_fault_that_passes(metadata_factory: Any, answer: dict[str, Any]) -> None:
    metadata = metadata_factory(**answer)
    with closing(_real_http()) as http, pytest.raises(Unavailable, match="metadata server"):
        MetadataToken(http, metadata.host)()


def test_a_failed_token_fetch_is_remembered_briefly(metadata_factory: Any) -> None:
    metadata = metadata_factory(status=500)
    with closing(_real_http()) as http:
        token = MetadataToken(http, metadata.host)
        for _ in range(3):
            with pytest.raises(Unavailable, match="metadata server"):
                token()
    # Threads that queue behind a failed fetch fail at once instead of each asking again.
    assert metadata.asked == 1


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
    script, sleeps = Scripted(OK), []
    _api(script, sleeps, token=tokens).call("GET", URL)
    assert tokens.asked == 3 and len(script.requests) == 1 and len(sleeps) == 2
    assert script.requests[0].headers["Authorization"] == "Bearer token-1"


def test_a_refused_token_is_replaced_once() -> None:
    tokens = Tokens()
    refused = firestore_error(401, "UNAUTHENTICATED")
    script, sleeps = Scripted(refused, OK), []
    _api(script, sleeps, token=tokens).call("GET", URL)
    assert [r.headers["Authorization"] for r in script.requests] == ["Bearer token-1", "Bearer token-2"]

    script = Scripted(refused)  # refused again with the new token: a real refusal, said at once
    with pytest.raises(ApiError, match="UNAUTHENTICATED") as caught:
        _api(script, sleeps, token=tokens).call("GET", URL)
    assert not isinstance(caught.value, Unavailable) and len(script.requests) == 2


# ------------------------------------------------------------------------------------------ wiring


class Google:
    """A stand-in for Google and the metadata server behind one transport: hands out `token-1` and
    answers every API call; records the API calls."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.tokens_fetched = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "metadata.test":
            self.tokens_fetched += 1
            return httpx.Response(200, json={"access_token": "token-1", "expires_in": 3599})
        self.calls.append(request)
        if "/databases/" in request.url.path:
            return firestore_error(404, "NOT_FOUND")
        if request.url.path.endswith(":publish"):
            return httpx.Response(200, json={"messageIds": ["m1"]})
        return httpx.Response(200, json={"name": "clip.mp4"})

    def asked(self) -> list[tuple[str, str]]:
        return [(str(r.url), r.headers["Authorization"]) for r in self.calls]


ENV = {
    "NOVITA_API_KEY": "k",
    "WEBHOOK_URL": "https://example.test/hook",
    "WEBHOOK_SECRET": "s",
    "GOOGLE_CLOUD_PROJECT": "prod-project",
    "GCE_METADATA_HOST": "metadata.test",
    "MEDIA_BUCKET": "media-bucket",
}


def _ask_every_service(env: dict[str, str], google: Google) -> None:
    settings = settings_from(env)
    http = MockHttp(google)
    token = MetadataToken(http, settings.metadata_host)
    assert firestore_client(settings, http, token).get("sketches", "s1") is None
    assert pubsub_client(settings, http, token).publish("steps", [Message(b"x")]) == ["m1"]
    assert storage_client(settings, http, token).get("media-bucket", "clip.mp4") == {"name": "clip.mp4"}


def test_outside_the_emulators_google_is_asked_with_the_instance_token() -> None:
    google = Google()
    _ask_every_service(ENV, google)
    bearer = "Bearer token-1"
    assert google.asked() == [
        (
            "https://firestore.googleapis.com/v1/projects/prod-project/databases/(default)/documents/sketches/s1",
            bearer,
        ),
        ("https://pubsub.googleapis.com/v1/projects/prod-project/topics/steps:publish", bearer),
        ("https://storage.googleapis.com/storage/v1/b/media-bucket/o/clip.mp4", bearer),
    ]
    assert google.tokens_fetched == 1  # one token for every service


def test_with_emulators_named_the_emulators_are_asked_without_the_instance_token() -> None:
    google = Google()
    emulated = {
        **ENV,
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8686",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:8085",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9023",
    }
    _ask_every_service(emulated, google)
    assert google.asked() == [
        (
            "http://127.0.0.1:8686/v1/projects/prod-project/databases/(default)/documents/sketches/s1",
            "Bearer owner",
        ),
        ("http://127.0.0.1:8085/v1/projects/prod-project/topics/steps:publish", "Bearer owner"),
        ("http://127.0.0.1:9023/storage/v1/b/media-bucket/o/clip.mp4", "Bearer owner"),
    ]
    assert google.tokens_fetched == 0


@pytest.mark.parametrize("function", ["create_sketch", "novita_webhook"])
def test_the_functions_leave_the_google_sdks_out_of_their_cold_start(function: str) -> None:
    code = (
        # Loaded as functions-framework loads it (main.py runs inside the app's context).
        f"import sys, functions_framework; functions_framework.create_app({function!r}, 'main.py'); "
        "from shared.runtime import get_runtime; get_runtime(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.startswith(("
        "'google.cloud.firestore', 'google.cloud.pubsub', 'google.cloud.storage', "
        "'google.api_core', 'google.protobuf'))))"
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "NOVITA_API_KEY": "k",
        "WEBHOOK_URL": "http://127.0.0.1:9/",
        "WEBHOOK_SECRET": "s",
        "GOOGLE_CLOUD_PROJECT": "p",
        "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
        "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
        "MEDIA_BUCKET": "media-bucket",
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

"""The body guard (shared/edge/guard.py) and the strict JSON reader (shared/edge/answers.py), through real
HTTP: functions-framework serving tests/fixtures/guarded_function on loopback, hostile clients on raw
sockets where an HTTP client cannot send such bytes. Every exchange is bounded in time and size."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask
import pytest
from conftest import LOG_DIR
from werkzeug.test import EnvironBuilder

from devstack.functions import ROOT, FunctionServer
from devstack.processes import LOOPBACK, free_port
from shared.edge.answers import InvalidJson, UnsupportedMediaType, parse_json, require_json_content_type

# Real functions under gunicorn, one process each.
pytestmark = pytest.mark.stack

FIXTURE = ROOT / "tests" / "fixtures" / "guarded_function" / "main.py"
THREADS = 4
READ_TIMEOUT = 1.5
BODY_DEADLINE = 4.0
LIMIT = 64 * 1024
MiB = 1024 * 1024
# What a worker may grow by, at its peak, while it refuses bodies of hundreds of MiB.
RSS_GROWTH_LIMIT = 5 * MiB
ANSWER_TIMEOUT = 5.0


@dataclass
class Server:
    function: FunctionServer

    @property
    def port(self) -> int:
        return self.function.port

    def log_size(self) -> int:
        return self.function.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.function.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def error(self) -> dict[str, Any]:
        return json.loads(self.body)["error"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = free_port()
    log_path = LOG_DIR / f"guarded_function-{port}.log"
    log_path.unlink(missing_ok=True)
    env = {
        "THREADS": str(THREADS),
        "GUARD_READ_TIMEOUT": str(READ_TIMEOUT),
        "GUARD_BODY_DEADLINE": str(BODY_DEADLINE),
    }
    function = FunctionServer("guarded", env, log_path, port=port, source=FIXTURE)
    try:
        function.start()
        served = Server(function)
        _warm_up(served)
        yield served
    finally:
        function.stop()


@pytest.fixture(autouse=True)
def no_error_logged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a test sends, the server logs no ERROR and no stack trace."""
    if "server" not in request.fixturenames:
        yield
        return
    server: Server = request.getfixturevalue("server")
    offset = server.log_size()
    yield
    time.sleep(0.1)  # a refusal is logged as its answer goes out
    logged = server.log_since(offset)
    assert '"severity": "ERROR"' not in logged and "[ERROR]" not in logged, logged
    assert "Traceback" not in logged, logged


def _warm_up(server: Server) -> None:
    """Take each path once, so that lazy imports and first allocations do not count as growth."""
    for head, body in [
        (post(content_length=3), b"abc"),
        (post(content_length=300 * MiB), b""),
        (post("/?early=1", content_length=10), b""),
        (post(chunked=True), chunk(b"x" * 2 * LIMIT)),
        (post(content_length=2, content_type="application/json", target="/?json=strict"), b"{}"),
    ]:
        with connect(server) as sock:
            sock.sendall(head + body)
            read_answer(sock)


# ----------------------------------------------------------------------------------- raw HTTP


def post(
    target: str = "/",
    *,
    content_length: int | None = None,
    chunked: bool = False,
    content_type: str | None = None,
) -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"Host: {LOOPBACK}"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def options(version: str = "1.1") -> bytes:
    return f"OPTIONS / HTTP/{version}\r\nHost: {LOOPBACK}\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def connect(server: Server) -> socket.socket:
    return socket.create_connection((LOOPBACK, server.port), timeout=ANSWER_TIMEOUT)


def read_answer(sock: socket.socket, timeout: float = ANSWER_TIMEOUT) -> Answer:
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return Answer(response.status, response.headers, response.read())


def closed_by_server(sock: socket.socket, within: float = 1.0) -> bool:
    """Whether the server ends the connection within `within` seconds (its keep-alive lasts 2 s)."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def stream_until_closed(sock: socket.socket, limit: int, seconds: float = 20.0) -> int:
    """Send zeros as fast as loopback takes them until the server closes, or `limit` bytes went."""
    block = bytes(MiB)
    sent = 0
    sock.settimeout(seconds)
    try:
        while sent < limit:
            sock.sendall(block)
            sent += len(block)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def exchange(server: Server, data: bytes) -> Answer:
    with connect(server) as sock:
        sock.sendall(data)
        return read_answer(sock)


# ---------------------------------------------------------------------------------- memory


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class PeakGrowth:
    """The worker's peak RSS over a block, above its RSS when the block began."""

    def __init__(self, server: Server) -> None:
        self.pid = server.function.worker_pid()

    def __enter__(self) -> PeakGrowth:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.before = memory_kb(self.pid)["VmRSS"] * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        self.growth = memory_kb(self.pid)["VmHWM"] * 1024 - self.before


def assert_refused(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.body
    assert answer.headers["Connection"] == "close"
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.error["code"] == code


def guard_warnings(logged: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "http_guard"]


# ------------------------------------------------------------------------------ limits, memory


def test_an_announced_300_mib_body_is_refused_before_it_is_sent(server: Server) -> None:
    with PeakGrowth(server) as peak, connect(server) as sock:
        sock.sendall(post(content_length=300 * MiB) + bytes(LIMIT))
        answer = read_answer(sock)  # nothing more was sent: the answer cannot have waited for it
        sent = stream_until_closed(sock, 64 * MiB)
    assert_refused(answer, 413, "body_too_large")
    assert sent < 64 * MiB, "the server kept taking the body after its 413"
    assert peak.growth < RSS_GROWTH_LIMIT, f"worker grew {peak.growth / MiB:.1f} MiB"


def test_an_answer_given_before_the_body_is_read_does_not_wait_for_it(server: Server) -> None:
    """A 401 for a bad token: functions-framework's read_request would read the body first."""
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(post("/?early=1", content_length=LIMIT - 1) + b"{")  # the rest never comes
        answer = read_answer(sock)
        elapsed = time.monotonic() - started
        assert closed_by_server(sock)
    assert answer.status == 401 and answer.headers["Connection"] == "close"
    assert elapsed < 1.0


def test_an_early_answer_to_a_300_mib_streamed_body_reads_none_of_it(server: Server) -> None:
    with PeakGrowth(server) as peak, connect(server) as sock:
        sock.sendall(post("/?early=1", chunked=True) + b"%x\r\n" % (300 * MiB) + bytes(LIMIT))
        answer = read_answer(sock)
        sent = stream_until_closed(sock, 64 * MiB)
    assert answer.status == 401 and answer.headers["Connection"] == "close"
    assert sent < 64 * MiB
    assert peak.growth < RSS_GROWTH_LIMIT, f"worker grew {peak.growth / MiB:.1f} MiB"


def test_a_chunked_body_crossing_the_limit_is_refused_as_it_does(server: Server) -> None:
    with PeakGrowth(server) as peak, connect(server) as sock:
        sock.sendall(post(chunked=True) + b"%x\r\n" % (300 * MiB))
        sent = stream_until_closed(sock, 64 * MiB)
        answer = read_answer(sock)
    assert_refused(answer, 413, "body_too_large")
    assert sent < 64 * MiB
    assert peak.growth < RSS_GROWTH_LIMIT, f"worker grew {peak.growth / MiB:.1f} MiB"


def test_a_body_read_to_its_end_keeps_the_connection(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(post(content_length=LIMIT) + bytes(LIMIT))
        first = read_answer(sock)
        sock.sendall(post(chunked=True) + chunk(b"a" * 1000) + chunk(b"b" * 24) + LAST_CHUNK)
        second = read_answer(sock)
    assert first.status == 200 and json.loads(first.body)["bytes"] == LIMIT
    assert first.headers["Connection"] == "keep-alive"
    assert second.status == 200 and json.loads(second.body)["bytes"] == 1024
    assert second.headers["Connection"] == "keep-alive"


# ---------------------------------------------------------------------------- framing faults


def test_a_malformed_chunk_size_is_a_400_logged_as_one_warning(server: Server) -> None:
    offset = server.log_size()
    with connect(server) as sock:
        sock.sendall(post(chunked=True) + b"zz\r\nhello\r\n" + LAST_CHUNK)
        answer = read_answer(sock)
        assert closed_by_server(sock)
    assert_refused(answer, 400, "malformed_body")
    assert "InvalidChunkSize" in answer.error["message"]
    time.sleep(0.1)
    warnings = guard_warnings(server.log_since(offset))
    assert [(w["severity"], w["code"]) for w in warnings] == [("WARNING", "malformed_body")]


@pytest.mark.parametrize(
    "head, partial",
    [(post(content_length=1000), b"x" * 10), (post(chunked=True), b"3e8\r\n" + b"x" * 10)],
    ids=["content-length", "chunked"],
)
def test_a_hang_up_mid_body_logs_one_warning_and_others_are_served(
    server: Server, head: bytes, partial: bytes
) -> None:
    offset = server.log_size()
    with connect(server) as sock:
        sock.sendall(head + partial)
        time.sleep(0.2)  # the function is reading the body when the client goes
    deadline = time.monotonic() + 3
    while not guard_warnings(server.log_since(offset)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [w["code"] for w in guard_warnings(server.log_since(offset))] == ["incomplete_body"]
    assert exchange(server, options()).status == 204


# ---------------------------------------------------------------------------------- timeouts


def test_stalled_bodies_on_every_thread_do_not_starve_others(server: Server) -> None:
    stalled = [connect(server) for _ in range(THREADS)]
    try:
        for sock in stalled:
            sock.sendall(post(content_length=100) + b"{")
        time.sleep(0.3)  # every thread is now waiting for a body
        started = time.monotonic()
        answer = exchange(server, options())
        waited = time.monotonic() - started
        assert answer.status == 204
        assert waited <= READ_TIMEOUT + 1, f"OPTIONS waited {waited:.2f} s"
        for sock in stalled:
            assert_refused(read_answer(sock), 408, "body_timeout")
            assert closed_by_server(sock)
    finally:
        for sock in stalled:
            sock.close()


def test_a_drip_fed_body_is_cut_at_the_body_deadline(server: Server) -> None:
    """One byte every 0.7 read timeouts never trips the read timeout; the deadline ends it."""
    with connect(server) as sock:
        sock.sendall(post(content_length=100))
        started = time.monotonic()
        sock.settimeout(READ_TIMEOUT * 0.7)
        answer = None
        while answer is None and time.monotonic() - started < BODY_DEADLINE + 3:
            sock.sendall(b" ")
            try:
                answer = read_answer(sock, timeout=READ_TIMEOUT * 0.7)
            except TimeoutError:
                continue
        elapsed = time.monotonic() - started
    assert answer is not None
    assert_refused(answer, 408, "body_timeout")
    assert "within" in answer.error["message"]
    assert BODY_DEADLINE - 0.5 < elapsed < BODY_DEADLINE + 1.5


def test_the_guard_answers_even_when_the_function_swallows_its_refusal(server: Server) -> None:
    with connect(server) as sock:
        sock.sendall(post("/?swallow=1", content_length=100) + b"{")
        answer = read_answer(sock, timeout=READ_TIMEOUT + ANSWER_TIMEOUT)
    assert_refused(answer, 408, "body_timeout")


def test_clients_that_never_hang_up_do_not_stop_the_instance_accepting(server: Server) -> None:
    """gunicorn waits up to 2 s, on the thread that accepts connections, for each client it closes
    to hang up first; the guard shuts the read side so that wait ends at once."""
    held = [connect(server) for _ in range(THREADS)]
    try:
        for sock in held:
            sock.sendall(options(version="1.0"))  # answered with Connection: close
        for sock in held:
            assert read_answer(sock).status == 204
        started = time.monotonic()
        assert exchange(server, options()).status == 204
        assert time.monotonic() - started < 1.0
    finally:
        for sock in held:
            sock.close()


# ------------------------------------------------------------------------------ strict JSON


@pytest.mark.parametrize(
    "content_type, body, status, expected",
    [
        ("application/json", b'{"a": [1, 2.5, "\xc3\xa9"]}', 200, {"a": [1, 2.5, "é"]}),
        ('Application/JSON; Charset="UTF-8"', b"{}", 200, {}),
        ("text/plain", b"{}", 415, "unsupported_media_type"),
        ("application/json; charset=utf-16", b"{}", 415, "unsupported_media_type"),
        (None, b"{}", 415, "unsupported_media_type"),
        ("application/json", '{"a": 1}'.encode("utf-16"), 400, "invalid_json"),
        ("application/json", '{"a": 1}'.encode("utf-32-le"), 400, "invalid_json"),
        ("application/json", b'{"a": NaN}', 400, "invalid_json"),
        ("application/json", b'{"a": {"b": 1, "b": 2}}', 400, "invalid_json"),
    ],
)
def test_the_strict_reader_through_http(
    server: Server, content_type: str | None, body: bytes, status: int, expected: object
) -> None:
    answer = exchange(
        server, post("/?json=strict", content_length=len(body), content_type=content_type) + body
    )
    assert answer.status == status, answer.body
    if status == 200:
        assert json.loads(answer.body) == {"json": expected}
    else:
        assert answer.error["code"] == expected


def test_the_webhook_reader_needs_no_content_type(server: Server) -> None:
    answer = exchange(server, post("/?json=any-type", content_length=8) + b'{"a": 1}')
    assert answer.status == 200 and json.loads(answer.body) == {"json": {"a": 1}}


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"a": NaN}', "NaN"),
        (b"[Infinity]", "Infinity"),
        (b"[-Infinity]", "-Infinity"),
        (b"[1e999]", "out of range"),
        (b'{"a": 1, "a": 1}', "'a' twice"),
        (b'[{"x": {"y": 1, "y": 2}}]', "'y' twice"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        ('{"a": 1}'.encode("utf-16-le"), "NUL"),
        ('{"a": 1}'.encode("utf-32"), "not UTF-8"),
        (b'{"a": "\xff"}', "not UTF-8"),
        ('\ufeff{"a": 1}'.encode(), "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b"1" * 5000, "not valid JSON"),
        (b'{"a": 1', "not valid JSON"),
    ],
)
def test_parse_json_refuses_and_says_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidJson, match=reason):
        parse_json(raw)


def test_parse_json_keeps_valid_json() -> None:
    assert parse_json(b'{"a": [1, -2.5e3, true, null, "\\u00e9"], "b": {}}') == {
        "a": [1, -2500.0, True, None, "é"],
        "b": {},
    }


@pytest.mark.parametrize(
    "content_type, accepted",
    [
        ("application/json", True),
        ("application/json;charset=utf-8", True),
        ("APPLICATION/JSON; charset=UTF-8", True),
        ('application/json; charset="utf-8"', True),
        ("application/json; charset=latin-1", False),
        ("application/json; charset=utf-8; charset=latin-1", False),
        ("application/json; foo=bar", False),
        ("application/jsonx", False),
        ("text/json", False),
        ("", False),
    ],
)
def test_the_content_type_check(content_type: str, accepted: bool) -> None:
    request = flask.Request(EnvironBuilder(headers={"Content-Type": content_type}).get_environ())
    if accepted:
        require_json_content_type(request)
    else:
        with pytest.raises(UnsupportedMediaType):
            require_json_content_type(request)

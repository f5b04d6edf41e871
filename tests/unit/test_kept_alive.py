"""`shared.core.http.KeptAlive` against a loopback HTTP/1.1 server: requests one after another share
one connection, one the server closed while it sat idle is replaced before a request goes out on it,
requests at once each get a connection and give it back, and no answer at all is a TransportError."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.core.http import KeptAlive, Timeout, TransportError, tls_context

TIMEOUT = Timeout(connect=2.0, read=2.0)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.closed = 0
        self.requests: list[tuple[str, str, bytes]] = []
        # Close each connection after its answer, without saying so (as an idle timeout does).
        self.drop_after_answer = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def finish(self) -> None:
        super().finish()
        self.server.closed += 1

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.command, self.path, body))
        answer = json.dumps({"n": len(self.server.requests)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = self.server.drop_after_answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    served = Server()
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def test_requests_one_after_another_share_one_connection_and_carry_their_query_and_json(
    server: Server,
) -> None:
    http = KeptAlive(tls_context(), TIMEOUT)
    try:
        first = http.request("POST", f"{server.url}/v1/a?x=1", params={"y": "2 3"}, json={"k": "v"})
        second = http.request("POST", f"{server.url}/v1/b", content=b"raw")
    finally:
        http.close()
    assert (first.json(), second.json()) == ({"n": 1}, {"n": 2})
    assert first.headers["Content-Type"] == "application/json" and first.is_success
    assert server.requests == [("POST", "/v1/a?x=1&y=2+3", b'{"k":"v"}'), ("POST", "/v1/b", b"raw")]
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_and_the_request_sent_once(
    server: Server,
) -> None:
    server.drop_after_answer = True
    http = KeptAlive(tls_context(), TIMEOUT)
    answers = []
    try:
        for n in range(3):
            answers.append(http.request("POST", f"{server.url}/v1/{n}").json()["n"])
            deadline = time.monotonic() + 2
            while server.closed < n + 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # until the server has closed the connection it answered on
            assert server.closed == n + 1
    finally:
        http.close()
    assert answers == [1, 2, 3]
    assert [path for _, path, _ in server.requests] == ["/v1/0", "/v1/1", "/v1/2"]
    assert server.connections == 3


def test_requests_at_once_each_get_a_connection_and_leave_at_most_keep_idle(server: Server) -> None:
    http = KeptAlive(tls_context(), TIMEOUT, keep=2)
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(
                pool.map(lambda n: http.request("POST", f"{server.url}/v1/{n}").status_code, range(24))
            )
        opened = server.connections
        deadline = time.monotonic() + 2
        while opened - server.closed > 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # those beyond `keep` are closed as they come back
        kept_open = opened - server.closed
        for n in range(4):  # one after another: on the connections kept, no new one
            http.request("POST", f"{server.url}/v1/again-{n}")
    finally:
        http.close()
    assert answers == [200] * 24
    assert 1 <= opened <= 24 and 1 <= kept_open <= 2 and server.connections == opened
    deadline = time.monotonic() + 2
    while server.closed < opened and time.monotonic() < deadline:
        time.sleep(0.01)  # close() closed the kept ones; the rest were closed as they came back
    assert server.closed == opened


def test_no_answer_is_a_transport_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: the connection is refused
        http = KeptAlive(tls_context(), TIMEOUT)
        with pytest.raises(TransportError, match=f"127.0.0.1:{port}"):
            http.request("POST", f"http://127.0.0.1:{port}/v1/a")

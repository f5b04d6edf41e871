"""The HTTP face of the simulator: Novita's API, presigned-style media, and the /_sim control endpoints."""

import contextlib
import hmac
import json
import select
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from novita_simulator.config import Endpoint, SimulatorConfig, is_paid
from novita_simulator.errors import InjectedError, InvalidRequest, NovitaError, insufficient_balance
from novita_simulator.media import make_still, with_media_id
from novita_simulator.payloads import result_entries, seedream_body, task_result_body
from novita_simulator.runner import TaskRunner
from novita_simulator.state import MEDIA_PREFIX, SimulatorState
from novita_simulator.still_fetcher import StillFetcher
from novita_simulator.task import Task
from novita_simulator.validation import parse_kling, parse_seedream, parse_txt2img

MAX_BODY_BYTES = 32 * 1024 * 1024
API_ROUTES: dict[str, tuple[Endpoint, str]] = {
    "/v3/async/txt2img": ("txt2img", "POST"),
    "/v3/seedream-3-0-txt2img": ("seedream", "POST"),
    "/v3/async/kling-v2.1-i2v-master": ("kling", "POST"),
    "/v3/async/task-result": ("task_result", "GET"),
}
STORAGE_ERROR = (
    "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
)
# A throttled media body goes out in this many writes a second, each no earlier than the rate allows.
PACED_WRITES_PER_SECOND = 20


@dataclass(frozen=True)
class ApiContext:
    api_key: str
    base_url: str
    state: SimulatorState
    runner: TaskRunner
    stills: StillFetcher
    stopping: threading.Event


class SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's backlog of 5 drops connections when many deliveries call at once; each
    # dropped SYN costs the client a 1 s retransmit that real Novita would not cause.
    request_queue_size = 128
    context: ApiContext

    def __init__(self, address: tuple[str, int]) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, SimulatorRequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End keep-alive connections too, so nothing is answered after stop."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)


class SimulatorRequestHandler(BaseHTTPRequestHandler):
    server: SimulatorHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "novita-simulator"
    # Headers and body go out in two sends; with Nagle on, the body would wait ~40 ms for the
    # client's delayed ACK on every answer.
    disable_nagle_algorithm = True
    timeout = 60  # idle keep-alive connections end on their own

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown test and CLI output

    def _handle(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        try:
            body = self._read_body() if method == "POST" else b""
            self._route(method, path, parse_qs(query), body)
        except NovitaError as error:
            self._send_json(error.status, error.body(), error.headers())
        except Exception:  # a simulator bug still answers like Novita's 500, not a dropped socket
            traceback.print_exc()
            self._send_json(500, NovitaError(500).body())

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        if path.startswith(MEDIA_PREFIX) and method in ("GET", "HEAD"):
            self._media(path.removeprefix(MEDIA_PREFIX), head_only=method == "HEAD")
        elif path.startswith("/_sim/"):
            self._control(method, path, body)
        elif path in API_ROUTES:
            endpoint, expected_method = API_ROUTES[path]
            try:
                self._api(method, path, query, body, endpoint, expected_method)
            except NovitaError as error:
                if is_paid(endpoint):  # refused, so not paid: the ledger only counts it
                    self.server.context.state.refuse(endpoint, error)
                raise
        else:
            raise NovitaError(404, f"no route for {method} {path}")

    def _api(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes,
        endpoint: Endpoint,
        expected_method: str,
    ) -> None:
        state = self.server.context.state
        state.count_request(endpoint)
        if method != expected_method:
            raise NovitaError(405, f"{path} accepts {expected_method} only")
        self._authenticate()
        injected_status = state.take_http_error(endpoint)
        if injected_status is not None:
            raise InjectedError(injected_status)
        # one snapshot for the whole request, so a change mid-request cannot mix two personalities
        config = state.config
        if is_paid(endpoint) and config.balance_exhausted:
            raise insufficient_balance(config.personality)
        if endpoint == "txt2img":
            self._txt2img(body, config)
        elif endpoint == "seedream":
            self._seedream(body, config)
        elif endpoint == "kling":
            self._kling(body, config)
        else:
            self._task_result(query, config)

    def _authenticate(self) -> None:
        scheme, _, key = self.headers.get("Authorization", "").partition(" ")
        expected = self.server.context.api_key.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected):
            raise NovitaError(401, "invalid or missing API key")

    def _txt2img(self, body: bytes, config: SimulatorConfig) -> None:
        task = self.server.context.runner.accept_txt2img(parse_txt2img(body, config.personality))
        self._answer_accepted(task)

    def _seedream(self, body: bytes, config: SimulatorConfig) -> None:
        """Synchronous: the caller waits seedream_delay for the image itself; no task, no webhook."""
        context = self.server.context
        started = time.monotonic()
        request = parse_seedream(body)
        width, height = request.dimensions
        # image_mode shapes this still too, so a client's checks on Seedream's output can be tested
        still = make_still(request.prompt, width, height, config.image_mode, watermark=request.watermark)
        if context.stopping.wait(max(0.0, started + config.seedream_delay - time.monotonic())):
            self.close_connection = True
            return
        # no task, so the image gets an id of its own to carry
        image_id = f"seedream-{uuid.uuid4()}"
        context.state.add_seedream_image(image_id, request.prompt)
        if context.state.drop_answer("seedream") or self._client_gone():
            # the image is made and paid for, but the client never receives it
            self.close_connection = True
            return
        context.state.mark_answered(image_id)
        answer = seedream_body(
            context.state,
            context.base_url,
            with_media_id(still, image_id),
            request.response_format,
            config.media_ttl,
        )
        self._send_json(200, answer)

    def _kling(self, body: bytes, config: SimulatorConfig) -> None:
        context = self.server.context
        if context.stopping.wait(config.kling_accept_delay):
            self.close_connection = True
            return
        content_type = self.headers.get("Content-Type", "")
        request = parse_kling(content_type, body, config.personality, context.stills.fetch)
        self._answer_accepted(context.runner.accept_kling(request))

    def _answer_accepted(self, task: Task) -> None:
        state = self.server.context.state
        if state.drop_answer(task.kind) or self._client_gone():
            # The task runs and reports as usual, but the client never learns that it was accepted.
            self.close_connection = True
            return
        state.mark_answered(task.task_id)
        self._send_json(200, {"task_id": task.task_id})

    def _client_gone(self) -> bool:
        """True when the client closed the connection (it gave up waiting), so an answer reaches nobody.

        A closed connection reads as ready with nothing in it; a client still waiting sends nothing.
        """
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # reset by the client
            return True

    def _task_result(self, query: dict[str, list[str]], config: SimulatorConfig) -> None:
        context = self.server.context
        if context.stopping.wait(config.task_result_delay):
            self.close_connection = True
            return
        task_id = query.get("task_id", [""])[0]
        if not task_id:
            raise InvalidRequest("task_id: required")
        task = context.state.task(task_id)
        if task is None:
            raise NovitaError(404, f"task {task_id} not found", reason="TASK_NOT_FOUND")
        # every look-up presigns fresh links, with the TTL in force now
        images, videos = result_entries(context.state, task, context.base_url, config)
        self._send_json(200, task_result_body(task, images, videos))

    def _media(self, name: str, head_only: bool) -> None:
        context = self.server.context
        context.state.count_request("media")
        config = context.state.config
        # a slow media host answers late, whatever the answer
        if context.stopping.wait(config.media_delay):
            self.close_connection = True
            return
        link = context.state.find_media(name)
        if link is None:
            self._send_storage_error(404, "NoSuchKey", "The specified key does not exist.")
        elif link.expired():
            self._send_storage_error(403, "AccessDenied", "Request has expired")
        elif config.media_bytes_per_second and not head_only:
            self._send_head(200, link.asset.content_type, len(link.asset.data))
            self._write_paced(link.asset.data, config.media_bytes_per_second)
        else:
            self._send(200, link.asset.data, link.asset.content_type, head_only=head_only)

    def _write_paced(self, body: bytes, bytes_per_second: int) -> None:
        """Write the body at about bytes_per_second: each piece leaves no earlier than the rate allows."""
        stopping = self.server.context.stopping
        piece = max(1, bytes_per_second // PACED_WRITES_PER_SECOND)
        started = time.monotonic()
        view = memoryview(body)
        try:
            for sent in range(0, len(body), piece):
                if stopping.wait(max(0.0, started + sent / bytes_per_second - time.monotonic())):
                    self.close_connection = True
                    return
                self.wfile.write(view[sent : sent + piece])
        except ConnectionError:  # the client gave up on the slow host; nobody is left to answer
            self.close_connection = True

    def _control(self, method: str, path: str, body: bytes) -> None:
        state = self.server.context.state
        if (method, path) == ("GET", "/_sim/stats"):
            self._send_json(200, state.stats())
        elif (method, path) == ("GET", "/_sim/ledger"):
            self._send_json(200, state.ledger())
        elif (method, path) == ("POST", "/_sim/reset"):
            state.reset()
            self._send_json(200, {"reset": True})
        elif (method, path) == ("POST", "/_sim/config"):
            try:
                changes = json.loads(body)
                if not isinstance(changes, dict):
                    raise TypeError("body must be a JSON object of SimulatorConfig fields")
                config = state.configure(changes)
            except (TypeError, ValueError) as error:
                raise NovitaError(400, str(error), reason="INVALID_CONFIG") from None
            self._send_json(200, {"config": config.model_dump()})
        else:
            raise NovitaError(404, f"no control endpoint {method} {path}")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise InvalidRequest("chunked request bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise InvalidRequest("invalid Content-Length") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be taken for the next request
            raise NovitaError(413, f"request body exceeds {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_storage_error(self, status: int, code: str, message: str) -> None:
        self._send(status, STORAGE_ERROR.format(code=code, message=message).encode(), "application/xml")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        self._send_head(status, content_type, len(body), headers)
        if not head_only:
            self.wfile.write(body)

    def _send_head(
        self, status: int, content_type: str, length: int, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

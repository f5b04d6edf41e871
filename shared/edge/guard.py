"""The WSGI layer under each function that keeps hostile request bodies from costing memory,
threads, 5xx answers or ERROR logs.

Installed by each function's main.py at import (functions-framework imports it inside its Flask
app's context):

    install(flask.current_app, limit=MAX_BODY_BYTES)

What it answers for every function, and why the stack under it needs it:

- A `Content-Length` over the limit: 413 before a byte of the body is read. A chunked body that
  crosses the limit: 413 as it does. Without this, functions-framework's after-request hook
  `read_request` calls `request.get_data()` after every answer and reads the whole body into memory.
- The body stops being readable when the function returns, so `read_request` reads nothing more:
  an answer given before the body was read (a 401 for a bad token) goes out without waiting for it.
- A body that stops arriving: 408 after READ_TIMEOUT of silence, and after BODY_DEADLINE overall.
  gunicorn reads bodies from a blocking socket with no timeout, so without this a client that
  announces 100 bytes and sends 1 holds a thread for ever.
- Malformed chunked framing: 400 `malformed_body`; a connection that ends mid-body: 400
  `incomplete_body`. gunicorn raises these from `wsgi.input` inside the function, where they were
  500s logged with a stack trace.
- Each of those is one WARNING line, and its connection is closed: a response whose request body
  was not read to its end says `Connection: close`, and gunicorn neither drains nor keeps it.

A refusal reaches the guard as a BodyRefused, raised from `wsgi.input` into the function. It is a
BaseException, like asyncio.CancelledError, so that a function's `except Exception` catch-all (which
answers 500 and logs a stack trace) lets it through; werkzeug, which turns a stream's OSError and
ValueError into ClientDisconnected, lets it through too.

The timeouts need gunicorn's socket (`environ["gunicorn.socket"]`); under another server only the
limit applies. A streamed answer cannot read the body: it is sealed when the function returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import flask

from shared.core import timings
from shared.edge.answers import error_response
from shared.edge.cors import headers_for

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("http_guard")

Headers = list[tuple[str, str]]
Write = Callable[[bytes], object]

# Seconds without a single body byte before the body is abandoned (408), and for a whole body once
# the function starts reading it (shared/core/timings.py says why each is what it is).
READ_TIMEOUT = timings.BODY_READ_TIMEOUT
BODY_DEADLINE = timings.BODY_DEADLINE
# Enough of a request path to recognise it in a log line; the request line has no length limit
# under functions-framework (limit_request_line=0).
_PATH_ECHO = 200


class BodyRefused(BaseException):
    """The request body cannot be read to its end; the guard answers the request itself."""

    status: ClassVar[int]
    code: ClassVar[str]


class BodyOverLimit(BodyRefused):
    status, code = 413, "body_too_large"


class BodyTimedOut(BodyRefused):
    status, code = 408, "body_timeout"


class BodyMalformed(BodyRefused):
    status, code = 400, "malformed_body"


class BodyIncomplete(BodyRefused):
    status, code = 400, "incomplete_body"


@dataclass(frozen=True)
class Limits:
    body_bytes: int
    read_timeout: float
    body_deadline: float
    # The function's CORS policy, so that the guard's own answers carry the same headers.
    origins: tuple[str, ...] = ()
    methods: str = ""


def install(
    app: flask.Flask,
    *,
    limit: int,
    origins: tuple[str, ...] = (),
    methods: str = "",
    read_timeout: float = READ_TIMEOUT,
    body_deadline: float = BODY_DEADLINE,
) -> None:
    """Guard every request `app` serves: bodies of at most `limit` bytes, read within the timeouts;
    the guard's own answers carry the CORS headers `origins` and `methods` call for."""
    limits = Limits(limit, read_timeout, body_deadline, origins, methods)
    app.wsgi_app = BodyGuard(app.wsgi_app, limits)  # type: ignore[method-assign]
    # Flask runs per-request after-hooks (after_this_request) before the app's own, among them
    # functions-framework's read_request, which is registered after main.py's import: a hook
    # registered here as an app hook would run after it, too late.
    app.before_request(_seal_body_when_view_returns)


def _seal_body_when_view_returns() -> None:
    flask.after_this_request(_seal_body)


def _seal_body(response: flask.Response) -> flask.Response:
    body = flask.request.environ.get("wsgi.input")
    if isinstance(body, GuardedBody):
        body.seal()
    return response


class _ServerResponse(Protocol):
    """The parts of gunicorn's Response (gunicorn/http/wsgi.py) the guard uses."""

    def force_close(self) -> None: ...

    def should_close(self) -> bool: ...


def _server_response(start_response: StartResponse) -> _ServerResponse | None:
    """gunicorn's Response, whose bound method start_response is; None under another server.

    gunicorn drops an application's `Connection` header (a hop-by-hop header) and decides for itself
    whether to keep the connection: force_close() is the one way to make it answer
    `Connection: close` and skip draining the unread body.
    """
    owner = getattr(start_response, "__self__", None)
    if callable(getattr(owner, "force_close", None)) and callable(getattr(owner, "should_close", None)):
        return owner  # type: ignore[no-any-return]
    return None


class BodyGuard:
    """WSGI middleware: see the module's docstring."""

    def __init__(self, app: WSGIApplication, limits: Limits) -> None:
        self._app = app
        self._limits = limits
        self._deadlines = _Deadlines(limits.body_deadline)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        connection = _Connection(environ, start_response)
        try:
            body = self._guard_body(environ, connection.sock)
        except BodyRefused as refusal:
            # The function never ran: the thread's log context still holds the previous request's
            # trace and sketch (shared/logs keeps them in contextvars; gunicorn reuses threads).
            contextvars.Context().run(_warn, refusal, environ)
            return connection.refuse(refusal, environ, self._limits)
        if body is None:
            return self._app(environ, connection.start_response(None))

        sock = connection.sock
        prior_timeout = sock.gettimeout() if sock is not None else None
        if sock is not None:
            # gthread hands each request a blocking socket (timeout None), keep-alive ones included.
            sock.settimeout(self._limits.read_timeout)
        try:
            chunks = self._app(environ, connection.start_response(body))
        except BodyRefused as refusal:
            _warn(refusal, environ)
            return connection.refuse(refusal, environ, self._limits)
        finally:
            body.seal()
            if sock is not None:
                with contextlib.suppress(OSError):  # as gunicorn left it, for writing the answer
                    sock.settimeout(prior_timeout)
        if body.failure is not None:
            # The function caught the refusal and answered anyway: the guard's answer stands.
            if hasattr(chunks, "close"):
                chunks.close()
            _warn(body.failure, environ)
            return connection.refuse(body.failure, environ, self._limits)
        return chunks

    def _guard_body(self, environ: WSGIEnvironment, sock: socket.socket | None) -> GuardedBody | None:
        """Put a GuardedBody in place of `wsgi.input`; None when the request has no body."""
        declared = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if declared and not (declared.isascii() and declared.isdigit()):  # gunicorn refuses these itself
            raise BodyMalformed("the Content-Length is not a number")
        length = int(declared) if declared and not chunked else None
        if length is not None and length > self._limits.body_bytes:
            raise BodyOverLimit(f"the body is over {_size(self._limits.body_bytes)}")
        if not chunked and not length:
            return None
        body = GuardedBody(environ["wsgi.input"], length, self._limits, self._deadlines, sock)
        environ["wsgi.input"] = body
        return body


class _Connection:
    """How one request is answered: closing its connection unless its body was read to the end."""

    def __init__(self, environ: WSGIEnvironment, start_response: StartResponse) -> None:
        self._start_response = start_response
        self._server = _server_response(start_response)
        sock = environ.get("gunicorn.socket")
        self.sock: socket.socket | None = sock if isinstance(sock, socket.socket) else None

    def start_response(self, body: GuardedBody | None) -> StartResponse:
        """The start_response the function's answer goes through (called once the function returned)."""

        def start(status: str, headers: Headers, exc_info: Any = None) -> Write:
            if body is None:
                return self._start(status, headers, exc_info, closing=False)
            if body.failure is not None:
                return _discard  # the function caught a refusal; the guard's answer replaces this one
            return self._start(status, headers, exc_info, closing=not body.keeps_connection)

        return start  # type: ignore[return-value]

    def refuse(self, refusal: BodyRefused, environ: WSGIEnvironment, limits: Limits) -> Iterable[bytes]:
        """The guard's own answer to a refused body, on a connection that then closes."""

        def start(status: str, headers: Headers, exc_info: Any = None) -> Write:
            return self._start(status, headers, exc_info, closing=True)

        cors = headers_for(
            environ.get("HTTP_ORIGIN"),
            environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS"),
            limits.origins,
            limits.methods,
        )
        answer = error_response(refusal.status, refusal.code, str(refusal), cors)
        return answer(environ, start)  # type: ignore[arg-type]

    def _start(self, status: str, headers: Headers, exc_info: Any, *, closing: bool) -> Write:
        if closing:
            headers = [*headers, ("Connection", "close")]  # what servers other than gunicorn honour
            if self._server is not None:
                self._server.force_close()
        write = self._start_response(status, headers, exc_info)
        if self.sock is not None and self._server is not None and self._server.should_close():
            # gunicorn closes a connection with util.close_graceful on its main thread, the one
            # that accepts connections: it waits up to 2 s for the client to hang up first, so each
            # client that does not (a stalled or hostile one) would stop the instance accepting for
            # that long. Once the read side is shut, that wait ends as soon as what the client
            # already sent is discarded. The answer is still written, and still read by the client.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)
        return write


def _discard(data: bytes) -> None:
    """write() for an answer that the guard's own answer replaces."""


def _warn(refusal: BodyRefused, environ: WSGIEnvironment) -> None:
    log.warning(
        "request body refused: %s",
        refusal,
        extra={
            "http_status": refusal.status,
            "code": refusal.code,
            "method": environ.get("REQUEST_METHOD"),
            "path": str(environ.get("PATH_INFO", ""))[:_PATH_ECHO],
        },
    )


class GuardedBody:
    """`wsgi.input` under the guard: at most the limit, each read bounded in time, faults typed.

    Memory: it never asks the server's stream for more than limit + 1 bytes in all.
    """

    def __init__(
        self,
        raw: Any,
        length: int | None,
        limits: Limits,
        deadlines: _Deadlines,
        sock: socket.socket | None,
    ) -> None:
        self._raw = raw
        self._length = length  # None: chunked, its end is where the server's stream ends
        self._limits = limits
        self._deadlines = deadlines
        self._sock = sock
        self._deadline: int | None = None
        self._deadline_passed = False
        self._received = 0
        self._complete = False
        self._sealed = False
        self.failure: BodyRefused | None = None

    @property
    def keeps_connection(self) -> bool:
        """Whether the connection may serve another request: the body was read to its very end."""
        return self._complete and not self._deadline_passed

    def seal(self) -> None:
        """Stop the body being readable: from now on it reads as empty (the function returned)."""
        self._sealed = True
        self._stop_deadline()

    # The WSGI input stream's interface (PEP 3333).

    def read(self, size: int | None = -1) -> bytes:
        return self._pull(self._raw.read, size, whole=True)

    def readline(self, size: int | None = -1) -> bytes:
        return self._pull(self._raw.readline, size, whole=False)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)  # PEP 3333 lets the hint be ignored

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _pull(self, read: Callable[[int], bytes], size: int | None, *, whole: bool) -> bytes:
        """Up to `size` bytes from the server's stream, through `read` (its read or readline).

        `whole`: `read` returns fewer bytes than asked only at the end of the body (a file's read).
        """
        if self._sealed or self._complete:
            return b""
        if self.failure is not None:
            raise self.failure
        want = self._limits.body_bytes + 1 - self._received
        if self._length is not None:
            want = min(want, self._length - self._received)
        if size is not None and size >= 0:
            want = min(want, size)
        if want == 0:
            return b""
        if self._deadline is None and self._sock is not None:
            self._deadline = self._deadlines.start(self._sock)
        try:
            data = read(want)
        except TimeoutError:
            raise self._fail(
                BodyTimedOut(f"no body bytes arrived for {self._limits.read_timeout:g} s")
            ) from None
        except OSError:  # gunicorn's NoMoreData, a reset, or the end the deadline made
            raise self._fail(self._ended_early()) from None
        except Exception as exc:  # gunicorn's ParseException family: InvalidChunkSize, ...
            raise self._fail(BodyMalformed(f"the chunked body is malformed ({type(exc).__name__})")) from None
        self._received += len(data)
        if self._received > self._limits.body_bytes:
            raise self._fail(BodyOverLimit(f"the body is over {_size(self._limits.body_bytes)}"))
        ended = not data or (whole and len(data) < want)
        if self._length is not None:
            if ended and self._received < self._length:
                raise self._fail(self._ended_early())
            ended = self._received == self._length
        if ended:
            self._complete = True
            self._stop_deadline()
        return data

    def _ended_early(self) -> BodyRefused:
        if self._stop_deadline():
            return BodyTimedOut(f"the body did not arrive within {self._limits.body_deadline:g} s")
        return BodyIncomplete("the connection ended before the body did")

    def _fail(self, refusal: BodyRefused) -> BodyRefused:
        self.failure = refusal
        self._stop_deadline()
        return refusal

    def _stop_deadline(self) -> bool:
        """Stop the deadline's watch; whether it had passed (the socket's read side is then shut)."""
        if self._deadline is not None:
            self._deadline_passed = self._deadlines.stop(self._deadline)
            self._deadline = None
        return self._deadline_passed


class _Deadlines:
    """Body deadlines for every request of the process, enforced by one daemon thread.

    A socket timeout bounds each recv(), not a read: gunicorn's Body.read(n) calls recv() until it
    has n bytes, so a client sending a byte every 9 s keeps one read alive for ever under a 10 s
    timeout. When a body's deadline passes, this thread shuts the socket's read side, which wakes
    the blocked recv() with the end of the stream.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._changed = threading.Condition()
        # Every deadline is start time + the same seconds, so insertion order is deadline order.
        self._running: dict[int, tuple[float, socket.socket]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self, sock: socket.socket) -> int:
        with self._changed:
            key = next(self._keys)
            self._running[key] = (time.monotonic() + self._seconds, sock)
            # Started on first use, not at import: functions-framework imports the function in
            # gunicorn's master process, and a thread does not survive the fork into the worker.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._enforce, name="body-deadlines", daemon=True)
                self._thread.start()
            if len(self._running) == 1:  # else the thread already waits for an earlier deadline
                self._changed.notify()
        return key

    def stop(self, key: int) -> bool:
        """Stop watching; whether the deadline had passed already."""
        with self._changed:
            return self._running.pop(key, None) is None

    def _enforce(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                wait: float | None = None
                while self._running:
                    key, (due, sock) = next(iter(self._running.items()))
                    if due > now:
                        wait = due - now
                        break
                    del self._running[key]
                    with contextlib.suppress(OSError):  # the client may be gone already
                        sock.shutdown(socket.SHUT_RD)
                self._changed.wait(wait)


def _size(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"

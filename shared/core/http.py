"""HTTP/1.1 over the standard library's `http.client`, which functions-framework has loaded already,
for what a function's first request may call: Google's APIs (`shared.google`) and Google's token
signing keys (`shared.edge.callers`). A cold instance's first Firestore read or Pub/Sub publish
imports nothing more (httpx and its transport took about 25 ms of a cold start;
`docs/performance.md`). Novita and the media hosts, reached only by steps, use httpx.

Idle connections are kept for the next request to their host, and one the server has closed
while it sat idle is noticed before it is used. A request is sent once: any fault is a
TransportError, which `GoogleApi` treats as a fault that may pass.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import select
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from functools import cache
from typing import Any
from urllib.parse import urlencode, urlsplit

from shared.core.deadline import Deadline

# The system's directory of trusted roots, hashed by subject as Debian and Ubuntu keep it (so do
# Cloud Run's images): OpenSSL reads only the root a handshake needs, where loading a whole bundle
# costs about 20 ms of a cold start.
SYSTEM_CA_DIR = "/etc/ssl/certs"


@cache
def tls_context(ca_dir: str = SYSTEM_CA_DIR) -> ssl.SSLContext:
    """Verifying TLS context for every client, made once: the system's roots, else certifi's
    bundle."""
    try:
        hashed = any(entry.name.endswith(".0") for entry in os.scandir(ca_dir))
    except OSError:
        hashed = False
    if hashed:
        return ssl.create_default_context(capath=ca_dir)
    import certifi  # the bundle httpx ships with (it requires certifi)

    return ssl.create_default_context(cafile=certifi.where())


class TransportError(Exception):
    """No answer: the connection was refused, reset or timed out, or the answer was not HTTP."""


@dataclass(frozen=True)
class Timeout:
    """Seconds to wait for a connection, and for each read of the answer (or write of the body)."""

    connect: float
    read: float

    def within(self, deadline: Deadline) -> Timeout:
        """These timeouts, none longer than what is left of `deadline`."""
        return Timeout(deadline.cap(self.connect), deadline.cap(self.read))


@dataclass(frozen=True)
class Response:
    status_code: int
    headers: Message
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


@dataclass(frozen=True)
class Request:
    """One request as it goes out: the URL with its query, the headers, the body."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | memoryview | None
    timeout: Timeout


class KeptAlive:
    """HTTP that keeps connections alive for the next request to the same host: idle ones wait in a
    pool shared by the instance's threads, at most `keep` a host (an instance serves 32 requests at
    once; a connection beyond that is closed once its answer is read)."""

    def __init__(self, tls: ssl.SSLContext, timeout: Timeout, keep: int = 32) -> None:
        self._tls = tls
        self._timeout = timeout
        self._keep = keep
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | memoryview | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout | None = None,
    ) -> Response:
        """The answer to one request, whatever its status; TransportError when there is none."""
        if params:
            url += ("&" if urlsplit(url).query else "?") + urlencode(params)
        sent = dict(headers or {})
        body = content
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            sent.setdefault("Content-Type", "application/json")
        return self.send(Request(method, url, sent, body, timeout or self._timeout))

    def send(self, request: Request) -> Response:
        """`request`, sent once, over an idle connection to its host or a new one."""
        parts = urlsplit(request.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {request.url[:200]!r}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        key = (parts.scheme, parts.netloc)
        connection = self._take(key)
        try:
            if connection.sock is None:
                connection.timeout = request.timeout.connect
                connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(request.timeout.read)
            connection.request(request.method, target, body=request.body, headers=request.headers)
            answer = connection.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransportError(f"{parts.netloc}: {exc!r}") from exc
        if answer.will_close:
            connection.close()
        else:
            self._give_back(key, connection)
        return Response(answer.status, answer.headers, data)

    def _take(self, key: tuple[str, str]) -> http.client.HTTPConnection:
        """An idle connection to the host that the server has not closed, or a new one."""
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                connection = idle.pop()
                if not _dropped(connection):
                    return connection
                connection.close()
        scheme, netloc = key
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, context=self._tls)
        return http.client.HTTPConnection(netloc)

    def _give_back(self, key: tuple[str, str], connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self._keep:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            pools, self._idle = self._idle, {}
        for idle in pools.values():
            for connection in idle:
                connection.close()


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether the server closed an idle connection: nothing else makes an idle socket readable. So a
    request is never sent on a connection already known dead, and never needs sending again."""
    if connection.sock is None:
        return True
    readable = select.poll()
    readable.register(connection.sock, select.POLLIN)
    return bool(readable.poll(0))


def get_json(url: str, timeout: Timeout) -> tuple[Any, Message]:
    """One GET on a connection of its own, for what is fetched hours apart (Google's signing keys):
    the answer's JSON and headers. ValueError for an answer that is not 2xx JSON, TransportError for
    none."""
    http = KeptAlive(tls_context(), timeout)
    try:
        response = http.request("GET", url)
    finally:
        http.close()
    if not response.is_success:
        raise ValueError(f"{url[:200]} answered {response.status_code}")
    return response.json(), response.headers

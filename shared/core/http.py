"""HTTP/1.1 over the standard library's `http.client`, which functions-framework has loaded already,
for what a function's first request may call: Google's APIs (`shared.google`) and Google's token
signing keys (`shared.edge.callers`). A cold instance's first Firestore read or Pub/Sub publish
imports nothing more (httpx and its transport took about 25 ms of a cold start;
`docs/performance.md`). Novita and the media hosts, reached only by steps, use httpx.

Each thread keeps one connection per host alive (an instance's request threads are long-lived).
A request that finds its kept connection closed by the server is sent once more on a new one;
every other fault is a TransportError, which `GoogleApi` treats as a fault that may pass.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from shared.core.deadline import Deadline

# The system's directory of trusted roots, hashed by subject as Debian and Ubuntu keep it (so do
# Cloud Run's images): OpenSSL reads only the root a handshake needs, where loading a whole bundle
# costs about 20 ms of a cold start.
SYSTEM_CA_DIR = "/etc/ssl/certs"


def tls_context(ca_dir: str = SYSTEM_CA_DIR) -> ssl.SSLContext:
    """Verifying TLS context for every client: the system's roots, else certifi's bundle."""
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
        """These timeouts, none longer than what is left of `deadline` (at least a moment)."""
        left = max(0.001, deadline.remaining())
        return Timeout(min(self.connect, left), min(self.read, left))


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


class Http(Protocol):
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


# What a connection kept alive says when the server closed it while it sat idle.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class KeptAlive:
    """An `Http` that keeps one connection per host alive on each thread."""

    def __init__(self, tls: ssl.SSLContext, timeout: Timeout) -> None:
        self._tls = tls
        self._timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"not an http(s) URL: {url[:200]!r}")
        target = parts.path or "/"
        query = "&".join(filter(None, [parts.query, urlencode(params) if params else ""]))
        if query:
            target += "?" + query
        sent = dict(headers or {})
        body = content
        if json is not None:
            body = jsonlib.dumps(json, separators=(",", ":")).encode()
            sent.setdefault("Content-Type", "application/json")
        limits = timeout or self._timeout
        for fresh in (False, True):
            connection, reused = self._connection(parts.scheme, parts.netloc, fresh)
            try:
                if connection.sock is None:
                    connection.timeout = limits.connect
                    connection.connect()
                assert connection.sock is not None
                connection.sock.settimeout(limits.read)
                connection.request(method, target, body=body, headers=sent)
                answer = connection.getresponse()
                data = answer.read()
            except _STALE as exc:
                self._drop(connection)
                if reused:
                    continue  # closed while it sat idle: once more, on a new connection
                raise TransportError(f"{parts.netloc}: {exc!r}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(connection)
                raise TransportError(f"{parts.netloc}: {exc!r}") from exc
            if answer.will_close:
                self._drop(connection)
            return Response(answer.status, answer.headers, data)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _connection(self, scheme: str, netloc: str, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to the host, and whether it has been used before."""
        kept: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault("kept", {})
        connection = None if fresh else kept.get((scheme, netloc))
        if connection is not None:
            return connection, True
        if scheme == "https":
            connection = http.client.HTTPSConnection(netloc, context=self._tls)
        else:
            connection = http.client.HTTPConnection(netloc)
        kept[(scheme, netloc)] = connection
        with self._lock:
            self._all.append(connection)
        return connection, False

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        kept = self._local.__dict__.get("kept", {})
        for key, held in list(kept.items()):
            if held is connection:
                del kept[key]
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)

    def close(self) -> None:
        """Close every connection, whichever thread opened it."""
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()

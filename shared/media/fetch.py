"""Downloads from a media host under the URL policy (`shared.media.policy`): every connection pinned
to an address the policy approved (no second DNS lookup that a rebinding attacker could answer
differently), every redirect hop checked again, and the whole download within one deadline.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx

from shared.core import timings
from shared.core.config import MediaPolicy
from shared.core.deadline import Deadline
from shared.media.policy import (
    IPAddress,
    MediaError,
    MediaExpired,
    MediaRejected,
    MediaUnavailable,
    Resolver,
    check_media_url,
    default_resolver,
    too_large,
)
from shared.media.still import DEFAULT_MAX_BYTES

# Each phase of a media download waits at most this long (and never past the step's deadline).
CONNECT_SECONDS = timings.MEDIA_CONNECT
READ_SECONDS = timings.MEDIA_READ

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EXPIRED_STATUSES = frozenset({403, 404, 410})


def media_client(*, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client suitable for `stream_media`; each request brings its own timeouts.

    trust_env=False: a proxy from the environment would do its own DNS lookup and
    defeat address pinning.
    """
    return httpx.Client(follow_redirects=False, trust_env=False, transport=transport)


def _status_error(status: int) -> MediaError:
    if status in _EXPIRED_STATUSES:
        return MediaExpired("expired", f"media URL answered {status}; it has expired or is gone")
    if status == 429 or status >= 500:
        return MediaUnavailable("upstream_unavailable", f"media host answered {status}")
    # The URL is left out of messages: presigned URLs carry credentials.
    return MediaRejected("http_status", f"media host answered unexpected status {status}")


def fetch_media(
    url: str,
    *,
    policy: MediaPolicy,
    client: httpx.Client,
    deadline: Deadline,
    max_bytes: int = DEFAULT_MAX_BYTES,
    resolve: Resolver = default_resolver,
    max_redirects: int = 3,
) -> bytes:
    """The whole body of `url` (see `stream_media`), in one buffer."""
    # BytesIO hands its buffer over in getvalue() without a second copy of a 10 MB still.
    body = io.BytesIO()
    with stream_media(
        url,
        policy=policy,
        client=client,
        deadline=deadline,
        max_bytes=max_bytes,
        resolve=resolve,
        max_redirects=max_redirects,
    ) as chunks:
        for chunk in chunks:
            body.write(chunk)
    return body.getvalue()


@contextmanager
def stream_media(
    url: str,
    *,
    policy: MediaPolicy,
    client: httpx.Client,
    deadline: Deadline,
    max_bytes: int,
    resolve: Resolver = default_resolver,
    max_redirects: int = 3,
) -> Iterator[Iterator[bytes]]:
    """The body of `url` under `policy`, chunk by chunk, following at most `max_redirects` checked
    redirects.

    Each hop tries the addresses `check_media_url` approved for it in turn, each connection pinned
    to its address. Everything (connecting, TLS, headers, the body, the next address) happens
    within `deadline`: every phase waits at most what is left of it, and the body stops as soon as
    it runs out, so a host that drips bytes cannot hold the step. The body is refused once it
    passes `max_bytes`, whatever `Content-Length` said.
    """
    watchdog = _Watchdog(deadline)
    try:
        current = url
        for _ in range(max_redirects + 1):
            addresses = check_media_url(current, policy, resolve)
            with _open_pinned(current, addresses, client, deadline, watchdog) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise MediaRejected(
                            "bad_redirect", f"media host answered {response.status_code} without a Location"
                        )
                else:
                    yield _body(response, max_bytes, deadline)
                    return
            try:
                current = str(httpx.URL(current).join(location))
            except httpx.InvalidURL as exc:
                raise MediaRejected("bad_redirect", f"media redirect target is not valid: {exc}") from exc
        raise MediaRejected("too_many_redirects", f"media URL redirected more than {max_redirects} times")
    finally:
        watchdog.close()


class _Watchdog:
    """Shuts the download's connection down when its deadline passes.

    Every read waits at most its own timeout, but that is no bound on the whole: a host that drips
    its headers (or its TLS handshake) a byte at a time satisfies every read for hours, and a read
    that began while much of the deadline was left waits for all of it. Shutting the socket down
    ends whatever read is blocked on it, at the deadline.
    """

    def __init__(self, deadline: Deadline) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._fired = False
        self._timer = threading.Timer(deadline.remaining(), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` request extension: learns each connection's socket once it connects."""
        if event != "connection.connect_tcp.complete":
            return
        # A duplicate of our own: the connection's descriptor may be closed and its number reused by
        # another thread's connection before the timer fires, this one stays ours until close().
        # Shutting it down shuts the connection down, TLS and all.
        connected = info["return_value"].get_extra_info("socket")
        if connected is None:  # a network backend without sockets has nothing to shut down
            return
        watched = connected.dup()
        with self._lock:
            previous, self._socket = self._socket, watched
            if self._fired:
                _shut_down(watched)
        if previous is not None:
            previous.close()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            if self._socket is not None:
                _shut_down(self._socket)

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            watched, self._socket = self._socket, None
        if watched is not None:
            watched.close()


def _shut_down(sock: socket.socket) -> None:
    with suppress(OSError):  # the peer may have closed it already
        sock.shutdown(socket.SHUT_RDWR)


def _transport_failure(what: str, exc: httpx.TransportError, deadline: Deadline) -> MediaUnavailable:
    # At the deadline the watchdog's shutdown surfaces as a connection closed early.
    if isinstance(exc, httpx.TimeoutException) or deadline.remaining() <= 0:
        return MediaUnavailable("timeout", f"{what} timed out: {exc!r}")
    return MediaUnavailable("network_error", f"{what} failed: {exc!r}")


@contextmanager
def _open_pinned(
    url: str, addresses: list[IPAddress], client: httpx.Client, deadline: Deadline, watchdog: _Watchdog
) -> Iterator[httpx.Response]:
    """GET `url` over a connection to the first of `addresses` that answers."""
    original = httpx.URL(url)
    host = original.raw_host.decode("ascii")
    headers = {
        "Host": original.netloc.decode("ascii"),
        # Raw bytes are capped; a compressed body would be capped only after inflating.
        "Accept-Encoding": "identity",
        # The pool keys connections by IP, not name: never let a later request for
        # another name reuse a connection whose certificate was verified for this one.
        "Connection": "close",
    }
    failure: MediaUnavailable | None = None
    for address in addresses:
        if deadline.remaining() <= 0:
            break
        pinned = original.copy_with(host=str(address))
        request = client.build_request(
            "GET",
            pinned,
            headers=headers,
            extensions={"sni_hostname": host, "trace": watchdog.trace},
            timeout=deadline.timeout(connect=CONNECT_SECONDS, read=READ_SECONDS),
        )
        try:
            response = client.send(request, stream=True, follow_redirects=False)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # This address does not answer; another of the host's may.
            failure = _transport_failure(f"media host {host} at {address}", exc, deadline)
            continue
        except httpx.TransportError as exc:
            raise _transport_failure("media download", exc, deadline) from exc
        try:
            if response.status_code not in _REDIRECT_STATUSES and not 200 <= response.status_code < 300:
                raise _status_error(response.status_code)
            yield response
            return
        finally:
            response.close()
    raise failure or MediaUnavailable("timeout", "media download ran out of time before it connected")


def _body(response: httpx.Response, max_bytes: int, deadline: Deadline) -> Iterator[bytes]:
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise MediaRejected("content_encoding", f"media body uses unsupported encoding {encoding}")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(max_bytes)
    received = 0
    try:
        # Encoded bodies were refused above, so these are the raw bytes as they arrive. Not iter_raw:
        # it refuses a body the transport has already read (httpx.MockTransport's, for one).
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes)
            if deadline.remaining() <= 0:
                raise MediaUnavailable("timeout", "media download took too long")
            yield chunk
    except httpx.TransportError as exc:
        raise _transport_failure("media download", exc, deadline) from exc
    if deadline.remaining() <= 0:
        # A body that runs until the connection closes also "ends" when the watchdog shuts it.
        raise MediaUnavailable("timeout", "media download took too long")

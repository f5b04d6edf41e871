"""Safe download and validation of the still image Novita hands us by URL.

The URL arrives in an HTTP request, so fetching it is an SSRF risk: every host
is checked against the policy, the connection is pinned to the checked address
(no second DNS lookup that a rebinding attacker could answer differently), and
every redirect hop is checked again.
"""

from __future__ import annotations

import io
import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from shared.deadline import Deadline

MediaPolicy = Literal["public-https", "any"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MIN_SIDE = 300
# Kling animates stills of at most 2.5:1 either way (Novita's reference).
MAX_ASPECT = 2.5
# Kling renders at most 1080p (about 2 megapixels) and the project asks Seedream for at most
# 2048 x 2048: a still with more pixels than 4096 x 4096 has nothing more to give Kling, and decoding
# it would only cost memory (a 17 KB PNG can claim 12000 x 12000).
MAX_PIXELS = 4096 * 4096
# Each phase of a media download waits at most this long (and never past the step's deadline).
CONNECT_SECONDS = 5.0
READ_SECONDS = 10.0

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_EXPIRED_STATUSES = frozenset({403, 404, 410})
# Metadata server and loopback names resolve to non-public addresses anyway;
# refusing them by name keeps the message obvious and survives a lying resolver.
_BLOCKED_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "localhost"})
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class MediaError(Exception):
    """Base class; `rule` is a short machine-readable code for logs and metrics."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


class MediaRejected(MediaError):
    """Permanent: the URL is refused by policy or the content breaks a rule."""


class MediaUnavailable(MediaError):
    """Transient: network error, timeout, 429 or 5xx from the media host."""


class MediaExpired(MediaError):
    """The URL answered 403/404/410; a fresh URL is needed."""


@dataclass(frozen=True)
class Still:
    # repr=False: a 10 MB bytes repr in a log line or traceback is useless.
    data: bytes = field(repr=False)
    format: Literal["jpeg", "png"]
    width: int
    height: int

    @property
    def mime(self) -> str:
        return f"image/{self.format}"

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else "png"


def default_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver; unique addresses, in resolver order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def media_client(*, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An httpx client suitable for `stream_media`; each request brings its own timeouts.

    trust_env=False: a proxy from the environment would do its own DNS lookup and
    defeat address pinning.
    """
    return httpx.Client(follow_redirects=False, trust_env=False, transport=transport)


def _parse_ipv4_number(part: str) -> int | None:
    if part[:2] in ("0x", "0X"):
        # A bare "0x" is zero to resolvers; int() accepts the prefix with base 16.
        return int(part, 16) if len(part) > 2 else 0
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def _parse_numeric_host(host: str) -> ipaddress.IPv4Address | None:
    """Parse IPv4 shorthands (`2130706433`, `0177.0.0.1`, `0x7f.1`) as resolvers do.

    Follows the WHATWG rule: a host whose last label is numeric is an IPv4
    address, never a name. Returns None for ordinary names.
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not _IPV4_NUMBER.fullmatch(labels[-1]):
        return None
    invalid = MediaRejected("invalid_url", f"media host {host} is not a valid IPv4 address")
    if len(labels) > 4 or not all(_IPV4_NUMBER.fullmatch(label) for label in labels):
        raise invalid
    numbers = [_parse_ipv4_number(label) for label in labels]
    if any(n is None for n in numbers):
        raise invalid
    *head, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise invalid
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _literal_address(host: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _parse_numeric_host(host)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise MediaRejected("invalid_url", "IPv6 zone identifiers are not allowed in media URLs")
    return address


def _normalize(address: IPAddress) -> IPAddress:
    # An IPv4-mapped IPv6 address connects to the embedded IPv4 host; use that
    # directly so the checked address and the connected address are the same.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _is_public(address.ipv4_mapped)
        if address in _NAT64_WELL_KNOWN:
            return _is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None and not _is_public(address.sixtofour):
            return False
        # ::/96 covers ::, ::1 and deprecated IPv4-compatible forms like ::7f00:1.
        if address in _IPV4_COMPATIBLE or address in _NAT64_LOCAL_USE or address.is_site_local:
            return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_unspecified
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_private
    )


def check_media_url(url: str, policy: MediaPolicy, resolve: Resolver) -> list[IPAddress]:
    """Return the addresses a connection to `url` may use, or raise.

    Raises MediaRejected when the URL breaks `policy` and MediaUnavailable when
    the host cannot be resolved right now.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise MediaRejected("invalid_url", f"media URL is not valid: {exc}") from exc

    allowed_schemes = ("https",) if policy == "public-https" else ("http", "https")
    if parsed.scheme not in allowed_schemes:
        shown = parsed.scheme or "no scheme"
        raise MediaRejected(
            "scheme_not_allowed",
            f"media URL must use {' or '.join(allowed_schemes)}, not {shown}",
        )
    if not parsed.raw_host:
        raise MediaRejected("missing_host", "media URL has no host")
    if parsed.userinfo:
        raise MediaRejected("userinfo_not_allowed", "media URL must not contain credentials")
    port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
    if not 0 < port < 65536:
        raise MediaRejected("invalid_url", f"media URL port {port} is out of range")
    if policy == "public-https" and port != 443:
        # Public media is served on https's own port; any other reaches services that are not.
        raise MediaRejected("port_not_allowed", f"media URL must use port 443, not {port}")

    host = parsed.raw_host.decode("ascii")
    literal = _literal_address(host)
    name = host.rstrip(".").lower()
    if literal is None and policy == "public-https" and name in _BLOCKED_HOSTNAMES:
        raise MediaRejected("host_not_allowed", f"media host {name} is not allowed")

    if literal is not None:
        addresses = [literal]
    else:
        try:
            resolved = resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise MediaUnavailable("dns_failed", f"media host {host} could not be resolved: {exc}") from exc
        if not resolved:
            raise MediaUnavailable("dns_failed", f"media host {host} resolved to no addresses")
        try:
            addresses = [ipaddress.ip_address(a) for a in resolved]
        except ValueError as exc:
            raise MediaRejected("address_not_public", f"media host {host} resolved to {exc}") from exc

    if policy == "public-https":
        # Every address must be public: the connection could use any of them,
        # and one private answer is enough to reach internal services.
        for address in addresses:
            if not _is_public(address):
                raise MediaRejected(
                    "address_not_public",
                    f"media host {host} resolves to a non-public address {address}",
                )
    return list(dict.fromkeys(_normalize(a) for a in addresses))


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
        raise _too_large(max_bytes)
    received = 0
    try:
        # Encoded bodies were refused above, so these are the raw bytes as they arrive. Not iter_raw:
        # it refuses a body the transport has already read (httpx.MockTransport's, for one).
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            if deadline.remaining() <= 0:
                raise MediaUnavailable("timeout", "media download took too long")
            yield chunk
    except httpx.TransportError as exc:
        raise _transport_failure("media download", exc, deadline) from exc
    if deadline.remaining() <= 0:
        # A body that runs until the connection closes also "ends" when the watchdog shuts it.
        raise MediaUnavailable("timeout", "media download took too long")


def _too_large(max_bytes: int) -> MediaRejected:
    return MediaRejected("too_large", f"image is larger than {_format_size(max_bytes)}")


def _format_size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


def inspect_still(
    data: bytes, *, min_side: int = DEFAULT_MIN_SIDE, max_bytes: int = DEFAULT_MAX_BYTES
) -> Still:
    """Validate `data` as a still Kling can animate, from its bytes alone (never URL or headers).

    Only what must be decoded is: the header gives the format and size, so a still with too many
    pixels is refused before any pixel is decoded; a JPEG is then decoded at an eighth of its size
    (enough to find a truncated scan), and a PNG's chunks and checksums are read to its end.
    """
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    if data.startswith(_JPEG_MAGIC):
        expected: Literal["jpeg", "png"] = "jpeg"
    elif data.startswith(_PNG_MAGIC):
        expected = "png"
    else:
        raise MediaRejected("not_an_image", "image is not a JPEG or PNG")

    # Imported here: Pillow adds noticeably to cold start of functions that never inspect.
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
            # Pillow reports multi-picture JPEGs from cameras as MPO; still a JPEG.
            actual = "jpeg" if img.format in ("JPEG", "MPO") else "png"
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise MediaRejected(
                    "too_many_pixels",
                    f"image is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels (4096x4096) are "
                    "accepted, more than Kling's 1080p video can use",
                )
            if actual == "jpeg":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
            else:
                img.verify()
    except Image.DecompressionBombError as exc:
        raise MediaRejected("too_many_pixels", f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        truncated = "truncated" in str(exc).lower()
        raise MediaRejected(
            "truncated" if truncated else "not_an_image",
            "image is truncated (its data ends early)" if truncated else "image is not a JPEG or PNG",
        ) from exc
    if actual != expected:
        raise MediaRejected("not_an_image", "image is not a JPEG or PNG")

    if width < min_side or height < min_side:
        raise MediaRejected(
            "too_small",
            f"image is {width}x{height} pixels; at least {min_side}x{min_side} is required",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise MediaRejected(
            "aspect_ratio",
            f"image is {width}x{height} pixels, an aspect ratio of {ratio:.2f}:1; Kling takes at most "
            f"{MAX_ASPECT}:1 either way",
        )
    return Still(data=data, format=expected, width=width, height=height)

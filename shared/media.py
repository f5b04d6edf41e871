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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

MediaPolicy = Literal["public-https", "any"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MIN_SIDE = 300

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
    def filename(self) -> str:
        return "still.jpg" if self.format == "jpeg" else "still.png"


def default_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver; unique addresses, in resolver order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def media_client(
    *,
    connect: float = 5.0,
    read: float = 20.0,
    write: float = 10.0,
    pool: float = 5.0,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    """An httpx client suitable for `fetch_media`.

    trust_env=False: a proxy from the environment would do its own DNS lookup and
    defeat address pinning.
    """
    return httpx.Client(
        timeout=httpx.Timeout(connect=connect, read=read, write=write, pool=pool),
        follow_redirects=False,
        trust_env=False,
        transport=transport,
    )


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
    max_bytes: int = DEFAULT_MAX_BYTES,
    resolve: Resolver = default_resolver,
    max_redirects: int = 3,
    deadline_s: float = 60.0,
) -> bytes:
    """Download `url` under `policy`, following at most `max_redirects` checked redirects.

    Each hop connects to the first address `check_media_url` approved for it.
    Timeouts per operation come from `client`; `deadline_s` bounds the whole
    download so a host dripping bytes slowly cannot hold the function open.
    """
    deadline = time.monotonic() + deadline_s
    current = url
    for _ in range(max_redirects + 1):
        addresses = check_media_url(current, policy, resolve)
        location = _fetch_once(current, addresses[0], client, max_bytes, deadline)
        if isinstance(location, bytes):
            return location
        try:
            current = str(httpx.URL(current).join(location))
        except httpx.InvalidURL as exc:
            raise MediaRejected("bad_redirect", f"media redirect target is not valid: {exc}") from exc
    raise MediaRejected("too_many_redirects", f"media URL redirected more than {max_redirects} times")


def _fetch_once(
    url: str, address: IPAddress, client: httpx.Client, max_bytes: int, deadline: float
) -> bytes | str:
    """GET `url` over a connection to `address`; the body, or the redirect target."""
    original = httpx.URL(url)
    host = original.raw_host.decode("ascii")
    pinned = original.copy_with(host=str(address))
    headers = {
        "Host": original.netloc.decode("ascii"),
        # Raw bytes are capped below; a compressed body would be capped only after inflating.
        "Accept-Encoding": "identity",
        # The pool keys connections by IP, not name: never let a later request for
        # another name reuse a connection whose certificate was verified for this one.
        "Connection": "close",
    }
    try:
        with client.stream(
            "GET",
            pinned,
            headers=headers,
            extensions={"sni_hostname": host},
            follow_redirects=False,
        ) as response:
            if response.status_code in _REDIRECT_STATUSES:
                location: str | None = response.headers.get("Location")
                if not location:
                    raise MediaRejected(
                        "bad_redirect",
                        f"media host answered {response.status_code} without a Location",
                    )
                return location
            if not 200 <= response.status_code < 300:
                raise _status_error(response.status_code)
            encoding = response.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise MediaRejected(
                    "content_encoding",
                    f"media body uses unsupported encoding {encoding}",
                )
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(max_bytes)
            # BytesIO hands its buffer over in getvalue() without a second copy of a 10 MB still.
            body = io.BytesIO()
            # Encoded bodies were refused above, so these are the raw bytes as they arrive.
            for chunk in response.iter_bytes():
                body.write(chunk)
                if body.tell() > max_bytes:
                    raise _too_large(max_bytes)
                if time.monotonic() > deadline:
                    raise MediaUnavailable("timeout", "media download took too long")
            return body.getvalue()
    except httpx.TimeoutException as exc:
        raise MediaUnavailable("timeout", f"media download timed out: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise MediaUnavailable("network_error", f"media download failed: {exc!r}") from exc


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
    """Validate `data` as a JPEG or PNG still from its bytes alone (never URL or headers)."""
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
            # Reads chunk structure and checksums (PNG) without decoding pixels.
            img.verify()
    except Image.DecompressionBombError as exc:
        raise MediaRejected("too_large", f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaRejected("not_an_image", "image is not a JPEG or PNG") from exc
    if actual != expected:
        raise MediaRejected("not_an_image", "image is not a JPEG or PNG")

    if width < min_side or height < min_side:
        raise MediaRejected(
            "too_small",
            f"image is {width}x{height} pixels; at least {min_side}x{min_side} is required",
        )
    return Still(data=data, format=expected, width=width, height=height)

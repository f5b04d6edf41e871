"""Which media URLs a step may fetch: the decision, made before any connection.

The URL arrives from Novita (or from a body that claims to be Novita's), so fetching it is an SSRF
risk. `check_media_url` decides, from the URL and what its host resolves to, which addresses a
connection may use; `shared.media.fetch` then pins each connection to one of them. Tests drive the
decision with a stub resolver, so that no test ever connects to the addresses it refuses.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable

from shared.core.config import MediaPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Metadata server and loopback names resolve to non-public addresses anyway;
# refusing them by name keeps the message obvious and survives a lying resolver.
_BLOCKED_HOSTNAMES = frozenset({"metadata", "metadata.google.internal", "localhost"})
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)")


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


def too_large(max_bytes: int) -> MediaRejected:
    return MediaRejected("too_large", f"image is larger than {_format_size(max_bytes)}")


def _format_size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


def default_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver; unique addresses, in resolver order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


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
    # Parsed as the client that connects parses it (no second reading of the URL to slip through);
    # imported here, by the steps that fetch media, so that the paths that never do load no httpx.
    import httpx

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

"""Tests for shared.media.fetch.

Only loopback is ever connected to. Refusals of metadata, private and
link-local destinations are exercised through `check_media_url` with stub
resolvers, and through `fetch_media` with a transport that fails if called.
Hosts that drip, stall or refuse are loopback servers; every download runs
under a `Deadline`, and the tests about time measure the whole call.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageFile

from shared.core.deadline import Deadline
from shared.media.fetch import fetch_media, media_client, stream_media
from shared.media.policy import (
    MediaError,
    MediaExpired,
    MediaRejected,
    MediaUnavailable,
    check_media_url,
    default_resolver,
)
from shared.media.still import Still, inspect_still
from tests.certificates import self_signed_cert

pytestmark = pytest.mark.timeout(30)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def stub_resolver(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        try:
            return table[host]
        except KeyError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    return resolve


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver must not be called, got {host}:{port}")


def exploding_client() -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no connection may be attempted, got {request.url}")

    return httpx.Client(transport=httpx.MockTransport(handler), timeout=httpx.Timeout(1.0))


def image_bytes(fmt: str, width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buf, format=fmt)
    return buf.getvalue()


JPEG_720x1280 = image_bytes("JPEG", 720, 1280)
PNG_400 = image_bytes("PNG", 400, 400)
JPEG_200 = image_bytes("JPEG", 200, 200)


# --- check_media_url: refusals under public-https -------------------------------------

RESOLVES = stub_resolver(
    {
        "metadata.google.internal": ["169.254.169.254"],
        "metadata": ["169.254.169.254"],
        "localhost": ["127.0.0.1", "::1"],
        "host": [PUBLIC_V4],
        "x": [PUBLIC_V4],
        "mixed.example": [PUBLIC_V4, "10.1.2.3"],
        "mixed6.example": [PUBLIC_V6, "fd00::1"],
        "internal.example": ["127.0.0.1"],
        "mapped.example": ["::ffff:10.0.0.1"],
        "public.example": [PUBLIC_V4],
    }
)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/computeMetadata/v1/", "scheme_not_allowed"),
        ("https://169.254.169.254/computeMetadata/v1/", "address_not_public"),
        ("https://metadata.google.internal/computeMetadata/v1/", "host_not_allowed"),
        ("https://metadata.google.internal./computeMetadata/v1/", "host_not_allowed"),
        ("https://METADATA/computeMetadata/v1/", "host_not_allowed"),
        ("https://localhost/", "host_not_allowed"),
        ("https://127.0.0.1/", "address_not_public"),
        ("https://127.1.2.3:8443/", "port_not_allowed"),
        ("https://host:8443/still.jpg", "port_not_allowed"),
        ("https://host:80/still.jpg", "port_not_allowed"),
        ("https://93.184.216.34:8080/still.jpg", "port_not_allowed"),
        ("https://[::1]/", "address_not_public"),
        ("https://[::]/", "address_not_public"),
        ("https://[fe80::1]/", "address_not_public"),
        ("https://[fe80::1%25eth0]/", "invalid_url"),
        ("https://[fd12:3456::1]/", "address_not_public"),
        ("https://[fc00::1]/", "address_not_public"),
        ("https://[ff02::1]/", "address_not_public"),
        ("https://10.0.0.5/", "address_not_public"),
        ("https://192.168.1.1/", "address_not_public"),
        ("https://172.16.0.1/", "address_not_public"),
        ("https://172.31.255.255/", "address_not_public"),
        ("https://100.64.0.1", "address_not_public"),
        ("https://0.0.0.0/", "address_not_public"),
        ("https://224.0.0.1/", "address_not_public"),
        ("https://255.255.255.255/", "address_not_public"),
        ("https://2130706433/", "address_not_public"),
        ("https://0x7f000001/", "address_not_public"),
        ("https://0x7f.1/", "address_not_public"),
        ("https://127.1/", "address_not_public"),
        ("https://0177.0.0.1/", "invalid_url"),
        ("https://1.2.3.4.5/", "invalid_url"),
        ("https://foo.08/", "invalid_url"),
        ("https://[::ffff:127.0.0.1]/", "address_not_public"),
        ("https://[::ffff:a9fe:a9fe]/", "address_not_public"),
        ("https://[::127.0.0.1]/", "address_not_public"),
        ("https://[64:ff9b::10.0.0.1]/", "address_not_public"),
        ("https://[2002:a00:1::1]/", "address_not_public"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("ftp://x/", "scheme_not_allowed"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme_not_allowed"),
        ("gopher://x/", "scheme_not_allowed"),
        ("//x/still.jpg", "scheme_not_allowed"),
        ("https:///still.jpg", "missing_host"),
        ("https://user:pw@host/", "userinfo_not_allowed"),
        ("https://user@host/", "userinfo_not_allowed"),
        ("https://evil.example\\@127.0.0.1/", "userinfo_not_allowed"),
        ("https://host:99999/", "invalid_url"),
        ("https://mixed.example/still.jpg", "address_not_public"),
        ("https://mixed6.example/still.jpg", "address_not_public"),
        ("https://internal.example/still.jpg", "address_not_public"),
        ("https://mapped.example/still.jpg", "address_not_public"),
        ("http://public.example/still.jpg", "scheme_not_allowed"),
        ("http://93.184.216.34/still.jpg", "scheme_not_allowed"),
    ],
)
def test_public_https_refuses(url: str, rule: str) -> None:
    with pytest.raises(MediaRejected) as info:
        check_media_url(url, "public-https", RESOLVES)
    assert info.value.rule == rule


def test_refusal_messages_name_the_rule() -> None:
    with pytest.raises(MediaRejected, match="media URL must use https"):
        check_media_url("http://public.example/", "public-https", RESOLVES)
    with pytest.raises(
        MediaRejected,
        match="media host internal.example resolves to a non-public address 127.0.0.1",
    ):
        check_media_url("https://internal.example/", "public-https", RESOLVES)
    with pytest.raises(MediaRejected, match="metadata.google.internal is not allowed"):
        check_media_url("https://metadata.google.internal/", "public-https", RESOLVES)
    with pytest.raises(MediaRejected, match="media URL must use port 443, not 8443"):
        check_media_url("https://public.example:8443/", "public-https", RESOLVES)


def test_public_name_is_allowed_with_its_addresses() -> None:
    resolve = stub_resolver({"media.example": [PUBLIC_V4, PUBLIC_V6]})
    addresses = check_media_url("https://media.example/a.jpg?sig=1", "public-https", resolve)
    assert addresses == [
        ipaddress.ip_address(PUBLIC_V4),
        ipaddress.ip_address(PUBLIC_V6),
    ]
    # Naming https's own port is the same URL.
    assert check_media_url("https://media.example:443/a.jpg", "public-https", resolve) == addresses


def test_public_https_refuses_other_ports_before_resolving() -> None:
    # The refusal needs no DNS answer, so a name that resolves to a public address is refused too.
    with pytest.raises(MediaRejected) as info:
        check_media_url("https://media.example:8443/a.jpg?sig=1", "public-https", no_dns)
    assert info.value.rule == "port_not_allowed"


def test_public_ip_literal_is_checked_without_dns() -> None:
    assert check_media_url(f"https://{PUBLIC_V4}/a.jpg", "public-https", no_dns) == [
        ipaddress.ip_address(PUBLIC_V4)
    ]
    assert check_media_url(f"https://[{PUBLIC_V6}]/a.jpg", "public-https", no_dns) == [
        ipaddress.ip_address(PUBLIC_V6)
    ]


def test_ipv4_mapped_public_address_is_used_as_ipv4() -> None:
    url = f"https://[::ffff:{PUBLIC_V4}]/a.jpg"
    assert check_media_url(url, "public-https", no_dns) == [ipaddress.ip_address(PUBLIC_V4)]


def test_resolver_receives_host_and_default_port() -> None:
    seen: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return [PUBLIC_V4]

    check_media_url("https://Media.Example/a.jpg", "public-https", resolve)
    check_media_url("https://media.example:8443/a.jpg", "any", resolve)
    check_media_url("http://media.example/a.jpg", "any", resolve)
    assert seen == [("media.example", 443), ("media.example", 8443), ("media.example", 80)]


def test_dns_failure_is_unavailable() -> None:
    with pytest.raises(MediaUnavailable) as info:
        check_media_url("https://nowhere.example/", "public-https", RESOLVES)
    assert info.value.rule == "dns_failed"
    with pytest.raises(MediaUnavailable):
        check_media_url("https://empty.example/", "public-https", lambda h, p: [])


def test_any_policy_allows_loopback_http_but_not_other_schemes() -> None:
    assert check_media_url("http://127.0.0.1:8080/x.jpg", "any", no_dns) == [
        ipaddress.ip_address("127.0.0.1")
    ]
    assert check_media_url("https://localhost/x.jpg", "any", RESOLVES) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert check_media_url("http://10.0.0.5/x.jpg", "any", no_dns) == [ipaddress.ip_address("10.0.0.5")]
    for url in ("file:///etc/passwd", "ftp://x/", "data:,x", "gopher://x/"):
        with pytest.raises(MediaRejected) as info:
            check_media_url(url, "any", no_dns)
        assert info.value.rule == "scheme_not_allowed"


def test_exception_hierarchy() -> None:
    for cls in (MediaRejected, MediaUnavailable, MediaExpired):
        assert issubclass(cls, MediaError)
    err = MediaRejected("too_small", "image is 1x1 pixels")
    assert err.rule == "too_small"
    assert str(err) == "image is 1x1 pixels"


def test_default_resolver_returns_unique_strings() -> None:
    assert default_resolver("127.0.0.1", 443) == ["127.0.0.1"]


NON_PUBLIC_NETWORKS = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
        "ff00::/8",
    )
]

non_public_addresses = st.sampled_from(NON_PUBLIC_NETWORKS).flatmap(
    lambda net: st.integers(0, net.num_addresses - 1).map(lambda i: net[i])
)


def url_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


@given(address=non_public_addresses)
def test_property_non_public_literals_are_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    with pytest.raises(MediaRejected):
        check_media_url(f"https://{url_host(address)}/still.jpg", "public-https", no_dns)


@given(address=non_public_addresses)
def test_property_names_resolving_to_non_public_are_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    resolve = stub_resolver({"cdn.example": [PUBLIC_V4, str(address)]})
    with pytest.raises(MediaRejected) as info:
        check_media_url("https://cdn.example/still.jpg", "public-https", resolve)
    assert info.value.rule == "address_not_public"


@given(address=non_public_addresses.filter(lambda a: a.version == 4))
def test_property_ipv4_mapped_and_decimal_forms_are_refused(
    address: ipaddress.IPv4Address,
) -> None:
    for host in (f"[::ffff:{address}]", str(int(address)), hex(int(address))):
        with pytest.raises(MediaRejected):
            check_media_url(f"https://{host}/still.jpg", "public-https", no_dns)


# --- fetch_media without connecting anywhere ---------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/computeMetadata/v1/",
        "https://169.254.169.254/computeMetadata/v1/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://internal.example/still.jpg",
        "https://mixed.example/still.jpg",
        "https://2130706433/",
        "file:///etc/passwd",
    ],
)
def test_refused_url_causes_no_connection(url: str) -> None:
    resolve = stub_resolver(
        {
            "metadata.google.internal": ["169.254.169.254"],
            "internal.example": ["127.0.0.1"],
            "mixed.example": [PUBLIC_V4, "169.254.169.254"],
        }
    )
    with exploding_client() as client, pytest.raises(MediaRejected):
        fetch_media(url, policy="public-https", client=client, deadline=Deadline.after(5), resolve=resolve)


@dataclass
class Recorder:
    requests: list[httpx.Request] = field(default_factory=list)


def mock_client(
    routes: dict[str, Callable[[httpx.Request], httpx.Response]], recorder: Recorder
) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        recorder.requests.append(request)
        return routes[request.url.path](request)

    return httpx.Client(transport=httpx.MockTransport(handler), timeout=httpx.Timeout(1.0))


def test_pinning_rewrites_host_and_keeps_name_for_host_header_and_sni() -> None:
    recorder = Recorder()
    routes = {"/still.jpg": lambda r: httpx.Response(200, content=JPEG_720x1280)}
    resolve = stub_resolver({"cdn.example": [PUBLIC_V4]})
    with mock_client(routes, recorder) as client:
        body = fetch_media(
            "https://cdn.example/still.jpg?sig=abc",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    assert body == JPEG_720x1280
    [request] = recorder.requests
    assert str(request.url) == f"https://{PUBLIC_V4}/still.jpg?sig=abc"
    assert request.headers["Host"] == "cdn.example"
    assert request.extensions["sni_hostname"] == "cdn.example"


def test_pinning_brackets_ipv6_and_keeps_port() -> None:
    recorder = Recorder()
    routes = {"/still.jpg": lambda r: httpx.Response(200, content=b"ok")}
    resolve = stub_resolver({"cdn.example": [PUBLIC_V6]})
    # Only "any" allows a port other than 443; the mock transport connects nowhere.
    with mock_client(routes, recorder) as client:
        fetch_media(
            "https://cdn.example:8443/still.jpg",
            policy="any",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    [request] = recorder.requests
    assert str(request.url) == f"https://[{PUBLIC_V6}]:8443/still.jpg"
    assert request.headers["Host"] == "cdn.example:8443"


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/computeMetadata/v1/",
        "https://169.254.169.254/computeMetadata/v1/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://[::1]/x",
        "https://internal.example/x",
        "http://cdn.example/still.jpg",
        "file:///etc/passwd",
    ],
)
def test_redirect_to_refused_target_is_not_followed(location: str) -> None:
    recorder = Recorder()
    routes = {"/start": lambda r: httpx.Response(302, headers={"Location": location})}
    resolve = stub_resolver(
        {
            "cdn.example": [PUBLIC_V4],
            "metadata.google.internal": ["169.254.169.254"],
            "internal.example": ["10.0.0.7"],
        }
    )
    with mock_client(routes, recorder) as client, pytest.raises(MediaRejected):
        fetch_media(
            "https://cdn.example/start",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    assert len(recorder.requests) == 1


def test_redirect_to_public_host_is_pinned_again() -> None:
    recorder = Recorder()
    routes = {
        "/start": lambda r: httpx.Response(302, headers={"Location": "https://storage.example/still.jpg"}),
        "/still.jpg": lambda r: httpx.Response(200, content=b"jpeg"),
    }
    resolve = stub_resolver({"cdn.example": [PUBLIC_V4], "storage.example": ["8.8.8.8"]})
    with mock_client(routes, recorder) as client:
        body = fetch_media(
            "https://cdn.example/start",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    assert body == b"jpeg"
    assert [str(r.url) for r in recorder.requests] == [
        f"https://{PUBLIC_V4}/start",
        "https://8.8.8.8/still.jpg",
    ]
    assert recorder.requests[1].headers["Host"] == "storage.example"


def test_body_cap_ignores_a_lying_content_length() -> None:
    def lying(request: httpx.Request) -> httpx.Response:
        chunks = (b"\xff" * 1024 for _ in range(1000))
        return httpx.Response(200, headers={"Content-Length": "10"}, content=chunks)

    recorder = Recorder()
    resolve = stub_resolver({"cdn.example": [PUBLIC_V4]})
    with (
        mock_client({"/big": lying}, recorder) as client,
        pytest.raises(MediaRejected) as info,
    ):
        fetch_media(
            "https://cdn.example/big",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
            max_bytes=10_000,
        )
    assert info.value.rule == "too_large"


@pytest.mark.parametrize("location", ["https://[::1", "http://exa mple/"])
def test_invalid_redirect_target_is_not_followed(location: str) -> None:
    recorder = Recorder()
    routes = {"/start": lambda r: httpx.Response(302, headers={"Location": location})}
    resolve = stub_resolver({"cdn.example": [PUBLIC_V4]})
    # httpx itself may refuse to parse some Location values (a transport error).
    with mock_client(routes, recorder) as client, pytest.raises(MediaError):
        fetch_media(
            "https://cdn.example/start",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    assert len(recorder.requests) == 1


def test_compressed_body_is_refused() -> None:
    recorder = Recorder()
    routes = {
        "/still.jpg": lambda r: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"\x1f\x8b")
    }
    resolve = stub_resolver({"cdn.example": [PUBLIC_V4]})
    with mock_client(routes, recorder) as client, pytest.raises(MediaRejected) as info:
        fetch_media(
            "https://cdn.example/still.jpg",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    assert info.value.rule == "content_encoding"
    assert recorder.requests[0].headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(("with_port", "rule"), [(True, "port_not_allowed"), (False, "address_not_public")])
def test_public_https_refuses_name_resolving_to_loopback_without_connecting(
    server: LoopbackServer, with_port: bool, rule: str
) -> None:
    resolve = stub_resolver({"media.test": ["127.0.0.1"]})
    before = len(server.hits)
    port = f":{server.port}" if with_port else ""
    with exploding_client() as client, pytest.raises(MediaRejected) as info:
        fetch_media(
            f"https://media.test{port}/still.jpg",
            policy="public-https",
            client=client,
            deadline=Deadline.after(5),
            resolve=resolve,
        )
    assert info.value.rule == rule
    assert len(server.hits) == before


# --- end to end against a loopback server -----------------------------------------

BIG_BODY_BYTES = 50 * 1024 * 1024
SEND_CHUNK = 64 * 1024
# A dripping host sends one byte this often: every read returns well within any read timeout, so
# only the deadline can end the download.
DRIP_SECONDS = 0.3
# How far past its deadline a download may still be running when it gives up.
DEADLINE_SLACK = 1.0


class LoopbackServer:
    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []
        self.big_sent = 0
        self.big_done = threading.Event()
        self.dripped = 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits.append((self.path, self.headers.get("Host", "")))
                outer.route(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def send(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        ctype: str = "image/jpeg",
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def redirect(self, h: BaseHTTPRequestHandler, location: str) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def stream_big(self, h: BaseHTTPRequestHandler, *, chunked: bool) -> None:
        # Reset before the headers go out: the client may read the first chunk before this thread
        # runs again, and must not see the count of a previous test's stream.
        self.big_sent = 0
        h.send_response(200)
        h.send_header("Content-Type", "image/jpeg")
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        block = b"\xff" * SEND_CHUNK
        framed = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
        try:
            while self.big_sent < BIG_BODY_BYTES:
                h.wfile.write(framed)
                self.big_sent += len(block)
            if chunked:
                h.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            self.big_done.set()

    def drip(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        """Send `data` a byte at a time until it is out, the client hangs up or the server stops."""
        h.close_connection = True
        self.dripped = 0
        try:
            for i in range(len(data)):
                if self.release.wait(DRIP_SECONDS):
                    return
                h.wfile.write(data[i : i + 1])
                self.dripped += 1
        except OSError:
            pass

    def stall_after_headers(self, h: BaseHTTPRequestHandler, header_delay: float, framing: str) -> None:
        h.close_connection = True
        if self.release.wait(header_delay):
            return
        h.send_response(200)
        if framing == "length":
            h.send_header("Content-Length", "1000")
        else:  # the body ends when the connection closes
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"\xff" * 10)
        self.release.wait(10)

    def route(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        if path in ("/still.jpg", "/x.jpg"):
            self.send(h, 200, JPEG_720x1280)
        elif path == "/still.png":
            self.send(h, 200, PNG_400, "image/png")
        elif path == "/small.jpg":
            self.send(h, 200, JPEG_200)
        elif path == "/text.jpg":
            self.send(h, 200, b"definitely not an image\n" * 100)
        elif path == "/big-chunked.jpg":
            self.stream_big(h, chunked=True)
        elif path == "/big-until-close.jpg":
            self.stream_big(h, chunked=False)
        elif path == "/big-declared.jpg":
            h.send_response(200)
            h.send_header("Content-Length", str(BIG_BODY_BYTES))
            h.end_headers()
            h.wfile.write(b"\xff" * SEND_CHUNK)
        elif path == "/drip-body.jpg":
            h.send_response(200)
            h.send_header("Content-Length", "10000")
            h.end_headers()
            self.drip(h, b"\xff" * 10_000)
        elif path == "/drip-headers.jpg":
            h.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.drip(h, b"X-Drip: " + b"a" * 10_000)
        elif path.startswith("/stall-after-headers/"):
            _, _, framing, delay = path.split("/")
            self.stall_after_headers(h, float(delay), framing)
        elif path == "/redirect":
            self.redirect(h, "/still.jpg")
        elif path == "/redirect-big":
            self.redirect(h, "/big-chunked.jpg")
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self.redirect(h, f"/chain/{left - 1}" if left > 0 else "/still.jpg")
        elif path == "/redirect-no-location":
            h.send_response(302)
            h.send_header("Content-Length", "0")
            h.end_headers()
        elif path == "/slow.jpg":
            self.release.wait(10)
        else:
            status = int(path.strip("/"))
            self.send(h, status, b"status body", "text/plain")

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with media_client() as c:
        yield c


def fetch(
    url: str,
    client: httpx.Client,
    *,
    max_bytes: int = 10 * 1024 * 1024,
    max_redirects: int = 3,
    resolve: Callable[[str, int], list[str]] = no_dns,
    deadline_s: float = 5.0,
) -> bytes:
    return fetch_media(
        url,
        policy="any",
        client=client,
        deadline=Deadline.after(deadline_s),
        max_bytes=max_bytes,
        max_redirects=max_redirects,
        resolve=resolve,
    )


def abandoned_at_deadline(
    url: str,
    client: httpx.Client,
    deadline_s: float,
    resolve: Callable[[str, int], list[str]] = no_dns,
) -> None:
    """Assert that a fetch of `url` under a `deadline_s` deadline gives up, as timed out, at the
    deadline: not before (the host kept it busy until then) and not long after."""
    started = time.monotonic()
    with pytest.raises(MediaUnavailable) as info:
        fetch(url, client, deadline_s=deadline_s, resolve=resolve)
    elapsed = time.monotonic() - started
    assert info.value.rule == "timeout"
    assert deadline_s - 0.05 <= elapsed < deadline_s + DEADLINE_SLACK


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fetch_and_inspect_jpeg(server: LoopbackServer, client: httpx.Client) -> None:
    still = inspect_still(fetch(server.url("/still.jpg"), client))
    assert still == Still(data=JPEG_720x1280, format="jpeg", width=720, height=1280)
    assert (still.mime, still.extension) == ("image/jpeg", "jpg")


def test_fetch_and_inspect_png(server: LoopbackServer, client: httpx.Client) -> None:
    still = inspect_still(fetch(server.url("/still.png"), client))
    assert (still.format, still.width, still.height) == ("png", 400, 400)
    assert (still.mime, still.extension) == ("image/png", "png")


def test_small_image_is_rejected(server: LoopbackServer, client: httpx.Client) -> None:
    data = fetch(server.url("/small.jpg"), client)
    with pytest.raises(MediaRejected) as info:
        inspect_still(data)
    assert info.value.rule == "too_small"
    assert str(info.value) == "image is 200x200 pixels; at least 300x300 is required"


def test_text_served_as_jpeg_is_rejected(server: LoopbackServer, client: httpx.Client) -> None:
    data = fetch(server.url("/text.jpg"), client)
    with pytest.raises(MediaRejected) as info:
        inspect_still(data)
    assert info.value.rule == "not_an_image"
    assert str(info.value) == "image is not a JPEG or PNG"


@pytest.mark.parametrize("path", ["/big-chunked.jpg", "/big-until-close.jpg"])
def test_oversized_stream_is_aborted_early(server: LoopbackServer, client: httpx.Client, path: str) -> None:
    server.big_done.clear()
    with pytest.raises(MediaRejected) as info:
        fetch(server.url(path), client, max_bytes=1024 * 1024)
    assert info.value.rule == "too_large"
    assert str(info.value) == "image is larger than 1 MB"
    # The server stops when the client hangs up; only socket buffers' worth got out.
    assert server.big_done.wait(10)
    assert server.big_sent < BIG_BODY_BYTES // 5


def test_declared_oversize_is_refused_before_reading(server: LoopbackServer, client: httpx.Client) -> None:
    with pytest.raises(MediaRejected) as info:
        fetch(server.url("/big-declared.jpg"), client)
    assert info.value.rule == "too_large"
    assert str(info.value) == "image is larger than 10 MB"


def test_redirect_is_followed_under_any(server: LoopbackServer, client: httpx.Client) -> None:
    assert fetch(server.url("/redirect"), client) == JPEG_720x1280


def test_redirects_up_to_the_limit_are_followed(server: LoopbackServer, client: httpx.Client) -> None:
    # /chain/2 -> /chain/1 -> /chain/0 -> /still.jpg is three redirects.
    assert fetch(server.url("/chain/2"), client, max_redirects=3) == JPEG_720x1280


def test_redirect_chain_longer_than_limit_is_rejected(server: LoopbackServer, client: httpx.Client) -> None:
    before = len(server.hits)
    with pytest.raises(MediaRejected) as info:
        fetch(server.url("/chain/3"), client, max_redirects=3)
    assert info.value.rule == "too_many_redirects"
    assert len(server.hits) - before == 4


def test_redirect_without_location_is_rejected(server: LoopbackServer, client: httpx.Client) -> None:
    with pytest.raises(MediaRejected) as info:
        fetch(server.url("/redirect-no-location"), client)
    assert info.value.rule == "bad_redirect"


@pytest.mark.parametrize(
    ("status", "exc", "rule"),
    [
        (403, MediaExpired, "expired"),
        (404, MediaExpired, "expired"),
        (410, MediaExpired, "expired"),
        (429, MediaUnavailable, "upstream_unavailable"),
        (500, MediaUnavailable, "upstream_unavailable"),
        (503, MediaUnavailable, "upstream_unavailable"),
        (400, MediaRejected, "http_status"),
        (451, MediaRejected, "http_status"),
    ],
)
def test_status_mapping(
    server: LoopbackServer,
    client: httpx.Client,
    status: int,
    exc: type[MediaError],
    rule: str,
) -> None:
    with pytest.raises(exc) as info:
        fetch(server.url(f"/{status}"), client)
    assert info.value.rule == rule


# --- the deadline -------------------------------------------------------------------


def test_silent_server_is_abandoned_at_the_deadline(server: LoopbackServer, client: httpx.Client) -> None:
    abandoned_at_deadline(server.url("/slow.jpg"), client, 0.5)


@pytest.mark.parametrize("path", ["/drip-body.jpg", "/drip-headers.jpg"])
def test_dripping_host_is_abandoned_at_the_deadline(
    server: LoopbackServer, client: httpx.Client, path: str
) -> None:
    # At a byte per 0.3 s the host would hold the download for 50 minutes.
    abandoned_at_deadline(server.url(path), client, 1.5)
    # Bytes kept coming until the deadline: no read timeout can have ended the download.
    assert server.dripped >= 3


@pytest.mark.parametrize(
    ("framing", "header_delay"), [("length", 0.0), ("length", 1.5), ("until-close", 1.5)]
)
def test_host_stalling_after_the_headers_is_abandoned_at_the_deadline(
    server: LoopbackServer, client: httpx.Client, framing: str, header_delay: float
) -> None:
    # Headers that come late leave less of the deadline for the body: its wait shrinks with it. A
    # body framed by the connection's end must not pass for whole when the download is cut off.
    abandoned_at_deadline(server.url(f"/stall-after-headers/{framing}/{header_delay}"), client, 2.0)


def test_body_loop_stops_at_the_deadline_without_a_socket_to_watch() -> None:
    # A transport of its own (here a mock) gives the deadline no connection to shut down: the loop
    # over the body must stop by itself.
    def dripping(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            for _ in range(100):
                time.sleep(DRIP_SECONDS)
                yield b"\xff"

        return httpx.Response(200, content=body())

    resolve = stub_resolver({"cdn.example": [PUBLIC_V4]})
    started = time.monotonic()
    with mock_client({"/drip": dripping}, Recorder()) as client, pytest.raises(MediaUnavailable) as info:
        fetch_media(
            "https://cdn.example/drip",
            policy="public-https",
            client=client,
            deadline=Deadline.after(1.0),
            resolve=resolve,
        )
    assert info.value.rule == "timeout"
    assert time.monotonic() - started < 1.0 + DEADLINE_SLACK


def test_passed_deadline_connects_nowhere(server: LoopbackServer, client: httpx.Client) -> None:
    before = len(server.hits)
    with pytest.raises(MediaUnavailable) as info:
        fetch_media(
            server.url("/still.jpg"), policy="any", client=client, deadline=Deadline.after(0), resolve=no_dns
        )
    assert info.value.rule == "timeout"
    assert len(server.hits) == before


# --- addresses --------------------------------------------------------------------


def test_refused_connection_is_unavailable(client: httpx.Client) -> None:
    with pytest.raises(MediaUnavailable) as info:
        fetch(f"http://127.0.0.1:{unused_port()}/still.jpg", client)
    assert info.value.rule == "network_error"


def test_next_address_is_tried_when_the_first_refuses(server: LoopbackServer, client: httpx.Client) -> None:
    # The server listens on 127.0.0.1 only: the same port on 127.0.0.2 refuses connections.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", server.port), 2):
        pass
    resolve = stub_resolver({"media.test": ["127.0.0.2", "127.0.0.1"]})
    before = len(server.hits)
    body = fetch(f"http://media.test:{server.port}/still.jpg", client, resolve=resolve)
    assert body == JPEG_720x1280
    assert server.hits[before:] == [("/still.jpg", f"media.test:{server.port}")]


def test_every_address_refusing_is_unavailable(client: httpx.Client) -> None:
    resolve = stub_resolver({"media.test": ["127.0.0.2", "127.0.0.3"]})
    with pytest.raises(MediaUnavailable, match="at 127.0.0.3") as info:
        fetch(f"http://media.test:{unused_port()}/still.jpg", client, resolve=resolve)
    assert info.value.rule == "network_error"


def test_pinned_connection_reaches_checked_address_with_original_host(
    server: LoopbackServer, client: httpx.Client
) -> None:
    resolve = stub_resolver({"media.test": ["127.0.0.1"]})
    before = len(server.hits)
    body = fetch(f"http://media.test:{server.port}/x.jpg?v=1", client, resolve=resolve)
    assert body == JPEG_720x1280
    assert server.hits[before:] == [("/x.jpg?v=1", f"media.test:{server.port}")]


# --- stream_media -----------------------------------------------------------------

# Far below the 50 MB body: a stream that held the body whole would hand it over in one piece.
MAX_CHUNK = 1024 * 1024


def stream(url: str, client: httpx.Client, *, max_bytes: int) -> AbstractContextManager[Iterator[bytes]]:
    return stream_media(
        url, policy="any", client=client, deadline=Deadline.after(20), max_bytes=max_bytes, resolve=no_dns
    )


@pytest.mark.parametrize("path", ["/big-chunked.jpg", "/big-until-close.jpg", "/redirect-big"])
def test_stream_yields_a_large_body_in_small_chunks_as_it_arrives(
    server: LoopbackServer, client: httpx.Client, path: str
) -> None:
    sizes: list[int] = []
    sent_before_first_chunk = 0
    with stream(server.url(path), client, max_bytes=BIG_BODY_BYTES) as chunks:
        for chunk in chunks:
            if not sizes:
                sent_before_first_chunk = server.big_sent
            sizes.append(len(chunk))
    assert sum(sizes) == BIG_BODY_BYTES
    assert max(sizes) <= MAX_CHUNK
    # The first chunk was handed over while most of the body was still to be sent.
    assert sent_before_first_chunk < BIG_BODY_BYTES // 2


def test_stream_stops_past_max_bytes(server: LoopbackServer, client: httpx.Client) -> None:
    server.big_done.clear()
    received = 0
    with (
        pytest.raises(MediaRejected) as info,
        stream(server.url("/big-chunked.jpg"), client, max_bytes=1024 * 1024) as chunks,
    ):
        for chunk in chunks:
            received += len(chunk)
    assert info.value.rule == "too_large"
    assert 0 < received <= 1024 * 1024
    assert server.big_done.wait(10)
    assert server.big_sent < BIG_BODY_BYTES // 5


def test_stream_hangs_up_when_the_consumer_fails(server: LoopbackServer, client: httpx.Client) -> None:
    # The worker streams a video into Cloud Storage; an upload that fails must not leave the
    # download running.
    server.big_done.clear()
    with (
        pytest.raises(RuntimeError, match="upload failed"),
        stream(server.url("/big-chunked.jpg"), client, max_bytes=BIG_BODY_BYTES) as chunks,
    ):
        next(chunks)
        raise RuntimeError("upload failed")
    assert server.big_done.wait(10)
    assert server.big_sent < BIG_BODY_BYTES // 5


def test_stream_refuses_an_error_status_before_the_body(server: LoopbackServer, client: httpx.Client) -> None:
    entered = False
    with pytest.raises(MediaExpired), stream(server.url("/404"), client, max_bytes=1024):
        entered = True
    assert not entered


@dataclass
class TlsServer:
    server: LoopbackServer
    ca: ssl.SSLContext
    sni: list[str | None]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    cert_pem, key_pem = self_signed_cert("media.test")
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode())
    with LoopbackServer() as srv:
        srv.httpd.socket = server_ctx.wrap_socket(srv.httpd.socket, server_side=True)
        yield TlsServer(srv, client_ctx, sni)


def test_pinned_tls_verifies_certificate_and_sni_for_the_name(
    tls_server: TlsServer,
) -> None:
    port = tls_server.server.port
    resolve = stub_resolver({"media.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with httpx.Client(verify=tls_server.ca, timeout=httpx.Timeout(2.0), trust_env=False) as client:
        body = fetch(f"https://media.test:{port}/still.jpg", client, resolve=resolve)
        assert body == JPEG_720x1280
        assert tls_server.sni[-1] == "media.test"
        assert tls_server.server.hits[-1] == ("/still.jpg", f"media.test:{port}")
        # The certificate names media.test only: a name it does not cover must fail.
        with pytest.raises(MediaUnavailable):
            fetch(f"https://other.test:{port}/still.jpg", client, resolve=resolve)
        assert tls_server.sni[-1] == "other.test"


def test_tls_dripping_host_is_abandoned_at_the_deadline(tls_server: TlsServer) -> None:
    resolve = stub_resolver({"media.test": ["127.0.0.1"]})
    url = f"https://media.test:{tls_server.server.port}/drip-headers.jpg"
    with httpx.Client(verify=tls_server.ca, trust_env=False) as client:
        abandoned_at_deadline(url, client, 1.5, resolve)
    assert tls_server.server.dripped >= 3


# --- inspect_still ----------------------------------------------------------------


def test_inspect_accepts_exact_minimum() -> None:
    still = inspect_still(image_bytes("PNG", 300, 300))
    assert (still.width, still.height) == (300, 300)


@pytest.mark.parametrize(("width", "height"), [(299, 1280), (720, 299), (1, 1)])
def test_inspect_rejects_either_side_too_small(width: int, height: int) -> None:
    with pytest.raises(MediaRejected) as info:
        inspect_still(image_bytes("JPEG", width, height))
    assert info.value.rule == "too_small"
    assert str(info.value) == (f"image is {width}x{height} pixels; at least 300x300 is required")


def test_inspect_rejects_too_large_before_parsing() -> None:
    with pytest.raises(MediaRejected) as info:
        inspect_still(JPEG_720x1280, max_bytes=len(JPEG_720x1280) - 1)
    assert info.value.rule == "too_large"
    with pytest.raises(MediaRejected, match="image is larger than 10 MB"):
        inspect_still(b"\xff\xd8\xff" + b"\x00" * (10 * 1024 * 1024))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        image_bytes("GIF", 400, 400),
        image_bytes("WEBP", 400, 400),
        image_bytes("BMP", 400, 400),
        b"\xff\xd8\xff" + b"\x00" * 100,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        PNG_400[:40],
        b"<svg xmlns='http://www.w3.org/2000/svg' width='400' height='400'/>",
    ],
)
def test_inspect_rejects_non_images(data: bytes) -> None:
    with pytest.raises(MediaRejected) as info:
        inspect_still(data)
    assert info.value.rule == "not_an_image"


def test_inspect_rejects_corrupted_png() -> None:
    corrupt = bytearray(PNG_400)
    corrupt[-20] ^= 0xFF
    with pytest.raises(MediaRejected) as info:
        inspect_still(bytes(corrupt))
    assert info.value.rule == "not_an_image"


def test_still_repr_omits_the_bytes() -> None:
    assert "data" not in repr(inspect_still(JPEG_720x1280))


# --- inspect_still: what Kling can animate ----------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    """A valid all-black PNG of any size, one bit a pixel, built a row at a time: a picture that
    claims 12000 x 12000 pixels is about 17 KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed bits
    pixels = zlib.compressobj(9)
    idat = b"".join(pixels.compress(row) for _ in range(height)) + pixels.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel is decoded: Pillow decodes in ImageFile.load."""

    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError(f"{self.size[0]}x{self.size[1]} pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# Pillow warns at opening a picture past its own limit of ~89 megapixels; refusing it is this check's job.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.usefixtures("no_decoding")
@pytest.mark.parametrize(("width", "height"), [(12000, 12000), (20000, 20000), (4097, 4096), (300, 60000)])
def test_inspect_refuses_too_many_pixels_without_decoding(width: int, height: int) -> None:
    data = png_bytes(width, height)
    assert len(data) < 64 * 1024
    with pytest.raises(MediaRejected) as info:
        inspect_still(data)
    assert info.value.rule == "too_many_pixels"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_inspect_too_many_pixels_messages_name_the_rule() -> None:
    with pytest.raises(MediaRejected) as info:
        inspect_still(png_bytes(12000, 12000))
    assert str(info.value) == (
        "image is 12000x12000 pixels; at most 16,777,216 pixels (4096x4096) are accepted, "
        "more than Kling's 1080p video can use"
    )
    # Past twice its own limit Pillow refuses to open the picture at all.
    with pytest.raises(MediaRejected, match="^image has too many pixels: "):
        inspect_still(png_bytes(20000, 20000))


def test_inspect_accepts_exactly_the_pixel_limit() -> None:
    still = inspect_still(png_bytes(4096, 4096))
    assert (still.format, still.width, still.height) == ("png", 4096, 4096)


@pytest.fixture(scope="module")
def jpeg_4000() -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((4000, 4000)).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def test_inspect_accepts_a_whole_large_jpeg(jpeg_4000: bytes) -> None:
    still = inspect_still(jpeg_4000)
    assert (still.format, still.width, still.height) == ("jpeg", 4000, 4000)


@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_inspect_refuses_a_truncated_jpeg(jpeg_4000: bytes, kept: float) -> None:
    # The header is whole, so only decoding the scan finds that the data ends early.
    with pytest.raises(MediaRejected) as info:
        inspect_still(jpeg_4000[: int(len(jpeg_4000) * kept)])
    assert info.value.rule == "truncated"
    assert str(info.value) == "image is truncated (its data ends early)"


@pytest.mark.parametrize(("width", "height"), [(1200, 400), (400, 1200), (1001, 400)])
def test_inspect_refuses_an_aspect_ratio_beyond_kling(width: int, height: int) -> None:
    with pytest.raises(MediaRejected) as info:
        inspect_still(image_bytes("PNG", width, height))
    assert info.value.rule == "aspect_ratio"
    ratio = max(width, height) / min(width, height)
    assert str(info.value) == (
        f"image is {width}x{height} pixels, an aspect ratio of {ratio:.2f}:1; Kling takes at most 2.5:1 "
        "either way"
    )


@pytest.mark.parametrize(("width", "height"), [(1000, 400), (400, 1000)])
def test_inspect_accepts_exactly_the_widest_aspect_ratio(width: int, height: int) -> None:
    still = inspect_still(image_bytes("JPEG", width, height))
    assert (still.width, still.height) == (width, height)

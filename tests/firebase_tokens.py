"""Firebase ID tokens for tests: keys and self-signed certificates minted here, served on loopback
the way Google serves its own, so that no token or key ever comes from Google."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt as pyjwt
from conftest import PROJECT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISSUER = f"https://securetoken.google.com/{PROJECT}"
CERTS_MAX_AGE = 2  # seconds: short, so that a key rotation is picked up within the test


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test-{kid}")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.private, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        return pyjwt.encode(claims, self.private, algorithm="RS256", headers={"kid": kid or self.kid})


class CertServer:
    """Google's x509 endpoint on loopback: `{kid: PEM}` with a Cache-Control max-age."""

    def __init__(self) -> None:
        self.certs: dict[str, str] = {}
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                server.fetches += 1
                body = json.dumps(server.certs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={CERTS_MAX_AGE}, must-revalidate")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/certs"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> CertServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


KEY = SigningKey("key-1")
OTHER_KEY = SigningKey("key-1")  # same kid, another key: its signatures must not verify


def claims(uid: str = "user-a", **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": PROJECT,
        "sub": uid,
        "user_id": uid,
        "iat": now - 60,
        "exp": now + 3600,
        "auth_time": now - 120,
        "firebase": {"sign_in_provider": "password"},
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


@contextmanager
def google_certs() -> Iterator[CertServer]:
    """Google's certificate endpoint on loopback, serving KEY's certificate."""
    server = CertServer().start()
    server.certs = {KEY.kid: KEY.cert_pem}
    try:
        yield server
    finally:
        server.stop()


def bearer(uid: str) -> dict[str, str]:
    """The Authorization header of a signed-in user `uid`."""
    return {"Authorization": f"Bearer {KEY.sign(claims(uid))}"}

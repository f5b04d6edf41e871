"""Firebase App Check tokens (shared/edge/appcheck.py): RS256 over Firebase's published keys, for
this project's number, unexpired; anything else refused, saying why and never quoting the token."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.hashes import SHA256

from shared.edge.appcheck import AppCheck, AppCheckFailed

NUMBER = "123456789"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def token(claims: dict[str, Any] | None = None, header: dict[str, Any] | None = None, key: Any = KEY) -> str:
    now = int(time.time())
    body = {
        "iss": f"https://firebaseappcheck.googleapis.com/{NUMBER}",
        "aud": [f"projects/{NUMBER}", "projects/sketch-app"],
        "sub": "1:123456789:android:abc",
        "exp": now + 3600,
        "iat": now,
        **(claims or {}),
    }
    head = {"alg": "RS256", "typ": "JWT", "kid": "key-1", **(header or {})}
    signing = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing}.{_b64(key.sign(signing.encode(), padding.PKCS1v15(), SHA256()))}"


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    """Firebase's key set, served on loopback."""
    numbers = KEY.public_key().public_numbers()
    body = json.dumps({"keys": [{"kty": "RSA", "kid": "key-1", "n": _int(numbers.n), "e": _int(numbers.e)}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/jwks"
    server.shutdown()


def test_a_token_of_the_projects_app_names_its_app(jwks_url: str) -> None:
    assert AppCheck(NUMBER, jwks_url).verify(token()) == "1:123456789:android:abc"


@pytest.mark.parametrize(
    ("presented", "why"),
    [
        (None, "header is required"),
        ("not.a.jwt.at.all", "malformed"),
        (token(header={"alg": "none"}), "RS256"),
        (token(header={"alg": "HS256"}), "RS256"),
        (token(header={"kid": "key-9"}), "unknown key"),
        (token(key=OTHER_KEY), "signature"),
        (token({"iss": "https://firebaseappcheck.googleapis.com/999"}), "issued for this project"),
        (token({"aud": ["projects/999"]}), "not meant for this project"),
        (token({"aud": f"projects/{NUMBER}"}), "not meant for this project"),
        (token({"exp": int(time.time()) - 60}), "expired"),
        (token({"sub": ""}), "names no app"),
    ],
    ids=[
        "none",
        "malformed",
        "alg-none",
        "hs256",
        "unknown-kid",
        "forged",
        "issuer",
        "audience",
        "aud-string",
        "expired",
        "no-app",
    ],
)
def test_anything_else_is_refused_saying_why(jwks_url: str, presented: str | None, why: str) -> None:
    with pytest.raises(AppCheckFailed, match=why) as refused:
        AppCheck(NUMBER, jwks_url).verify(presented)
    assert presented is None or presented not in str(refused.value)

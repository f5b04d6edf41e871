"""Firebase App Check on `create_sketch`: is the caller the project's own app?

The app sends its App Check token in `X-Firebase-AppCheck`: an RS256 JWT signed by a key Firebase
publishes as a JWKS (`APP_CHECK_JWKS_URL`), issued by `https://firebaseappcheck.googleapis.com/<project
number>` for the audience `projects/<project number>`, with the app's id in `sub`. `APP_CHECK=enforce`
refuses a call without a valid one; `monitor` logs what enforce would refuse and lets it through.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Any

from shared.core.http import Timeout, TransportError, get_json
from shared.edge.callers import CLOCK_SKEW_SECONDS, max_age

log = logging.getLogger(__name__)

HEADER = "X-Firebase-AppCheck"
ISSUER_PREFIX = "https://firebaseappcheck.googleapis.com/"
JWKS_TIMEOUT = Timeout(connect=5.0, read=5.0)
# Firebase asks that the keys be cached no longer than six hours.
MAX_KEYS_AGE_SECONDS = 6 * 3600.0
REFRESH_RETRY_SECONDS = 60.0
MAX_TOKEN_LENGTH = 4096


class AppCheckFailed(Exception):
    """The call carries no valid App Check token; the message says why (never the token)."""


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _integer(field: str) -> int:
    return int.from_bytes(_b64(field), "big")


class _Keys:
    """The JWKS `{kid: public key}`, kept as its Cache-Control allows (at most six hours)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._expires_at = float("-inf")

    def get(self, kid: str) -> Any:
        with self._lock:
            now = time.monotonic()
            if now >= self._expires_at or kid not in self._keys:
                self._refresh(now)
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        # Imported here: only a deployment with App Check on ever verifies a signature.
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

        try:
            jwks, headers = get_json(self._url, JWKS_TIMEOUT)
            keys = {
                str(key["kid"]): RSAPublicNumbers(_integer(key["e"]), _integer(key["n"])).public_key()
                for key in jwks["keys"]
                if key.get("kty") == "RSA"
            }
        except (TransportError, ValueError, LookupError, TypeError, binascii.Error) as exc:
            if not self._keys:
                raise AppCheckFailed("App Check's keys could not be fetched") from exc
            log.warning("App Check keys not refreshed, using the cached ones: %s", exc)
            self._expires_at = now + REFRESH_RETRY_SECONDS
            return
        self._keys = keys
        self._expires_at = now + min(MAX_KEYS_AGE_SECONDS, max_age(headers.get("Cache-Control", "")))


class AppCheck:
    """Verifies App Check tokens for one Firebase project (by its number)."""

    def __init__(self, project_number: str, jwks_url: str) -> None:
        self._project_number = project_number
        self._keys = _Keys(jwks_url)

    def verify(self, token: str | None) -> str:
        """The app id (`sub`) of a valid token; AppCheckFailed otherwise."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
        from cryptography.hazmat.primitives.hashes import SHA256

        if not token:
            raise AppCheckFailed(f"the {HEADER} header is required")
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise AppCheckFailed("the App Check token is malformed")
        head, body, signature = token.split(".")
        try:
            header = json.loads(_b64(head))
            claims = json.loads(_b64(body))
            signed = _b64(signature)
        except (ValueError, binascii.Error) as exc:
            raise AppCheckFailed("the App Check token is malformed") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise AppCheckFailed("the App Check token is malformed")
        # Nothing but RS256 with a known key: no `none`, no HS256 keyed by a public key.
        if (
            header.get("alg") != "RS256"
            or header.get("typ") != "JWT"
            or not isinstance(header.get("kid"), str)
        ):
            raise AppCheckFailed("the App Check token must be an RS256 JWT that names its key")
        key = self._keys.get(header["kid"])
        if key is None:
            raise AppCheckFailed("the App Check token is signed by an unknown key")
        try:
            key.verify(signed, f"{head}.{body}".encode("ascii"), PKCS1v15(), SHA256())
        except (InvalidSignature, ValueError) as exc:
            raise AppCheckFailed("the App Check token's signature is not valid") from exc
        self._check_claims(claims)
        return str(claims["sub"])

    def _check_claims(self, claims: dict[str, Any]) -> None:
        if claims.get("iss") != f"{ISSUER_PREFIX}{self._project_number}":
            raise AppCheckFailed("the App Check token was not issued for this project")
        audience = claims.get("aud")
        if not isinstance(audience, list) or f"projects/{self._project_number}" not in audience:
            raise AppCheckFailed("the App Check token is not meant for this project")
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or isinstance(expires, bool):
            raise AppCheckFailed("the App Check token has no expiry")
        if expires + CLOCK_SKEW_SECONDS < time.time():
            raise AppCheckFailed("the App Check token has expired")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= 256:
            raise AppCheckFailed("the App Check token names no app")

"""Who is calling `create_sketch`: nobody in particular (`AUTH_MODE=none`) or a Firebase user.

Firebase ID tokens are RS256 JWTs signed by keys Google publishes as X.509 certificates, keyed by
the `kid` of the token header. The checks are those Firebase documents: alg RS256 with a known
kid, a valid signature, exp in the future and iat/auth_time in the past (with a small clock
skew), aud the Firebase project, iss `https://securetoken.google.com/<project>`, sub non-empty.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import flask

from shared.core.config import Settings
from shared.core.http import Timeout, TransportError, get_json

log = logging.getLogger(__name__)

CERTS_TIMEOUT = Timeout(connect=5.0, read=5.0)
# Used when the certificates' answer names no max-age (Google's always does, ~ hours).
DEFAULT_MAX_AGE_SECONDS = 3600.0
# After a failed refresh the keys we hold are used this long before trying again.
REFRESH_RETRY_SECONDS = 60.0
CLOCK_SKEW_SECONDS = 10
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


class AuthError(Exception):
    """The caller did not prove who it is; answered 401."""


class KeysUnavailable(AuthError):
    """Google's signing certificates could not be fetched and none are cached."""


def max_age(cache_control: str) -> float:
    """Seconds a response may be cached for, from its Cache-Control header."""
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else DEFAULT_MAX_AGE_SECONDS


class _CertCache:
    """Google's `{kid: certificate PEM}` map, kept as long as its Cache-Control max-age allows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._url = ""
        self._certs: dict[str, str] = {}
        self._expires_at = float("-inf")

    def get(self, url: str) -> dict[str, str]:
        with self._lock:
            now = time.monotonic()
            if url == self._url and now < self._expires_at:
                return self._certs
            try:
                certs, headers = get_json(url, CERTS_TIMEOUT)
                if (
                    not isinstance(certs, dict)
                    or not certs
                    or not all(isinstance(k, str) and isinstance(v, str) for k, v in certs.items())
                ):
                    raise ValueError("the answer is not a map of key ids to certificates")
            except (TransportError, ValueError) as exc:
                if url != self._url or not self._certs:
                    raise KeysUnavailable("the token signing keys could not be fetched") from exc
                log.warning("token signing keys not refreshed, using the cached ones: %s", exc)
                self._expires_at = now + REFRESH_RETRY_SECONDS
                return self._certs
            self._url, self._certs = url, certs
            self._expires_at = now + max_age(headers.get("Cache-Control", ""))
            return certs


_certs = _CertCache()


@dataclass(frozen=True)
class Caller:
    """Who is calling: a Firebase user (a guest when they signed in anonymously), or nobody in
    particular with `AUTH_MODE=none`."""

    user_id: str | None
    guest: bool = False


NOBODY = Caller(None)


def authenticate(request: flask.Request, settings: Settings) -> Caller:
    """The caller; raises AuthError for a missing or bad token (AUTH_MODE=firebase)."""
    if settings.auth_mode == "none":
        return NOBODY
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("an Authorization: Bearer <Firebase ID token> header is required")
    try:
        claims = verify_id_token(
            token,
            settings.firebase_project,
            settings.firebase_certs_url,
            emulated=settings.firebase_auth_emulator_host is not None,
        )
    except AuthError as exc:
        log.info("caller refused: %s", exc)  # the reason only: never the token
        raise
    firebase = claims.get("firebase")
    provider = firebase.get("sign_in_provider") if isinstance(firebase, dict) else None
    return Caller(claims["sub"], guest=provider == "anonymous")


def verify_id_token(token: str, project: str, certs_url: str, *, emulated: bool = False) -> dict[str, Any]:
    """The claims of a valid Firebase ID token for `project`; raises AuthError otherwise.

    `emulated` (FIREBASE_AUTH_EMULATOR_HOST is set, as the Admin SDKs have it): the Firebase Auth
    emulator's tokens are unsigned (`alg: none`) and are accepted with the same claims checked.
    Without it such a token is refused like any other that is not RS256.
    """
    # Imported here: with AUTH_MODE=none the JWT machinery never loads, which shortens cold start.
    from google.auth import exceptions as gauth_exceptions
    from google.auth import jwt

    try:
        header = jwt.decode_header(token)
    except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
        raise AuthError("the ID token is malformed") from exc
    if emulated and header.get("alg") == "none":
        claims = _unsigned_claims(token)
        if claims.get("aud") != project:
            raise AuthError("the ID token is not meant for this project")
        expires = claims.get("exp")
        if not isinstance(expires, int | float) or expires + CLOCK_SKEW_SECONDS < time.time():
            raise AuthError("the ID token has expired")
    else:
        kid = header.get("kid")
        # Refuse anything but RS256 before touching keys: no `none`, no HS256 keyed by a public cert.
        if header.get("alg") != "RS256" or not isinstance(kid, str) or not kid:
            raise AuthError("the ID token must be signed with RS256 and name its key id")
        certs = _certs.get(certs_url)
        if kid not in certs:
            raise AuthError("the ID token is signed by an unknown key")
        try:
            claims = jwt.decode(
                token, certs=certs, audience=project, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
            )
        except (ValueError, TypeError, gauth_exceptions.GoogleAuthError) as exc:
            # Not the library's message: some of its messages quote the token.
            raise AuthError("the ID token is not valid (signature, audience or validity period)") from exc
    if claims.get("iss") != f"https://securetoken.google.com/{project}":
        raise AuthError("the ID token was not issued for this project")
    auth_time = claims.get("auth_time")
    if (
        not isinstance(auth_time, int | float)
        or isinstance(auth_time, bool)
        or auth_time > time.time() + CLOCK_SKEW_SECONDS
    ):
        raise AuthError("the ID token has no valid auth_time")
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 128:
        raise AuthError("the ID token names no user")
    return claims


def _unsigned_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("the ID token is malformed")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise AuthError("the ID token is malformed") from exc
    if not isinstance(claims, dict):
        raise AuthError("the ID token is malformed")
    return claims

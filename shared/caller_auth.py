"""Who is calling `create_sketch`: nobody in particular (`AUTH_MODE=none`) or a Firebase user.

Firebase ID tokens are RS256 JWTs signed by keys Google publishes as X.509 certificates; the
signature, audience (the Firebase project), issuer and expiry are all checked.
"""

from __future__ import annotations

import threading
import time

import flask
import httpx
from google.auth import exceptions as gauth_exceptions
from google.auth import jwt

from shared.config import Settings

CERTS_TIMEOUT = httpx.Timeout(5.0)
CERTS_MAX_AGE_SECONDS = 3600.0


class AuthError(Exception):
    """The caller did not prove who it is; answered 401."""


class _CertCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._certs: dict[str, str] = {}
        self._fetched_at = float("-inf")

    def get(self, url: str) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._fetched_at > CERTS_MAX_AGE_SECONDS or not self._certs:
                try:
                    response = httpx.get(url, timeout=CERTS_TIMEOUT)
                    response.raise_for_status()
                    self._certs = dict(response.json())
                except (httpx.HTTPError, ValueError) as exc:
                    if not self._certs:
                        raise AuthError("the token signing keys could not be fetched") from exc
                self._fetched_at = time.monotonic()
            return self._certs


_certs = _CertCache()


def authenticate(request: flask.Request, settings: Settings) -> str | None:
    """The caller's user id, None when auth is off; raises AuthError for a missing or bad token."""
    if settings.auth_mode == "none":
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("an Authorization: Bearer <Firebase ID token> header is required")
    project = settings.firebase_project
    try:
        claims = jwt.decode(token.strip(), certs=_certs.get(settings.firebase_certs_url), audience=project)
    except (ValueError, gauth_exceptions.GoogleAuthError) as exc:
        raise AuthError("the ID token is not valid") from exc
    if claims.get("iss") != f"https://securetoken.google.com/{project}":
        raise AuthError("the ID token was not issued for this project")
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 128:
        raise AuthError("the ID token names no user")
    return user_id

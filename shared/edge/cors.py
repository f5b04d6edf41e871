"""CORS: which browser origins may call a function, and the headers that say so. Every answer carries
them, the body guard's own included, so that a browser sees a refusal as a refusal and not as a
network error."""

from __future__ import annotations

import flask

# Headers a browser app must be able to read from an answer.
EXPOSED = "Idempotent-Replayed, Retry-After"
DEFAULT_REQUEST_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Firebase-AppCheck"


def headers_for(
    origin: str | None, requested: str | None, allowed_origins: tuple[str, ...], methods: str
) -> dict[str, str]:
    """CORS headers for a request from `origin` asking to send `requested` headers: none when the
    origin is not allowed."""
    if "*" in allowed_origins:
        allow = "*"
    elif origin and origin in allowed_origins:
        allow = origin
    else:
        return {}
    headers = {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": requested or DEFAULT_REQUEST_HEADERS,
        "Access-Control-Expose-Headers": EXPOSED,
        "Access-Control-Max-Age": "3600",
    }
    if allow != "*":
        headers["Vary"] = "Origin"
    return headers


def cors_headers(request: flask.Request, allowed_origins: tuple[str, ...], methods: str) -> dict[str, str]:
    """CORS headers for this request: none when its Origin is not allowed."""
    return headers_for(
        request.headers.get("Origin"),
        request.headers.get("Access-Control-Request-Headers"),
        allowed_origins,
        methods,
    )


def preflight(request: flask.Request, allowed_origins: tuple[str, ...], methods: str) -> flask.Response:
    """The answer to a CORS preflight: 204, no body, and so no Content-Type."""
    response = flask.Response(status=204, headers=cors_headers(request, allowed_origins, methods))
    del response.headers["Content-Type"]
    return response

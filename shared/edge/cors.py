"""CORS: which browser origins may call a function, and the headers that say so."""

from __future__ import annotations

import flask


def cors_headers(request: flask.Request, allowed_origins: tuple[str, ...], methods: str) -> dict[str, str]:
    """CORS headers for this request: none when its Origin is not allowed."""
    origin = request.headers.get("Origin")
    if "*" in allowed_origins:
        allow = "*"
    elif origin and origin in allowed_origins:
        allow = origin
    else:
        return {}
    headers = {
        "Access-Control-Allow-Origin": allow,
        "Access-Control-Allow-Methods": methods,
        "Access-Control-Allow-Headers": request.headers.get(
            "Access-Control-Request-Headers", "Authorization, Content-Type"
        ),
        "Access-Control-Max-Age": "3600",
    }
    if allow != "*":
        headers["Vary"] = "Origin"
    return headers


def preflight(request: flask.Request, allowed_origins: tuple[str, ...], methods: str) -> flask.Response:
    return flask.Response(status=204, headers=cors_headers(request, allowed_origins, methods))

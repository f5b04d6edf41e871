"""HTTP plumbing both functions share: JSON answers, the error shape, CORS, bounded bodies."""

from __future__ import annotations

import json
from typing import Any

import flask

JSON_HEADERS = {"Content-Type": "application/json"}


class BodyTooLarge(Exception):
    pass


def parse_json(raw: bytes) -> object:
    """The JSON in `raw`; ValueError for anything that is not JSON, however it fails."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError("not valid JSON") from exc


def internal_error() -> flask.Response:
    """The answer for a fault nobody foresaw: JSON like every other error, and 5xx so it is retried."""
    return error_response(500, "internal", "an unexpected error occurred; it has been logged")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(
        # ASCII escapes: a lone surrogate echoed back from a request cannot break the answer.
        json.dumps(body, ensure_ascii=True),
        status=status,
        headers={**JSON_HEADERS, **(headers or {})},
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **details: Any
) -> flask.Response:
    return json_response(status, {"error": {"code": code, "message": message, **details}}, headers)


def read_body(request: flask.Request, limit: int) -> bytes:
    """The request body, refusing one over `limit` bytes without reading past it."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge
    return data


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


def method_not_allowed(allowed: str, headers: dict[str, str] | None = None) -> flask.Response:
    return error_response(
        405, "method_not_allowed", f"use {allowed}", headers={"Allow": allowed, **(headers or {})}
    )

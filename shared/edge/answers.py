"""HTTP answers both functions share: JSON answers, the error shape, and strict JSON bodies.

Transport faults of a body (over the instance's limit, too slow, badly framed, cut off) never reach
this module: `shared.edge.guard` answers them under the function. What is read here is a whole
body of at most the guard's limit, to be judged as JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import flask

JSON_HEADERS = {"Content-Type": "application/json"}

# RFC 8259 section 8.1: JSON between systems is UTF-8. Only that charset may be named; the media
# type and the parameter are case-insensitive (RFC 9110 section 8.3.1).
_JSON_CONTENT_TYPE = re.compile(r'application/json(?:[ \t]*;[ \t]*charset=(?:utf-8|"utf-8"))?[ \t]*', re.I)
# Enough of a refused key or header to recognise it, not enough to flood a log line or an answer.
_ECHO = 64


class UnsupportedMediaType(Exception):
    """The Content-Type is not JSON in UTF-8 (answer 415 `unsupported_media_type`)."""


class InvalidJson(ValueError):
    """The body is not strict JSON; the message says why (answer 400 `invalid_json`).

    A ValueError, so that callers which caught parse_json's ValueError keep working.
    """


def require_json_content_type(request: flask.Request) -> None:
    """Refuse a body not declared `application/json`, optionally `; charset=utf-8`.

    A separate step from reading: a sender whose Content-Type is not documented (Novita) is not
    held to it.
    """
    content_type = request.headers.get("Content-Type", "")
    if not _JSON_CONTENT_TYPE.fullmatch(content_type):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (charset utf-8 if any), not {content_type[:_ECHO]!r}"
        )


def parse_json(raw: bytes) -> object:
    """The JSON in `raw`, strictly: UTF-8, finite numbers, unique keys; else InvalidJson saying why.

    `json.loads(bytes)` would guess UTF-16 and UTF-32, accept NaN and Infinity (which strict JSON
    parsers refuse) and keep the last of two equal keys, so a body could mean one thing here and
    another to whoever validated or signed it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"the body is not UTF-8 (invalid byte at offset {exc.start})") from None
    if "\x00" in text:  # legal UTF-8, never legal JSON: the mark of UTF-16 or UTF-32
        raise InvalidJson("the body is not UTF-8 (it has NUL bytes: UTF-16 or UTF-32?)")
    try:
        return json.loads(
            text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite_float
        )
    except InvalidJson:
        raise
    except RecursionError:
        raise InvalidJson("the body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an integer over Python's digit limit
        raise InvalidJson(f"the body is not valid JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidJson(f"the body has the key {key[:_ECHO]!r} twice in one object")
        obj[key] = value
    return obj


def _no_constant(name: str) -> float:
    raise InvalidJson(f"the body has {name}, which JSON does not allow")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):  # 1e999 is valid JSON syntax but no finite number
        raise InvalidJson(f"the body has a number out of range ({literal[:_ECHO]})")
    return value


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


def method_not_allowed(allowed: str, headers: dict[str, str] | None = None) -> flask.Response:
    return error_response(
        405, "method_not_allowed", f"use {allowed}", headers={"Allow": allowed, **(headers or {})}
    )

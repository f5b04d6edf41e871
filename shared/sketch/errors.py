"""The errors of `create_sketch`: every code it may send, and what an error may say beside it. Each
error is checked with `described` before it goes out, so a code nobody described cannot go out;
`shared/sketch/schemas.py` and `shared/openapi.py` describe them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

ErrorCode = Literal[
    "invalid_json",
    "invalid_field",
    "invalid_header",
    "malformed_body",
    "incomplete_body",
    "unauthenticated",
    "app_check_failed",
    "not_found",
    "method_not_allowed",
    "body_timeout",
    "idempotency_key_in_use",
    "not_retryable",
    "body_too_large",
    "unsupported_media_type",
    "idempotency_key_reused",
    "daily_limit",
    "project_daily_limit",
    "too_many_sketches",
    "internal",
    "novita_rejected",
    "novita_balance",
    "novita_unavailable",
    "store_unavailable",
    "storage_unavailable",
    "auth_unavailable",
]
ERROR_CODES = frozenset(get_args(ErrorCode))
# What an error may say beyond its code and message (`ErrorDetail`).
DETAILS = frozenset({"field", "reason", "sketch"})


def described(code: str, details: Iterable[str]) -> None:
    """Refuse a code or a detail nobody described (a bug in the caller)."""
    if code not in ERROR_CODES:
        raise ValueError(f"error code {code!r} is not described in ErrorCode")
    unknown = set(details) - DETAILS
    if unknown:
        raise ValueError(f"error details {sorted(unknown)} are not described in ErrorDetail")

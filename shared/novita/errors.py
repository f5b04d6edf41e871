"""Novita's refusals and faults, typed by what the caller can do about them:

- `NovitaRejected`: Novita refused the request (4xx other than 429); sending it again won't help.
- `NovitaUnavailable`: Novita could not be reached or asked us to come back (429, 5xx, network);
  a later step sends the request again.
- `NovitaOutcomeUnknown`: a POST was sent but no usable answer came back, so a paid task may exist
  and the request is not simply sent again (`shared/pipeline/paid.py`).

Apart from the client, so that what only catches them (a step, the breaker) imports no client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

MAX_MESSAGE = 500
MAX_REASON = 64
BALANCE_REASONS = frozenset({"NOT_ENOUGH_BALANCE", "BILLING_BALANCE_NOT_ENOUGH"})
# Refusals about the account, the key or the content: another form of the request would be
# refused the same way.
_NOT_ABOUT_FORM = BALANCE_REASONS | {
    "MISSING_API_KEY",
    "INVALID_API_KEY",
    "API_NOT_ALLOWED",
    "FEATURE_NOT_ALLOWED",
    "NEED_REAL_NAME_VERIFY",
    "ILLEGAL_PROMPT",
    "ILLEGAL_IMAGE_CONTENT",
    "RATE_LIMIT_EXCEEDED",
}
_FORM_STATUSES = frozenset({400, 404, 405, 415, 422})


def _storable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with any lone surrogate (JSON lets them through) replaced:
    error texts end up in sketches and logs, which take only valid UTF-8."""
    return text[:limit].encode("utf-8", "replace").decode("utf-8")


class NovitaError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: Any = None,
        reason: str | None = None,
    ) -> None:
        self.message = _storable(message, MAX_MESSAGE)
        super().__init__(self.message)  # str(exc) is logged and stored too
        self.status_code = status_code
        self.code = code
        self.reason = None if reason is None else _storable(reason, MAX_REASON)

    def describe(self) -> str:
        """One line for a sketch's `error_message` and for an API error."""
        parts = [f"Novita {self.status_code}" if self.status_code else "Novita"]
        if self.reason:
            parts.append(self.reason)
        return f"{' '.join(parts)}: {self.message}"

    @property
    def is_balance(self) -> bool:
        """The account's balance is not enough (Novita says so with a 400 or a 403)."""
        return self.reason in BALANCE_REASONS


class NovitaRejected(NovitaError):
    @property
    def refuses_form(self) -> bool:
        """Whether the refusal may be about the request's shape, so that the other form may pass."""
        return self.status_code in _FORM_STATUSES and self.reason not in _NOT_ABOUT_FORM


class NovitaUnavailable(NovitaError):
    pass


class NovitaOutcomeUnknown(NovitaError):
    pass


def error_from_response(response: httpx.Response) -> NovitaError:
    """Build the typed error from Novita's `{code, reason, message}` error body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.reason_phrase or "request failed")
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    kind: type[NovitaError]
    if response.status_code == 429 or response.status_code >= 500:
        kind = NovitaUnavailable
    else:
        kind = NovitaRejected
    return kind(message, status_code=response.status_code, code=body.get("code"), reason=reason)

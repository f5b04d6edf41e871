"""Novita's error responses: `{"code", "reason", "message", "metadata"}`."""

from typing import Any

from novita_simulator.config import Personality

REASONS = {
    400: "INVALID_REQUEST_BODY",
    401: "INVALID_API_KEY",
    403: "NOT_ENOUGH_BALANCE",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_ENTITY_TOO_LARGE",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}

MESSAGES = {
    403: "not enough balance",
    429: "rate limit exceeded, please retry later",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable, please retry later",
    504: "gateway timeout",
}


class NovitaError(Exception):
    """An API error answered with Novita's error body."""

    def __init__(self, status: int, message: str | None = None, reason: str | None = None) -> None:
        self.status = status
        self.reason = reason or REASONS.get(status, "SIMULATED_ERROR")
        self.message = message or MESSAGES.get(status, "simulated error")
        super().__init__(f"{status} {self.reason}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"code": self.status, "reason": self.reason, "message": self.message, "metadata": {}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"} if self.status == 429 else {}


class InjectedError(NovitaError):
    """An error a fault switch asked for: the same answer as a real one, but the request did nothing."""


class InvalidRequest(NovitaError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def insufficient_balance(personality: Personality) -> NovitaError:
    """What a paid request meets when the account is out of credit.

    The guide's answer is the 403 seen in practice; Novita's reference lists 400
    `BILLING_BALANCE_NOT_ENOUGH` for its image and video APIs (403 `NOT_ENOUGH_BALANCE` is its LLM form).
    """
    if personality == "reference":
        return NovitaError(400, "Insufficient balance", reason="BILLING_BALANCE_NOT_ENOUGH")
    return NovitaError(403, reason="NOT_ENOUGH_BALANCE")

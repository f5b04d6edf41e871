"""An httpx transport that retries idempotent requests through faults that may pass.

Only GET and HEAD are retried, and only on 429, 503, 504 or a transport error, with jittered
exponential backoff that honours `Retry-After`, within a deadline. Anything else passes through
untouched: a POST that starts a paid task is never re-sent here.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD"})


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The delay a `Retry-After` header asks for, in seconds, if it has a usable one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff for the given 1-based attempt."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


class RetryingTransport(httpx.BaseTransport):
    def __init__(
        self,
        wrapped: httpx.BaseTransport,
        *,
        max_attempts: int = 4,
        base_delay: float = 0.25,
        max_delay: float = 4.0,
        deadline: float = 12.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._wrapped = wrapped
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._deadline = deadline
        self._sleep = sleep

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method not in IDEMPOTENT_METHODS:
            return self._wrapped.handle_request(request)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._wrapped.handle_request(request)
            except httpx.TransportError:
                delay = backoff_delay(attempt, self._base_delay, self._max_delay)
                if not self._may_retry(attempt, started, delay):
                    raise
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                hinted = retry_after_seconds(response)
                delay = (
                    hinted
                    if hinted is not None
                    else backoff_delay(attempt, self._base_delay, self._max_delay)
                )
                if not self._may_retry(attempt, started, delay):
                    return response
                response.close()
            self._sleep(delay)

    def _may_retry(self, attempt: int, started: float, delay: float) -> bool:
        return attempt < self._max_attempts and time.monotonic() - started + delay <= self._deadline

    def close(self) -> None:
        self._wrapped.close()

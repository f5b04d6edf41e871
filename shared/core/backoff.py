"""When to try a request again: the statuses that ask for it, the delay a `Retry-After` asks for,
and full-jitter exponential backoff. A POST that starts a paid task is never tried again on these
grounds alone (`shared/novita/client.py` says when it may be)."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

RETRY_STATUSES = frozenset({429, 503, 504})


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

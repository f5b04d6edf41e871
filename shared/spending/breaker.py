"""The balance breaker, one document shared by every instance. When Novita says the account's
balance is not enough, it opens for `BALANCE_BREAKER_SECONDS`: creates are refused at once and steps
wait (their deliveries come back with backoff) instead of asking Novita again. Once it has run out,
the first request to come claims the probe and asks Novita; everyone else stays refused until the
probe says the balance is back (the breaker closes) or not (it opens again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.google.api import AlreadyExists, PreconditionFailed, Unavailable
from shared.google.firestore import Firestore
from shared.novita.client import NovitaError
from shared.sketch.model import utcnow
from shared.sketch.store import StoreUnavailable

log = logging.getLogger(__name__)

BREAKER_ID = "novita_balance"
# How long one request may hold the probe before another may take it.
PROBE_SECONDS = 60.0


class BalanceExhausted(Exception):
    """Novita's balance is not enough: nothing paid is asked for until `until`."""

    def __init__(self, until: datetime, reason: str) -> None:
        super().__init__(
            f"Novita's balance is not enough ({reason}); new work waits until {until.isoformat()}"
        )
        self.until = until
        self.reason = reason


class BalanceBreaker:
    def __init__(
        self, db: Firestore, collection: str, seconds: float, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._collection = f"{collection}_breakers"
        self._seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        # An open breaker seen by this instance need not be read again before it runs out.
        self._open_until: datetime | None = None
        self._reason = ""
        # Whether a request of this instance holds the probe.
        self._probing = False

    def check(self) -> None:
        """Raise BalanceExhausted while the breaker is open; claim the probe once it has run out."""
        now = self._clock()
        with self._lock:
            if self._open_until is not None and now < self._open_until:
                raise BalanceExhausted(self._open_until, self._reason)
        try:
            document = self._db.get(self._collection, BREAKER_ID)
        except Unavailable as exc:
            raise StoreUnavailable(
                f"Firestore did not say whether Novita's balance is known short: {exc}"
            ) from exc
        if document is None or document.data.get("open_until") is None:
            return
        open_until: datetime = document.data["open_until"]
        reason = str(document.data.get("reason", ""))
        if now < open_until:
            with self._lock:
                self._open_until, self._reason = open_until, reason
            raise BalanceExhausted(open_until, reason)
        probe_until = document.data.get("probe_until")
        if probe_until is not None and now < probe_until:
            raise BalanceExhausted(probe_until, reason)
        try:
            self._db.update(
                self._collection,
                BREAKER_ID,
                {"probe_until": now + timedelta(seconds=PROBE_SECONDS)},
                if_update_time=document.update_time,
            )
        except PreconditionFailed:
            raise BalanceExhausted(now + timedelta(seconds=PROBE_SECONDS), reason) from None
        except Unavailable as exc:
            raise StoreUnavailable(f"Firestore did not take the balance probe: {exc}") from exc
        with self._lock:
            self._probing = True
        log.warning("the balance breaker ran out; this request asks Novita again")

    def open(self, error: NovitaError) -> None:
        """Novita said the balance is not enough: refuse paid work everywhere for a while."""
        now = self._clock()
        until = now + timedelta(seconds=self._seconds)
        reason = error.describe()[:300]
        with self._lock:
            self._open_until, self._reason, self._probing = until, reason, False
        try:
            document = self._db.get(self._collection, BREAKER_ID)
            data = {"open_until": until, "reason": reason, "opened_at": now, "probe_until": None}
            if document is None:
                self._db.create(self._collection, BREAKER_ID, data)
            elif document.data.get("open_until") is not None and now < document.data["open_until"]:
                return  # another request opened it already
            else:
                self._db.update(self._collection, BREAKER_ID, data, if_update_time=document.update_time)
        except (AlreadyExists, PreconditionFailed):
            return  # another request opened it a moment ago
        except Unavailable:
            log.error("Novita's balance is not enough; the breaker could not be stored: %s", reason)
            return
        # One ERROR per opening, for an alert.
        log.error(
            "Novita's balance is not enough: new sketches are refused for %.0f s",
            self._seconds,
            extra={"reason": reason, "open_until": until.isoformat()},
        )

    def succeeded(self) -> None:
        """Novita took a paid request: if it was this instance's probe, the breaker closes."""
        with self._lock:
            probing, self._probing = self._probing, False
        if not probing:
            return
        try:
            document = self._db.get(self._collection, BREAKER_ID)
            if document is not None and document.data.get("open_until") is not None:
                self._db.update(
                    self._collection,
                    BREAKER_ID,
                    {"open_until": None, "probe_until": None},
                    if_update_time=document.update_time,
                )
        except (PreconditionFailed, Unavailable):
            return  # reopened meanwhile, or Firestore is away: the probe's lease runs out instead
        log.warning("Novita took a paid request again: the balance breaker is closed")

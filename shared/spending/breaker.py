"""The balance breaker, one Firestore document shared by every instance.

When Novita says the account's balance is not enough, the breaker opens for
`BALANCE_BREAKER_SECONDS`: creates are refused at once and steps wait (answered 5xx, Pub/Sub brings
them back) instead of asking Novita again. A sketch already accepted never fails for it.

Once that time has run out, the first caller about to ask Novita for something paid takes the probe
(a conditional write) and asks; others that would ask Novita wait while the probe is out, and a
create that asks Novita nothing (its still is a queued Seedream step) is accepted at once. The
holder settles the probe on Novita's answer: a success closes the breaker, a balance refusal opens it
again, and any other answer gives the probe back for the next caller. A probe lasts `BREAKER_PROBE`
seconds: a holder that died, or whose request is slow, then lets the next caller ask too.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.core.timings import BREAKER_PROBE
from shared.google.api import AlreadyExists, PreconditionFailed, Unavailable
from shared.google.firestore import Document, Firestore
from shared.novita.errors import NovitaError
from shared.sketch.model import utcnow
from shared.sketch.store import StoreUnavailable

log = logging.getLogger(__name__)

BREAKER_ID = "novita_balance"


class BalanceExhausted(Exception):
    """Novita's balance is not enough: nothing paid is asked for until `until`."""

    def __init__(self, until: datetime, reason: str) -> None:
        super().__init__(
            f"Novita's balance is not enough ({reason}); new work waits until {until.isoformat()}"
        )
        self.until = until
        self.reason = reason


@dataclass
class Probe:
    """This caller holds the probe: what it hears from Novita decides the breaker (`settle`); a
    holder that ends up asking Novita nothing gives it back (`release`)."""

    owner: str
    until: datetime
    settled: bool = False


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

    def check(self, *, probe: bool = True) -> Probe | None:
        """Raise BalanceExhausted while the breaker is open. Once it has run out, a caller about to
        ask Novita (`probe`) takes the probe, or waits while another holds it; a caller that asks
        Novita nothing passes."""
        now = self._clock()
        with self._lock:
            if self._open_until is not None and now < self._open_until:
                raise BalanceExhausted(self._open_until, self._reason)
        document = self._read()
        if document is None or document.data.get("open_until") is None:
            return None
        open_until: datetime = document.data["open_until"]
        reason = str(document.data.get("reason", ""))
        if now < open_until:
            with self._lock:
                self._open_until, self._reason = open_until, reason
            raise BalanceExhausted(open_until, reason)
        if not probe:
            return None
        probe_until = document.data.get("probe_until")
        if probe_until is not None and now < probe_until:
            raise BalanceExhausted(probe_until, reason)
        until = now + timedelta(seconds=BREAKER_PROBE)
        owner = uuid.uuid4().hex
        try:
            self._db.update(
                self._collection,
                BREAKER_ID,
                {"probe_until": until, "probe_owner": owner},
                if_update_time=document.update_time,
            )
        except PreconditionFailed:
            raise BalanceExhausted(until, reason) from None  # another caller took it first
        except Unavailable as exc:
            raise StoreUnavailable(f"Firestore did not take the balance probe: {exc}") from exc
        log.warning("the balance breaker ran out; this request asks Novita whether the balance is back")
        return Probe(owner, until)

    def settle(self, probe: Probe | None, error: NovitaError | None) -> None:
        """What Novita answered a paid request: a balance refusal opens the breaker; for the probe's
        holder, a success closes it and any other answer gives the probe back."""
        if error is not None and error.is_balance:
            if probe is not None:
                probe.settled = True
            self.open(error)
            return
        if error is None:
            self._end_probe(probe, {"open_until": None, "probe_until": None, "probe_owner": None})
        else:
            self._end_probe(probe, {"probe_until": None, "probe_owner": None})

    def release(self, probe: Probe | None) -> None:
        """Give back a probe whose holder asked Novita nothing after all (a replayed key, a cap)."""
        self._end_probe(probe, {"probe_until": None, "probe_owner": None})

    def _end_probe(self, probe: Probe | None, changes: dict[str, object]) -> None:
        if probe is None or probe.settled:
            return
        probe.settled = True
        try:
            document = self._read()
            if document is not None and document.data.get("probe_owner") == probe.owner:
                self._db.update(self._collection, BREAKER_ID, changes, if_update_time=document.update_time)
        except (PreconditionFailed, StoreUnavailable, Unavailable):
            return  # reopened meanwhile, or Firestore is away: the probe runs out instead
        if "open_until" in changes:
            log.warning("Novita took a paid request again: the balance breaker is closed")

    def open(self, error: NovitaError) -> None:
        """Novita said the balance is not enough: refuse paid work everywhere for a while."""
        now = self._clock()
        until = now + timedelta(seconds=self._seconds)
        reason = error.describe()[:300]
        with self._lock:
            self._open_until, self._reason = until, reason
        try:
            document = self._read()
            data = {
                "open_until": until,
                "reason": reason,
                "opened_at": now,
                "probe_until": None,
                "probe_owner": None,
            }
            if document is None:
                self._db.create(self._collection, BREAKER_ID, data)
            elif document.data.get("open_until") is not None and now < document.data["open_until"]:
                return  # another request opened it already
            else:
                self._db.update(self._collection, BREAKER_ID, data, if_update_time=document.update_time)
        except (AlreadyExists, PreconditionFailed):
            return  # another request opened it a moment ago
        except (StoreUnavailable, Unavailable):
            log.error("Novita's balance is not enough; the breaker could not be stored: %s", reason)
            return
        # One ERROR per opening, for an alert.
        log.error(
            "Novita's balance is not enough: new sketches are refused for %.0f s",
            self._seconds,
            extra={"reason": reason, "open_until": until.isoformat()},
        )

    def _read(self) -> Document | None:
        try:
            return self._db.get(self._collection, BREAKER_ID)
        except Unavailable as exc:
            raise StoreUnavailable(
                f"Firestore did not say whether Novita's balance is known short: {exc}"
            ) from exc

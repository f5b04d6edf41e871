"""Each user's daily cap: one counter document per user and UTC day, added to atomically
(Firestore's increment transform gives back the sum). The N-th sketch of the day sees N, so however
many requests race, at most the cap get a number within it. A request that gets a number and then
makes no sketch gives it back.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from shared.google.api import Unavailable
from shared.google.firestore import Firestore
from shared.sketch.store import StoreUnavailable

log = logging.getLogger(__name__)

# Counters outlive their day by this much before Firestore's TTL policy removes them.
COUNTER_KEEP = timedelta(days=2)


class DailyLimitReached(Exception):
    def __init__(self, limit: int, resets_at: datetime) -> None:
        super().__init__(f"at most {limit} sketches may be made per UTC day")
        self.resets_at = resets_at


def _user_key(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:32]


def next_utc_day(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=now.tzinfo) + timedelta(days=1)


class DailyCap:
    def __init__(self, db: Firestore, collection: str, limit: int) -> None:
        self._db = db
        self._collection = f"{collection}_daily"
        self._limit = limit

    def _counter(self, user_id: str, now: datetime) -> str:
        return f"{_user_key(user_id)}-{now:%Y%m%d}"

    def take(self, user_id: str, now: datetime) -> Callable[[], None]:
        """Count one sketch of the user's day; a function that gives it back. DailyLimitReached
        once the cap is reached."""
        counter = self._counter(user_id, now)
        data = {"user_id": user_id, "day": f"{now:%Y-%m-%d}", "expires_at": next_utc_day(now) + COUNTER_KEEP}
        try:
            count = self._db.increment(self._collection, counter, "count", 1, data)
        except Unavailable as exc:
            raise StoreUnavailable(f"Firestore did not count the sketch: {exc}") from exc

        def give_back() -> None:
            try:
                self._db.increment(self._collection, counter, "count", -1, data)
            except Unavailable:
                log.warning("a sketch counted for the day could not be given back")

        if count > self._limit:
            give_back()
            raise DailyLimitReached(self._limit, next_utc_day(now))
        return give_back

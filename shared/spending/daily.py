"""Daily caps on new sketches: per signed-in user (`MAX_SKETCHES_PER_DAY`), per guest
(`MAX_GUEST_SKETCHES_PER_DAY`, anonymous sign-ins), and for the whole project
(`MAX_SKETCHES_PER_DAY_TOTAL`, in every auth mode).

Each cap is one counter document per UTC day. Its increment is a write of the same atomic commit
that creates the sketch (Firestore's increment transform gives the sums back), so the N-th sketch
of the day sees N however many creates race, and a sketch and its count are never one without the
other. A commit whose sum is past a cap is undone at once, before Novita is asked anything: no paid
request is ever made past a cap.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from shared.google.firestore import Write

if TYPE_CHECKING:
    from shared.core.config import Settings

log = logging.getLogger(__name__)

# Counters outlive their day by this much before Firestore's TTL policy removes them.
COUNTER_KEEP = timedelta(days=2)
Cap = Literal["user", "guest", "project"]


class DailyLimitReached(Exception):
    def __init__(self, cap: Cap, limit: int, resets_at: datetime) -> None:
        whose = {"user": "per user", "guest": "per guest", "project": "for the whole service"}[cap]
        super().__init__(f"at most {limit} sketches may be made {whose} per UTC day")
        self.cap = cap
        self.limit = limit
        self.resets_at = resets_at


@dataclass(frozen=True)
class Count:
    """One cap's count of a new sketch: the increment to commit with it, and the cap it must keep."""

    cap: Cap
    limit: int
    collection: str
    counter: str
    data: dict[str, object]

    def write(self, by: int = 1) -> Write:
        return Write(self.collection, self.counter, self.data, None, {"count": by})


def next_utc_day(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=now.tzinfo) + timedelta(days=1)


class DailyCaps:
    def __init__(self, collection: str, *, per_user: int, per_guest: int, total: int) -> None:
        self._collection = f"{collection}_daily"
        self._limits: dict[Cap, int] = {"user": per_user, "guest": per_guest, "project": total}
        self._lock = threading.Lock()
        # The day this instance last logged the project's cap reached. Refusals themselves always
        # ask Firestore: an operator who lifts the cap or clears today's counter is obeyed at once.
        self._warned_day: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> DailyCaps:
        """The caps the configuration sets; one per instance, so that it warns once a day."""
        return cls(
            settings.sketches_collection,
            per_user=settings.max_sketches_per_day,
            per_guest=settings.max_guest_sketches_per_day,
            total=settings.max_sketches_per_day_total,
        )

    def counts(self, user_id: str | None, guest: bool, now: datetime) -> list[Count]:
        """The counts a new sketch of this caller takes today."""
        day = f"{now:%Y%m%d}"
        keep = {"day": f"{now:%Y-%m-%d}", "expires_at": next_utc_day(now) + COUNTER_KEEP}
        counts = [Count("project", self._limits["project"], self._collection, f"project-{day}", keep)]
        if user_id is not None:
            cap: Cap = "guest" if guest else "user"
            owner = hashlib.sha256(user_id.encode()).hexdigest()[:32]
            data = {**keep, "user_id": user_id}
            counts.append(Count(cap, self._limits[cap], self._collection, f"{owner}-{day}", data))
        return counts

    def judge(self, counts: list[Count], sums: list[int], now: datetime) -> None:
        """DailyLimitReached if a count's sum (as its commit gave it back) is past its cap."""
        for count, total in zip(counts, sums, strict=True):
            if total > count.limit:
                if count.cap == "project":
                    with self._lock:
                        first = self._warned_day != f"{now:%Y%m%d}"
                        self._warned_day = f"{now:%Y%m%d}"
                    if first:  # once per instance and day: the line an operator's alert counts
                        log.warning(
                            "the project's daily cap of %d sketches is reached: new sketches are "
                            "refused until %s",
                            count.limit,
                            next_utc_day(now).isoformat(),
                        )
                raise DailyLimitReached(count.cap, count.limit, next_utc_day(now))

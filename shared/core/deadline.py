"""One deadline per piece of work: every network phase under it waits at most what is left of it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class DeadlinePassed(Exception):
    """The work ran out of time before it was done."""


@dataclass(frozen=True)
class Deadline:
    end: float  # time.monotonic()

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def check(self, what: str) -> None:
        if time.monotonic() >= self.end:
            raise DeadlinePassed(f"{what}: out of time")

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left if that is less (at least a moment, so that a call made at the
        very end fails as a timeout rather than as a configuration error)."""
        return min(seconds, max(0.001, self.remaining()))

    def timeout(self, connect: float, read: float, write: float | None = None) -> httpx.Timeout:
        """httpx's per-phase timeouts, none longer than what is left."""
        import httpx  # only the clients of Novita and the media hosts take these; they load httpx

        return httpx.Timeout(
            connect=self.cap(connect),
            read=self.cap(read),
            write=self.cap(read if write is None else write),
            pool=self.cap(connect),
        )

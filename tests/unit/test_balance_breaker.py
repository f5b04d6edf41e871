"""The balance breaker (shared/spending/breaker.py): open for its time, then one probe at a time,
closed by any success, given back by any other answer, and never held by whoever asks nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from shared.novita.errors import NovitaRejected, NovitaUnavailable
from shared.spending.breaker import BalanceBreaker, BalanceExhausted
from tests.unit.fakes import MemoryFirestore

BALANCE = NovitaRejected("no money", status_code=403, reason="NOT_ENOUGH_BALANCE")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 12, 0, tzinfo=datetime.now().astimezone().tzinfo)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def breakers(count: int = 2) -> tuple[Clock, list[BalanceBreaker]]:
    """`count` instances' breakers over one project's Firestore, on one clock."""
    db, clock = MemoryFirestore(), Clock()
    return clock, [BalanceBreaker(db, "sketches", 3.0, clock=clock) for _ in range(count)]


def test_a_balance_refusal_stops_every_instance_until_its_time_has_run_out() -> None:
    clock, (one, two) = breakers()
    assert one.check() is None  # closed: nobody probes

    one.settle(None, BALANCE)

    for breaker in (one, two):
        with pytest.raises(BalanceExhausted):
            breaker.check()
        with pytest.raises(BalanceExhausted):
            breaker.check(probe=False)
    clock.advance(3.1)
    assert two.check(probe=False) is None  # a create that asks Novita nothing is let through


def test_one_probe_at_a_time_and_a_success_closes_it_for_everyone() -> None:
    clock, (one, two) = breakers()
    one.settle(None, BALANCE)
    clock.advance(3.1)

    probe = one.check()
    assert probe is not None
    with pytest.raises(BalanceExhausted):
        two.check()  # the probe is out
    one.settle(probe, None)

    assert two.check() is None and one.check() is None


def test_any_other_answer_gives_the_probe_back_for_the_next_caller() -> None:
    clock, (one, two) = breakers()
    one.settle(None, BALANCE)
    clock.advance(3.1)

    probe = one.check()
    one.settle(probe, NovitaUnavailable("down", status_code=503))

    assert two.check() is not None  # the next caller probes at once


def test_a_probe_its_holder_did_not_use_is_given_back() -> None:
    clock, (one, two) = breakers()
    one.settle(None, BALANCE)
    clock.advance(3.1)

    one.release(one.check())

    assert two.check() is not None


def test_a_balance_refusal_to_the_probe_opens_it_again_for_its_whole_time() -> None:
    clock, (one, two) = breakers()
    one.settle(None, BALANCE)
    clock.advance(3.1)

    one.settle(one.check(), BALANCE)
    clock.advance(2.0)

    with pytest.raises(BalanceExhausted):
        two.check()


def test_a_dead_or_slow_probes_holder_holds_paid_work_off_for_seconds_not_minutes() -> None:
    """A probe outlives its holder by BREAKER_PROBE at most (10 s), however long the holder's own
    request may take: a refusal costs nothing, so the next caller may as well ask too."""
    clock, (one, two, three) = breakers(3)
    one.settle(None, BALANCE)
    clock.advance(3.1)
    slow = one.check()  # its holder dies, or waits a minute on Seedream
    assert slow is not None

    with pytest.raises(BalanceExhausted) as held:
        two.check()
    assert held.value.until - clock.now <= timedelta(seconds=10)
    clock.advance(10.1)
    second = two.check()
    assert second is not None
    two.settle(second, None)  # the balance is back
    one.settle(slow, None)  # the first holder's late answer changes nothing
    assert three.check() is None

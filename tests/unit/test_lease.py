"""The lease on a sketch's slow work (shared/pipeline/lease.py): one holder at a time, renewed while
it lives, short once it is gone, every write conditional on still holding it."""

from __future__ import annotations

import threading
import time

import pytest

from shared.pipeline import lease as leases
from shared.pipeline.work import Busy, Waiting
from shared.sketch.model import Sketch, Status, utcnow
from tests.unit.world import World, ago, later


def chainable(s: Sketch) -> bool:
    return s.status is Status.IMAGE_COMPLETE


def test_one_holder_at_a_time_and_the_lease_is_given_back_on_a_fault() -> None:
    world = World(STEP_LEASE_SECONDS="30")
    sketch = world.sketch(Status.IMAGE_COMPLETE)

    with pytest.raises(RuntimeError), leases.take(world.tools, sketch, chainable) as held:
        assert held is not None and held.sketch.step_lease_owner == held.owner
        with pytest.raises(Busy), leases.take(world.tools, world.stored(sketch.id), chainable):
            pass
        raise RuntimeError("a fault nobody foresaw")

    assert world.stored(sketch.id).step_lease_owner is None  # given back: the next delivery takes it up


def test_a_live_holder_renews_its_lease_and_a_dead_one_loses_it_within_seconds() -> None:
    world = World(STEP_LEASE_SECONDS="1.5")
    sketch = world.sketch(Status.IMAGE_COMPLETE)

    with leases.take(world.tools, sketch, chainable) as held:
        assert held is not None
        first_until = world.stored(sketch.id).step_lease_until
        time.sleep(2.0)  # longer than the lease: it lives on because it is renewed
        renewed = world.stored(sketch.id)
        assert renewed.step_lease_owner == held.owner and renewed.step_lease_until > first_until  # type: ignore[operator]
        assert renewed.lease_is_live(utcnow())

    # Once the holder is gone, nobody renews it: a dead holder's lease ends in STEP_LEASE_SECONDS.
    abandoned = world.sketch(Status.IMAGE_COMPLETE, step_lease_owner="dead", step_lease_until=later(1.5))
    with pytest.raises(Busy), leases.take(world.tools, abandoned, chainable):
        pass
    time.sleep(1.6)
    with leases.take(world.tools, world.stored(abandoned.id), chainable) as taken:
        assert taken is not None


def test_writes_of_a_holder_that_lost_its_lease_are_refused() -> None:
    world = World()
    sketch = world.sketch(Status.IMAGE_COMPLETE)
    with leases.take(world.tools, sketch, chainable) as held:
        assert held is not None
        world.store.mutate(sketch.id, lambda s: {"step_lease_owner": "thief"})
        assert held.finish({"progress": 33}) is None
    assert world.stored(sketch.id).progress == 0


def test_no_lease_is_taken_while_the_sketch_holds_paid_requests_off() -> None:
    world = World()
    sketch = world.sketch(Status.IMAGE_COMPLETE, retry_not_before=later(5))
    with pytest.raises(Waiting), leases.take(world.tools, sketch, chainable):
        pass
    past = world.sketch(Status.IMAGE_COMPLETE, retry_not_before=ago(1))
    with leases.take(world.tools, past, chainable) as held:
        assert held is not None


def test_the_renewals_stop_when_the_holder_answers() -> None:
    world = World(STEP_LEASE_SECONDS="1")
    sketch = world.sketch(Status.IMAGE_COMPLETE)
    with leases.take(world.tools, sketch, chainable):
        pass
    before = {t.name for t in threading.enumerate()}
    calls = world.db.calls
    time.sleep(0.5)
    assert world.db.calls == calls and not any(name.startswith("lease-") for name in before)

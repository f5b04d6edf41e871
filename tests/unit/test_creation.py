"""Making a sketch (shared/pipeline/creation.py): the caps committed with it, its text-to-image
request recorded before it is sent and under the create's lease, and what each answer leaves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.core.timings import CREATE_LEASE
from shared.edge.callers import NOBODY, Caller
from shared.novita.errors import NovitaOutcomeUnknown, NovitaRejected
from shared.pipeline.creation import StartFailed
from shared.sketch.model import Status
from shared.sketch.request import CreateSketchRequest
from shared.spending.breaker import BalanceExhausted
from shared.spending.daily import DailyLimitReached
from shared.spending.idempotency import KeyReused, SketchGone
from tests.unit.world import World

BODY = {"prompt": "a walrus"}
REQUEST = CreateSketchRequest.model_validate(BODY)


def create(world: World, caller: Caller = NOBODY, key: str | None = None, body: dict[str, Any] = BODY) -> Any:
    return world.creator.create(CreateSketchRequest.model_validate(body), body, caller, key)


def test_the_sketch_is_written_held_by_the_create_and_marked_sent_before_novita_is_asked() -> None:
    world = World()

    def novita_answers() -> str:
        sending = world.store.newest(None, 1, None)[0]
        assert sending.status is Status.IMAGE_PENDING and sending.submission_unknown == "image"
        assert sending.step_lease_owner == sending.submission_owner is not None
        assert sending.step_lease_until is not None
        assert sending.step_lease_until - sending.created_at <= timedelta(seconds=CREATE_LEASE + 1)
        return "img-1"

    world.novita.script["txt2img"] = [novita_answers]
    created = create(world)

    stored = world.stored(created.sketch.id)
    assert created.answer.status == 202 and created.sketch.image_task_id == "img-1"
    assert stored.image_task_id == "img-1" and stored.submission_unknown is None
    assert stored.step_lease_owner is None


def test_a_lost_answer_is_202_with_no_task_and_the_record_kept_for_its_webhook() -> None:
    world = World()
    world.novita.script["txt2img"] = [NovitaOutcomeUnknown("reset after sending")]

    created = create(world)

    stored = world.stored(created.sketch.id)
    assert created.answer.status == 202 and created.sketch.image_task_id is None
    assert stored.submission_unknown == "image" and stored.submission_webhook is True
    assert stored.step_lease_owner is None
    assert stored.recovery_due_at is not None and stored.recovery_due_at > stored.created_at + timedelta(
        seconds=590
    )


def test_a_refusal_of_the_form_queues_seedream_and_is_remembered() -> None:
    world = World()
    world.novita.script["txt2img"] = [
        NovitaRejected("not a checkpoint", status_code=400, reason="INVALID_REQUEST_BODY")
    ]

    created = create(world)

    stored = world.stored(created.sketch.id)
    assert (
        stored.image_form == "sync" and stored.submission_unknown is None and stored.step_lease_owner is None
    )
    assert world.published_kinds() == ["seedream"] and world.novita.form("text_to_image") == "reference"
    assert create(world).sketch.image_form == "sync" and world.novita.count("txt2img") == 1


def test_a_refusal_fails_the_sketch_with_the_reason() -> None:
    world = World()
    world.novita.script["txt2img"] = [NovitaRejected("bad prompt", status_code=400, reason="ILLEGAL_PROMPT")]

    with pytest.raises(StartFailed) as failure:
        create(world)
    assert failure.value.sketch.status is Status.FAILED and "ILLEGAL_PROMPT" in (
        failure.value.sketch.error_message or ""
    )


def test_the_projects_daily_cap_holds_in_every_auth_mode_and_leaves_nothing_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(MAX_SKETCHES_PER_DAY_TOTAL="2")
    world.novita.script["txt2img"] = ["img-1", "img-2"]
    create(world)
    create(world, Caller("someone"))

    for caller in (Caller("another"), Caller("a third")):
        with pytest.raises(DailyLimitReached) as refused:
            create(world, caller)
        assert refused.value.cap == "project"
    assert len(world.store.newest(None, 10, None)) == 2 and world.novita.count("txt2img") == 2
    # One WARNING per instance and day, for an operator's alert; not one per refused request.
    reached = [r for r in caplog.records if "daily cap of 2 sketches is reached" in r.getMessage()]
    assert [r.levelname for r in reached] == ["WARNING"]


def test_clearing_todays_project_count_lets_sketches_in_again_at_once() -> None:
    """Refusals past the project's cap ask Firestore each time: an operator who clears today's
    counter (or lifts the cap) is obeyed without waiting for new instances."""
    world = World(MAX_SKETCHES_PER_DAY_TOTAL="1")
    world.novita.script["txt2img"] = ["img-1", "img-2"]
    create(world)
    with pytest.raises(DailyLimitReached):
        create(world, Caller("another"))

    (counter,) = [
        key for key in world.db._docs if key[0].endswith("_daily") and key[1].startswith("project-")
    ]
    del world.db._docs[counter]

    assert create(world, Caller("another")).sketch.status is Status.IMAGE_PENDING
    assert world.novita.count("txt2img") == 2


def test_guests_have_their_own_lower_cap() -> None:
    world = World(MAX_GUEST_SKETCHES_PER_DAY="1", MAX_SKETCHES_PER_DAY="5")
    world.novita.script["txt2img"] = ["a", "b", "c"]
    create(world, Caller("guest", guest=True))

    with pytest.raises(DailyLimitReached) as refused:
        create(world, Caller("guest", guest=True))
    assert refused.value.cap == "guest"
    create(world, Caller("member"))
    create(world, Caller("member"))


def test_a_key_repeated_after_its_sketch_was_deleted_is_told_so_and_makes_nothing() -> None:
    world = World()
    world.novita.script["txt2img"] = ["img-1"]
    first = create(world, key="k-1")
    world.store.remove(first.sketch.id)

    with pytest.raises(SketchGone):
        create(world, key="k-1")
    assert world.store.newest(None, 10, None) == [] and world.novita.count("txt2img") == 1


def test_a_repeated_key_gets_the_same_sketch_and_novita_is_asked_once() -> None:
    world = World()
    world.novita.script["txt2img"] = ["img-1"]

    first = create(world, key="k-1")
    again = create(world, key="k-1")

    assert again.replayed and again.sketch.id == first.sketch.id and world.novita.count("txt2img") == 1
    with pytest.raises(KeyReused):
        create(world, key="k-1", body={"prompt": "another walrus"})


def test_while_the_balance_breaker_is_open_nothing_is_written_or_asked() -> None:
    world = World()
    world.breaker.settle(None, NovitaRejected("no money", status_code=403, reason="NOT_ENOUGH_BALANCE"))

    with pytest.raises(BalanceExhausted):
        create(world)
    assert world.store.newest(None, 10, None) == [] and world.novita.calls == []

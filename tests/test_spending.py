"""Nobody pays twice, nobody overspends, over real HTTP: Idempotency-Key, the daily cap, the balance
breaker, and the user's gallery. The races are run for real: concurrent requests, counted."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import Stack, record_figure
from firebase_tokens import CertServer, bearer, google_certs
from google.cloud.firestore_v1.base_query import FieldFilter

PROMPT = {"prompt": "a heron auditing a pond"}


def post(
    stack: Stack, body: Any, key: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return stack.http.post(stack.create.url, json=body, headers={**extra, **(headers or {})})


def race(count: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`count` calls released together."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


# ----------------------------------------------------------------------------- Idempotency-Key


def test_a_repeated_key_with_the_same_body_answers_the_same_sketch_and_pays_nothing(stack: Stack) -> None:
    key = str(uuid.uuid4())

    first = post(stack, PROMPT, key)
    again = post(stack, {"prompt": "a heron auditing a pond"}, key)  # the same JSON, written anew

    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert stack.simulator.stats()["requests"]["txt2img"] == 1 and stack.stored_count() == 1


def test_a_key_is_kept_at_least_a_day_and_then_removed_by_its_ttl_field(stack: Stack) -> None:
    before = datetime.now(UTC)
    post(stack, PROMPT, "kept-key")

    records = list(stack.db.collection(f"{stack.collection}_idempotency").stream())
    assert len(records) == 1
    expires = records[0].to_dict()["expires_at"]
    assert expires >= before + timedelta(hours=24)


def test_the_same_key_with_another_body_is_422_and_changes_nothing(stack: Stack) -> None:
    first = post(stack, PROMPT, "one-key")

    other = post(stack, {"prompt": "a different heron"}, "one-key")

    assert first.status_code == 202
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert stack.stored_count() == 1 and stack.simulator.stats()["requests"]["txt2img"] == 1


def test_a_repeat_while_the_first_is_still_being_handled_is_409(stack: Stack) -> None:
    # Novita asks the first request to wait (429, Retry-After: 1), so it is still at work.
    stack.simulator.configure(http_errors={"txt2img": [429]})
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, stack, PROMPT, "slow-key")
        time.sleep(0.5)
        repeat = post(stack, PROMPT, "slow-key")
        first_answer = first.result()

    assert repeat.status_code == 409 and repeat.json()["error"]["code"] == "idempotency_key_in_use"
    assert repeat.headers["Retry-After"] == "1"
    assert first_answer.status_code == 202
    assert post(stack, PROMPT, "slow-key").headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "naïve", "tab\there"], ids=["empty", "too-long", "non-ascii", "control"]
)
def test_a_malformed_key_is_400_and_changes_nothing(stack: Stack, key: str) -> None:
    answer = stack.http.post(stack.create.url, json=PROMPT, headers={"Idempotency-Key": key.encode()})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_header"
    assert stack.stored_count() == 0


def test_twenty_concurrent_posts_with_one_key_make_one_sketch(stack: Stack) -> None:
    answers = race(20, lambda _: post(stack, PROMPT, "raced-key"))

    codes = Counter(a.status_code for a in answers)
    made = {a.json()["id"] for a in answers if a.status_code == 202}
    replayed = sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers)
    record_figure("Idempotency-Key race", "20 concurrent POSTs, one key", dict(sorted(codes.items())))
    record_figure(
        "Idempotency-Key race",
        "sketches / text-to-image tasks / replayed / 409",
        f"{stack.stored_count()} / {stack.tasks_created('txt2img')} / {replayed} / {codes[409]}",
    )
    assert set(codes) <= {202, 409}
    assert len(made) == 1 and stack.stored_count() == 1
    assert stack.tasks_created("txt2img") == 1 and stack.simulator.stats()["requests"]["txt2img"] == 1
    assert codes[202] == 1 + replayed


# ---------------------------------------------------------------------------- signed-in users


@pytest.fixture(scope="module")
def certs() -> Iterator[CertServer]:
    with google_certs() as server:
        yield server


@pytest.fixture(scope="module")
def users_stack(stack_factory: Callable[..., Stack], certs: CertServer) -> Stack:
    return stack_factory(
        "spending-users",
        AUTH_MODE="firebase",
        FIREBASE_CERTS_URL=certs.url,
        MAX_SKETCHES_PER_DAY="5",
        MAX_SKETCHES_IN_PROGRESS="20",
    )


@pytest.fixture
def users(users_stack: Stack) -> Iterator[Stack]:
    yield users_stack.clean()
    users_stack.simulator.wait_idle(10)


def test_keys_are_scoped_to_their_caller(users: Stack) -> None:
    alice = post(users, PROMPT, "shared-key", bearer("alice"))
    bob = post(users, PROMPT, "shared-key", bearer("bob"))

    assert alice.status_code == bob.status_code == 202
    assert alice.json()["id"] != bob.json()["id"] and "Idempotent-Replayed" not in bob.headers


def test_twenty_concurrent_posts_from_one_user_with_a_daily_cap_of_5_make_5(users: Stack) -> None:
    headers = bearer("capped-user")
    answers = race(20, lambda i: post(users, {"prompt": f"capped sketch {i}"}, headers=headers))

    codes = Counter(a.status_code for a in answers)
    refused = [a for a in answers if a.status_code == 429]
    record_figure("daily cap race", "20 concurrent POSTs, one user, cap 5", dict(sorted(codes.items())))
    record_figure("daily cap race", "sketches made", users.stored_count())
    assert codes == {202: 5, 429: 15}
    assert users.stored_count() == 5 and users.tasks_created("txt2img") == 5
    assert {a.json()["error"]["code"] for a in refused} == {"daily_limit"}
    now = datetime.now(UTC)
    to_midnight = (
        datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1) - now
    ).total_seconds()
    assert all(abs(int(a.headers["Retry-After"]) - to_midnight) <= 5 for a in refused)
    # Another user has a day of their own.
    assert post(users, PROMPT, headers=bearer("another-user")).status_code == 202


def test_a_sketch_refused_for_the_day_writes_nothing_and_replays_nothing(users: Stack) -> None:
    headers = bearer("full-day")
    for i in range(5):
        assert post(users, {"prompt": f"day {i}"}, headers=headers).status_code == 202

    refused = post(users, PROMPT, "late-key", headers)
    records = (
        users.db.collection(f"{users.collection}_idempotency")
        .where(filter=FieldFilter("scope", "==", "full-day"))
        .get()
    )

    assert refused.status_code == 429 and users.stored_count() == 5 and records == []
    assert post(users, PROMPT, "late-key", headers).status_code == 429  # refused again, not replayed


# ------------------------------------------------------------------------------------ the gallery


def test_the_gallery_lists_only_the_callers_sketches_newest_first_page_by_page(users: Stack) -> None:
    made = [post(users, {"prompt": f"gallery {i}"}, headers=bearer("painter")).json()["id"] for i in range(5)]
    post(users, PROMPT, headers=bearer("someone-else"))

    pages: list[list[str]] = []
    token = None
    while True:
        params = {"limit": "2", **({"page_token": token} if token else {})}
        answer = users.http.get(users.create.url, params=params, headers=bearer("painter"))
        assert answer.status_code == 200
        body = answer.json()
        pages.append([s["id"] for s in body["sketches"]])
        token = body["next_page_token"]
        if token is None:
            break

    assert pages == [made[::-1][0:2], made[::-1][2:4], made[::-1][4:5]]
    assert all(s["user_id"] == "painter" for s in answer.json()["sketches"])


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "51"}, {"limit": "two"}, {"page_token": "not-a-token"}, {"page_token": "e30"}],
    ids=["zero", "over-50", "not-a-number", "garbage-token", "json-token"],
)
def test_a_bad_gallery_request_is_400(stack: Stack, params: dict[str, str]) -> None:
    answer = stack.http.get(stack.create.url, params=params)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_field"


def test_without_sign_in_the_gallery_is_every_sketch(stack_factory: Callable[..., Stack]) -> None:
    stack = stack_factory("open", AUTH_MODE="none")
    ids = [stack.create_sketch(prompt=f"open gallery {i}")["id"] for i in range(3)]
    answer = stack.http.get(stack.create.url)
    assert [s["id"] for s in answer.json()["sketches"]] == ids[::-1] and answer.json()[
        "next_page_token"
    ] is None


# ------------------------------------------------------------------------------ balance breaker


@pytest.fixture(scope="module")
def breaker_stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory("breaker", BALANCE_BREAKER_SECONDS="3")


@pytest.fixture
def breaker(breaker_stack: Stack) -> Iterator[Stack]:
    yield breaker_stack.clean()
    breaker_stack.simulator.wait_idle(10)
    time.sleep(3.2)  # whatever this test opened has run out before the next


def test_a_create_storm_while_the_balance_is_spent_stops_calling_novita(breaker: Stack) -> None:
    breaker.simulator.configure(balance_exhausted=True)

    first = post(breaker, PROMPT)
    storm = race(20, lambda i: post(breaker, {"prompt": f"storm {i}"}))
    calls = breaker.simulator.stats()["requests"]["txt2img"]

    record_figure(
        "balance breaker", "create storm while the balance is spent: Novita calls", f"{calls} for 21 creates"
    )
    assert first.status_code == 503 and first.json()["error"]["code"] == "novita_balance"
    assert first.json()["error"]["sketch"]["status"] == "failed"  # the one that asked Novita
    assert [a.status_code for a in storm] == [503] * 20
    assert {a.json()["error"]["code"] for a in storm} == {"novita_balance"}
    assert all(1 <= int(a.headers["Retry-After"]) <= 3 for a in storm)
    assert calls == 1 and breaker.stored_count() == 1  # the storm wrote nothing
    # One ERROR per opening, for an alert.
    assert [line["message"] for line in _errors(breaker)] == [
        "Novita's balance is not enough: new sketches are refused for 3 s"
    ]


def _errors(stack: Stack) -> list[dict[str, Any]]:
    lines = [json.loads(raw) for raw in stack.create.log_path.read_text().splitlines() if raw.startswith("{")]
    return [line for line in lines if line["severity"] == "ERROR"]


def test_the_first_create_after_the_breaker_runs_out_tries_again(breaker: Stack) -> None:
    breaker.simulator.configure(balance_exhausted=True)
    assert post(breaker, PROMPT).json()["error"]["code"] == "novita_balance"
    breaker.simulator.configure(balance_exhausted=False)
    assert post(breaker, PROMPT).status_code == 503  # still open: nothing asked
    time.sleep(3.2)

    after = race(5, lambda i: post(breaker, {"prompt": f"after {i}"}))

    codes = Counter(a.status_code for a in after)
    assert codes[202] >= 1 and set(codes) <= {202, 503}
    assert breaker.simulator.stats()["requests"]["txt2img"] == 1 + codes[202]
    assert post(breaker, PROMPT).status_code == 202  # the probe closed it


def test_a_sketch_in_flight_waits_for_the_balance_instead_of_failing(breaker: Stack) -> None:
    breaker.simulator.configure(image_delay=0.3)
    sketch = breaker.create_sketch()
    breaker.simulator.configure(balance_exhausted=True)  # gone before Kling is asked

    # Kling refuses for the balance: the chain gives the work back and waits, and waiting is no failure.
    deadline = time.monotonic() + 20
    while not breaker.log_lines("step waits", sketch["id"]):
        assert time.monotonic() < deadline, "the chain never waited for the balance"
        time.sleep(0.05)
    waiting = breaker.stored(sketch["id"])
    breaker.simulator.configure(balance_exhausted=False)
    done = breaker.wait_for_status(sketch["id"], "complete", timeout=60)

    assert waiting is not None and waiting.status.value == "image_complete" and waiting.step_failures == 0
    assert done.error_message is None and breaker.tasks_created("kling") == 1

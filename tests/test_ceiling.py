"""A ceiling nobody spends past (issue: only Novita, Google and the app get in): the project's daily
count taken with each sketch in one commit, guests' own lower cap, and the balance breaker that
closes on time and loses no sketch, through real HTTP on the stack."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import Stack, record_figure
from firebase_tokens import KEY, CertServer, claims, google_certs

CAP = 20


@pytest.fixture(scope="module")
def certs() -> Iterator[CertServer]:
    with google_certs() as server:
        yield server


@pytest.fixture(scope="module")
def capped(stack_factory: Callable[..., Stack], certs: CertServer) -> Stack:
    return stack_factory(
        "ceiling",
        AUTH_MODE="firebase",
        FIREBASE_CERTS_URL=certs.url,
        FIREBASE_AUTH_EMULATOR_HOST="",
        MAX_SKETCHES_PER_DAY_TOTAL=str(CAP),
        MAX_SKETCHES_PER_DAY="10",
        MAX_GUEST_SKETCHES_PER_DAY="2",
        MAX_SKETCHES_IN_PROGRESS="10",
    )


def post(stack: Stack, uid: str, provider: str = "password") -> httpx.Response:
    token = KEY.sign(claims(uid, firebase={"sign_in_provider": provider}))
    return stack.post_sketch({"prompt": f"a ceiling for {uid}"}, headers={"Authorization": f"Bearer {token}"})


def test_ten_accounts_posting_four_times_each_pay_for_exactly_the_cap(capped: Stack) -> None:
    stack = capped.clean()
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: post(stack, f"account-{i % 10}"), range(40)))
    stack.simulator.wait_idle(15)

    codes = Counter(a.status_code for a in answers)
    paid = [e for e in stack.simulator.ledger()["paid"] if e["endpoint"] == "txt2img"]
    over = {a.json()["error"]["code"] for a in answers if a.status_code == 429}
    record_figure("ceiling", "10 accounts x 4 POSTs, total cap 20: paid text-to-image tasks", len(paid))
    assert codes == {202: CAP, 429: 40 - CAP} and over == {"project_daily_limit"}
    assert len(paid) == CAP and stack.stored_count() == CAP
    assert all(1 <= int(a.headers["Retry-After"]) <= 86400 for a in answers if a.status_code == 429)


def test_fifty_concurrent_posts_never_go_over_the_cap(capped: Stack) -> None:
    stack = capped.clean()
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda i: post(stack, f"racer-{i}"), range(50)))
    stack.simulator.wait_idle(15)

    made = sum(a.status_code == 202 for a in answers)
    paid = sum(e["endpoint"] == "txt2img" for e in stack.simulator.ledger()["paid"])
    record_figure(
        "ceiling",
        "50 concurrent POSTs, total cap 20: accepted / paid / stored",
        f"{made} / {paid} / {stack.stored_count()}",
    )
    assert made == CAP and paid == CAP and stack.stored_count() == CAP


def test_guests_have_their_own_lower_cap(capped: Stack) -> None:
    stack = capped.clean()
    guest = [post(stack, "guest-1", "anonymous").status_code for _ in range(3)]
    member = [post(stack, "member-1").status_code for _ in range(3)]

    assert guest == [202, 202, 429] and member == [202, 202, 202]


@pytest.mark.parametrize("personality", ["guide", "reference"])
def test_the_breaker_closes_on_time_and_no_sketch_is_lost(
    stack_factory: Callable[..., Stack], personality: str
) -> None:
    """A balance refusal opens the breaker for 3 s: sketches already on their way wait (none fails),
    and once the balance is back a create is accepted within the breaker's time and a few seconds."""
    stack = stack_factory(
        f"breaker-closes-{personality}",
        personality=personality,
        sweep_every=0.5,
        BALANCE_BREAKER_SECONDS="3",
        RECOVERY_INTERVAL_SECONDS="0.5",
    )
    with stack.scheduled():
        stack.simulator.configure(image_delay=0.3, video_delay=0.5)
        on_the_way = [stack.create_sketch(prompt=f"on the way {i}")["id"] for i in range(3)]
        stack.simulator.configure(balance_exhausted=True)
        refused_at = None
        while refused_at is None:  # the next paid request finds the balance spent
            answer = stack.post_sketch({"prompt": "finds the balance spent"})
            if answer.status_code == 503:
                refused_at = time.monotonic()
            elif answer.status_code == 202:
                on_the_way.append(answer.json()["id"])
                time.sleep(0.1)
        stack.simulator.configure(balance_exhausted=False)  # topped up at once
        while stack.post_sketch({"prompt": "after the top-up"}).status_code != 202:
            assert time.monotonic() - refused_at < 30, "creates were refused long after the balance was back"
            time.sleep(0.2)
        accepted_after = time.monotonic() - refused_at
        finals = [stack.wait_for(i, lambda s: s.status.is_final, timeout=60) for i in on_the_way]

    lost = [s.id for s in finals if s.status.value != "complete"]
    record_figure(
        "balance breaker",
        f"3 s breaker ({personality}): create accepted after / sketches lost",
        f"{accepted_after:.1f} s / {len(lost)}",
    )
    assert accepted_after < 10 and lost == []

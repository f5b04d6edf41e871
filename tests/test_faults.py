"""The fault suite: load, outages (Firestore, Pub/Sub), Novita faults, lost webhooks, fuzzed input and
hostile media URLs, against the real emulators, the simulator and both functions. The outage and
recovery scenarios run under both simulator personalities; under the reference one Novita sends no
Kling webhook, so every video arrives through recovery. Each scenario records its figures, which
the run prints at its end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import LOG_DIR, WEBHOOK_SECRET, WORKER, Emulators, Stack, record_figure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.core.tokens import sketch_token
from shared.media.policy import MediaRejected, check_media_url

pytestmark = [pytest.mark.faults, pytest.mark.stack]
FINAL = ("complete", "failed")
QUICK_RECOVERY = {
    "RECOVERY_INTERVAL_SECONDS": "0.5",
    "STEP_LEASE_SECONDS": "2",
    "UNKNOWN_OUTCOME_GRACE_SECONDS": "3",
}


@pytest.fixture(scope="module")
def outage_stacks(emulators: Emulators) -> Iterator[dict[str, Stack]]:
    """A stack under each personality whose recovery runs on a short clock, on a Firestore and a
    Pub/Sub of their own: the outages stop and restart them, which no other test may see."""
    emulators = emulators.with_own_queue_and_store(LOG_DIR / WORKER / "outage")
    stacks: dict[str, Stack] = {}
    try:
        for personality in ("guide", "reference"):
            stacks[personality] = Stack(emulators, QUICK_RECOVERY, f"outage-{personality}", personality)
            stacks[personality].start()
        yield stacks
    finally:  # a stack that failed to start leaves no process behind either
        for stack in stacks.values():
            stack.stop()
        emulators.stop_own()


@pytest.fixture(params=["guide", "reference"])
def outage_stack(request: pytest.FixtureRequest, outage_stacks: dict[str, Stack]) -> Iterator[Stack]:
    """A stack whose recovery runs on a short clock, under each personality."""
    chosen = outage_stacks[request.param]
    yield chosen.clean()
    chosen.simulator.wait_idle(10)


def create_many(stack: Stack, count: int) -> list[str]:
    def create(i: int) -> str:
        answer = stack.post_sketch({"prompt": f"absurd sketch number {i}"})
        body = answer.json()
        return str(body["id"] if answer.status_code == 202 else body["error"]["sketch"]["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def wait_final(stack: Stack, ids: list[str], timeout: float, *, sweep: bool = False) -> dict[str, str]:
    """Wait until every sketch is final or `timeout` passes, running the recovery sweep between
    looks if `sweep` (as Cloud Scheduler does); returns their statuses."""
    deadline = time.monotonic() + timeout
    statuses: dict[str, str] = {}
    while time.monotonic() < deadline:
        statuses = {i: stack.stored(i).status.value for i in ids}  # type: ignore[union-attr]
        if all(s in FINAL for s in statuses.values()):
            break
        if sweep:
            stack.sweep()
        time.sleep(0.25)
    return statuses


def extra_kling_tasks(stack: Stack, ids: list[str]) -> int:
    """Kling tasks Novita made beyond the one each sketch recorded: each would be a second payment."""
    recorded = {stack.stored(i).video_task_id for i in ids} - {None}  # type: ignore[union-attr]
    return int(stack.simulator.stats()["tasks_created"]["kling"]) - len(recorded)


@pytest.mark.timeout(300)
def test_storm_of_50_sketches_each_result_delivered_5_times_at_once(stack: Stack) -> None:
    stack.simulator.configure(deliveries=5, concurrent_deliveries=True)
    started = time.monotonic()

    ids = create_many(stack, 50)
    statuses = wait_final(stack, ids, timeout=240)
    elapsed = time.monotonic() - started
    stack.simulator.wait_idle(30)
    stats = stack.simulator.stats()
    slowest = max(d["elapsed_ms"] for d in stats["webhook_deliveries"])

    record_figure("storm", "sketches / complete", f"50 / {list(statuses.values()).count('complete')}")
    record_figure(
        "storm", "webhook deliveries (attempts), slowest answer", f"{stats['webhook_attempts']}, {slowest} ms"
    )
    record_figure("storm", "Kling requests", stats["requests"]["kling"])
    record_figure("storm", "Kling tasks beyond one per sketch", extra_kling_tasks(stack, ids))
    record_figure("storm", "wall time, prompt to 50 videos in the bucket", f"{elapsed:.1f} s")
    assert list(statuses.values()) == ["complete"] * 50
    assert stats["requests"]["kling"] == 50 and stats["tasks_created"]["kling"] == 50
    assert extra_kling_tasks(stack, ids) == 0


@pytest.mark.timeout(300)
def test_firestore_outage_in_the_middle_of_a_run(outage_stack: Stack, tmp_path: Path) -> None:
    stack = outage_stack
    # Novita's own retries span the outage only partly; recovery finishes the rest.
    stack.simulator.configure(image_delay=1.0, video_delay=1.0, webhook_retry_backoff=1.0)
    ids = create_many(stack, 10)

    time.sleep(0.8)
    stack.emulator.restart(stack.project, downtime=4.0, export_dir=tmp_path / "export")
    outage_end = time.monotonic()
    statuses = wait_final(stack, ids, timeout=120, sweep=True)
    recovered = time.monotonic() - outage_end
    stack.simulator.wait_idle(30)
    codes = Counter(d["status_code"] for d in stack.simulator.stats()["webhook_deliveries"])
    retried = len(stack.log_lines("step not done"))

    scenario = f"firestore outage ({stack.personality})"
    record_figure(scenario, "downtime", "4.0 s (emulator stopped, restarted with its data)")
    record_figure(scenario, "webhook deliveries answered 5xx / 2xx", f"{codes[503]} / {codes[200]}")
    record_figure(scenario, "steps answered 5xx (delivered again)", retried)
    record_figure(scenario, "sketches complete after", f"{list(statuses.values()).count('complete')} / 10")
    record_figure(scenario, "Kling tasks beyond one per sketch", extra_kling_tasks(stack, ids))
    record_figure(scenario, "recovered within", f"{recovered:.1f} s of the restart")
    assert all(code in (200, 503, None) for code in codes), codes
    assert list(statuses.values()) == ["complete"] * 10
    assert extra_kling_tasks(stack, ids) == 0


@pytest.mark.timeout(300)
def test_pubsub_outage_in_the_middle_of_a_run_loses_nothing(outage_stack: Stack) -> None:
    stack = outage_stack
    stack.simulator.configure(image_delay=1.0, video_delay=1.0, webhook_retry_backoff=1.0)
    ids = create_many(stack, 10)

    time.sleep(0.8)
    stack.pubsub.restart(downtime=5.0)  # every message it held is gone, too
    outage_end = time.monotonic()
    statuses = wait_final(stack, ids, timeout=150, sweep=True)
    recovered = time.monotonic() - outage_end
    stack.simulator.wait_idle(30)
    codes = Counter(d["status_code"] for d in stack.simulator.stats()["webhook_deliveries"])

    scenario = f"pubsub outage ({stack.personality})"
    record_figure(scenario, "downtime", "5.0 s (emulator stopped, restarted empty)")
    record_figure(scenario, "webhook deliveries answered 5xx / 2xx", f"{codes[503]} / {codes[200]}")
    record_figure(
        scenario,
        "sketches complete / lost",
        f"{list(statuses.values()).count('complete')} / {sum(s not in FINAL for s in statuses.values())}",
    )
    record_figure(scenario, "Kling tasks beyond one per sketch", extra_kling_tasks(stack, ids))
    record_figure(scenario, "recovered within", f"{recovered:.1f} s of the restart")
    assert all(code in (200, 503, None) for code in codes), codes
    assert list(statuses.values()) == ["complete"] * 10
    assert extra_kling_tasks(stack, ids) == 0


@pytest.mark.timeout(300)
def test_novita_429_and_5xx_bursts_lose_nothing_and_pay_nothing_twice(outage_stack: Stack) -> None:
    stack = outage_stack
    bursts = {
        "txt2img": [429, 429, 503, 429],
        "seedream": [429, 503, 502],
        "kling": [500, 503, 429, 429, 500, 502, 504, 429],
        "task_result": [503, 504, 429, 502],
    }
    stack.simulator.configure(http_errors=bursts)
    ids = create_many(stack, 20)

    statuses = wait_final(stack, ids, timeout=150, sweep=True)
    stack.simulator.wait_idle(30)
    stats = stack.simulator.stats()
    failed = {i: stack.stored(i).error_message for i, s in statuses.items() if s == "failed"}  # type: ignore[union-attr]

    scenario = f"novita bursts ({stack.personality})"
    record_figure(scenario, "error answers injected", sum(len(codes) for codes in bursts.values()))
    record_figure(
        scenario,
        "sketches complete / failed with reason / lost",
        f"{list(statuses.values()).count('complete')} / {len(failed)} / "
        f"{sum(s not in FINAL for s in statuses.values())}",
    )
    record_figure(scenario, "Kling tasks beyond one per sketch", extra_kling_tasks(stack, ids))
    assert all(s in FINAL for s in statuses.values())
    # Only a create whose own text-to-image request got a 5xx fails (it may not be sent again).
    assert all(message and "Novita 503" in message for message in failed.values()), failed
    assert extra_kling_tasks(stack, ids) == 0
    assert stats["tasks_created"]["kling"] == list(statuses.values()).count("complete")


@pytest.mark.timeout(240)
def test_every_webhook_dropped_every_sketch_completes_through_recovery(outage_stack: Stack) -> None:
    stack = outage_stack
    stack.simulator.configure(drop_webhooks=True)
    started = time.monotonic()

    ids = create_many(stack, 20)
    statuses = wait_final(stack, ids, timeout=150, sweep=True)
    stats = stack.simulator.stats()

    scenario = f"webhooks dropped ({stack.personality})"
    record_figure(scenario, "webhook deliveries", stats["webhook_attempts"])
    record_figure(scenario, "sketches complete", f"{list(statuses.values()).count('complete')} / 20")
    record_figure(scenario, "Kling tasks", stats["tasks_created"]["kling"])
    record_figure(scenario, "wall time", f"{time.monotonic() - started:.1f} s")
    assert stats["webhook_attempts"] == 0
    assert list(statuses.values()) == ["complete"] * 20
    assert stats["tasks_created"]["kling"] == 20


FUZZ_EXAMPLES = 300
_fuzz_counts: Counter[str] = Counter()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def events(task_ids: list[str]) -> st.SearchStrategy[Any]:
    task = st.fixed_dictionaries(
        {
            "task_id": st.sampled_from(task_ids) | st.text(max_size=8) | json_values,
            "status": st.sampled_from(["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED", "TASK_STATUS_QUEUED"])
            | json_values,
        },
        optional={"reason": json_values},
    )
    media = st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "image_url": st.text(max_size=30) | st.just("http://127.0.0.1:9/x.jpg"),
                "image_url_ttl": json_values,
                "video_url": st.text(max_size=30),
                "video_url_ttl": json_values,
            },
        ),
        max_size=2,
    )
    payload = st.fixed_dictionaries(
        {},
        optional={
            "task": task | json_values,
            "images": media | json_values,
            "videos": media,
            "extra": st.fixed_dictionaries({}, optional={"images": media, "videos": media}) | json_values,
        },
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "event_type": st.sampled_from(["ASYNC_TASK_RESULT", "OTHER"]) | json_values,
            "payload": payload | json_values,
        },
    )


@pytest.mark.timeout(300)
def test_fuzzed_webhook_calls_never_answer_5xx_nor_change_anything_without_a_token(stack: Stack) -> None:
    stack.simulator.configure(drop_webhooks=True)
    sketch = stack.create_sketch()
    target = sketch["id"]
    issued = str(int(time.time()))
    token = sketch_token(WEBHOOK_SECRET, target, "image", int(issued))
    before = stack.stored(target)

    @settings(
        max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    @given(
        body=events([sketch["image_task_id"]]) | json_values | st.binary(max_size=64),
        # Half the calls carry the sketch's own token, so the body parsing behind it is fuzzed too.
        query=st.fixed_dictionaries(
            {
                "sketch": st.just(target),
                "token": st.just(token),
                "stage": st.just("image"),
                "t": st.just(issued),
            },
            optional={"x": st.text(max_size=6)},
        )
        | st.dictionaries(
            st.sampled_from(["sketch", "token", "stage", "t", "action", "x"]),
            st.text(max_size=12) | st.sampled_from([target, token, issued, "image", "video", "sweep"]),
            max_size=5,
        ),
        headers=st.dictionaries(
            st.sampled_from(["Content-Type", "X-Cloud-Trace-Context", "Authorization", "X-Extra"]),
            # Header values cannot start or end with white space on the wire.
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.strip),
            max_size=3,
        ),
    )
    def call(body: Any, query: dict[str, str], headers: dict[str, str]) -> None:
        valid = (
            query.get("sketch") == target
            and query.get("token") == token
            and query.get("stage") == "image"
            and query.get("t") == issued
            and query.get("action") is None
        )
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        # Steps of earlier valid calls may still change the sketch: what an invalid call must not do
        # is get as far as handing anything on (every delivery that does logs "delivery <outcome>").
        handed = len(stack.log_lines("delivery ", target))
        response = stack.http.post(f"{stack.webhook.url}?{urlencode(query)}", headers=headers, **kwargs)
        _fuzz_counts["calls"] += 1
        _fuzz_counts["5xx"] += response.status_code >= 500
        assert response.status_code < 500, (response.status_code, response.text)
        if valid:
            _fuzz_counts["with a valid token"] += 1
        else:
            # 404: an action names the private door's work, refused on the public one.
            assert response.status_code in (400, 401, 404)
            assert len(stack.log_lines("delivery ", target)) == handed
            _fuzz_counts["without a valid token"] += 1

    call()
    assert before is not None

    record_figure("fuzzed webhooks", "calls (bodies, headers, query strings)", _fuzz_counts["calls"])
    record_figure(
        "fuzzed webhooks",
        "without a valid token: answered 401, changed nothing",
        _fuzz_counts["without a valid token"],
    )
    record_figure("fuzzed webhooks", "with a valid token", _fuzz_counts["with a valid token"])
    record_figure("fuzzed webhooks", "5xx answers", _fuzz_counts["5xx"])


HOSTILE_URLS = [
    "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token",
    "https://169.254.169.254/latest/meta-data/",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://metadata/computeMetadata/v1/",
    "https://localhost/still.jpg",
    "https://127.0.0.1/still.jpg",
    "https://[::1]/still.jpg",
    "https://[fe80::1]/still.jpg",
    "https://[::ffff:127.0.0.1]/still.jpg",
    "https://10.0.0.5/still.jpg",
    "https://172.16.0.1/still.jpg",
    "https://192.168.1.1/still.jpg",
    "https://100.64.0.1/still.jpg",
    "https://0.0.0.0/still.jpg",
    "https://2130706433/still.jpg",
    "file:///etc/passwd",
    "ftp://cdn.example/still.jpg",
    "http://cdn.example/still.jpg",
    "https://rebind.example/still.jpg",
    "https://internal.example/still.jpg",
    "https://mixed.example/still.jpg",
]
STUB_DNS = {
    "rebind.example": ["127.0.0.1"],
    "internal.example": ["10.1.2.3", "fd00::1"],
    "mixed.example": ["93.184.216.34", "169.254.169.254"],
    "cdn.example": ["93.184.216.34"],
}


def test_hostile_media_urls_are_all_refused_before_any_connection(stack_factory) -> None:  # noqa: ANN001
    refused = 0
    for url in HOSTILE_URLS:
        with pytest.raises(MediaRejected):
            check_media_url(url, "public-https", lambda host, port: STUB_DNS[host])
        refused += 1

    # End to end, through the real pipeline: under public-https the still Novita's task-result names
    # (the simulator's own http://127.0.0.1 link) is refused before any connection to it.
    stack: Stack = stack_factory("public-https", MEDIA_URL_POLICY="public-https")
    media_before = stack.simulator.stats()["requests"]["media"]
    for _ in range(4):
        sketch = stack.create_sketch()
        failed = stack.wait_for_status(sketch["id"], "failed", timeout=20)
        assert failed.error_message and "refused" in failed.error_message
        refused += 1
    fetched = stack.simulator.stats()["requests"]["media"] - media_before

    record_figure("hostile media URLs", "tried / refused / fetched", f"{refused} / {refused} / {fetched}")
    assert fetched == 0
    assert not any("Traceback" in line for line in stack.webhook.log_path.read_text().splitlines())

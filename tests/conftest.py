"""Fixtures: the real Firestore emulator, the Novita simulator and both functions served by
functions-framework, all on loopback."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import firestore

from devstack.emulator import FirestoreEmulator
from devstack.functions import FunctionServer
from devstack.processes import free_port
from novita_simulator import NovitaSimulator, SimulatorConfig
from shared.sketch import Sketch
from shared.webhook_tokens import Stage, webhook_url

PROJECT = "sketch-machine-test"
API_KEY = "test-novita-key"
WEBHOOK_SECRET = "test-webhook-secret-0123456789"
LOG_DIR = Path(os.environ.get("TEST_LOG_DIR", "/tmp/sketch-machine-test-logs"))
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# Figures the fault suite measures, printed at the end of the run.
FIGURES: list[tuple[str, str, str]] = []


def firestore_error(http_status: int, status: str) -> httpx.Response:
    """An error answer as Firestore's REST API gives it."""
    error = {"code": http_status, "message": f"{status} (scripted)", "status": status}
    return httpx.Response(http_status, json={"error": error})


class Scripted:
    """An httpx MockTransport handler answering from a script (the last answer repeats); records
    what it was asked."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def record_figure(scenario: str, figure: str, value: object) -> None:
    FIGURES.append((scenario, figure, str(value)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("fault suite figures")
    width = max(len(f"{s}: {f}") for s, f, _ in FIGURES)
    for scenario, figure, value in FIGURES:
        terminalreporter.write_line(f"{f'{scenario}: {figure}':<{width}}  {value}")


@pytest.fixture(scope="session")
def emulator() -> Iterator[FirestoreEmulator]:
    emu = FirestoreEmulator(LOG_DIR / "firestore-emulator.log").start()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emu.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def simulator() -> Iterator[NovitaSimulator]:
    sim = NovitaSimulator(api_key=API_KEY, host="127.0.0.1", port=0, config=fast_simulator_config()).start()
    yield sim
    sim.stop()


def fast_simulator_config(**changes: Any) -> SimulatorConfig:
    return SimulatorConfig(
        **{"image_delay": 0.2, "video_delay": 0.3, "webhook_retry_backoff": 0.2, **changes}
    )


class Stack:
    """Both functions as real processes, wired to the emulator and the simulator."""

    def __init__(
        self, emulator: FirestoreEmulator, simulator: NovitaSimulator, env: dict[str, str], name: str
    ) -> None:
        self.emulator = emulator
        self.simulator = simulator
        webhook_port = free_port()
        self.env = {
            "NOVITA_API_KEY": API_KEY,
            "NOVITA_BASE_URL": simulator.base_url,
            "WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": emulator.host,
            "MEDIA_URL_POLICY": "any",
            **env,
        }
        self.webhook = FunctionServer(
            "novita_webhook", self.env, LOG_DIR / f"{name}-novita_webhook.log", port=webhook_port
        )
        self.create = FunctionServer("create_sketch", self.env, LOG_DIR / f"{name}-create_sketch.log")
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self.db = firestore.Client(project=PROJECT)
        self.collection = self.env.get("SKETCHES_COLLECTION", "sketches")

    def start(self) -> Stack:
        self.webhook.start()
        self.create.start()
        return self

    def clean(self) -> Stack:
        """An empty Firestore and a simulator back at its fast defaults, with nothing in flight."""
        self.simulator.wait_idle(10)
        self.simulator.reset()
        self.simulator.configure(**fast_simulator_config().model_dump())
        self.emulator.reset(PROJECT)
        return self

    def stop(self) -> None:
        self.create.stop()
        self.webhook.stop()
        self.http.close()

    # ------------------------------------------------------------------------------ helpers

    def post_sketch(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post(self.create.url, json=body, **kwargs)

    def create_sketch(self, **fields: Any) -> dict[str, Any]:
        response = self.post_sketch({"prompt": "a walrus giving a TED talk about spoons", **fields})
        assert response.status_code == 202, response.text
        return dict(response.json())

    def webhook_url(self, sketch_id: str, stage: Stage = "image") -> str:
        return webhook_url(self.webhook.url, WEBHOOK_SECRET, sketch_id, stage)

    def deliver(self, sketch_id: str, event: Any, *, stage: Stage = "image") -> httpx.Response:
        """POST `event` to the sketch's registered webhook URL, as Novita would."""
        return self.http.post(self.webhook_url(sketch_id, stage), json=event)

    def finished_event(self, task_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The simulator's task-result for a finished task, wrapped as a webhook event."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            payload = self.http.get(
                f"{self.simulator.base_url}/v3/async/task-result",
                params={"task_id": task_id},
                headers={"Authorization": f"Bearer {API_KEY}"},
            ).json()
            if payload["task"]["status"] in ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"):
                return {"event_type": "ASYNC_TASK_RESULT", "payload": payload}
            time.sleep(0.05)
        raise AssertionError(f"task {task_id} did not finish in {timeout} s")

    def get_sketch(self, sketch_id: str) -> httpx.Response:
        return self.http.get(self.create.url, params={"id": sketch_id})

    def stored(self, sketch_id: str) -> Sketch | None:
        snapshot = self.db.collection(self.collection).document(sketch_id).get()
        return Sketch.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def stored_count(self) -> int:
        return sum(1 for _ in self.db.collection(self.collection).stream())

    def wait_for(self, sketch_id: str, predicate: Callable[[Sketch], bool], timeout: float = 20.0) -> Sketch:
        deadline = time.monotonic() + timeout
        sketch = None
        while time.monotonic() < deadline:
            sketch = self.stored(sketch_id)
            if sketch is not None and predicate(sketch):
                return sketch
            time.sleep(0.05)
        raise AssertionError(f"sketch {sketch_id} did not get there in {timeout} s; it is {sketch!r}")

    def wait_for_status(self, sketch_id: str, status: str, timeout: float = 20.0) -> Sketch:
        return self.wait_for(sketch_id, lambda s: s.status.value == status, timeout)

    def kling_requests(self) -> int:
        return int(self.simulator.stats()["requests"]["kling"])

    def tasks_created(self, kind: str) -> int:
        return int(self.simulator.stats()["tasks_created"][kind])


@pytest.fixture(scope="session")
def stack_factory(emulator: FirestoreEmulator, simulator: NovitaSimulator) -> Iterator[Callable[..., Stack]]:
    started: list[Stack] = []

    def make(name: str = "stack", **env: str) -> Stack:
        """Both functions started with `env`, on a clean emulator and simulator."""
        stack = Stack(emulator, simulator, env, name).start()
        started.append(stack)
        return stack.clean()

    yield make
    for stack in started:
        stack.stop()


@pytest.fixture(scope="session")
def default_stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory("default")


@pytest.fixture
def stack(default_stack: Stack) -> Iterator[Stack]:
    yield default_stack.clean()
    default_stack.simulator.wait_idle(10)


@pytest.fixture(scope="session")
def quick_recovery_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """A stack whose recovery runs on a short clock: checks every 0.5 s, 2 s leases, 3 s grace."""
    return stack_factory(
        "recovery",
        RECOVERY_INTERVAL_SECONDS="0.5",
        CHAIN_LEASE_SECONDS="2",
        UNKNOWN_OUTCOME_GRACE_SECONDS="3",
    )


@pytest.fixture
def recovery_stack(quick_recovery_stack: Stack) -> Iterator[Stack]:
    yield quick_recovery_stack.clean()
    quick_recovery_stack.simulator.wait_idle(10)

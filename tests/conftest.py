"""Fixtures: the real Firestore, Pub/Sub, Cloud Storage and Firebase Auth emulators, the Novita
simulator and both functions (three processes: create_sketch, and novita_webhook's public and
private doors) served by functions-framework, all on loopback.

The emulators are shared: a run with pytest-xdist starts them once, in its controller, and every
worker attaches to them (`SKETCH_TEST_EMULATORS`); a plain run starts them on first use. Each stack
has a Google Cloud project of its own (per worker, too), so its documents, topics and push
subscriptions are its own, and a simulator of its own, so that one test's faults never reach another
stack. Stacks run as the app does: AUTH_MODE=firebase, a guest signed in on the Auth emulator.

A test that needs none of this is fast: `scripts/test.sh --fast` runs those alone (`-m "not stack"`);
every test that uses a stack, an emulator or a function process is marked `stack` here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from google.cloud import firestore

from devstack.auth import AuthEmulator, Guest
from devstack.emulator import FirestoreEmulator
from devstack.functions import FunctionServer
from devstack.processes import free_port
from devstack.pubsub import PubSubEmulator
from devstack.stack import Scheduler
from devstack.storage import StorageEmulator
from devstack.supervisor import Supervisor
from novita_simulator import NovitaSimulator, SimulatorConfig
from shared.core.http import KeptAlive, tls_context
from shared.core.tokens import SWEEP_HEADER, sweep_token, webhook_url
from shared.google.api import TIMEOUT as GOOGLE_TIMEOUT
from shared.google.api import GoogleApi
from shared.google.pubsub import PubSub
from shared.pipeline.queue import Step, message
from shared.pipeline.topology import DEAD_LETTER_SUBSCRIPTION, SUBSCRIPTION, TOPIC
from shared.sketch.model import Sketch, Stage

# The Firebase project ID tokens are minted for; each stack's Google Cloud project is its own.
PROJECT = "sketch-machine-test"
BUCKET = "sketch-machine-test-media"
API_KEY = "test-novita-key"
WEBHOOK_SECRET = "test-webhook-secret-0123456789"
LOG_DIR = Path(os.environ.get("TEST_LOG_DIR", "/tmp/sketch-machine-test-logs"))
HTTP_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# The shared emulators' addresses, for pytest-xdist's workers; and where figures are gathered.
SHARED_EMULATORS = "SKETCH_TEST_EMULATORS"
FIGURES_DIR = "SKETCH_TEST_FIGURES"
# The pytest-xdist worker this process is ("gw0", ...), or "main": names its stacks' projects.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
# Every fixture that needs an emulator, the simulator or a function process depends on one of these
# (`emulator` also names test_firestore_rules.py's own): a test that uses them, however indirectly,
# is marked `stack`.
STACK_FIXTURES = {"emulators", "emulator"}


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
    """A figure printed at the end of the run (from every worker: each line goes to a shared file)."""
    line = json.dumps([scenario, figure, str(value)])
    folder = Path(os.environ[FIGURES_DIR])  # pytest_configure set it, in the controller and each worker
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{WORKER}-{os.getpid()}.jsonl").open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack: needs an emulator, the simulator or a function process")
    if hasattr(config, "workerinput"):
        return  # a worker: its controller started what is shared
    figures = LOG_DIR / f"figures-{os.getpid()}"
    shutil.rmtree(figures, ignore_errors=True)
    os.environ[FIGURES_DIR] = str(figures)
    if config.getoption("numprocesses", default=None):
        # Started once for every worker; stopped when the run ends.
        emulators = Emulators.start(LOG_DIR)
        config.stash[_emulators_key] = emulators
        os.environ[SHARED_EMULATORS] = json.dumps(emulators.addresses())


def pytest_unconfigure(config: pytest.Config) -> None:
    emulators = config.stash.get(_emulators_key, None)
    if emulators is not None:
        emulators.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    folder = Path(os.environ[FIGURES_DIR])
    figures = [
        tuple(json.loads(line))
        for file in sorted(folder.glob("*.jsonl"))
        for line in file.read_text().splitlines()
    ]
    if not figures:
        return
    terminalreporter.section("figures")
    width = max(len(f"{s}: {f}") for s, f, _ in figures)
    for scenario, figure, value in sorted(figures, key=lambda row: row[0]):
        terminalreporter.write_line(f"{f'{scenario}: {figure}':<{width}}  {value}")


class Emulators:
    """The Firestore, Pub/Sub, Cloud Storage and Firebase Auth emulators every stack shares: started
    here, or attached to by their addresses (a pytest-xdist worker's, its controller started them)."""

    def __init__(
        self,
        firestore: FirestoreEmulator,
        pubsub: PubSubEmulator,
        storage: StorageEmulator,
        auth: AuthEmulator,
    ) -> None:
        self.firestore, self.pubsub, self.storage, self.auth = firestore, pubsub, storage, auth

    @classmethod
    def start(cls, log_dir: Path) -> Emulators:
        """All four started; if one cannot start, the ones started before it are stopped again."""
        return cls(
            *_started(
                FirestoreEmulator(log_dir / "firestore-emulator.log"),
                PubSubEmulator(log_dir / "pubsub-emulator.log"),
                StorageEmulator(log_dir / "storage-emulator.log", BUCKET),
                AuthEmulator(log_dir / "auth-emulator.log", PROJECT),
            )
        )

    def with_own_queue_and_store(self, log_dir: Path) -> Emulators:
        """These emulators, with a Firestore and a Pub/Sub of their own that outages may restart:
        Firestore behind a gate that a restart shuts first, so that, as with Firestore itself, an
        outage loses no write a client was told of (`devstack/gate.py`). `stop_own` stops them."""
        firestore, pubsub = _started(
            FirestoreEmulator(log_dir / "firestore-emulator.log", gated=True),
            PubSubEmulator(log_dir / "pubsub-emulator.log"),
        )
        return Emulators(firestore, pubsub, self.storage, self.auth)

    def stop_own(self) -> None:
        """Stop what `with_own_queue_and_store` started."""
        self.pubsub.stop()
        self.firestore.stop()

    @classmethod
    def attach(cls, addresses: dict[str, int]) -> Emulators:
        log = LOG_DIR / "attached.log"
        return cls(
            FirestoreEmulator(log, port=addresses["firestore"]),
            PubSubEmulator(log, port=addresses["pubsub"]),
            StorageEmulator(log, BUCKET, port=addresses["storage"]),
            AuthEmulator(log, PROJECT, port=addresses["auth"]),
        )

    def addresses(self) -> dict[str, int]:
        return {
            "firestore": self.firestore.port,
            "pubsub": self.pubsub.port,
            "storage": self.storage.port,
            "auth": self.auth.port,
        }

    def stop(self) -> None:
        for emulator in (self.auth, self.storage, self.pubsub, self.firestore):
            emulator.stop()


def _started(*emulators: Any) -> tuple[Any, ...]:
    """`emulators`, each started; if one cannot start, the ones started before it are stopped."""
    started: list[Any] = []
    try:
        for emulator in emulators:
            started.append(emulator.start())
    except BaseException:
        for emulator in reversed(started):
            emulator.stop()
        raise
    return emulators


_emulators_key = pytest.StashKey[Emulators]()


@pytest.fixture(scope="session")
def emulators() -> Iterator[Emulators]:
    shared = os.environ.get(SHARED_EMULATORS)
    started = None if shared else Emulators.start(LOG_DIR)
    found = started or Emulators.attach(json.loads(shared or "{}"))
    # The Firestore SDK the tests read with (the functions speak REST) finds the emulator here.
    os.environ["FIRESTORE_EMULATOR_HOST"] = found.firestore.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    yield found
    if started is not None:
        started.stop()


@pytest.fixture(scope="session")
def emulator(emulators: Emulators) -> FirestoreEmulator:
    return emulators.firestore


@pytest.fixture(scope="session")
def pubsub(emulators: Emulators) -> PubSubEmulator:
    return emulators.pubsub


@pytest.fixture(scope="session")
def storage(emulators: Emulators) -> StorageEmulator:
    return emulators.storage


@pytest.fixture(scope="session")
def auth(emulators: Emulators) -> AuthEmulator:
    return emulators.auth


def fast_simulator_config(**changes: Any) -> SimulatorConfig:
    return SimulatorConfig(
        **{"image_delay": 0.2, "video_delay": 0.3, "webhook_retry_backoff": 0.2, **changes}
    )


class Stack:
    """Both functions as real processes, wired to the emulators and a simulator of their own, and
    called as the app calls them: by a guest signed in on the Auth emulator (`http` carries the
    guest's ID token; with AUTH_MODE=none, nobody's)."""

    def __init__(
        self,
        emulators: Emulators,
        env: dict[str, str],
        name: str,
        personality: str = "guide",
        sweep_every: float | None = None,
    ) -> None:
        self.personality = personality
        self.sweep_every = sweep_every
        self.emulator = emulators.firestore
        self.pubsub = emulators.pubsub
        self.storage = emulators.storage
        self.auth = emulators.auth
        self.simulator = NovitaSimulator(
            api_key=API_KEY, config=fast_simulator_config(personality=personality)
        )
        self.project = f"sketch-test-{name}-{WORKER}"
        webhook_port = free_port()
        self.env = {
            "NOVITA_API_KEY": API_KEY,
            "NOVITA_BASE_URL": self.simulator.base_url,
            "WEBHOOK_URL": f"http://127.0.0.1:{webhook_port}/",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIREBASE_PROJECT_ID": PROJECT,
            "FIRESTORE_EMULATOR_HOST": self.emulator.host,
            "PUBSUB_EMULATOR_HOST": self.pubsub.host,
            "STORAGE_EMULATOR_HOST": self.storage.url,
            "FIREBASE_AUTH_EMULATOR_HOST": self.auth.host,
            "MEDIA_BUCKET": BUCKET,
            "MEDIA_URL_POLICY": "any",
            "AUTH_MODE": "firebase",
            "CORS_ALLOWED_ORIGINS": "*",
            # One guest makes every sketch of a test, storms included.
            "MAX_GUEST_SKETCHES_PER_DAY": "10000",
            "MAX_SKETCHES_PER_DAY": "10000",
            "MAX_SKETCHES_PER_DAY_TOTAL": "100000",
            "MAX_SKETCHES_IN_PROGRESS": "100",
            **env,
        }
        logs = LOG_DIR / WORKER
        self.webhook = FunctionServer(
            "novita_webhook",
            {**self.env, "WEBHOOK_DOOR": "public"},
            logs / f"{name}-novita_webhook.log",
            port=webhook_port,
        )
        self.steps = FunctionServer(
            "novita_webhook",
            {**self.env, "WEBHOOK_DOOR": "private"},
            logs / f"{name}-novita_webhook-steps.log",
            label="novita_webhook (private)",
        )
        self.create = FunctionServer("create_sketch", self.env, logs / f"{name}-create_sketch.log")
        for server in self.servers:
            server.log_path.unlink(missing_ok=True)  # this run's lines only
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self.restarted: list[str] = []
        self.supervisor: Supervisor | None = None
        # The SDK reads its emulator's address from the environment when it is made: this stack's
        # own (test_faults.py gives its stacks emulators of their own), not the session's.
        with mock.patch.dict(os.environ, {"FIRESTORE_EMULATOR_HOST": self.emulator.host}):
            self.db = firestore.Client(project=self.project)
        self.collection = self.env.get("SKETCHES_COLLECTION", "sketches")
        self.guest: Guest | None = None

    @property
    def servers(self) -> tuple[FunctionServer, FunctionServer, FunctionServer]:
        return self.webhook, self.steps, self.create

    def start(self) -> Stack:
        """Everything started; if a part cannot start, the parts started before it are stopped."""
        try:
            self.simulator.start()
            self.pubsub.create_topology(self.project, self.steps.url)
            for server in self.servers:
                server.start()
            # A function process that dies comes back on its port, as Cloud Run starts a new instance.
            self.supervisor = Supervisor(self.servers, lambda text: self.restarted.append(text)).start()
        except BaseException:
            self.stop()
            raise
        return self

    @contextmanager
    def scheduled(self) -> Iterator[Stack]:
        """The stack, with the recovery sweep on its schedule while in use, as Cloud Scheduler runs
        it where the project is deployed (`sweep_every`; none if the stack has no schedule)."""
        scheduler = (
            Scheduler(self.steps.url, WEBHOOK_SECRET, self.sweep_every).start()
            if self.sweep_every is not None
            else None
        )
        try:
            yield self
        finally:
            if scheduler is not None:
                scheduler.stop()

    def clean(self) -> Stack:
        """An empty Firestore, no step left in the queue, a simulator back at its fast defaults with
        nothing in flight, and a new guest (no sketch of the last test counts against them)."""
        self.simulator.wait_idle(10)
        self.simulator.reset()
        self.pubsub.purge(self.project, SUBSCRIPTION, DEAD_LETTER_SUBSCRIPTION)
        self.emulator.reset(self.project)
        if self.env["AUTH_MODE"] == "firebase" and self.env["FIREBASE_AUTH_EMULATOR_HOST"]:
            self.guest = self.auth.sign_in_guest()
            self.http.headers["Authorization"] = f"Bearer {self.guest.id_token}"
        return self

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        for server in self.servers:
            server.stop()
        self.simulator.stop()
        self.http.close()

    # ------------------------------------------------------------------------------ helpers

    def post_sketch(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post(self.create.url, json=body, **kwargs)

    def create_sketch(self, **fields: Any) -> dict[str, Any]:
        response = self.post_sketch({"prompt": "a walrus giving a TED talk about spoons", **fields})
        assert response.status_code == 202, response.text
        return dict(response.json())

    def webhook_url(self, sketch_id: str, stage: Stage = "image", issued: float | None = None) -> str:
        issued_at = int(time.time() if issued is None else issued)
        return webhook_url(self.webhook.url, WEBHOOK_SECRET, sketch_id, stage, issued_at)

    def publish(self, step: Step, lifetime: float = 3600.0) -> None:
        """Publish a step as the functions do (signed), for Pub/Sub to push to the private door."""
        signed = message(step, WEBHOOK_SECRET, lifetime, time.time())
        with closing(KeptAlive(tls_context(), GOOGLE_TIMEOUT)) as http:
            PubSub(GoogleApi(http), self.project, base_url=self.pubsub.url).publish(TOPIC, [signed])

    def log_lines(self, message: str, sketch_id: str | None = None) -> list[dict[str, Any]]:
        """The webhook function's log lines (both doors) whose message starts with `message` (about
        `sketch_id`), as it wrote them."""
        return self.webhook.log_lines(message, sketch_id) + self.steps.log_lines(message, sketch_id)

    def wait_for_steps(self, sketch_id: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Wait until the webhook has finished `count` steps of the sketch (any outcome)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.log_lines("step done", sketch_id)
            if len(done) >= count:
                return done
            time.sleep(0.05)
        raise AssertionError(f"{count} step(s) of {sketch_id} not done in {timeout} s")

    def sweep(self) -> httpx.Response:
        """Run the recovery sweep, as Cloud Scheduler does (on the private door)."""
        return self.http.post(
            self.steps.url, params={"action": "sweep"}, headers={SWEEP_HEADER: sweep_token(WEBHOOK_SECRET)}
        )

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
        return Sketch.from_document(snapshot.to_dict()) if snapshot.exists else None

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

    def failed_after_its_still(self) -> Sketch:
        """A sketch whose Kling task failed, its still kept in the bucket; Novita idle again."""
        self.simulator.configure(fail_tasks={"kling": 1})
        failed = self.wait_for_status(self.create_sketch()["id"], "failed", timeout=30)
        assert failed.image_object and failed.video_task_id
        assert self.simulator.wait_idle(10)
        return failed

    def wait_for_status(self, sketch_id: str, status: str, timeout: float = 20.0) -> Sketch:
        return self.wait_for(sketch_id, lambda s: s.status.value == status, timeout)

    def kling_requests(self) -> int:
        return int(self.simulator.stats()["requests"]["kling"])

    def tasks_created(self, kind: str) -> int:
        return int(self.simulator.stats()["tasks_created"][kind])


@pytest.fixture(scope="session")
def stack_factory(emulators: Emulators) -> Iterator[Callable[..., Stack]]:
    started: list[Stack] = []

    def make(
        name: str = "stack", personality: str = "guide", sweep_every: float | None = None, **env: str
    ) -> Stack:
        """Both functions started with `env`, on a clean emulator and a simulator with `personality`;
        with `sweep_every`, the recovery sweep runs on that schedule, as Cloud Scheduler runs it."""
        stack = Stack(emulators, env, name, personality, sweep_every).start()
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
def reference_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """Novita as its public reference says it is: Seedream synchronous, Kling JSON, no Kling webhook,
    so every video arrives through recovery, which runs on a short schedule here."""
    return stack_factory(
        "reference", personality="reference", sweep_every=0.5, RECOVERY_INTERVAL_SECONDS="0.5"
    )


@pytest.fixture(params=["guide", "reference"])
def either_stack(
    request: pytest.FixtureRequest, default_stack: Stack, reference_stack: Stack
) -> Iterator[Stack]:
    """The default stack, once against each of the simulator's personalities."""
    chosen = default_stack if request.param == "guide" else reference_stack
    with chosen.clean().scheduled():
        yield chosen
    chosen.simulator.wait_idle(10)


@pytest.fixture(scope="session")
def quick_recovery_stack(stack_factory: Callable[..., Stack]) -> Stack:
    """A stack whose recovery runs on a short clock: checks every 0.5 s (and the sweep, while
    scheduled), 2 s leases, 3 s grace."""
    return stack_factory(
        "recovery",
        sweep_every=0.5,
        RECOVERY_INTERVAL_SECONDS="0.5",
        STEP_LEASE_SECONDS="2",
        UNKNOWN_OUTCOME_GRACE_SECONDS="3",
    )


@pytest.fixture
def recovery_stack(quick_recovery_stack: Stack) -> Iterator[Stack]:
    yield quick_recovery_stack.clean()
    quick_recovery_stack.simulator.wait_idle(10)

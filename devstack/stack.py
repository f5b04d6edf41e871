"""The whole machine on loopback: the Firestore (under the project's own firestore.rules), Pub/Sub,
Cloud Storage and Firebase Auth emulators, the Novita simulator (or a Novita named in the
environment), both functions, the sweep on a schedule, and the playground page."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.auth import AuthEmulator
from devstack.emulator import FirestoreEmulator
from devstack.functions import ROOT, FunctionServer
from devstack.playground import PageConfig, Playground
from devstack.processes import LOOPBACK, free_port
from devstack.pubsub import PubSubEmulator
from devstack.simulator import SimulatorProcess
from devstack.storage import StorageEmulator
from devstack.supervisor import Supervisor
from shared.core.config import VARIABLES
from shared.core.tokens import SWEEP_HEADER, sweep_token

# One project for Firestore, Pub/Sub, Storage and Firebase Auth: the Auth emulator's tokens name it
# as their audience, and a `demo-` project needs no credentials anywhere.
PROJECT = "demo-sketch-machine"
BUCKET = "sketch-machine-local-media"
COLLECTION = "sketches"
API_KEY = "local-novita-key"
WEBHOOK_SECRET = "local-webhook-secret"
# Cloud Scheduler calls the sweep every minute in production; locally it is the only way videos
# arrive when Novita sends no webhook (as its reference says of Kling), so it runs every few seconds.
SWEEP_EVERY_SECONDS = 3.0
LOCAL_DEFAULTS = {
    "RECOVERY_INTERVAL_SECONDS": "3",
    "MEDIA_URL_POLICY": "any",
}
RULES = ROOT / "firestore.rules"


class Scheduler:
    """Cloud Scheduler's part: POST the sweep action to the private door with its token, every few
    seconds."""

    def __init__(self, steps_url: str, secret: str, every: float) -> None:
        self._url = steps_url
        self._headers = {SWEEP_HEADER: sweep_token(secret)}
        self._every = every
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    def start(self) -> Scheduler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(10)

    def _loop(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(150.0, connect=2.0)) as http:
            while not self._stopping.wait(self._every):
                # A failed tick (the function starting or stopping) is simply followed by the next.
                with contextlib.suppress(httpx.HTTPError):
                    http.post(self._url, params={"action": "sweep"}, headers=self._headers)


@dataclass
class LocalStack:
    firestore: FirestoreEmulator
    auth: AuthEmulator
    pubsub: PubSubEmulator
    storage: StorageEmulator
    novita_base_url: str
    create: FunctionServer
    webhook: FunctionServer
    steps: FunctionServer
    playground: Playground
    env: dict[str, str]
    supervisor: Supervisor
    log_dir: Path
    simulator: SimulatorProcess | None = None
    pids: list[int] = field(default_factory=list)

    # An outage of each emulator, as a chaos run makes them (see `local_stack(restartable=True)`).

    def restart_firestore(self, downtime: float) -> None:
        self.firestore.restart(PROJECT, downtime, self.log_dir / "firestore-export")

    def restart_pubsub(self, downtime: float) -> None:
        self.pubsub.restart(downtime)

    def restart_storage(self, downtime: float) -> None:
        self.storage.restart(downtime)

    def describe(self) -> dict[str, Any]:
        """The one JSON line `run-local.sh --serve` prints once the stack is ready."""
        return {
            "stack": "ready",
            "create_sketch": self.create.url,
            "novita_webhook": self.webhook.url,
            "steps": self.steps.url,
            "project": PROJECT,
            "collection": self.env.get("SKETCHES_COLLECTION", COLLECTION),
            "firestore_emulator_host": self.firestore.host,
            "pubsub_emulator_host": self.pubsub.host,
            "storage_emulator_host": self.storage.url,
            "auth_emulator_host": self.auth.host,
            "bucket": BUCKET,
            "novita_base_url": self.novita_base_url,
            "novita": "simulator" if self.simulator is not None else "external",
            "simulator_control": f"{self.novita_base_url}/_sim/config"
            if self.simulator is not None
            else None,
            "auth_mode": self.env["AUTH_MODE"],
            "playground": self.playground.url,
            "pids": self.pids,
        }


def function_env(
    environ: dict[str, str], defaults: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """The functions' configuration: `defaults`, then every configuration variable set in `environ`
    (AUTH_MODE=none there still opens the API to anyone), then what the stack itself must decide
    (where its emulators are)."""
    passed_on = {name: environ[name] for name in VARIABLES if environ.get(name, "").strip()}
    return {**defaults, **passed_on, **overrides}


@contextmanager
def local_stack(
    log_dir: Path,
    *,
    personality: str,
    image_delay: float,
    video_delay: float,
    ttl: int,
    say: Callable[[str], None] = print,
    settings: Mapping[str, str] | None = None,
    restartable: bool = False,
) -> Iterator[LocalStack]:
    """Start every part of the stack; stop each one, whatever happens, on the way out.

    `settings`: configuration variables for the functions, as if set in the environment (where the
    emulators are is still the stack's own). `restartable`: each emulator can be restarted losing
    nothing it was told to keep: Firestore sits behind a gate (`devstack/gate.py`), Cloud Storage
    keeps its objects on disk under `log_dir`; Pub/Sub sits behind a gate too, so that nothing is
    published before its subscriptions are back, but loses the messages it held, as an outage may.
    """
    environ = {**os.environ, **(settings or {})}
    external = bool(environ.get("NOVITA_BASE_URL", "").strip() and environ.get("NOVITA_API_KEY", "").strip())
    with ExitStack() as stack:
        # The rules the browser's reads meet where the project is deployed; the functions' own
        # reads and writes (the emulator's `owner` token) bypass them, as a service account does.
        firestore = FirestoreEmulator(
            log_dir / "firestore-emulator.log", rules=RULES, gated=restartable
        ).start()
        stack.callback(firestore.stop)
        auth = AuthEmulator(log_dir / "auth-emulator.log", PROJECT).start()
        stack.callback(auth.stop)
        pubsub = PubSubEmulator(log_dir / "pubsub-emulator.log", gated=restartable).start()
        stack.callback(pubsub.stop)
        storage = StorageEmulator(
            log_dir / "storage-emulator.log",
            BUCKET,
            data_dir=log_dir / "storage-data" if restartable else None,
        ).start()
        stack.callback(storage.stop)
        simulator = None
        if external:
            novita_url, api_key = environ["NOVITA_BASE_URL"].strip(), environ["NOVITA_API_KEY"].strip()
        else:
            api_key = API_KEY
            simulator = SimulatorProcess(
                api_key,
                log_dir / "novita-simulator.log",
                image_delay=image_delay,
                video_delay=video_delay,
                personality=personality,
                ttl=ttl,
            ).start()
            stack.callback(simulator.stop)
            novita_url = simulator.url
        webhook_port = free_port()
        webhook_url = f"http://{LOOPBACK}:{webhook_port}/"
        secret = environ.get("WEBHOOK_SECRET", "").strip() or WEBHOOK_SECRET
        playground_port = free_port()
        # The page calls create_sketch from its own origin, by either loopback name.
        origins = f"http://{LOOPBACK}:{playground_port},http://localhost:{playground_port}"
        env = function_env(
            environ,
            {**LOCAL_DEFAULTS, "AUTH_MODE": "firebase", "CORS_ALLOWED_ORIGINS": origins},
            {
                "NOVITA_API_KEY": api_key,
                "NOVITA_BASE_URL": novita_url,
                "WEBHOOK_URL": webhook_url,
                "WEBHOOK_SECRET": secret,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                "FIRESTORE_EMULATOR_HOST": firestore.host,
                "PUBSUB_EMULATOR_HOST": pubsub.host,
                "STORAGE_EMULATOR_HOST": storage.url,
                "MEDIA_BUCKET": BUCKET,
                "FIREBASE_AUTH_EMULATOR_HOST": auth.host,
                "FIREBASE_PROJECT_ID": PROJECT,
            },
        )
        steps = FunctionServer(
            "novita_webhook",
            {**env, "WEBHOOK_DOOR": "private"},
            log_dir / "novita_webhook-steps.log",
            label="novita_webhook (private door: steps, dead letters, sweep)",
        )
        pubsub.create_topology(PROJECT, steps.url)
        servers = [
            FunctionServer(
                "novita_webhook",
                {**env, "WEBHOOK_DOOR": "public"},
                log_dir / "novita_webhook.log",
                port=webhook_port,
                label="novita_webhook (public door: Novita's deliveries)",
            ),
            steps,
            FunctionServer("create_sketch", env, log_dir / "create_sketch.log"),
        ]
        for server in servers:
            server.start()
            stack.callback(server.stop)
        webhook, steps, create = servers
        # Stopped before the functions are: a function stopping on purpose is not brought back.
        supervisor = Supervisor(servers, say).start()
        stack.callback(supervisor.stop)
        scheduler = Scheduler(steps.url, secret, SWEEP_EVERY_SECONDS).start()
        stack.callback(scheduler.stop)
        page = PageConfig(
            create_sketch=create.url,
            auth_emulator_host=auth.host,
            firestore_emulator_host=firestore.host,
            project=PROJECT,
            collection=env.get("SKETCHES_COLLECTION", COLLECTION),
        )
        playground = Playground(page, port=playground_port).start()
        stack.callback(playground.stop)
        started = (firestore.pid, auth.pid, pubsub.pid, storage.pid, webhook.pid, steps.pid, create.pid)
        pids = [pid for pid in (*started, simulator.pid if simulator else None) if pid]
        yield LocalStack(
            firestore,
            auth,
            pubsub,
            storage,
            novita_url,
            create,
            webhook,
            steps,
            playground,
            env,
            supervisor,
            log_dir,
            simulator,
            pids,
        )

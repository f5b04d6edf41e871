"""The whole machine on loopback: the Firestore, Pub/Sub and Cloud Storage emulators, the Novita
simulator (or a Novita named in the environment), both functions, the sweep on a schedule, and the
playground page."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.emulator import FirestoreEmulator
from devstack.functions import FunctionServer
from devstack.playground import Playground
from devstack.processes import LOOPBACK, free_port
from devstack.pubsub import PubSubEmulator
from devstack.simulator import SimulatorProcess
from devstack.storage import StorageEmulator
from shared.core.config import VARIABLES
from shared.core.tokens import sweep_token

PROJECT = "sketch-machine-local"
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
    "AUTH_MODE": "none",
    "CORS_ALLOWED_ORIGINS": "*",
}


class Scheduler:
    """Cloud Scheduler's part: POST the sweep action with its token, every few seconds."""

    def __init__(self, webhook_url: str, secret: str, every: float) -> None:
        self._url = webhook_url
        self._headers = {"Authorization": f"Bearer {sweep_token(secret)}"}
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
    pubsub: PubSubEmulator
    storage: StorageEmulator
    novita_base_url: str
    create: FunctionServer
    webhook: FunctionServer
    playground: Playground
    env: dict[str, str]
    simulator: SimulatorProcess | None = None
    pids: list[int] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The one JSON line `run-local.sh --serve` prints once the stack is ready."""
        return {
            "stack": "ready",
            "create_sketch": self.create.url,
            "novita_webhook": self.webhook.url,
            "project": PROJECT,
            "collection": self.env.get("SKETCHES_COLLECTION", COLLECTION),
            "firestore_emulator_host": self.firestore.host,
            "pubsub_emulator_host": self.pubsub.host,
            "storage_emulator_host": self.storage.url,
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


def function_env(environ: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The functions' configuration: the local defaults, then every configuration variable set in
    `environ`, then what the stack itself must decide (where its emulators are)."""
    passed_on = {name: environ[name] for name in VARIABLES if environ.get(name, "").strip()}
    return {**LOCAL_DEFAULTS, **passed_on, **overrides}


@contextmanager
def local_stack(
    log_dir: Path, *, personality: str, image_delay: float, video_delay: float, ttl: int
) -> Iterator[LocalStack]:
    """Start every part of the stack; stop each one, whatever happens, on the way out."""
    environ = dict(os.environ)
    external = bool(environ.get("NOVITA_BASE_URL", "").strip() and environ.get("NOVITA_API_KEY", "").strip())
    with ExitStack() as stack:
        firestore = FirestoreEmulator(log_dir / "firestore-emulator.log").start()
        stack.callback(firestore.stop)
        pubsub = PubSubEmulator(log_dir / "pubsub-emulator.log").start()
        stack.callback(pubsub.stop)
        storage = StorageEmulator(log_dir / "storage-emulator.log", BUCKET).start()
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
        env = function_env(
            environ,
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
            },
        )
        pubsub.create_topology(PROJECT, webhook_url)
        webhook = FunctionServer(
            "novita_webhook", env, log_dir / "novita_webhook.log", port=webhook_port
        ).start()
        stack.callback(webhook.stop)
        create = FunctionServer("create_sketch", env, log_dir / "create_sketch.log").start()
        stack.callback(create.stop)
        scheduler = Scheduler(webhook_url, secret, SWEEP_EVERY_SECONDS).start()
        stack.callback(scheduler.stop)
        playground = Playground(create.url).start()
        stack.callback(playground.stop)
        pids = [p for p in (firestore.pid, pubsub.pid, storage.pid, webhook.pid, create.pid) if p]
        if simulator is not None and simulator.pid:
            pids.append(simulator.pid)
        yield LocalStack(
            firestore, pubsub, storage, novita_url, create, webhook, playground, env, simulator, pids
        )

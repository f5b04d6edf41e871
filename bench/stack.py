"""The real stack for the benchmark, on loopback: the Firestore, Pub/Sub and Cloud Storage emulators,
the Novita simulator and the media host as their own processes, and deployments of the functions
(each a Google Cloud project of its own, with its own steps' topology) started at will."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from datetime import timedelta
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.measure import cpu_seconds
from devstack.emulator import FirestoreEmulator
from devstack.functions import ROOT, FunctionServer
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until
from devstack.pubsub import PubSubEmulator
from devstack.simulator import SimulatorProcess
from devstack.stack import Scheduler
from devstack.storage import StorageEmulator
from novita_simulator.config import SimulatorConfig
from shared.core.config import Door
from shared.core.http import KeptAlive, tls_context
from shared.core.tokens import SWEEP_HEADER, sweep_token, webhook_url
from shared.google import firestore as firestore_rest
from shared.google.api import TIMEOUT as GOOGLE_TIMEOUT
from shared.google.api import GoogleApi
from shared.google.storage import CHUNK_BYTES
from shared.pipeline.queue import Step, message
from shared.pipeline.topology import (
    DEAD_LETTER_SUBSCRIPTION,
    STEP_ACTION,
    SUBSCRIPTION,
    SWEEP_ACTION,
)
from shared.sketch.model import Sketch, Stage, Status, new_sketch_id, utcnow
from shared.sketch.request import CreateSketchRequest
from shared.sketch.store import SketchStore

API_KEY = "bench-novita-key"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
BUCKET = "sketch-machine-bench-media"
COLLECTION = "sketches"
BENCH = ROOT / "bench"
INSTRUMENT = BENCH / "instrument"
# Put first on a function's PYTHONPATH with `shipped_env`: it imports only what deploy.sh ships.
SHIPPED = BENCH / "deployed"
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# Requests one instance serves at once (gunicorn threads): deploy.sh's --concurrency.
INSTANCE_CONCURRENCY = 32
# How long a step the bench pushes may still be done after it is signed (the functions give theirs
# MAX_SKETCH_AGE_SECONDS): longer than any flow of the bench, so that none expires on the way.
STEP_LIFETIME = 3600.0
# The process the steps run in: the private door's gunicorn worker (Deployment.pids names it so).
WORKER = "private door worker"
# Firestore calls made against the emulator before any figure is taken. Its JVM compiles its hot
# paths over the first few thousand: a sketch's read or write took it 4-6 ms when fresh and 1.2-1.5
# ms after about 5,000. Firestore itself is no fresh JVM, so the figures are taken on a warm one.
EMULATOR_WARMUP_OPS = 6000
# Then rounds of this many more, at most WARMUP_MORE_ROUNDS, until a read costs the emulator no
# more than 15% less CPU than after the round before: 6,000 calls from 4 threads left a read at 3-4 ms of its
# CPU here, 2,100 more at 1.5 ms.
WARMUP_ROUND_OPS = 1500
WARMUP_MORE_ROUNDS = 6
WARMUP_PROBE_READS = 200
# The simulator as it starts (the bench gives it no flags): Novita as it plays by default, webhooks
# and all.
SIMULATOR_DEFAULTS: dict[str, Any] = SimulatorConfig().model_dump(mode="json")
# The simulator as the figures that deliver their own webhooks want it: tasks are accepted and
# answered, produce no media and send no webhook, so that its own work stays out of the figures.
QUIET: dict[str, Any] = {
    "drop_webhooks": True,
    "image_delay": 0.0,
    "video_delay": 0.0,
    "seedream_delay": 0.0,
    "fail_tasks": {"txt2img": 10**9, "kling": 10**9},
}


@cache
def not_shipped() -> str:
    """The top-level modules of this venv that only packages deploy.sh does not ship provide (it
    ships requirements.txt, and what those require), comma-separated: bench/deployed refuses them."""
    lines = (line.partition("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    wanted = [line for line in lines if line]
    shipped: set[str] = set()
    while wanted:
        requirement = Requirement(wanted.pop())
        name = canonicalize_name(requirement.name)
        if name in shipped or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        shipped.add(name)
        wanted += metadata.requires(name) or []
    return ",".join(
        sorted(
            module
            for module, packages in metadata.packages_distributions().items()
            if module not in sys.stdlib_module_names
            and not shipped & {canonicalize_name(package) for package in packages}
        )
    )


def shipped_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a process with SHIPPED first on its path: it imports only what deploy.sh ships."""
    return {**env, "BENCH_NOT_SHIPPED": not_shipped()}


class Deployment:
    """The functions of one Google Cloud project as the project deploys them, wired to the shared
    emulators and simulator: `novita_webhook` twice, its public door (Novita's deliveries, at
    WEBHOOK_URL) and its private door (the steps' push subscriptions and the sweep), and
    `create_sketch`; with the steps' topics and push subscriptions made for the private door
    (devstack's own topology).

    `pushes=False` makes the topics only: what the functions publish is then kept by no
    subscription, and every step is one the bench pushes itself (the cold start, the soak).
    """

    def __init__(
        self,
        stack: Stack,
        name: str,
        *,
        env: dict[str, str] | None = None,
        trace: Path | None = None,
        create: bool = True,
        create_env: dict[str, str] | None = None,
        steps_source: Path | None = None,
        pushes: bool = True,
    ) -> None:
        self.stack = stack
        self.pushes = pushes
        logs = stack.log_dir / name
        # A Cloud Storage emulator of its own: the emulator rewrites the metadata of every object it
        # holds on each upload, so the objects other sections left would make each upload slower.
        self.storage = StorageEmulator(logs / "storage-emulator.log", BUCKET)
        self.project = f"bench-{name}-{uuid.uuid4().hex[:6]}"
        port = free_port()
        self.trace = trace
        self.env = {
            "NOVITA_API_KEY": API_KEY,
            "NOVITA_BASE_URL": stack.simulator.url,
            "WEBHOOK_URL": f"http://{LOOPBACK}:{port}/",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "FIRESTORE_EMULATOR_HOST": stack.firestore.host,
            "PUBSUB_EMULATOR_HOST": stack.pubsub.host,
            "STORAGE_EMULATOR_HOST": self.storage.url,
            "MEDIA_BUCKET": BUCKET,
            "MEDIA_URL_POLICY": "any",
            "AUTH_MODE": "none",
            "THREADS": str(INSTANCE_CONCURRENCY),
            **(env or {}),
        }
        extra_path: list[Path] = []
        if trace is not None:
            trace.unlink(missing_ok=True)  # this deployment's lines only
            self.env["BENCH_TRACE"] = str(trace)
            extra_path.append(INSTRUMENT)
        self.webhook = FunctionServer(
            "novita_webhook",
            self.door_env("public"),
            logs / f"novita_webhook-public-{port}.log",
            port=port,
            pythonpath=extra_path,
            label="novita_webhook (public door)",
        )
        steps_port = free_port()
        self.steps = FunctionServer(
            "novita_webhook",
            self.door_env("private"),
            logs / f"novita_webhook-private-{steps_port}.log",
            port=steps_port,
            source=steps_source,
            pythonpath=extra_path,
            label="novita_webhook (private door)",
        )
        self.create: FunctionServer | None = None
        if create:
            create_port = free_port()
            self.create = FunctionServer(
                "create_sketch",
                {**self.env, **(create_env or {})},
                logs / f"create_sketch-{create_port}.log",
                port=create_port,
                pythonpath=extra_path,
            )
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self.google = KeptAlive(tls_context(), GOOGLE_TIMEOUT)
        self.db = firestore_rest.Firestore(GoogleApi(self.google), self.project, base_url=stack.firestore.url)
        self.store = SketchStore(self.db, COLLECTION)
        self.scheduler: Scheduler | None = None

    def door_env(self, door: Door) -> dict[str, str]:
        """The environment of `novita_webhook` deployed as `door` (public or private)."""
        return {**self.env, "WEBHOOK_DOOR": door}

    @property
    def servers(self) -> list[FunctionServer]:
        return [self.steps, self.webhook, *([self.create] if self.create is not None else [])]

    def start(self, *, sweep_every: float | None = None) -> Deployment:
        self.storage.start()
        # What the bench deletes is gone at once (a bucket may turn soft delete off): the emulator
        # keeps soft-deleted objects, and rewrites its record of all it keeps on every upload.
        self.http.patch(
            f"{self.storage.url}/storage/v1/b/{BUCKET}",
            json={"softDeletePolicy": {"retentionDurationSeconds": "0"}},
        ).raise_for_status()
        if self.pushes:
            self.stack.pubsub.create_topology(self.project, self.steps.url)
        else:
            self.stack.pubsub.create_topics(self.project)
        for server in self.servers:
            server.start()
        if sweep_every is not None:
            self.scheduler = Scheduler(self.steps.url, WEBHOOK_SECRET, sweep_every).start()
        return self

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        for server in reversed(self.servers):
            server.stop()
        if self.pushes:
            self.purge()
        self.storage.stop()
        self.google.close()
        self.http.close()

    def ended(self) -> dict[str, int]:
        """The functions whose process has ended, by name, with its exit code (-9: killed)."""
        codes = {server.name: server.process.poll() if server.process else None for server in self.servers}
        return {name: code for name, code in codes.items() if code is not None}

    def pids(self) -> dict[str, int]:
        """The stack's long-running processes with this deployment's: its storage, the private door's
        worker (where the steps and the sweep run)."""
        pids = {**self.stack.pids(), WORKER: self.steps.worker_pid()}
        if self.storage.pid:
            pids["Storage emulator"] = self.storage.pid
        return pids

    # ------------------------------------------------------------------------- Cloud Storage

    def upload(self, client: httpx.Client, name: str, data: bytes, content_type: str) -> None:
        """Plain httpx: a resumable upload of `data` to the emulator in the project's chunks."""
        started = client.post(
            f"{self.storage.url}/upload/storage/v1/b/{BUCKET}/o",
            params={"uploadType": "resumable", "name": name, "ifGenerationMatch": "0"},
            headers={"X-Upload-Content-Type": content_type},
            json={"contentType": content_type, "metadata": {"sketch_id": "bench"}},
        )
        started.raise_for_status()
        session = started.headers["Location"]
        offset = 0
        # The project's chunks: all but the last exactly CHUNK_BYTES, the last with the total.
        while len(data) - offset > CHUNK_BYTES:
            end = offset + CHUNK_BYTES - 1
            answer = client.put(
                session, content=data[offset : end + 1], headers={"Content-Range": f"bytes {offset}-{end}/*"}
            )
            if answer.status_code != 308:
                raise RuntimeError(f"chunk answered {answer.status_code}: {answer.text[:200]}")
            offset = end + 1
        last = f"bytes {offset}-{len(data) - 1}/{len(data)}"
        answer = client.put(session, content=data[offset:], headers={"Content-Range": last})
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"last chunk answered {answer.status_code}: {answer.text[:200]}")

    def stored_object(self, name: str) -> dict[str, Any] | None:
        return self.storage.object(name)

    def delete_objects(self, names: list[str]) -> None:
        """Delete objects for good, so that the emulator's cost per upload stays that of a small
        bucket."""
        for name in names:
            answer = self.http.delete(f"{self.storage.url}/storage/v1/b/{BUCKET}/o/{quote(name, safe='')}")
            if answer.status_code not in (204, 404):
                answer.raise_for_status()

    def purge(self) -> None:
        """Drop every step still queued for this deployment."""
        self.stack.pubsub.purge(self.project, SUBSCRIPTION, DEAD_LETTER_SUBSCRIPTION)

    # ------------------------------------------------------------------------------ sketches

    def create_sketch(self, prompt: str, client: httpx.Client | None = None) -> dict[str, Any]:
        assert self.create is not None
        response = (client or self.http).post(self.create.url, json={"prompt": prompt})
        if response.status_code != 202:
            raise RuntimeError(f"create_sketch answered {response.status_code}: {response.text[:300]}")
        return dict(response.json())

    def put_sketch(self, prompt: str, status: Status, **fields: Any) -> Sketch:
        """Write a sketch straight into Firestore, as the functions would have left it."""
        now = utcnow()
        sketch = Sketch.new(
            new_sketch_id(),
            CreateSketchRequest(prompt=prompt),
            now,
            None,
            now + timedelta(hours=1),  # no recovery look is due while the bench works on it
            "task",
        )
        known = {"status": status, "submission_unknown": None, "submission_unknown_since": None}
        return self.store.create(sketch.replace(**known, **fields))[0]

    def image_complete(self, prompt: str, image_url: str) -> Sketch:
        """A sketch whose still is made, waiting for its chain step."""
        expires = utcnow() + timedelta(hours=1)
        return self.put_sketch(
            prompt,
            Status.IMAGE_COMPLETE,
            image_task_id=f"bench-image-{uuid.uuid4().hex[:12]}",
            image_url=image_url,
            image_url_expires_at=expires,
            novita_image_url=image_url,
            novita_image_url_expires_at=expires,
            progress=30,
        )

    def video_ready(self, prompt: str, video_url: str) -> Sketch:
        """A sketch whose video is made, waiting for its copy step."""
        expires = utcnow() + timedelta(hours=1)
        return self.put_sketch(
            prompt,
            Status.VIDEO_PENDING,
            image_task_id=f"bench-image-{uuid.uuid4().hex[:12]}",
            video_task_id=f"bench-video-{uuid.uuid4().hex[:12]}",
            novita_video_url=video_url,
            novita_video_url_expires_at=expires,
            progress=90,
        )

    def sketch(self, sketch_id: str) -> Sketch | None:
        return self.store.get(sketch_id)

    def count(self, status: str) -> int:
        """Sketches of this deployment in `status` (Firestore's count aggregation)."""
        url = f"{self.stack.firestore.url}/v1/projects/{self.project}/databases/(default)/documents"
        where = {"field": {"fieldPath": "status"}, "op": "EQUAL", "value": {"stringValue": status}}
        query = {"from": [{"collectionId": COLLECTION}], "where": {"fieldFilter": where}}
        aggregations = [{"alias": "n", "count": {}}]
        body = {"structuredAggregationQuery": {"structuredQuery": query, "aggregations": aggregations}}
        answer = self.http.post(
            f"{url}:runAggregationQuery", json=body, headers={"Authorization": "Bearer owner"}
        )
        answer.raise_for_status()
        return int(answer.json()[0]["result"]["aggregateFields"]["n"]["integerValue"])

    # ------------------------------------------------------------------------------- requests

    def push_body(self, step: Step) -> bytes:
        """The body Pub/Sub's push subscription would send for `step`, signed now as the functions
        sign what they publish."""
        signed = message(step, WEBHOOK_SECRET, STEP_LIFETIME, time.time())
        return json.dumps(
            {
                "message": {
                    "data": base64.b64encode(signed.data).decode("ascii"),
                    "attributes": dict(signed.attributes),
                    "messageId": uuid.uuid4().hex,
                },
                "subscription": f"projects/{self.project}/subscriptions/{SUBSCRIPTION}",
            }
        ).encode()

    def push(
        self,
        step: Step,
        client: httpx.Client | None = None,
        headers: dict[str, str] | None = None,
        url: str | None = None,
    ) -> tuple[float, httpx.Response]:
        """POST `step` to the private door's `?action=step` (or to `url`'s), as Pub/Sub pushes it:
        seconds to the answer, and it."""
        body = self.push_body(step)
        target = f"{url or self.steps.url}?action={STEP_ACTION}"
        t0 = time.perf_counter()
        response = (client or self.http).post(
            target, content=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        return time.perf_counter() - t0, response

    def webhook_url(self, sketch_id: str, stage: Stage = "image", base: str | None = None) -> str:
        """The URL registered with Novita for the sketch's `stage` task, issued now (on the public
        door, or on `base`)."""
        return webhook_url(base or self.webhook.url, WEBHOOK_SECRET, sketch_id, stage, int(time.time()))

    def deliver(
        self,
        sketch_id: str,
        event: dict[str, Any],
        client: httpx.Client | None = None,
        url: str | None = None,
    ) -> tuple[float, httpx.Response]:
        """POST `event` to the sketch's webhook URL on the public door (or on `url`), as Novita does:
        seconds to the answer, and it."""
        body = json.dumps(event).encode()
        target = self.webhook_url(sketch_id, base=url)
        t0 = time.perf_counter()
        response = (client or self.http).post(
            target, content=body, headers={"Content-Type": "application/json"}
        )
        return time.perf_counter() - t0, response

    def sweep(self, client: httpx.Client | None = None) -> httpx.Response:
        """The recovery sweep, on the private door, as Cloud Scheduler calls it."""
        return (client or self.http).post(
            self.steps.url,
            params={"action": SWEEP_ACTION},
            headers={SWEEP_HEADER: sweep_token(WEBHOOK_SECRET)},
            timeout=httpx.Timeout(150.0, connect=5.0),
        )

    def log_lines(
        self, text: str, sketch_id: str | None = None, server: FunctionServer | None = None
    ) -> list[dict[str, Any]]:
        """The JSON log lines of `server` (by default both doors of the webhook) whose message starts
        with `text` (about `sketch_id`)."""
        sources = [server] if server is not None else [self.webhook, self.steps]
        return [line for source in sources for line in source.log_lines(text, sketch_id)]


class Stack:
    def __init__(self, log_dir: Path, media_dir: Path) -> None:
        self.log_dir = log_dir
        self.media_dir = media_dir
        self.firestore = FirestoreEmulator(log_dir / "firestore-emulator.log")
        self.pubsub = PubSubEmulator(log_dir / "pubsub-emulator.log")
        self.simulator = SimulatorProcess(API_KEY, log_dir / "novita-simulator.log")
        self.media_port = free_port()
        self.media_url = f"http://{LOOPBACK}:{self.media_port}"
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self._media: subprocess.Popen[bytes] | None = None
        self._deployments: list[Deployment] = []

    # ----------------------------------------------------------------------------- processes

    def start(self) -> Stack:
        with ThreadPoolExecutor(2) as pool:  # the JVMs take seconds each to come up
            list(pool.map(lambda p: p.start(), (self.firestore, self.pubsub)))
        self.simulator.start()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "bench.media_server", "--port", str(self.media_port)]
        self._media = start(
            [*cmd, "--dir", str(self.media_dir)], env=env, log_path=self.log_dir / "media-host.log", cwd=ROOT
        )
        wait_until(answers(f"{self.media_url}/_stats"), 60, "media host", self._media)
        return self

    def stop(self) -> None:
        for deployment in reversed(self._deployments):
            deployment.stop()
        if self._media is not None:
            stop(self._media)
        self.simulator.stop()
        for emulator in (self.pubsub, self.firestore):
            emulator.stop()
        self.http.close()

    def deploy(self, name: str, *, sweep_every: float | None = None, **options: Any) -> Deployment:
        deployment = Deployment(self, name, **options)
        self._deployments.append(deployment)
        return deployment.start(sweep_every=sweep_every)

    def retire(self, deployment: Deployment) -> None:
        deployment.stop()
        self._deployments.remove(deployment)

    def pids(self) -> dict[str, int]:
        """The stack's long-running processes shared by every deployment, by name."""
        pids = {
            "Firestore emulator": self.firestore.pid,
            "Pub/Sub emulator": self.pubsub.pid,
            "Novita simulator": self.simulator.pid,
            "media host": self._media.pid if self._media else None,
        }
        return {name: pid for name, pid in pids.items() if pid}

    def warm_emulator(
        self, operations: int = EMULATOR_WARMUP_OPS, threads: int = 4
    ) -> tuple[float, list[float]]:
        """Create, read and update sketches in a scratch project through the functions' own store,
        `operations` Firestore calls in all, then more in rounds until a read's CPU cost in the
        emulator stops falling (its JIT goes on compiling well past the first rounds). The seconds
        it took, and the emulator's CPU per read after each round."""
        started = time.monotonic()
        request = CreateSketchRequest(prompt="bench emulator warm-up")

        def work(count: int) -> None:
            with closing(KeptAlive(tls_context(), GOOGLE_TIMEOUT)) as http:
                db = firestore_rest.Firestore(GoogleApi(http), "bench-warmup", base_url=self.firestore.url)
                store = SketchStore(db, COLLECTION)
                for _ in range(count):
                    now = utcnow()
                    sketch, _ = store.create(Sketch.new(new_sketch_id(), request, now, None, now, "task"))
                    read = store.get(sketch.id)
                    store.mutate(sketch.id, lambda s: {"image_task_id": "warm-up"}, known=read)

        def read_cost() -> float:
            with closing(KeptAlive(tls_context(), GOOGLE_TIMEOUT)) as http:
                db = firestore_rest.Firestore(GoogleApi(http), "bench-warmup", base_url=self.firestore.url)
                store = SketchStore(db, COLLECTION)
                now = utcnow()
                sketch, _ = store.create(Sketch.new(new_sketch_id(), request, now, None, now, "task"))
                assert self.firestore.pid is not None
                cpu0 = cpu_seconds(self.firestore.pid)
                for _ in range(WARMUP_PROBE_READS):
                    store.get(sketch.id)
                return (cpu_seconds(self.firestore.pid) - cpu0) / WARMUP_PROBE_READS

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, [operations // (3 * threads)] * threads))
        costs = [read_cost()]
        while len(costs) <= WARMUP_MORE_ROUNDS:
            work(WARMUP_ROUND_OPS // 3)
            costs.append(read_cost())
            if costs[-1] >= 0.85 * costs[-2]:  # no longer falling
                break
        return time.monotonic() - started, costs

    # ----------------------------------------------------------------------------- simulator

    def configure(self, **changes: Any) -> None:
        """Change some of the simulator's switches, keeping the rest as they are."""
        self.simulator.configure(**changes)

    def simulate(self, **changes: Any) -> None:
        """The simulator at its defaults but for `changes`, whatever the flow before had set."""
        self.configure(**{**SIMULATOR_DEFAULTS, **changes})

    def quiet(self, **changes: Any) -> None:
        self.simulate(**{**QUIET, **changes})

    def sim_stats(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.simulator.url}/_sim/stats").json())

    def wait_sim_idle(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self.sim_stats()["pending"] == 0, timeout, "simulator idle")

    # ---------------------------------------------------------------------------- media host

    def media(self, name: str, rate: int | None = None) -> str:
        """The media host's URL of `name`; with `rate`, served at that many bytes per second."""
        return f"{self.media_url}/{name}" + (f"?rate={rate}" if rate else "")

    def media_stats(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.media_url}/_stats").json())

    def wait_media_idle(self, quiet: float, timeout: float = 120.0) -> None:
        """Wait until nothing has downloaded from the media host for `quiet` seconds in a row."""
        idle_since = time.monotonic()

        def idle() -> bool:
            nonlocal idle_since
            if self.media_stats()["active"]:
                idle_since = time.monotonic()
                return False
            return time.monotonic() - idle_since >= quiet

        wait_until(idle, timeout, "media host idle")


def image_success(task_id: str, image_url: str) -> dict[str, Any]:
    """The webhook Novita sends when a text-to-image task succeeded (integration-guide layout)."""
    return {
        "event_type": "ASYNC_TASK_RESULT",
        "payload": {
            "task": {
                "task_id": task_id,
                "task_type": "TXT_TO_IMG",
                "status": "TASK_STATUS_SUCCEED",
                "reason": "",
            },
            "extra": {"images": [{"image_url": image_url, "image_type": "jpeg", "image_url_ttl": 3600}]},
        },
    }


def kling_fields(sketch: Sketch, video_webhook: str) -> dict[str, str]:
    """The Kling form fields the project sends in the guide's form (shared/novita/client.py)."""
    return {
        "prompt": sketch.video_prompt,
        "negative_prompt": sketch.negative_prompt,
        "duration": str(sketch.duration),
        "cfg_scale": "0.5",
        "extra": json.dumps({"webhook": {"url": video_webhook}}),
    }


@contextmanager
def running_stack(log_dir: Path, media_dir: Path) -> Iterator[Stack]:
    stack = Stack(log_dir, media_dir)
    with ExitStack() as cleanup:
        cleanup.callback(stack.stop)
        yield stack.start()

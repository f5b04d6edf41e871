"""The real stack for the benchmark: the Firestore emulator, the Novita simulator and the media
host as their own processes, and functions-framework processes started and stopped at will."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore

from devstack.emulator import FirestoreEmulator
from devstack.functions import ROOT, FunctionServer
from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until
from devstack.simulator import SimulatorProcess
from shared import firestore_rest
from shared.sketch import CreateSketchRequest, Sketch, new_sketch_id, utcnow
from shared.sketch_store import SketchStore
from shared.webhook_tokens import webhook_url

PROJECT = "sketch-machine-bench"
API_KEY = "bench-novita-key"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
KLING_PATH = "/v3/async/kling-v2.1-i2v-master"
BENCH = ROOT / "bench"
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# Requests one instance serves at once (gunicorn threads): deploy.sh's default --concurrency.
INSTANCE_CONCURRENCY = 32
# Firestore calls made against the emulator before any figure is taken. Its JVM compiles its hot
# paths over the first few thousand: a sketch's read or write took it 4-6 ms when fresh and 1.2-1.5
# ms after about 5,000. Firestore itself is no fresh JVM, so the figures are taken on a warm one.
EMULATOR_WARMUP_OPS = 6000


def function_server(
    target: str,
    env: dict[str, str],
    log_dir: Path,
    *,
    port: int | None = None,
    source: Path | None = None,
    pythonpath: Sequence[Path] = (),
) -> FunctionServer:
    """A function process whose log is named after its source folder and port."""
    port = port or free_port()
    folder = source.parent.name if source is not None else target
    return FunctionServer(
        target, env, log_dir / f"{folder}-{port}.log", port=port, source=source, pythonpath=pythonpath
    )


class Stack:
    def __init__(self, log_dir: Path, media_dir: Path) -> None:
        self.log_dir = log_dir
        self.media_dir = media_dir
        self.emulator = FirestoreEmulator(log_dir / "firestore-emulator.log")
        self.simulator = SimulatorProcess(API_KEY, log_dir / "novita-simulator.log")
        self.sim_url = self.simulator.url
        self.media_port = free_port()
        self.media_url = f"http://{LOOPBACK}:{self.media_port}"
        self.http = httpx.Client(timeout=HTTP_TIMEOUT)
        self._procs: list[subprocess.Popen[bytes]] = []
        self.create: FunctionServer | None = None
        self.webhook: FunctionServer | None = None
        self.db: firestore.Client | None = None

    # ----------------------------------------------------------------------------- processes

    def env(self, webhook_port: int) -> dict[str, str]:
        return {
            "NOVITA_API_KEY": API_KEY,
            "NOVITA_BASE_URL": self.sim_url,
            "WEBHOOK_URL": f"http://{LOOPBACK}:{webhook_port}/",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            "FIRESTORE_EMULATOR_HOST": self.emulator.host,
            "MEDIA_URL_POLICY": "any",
            "AUTH_MODE": "none",
            "THREADS": str(INSTANCE_CONCURRENCY),
        }

    def start(self) -> Stack:
        self.emulator.start()
        os.environ["FIRESTORE_EMULATOR_HOST"] = self.emulator.host
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.simulator.start()
        media = start(
            [
                sys.executable,
                "-m",
                "bench.media_server",
                "--port",
                str(self.media_port),
                "--dir",
                str(self.media_dir),
            ],
            env=env,
            log_path=self.log_dir / "media-server.log",
            cwd=ROOT,
        )
        self._procs.append(media)
        wait_until(answers(f"{self.media_url}/"), 30, "media server", media)
        self.db = firestore.Client(project=PROJECT)
        webhook_port = free_port()
        self.webhook = function_server(
            "novita_webhook", self.env(webhook_port), self.log_dir, port=webhook_port
        ).start()
        self.create = function_server("create_sketch", self.env(webhook_port), self.log_dir).start()
        return self

    def warm_emulator(self, operations: int = EMULATOR_WARMUP_OPS, threads: int = 4) -> float:
        """Create, read and update sketches in a scratch collection through the functions' own store,
        `operations` Firestore calls in all; the seconds it took."""
        started = time.monotonic()
        request = CreateSketchRequest(prompt="bench emulator warm-up")

        def work(count: int) -> None:
            with httpx.Client(timeout=firestore_rest.TIMEOUT) as http:
                store = SketchStore(
                    firestore_rest.Firestore(http, PROJECT, base_url=self.emulator.url), "bench_warmup"
                )
                for _ in range(count):
                    sketch = store.create(Sketch.new(new_sketch_id(), request, utcnow(), None, utcnow()))
                    read = store.get(sketch.id)
                    store.mutate(
                        sketch.id,
                        lambda s: {"image_task_id": "warm-up", "chain_lease_owner": "bench"},
                        known=read,
                    )

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, [operations // (3 * threads)] * threads))
        return time.monotonic() - started

    def stop(self) -> None:
        for fn in (self.create, self.webhook):
            if fn is not None:
                fn.stop()
        for proc in reversed(self._procs):
            stop(proc)
        self.simulator.stop()
        self.emulator.stop()
        self.http.close()

    def pids(self) -> dict[str, int]:
        """The stack's long-running processes (the webhook as its serving worker)."""
        assert self.simulator.pid is not None
        pids = {"Novita simulator": self.simulator.pid, "media host": self._procs[0].pid}
        emulator = getattr(self.emulator, "_proc", None)
        if emulator is not None:
            pids["Firestore emulator"] = emulator.pid
        if self.webhook is not None:
            pids["webhook"] = self.webhook.worker_pid()
        return pids

    # ----------------------------------------------------------------------------- simulator

    def configure(self, **changes: Any) -> None:
        self.http.post(f"{self.sim_url}/_sim/config", json=changes).raise_for_status()

    def sim_stats(self) -> dict[str, Any]:
        return dict(self.http.get(f"{self.sim_url}/_sim/stats").json())

    def wait_sim_idle(self, timeout: float = 30.0) -> None:
        wait_until(lambda: self.sim_stats()["pending"] == 0, timeout, "simulator idle")

    def quiet_simulator(self) -> None:
        """Tasks are accepted and answered, but produce no media and send no webhook: the bench
        delivers the webhooks itself, and the simulator's own work stays out of the figures."""
        self.configure(
            drop_webhooks=True,
            image_delay=0.0,
            video_delay=0.0,
            fail_tasks={"txt2img": 10**9, "kling": 10**9},
            http_errors={},
            deliveries=1,
        )

    def live_simulator(self) -> None:
        """Novita as it behaves: stills, clips and webhooks, quickly."""
        self.configure(
            drop_webhooks=False,
            image_delay=0.2,
            video_delay=0.3,
            fail_tasks={},
            http_errors={},
            deliveries=1,
            image_mode="normal",
            webhook_retry_backoff=0.2,
        )

    # ------------------------------------------------------------------------------ sketches

    def create_sketch(self, prompt: str, create_url: str | None = None) -> dict[str, Any]:
        assert self.create is not None
        response = self.http.post(create_url or self.create.url, json={"prompt": prompt})
        if response.status_code != 202:
            raise RuntimeError(f"create_sketch answered {response.status_code}: {response.text[:300]}")
        return dict(response.json())

    def stored(self, sketch_id: str) -> dict[str, Any] | None:
        assert self.db is not None
        snapshot = self.db.collection("sketches").document(sketch_id).get()
        return snapshot.to_dict() if snapshot.exists else None

    def statuses(self, sketch_ids: list[str]) -> dict[str, str | None]:
        assert self.db is not None
        refs = [self.db.collection("sketches").document(i) for i in sketch_ids]
        found = {s.id: (s.to_dict() or {}).get("status") for s in self.db.get_all(refs) if s.exists}
        return {i: found.get(i) for i in sketch_ids}

    def webhook_url(self, base: str, sketch_id: str, stage: str = "image") -> str:
        return webhook_url(base, WEBHOOK_SECRET, sketch_id, stage)  # type: ignore[arg-type]

    def media(self, name: str) -> str:
        return f"{self.media_url}/{name}"


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


@contextmanager
def running_stack(log_dir: Path, media_dir: Path) -> Iterator[Stack]:
    stack = Stack(log_dir, media_dir)
    with ExitStack() as cleanup:
        cleanup.callback(stack.stop)
        yield stack.start()

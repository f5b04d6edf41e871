"""The local run: the whole stack on loopback, and a sketch from prompt to video.

    python -m devstack run "a walrus giving a TED talk about spoons"
    python -m devstack serve

`run` starts the Firestore emulator, the Novita simulator and both functions, creates a sketch,
prints each status change with its time, saves the still and the video, and stops everything.
`serve` starts the same stack and keeps it up for a frontend developer until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from google.cloud import firestore

from devstack.emulator import FirestoreEmulator
from devstack.functions import ROOT, FunctionServer
from devstack.processes import LOOPBACK, free_port
from devstack.simulator import SimulatorProcess

PROJECT = "sketch-machine-local"
API_KEY = "local-novita-key"
WEBHOOK_SECRET = "local-webhook-secret"
FINAL = ("complete", "failed")


@dataclass
class LocalStack:
    emulator: FirestoreEmulator
    simulator_url: str
    create: FunctionServer
    webhook: FunctionServer
    auth_mode: str


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def local_stack(log_dir: Path, *, image_delay: float, video_delay: float) -> Iterator[LocalStack]:
    """Start every process of the stack; stop each one, whatever happens, on the way out."""
    emulator = FirestoreEmulator(log_dir / "firestore-emulator.log")
    simulator = SimulatorProcess(
        API_KEY, log_dir / "novita-simulator.log", image_delay=image_delay, video_delay=video_delay
    )
    webhook_port = free_port()
    env = {
        "NOVITA_API_KEY": API_KEY,
        "NOVITA_BASE_URL": simulator.url,
        "WEBHOOK_URL": f"http://{LOOPBACK}:{webhook_port}/",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "MEDIA_URL_POLICY": "any",
        "AUTH_MODE": os.environ.get("AUTH_MODE", "none"),
    }
    webhook = FunctionServer("novita_webhook", env, log_dir / "novita_webhook.log", port=webhook_port)
    create = FunctionServer("create_sketch", env, log_dir / "create_sketch.log")
    # This process watches the sketch in the same emulator.
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host
    try:
        emulator.start()
        simulator.start()
        webhook.start()
        create.start()
        yield LocalStack(emulator, simulator.url, create, webhook, env["AUTH_MODE"])
    finally:
        create.stop()
        webhook.stop()
        simulator.stop()
        emulator.stop()


def _say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.2f}s] {text}", flush=True)


def _save(url: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with httpx.stream("GET", url, timeout=30) as response:
        response.raise_for_status()
        with path.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    return path


def _follow(
    stack: LocalStack, http: httpx.Client, sketch: dict[str, Any], started: float, timeout: float
) -> str | None:
    """Print each status change as Firestore records it; the final status, or None on timeout.

    A Firestore listener sees every write, even a state that lasts a few milliseconds; a GET every
    second as well keeps recovery going, as a frontend's polling would.
    """
    changes: queue.Queue[str] = queue.Queue()
    db = firestore.Client(project=PROJECT)
    watch = (
        db.collection("sketches")
        .document(sketch["id"])
        .on_snapshot(
            lambda docs, _changes, _read_time: [changes.put(d.get("status")) for d in docs if d.exists]
        )
    )
    status = sketch["status"]
    deadline = time.monotonic() + timeout
    try:
        while status not in FINAL:
            if time.monotonic() > deadline:
                _say(started, f"gave up after {timeout:.0f} s in status {status}")
                return None
            try:
                seen = changes.get(timeout=1.0)
            except queue.Empty:
                seen = http.get(stack.create.url, params={"id": sketch["id"]}).json()["status"]
            if seen != status:
                status = seen
                _say(started, f"sketch {sketch['id']}: {status}")
    finally:
        watch.unsubscribe()
        db.close()
    return status


def run(prompt: str, out_dir: Path, log_dir: Path, timeout: float) -> int:
    started = time.monotonic()
    _say(started, "starting the Firestore emulator, the Novita simulator and both functions ...")
    with local_stack(log_dir, image_delay=2.0, video_delay=3.0) as stack, httpx.Client(timeout=30) as http:
        _say(started, f"stack up (auth mode: {stack.auth_mode}); logs in {log_dir}")
        response = http.post(stack.create.url, json={"prompt": prompt})
        if response.status_code != 202:
            _say(started, f"create_sketch answered {response.status_code}: {response.text}")
            return 1
        sketch = response.json()
        _say(started, f"sketch {sketch['id']}: {sketch['status']} (image task {sketch['image_task_id']})")
        status = _follow(stack, http, sketch, started, timeout)
        if status is None:
            return 1
        sketch = http.get(stack.create.url, params={"id": sketch["id"]}).json()
        print(json.dumps(sketch, indent=2), flush=True)
        if status == "failed":
            _say(started, f"the sketch failed: {sketch['error_message']}")
            return 1
        folder = out_dir / sketch["id"]
        still = _save(sketch["image_url"], folder / "still.jpg")
        video = _save(sketch["video_url"], folder / "video.mp4")
        _say(started, f"still: {still} ({still.stat().st_size} bytes)")
        _say(started, f"video: {video} ({video.stat().st_size} bytes)")
    _say(started, "stack stopped")
    return 0


def serve(log_dir: Path) -> int:
    with local_stack(log_dir, image_delay=2.0, video_delay=3.0) as stack:
        print(
            f"create_sketch   {stack.create.url}\n"
            f"novita_webhook  {stack.webhook.url}\n"
            f"Novita sim      {stack.simulator_url}  (faults: POST {stack.simulator_url}/_sim/config)\n"
            f"Firestore       {stack.emulator.host}  (project {PROJECT})\n"
            f"auth mode       {stack.auth_mode}\n"
            f"logs            {log_dir}\n\n"
            f"try: curl -s -X POST {stack.create.url} -H 'Content-Type: application/json' "
            '-d \'{"prompt": "a cat piloting a hot-air balloon"}\'\n'
            "Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="make one sketch from a prompt, end to end")
    run_cmd.add_argument("prompt")
    run_cmd.add_argument("--out", type=Path, default=ROOT / "out", help="where the still and the video go")
    run_cmd.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("serve", help="keep the stack running and print its URLs")
    parser.add_argument("--logs", type=Path, default=ROOT / "out" / "logs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even when started in the background, where SIGINT is ignored
    try:
        if args.command == "run":
            return run(args.prompt, args.out, args.logs, args.timeout)
        return serve(args.logs)
    except KeyboardInterrupt:
        print("interrupted; the stack has been stopped", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

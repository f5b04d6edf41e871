"""The local run: the whole machine on loopback, and a sketch from prompt to video.

    python -m devstack run "a walrus giving a TED talk about spoons" [--personality reference]
    python -m devstack serve [--personality reference]

`run` starts the Firestore, Pub/Sub, Cloud Storage and Firebase Auth emulators, the Novita
simulator and both functions, signs a guest in on the Auth emulator, creates a sketch with its ID
token (the stack runs with AUTH_MODE=firebase, as a deployment does), prints each change of its
status and progress with its time, then waits for Novita's own link to the video to expire and
fetches the still and the video from the bucket, and stops everything. `serve` starts the same
stack, prints one JSON line describing it, and keeps it up until SIGINT or SIGTERM; its playground
page is the app's flow. `--personality` chooses how the simulator behaves: as the integration guide
says Novita does (`guide`), or as Novita's public reference does (`reference`).
With NOVITA_BASE_URL and NOVITA_API_KEY set, that Novita is used and no simulator is started.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from google.cloud import firestore

from devstack.auth import Guest
from devstack.functions import ROOT
from devstack.stack import PROJECT, LocalStack, local_stack

FINAL = ("complete", "failed")
# Novita's links live an hour; the simulator's here only this long, so that the run can show the
# video playing from the bucket once Novita's own link has expired.
LOCAL_LINK_TTL_SECONDS = 20


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _say(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.2f}s] {text}", flush=True)


def _save(http: httpx.Client, url: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with http.stream("GET", url) as response:
        response.raise_for_status()
        with path.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
    return path


def _firestore(stack: LocalStack) -> firestore.Client:
    """A client of the stack's Firestore emulator, for this process (the local run's own)."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = stack.firestore.host
    return firestore.Client(project=PROJECT)


def _line(sketch: dict[str, Any]) -> str:
    eta = f", about {sketch['eta_seconds']} s left" if sketch.get("eta_seconds") else ""
    return f"sketch {sketch['id']}: {sketch['status']:<14} {sketch.get('progress', 0):>3}%{eta}"


def _follow(
    stack: LocalStack,
    http: httpx.Client,
    guest: Guest,
    sketch: dict[str, Any],
    started: float,
    timeout: float,
) -> str | None:
    """Print each change of status or progress as Firestore records it; the final status, or None
    on timeout. A Firestore listener sees every write, even a state that lasts milliseconds; a GET
    every second as well, as a frontend polls, keeps recovery going."""
    changes: queue.Queue[dict[str, Any]] = queue.Queue()
    db = _firestore(stack)
    collection = stack.env.get("SKETCHES_COLLECTION", "sketches")
    watch = (
        db.collection(collection)
        .document(sketch["id"])
        .on_snapshot(lambda docs, _changes, _read_time: [changes.put(d.to_dict()) for d in docs if d.exists])
    )
    shown = _line(sketch)
    status = sketch["status"]
    deadline = time.monotonic() + timeout
    try:
        while status not in FINAL:
            if time.monotonic() > deadline:
                _say(started, f"gave up after {timeout:.0f} s in status {status}")
                return None
            try:
                seen = {**changes.get(timeout=1.0), "id": sketch["id"]}
            except queue.Empty:
                seen = http.get(stack.create.url, params={"id": sketch["id"]}, headers=guest.headers).json()
            status = seen["status"]
            if _line(seen) != shown:
                shown = _line(seen)
                _say(started, shown)
    finally:
        watch.unsubscribe()
        db.close()
    return status


def run(prompt: str, personality: str, out_dir: Path, log_dir: Path, timeout: float) -> int:
    started = time.monotonic()
    _say(
        started,
        "starting the Firestore, Pub/Sub, Cloud Storage and Auth emulators, Novita and both functions ...",
    )
    with (
        local_stack(
            log_dir,
            personality=personality,
            image_delay=2.0,
            video_delay=3.0,
            ttl=LOCAL_LINK_TTL_SECONDS,
            say=lambda text: _say(started, text),
        ) as stack,
        httpx.Client(timeout=30) as http,
    ):
        novita = f"the simulator ({personality})" if stack.simulator else f"Novita at {stack.novita_base_url}"
        _say(started, f"stack up with {novita}; playground {stack.playground.url}; logs in {log_dir}")
        guest = stack.auth.sign_in_guest()
        _say(started, f"signed in as guest {guest.uid} on the Firebase Auth emulator")
        response = http.post(stack.create.url, json={"prompt": prompt}, headers=guest.headers)
        if response.status_code != 202:
            _say(started, f"create_sketch answered {response.status_code}: {response.text}")
            return 1
        sketch = response.json()
        how = f"image task {sketch['image_task_id']}" if sketch["image_task_id"] else "Seedream step queued"
        _say(started, f"{_line(sketch)} ({how})")
        status = _follow(stack, http, guest, sketch, started, timeout)
        if status is None:
            return 1
        sketch = http.get(stack.create.url, params={"id": sketch["id"]}, headers=guest.headers).json()
        print(json.dumps(sketch, indent=2), flush=True)
        if status == "failed":
            _say(started, f"the sketch failed: {sketch['error_message']}")
            return 1
        _show_durable(stack, http, sketch, out_dir / sketch["id"], started)
    _say(started, "stack stopped")
    return 0


def _show_durable(
    stack: LocalStack, http: httpx.Client, sketch: dict[str, Any], folder: Path, started: float
) -> None:
    """Wait until Novita's own link to the video has expired, then fetch both copies from the bucket."""
    stored = _firestore(stack).collection(stack.env.get("SKETCHES_COLLECTION", "sketches"))
    document = stored.document(sketch["id"]).get().to_dict() or {}
    novita_link, expires = document.get("novita_video_url"), document.get("novita_video_url_expires_at")
    if novita_link and expires is not None:
        wait = max(0.0, expires.timestamp() - time.time()) + 0.5
        _say(started, f"waiting {wait:.0f} s for Novita's own link to the video to expire ...")
        time.sleep(wait)
        _say(started, f"Novita's own link to the video now answers {http.get(novita_link).status_code}")
    still = _save(
        http, sketch["image_url"], folder / f"still{Path(document.get('image_object') or 'x.jpg').suffix}"
    )
    video = _save(http, sketch["video_url"], folder / "video.mp4")
    _say(started, f"still: {still} ({still.stat().st_size} bytes, from the bucket)")
    _say(started, f"video: {video} ({video.stat().st_size} bytes, from the bucket)")


def serve(personality: str, log_dir: Path) -> int:
    def say(text: str) -> None:
        print(f"[stack] {text}", flush=True)

    with local_stack(
        log_dir, personality=personality, image_delay=2.0, video_delay=3.0, ttl=3600, say=say
    ) as stack:
        print(json.dumps(stack.describe()), flush=True)
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, default=ROOT / "out" / "logs")
    parser.add_argument(
        "--personality",
        choices=("guide", "reference"),
        default="guide",
        help="the simulator behaves as the integration guide says (default) or as Novita's reference does",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_cmd = sub.add_parser("run", help="make one sketch from a prompt, end to end")
    run_cmd.add_argument("prompt")
    run_cmd.add_argument("--out", type=Path, default=ROOT / "out", help="where the still and the video go")
    run_cmd.add_argument("--timeout", type=float, default=180.0)
    sub.add_parser("serve", help="keep the stack running and print it as one JSON line")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even when started in the background, where SIGINT is ignored
    try:
        if args.command == "run":
            return run(args.prompt, args.personality, args.out, args.logs, args.timeout)
        return serve(args.personality, args.logs)
    except KeyboardInterrupt:
        print("interrupted; the stack has been stopped", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

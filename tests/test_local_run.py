"""The local run (`python -m devstack`), as the README's first command runs it: a guest signed in on
the Auth emulator, and a sketch from prompt to a video kept in the bucket, under either simulator
personality; `--serve` and its JSON line (AUTH_MODE=firebase, the playground's origin allowed, or the
caller's own AUTH_MODE); and every process it started stopped afterwards, even when interrupted. The
stack's processes are found from the PID of the run itself (its descendants), never by name."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from devstack.auth import sign_in_guest
from devstack.functions import ROOT
from novita_simulator import NovitaSimulator, SimulatorConfig

pytestmark = [pytest.mark.timeout(240), pytest.mark.stack]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, by parent links in /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def local_run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", "--logs", str(tmp_path / "logs"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 120) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return lines


@pytest.mark.parametrize("personality", ["guide", "reference"])
def test_a_prompt_becomes_a_still_and_a_video_kept_in_the_bucket(tmp_path: Path, personality: str) -> None:
    proc = local_run(
        tmp_path,
        "--personality",
        personality,
        "run",
        "a giraffe ice-skating on custard",
        "--out",
        str(tmp_path),
    )
    started = read_until(proc, "stack up")
    stack = descendants(proc.pid)
    out, _ = proc.communicate(timeout=180)
    out = "".join(started) + out

    assert proc.returncode == 0, out
    statuses = [s for s, _ in re.findall(r"\] sketch \w+: (\w+)\s+(\d+)%", out)]
    assert re.search(r"\] signed in as guest \w+ on the Firebase Auth emulator", out), out
    assert statuses[0] == "image_pending" and statuses[-1] == "complete", out
    assert [s for i, s in enumerate(statuses) if i == 0 or s != statuses[i - 1]] == [
        "image_pending",
        "image_complete",
        "video_pending",
        "complete",
    ], out
    assert "Novita's own link to the video now answers 403" in out
    still = Path(re.search(r"still: (\S+) \(\d+ bytes, from the bucket\)", out).group(1))  # type: ignore[union-attr]
    video = Path(re.search(r"video: (\S+) \(\d+ bytes, from the bucket\)", out).group(1))  # type: ignore[union-attr]
    assert still.read_bytes()[:3] == b"\xff\xd8\xff"
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    assert "stack stopped" in out
    assert len(stack) >= 8  # four emulators, the simulator, three function processes
    assert alive(stack) == set()


def test_an_interrupted_run_stops_everything_it_started(tmp_path: Path) -> None:
    proc = local_run(tmp_path, "run", "a snail racing a glacier", "--out", str(tmp_path))
    read_until(proc, "stack up")
    stack = descendants(proc.pid)

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)

    assert proc.returncode == 130, out
    assert "interrupted; the stack has been stopped" in out
    assert stack and alive(stack) == set()


def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = local_run(tmp_path, "serve", env=env)
    lines = read_until(proc, '{"stack":')
    line = lines[-1] if lines else ""
    assert line.startswith('{"stack":'), "".join(lines)
    return proc, json.loads(line)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")


def test_serve_prints_one_json_line_and_passes_its_configuration_on(tmp_path: Path) -> None:
    proc, stack = _serve(
        tmp_path, {"SKETCHES_COLLECTION": "from_the_environment", "MAX_SKETCHES_PER_DAY": "7"}
    )
    pids = descendants(proc.pid)
    try:
        for key in (
            "create_sketch",
            "novita_webhook",
            "steps",
            "project",
            "collection",
            "firestore_emulator_host",
            "pubsub_emulator_host",
            "storage_emulator_host",
            "auth_emulator_host",
            "bucket",
            "novita_base_url",
            "playground",
        ):
            assert stack[key], key
        assert stack["collection"] == "from_the_environment" and stack["novita"] == "simulator"
        assert stack["auth_mode"] == "firebase"
        assert stack["steps"] != stack["novita_webhook"]
        # The Auth emulator answers, and is one of the processes the stack started (it names itself so).
        auth_url = f"http://{stack['auth_emulator_host']}/"
        assert httpx.get(auth_url, timeout=10).json()["authEmulator"]["ready"] is True
        (auth_pid,) = [pid for pid in stack["pids"] if "emulators:start" in cmdline(pid)]
        assert f"emulators:start --only auth --project {stack['project']} " in cmdline(auth_pid)
        assert auth_pid in pids

        create = stack["create_sketch"]
        refused = httpx.post(create, json={"prompt": "a walrus without a token"}, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
        guest = sign_in_guest(stack["auth_emulator_host"])
        answer = httpx.post(create, json={"prompt": "a served walrus"}, headers=guest.headers, timeout=30)
        assert answer.status_code == 202, answer.text
        stored = httpx.get(
            f"http://{stack['firestore_emulator_host']}/v1/projects/{stack['project']}/databases/(default)"
            f"/documents/from_the_environment/{answer.json()['id']}",
            headers={"Authorization": "Bearer owner"},
            timeout=10,
        )
        assert stored.status_code == 200
        assert stored.json()["fields"]["user_id"] == {"stringValue": guest.uid}

        # The playground's own origin may call the API from a browser; no other origin may.
        page = httpx.get(stack["playground"], timeout=10)
        assert page.status_code == 200
        origin = stack["playground"].rstrip("/")
        for caller, allowed in ((origin, origin), ("http://127.0.0.1:1", None)):
            preflight = httpx.options(
                create,
                headers={
                    "Origin": caller,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
                },
                timeout=10,
            )
            assert preflight.headers.get("Access-Control-Allow-Origin") == allowed, preflight.headers
        assert httpx.get(stack["playground"] + "app.js", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert alive(pids) == set()
    assert alive(set(stack["pids"])) == set()  # the Auth emulator's among them
    with pytest.raises(httpx.ConnectError):
        httpx.get(auth_url, timeout=2)


def test_serve_uses_the_novita_and_auth_mode_named_in_its_environment(tmp_path: Path) -> None:
    """With NOVITA_BASE_URL and NOVITA_API_KEY set, that Novita and no simulator; with AUTH_MODE=none
    set, the old open API, for whoever wants it locally."""
    with NovitaSimulator(
        api_key="external-key", config=SimulatorConfig(image_delay=0.2, video_delay=0.3)
    ) as novita:
        proc, stack = _serve(
            tmp_path,
            {"NOVITA_BASE_URL": novita.base_url, "NOVITA_API_KEY": "external-key", "AUTH_MODE": "none"},
        )
        try:
            assert stack["auth_mode"] == "none"
            assert stack["novita"] == "external" and stack["novita_base_url"] == novita.base_url
            assert stack["simulator_control"] is None
            answer = httpx.post(stack["create_sketch"], json={"prompt": "an outside walrus"}, timeout=30)
            assert answer.status_code == 202
            deadline = time.monotonic() + 60
            status = ""
            while status != "complete" and time.monotonic() < deadline:
                status = httpx.get(
                    stack["create_sketch"], params={"id": answer.json()["id"]}, timeout=10
                ).json()["status"]
                time.sleep(0.5)
            assert status == "complete"
            assert novita.stats()["tasks_created"] == {"txt2img": 1, "kling": 1}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)

"""The local run (`python -m devstack run`), as the README's first command runs it: a sketch from
prompt to video on disk, and every process it started stopped afterwards, even when interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from devstack.functions import ROOT

pytestmark = pytest.mark.timeout(180)
STACK_PROCESSES = re.compile(r"CloudFirestore|functions_framework|novita_simulator")


def stack_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if STACK_PROCESSES.search(cmdline):
                pids.add(int(entry.name))
    return pids


def local_run(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "devstack", "--logs", str(tmp_path / "logs"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_prompt_becomes_a_still_and_a_video_on_disk(tmp_path: Path) -> None:
    before = stack_pids()

    proc = local_run(tmp_path, "run", "a giraffe ice-skating on a lake of custard", "--out", str(tmp_path))
    out, _ = proc.communicate(timeout=150)

    assert proc.returncode == 0, out
    statuses = re.findall(r"\] sketch \w+: (\w+)", out)
    assert statuses == ["image_pending", "image_complete", "video_pending", "complete"], out
    still = Path(re.search(r"still: (\S+)", out).group(1))  # type: ignore[union-attr]
    video = Path(re.search(r"video: (\S+)", out).group(1))  # type: ignore[union-attr]
    assert still.read_bytes()[:3] == b"\xff\xd8\xff"
    with av.open(str(video)) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    assert "stack stopped" in out
    assert stack_pids() - before == set()


def test_an_interrupted_run_stops_everything_it_started(tmp_path: Path) -> None:
    before = stack_pids()
    proc = local_run(tmp_path, "run", "a snail racing a glacier", "--out", str(tmp_path))
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if "stack up" in line or time.monotonic() > deadline:
            break

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)

    assert proc.returncode == 130, out
    assert "interrupted; the stack has been stopped" in out
    assert stack_pids() - before == set()

"""Bench only: `novita_webhook` with each request marked `X-Bench-Profile: 1` run under a profiler.

Served exactly like the real function (`--source bench/profiled/main.py --target novita_webhook`);
each profiled request's pyinstrument session is saved to BENCH_PROFILE_DIR (pyinstrument is in
requirements-dev.txt).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import uuid
from pathlib import Path

import flask
import functions_framework
from pyinstrument import Profiler

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("BENCH_PROFILE_DIR", "/tmp/bench-profiles"))
OUT.mkdir(parents=True, exist_ok=True)

_SOURCE = ROOT / "functions" / "novita_webhook" / "main.py"
_spec = importlib.util.spec_from_file_location("novita_webhook_main", _SOURCE)
assert _spec is not None and _spec.loader is not None
_real = importlib.util.module_from_spec(_spec)
sys.modules["novita_webhook_main"] = _real
_spec.loader.exec_module(_real)

_lock = threading.Lock()  # one profiled request at a time


@functions_framework.http
def novita_webhook(request: flask.Request) -> flask.Response:
    if request.headers.get("X-Bench-Profile") != "1":
        return _real.novita_webhook(request)
    folder = OUT / "".join(
        c for c in request.headers.get("X-Bench-Profile-Dir", "") if c.isalnum() or c in "_-"
    )
    folder.mkdir(parents=True, exist_ok=True)
    name = folder / uuid.uuid4().hex
    with _lock:
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        try:
            return _real.novita_webhook(request)
        finally:
            profiler.stop().save(str(name) + ".pyisession")

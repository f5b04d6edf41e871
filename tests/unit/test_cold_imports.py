"""What a function imports as it loads: neither pydantic nor httpx (about 75 ms of a cold start
between them). A read, a duplicate step and a webhook delivery need neither; a create, a check and
the slow steps import them on their own path (`docs/performance.md`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devstack.functions import ROOT

ENV = {
    "NOVITA_API_KEY": "k",
    "WEBHOOK_URL": "http://127.0.0.1:9/hook",
    "WEBHOOK_SECRET": "s" * 32,
    "GOOGLE_CLOUD_PROJECT": "cold-imports",
    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:9",
    "PUBSUB_EMULATOR_HOST": "127.0.0.1:9",
    "AUTH_MODE": "none",
}
LOAD = """
import json, sys
from functions_framework import create_app
create_app(sys.argv[1], sys.argv[2])
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize(
    ("target", "door"), [("create_sketch", None), ("novita_webhook", "public"), ("novita_webhook", "private")]
)
def test_a_function_loads_without_pydantic_or_httpx(target: str, door: str | None) -> None:
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT), **({"WEBHOOK_DOOR": door} if door else {})}
    source = ROOT / "functions" / target / "main.py"
    done = subprocess.run(
        [sys.executable, "-c", LOAD, target, str(source)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "shared" in loaded and "flask" in loaded  # the function did load
    assert not loaded & {"pydantic", "pydantic_core", "httpx", "httpcore"}

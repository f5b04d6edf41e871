"""Configuration: every required variable names itself when missing; bad values are refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.functions import ROOT
from shared.core.config import ConfigError, settings_from

BASE = {
    "NOVITA_API_KEY": "k",
    "WEBHOOK_URL": "https://example.test/hook",
    "WEBHOOK_SECRET": "s",
    "GOOGLE_CLOUD_PROJECT": "p",
}


def test_defaults() -> None:
    settings = settings_from(BASE)

    assert settings.novita_base_url == "https://api.novita.ai"
    assert settings.sketches_collection == "sketches"
    assert settings.media_url_policy == "public-https"
    assert settings.t2i_model == "seedream_3_0"
    assert settings.webhook_test_mode is None
    # Safe by default: Firebase ID tokens required, no browser origin allowed.
    assert settings.auth_mode == "firebase" and settings.cors_allowed_origins == ()
    assert settings.webhook_door == "public" and settings.app_check == "off"
    assert settings.firestore_emulator_host is None
    assert settings.metadata_host == "metadata.google.internal"


@pytest.mark.parametrize("name", ["NOVITA_API_KEY", "WEBHOOK_URL", "WEBHOOK_SECRET", "GOOGLE_CLOUD_PROJECT"])
def test_missing_required_variable_is_named(name: str) -> None:
    env = {k: v for k, v in BASE.items() if k != name}
    with pytest.raises(ConfigError, match=name):
        settings_from(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_URL", "not a url"),
        ("NOVITA_BASE_URL", "ftp://x"),
        ("MEDIA_URL_POLICY", "everything"),
        ("NOVITA_WEBHOOK_TEST_MODE", "yes"),
        ("AUTH_MODE", "magic"),
        ("STEP_LEASE_SECONDS", "soon"),
        ("STEP_LEASE_SECONDS", "nan"),
        ("RECOVERY_INTERVAL_SECONDS", "1e300"),
        ("MAX_SKETCHES_IN_PROGRESS", "inf"),
        ("MAX_SKETCHES_IN_PROGRESS", "2.5"),
        ("SKETCHES_COLLECTION", "a/b"),
        ("SKETCHES_COLLECTION", "__reserved__"),
    ],
)
def test_malformed_variable_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        settings_from({**BASE, name: value})


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = settings_from({**BASE, "NOVITA_API_KEY": "sk-very-secret", "WEBHOOK_SECRET": "hush"})
    assert "sk-very-secret" not in repr(settings) and "hush" not in repr(settings)


@pytest.mark.parametrize("function", ["create_sketch", "novita_webhook"])
def test_function_without_its_variables_stops_at_start_with_one_clear_line(function: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        **{k: v for k, v in BASE.items() if k != "WEBHOOK_SECRET"},
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--source",
            str(ROOT / "functions" / function / "main.py"),
            "--target",
            function,
            "--host",
            "127.0.0.1",
            "--port",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert proc.returncode != 0
    assert "configuration error: WEBHOOK_SECRET is required" in proc.stderr
    assert "Traceback" not in proc.stderr

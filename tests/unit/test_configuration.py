"""Configuration in one place (shared/core/config.py): every variable catalogued with its role, safe
defaults, every missing or malformed variable named, and a deploy's env file checked by the same
rules the functions apply at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.core.config import CATALOGUE, VARIABLES, ConfigError, check, read_env_file, settings_from

BASE = {
    "NOVITA_API_KEY": "k",
    "WEBHOOK_URL": "https://x.test/",
    "WEBHOOK_SECRET": "s",
    "GOOGLE_CLOUD_PROJECT": "p",
}
ROOT = Path(__file__).resolve().parents[2]
# Who sets a variable where the project is deployed, as the operations guide names them.
ROLES = ("secret", "deploy", "tuning", "local")


def test_every_catalogued_variable_is_read_and_its_default_is_what_the_functions_use() -> None:
    """A value the parser would refuse, for each variable with a rule, is refused naming it: so every
    catalogued name is read (one nobody reads would pass)."""
    refusable = {name: "\x00not valid" for name in VARIABLES}
    silent = {"NOVITA_T2I_MODEL", "FIREBASE_PROJECT_ID", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"}
    silent |= {"FIREBASE_AUTH_EMULATOR_HOST", "GCE_METADATA_HOST"}  # free text: taken as given
    for name in sorted(set(VARIABLES) - silent - set(BASE)):
        problems = check({name: refusable[name]})
        assert problems and name in problems[0], name
    assert {v.role for v in CATALOGUE} == set(ROLES)


def test_an_env_file_gets_one_line_per_problem_before_anything_is_deployed() -> None:
    values = read_env_file("# tuning\nMAX_SKETCHES_PER_DAY=lots\nSTEP_LEASE_SECONDS=0\nNOT_A_VARIABLE=1\n")
    problems = check(values)
    assert len(problems) == 3
    assert problems[0] == "NOT_A_VARIABLE is not a variable the functions read"
    assert any("MAX_SKETCHES_PER_DAY" in p for p in problems) and any(
        "STEP_LEASE_SECONDS" in p for p in problems
    )


def test_the_check_runs_with_a_bare_python3_as_deploy_sh_runs_it(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text("MAX_SKETCHES_PER_DAY_TOTAL=500\nAPP_CHECK=enforce\nFIREBASE_PROJECT_NUMBER=123\n")
    run = subprocess.run(
        [sys.executable, "-S", "-m", "shared.core.config", "check", str(env_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"APP_CHECK": "enforce"}, "FIREBASE_PROJECT_NUMBER"),
        ({"CORS_ALLOWED_ORIGINS": "https://a.test/x"}, "CORS"),
    ],
)
def test_rules_that_tie_variables_together_are_named(changes: dict[str, str], named: str) -> None:
    with pytest.raises(Exception, match=named):
        settings_from({**BASE, **changes})


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


def test_the_operations_guide_lists_every_variable_with_its_role_and_default() -> None:
    rows = {}
    for line in (ROOT / "docs" / "operations.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[1] in ROLES:
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    assert set(rows) == set(VARIABLES)
    for variable in CATALOGUE:
        role, default = rows[variable.name]
        assert role == variable.role, variable.name
        if (
            variable.default.startswith("https://www.googleapis.com")
            or "firebaseappcheck" in variable.default
        ):
            assert default == "Google's", variable.name
        else:
            assert default == (f"`{variable.default}`" if variable.default else "-"), variable.name

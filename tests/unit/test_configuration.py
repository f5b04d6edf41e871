"""Configuration in one place (shared/core/config.py): every variable catalogued with its role, and
a deploy's env file checked by the same rules the functions apply at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.core.config import CATALOGUE, VARIABLES, check, read_env_file, settings_from

BASE = {
    "NOVITA_API_KEY": "k",
    "WEBHOOK_URL": "https://x.test/",
    "WEBHOOK_SECRET": "s",
    "GOOGLE_CLOUD_PROJECT": "p",
}
ROOT = Path(__file__).resolve().parents[2]


def test_every_catalogued_variable_is_read_and_its_default_is_what_the_functions_use() -> None:
    """A value the parser would refuse, for each variable with a rule, is refused naming it: so every
    catalogued name is read (one nobody reads would pass)."""
    refusable = {name: "\x00not valid" for name in VARIABLES}
    silent = {"NOVITA_T2I_MODEL", "FIREBASE_PROJECT_ID", "FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"}
    silent |= {"FIREBASE_AUTH_EMULATOR_HOST", "GCE_METADATA_HOST"}  # free text: taken as given
    for name in sorted(set(VARIABLES) - silent - set(BASE)):
        problems = check({name: refusable[name]})
        assert problems and name in problems[0], name
    assert {v.role for v in CATALOGUE} == {"secret", "deploy", "tuning", "local"}


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

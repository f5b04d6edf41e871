"""deploy.sh against a fake `gcloud` and `curl` (nothing reaches Google), its staged sources, and
functions-framework serving each staged folder on its own."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import LOOPBACK, answers, free_port, start, stop, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy.sh"
PROJECT = "sketch-deploy-test"
WEBHOOK_URL = "https://novita-webhook-abc-uc.a.run.app"
CREATE_URL = "https://create-sketch-abc-uc.a.run.app"
ACCESS_TOKEN = "ya29.fake-access-token-must-not-leak"
SECRET_VALUES = ("nk-real-novita-key-must-not-leak", "webhook-secret-value-must-not-leak")
ENTRY_POINTS = {"novita-webhook": "novita_webhook", "create-sketch": "create_sketch"}

pytestmark = pytest.mark.timeout(120)

FAKE_GCLOUD = """
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
record = {"tool": "gcloud", "argv": argv}
URLS = {"novita-webhook": %(webhook_url)r, "create-sketch": %(create_url)r}
APIS = ["cloudfunctions", "run", "cloudbuild", "artifactregistry", "secretmanager", "firestore",
        "firebaserules", "cloudscheduler", "logging"]
deployed_file = state / "deployed"
deployed = set(deployed_file.read_text().split()) if deployed_file.exists() else set()
words = [a for a in argv if not a.startswith("-")]

def option(name):
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None

code = 0
if words[:2] == ["services", "list"]:
    missing = os.environ.get("FAKE_MISSING_APIS", "").split(",")
    print("\\n".join(f"{api}.googleapis.com" for api in APIS if api not in missing))
elif words[:3] == ["firestore", "databases", "describe"]:
    print("FIRESTORE_NATIVE")
elif words[:2] == ["secrets", "describe"]:
    if words[2] in os.environ.get("FAKE_MISSING_SECRETS", "").split(","):
        print(f"ERROR: NOT_FOUND: Secret [{words[2]}] not found", file=sys.stderr)
        code = 1
    else:
        print(f"projects/123/secrets/{words[2]}")
elif words[:2] == ["functions", "describe"]:
    if words[2] in deployed:
        print(URLS[words[2]])
    else:
        print(f"ERROR: NOT_FOUND: function {words[2]} does not exist", file=sys.stderr)
        code = 1
elif words[:2] == ["functions", "deploy"]:
    source = Path(option("--source"))
    record["source_files"] = sorted(
        str(p.relative_to(source)) + ("/" if p.is_dir() else "") for p in source.rglob("*")
    )
    record["source_shared_is_symlink"] = (source / "shared").is_symlink()
    deployed.add(words[2])
    deployed_file.write_text(" ".join(sorted(deployed)))
    print(f"Deploying function {words[2]}... done. state: ACTIVE")
elif words[:2] == ["auth", "print-access-token"]:
    print(%(token)r)
else:
    print("fake gcloud: unexpected command " + " ".join(argv), file=sys.stderr)
    code = 2
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(record) + "\\n")
sys.exit(code)
"""

FAKE_CURL = """
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
out = fmt = data = None
method = "GET"
headers = []
url = None
i = 0
while i < len(args):
    arg = args[i]
    if arg in ("-o", "-w", "-X", "-H", "--data-binary", "--max-time"):
        value = args[i + 1]
        i += 2
        if arg == "-o": out = value
        elif arg == "-w": fmt = value
        elif arg == "-X": method = value
        elif arg == "-H": headers.append(value)
        elif arg == "--data-binary": data = value
        continue
    if arg.startswith("-"):
        i += 1
        continue
    url = arg
    i += 1
header_lines = []
for header in headers:
    if header.startswith("@"):
        header_lines += Path(header[1:]).read_text().splitlines()
    else:
        header_lines.append(header)
body = json.loads(Path(data[1:]).read_text()) if data and data.startswith("@") else data
record = {"tool": "curl", "argv": args, "method": method, "url": url, "body": body,
          "authorized": f"Authorization: Bearer {%(token)r}" in header_lines,
          "headers": [h for h in header_lines if not h.lower().startswith("authorization")]}
release_file = state / "release"
if method == "POST" and url.endswith("/rulesets"):
    status, answer = 200, {"name": url.split("/v1/", 1)[1] + "/ruleset-1"}
elif method == "PATCH" and "/releases/" in url:
    if os.environ.get("FAKE_NO_RELEASE") and not release_file.exists():
        status, answer = 404, {"error": {"code": 404, "status": "NOT_FOUND"}}
    else:
        status, answer = 200, body["release"]
elif method == "POST" and url.endswith("/releases"):
    release_file.write_text("created")
    status, answer = 200, body
else:
    status, answer = 400, {"error": "unexpected"}
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(record) + "\\n")
Path(out).write_text(json.dumps(answer))
sys.stdout.write(fmt.replace("%%{http_code}", str(status)))
"""


class Fake:
    """A temp dir with fake `gcloud` and `curl` first on PATH and their call log."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.tmp = root / "tmp"
        for folder in (self.bin, self.state, self.tmp):
            folder.mkdir()
        values = {"webhook_url": WEBHOOK_URL, "create_url": CREATE_URL, "token": ACCESS_TOKEN}
        for name, source in (("gcloud", FAKE_GCLOUD), ("curl", FAKE_CURL)):
            path = self.bin / name
            path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source % values))
            path.chmod(0o755)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("GOOGLE_CLOUD_PROJECT", "REGION", "PYTHONPATH") and not key.startswith("FAKE_")
        }
        env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            FAKE_STATE=str(self.state),
            TMPDIR=str(self.tmp),
            NOVITA_API_KEY=SECRET_VALUES[0],
            WEBHOOK_SECRET=SECRET_VALUES[1],
        )
        env.update(extra)
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(DEPLOY), *args],
            cwd=ROOT,
            env=env or self.env(**extra),
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return [call for call in calls if tool is None or call["tool"] == tool]

    def deploys(self) -> list[dict[str, Any]]:
        return [c for c in self.calls("gcloud") if c["argv"][:2] == ["functions", "deploy"]]


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def option(argv: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith(name + "=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {argv}"
    return values[0]


def env_vars(argv: list[str]) -> dict[str, str]:
    """--set-env-vars, in plain or gcloud's alternate-delimiter (^D^K=V DK=V) form."""
    raw = option(argv, "--set-env-vars")
    delimiter = ","
    if raw.startswith("^"):
        delimiter, raw = raw[1:].split("^", 1)
    return dict(item.split("=", 1) for item in raw.split(delimiter))


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


# ---------------------------------------------------------------------------------- flags


def test_help_lists_every_flag(fake: Fake) -> None:
    result = fake.run("--help")
    assert result.returncode == 0, output(result)
    for flag in (
        "--project",
        "--region",
        "--auth-mode",
        "--cors-origins",
        "--novita-base-url",
        "--t2i-model",
        "--api-key-secret",
        "--webhook-secret-secret",
        "--dry-run",
        "--stage-only",
        "--help",
    ):
        assert flag in result.stdout
    assert fake.calls() == []


def test_missing_project_is_a_clear_error(fake: Fake) -> None:
    result = fake.run()
    assert result.returncode != 0
    assert "no project" in result.stderr and "--project" in result.stderr
    assert fake.calls() == []


def test_missing_gcloud_is_a_clear_error(fake: Fake, tmp_path: Path) -> None:
    # A PATH with the basic tools the script uses but no gcloud (the real one is in /usr/bin).
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "env", "cat", "cp", "rm", "mkdir", "find", "mktemp", "dirname", "grep", "curl"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    result = fake.run("--project", PROJECT, env=fake.env(PATH=str(tools)))
    assert result.returncode != 0
    assert "gcloud not found" in result.stderr
    assert fake.calls() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-mode", "open"], "--auth-mode must be firebase or none"),
        (["--cors-origins", "https://app.example.com/"], "no trailing slash"),
        (["--novita-base-url", "ftp://x"], "--novita-base-url must be an http(s) URL"),
        (["--bogus"], "unknown argument"),
        (["--region"], "--region needs a value"),
    ],
)
def test_bad_flags_are_refused(fake: Fake, args: list[str], message: str) -> None:
    result = fake.run("--project", PROJECT, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert fake.deploys() == []


def test_missing_secret_says_how_to_create_it(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_MISSING_SECRETS="webhook-secret")
    assert result.returncode != 0
    assert "gcloud secrets create webhook-secret" in result.stderr
    assert "roles/secretmanager.secretAccessor" in result.stderr
    assert "gcloud secrets create novita-api-key" not in result.stderr
    assert fake.deploys() == [] and fake.calls("curl") == []


def test_missing_api_says_how_to_enable_it(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_MISSING_APIS="cloudbuild,firebaserules")
    assert result.returncode != 0
    assert (
        f"gcloud services enable cloudbuild.googleapis.com firebaserules.googleapis.com --project={PROJECT}"
        in result.stderr
    )
    assert fake.deploys() == []


# ------------------------------------------------------------------------------- dry run


def test_dry_run_prints_every_command_and_runs_none(fake: Fake) -> None:
    result = fake.run("--dry-run", GOOGLE_CLOUD_PROJECT=PROJECT)
    assert result.returncode == 0, output(result)
    lines = result.stdout.splitlines()
    deploys = [line for line in lines if line.startswith("+ gcloud functions deploy ")]
    assert [line.split()[4] for line in deploys] == ["novita-webhook", "novita-webhook", "create-sketch"]
    for expected in (
        "+ gcloud services list",
        "+ gcloud firestore databases describe",
        "+ gcloud secrets describe novita-api-key",
        "+ gcloud secrets describe webhook-secret",
        "+ gcloud functions describe novita-webhook",
        "+ gcloud auth print-access-token",
        "+ curl -sS --max-time 60 -o ",
    ):
        assert any(line.startswith(expected) for line in lines), expected
    assert "DRY RUN" in result.stdout
    assert fake.calls() == [], "a dry run must not call gcloud or curl"
    assert list(fake.tmp.iterdir()) == [], "the temporary staging folder is removed on exit"


# ------------------------------------------------------------------------------ full run


def test_full_run_deploys_webhook_first_then_create_sketch(fake: Fake) -> None:
    result = fake.run(
        "--project", PROJECT, "--cors-origins", "https://app.example.com, http://localhost:5173"
    )
    assert result.returncode == 0, output(result)
    deploys = fake.deploys()
    assert [d["argv"][2] for d in deploys] == ["novita-webhook", "novita-webhook", "create-sketch"]
    for deploy in deploys:
        argv, name = deploy["argv"], deploy["argv"][2]
        for flag in ("--gen2", "--trigger-http", "--allow-unauthenticated"):
            assert flag in argv
        assert option(argv, "--runtime") == "python312"
        assert option(argv, "--entry-point") == ENTRY_POINTS[name]
        assert option(argv, "--region") == "us-central1"
        assert option(argv, "--project") == PROJECT
        assert option(argv, "--set-secrets") == (
            "NOVITA_API_KEY=novita-api-key:latest,WEBHOOK_SECRET=webhook-secret:latest"
        )
        env = env_vars(argv)
        assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
        assert env["AUTH_MODE"] == "firebase"
        assert env["CORS_ALLOWED_ORIGINS"] == "https://app.example.com,http://localhost:5173"
        assert "NOVITA_API_KEY" not in env and "WEBHOOK_SECRET" not in env
        # One instance serves 32 requests at once, one gunicorn thread each; the webhook holds
        # up to 32 stills of up to 10 MiB at once.
        assert option(argv, "--concurrency") == env["THREADS"] == "32"
        assert option(argv, "--memory") == ("1Gi" if name == "novita-webhook" else "512Mi")
        assert {"main.py", "requirements.txt", ".gcloudignore", "shared/", "shared/config.py"} <= set(
            deploy["source_files"]
        )
        assert not any("__pycache__" in f or f.startswith("tests") for f in deploy["source_files"])
        assert deploy["source_shared_is_symlink"] is False

    # The first webhook deploy carries a placeholder; its URL is read back and set on both.
    describe = ["functions", "describe", "novita-webhook"]
    calls = fake.calls("gcloud")
    first_deploy = calls.index(deploys[0])
    assert any(c["argv"][:3] == describe for c in calls[first_deploy + 1 : calls.index(deploys[1])])
    assert env_vars(deploys[1]["argv"])["WEBHOOK_URL"] == WEBHOOK_URL
    assert env_vars(deploys[2]["argv"])["WEBHOOK_URL"] == WEBHOOK_URL
    assert "--format=value(serviceConfig.uri)" in next(c["argv"] for c in calls if c["argv"][:3] == describe)

    # The checks come before any change.
    kinds = [tuple(c["argv"][:2]) for c in calls]
    assert kinds.index(("secrets", "describe")) < kinds.index(("functions", "deploy"))

    # Rules: a ruleset from firestore.rules, then the release cloud.firestore points at it.
    curls = fake.calls("curl")
    assert [(c["method"], c["url"]) for c in curls] == [
        ("POST", f"https://firebaserules.googleapis.com/v1/projects/{PROJECT}/rulesets"),
        ("PATCH", f"https://firebaserules.googleapis.com/v1/projects/{PROJECT}/releases/cloud.firestore"),
    ]
    assert curls[0]["body"]["source"]["files"] == [
        {"name": "firestore.rules", "content": (ROOT / "firestore.rules").read_text()}
    ]
    assert curls[1]["body"]["release"] == {
        "name": f"projects/{PROJECT}/releases/cloud.firestore",
        "rulesetName": f"projects/{PROJECT}/rulesets/ruleset-1",
    }
    assert all(c["authorized"] for c in curls)
    assert all(f"x-goog-user-project: {PROJECT}" in c["headers"] for c in curls)

    # No secret (nor the access token) in any command line.
    for call in fake.calls():
        joined = " ".join(call["argv"])
        for value in (*SECRET_VALUES, ACCESS_TOKEN):
            assert value not in joined

    out = result.stdout
    assert WEBHOOK_URL in out and CREATE_URL in out
    assert "AUTH_MODE=firebase" in out
    assert "gcloud scheduler jobs create http sketch-recovery-sweep" in out
    assert f'--uri="{WEBHOOK_URL}?action=sweep"' in out
    assert "python3 -m shared.webhook_tokens sweep-token" in out
    assert list(fake.tmp.iterdir()) == [], "the temporary staging folder is removed on exit"


def test_running_again_is_a_plain_update(fake: Fake) -> None:
    first = fake.run("--project", PROJECT)
    assert first.returncode == 0, output(first)
    before = len(fake.deploys())
    second = fake.run("--project", PROJECT)
    assert second.returncode == 0, output(second)
    again = fake.deploys()[before:]
    # The webhook exists now: one deploy of it with its real URL, no placeholder.
    assert [d["argv"][2] for d in again] == ["novita-webhook", "create-sketch"]
    assert all(env_vars(d["argv"])["WEBHOOK_URL"] == WEBHOOK_URL for d in again)


def test_auth_mode_none_is_passed_and_warned_about(fake: Fake) -> None:
    result = fake.run(
        "--project",
        PROJECT,
        "--auth-mode",
        "none",
        "--t2i-model",
        "flux_1",
        "--novita-base-url",
        "https://novita.example.com",
    )
    assert result.returncode == 0, output(result)
    assert "WARNING" in result.stderr and "ANYONE" in result.stderr
    assert "AUTH_MODE=none" in result.stdout
    for deploy in fake.deploys():
        env = env_vars(deploy["argv"])
        assert env["AUTH_MODE"] == "none"
        assert env["NOVITA_T2I_MODEL"] == "flux_1"
        assert env["NOVITA_BASE_URL"] == "https://novita.example.com"


def test_secret_names_and_region_can_be_changed(fake: Fake) -> None:
    result = fake.run(
        "--project", PROJECT, "--api-key-secret", "nk", "--webhook-secret-secret=wh", REGION="europe-west1"
    )
    assert result.returncode == 0, output(result)
    described = [c["argv"][2] for c in fake.calls("gcloud") if c["argv"][:2] == ["secrets", "describe"]]
    assert described == ["nk", "wh"]
    for deploy in fake.deploys():
        assert option(deploy["argv"], "--set-secrets") == "NOVITA_API_KEY=nk:latest,WEBHOOK_SECRET=wh:latest"
        assert option(deploy["argv"], "--region") == "europe-west1"


def test_first_rules_release_is_created(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_NO_RELEASE="1")
    assert result.returncode == 0, output(result)
    assert [(c["method"], c["url"].rsplit("/", 1)[1]) for c in fake.calls("curl")] == [
        ("POST", "rulesets"),
        ("PATCH", "cloud.firestore"),
        ("POST", "releases"),
    ]


def test_skip_rules_calls_no_rules_api(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, "--skip-rules")
    assert result.returncode == 0, output(result)
    assert fake.calls("curl") == []
    assert not any(c["argv"][:2] == ["auth", "print-access-token"] for c in fake.calls("gcloud"))


# ------------------------------------------------------------------------------- staging


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stage = tmp_path_factory.mktemp("stage")
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "PYTHONPATH")}
    result = subprocess.run(
        ["bash", str(DEPLOY), "--stage-only", str(stage)],
        cwd=stage,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return stage


@pytest.mark.parametrize("entry", ["create_sketch", "novita_webhook"])
def test_staged_folder_is_self_contained(staged: Path, entry: str) -> None:
    folder = staged / entry
    assert sorted(p.name for p in folder.iterdir()) == [
        ".gcloudignore",
        "main.py",
        "requirements.txt",
        "shared",
    ]
    assert filecmp.cmp(folder / "main.py", ROOT / "functions" / entry / "main.py", shallow=False)
    assert (folder / "requirements.txt").read_bytes() == (ROOT / "requirements.txt").read_bytes()
    shared = folder / "shared"
    assert shared.is_dir() and not shared.is_symlink()
    assert not any(p.is_symlink() for p in shared.rglob("*"))
    assert not any(p.name == "__pycache__" or p.suffix == ".pyc" for p in shared.rglob("*"))
    repo_modules = sorted(p.relative_to(ROOT / "shared") for p in (ROOT / "shared").rglob("*.py"))
    assert sorted(p.relative_to(shared) for p in shared.rglob("*.py")) == repo_modules
    ignore = (folder / ".gcloudignore").read_text().splitlines()
    for pattern in ("tests/", "__pycache__/", ".venv/", "*.py[cod]", ".env"):
        assert pattern in ignore


def test_staging_again_replaces_the_folders(staged: Path) -> None:
    stale = staged / "create_sketch" / "shared" / "stale.py"
    stale.write_text("raise SystemExit('stale')\n")
    result = subprocess.run(
        ["bash", str(DEPLOY), "--stage-only", str(staged)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not stale.exists()


def staged_env(folder: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "FIRESTORE_EMULATOR_HOST",
            "GOOGLE_CLOUD_PROJECT",
            "AUTH_MODE",
            "CORS_ALLOWED_ORIGINS",
            "NOVITA_BASE_URL",
            "SKETCHES_COLLECTION",
        )
    }
    env.update(
        PYTHONPATH=str(folder),
        PYTHONUNBUFFERED="1",
        NOVITA_API_KEY="staged-test-key",
        WEBHOOK_URL="http://127.0.0.1:9/",
        WEBHOOK_SECRET="staged-test-secret-0123456789",
        GOOGLE_CLOUD_PROJECT="sketch-staged-test",
        FIRESTORE_EMULATOR_HOST=f"{LOOPBACK}:{free_port()}",  # nothing listens there
    )
    return env


@pytest.fixture
def served(staged: Path, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    entry = request.param
    folder = staged / entry
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        "main.py",
        "--target",
        entry,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    proc = start(cmd, env=staged_env(folder), log_path=tmp_path / f"{entry}.log", cwd=folder)
    url = f"http://{LOOPBACK}:{port}/"
    try:
        try:
            wait_until(answers(url), 30, f"staged {entry}", proc)
        except (RuntimeError, TimeoutError):
            pytest.fail((tmp_path / f"{entry}.log").read_text())
        yield url
    finally:
        stop(proc)


def test_staged_folder_imports_only_its_own_copy(staged: Path) -> None:
    folder = staged / "create_sketch"
    probe = (
        "import importlib.util, shared; print(shared.__file__); "
        "print(importlib.util.find_spec('devstack'), importlib.util.find_spec('functions'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=folder,
        env=staged_env(folder),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shared_file, specs = result.stdout.splitlines()
    assert Path(shared_file).resolve().is_relative_to(folder.resolve())
    assert specs == "None None"


@pytest.mark.parametrize("served", ["create_sketch"], indirect=True)
def test_staged_create_sketch_serves(served: str) -> None:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        preflight = http.options(
            served, headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204
        bad = http.post(served, content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("served", ["novita_webhook"], indirect=True)
def test_staged_novita_webhook_serves(served: str) -> None:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        assert http.options(served).status_code == 204
        refused = http.post(served, json={"event_type": "ASYNC_TASK_RESULT"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"


# ----------------------------------------------------------------------------- shellcheck


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

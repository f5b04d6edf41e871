"""deploy.sh against a fake `gcloud` and `curl` that play an empty Google Cloud project (nothing
reaches Google), its staged sources, and functions-framework serving each staged folder on its own.

The fake keeps the project's resources in a JSON file and answers like gcloud does: `describe` of
something missing fails with gcloud's "not found" text, `create` of something that exists fails
with ALREADY_EXISTS, an IAM binding needs its member and resource to exist, and `subscriptions
update` keeps only the settings it is given (gcloud resets the ones left out)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.processes import LOOPBACK, free_port, start, stop, wait_until
from devstack.pubsub import with_action
from shared import topology as steps
from shared.tokens import sweep_token

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy.sh"
PROJECT = "sketch-deploy-test"
PROJECT_NUMBER = "123456789012"
WEBHOOK_URL = "https://novita-webhook-abc-uc.a.run.app"
CREATE_URL = "https://create-sketch-abc-uc.a.run.app"
ACCESS_TOKEN = "ya29.fake-access-token-must-not-leak"
API_KEY_VALUE = "nk-real-novita-key-must-not-leak"
WEBHOOK_SECRET_VALUE = "webhook-secret-value-must-not-leak"
SWEEP_TOKEN = sweep_token(WEBHOOK_SECRET_VALUE)
SECRET_VALUES = (API_KEY_VALUE, WEBHOOK_SECRET_VALUE, SWEEP_TOKEN, ACCESS_TOKEN)
ENTRY_POINTS = {"novita-webhook": "novita_webhook", "create-sketch": "create_sketch"}
RUNTIME_SA = f"sketch-machine@{PROJECT}.iam.gserviceaccount.com"
BUILD_SA = f"sketch-machine-build@{PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT = f"service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
BUCKET = f"{PROJECT}-sketch-media"

pytestmark = pytest.mark.timeout(180)

FAKE_GCLOUD = """
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
record = {"tool": "gcloud", "argv": argv}
URLS = {"novita-webhook": %(webhook_url)r, "create-sketch": %(create_url)r}
APIS = ["cloudfunctions", "run", "cloudbuild", "artifactregistry", "secretmanager", "firestore",
        "firebaserules", "cloudscheduler", "logging", "pubsub", "storage", "firebasestorage", "iam",
        "cloudresourcemanager"]
cloud_file = state / "cloud.json"
cloud = json.loads(cloud_file.read_text()) if cloud_file.exists() else {
    "service_accounts": [], "buckets": [], "topics": [], "subscriptions": {}, "jobs": {},
    "functions": {}, "indexes": [], "ttls": [], "bindings": [], "firebase_buckets": [], "lagged": []}
words = [a for a in argv if not a.startswith("-")]
command = " ".join(words[:3])
missing_secrets = os.environ.get("FAKE_MISSING_SECRETS", "").split(",")
denied = os.environ.get("FAKE_DESCRIBE_DENIED", "").split(",")


def option(name):
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def options(name):
    return [arg.split("=", 1)[1] for arg in argv if arg.startswith(name + "=")]


def settings():
    skip = ("--project", "--topic", "--flags-file", "--format", "--location", "--region", "--async")
    return {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a and not a.startswith(skip)}


class Fail(Exception):
    pass


def not_found(message):
    raise Fail(message)


def describe(kind, exists, missing_message, output):
    name = [w for w in words if w not in ("describe",)][-1]
    if kind in denied:
        raise Fail(f"ResponseError: status=[403], code=[Forbidden], message=[Permission denied on {name}]")
    if not exists:
        raise Fail(missing_message)
    print(output)


def create(collection, name):
    if name in cloud[collection]:
        raise Fail(f"ALREADY_EXISTS: Resource already exists in the project (resource={name}).")


def bind(resource):
    member = option("--member").split(":", 1)[1]
    if member.endswith(".iam.gserviceaccount.com") and "@gcp-sa-" not in member:
        if member not in cloud["service_accounts"]:
            raise Fail(f"INVALID_ARGUMENT: Service account {member} does not exist.")
        if os.environ.get("FAKE_IAM_LAG") and member not in cloud["lagged"]:
            cloud["lagged"].append(member)
            raise Fail(f"INVALID_ARGUMENT: Service account {member} does not exist.")
    binding = [resource, member, option("--role")]
    if binding not in cloud["bindings"]:
        cloud["bindings"].append(binding)
    print("bindings:\\n- members: [...]")


def index_fields():
    fields = []
    for config in options("--field-config"):
        parts = dict(part.split("=", 1) for part in config.split(","))
        fields.append({"fieldPath": parts["field-path"], "order": parts["order"].upper()})
    return fields + [{"fieldPath": "__name__", "order": fields[-1]["order"]}]


def run():
    if option("--flags-file"):
        record["flags_file"] = json.loads(Path(option("--flags-file")).read_text())
    if words[:2] == ["services", "list"]:
        missing = os.environ.get("FAKE_MISSING_APIS", "").split(",")
        print("\\n".join(f"{api}.googleapis.com" for api in APIS if api not in missing))
    elif words[:2] == ["projects", "describe"]:
        print(%(project_number)r)
    elif words[:2] == ["projects", "add-iam-policy-binding"]:
        assert option("--condition") == "None"
        bind("project/" + words[2])
    elif words[:3] == ["firestore", "databases", "describe"]:
        print("FIRESTORE_NATIVE")
    elif words[:4] == ["firestore", "indexes", "composite", "list"]:
        print(json.dumps(cloud["indexes"]))
    elif words[:4] == ["firestore", "indexes", "composite", "create"]:
        group = option("--collection-group")
        index = {"queryScope": option("--query-scope").upper().replace("-", "_"), "fields": index_fields()}
        if any({k: i[k] for k in index} == index and f"/collectionGroups/{group}/" in i["name"]
               for i in cloud["indexes"]):
            raise Fail("ALREADY_EXISTS: index already exists")
        name = (f"projects/{option('--project')}/databases/(default)/collectionGroups/{group}"
                f"/indexes/i{len(cloud['indexes'])}")
        cloud["indexes"].append({"name": name, "state": "CREATING", **index})
    elif words[:4] == ["firestore", "fields", "ttls", "list"]:
        print("\\n".join(cloud["ttls"]))
    elif words[:4] == ["firestore", "fields", "ttls", "update"]:
        assert "--enable-ttl" in argv
        name = (f"projects/{option('--project')}/databases/(default)/collectionGroups/"
                f"{option('--collection-group')}/fields/{words[4]}")
        if name not in cloud["ttls"]:
            cloud["ttls"].append(name)
    elif words[:2] == ["secrets", "describe"]:
        if words[2] in missing_secrets:
            raise Fail(f"NOT_FOUND: Secret [{words[2]}] not found")
        print(f"projects/123/secrets/{words[2]}")
    elif words[:3] == ["secrets", "versions", "access"]:
        secret = option("--secret")
        api_key = secret in ("novita-api-key", "nk")
        print(%(api_key)r if api_key else %(webhook_secret)r, end="")
    elif words[:2] == ["secrets", "add-iam-policy-binding"]:
        bind("secret/" + words[2])
    elif command == "iam service-accounts describe":
        exists = words[3] in cloud["service_accounts"]
        describe("service-accounts", exists, "NOT_FOUND: Unknown service account", words[3])
    elif command == "iam service-accounts create":
        email = f"{words[3]}@{option('--project')}.iam.gserviceaccount.com"
        create("service_accounts", email)
        cloud["service_accounts"].append(email)
    elif command == "storage buckets describe":
        bucket = words[3].removeprefix("gs://")
        describe("buckets", bucket in cloud["buckets"], f"{words[3]} not found: 404.", bucket)
    elif command == "storage buckets create":
        bucket = words[3].removeprefix("gs://")
        assert "--uniform-bucket-level-access" in argv and "--public-access-prevention" in argv
        create("buckets", bucket)
        cloud["buckets"].append(bucket)
    elif command == "storage buckets add-iam-policy-binding":
        if words[3].removeprefix("gs://") not in cloud["buckets"]:
            raise Fail(f"{words[3]} not found: 404.")
        bind("bucket/" + words[3].removeprefix("gs://"))
    elif command == "pubsub topics describe":
        describe("topics", words[3] in cloud["topics"], f"NOT_FOUND: Resource not found ({words[3]}).",
                 f"projects/{option('--project')}/topics/{words[3]}")
    elif command == "pubsub topics create":
        create("topics", words[3])
        cloud["topics"].append(words[3])
    elif command == "pubsub topics add-iam-policy-binding":
        if words[3] not in cloud["topics"]:
            raise Fail(f"NOT_FOUND: Resource not found (resource={words[3]}).")
        bind("topic/" + words[3])
    elif command == "pubsub subscriptions describe":
        sub = cloud["subscriptions"].get(words[3])
        describe("subscriptions", sub is not None, f"NOT_FOUND: Resource not found (resource={words[3]}).",
                 sub and f"projects/{option('--project')}/topics/{sub['topic']}")
    elif command == "pubsub subscriptions create":
        create("subscriptions", words[3])
        for topic in (option("--topic"), option("--dead-letter-topic")):
            if topic is not None and topic not in cloud["topics"]:
                raise Fail(f"NOT_FOUND: Resource not found (resource={topic}).")
        cloud["subscriptions"][words[3]] = {"topic": option("--topic"), **settings()}
    elif command == "pubsub subscriptions update":
        if words[3] not in cloud["subscriptions"]:
            raise Fail(f"NOT_FOUND: Resource not found (resource={words[3]}).")
        cloud["subscriptions"][words[3]] = {"topic": cloud["subscriptions"][words[3]]["topic"], **settings()}
    elif command == "pubsub subscriptions add-iam-policy-binding":
        if words[3] not in cloud["subscriptions"]:
            raise Fail(f"NOT_FOUND: Resource not found (resource={words[3]}).")
        bind("subscription/" + words[3])
    elif words[:2] == ["functions", "describe"]:
        name = words[2]
        region, project = option("--region"), option("--project")
        describe("functions", name in cloud["functions"],
                 f"ResponseError: status=[404], code=[Not Found], message=[Resource "
                 f"'projects/{project}/locations/{region}/functions/{name}' was not found]", URLS.get(name))
    elif words[:2] == ["functions", "deploy"]:
        for account in (option("--service-account"), option("--build-service-account").rsplit("/", 1)[1]):
            if account not in cloud["service_accounts"]:
                raise Fail(f"INVALID_ARGUMENT: service account {account} does not exist")
        source = Path(option("--source"))
        record["source_files"] = sorted(
            str(p.relative_to(source)) + ("/" if p.is_dir() else "") for p in source.rglob("*")
        )
        record["source_shared_is_symlink"] = (source / "shared").is_symlink()
        cloud["functions"][words[2]] = [a for a in argv if not a.startswith("--source=")]
        print(f"Deploying function {words[2]}... done. state: ACTIVE")
    elif command == "scheduler jobs describe":
        describe("jobs", words[3] in cloud["jobs"], "NOT_FOUND: Job not found.",
                 f"projects/{option('--project')}/locations/{option('--location')}/jobs/{words[3]}")
    elif words[:4] == ["scheduler", "jobs", "create", "http"]:
        create("jobs", words[4])
        cloud["jobs"][words[4]] = {**settings(), "headers": record["flags_file"]["--headers"]}
    elif words[:4] == ["scheduler", "jobs", "update", "http"]:
        if words[4] not in cloud["jobs"]:
            raise Fail("NOT_FOUND: Job not found.")
        cloud["jobs"][words[4]] = {**settings(), "headers": record["flags_file"]["--update-headers"]}
    elif words[:2] == ["auth", "print-access-token"]:
        print(%(token)r)
    else:
        print("fake gcloud: unexpected command " + " ".join(argv), file=sys.stderr)
        return 2
    return 0


try:
    code = run()
except Fail as exc:
    print(f"ERROR: (gcloud.{'.'.join(words[:3])}) {exc}", file=sys.stderr)
    code = 1
record["code"] = code
cloud_file.write_text(json.dumps(cloud))
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
cloud_file = state / "cloud.json"
cloud = json.loads(cloud_file.read_text())
storage = "https://firebasestorage.googleapis.com/v1beta/projects/"
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
elif method == "GET" and url.startswith(storage):
    bucket = url.rsplit("/", 1)[1]
    if bucket in cloud["firebase_buckets"]:
        status, answer = 200, {"name": url.split("/v1beta/", 1)[1]}
    else:
        status, answer = 404, {"error": {"code": 404, "status": "NOT_FOUND"}}
elif method == "POST" and url.startswith(storage) and url.endswith(":addFirebase"):
    bucket = url.rsplit("/", 1)[1].removesuffix(":addFirebase")
    if bucket not in cloud["buckets"] or body != {}:
        status, answer = 400, {"error": {"code": 400}}
    else:
        cloud["firebase_buckets"].append(bucket)
        cloud_file.write_text(json.dumps(cloud))
        status, answer = 200, {"name": url.split("/v1beta/", 1)[1].removesuffix(":addFirebase")}
else:
    status, answer = 400, {"error": "unexpected"}
record["status"] = status
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(record) + "\\n")
Path(out).write_text(json.dumps(answer))
sys.stdout.write(fmt.replace("%%{http_code}", str(status)))
"""


class Fake:
    """A temp dir with fake `gcloud` and `curl` first on PATH, the fake project and the call log."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.tmp = root / "tmp"
        for folder in (self.bin, self.state, self.tmp):
            folder.mkdir()
        values = {
            "webhook_url": WEBHOOK_URL,
            "create_url": CREATE_URL,
            "token": ACCESS_TOKEN,
            "project_number": PROJECT_NUMBER,
            "webhook_secret": WEBHOOK_SECRET_VALUE,
            "api_key": API_KEY_VALUE,
        }
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
            # The operator's shell may hold values of its own; the deploy must not use them.
            NOVITA_API_KEY="operator-shell-key",
            WEBHOOK_SECRET="operator-shell-webhook-secret",
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
            timeout=150,
            check=False,
        )

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return [call for call in calls if tool is None or call["tool"] == tool]

    def gcloud(self, *words: str) -> list[list[str]]:
        """The argv of each gcloud call whose command starts with `words`."""
        return [
            c["argv"]
            for c in self.calls("gcloud")
            if [a for a in c["argv"] if not a.startswith("-")][: len(words)] == list(words)
        ]

    def deploys(self) -> list[dict[str, Any]]:
        return [c for c in self.calls("gcloud") if c["argv"][:2] == ["functions", "deploy"]]

    def cloud(self) -> dict[str, Any]:
        """The fake project's resources."""
        return json.loads((self.state / "cloud.json").read_text())


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


def rest_subscription(settings: dict[str, str]) -> dict[str, Any]:
    """A subscription the fake holds (gcloud's flags), as the REST `Subscription` gcloud sends for
    them (durations in seconds with an `s`, `--expiration-period=never` = an empty policy)."""
    body: dict[str, Any] = {
        "topic": f"projects/{PROJECT}/topics/{settings['topic']}",
        "pushConfig": {"pushEndpoint": settings["--push-endpoint"]},
        "ackDeadlineSeconds": int(settings["--ack-deadline"]),
    }
    if settings.get("--expiration-period") == "never":
        body["expirationPolicy"] = {}
    if "--min-retry-delay" in settings or "--max-retry-delay" in settings:
        body["retryPolicy"] = {
            "minimumBackoff": settings["--min-retry-delay"],
            "maximumBackoff": settings["--max-retry-delay"],
        }
    if "--dead-letter-topic" in settings:
        body["deadLetterPolicy"] = {
            "deadLetterTopic": f"projects/{PROJECT}/topics/{settings['--dead-letter-topic']}",
            "maxDeliveryAttempts": int(settings["--max-delivery-attempts"]),
        }
    assert set(settings) <= {
        "topic",
        "--push-endpoint",
        "--ack-deadline",
        "--expiration-period",
        "--min-retry-delay",
        "--max-retry-delay",
        "--dead-letter-topic",
        "--max-delivery-attempts",
    }, settings
    return body


def assert_no_secret_leaked(fake: Fake, result: subprocess.CompletedProcess[str]) -> None:
    """No secret, derived token or access token in a command line or in the output."""
    for call in fake.calls():
        joined = " ".join(call["argv"])
        for value in SECRET_VALUES:
            assert value not in joined
    for value in SECRET_VALUES:
        assert value not in output(result)


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
        "--service-account",
        "--build-service-account",
        "--bucket",
        "--max-instances",
        "--concurrency",
        "--skip-rules",
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


def test_the_topology_and_the_token_need_nothing_beyond_pythons_standard_library(tmp_path: Path) -> None:
    """deploy.sh runs the repository's modules with the operator's own python3: -S (no site-packages)
    stands for a machine with none of the requirements installed."""
    for argv, stdin in ((["shared.topology", "shell"], None), (["shared.tokens", "sweep-token"], "s3cret")):
        run = subprocess.run(
            [sys.executable, "-S", "-m", *argv],
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == sweep_token("s3cret")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-mode", "open"], "--auth-mode must be firebase or none"),
        (["--cors-origins", "https://app.example.com/"], "no trailing slash"),
        (["--novita-base-url", "ftp://x"], "--novita-base-url must be an http(s) URL"),
        (["--bucket", "Media_Bucket"], "is not a Cloud Storage bucket name"),
        (["--service-account", "sketch-machine"], "is not a service account email"),
        (["--bogus"], "unknown argument"),
        (["--region"], "--region needs a value"),
    ],
)
def test_bad_flags_are_refused(fake: Fake, args: list[str], message: str) -> None:
    result = fake.run("--project", PROJECT, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert fake.calls() == []


def test_missing_secret_says_how_to_create_it(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_MISSING_SECRETS="webhook-secret")
    assert result.returncode != 0
    assert "gcloud secrets create webhook-secret" in result.stderr
    assert f"it lets {RUNTIME_SA} read them (roles/secretmanager.secretAccessor)" in result.stderr
    assert "gcloud secrets create novita-api-key" not in result.stderr
    assert fake.deploys() == [] and fake.calls("curl") == []
    assert fake.cloud()["service_accounts"] == [], "nothing is created before the checks pass"


def test_missing_api_says_how_to_enable_it(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_MISSING_APIS="cloudbuild,pubsub,firebasestorage")
    assert result.returncode != 0
    assert (
        "gcloud services enable cloudbuild.googleapis.com pubsub.googleapis.com "
        f"firebasestorage.googleapis.com --project={PROJECT}" in result.stderr
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
        f"+ gcloud iam service-accounts create sketch-machine --project={PROJECT}",
        f"+ gcloud iam service-accounts create sketch-machine-build --project={PROJECT}",
        f"+ gcloud projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{RUNTIME_SA} "
        "--role=roles/datastore.user",
        f"+ gcloud storage buckets create gs://{BUCKET}",
        "+ gcloud auth print-access-token",
        "+ curl -sS --max-time 60 -o ",
        "+ gcloud firestore indexes composite create",
        "+ gcloud firestore fields ttls update expires_at --collection-group=sketches_idempotency",
        "+ gcloud firestore fields ttls update expires_at --collection-group=sketches_daily",
        f"+ gcloud pubsub topics create {steps.TOPIC}",
        f"+ gcloud pubsub topics create {steps.DEAD_LETTER_TOPIC}",
        "+ gcloud functions describe novita-webhook",
        f"+ gcloud pubsub subscriptions create {steps.DEAD_LETTER_SUBSCRIPTION}",
        f"+ gcloud pubsub subscriptions create {steps.SUBSCRIPTION}",
        "+ gcloud secrets versions access latest --secret=webhook-secret",
        "+ gcloud scheduler jobs create http sketch-recovery-sweep",
    ):
        assert any(line.startswith(expected) for line in lines), expected
    assert any(
        line.startswith("+ curl ") and line.endswith(f"/buckets/{BUCKET}:addFirebase") for line in lines
    )
    assert "--headers=Authorization=Bearer <sweep token>" in result.stdout
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
        assert option(argv, "--service-account") == RUNTIME_SA
        assert option(argv, "--build-service-account") == f"projects/{PROJECT}/serviceAccounts/{BUILD_SA}"
        assert option(argv, "--set-secrets") == (
            "NOVITA_API_KEY=novita-api-key:latest,WEBHOOK_SECRET=webhook-secret:latest"
        )
        env = env_vars(argv)
        assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
        assert env["AUTH_MODE"] == "firebase"
        assert env["MEDIA_BUCKET"] == BUCKET
        assert env["CORS_ALLOWED_ORIGINS"] == "https://app.example.com,http://localhost:5173"
        assert "NOVITA_API_KEY" not in env and "WEBHOOK_SECRET" not in env
        # One instance serves 32 requests at once, one gunicorn thread each; the webhook holds
        # up to 32 stills of up to 10 MiB at once.
        assert option(argv, "--concurrency") == env["THREADS"] == "32"
        assert option(argv, "--memory") == ("1Gi" if name == "novita-webhook" else "512Mi")
        # A step runs within the webhook's timeout, which ends before Pub/Sub's ack deadline.
        timeout = f"{steps.FUNCTION_TIMEOUT_SECONDS}s" if name == "novita-webhook" else "60s"
        assert option(argv, "--timeout") == timeout
        assert {"main.py", "requirements.txt", ".gcloudignore", "shared/", "shared/config.py"} <= set(
            deploy["source_files"]
        )
        assert not any("__pycache__" in f or f.startswith("tests") for f in deploy["source_files"])
        assert deploy["source_shared_is_symlink"] is False
    assert steps.STEP_DEADLINE_SECONDS < steps.FUNCTION_TIMEOUT_SECONDS < steps.ACK_DEADLINE_SECONDS

    # The first webhook deploy carries a placeholder; its URL is read back and set on both.
    describe = ["functions", "describe", "novita-webhook"]
    calls = fake.calls("gcloud")
    first_deploy = calls.index(deploys[0])
    assert any(c["argv"][:3] == describe for c in calls[first_deploy + 1 : calls.index(deploys[1])])
    assert env_vars(deploys[1]["argv"])["WEBHOOK_URL"] == WEBHOOK_URL
    assert env_vars(deploys[2]["argv"])["WEBHOOK_URL"] == WEBHOOK_URL
    assert "--format=value(serviceConfig.uri)" in next(c["argv"] for c in calls if c["argv"][:3] == describe)

    # The checks come before any change; the subscriptions between the two functions (a step
    # published before its subscription exists would be lost).
    kinds = [tuple(c["argv"][:2]) for c in calls]
    assert kinds.index(("secrets", "describe")) < kinds.index(("iam", "service-accounts"))
    subscription_created = next(
        i for i, c in enumerate(calls) if c["argv"][:3] == ["pubsub", "subscriptions", "create"]
    )
    assert calls.index(deploys[1]) < subscription_created < calls.index(deploys[2])

    # Rules: a ruleset from firestore.rules, then the release cloud.firestore points at it.
    rules = [c for c in fake.calls("curl") if "firebaserules" in c["url"]]
    assert [(c["method"], c["url"]) for c in rules] == [
        ("POST", f"https://firebaserules.googleapis.com/v1/projects/{PROJECT}/rulesets"),
        ("PATCH", f"https://firebaserules.googleapis.com/v1/projects/{PROJECT}/releases/cloud.firestore"),
    ]
    assert rules[0]["body"]["source"]["files"] == [
        {"name": "firestore.rules", "content": (ROOT / "firestore.rules").read_text()}
    ]
    assert rules[1]["body"]["release"] == {
        "name": f"projects/{PROJECT}/releases/cloud.firestore",
        "rulesetName": f"projects/{PROJECT}/rulesets/ruleset-1",
    }
    assert all(c["authorized"] for c in fake.calls("curl"))
    assert all(f"x-goog-user-project: {PROJECT}" in c["headers"] for c in fake.calls("curl"))
    assert_no_secret_leaked(fake, result)

    out = result.stdout
    assert WEBHOOK_URL in out and CREATE_URL in out
    assert "AUTH_MODE=firebase" in out
    assert "Recovery sweep (Cloud Scheduler, once per project" not in out
    assert list(fake.tmp.iterdir()) == [], "the temporary staging folder is removed on exit"


def test_first_deploy_creates_every_resource(fake: Fake) -> None:
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    cloud = fake.cloud()
    assert sorted(cloud["service_accounts"]) == sorted([RUNTIME_SA, BUILD_SA])
    assert cloud["buckets"] == [BUCKET]
    assert cloud["firebase_buckets"] == [BUCKET]
    assert option(fake.gcloud("storage", "buckets", "create")[0], "--location") == "us-central1"
    assert sorted(cloud["topics"]) == sorted([steps.TOPIC, steps.DEAD_LETTER_TOPIC])
    assert sorted(cloud["functions"]) == ["create-sketch", "novita-webhook"]

    # Exactly these roles, each on the narrowest resource that carries it.
    assert sorted(map(tuple, cloud["bindings"])) == sorted(
        [
            (f"project/{PROJECT}", RUNTIME_SA, "roles/datastore.user"),
            (f"project/{PROJECT}", BUILD_SA, "roles/run.builder"),
            ("secret/novita-api-key", RUNTIME_SA, "roles/secretmanager.secretAccessor"),
            ("secret/webhook-secret", RUNTIME_SA, "roles/secretmanager.secretAccessor"),
            (f"bucket/{BUCKET}", RUNTIME_SA, "roles/storage.objectUser"),
            (f"topic/{steps.TOPIC}", RUNTIME_SA, "roles/pubsub.publisher"),
            # Without these two, Pub/Sub never moves a failing step to the dead letters.
            (f"topic/{steps.DEAD_LETTER_TOPIC}", PUBSUB_AGENT, "roles/pubsub.publisher"),
            (f"subscription/{steps.SUBSCRIPTION}", PUBSUB_AGENT, "roles/pubsub.subscriber"),
        ]
    )

    # The push subscriptions are the ones the local stack builds from shared/topology.py.
    subscriptions = cloud["subscriptions"]
    assert sorted(subscriptions) == sorted([steps.SUBSCRIPTION, steps.DEAD_LETTER_SUBSCRIPTION])
    assert rest_subscription(subscriptions[steps.SUBSCRIPTION]) == steps.subscription_body(
        PROJECT,
        steps.TOPIC,
        with_action(WEBHOOK_URL, steps.STEP_ACTION),
        steps.PRODUCTION_RETRY,
        dead_letters=True,
    )
    assert rest_subscription(subscriptions[steps.DEAD_LETTER_SUBSCRIPTION]) == steps.subscription_body(
        PROJECT,
        steps.DEAD_LETTER_TOPIC,
        with_action(WEBHOOK_URL, steps.DEAD_LETTER_ACTION),
        steps.PRODUCTION_RETRY,
        dead_letters=False,
    )

    # Firestore: the indexes of firestore.indexes.json, and the TTL policies.
    wanted = json.loads((ROOT / "firestore.indexes.json").read_text())["indexes"]
    assert [
        {
            "collectionGroup": index["name"].split("/collectionGroups/")[1].split("/")[0],
            "queryScope": index["queryScope"],
            "fields": index["fields"][:-1],
        }
        for index in cloud["indexes"]
    ] == wanted
    assert all("--async" in argv for argv in fake.gcloud("firestore", "indexes", "composite", "create"))
    assert sorted(cloud["ttls"]) == sorted(
        f"projects/{PROJECT}/databases/(default)/collectionGroups/{group}/fields/expires_at"
        for group in ("sketches_idempotency", "sketches_daily")
    )

    # The sweep: every minute, POST with the token derived from the webhook secret.
    job = cloud["jobs"]["sketch-recovery-sweep"]
    assert job == {
        "--schedule": "* * * * *",
        "--time-zone": "Etc/UTC",
        "--uri": f"{WEBHOOK_URL}?action=sweep",
        "--http-method": "post",
        "--attempt-deadline": "180s",
        "headers": f"Authorization=Bearer {SWEEP_TOKEN}",
    }
    assert option(fake.gcloud("scheduler", "jobs", "create")[0], "--location") == "us-central1"
    assert "Created:" in result.stdout and "Cloud Scheduler job sketch-recovery-sweep" in result.stdout


def test_running_again_creates_nothing(fake: Fake) -> None:
    first = fake.run("--project", PROJECT)
    assert first.returncode == 0, output(first)
    before = fake.cloud()
    calls_before = len(fake.calls())
    second = fake.run("--project", PROJECT)
    assert second.returncode == 0, output(second)
    after = fake.cloud()
    assert after == before, "the second run leaves the project as the first made it"

    again = fake.calls()[calls_before:]
    gcloud_words = [[a for a in c["argv"] if not a.startswith("-")] for c in again if c["tool"] == "gcloud"]
    assert not [w for w in gcloud_words if "create" in w], "nothing is created twice"
    assert not [c for c in again if c["tool"] == "curl" and c["url"].endswith(":addFirebase")]
    assert all(c["code"] == 0 for c in again if c["tool"] == "gcloud")
    updated = [" ".join(w[:4]) for w in gcloud_words if "update" in w]
    assert sorted(updated) == sorted(
        [
            f"pubsub subscriptions update {steps.DEAD_LETTER_SUBSCRIPTION}",
            f"pubsub subscriptions update {steps.SUBSCRIPTION}",
            "scheduler jobs update http",
        ]
    )
    # The webhook exists now: one deploy of it with its real URL, no placeholder.
    deploys = [c for c in again if c["argv"][:2] == ["functions", "deploy"]]
    assert [d["argv"][2] for d in deploys] == ["novita-webhook", "create-sketch"]
    assert all(env_vars(d["argv"])["WEBHOOK_URL"] == WEBHOOK_URL for d in deploys)
    assert "nothing: everything existed" in second.stdout
    assert_no_secret_leaked(fake, second)


def test_sweep_token_never_leaks(fake: Fake) -> None:
    # The operator's shell holds another WEBHOOK_SECRET (Fake.env): the token comes from the secret
    # in Secret Manager all the same.
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    jobs = [c for c in fake.calls("gcloud") if c["argv"][:2] == ["scheduler", "jobs"] and "flags_file" in c]
    assert [c["flags_file"] for c in jobs] == [{"--headers": f"Authorization=Bearer {SWEEP_TOKEN}"}]
    assert "--format=none" in jobs[0]["argv"], "gcloud would print the job, header included"
    assert "Authorization=Bearer <sweep token>" in result.stdout
    assert_no_secret_leaked(fake, result)
    assert list(fake.tmp.iterdir()) == [], "the flags file goes with the temporary folder"


@pytest.mark.parametrize("kind", ["functions", "topics", "jobs"])
def test_a_describe_that_is_refused_stops_the_deploy(fake: Fake, kind: str) -> None:
    result = fake.run("--project", PROJECT, FAKE_DESCRIBE_DENIED=kind)
    assert result.returncode != 0
    assert "status=[403]" in result.stderr, "gcloud's own message is shown"
    assert "could not tell whether" in result.stderr and "stopped before changing it" in result.stderr
    if kind == "functions":
        assert fake.deploys() == [], "a live webhook is never redeployed with the placeholder URL"
    if kind == "topics":
        assert fake.gcloud("pubsub", "topics", "create") == [] and fake.deploys() == []
    if kind == "jobs":
        assert fake.gcloud("scheduler", "jobs", "create") == []


def test_a_function_gcloud_says_is_not_found_is_deployed_first_time(fake: Fake) -> None:
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    describes = [
        c for c in fake.calls("gcloud") if c["argv"][:3] == ["functions", "describe", "novita-webhook"]
    ]
    assert describes[0]["code"] == 1, "the fake answered 'not found' as gcloud does"
    assert env_vars(fake.deploys()[0]["argv"])["WEBHOOK_URL"] == "https://novita-webhook.invalid/"
    assert "novita-webhook does not exist yet" in result.stdout


def test_a_service_account_iam_does_not_know_yet_is_tried_again(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, "--skip-rules", FAKE_IAM_LAG="1")
    assert result.returncode == 0, output(result)
    assert "IAM does not know the member yet" in result.stdout
    first = fake.gcloud("projects", "add-iam-policy-binding")
    assert [option(argv, "--role") for argv in first][:2] == ["roles/datastore.user", "roles/datastore.user"]


def test_existing_indexes_and_ttls_are_not_created_again(fake: Fake) -> None:
    listed = [
        {
            "name": f"projects/{PROJECT}/databases/(default)/collectionGroups/sketches/indexes/CICAgJim14AK",
            "queryScope": "COLLECTION",
            "state": "READY",
            "fields": [
                {"fieldPath": "user_id", "order": "ASCENDING"},
                {"fieldPath": "created_at", "order": "DESCENDING"},
                {"fieldPath": "__name__", "order": "DESCENDING"},
            ],
        }
    ]
    ttl = f"projects/{PROJECT}/databases/(default)/collectionGroups/sketches_daily/fields/expires_at"
    fake.state.joinpath("cloud.json").write_text(
        json.dumps(
            {
                "service_accounts": [],
                "buckets": [],
                "topics": [],
                "subscriptions": {},
                "jobs": {},
                "functions": {},
                "indexes": listed,
                "ttls": [ttl],
                "bindings": [],
                "firebase_buckets": [],
                "lagged": [],
            }
        )
    )
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    assert fake.gcloud("firestore", "indexes", "composite", "create") == []
    updates = fake.gcloud("firestore", "fields", "ttls", "update")
    assert [option(argv, "--collection-group") for argv in updates] == ["sketches_idempotency"]


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


def test_names_and_region_can_be_changed(fake: Fake) -> None:
    other_sa = f"runner@{PROJECT}.iam.gserviceaccount.com"
    result = fake.run(
        "--project",
        PROJECT,
        "--api-key-secret",
        "nk",
        "--webhook-secret-secret=wh",
        "--bucket",
        "gs://my-sketch-media",
        "--service-account",
        other_sa,
        REGION="europe-west1",
        FAKE_MISSING_SECRETS="novita-api-key,webhook-secret",
    )
    assert result.returncode == 0, output(result)
    described = [c["argv"][2] for c in fake.calls("gcloud") if c["argv"][:2] == ["secrets", "describe"]]
    assert described == ["nk", "wh"]
    cloud = fake.cloud()
    assert cloud["buckets"] == ["my-sketch-media"] and cloud["firebase_buckets"] == ["my-sketch-media"]
    assert other_sa in cloud["service_accounts"]
    assert ["secret/wh", other_sa, "roles/secretmanager.secretAccessor"] in cloud["bindings"]
    for deploy in fake.deploys():
        assert option(deploy["argv"], "--set-secrets") == "NOVITA_API_KEY=nk:latest,WEBHOOK_SECRET=wh:latest"
        assert option(deploy["argv"], "--region") == "europe-west1"
        assert option(deploy["argv"], "--service-account") == other_sa
        assert env_vars(deploy["argv"])["MEDIA_BUCKET"] == "my-sketch-media"
    assert option(fake.gcloud("scheduler", "jobs", "create")[0], "--location") == "europe-west1"
    assert option(fake.gcloud("storage", "buckets", "create")[0], "--location") == "europe-west1"


def test_first_rules_release_is_created(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_NO_RELEASE="1")
    assert result.returncode == 0, output(result)
    rules = [c for c in fake.calls("curl") if "firebaserules" in c["url"]]
    assert [(c["method"], c["url"].rsplit("/", 1)[1]) for c in rules] == [
        ("POST", "rulesets"),
        ("PATCH", "cloud.firestore"),
        ("POST", "releases"),
    ]


def test_skip_rules_calls_no_rules_api(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, "--skip-rules")
    assert result.returncode == 0, output(result)
    assert not [c for c in fake.calls("curl") if "firebaserules" in c["url"]]
    assert fake.cloud()["firebase_buckets"] == [BUCKET], "the bucket is linked all the same"


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


def preflight_answered(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return httpx.options(url, timeout=0.5).status_code == 204
        except httpx.HTTPError:
            return False

    return probe


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
            # An OPTIONS preflight is answered without Firestore (nothing listens at its address).
            wait_until(preflight_answered(url), 30, f"staged {entry}", proc)
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
        sketch = {"sketch": "0" * 32, "stage": "image", "token": "forged"}
        refused = http.post(served, params=sketch, json={"event_type": "ASYNC_TASK_RESULT"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        sweep = http.post(served, params={"action": "sweep"}, headers={"Authorization": "Bearer forged"})
        assert sweep.status_code == 401


# ----------------------------------------------------------------------------- shellcheck


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr

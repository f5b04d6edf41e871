"""deploy.sh against a fake `gcloud`, `curl` and `sleep` that play an empty Google Cloud project
(nothing reaches Google, nothing waits), its staged sources, and functions-framework serving each
staged folder on its own.

The fake keeps the project's resources in a JSON file and answers like gcloud does: `describe` of
something missing fails with gcloud's "not found" text, `create` of something that exists fails
with ALREADY_EXISTS, an IAM binding needs its member and resource to exist, `subscriptions
update` keeps only the settings it is given (gcloud resets the ones left out), a function deploy
turns its Cloud Run service's invoker IAM check back on (nobody has confirmed that it does not),
and `scheduler jobs run` calls the job's URI the way Cloud Run would let it in: only with an OIDC
token of an account holding roles/run.invoker on the private door, and the sweep token in
X-Sweep-Token. The fake `curl` plays the Firebase Rules and Storage APIs and the download-token
URLs; the fake `sleep` only writes down how long it was asked to wait."""

from __future__ import annotations

import filecmp
import json
import os
import re
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
from shared.core.tokens import sweep_token
from shared.pipeline import topology as steps

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy.sh"
PROJECT = "sketch-deploy-test"
PROJECT_NUMBER = "123456789012"
WEBHOOK_URL = "https://novita-webhook-abc-uc.a.run.app"
STEPS_URL = "https://novita-webhook-steps-abc-uc.a.run.app"
CREATE_URL = "https://create-sketch-abc-uc.a.run.app"
ACCESS_TOKEN = "ya29.fake-access-token-must-not-leak"
API_KEY_VALUE = "nk-real-novita-key-must-not-leak"
WEBHOOK_SECRET_VALUE = "webhook-secret-value-must-not-leak"
SWEEP_TOKEN = sweep_token(WEBHOOK_SECRET_VALUE)
SECRET_VALUES = (API_KEY_VALUE, WEBHOOK_SECRET_VALUE, SWEEP_TOKEN, ACCESS_TOKEN)
FUNCTIONS = ("novita-webhook", "novita-webhook-steps", "create-sketch")
ENTRY_POINTS = {
    "novita-webhook": "novita_webhook",
    "novita-webhook-steps": "novita_webhook",
    "create-sketch": "create_sketch",
}
RUNTIME_SA = f"sketch-machine@{PROJECT}.iam.gserviceaccount.com"
BUILD_SA = f"sketch-machine-build@{PROJECT}.iam.gserviceaccount.com"
PUSH_SA = f"sketch-machine-push@{PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT = f"service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
BUCKET = f"{PROJECT}-sketch-media"
ANNOTATION = '--format=value(metadata.annotations."run.googleapis.com/invoker-iam-disabled")'

pytestmark = [pytest.mark.timeout(180), pytest.mark.stack]


def empty_cloud() -> dict[str, Any]:
    return {
        "service_accounts": [],
        "buckets": [],
        "topics": [],
        "subscriptions": {},
        "jobs": {},
        "functions": {},
        "services": {},
        "indexes": [],
        "ttls": [],
        "bindings": [],
        "firebase_buckets": [],
        "lagged": [],
        "releases": [],
        "objects": {},
        "logs": [],
        "deploy_errors_used": 0,
    }


FAKE_GCLOUD = """
import json, os, re, sys
from datetime import datetime, timezone
from pathlib import Path

argv = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
record = {"tool": "gcloud", "argv": argv}
URLS = {"novita-webhook": %(webhook_url)r, "novita-webhook-steps": %(steps_url)r,
        "create-sketch": %(create_url)r}
APIS = ["cloudfunctions", "run", "cloudbuild", "artifactregistry", "secretmanager", "firestore",
        "firebaserules", "cloudscheduler", "logging", "pubsub", "storage", "firebasestorage", "iam",
        "cloudresourcemanager"]
cloud_file = state / "cloud.json"
cloud = json.loads(cloud_file.read_text()) if cloud_file.exists() else {}
for key, empty in %(empty)r.items():
    cloud.setdefault(key, empty)
words = [a for a in argv if not a.startswith("-")]
command = " ".join(words[:3])
missing_secrets = os.environ.get("FAKE_MISSING_SECRETS", "").split(",")
denied = os.environ.get("FAKE_DESCRIBE_DENIED", "").split(",")


def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def option(name):
    for arg in argv:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def options(name):
    return [arg.split("=", 1)[1] for arg in argv if arg.startswith(name + "=")]


def settings():
    skip = ("--project", "--topic", "--flags-file", "--format", "--location", "--region", "--async",
            "--remove-headers")
    return {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if "=" in a and not a.startswith(skip)}


def env_of(raw):
    delimiter = ","
    if raw.startswith("^"):
        delimiter, raw = raw[1:].split("^", 1)
    return dict(item.split("=", 1) for item in raw.split(delimiter))


def headers_of(raw):
    return dict(item.split("=", 1) for item in raw.split(",")) if raw else {}


class Fail(Exception):
    pass


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


def bind(resource, role=None):
    member = option("--member").split(":", 1)[1]
    if member.endswith(".iam.gserviceaccount.com") and "@gcp-sa-" not in member:
        if member not in cloud["service_accounts"]:
            raise Fail(f"INVALID_ARGUMENT: Service account {member} does not exist.")
        if os.environ.get("FAKE_IAM_LAG") and member not in cloud["lagged"]:
            cloud["lagged"].append(member)
            raise Fail(f"INVALID_ARGUMENT: Service account {member} does not exist.")
    binding = [resource, member, role or option("--role")]
    if binding not in cloud["bindings"]:
        cloud["bindings"].append(binding)
    print("bindings:\\n- members: [...]")


def index_fields():
    fields = []
    for config in options("--field-config"):
        parts = dict(part.split("=", 1) for part in config.split(","))
        fields.append({"fieldPath": parts["field-path"], "order": parts["order"].upper()})
    return fields + [{"fieldPath": "__name__", "order": fields[-1]["order"]}]


def function_missing(name):
    return (f"ResponseError: status=[404], code=[Not Found], message=[Resource 'projects/"
            f"{option('--project')}/locations/{option('--region')}/functions/{name}' was not found]")


def service_of(name):
    if name not in cloud["services"]:
        raise Fail(f"NOT_FOUND: Resource 'projects/{option('--project')}/locations/{option('--region')}"
                   f"/services/{name}' could not be found.")
    return cloud["services"][name]


def call_the_sweep(job):
    \"\"\"What Cloud Run and the private door answer the job: a google.rpc code, '' for a 2xx.\"\"\"
    if os.environ.get("FAKE_SWEEP_STATUS"):
        return os.environ["FAKE_SWEEP_STATUS"]
    door = URLS["novita-webhook-steps"]
    if job.get("--uri") != door + "?action=sweep":
        return "5"
    account = job.get("--oidc-service-account-email")
    if job.get("--oidc-token-audience") != door or cloud["services"].get("novita-webhook-steps", {}).get(
            "invoker_iam_disabled", True):
        return "16"
    if ["function/novita-webhook-steps", account, "roles/run.invoker"] not in cloud["bindings"]:
        return "7"
    if job["headers"] != {"X-Sweep-Token": %(sweep_token)r}:
        return "16"
    return ""


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
    elif command == "iam service-accounts add-iam-policy-binding":
        if words[3] not in cloud["service_accounts"]:
            raise Fail(f"NOT_FOUND: Service account {words[3]} does not exist.")
        bind("serviceaccount/" + words[3])
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
    elif words[:2] == ["storage", "cp"]:
        bucket, _, path = words[3].removeprefix("gs://").partition("/")
        if bucket not in cloud["buckets"]:
            raise Fail(f"gs://{bucket} not found: 404.")
        metadata = dict(item.split("=", 1) for item in (option("--custom-metadata") or "").split(",") if item)
        cloud["objects"][f"{bucket}/{path}"] = {
            "content": Path(words[2]).read_text(), "token": metadata.get("firebaseStorageDownloadTokens")}
    elif words[:2] == ["storage", "rm"]:
        key = words[2].removeprefix("gs://")
        if cloud["objects"].pop(key, None) is None:
            raise Fail(f"{words[2]} not found: 404.")
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
        function = cloud["functions"].get(name)
        fmt = option("--format")
        if fmt == "json":
            output = function and json.dumps({
                "name": f"projects/{option('--project')}/locations/{option('--region')}/functions/{name}",
                "serviceConfig": {
                    "uri": URLS.get(name),
                    "service": (f"projects/{option('--project')}/locations/{option('--region')}"
                                f"/services/{name}"),
                    # Cloud Functions sets this one itself on every gen2 function.
                    "environmentVariables": {**function["env"], "LOG_EXECUTION_ID": "true"},
                },
            })
        elif fmt == "value(serviceConfig.service.basename())":
            output = name
        else:
            assert fmt == "value(serviceConfig.uri)", fmt
            output = URLS.get(name)
        describe("functions", function is not None, function_missing(name), output)
    elif words[:2] == ["functions", "deploy"]:
        errors = [e for e in os.environ.get("FAKE_DEPLOY_ERRORS", "").split("|") if e]
        if cloud["deploy_errors_used"] < len(errors):
            cloud["deploy_errors_used"] += 1
            raise Fail(errors[cloud["deploy_errors_used"] - 1])
        for account in (option("--service-account"), option("--build-service-account").rsplit("/", 1)[1]):
            if account not in cloud["service_accounts"]:
                raise Fail(f"INVALID_ARGUMENT: service account {account} does not exist")
        source = Path(option("--source"))
        record["source_files"] = sorted(
            str(p.relative_to(source)) + ("/" if p.is_dir() else "") for p in source.rglob("*")
        )
        record["source_shared_is_symlink"] = (source / "shared").is_symlink()
        cloud["functions"][words[2]] = {"argv": [a for a in argv if not a.startswith("--source=")],
                                        "env": env_of(option("--set-env-vars"))}
        # Whether a deploy keeps the service's invoker IAM check as it was is not known: play it safe.
        cloud["services"][words[2]] = {"invoker_iam_disabled": False}
        print(f"Deploying function {words[2]}... done. state: ACTIVE", file=sys.stderr)
    elif words[:2] == ["functions", "add-invoker-policy-binding"]:
        if words[2] not in cloud["functions"]:
            raise Fail(function_missing(words[2]))
        bind("function/" + words[2], "roles/run.invoker")
    elif command == "run services update":
        service = service_of(words[3])
        if words[3] not in os.environ.get("FAKE_INVOKER_STUCK", "").split(","):
            if "--no-invoker-iam-check" in argv:
                service["invoker_iam_disabled"] = True
            elif "--invoker-iam-check" in argv:
                service["invoker_iam_disabled"] = False
    elif command == "run services describe":
        service = service_of(words[3])
        assert option("--format") == %(annotation)r[len("--format="):], argv
        print(os.environ.get("FAKE_ANNOTATION_VALUE", "true") if service["invoker_iam_disabled"] else "")
    elif command == "scheduler jobs describe":
        job = cloud["jobs"].get(words[3])
        if option("--format") == "value(status.code,lastAttemptTime)":
            output = job and f"{job.get('status_code', '')}\\t{job.get('lastAttemptTime', '')}"
        else:
            output = f"projects/{option('--project')}/locations/{option('--location')}/jobs/{words[3]}"
        describe("jobs", job is not None, "NOT_FOUND: Job not found.", output)
    elif words[:4] == ["scheduler", "jobs", "create", "http"]:
        create("jobs", words[4])
        cloud["jobs"][words[4]] = {**settings(), "headers": headers_of(record["flags_file"]["--headers"])}
    elif words[:4] == ["scheduler", "jobs", "update", "http"]:
        if words[4] not in cloud["jobs"]:
            raise Fail("NOT_FOUND: Job not found.")
        headers = cloud["jobs"][words[4]]["headers"]
        for name in (option("--remove-headers") or "").split(","):
            headers.pop(name, None)
        headers.update(headers_of(record["flags_file"]["--update-headers"]))
        cloud["jobs"][words[4]] = {**settings(), "headers": headers}
    elif command == "scheduler jobs run":
        job = cloud["jobs"].get(words[3])
        if job is None:
            raise Fail("NOT_FOUND: Job not found.")
        if not os.environ.get("FAKE_SCHEDULER_SILENT"):
            job["lastAttemptTime"] = now()
            job["status_code"] = call_the_sweep(job)
            if job["status_code"] == "" and not os.environ.get("FAKE_NO_SWEEP_LOG"):
                cloud["logs"].append({
                    "timestamp": now(),
                    "resource": {"type": "cloud_run_revision",
                                 "labels": {"service_name": "novita-webhook-steps"}},
                    "jsonPayload": {"severity": "INFO", "message": "sweep finished", "examined": 3,
                                    "changed": 1, "errors": ["sketch 0f: task-result 503"], "more": False},
                })
    elif words[:2] == ["logging", "read"]:
        service = re.search(r'resource.labels.service_name="([^"]+)"', words[2]).group(1)
        since = re.search(r'timestamp>="([^"]+)"', words[2]).group(1)
        since = datetime.fromisoformat(since.replace("Z", "+00:00"))
        assert 'jsonPayload.message="sweep finished"' in words[2] and option("--limit") == "1"
        found = [e for e in cloud["logs"] if e["resource"]["labels"]["service_name"] == service
                 and datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) >= since]
        print(json.dumps(found[::-1][:1]))
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
from urllib.parse import parse_qs, unquote, urlsplit

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
cloud_file = state / "cloud.json"
cloud = json.loads(cloud_file.read_text())
storage = "https://firebasestorage.googleapis.com/v1beta/projects/"
media = "https://firebasestorage.googleapis.com/v0/b/"
raw = None
if method == "POST" and url.endswith("/rulesets"):
    status, answer = 200, {"name": url.split("/v1/", 1)[1] + "/ruleset-1"}
elif method == "PATCH" and "/releases/" in url:
    name = url.split("/v1/", 1)[1]
    if os.environ.get("FAKE_NO_RELEASE") and name not in cloud["releases"]:
        status, answer = 404, {"error": {"code": 404, "status": "NOT_FOUND"}}
    else:
        status, answer = 200, body["release"]
elif method == "POST" and url.endswith("/releases"):
    cloud["releases"].append(body["name"])
    cloud_file.write_text(json.dumps(cloud))
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
elif method == "GET" and url.startswith(media):
    # A download-token URL: served when the object exists and the token is its own.
    parts = urlsplit(url)
    bucket, _, encoded = parts.path.removeprefix("/v0/b/").partition("/o/")
    query = parse_qs(parts.query)
    stored = cloud["objects"].get(f"{bucket}/{unquote(encoded)}")
    answer = {"error": {"code": 403, "message": "Permission denied."}}
    if os.environ.get("FAKE_TOKEN_URL_STATUS"):
        status = int(os.environ["FAKE_TOKEN_URL_STATUS"])
    elif stored is None or bucket not in cloud["firebase_buckets"]:
        status = 404
    elif query.get("alt") != ["media"] or query.get("token") != [stored["token"]]:
        status = 403
    else:
        status, raw = 200, stored["content"]
else:
    status, answer = 400, {"error": "unexpected"}
record["status"] = status
with open(state / "calls.jsonl", "a") as log:
    log.write(json.dumps(record) + "\\n")
Path(out).write_text(raw if raw is not None else json.dumps(answer))
sys.stdout.write(fmt.replace("%%{http_code}", str(status)))
"""

FAKE_SLEEP = """
import json, os, sys
from pathlib import Path

with open(Path(os.environ["FAKE_STATE"]) / "calls.jsonl", "a") as log:
    log.write(json.dumps({"tool": "sleep", "argv": sys.argv[1:]}) + "\\n")
"""


class Fake:
    """A temp dir with fake `gcloud`, `curl` and `sleep` first on PATH, the fake project and the
    call log."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.state = root / "state"
        self.tmp = root / "tmp"
        for folder in (self.bin, self.state, self.tmp):
            folder.mkdir()
        values = {
            "webhook_url": WEBHOOK_URL,
            "steps_url": STEPS_URL,
            "create_url": CREATE_URL,
            "token": ACCESS_TOKEN,
            "project_number": PROJECT_NUMBER,
            "webhook_secret": WEBHOOK_SECRET_VALUE,
            "api_key": API_KEY_VALUE,
            "sweep_token": SWEEP_TOKEN,
            "annotation": ANNOTATION,
            "empty": empty_cloud(),
        }
        for name, source in (("gcloud", FAKE_GCLOUD), ("curl", FAKE_CURL), ("sleep", FAKE_SLEEP)):
            path = self.bin / name
            # -S: the standard library only, and a faster start (a deploy makes ~80 calls).
            path.write_text(f"#!{sys.executable} -S\n" + textwrap.dedent(source % values))
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

    def seed(self, **resources: Any) -> None:
        """Start from a project that already holds `resources` (the rest empty)."""
        (self.state / "cloud.json").write_text(json.dumps({**empty_cloud(), **resources}))

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
        return [
            c for c in self.calls("gcloud") if c["argv"][:2] == ["functions", "deploy"] and c["code"] == 0
        ]

    def sleeps(self) -> list[int]:
        return [int(c["argv"][0]) for c in self.calls("sleep")]

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


def deployed_env(fake: Fake, name: str) -> dict[str, str]:
    """The variables of the last deploy of function `name`."""
    return env_vars([d for d in fake.deploys() if d["argv"][2] == name][-1]["argv"])


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


PUSH_FLAGS = ("--push-auth-service-account", "--push-auth-token-audience")


def rest_subscription(settings: dict[str, str]) -> dict[str, Any]:
    """A subscription the fake holds (gcloud's flags), as the REST `Subscription` gcloud sends for
    them (durations in seconds with an `s`, `--expiration-period=never` = an empty policy), the
    push authentication aside (asserted on its own)."""
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
        *PUSH_FLAGS,
        "--ack-deadline",
        "--expiration-period",
        "--min-retry-delay",
        "--max-retry-delay",
        "--dead-letter-topic",
        "--max-delivery-attempts",
    }, settings
    return body


def assert_pushes_with_oidc(settings: dict[str, str]) -> None:
    """Pub/Sub sends an OIDC token of the push account, for the private door, with every push."""
    assert settings["--push-auth-service-account"] == PUSH_SA
    assert settings["--push-auth-token-audience"] == STEPS_URL
    assert settings["--push-endpoint"].startswith(STEPS_URL + "?action=")


def assert_no_secret_leaked(fake: Fake, result: subprocess.CompletedProcess[str]) -> None:
    """No secret, derived token or access token in a command line or in the output."""
    for call in fake.calls():
        joined = " ".join(call["argv"])
        for value in SECRET_VALUES:
            assert value not in joined
    for value in SECRET_VALUES:
        assert value not in output(result)


def stable(cloud: dict[str, Any]) -> dict[str, Any]:
    """The project's resources without what the end-of-deploy checks leave behind each run (the
    job's last attempt, the sweep's log lines)."""
    jobs = {
        name: {k: v for k, v in job.items() if k not in ("lastAttemptTime", "status_code")}
        for name, job in cloud["jobs"].items()
    }
    return {**cloud, "jobs": jobs, "logs": []}


# ---------------------------------------------------------------------------------- flags


def test_help_lists_every_flag(fake: Fake) -> None:
    result = fake.run("--help")
    assert result.returncode == 0, output(result)
    for flag in (
        "--project",
        "--region",
        "--auth-mode",
        "--allow-open",
        "--max-per-day-total",
        "--app-check",
        "--cors-origins",
        "--env-file",
        "--unset",
        "--novita-base-url",
        "--t2i-model",
        "--api-key-secret",
        "--webhook-secret-secret",
        "--service-account",
        "--build-service-account",
        "--push-service-account",
        "--bucket",
        "--max-instances",
        "--concurrency",
        "--skip-rules",
        "--skip-checks",
        "--dry-run",
        "--stage-only",
        "--help",
    ):
        assert flag in result.stdout
    assert "both webhook doors deploy DIR/novita_webhook" in result.stdout
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


def test_the_repositorys_modules_need_nothing_beyond_pythons_standard_library(tmp_path: Path) -> None:
    """deploy.sh runs the repository's modules with the operator's own python3: -S (no site-packages)
    stands for a machine with none of the requirements installed."""
    env_file = write(tmp_path / "tuning.env", "MAX_SKETCHES_PER_DAY=7\n")
    runs = {}
    for argv, stdin in (
        (["shared.pipeline.topology", "shell"], None),
        (["shared.core.tokens", "sweep-token"], "s3cret"),
        (["shared.core.config", "catalogue"], None),
        (["shared.core.config", "check", env_file], None),
    ):
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
        runs[argv[1]] = run.stdout
    assert runs["sweep-token"].strip() == sweep_token("s3cret")
    roles = {line.split("\t")[1] for line in runs["catalogue"].splitlines()}
    assert roles == {"secret", "deploy", "tuning", "local"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--auth-mode", "open"], "--auth-mode must be firebase or none"),
        (["--cors-origins", "https://app.example.com/"], "no trailing slash"),
        (["--novita-base-url", "ftp://x"], "--novita-base-url must be an http(s) URL"),
        (["--bucket", "Media_Bucket"], "is not a Cloud Storage bucket name"),
        (["--service-account", "sketch-machine"], "is not a service account email"),
        (["--push-service-account", "pusher"], "is not a service account email"),
        (["--app-check", "strict"], "--app-check must be off, monitor or enforce"),
        (["--max-per-day-total", "0"], "--max-per-day-total must be a whole number"),
        (["--unset", "max_sketches"], "is not a variable name"),
        (["--env-file", "/nonexistent/tuning.env"], "is not a readable file"),
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
    assert [line.split()[4] for line in deploys] == [
        "novita-webhook",
        "novita-webhook",
        "novita-webhook-steps",
        "create-sketch",
    ]
    expected = (
        "+ gcloud services list",
        "+ gcloud firestore databases describe",
        "+ gcloud secrets describe novita-api-key",
        "+ gcloud secrets describe webhook-secret",
        "+ gcloud functions describe novita-webhook --gen2 --region=us-central1 "
        f"--project={PROJECT} --format=json",
        f"+ gcloud iam service-accounts create sketch-machine --project={PROJECT}",
        f"+ gcloud iam service-accounts create sketch-machine-build --project={PROJECT}",
        f"+ gcloud iam service-accounts create sketch-machine-push --project={PROJECT}",
        f"+ gcloud projects add-iam-policy-binding {PROJECT} --member=serviceAccount:{RUNTIME_SA} "
        "--role=roles/datastore.user",
        f"+ gcloud iam service-accounts add-iam-policy-binding {PUSH_SA}",
        f"+ gcloud storage buckets create gs://{BUCKET}",
        "+ gcloud auth print-access-token",
        "+ curl -sS --max-time 60 -o ",
        "+ gcloud firestore indexes composite create",
        "+ gcloud firestore fields ttls update expires_at --collection-group=sketches_idempotency",
        "+ gcloud firestore fields ttls update expires_at --collection-group=sketches_daily",
        f"+ gcloud pubsub topics create {steps.TOPIC}",
        f"+ gcloud pubsub topics create {steps.DEAD_LETTER_TOPIC}",
        "+ gcloud functions describe novita-webhook",
        "+ gcloud run services update '<novita-webhook-service>' --region=us-central1 "
        f"--project={PROJECT} --no-invoker-iam-check",
        "+ gcloud run services update '<novita-webhook-steps-service>' --region=us-central1 "
        f"--project={PROJECT} --invoker-iam-check",
        "+ gcloud run services update '<create-sketch-service>' --region=us-central1 "
        f"--project={PROJECT} --no-invoker-iam-check",
        "+ gcloud functions add-invoker-policy-binding novita-webhook-steps --region=us-central1 "
        f"--project={PROJECT} --member=serviceAccount:{PUSH_SA}",
        f"+ gcloud pubsub subscriptions create {steps.DEAD_LETTER_SUBSCRIPTION}",
        f"+ gcloud pubsub subscriptions create {steps.SUBSCRIPTION}",
        "+ gcloud secrets versions access latest --secret=webhook-secret",
        "+ gcloud scheduler jobs create http sketch-recovery-sweep",
        f"+ gcloud storage cp {fake.tmp}",
        f"+ curl -sS --max-time 60 -o {fake.tmp}",
        f"+ gcloud storage rm gs://{BUCKET}/deploy-check/",
        "+ gcloud scheduler jobs run sketch-recovery-sweep",
        "+ gcloud scheduler jobs describe sketch-recovery-sweep --project=sketch-deploy-test "
        "--location=us-central1 '--format=value(status.code,lastAttemptTime)'",
        "+ gcloud logging read ",
        "+ gcloud run services describe '<create-sketch-service>'",
    )
    for line in expected:
        assert any(printed.startswith(line) for printed in lines), line
    assert any(
        line.startswith("+ curl ") and line.endswith(f"/buckets/{BUCKET}:addFirebase") for line in lines
    )
    assert any(
        line.startswith("+ curl ") and line.endswith(f"/releases/firebase.storage/{BUCKET}") for line in lines
    )
    assert "--headers=X-Sweep-Token=<sweep token>" in result.stdout
    assert "DRY RUN" in result.stdout and "== What will be deployed" in result.stdout
    assert "End-of-deploy checks: not run (dry run)" in result.stdout
    assert "allUsers" not in result.stdout and "--allow-unauthenticated" not in result.stdout
    assert fake.calls() == [], "a dry run must not call gcloud, curl or sleep"
    assert list(fake.tmp.iterdir()) == [], "the temporary staging folder is removed on exit"


def test_dry_run_checks_the_env_file_too(fake: Fake, tmp_path: Path) -> None:
    env_file = write(tmp_path / "bad.env", "MAX_SKETCHES_PER_DAY=many\n")
    result = fake.run("--dry-run", "--project", PROJECT, "--env-file", env_file)
    assert result.returncode == 1
    assert f"{env_file}: MAX_SKETCHES_PER_DAY must be a number" in result.stderr
    assert "+ gcloud" not in result.stdout


# ------------------------------------------------------------------------------ full run


def test_full_run_deploys_the_doors_first_then_create_sketch(fake: Fake) -> None:
    result = fake.run(
        "--project", PROJECT, "--cors-origins", "https://app.example.com, http://localhost:5173"
    )
    assert result.returncode == 0, output(result)
    deploys = fake.deploys()
    assert [d["argv"][2] for d in deploys] == [
        "novita-webhook",
        "novita-webhook",
        "novita-webhook-steps",
        "create-sketch",
    ]
    shape = {
        "novita-webhook": ("512Mi", "60s", "public"),
        "novita-webhook-steps": ("1Gi", f"{steps.FUNCTION_TIMEOUT_SECONDS}s", "private"),
        "create-sketch": ("512Mi", "60s", None),
    }
    for deploy in deploys:
        argv, name = deploy["argv"], deploy["argv"][2]
        for flag in ("--gen2", "--trigger-http", "--no-allow-unauthenticated"):
            assert flag in argv
        assert "--allow-unauthenticated" not in argv, "no allUsers binding: the invoker check is off instead"
        assert option(argv, "--runtime") == "python312"
        assert option(argv, "--entry-point") == ENTRY_POINTS[name]
        assert option(argv, "--region") == "us-central1"
        assert option(argv, "--project") == PROJECT
        assert option(argv, "--service-account") == RUNTIME_SA
        assert option(argv, "--build-service-account") == f"projects/{PROJECT}/serviceAccounts/{BUILD_SA}"
        assert option(argv, "--set-secrets") == (
            "NOVITA_API_KEY=novita-api-key:latest,WEBHOOK_SECRET=webhook-secret:latest"
        )
        memory, timeout, door = shape[name]
        env = env_vars(argv)
        assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
        assert env["MEDIA_BUCKET"] == BUCKET
        assert env["MEDIA_URL_POLICY"] == "public-https"
        assert env["FIREBASE_PROJECT_NUMBER"] == PROJECT_NUMBER
        assert env.get("WEBHOOK_DOOR") == door
        if name == "create-sketch":
            assert env["AUTH_MODE"] == "firebase"
            assert env["CORS_ALLOWED_ORIGINS"] == "https://app.example.com,http://localhost:5173"
        else:
            assert "AUTH_MODE" not in env and "CORS_ALLOWED_ORIGINS" not in env
        assert "NOVITA_API_KEY" not in env and "WEBHOOK_SECRET" not in env
        assert "APP_CHECK" not in env, "left unset (off) unless asked for"
        # One instance serves 32 requests at once, one gunicorn thread each; the private door
        # holds up to 32 stills of up to 10 MiB at once.
        assert option(argv, "--concurrency") == env["THREADS"] == "32"
        assert option(argv, "--memory") == memory
        # A step runs within the private door's timeout, which ends before Pub/Sub's ack deadline.
        assert option(argv, "--timeout") == timeout
        assert {"main.py", "requirements.txt", ".gcloudignore", "shared/", "shared/core/config.py"} <= set(
            deploy["source_files"]
        )
        assert not any("__pycache__" in f or f.startswith("tests") for f in deploy["source_files"])
        assert deploy["source_shared_is_symlink"] is False
    assert steps.STEP_DEADLINE_SECONDS < steps.FUNCTION_TIMEOUT_SECONDS < steps.ACK_DEADLINE_SECONDS

    # The first webhook deploy carries a placeholder; its URL is read back and set on all three.
    describe = ["functions", "describe", "novita-webhook"]
    calls = fake.calls("gcloud")
    first_deploy = calls.index(deploys[0])
    assert any(c["argv"][:3] == describe for c in calls[first_deploy + 1 : calls.index(deploys[1])])
    assert env_vars(deploys[0]["argv"])["WEBHOOK_URL"] == "https://novita-webhook.invalid/"
    for deploy in deploys[1:]:
        assert env_vars(deploy["argv"])["WEBHOOK_URL"] == WEBHOOK_URL
    assert "--format=value(serviceConfig.uri)" in [
        a for c in calls if c["argv"][:3] == describe for a in c["argv"]
    ]

    # The checks come before any change; the subscriptions between the private door and
    # create-sketch (a step published before its subscription exists would be lost).
    kinds = [tuple(c["argv"][:2]) for c in calls]
    assert kinds.index(("secrets", "describe")) < kinds.index(("iam", "service-accounts"))
    subscription_created = next(
        i for i, c in enumerate(calls) if c["argv"][:3] == ["pubsub", "subscriptions", "create"]
    )
    assert calls.index(deploys[2]) < subscription_created < calls.index(deploys[3])

    # Rules: a ruleset from each file, then its release points at it.
    rules = [c for c in fake.calls("curl") if "firebaserules" in c["url"]]
    api = f"https://firebaserules.googleapis.com/v1/projects/{PROJECT}"
    assert [(c["method"], c["url"]) for c in rules] == [
        ("POST", f"{api}/rulesets"),
        ("PATCH", f"{api}/releases/cloud.firestore"),
        ("POST", f"{api}/rulesets"),
        ("PATCH", f"{api}/releases/firebase.storage/{BUCKET}"),
    ]
    for ruleset, name in ((rules[0], "firestore.rules"), (rules[2], "storage.rules")):
        assert ruleset["body"]["source"]["files"] == [{"name": name, "content": (ROOT / name).read_text()}]
    assert rules[1]["body"]["release"] == {
        "name": f"projects/{PROJECT}/releases/cloud.firestore",
        "rulesetName": f"projects/{PROJECT}/rulesets/ruleset-1",
    }
    assert rules[3]["body"]["release"]["name"] == f"projects/{PROJECT}/releases/firebase.storage/{BUCKET}"
    rest = [c for c in fake.calls("curl") if "/v0/b/" not in c["url"]]
    assert all(c["authorized"] for c in rest)
    assert all(f"x-goog-user-project: {PROJECT}" in c["headers"] for c in rest)
    token_url = [c for c in fake.calls("curl") if "/v0/b/" in c["url"]]
    assert len(token_url) == 1 and not token_url[0]["authorized"], "a token URL needs no credentials"
    assert_no_secret_leaked(fake, result)

    out = result.stdout
    assert WEBHOOK_URL in out and STEPS_URL in out and CREATE_URL in out
    assert "AUTH_MODE=firebase" in out
    assert list(fake.tmp.iterdir()) == [], "the temporary staging folder is removed on exit"


def test_first_deploy_creates_every_resource(fake: Fake) -> None:
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    cloud = fake.cloud()
    assert sorted(cloud["service_accounts"]) == sorted([RUNTIME_SA, BUILD_SA, PUSH_SA])
    assert cloud["buckets"] == [BUCKET]
    assert cloud["firebase_buckets"] == [BUCKET]
    assert option(fake.gcloud("storage", "buckets", "create")[0], "--location") == "us-central1"
    assert sorted(cloud["topics"]) == sorted([steps.TOPIC, steps.DEAD_LETTER_TOPIC])
    assert sorted(cloud["functions"]) == sorted(FUNCTIONS)

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
            # The private door lets in the push account only; Pub/Sub mints its tokens.
            ("function/novita-webhook-steps", PUSH_SA, "roles/run.invoker"),
            (f"serviceaccount/{PUSH_SA}", PUBSUB_AGENT, "roles/iam.serviceAccountTokenCreator"),
        ]
    )

    # Public without allUsers: the invoker IAM check is off on the two public services only.
    assert cloud["services"] == {
        "novita-webhook": {"invoker_iam_disabled": True},
        "novita-webhook-steps": {"invoker_iam_disabled": False},
        "create-sketch": {"invoker_iam_disabled": True},
    }

    # The push subscriptions are the ones the local stack builds from shared/pipeline/topology.py,
    # pointed at the private door, with an OIDC token of the push account.
    subscriptions = cloud["subscriptions"]
    assert sorted(subscriptions) == sorted([steps.SUBSCRIPTION, steps.DEAD_LETTER_SUBSCRIPTION])
    assert rest_subscription(subscriptions[steps.SUBSCRIPTION]) == steps.subscription_body(
        PROJECT,
        steps.TOPIC,
        with_action(STEPS_URL, steps.STEP_ACTION),
        steps.PRODUCTION_RETRY,
        dead_letters=True,
    )
    assert rest_subscription(subscriptions[steps.DEAD_LETTER_SUBSCRIPTION]) == steps.subscription_body(
        PROJECT,
        steps.DEAD_LETTER_TOPIC,
        with_action(STEPS_URL, steps.DEAD_LETTER_ACTION),
        steps.PRODUCTION_RETRY,
        dead_letters=False,
    )
    for subscription in subscriptions.values():
        assert_pushes_with_oidc(subscription)

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

    # The sweep: every minute, POST to the private door with the push account's OIDC token and
    # the token derived from the webhook secret in X-Sweep-Token.
    job = {
        k: v
        for k, v in cloud["jobs"]["sketch-recovery-sweep"].items()
        if k not in ("lastAttemptTime", "status_code")
    }
    assert job == {
        "--schedule": "* * * * *",
        "--time-zone": "Etc/UTC",
        "--uri": f"{STEPS_URL}?action=sweep",
        "--http-method": "post",
        "--attempt-deadline": "180s",
        "--oidc-service-account-email": PUSH_SA,
        "--oidc-token-audience": STEPS_URL,
        "headers": {"X-Sweep-Token": SWEEP_TOKEN},
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
    assert stable(after) == stable(before), "the second run leaves the project as the first made it"

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
            "run services update novita-webhook",
            "run services update novita-webhook-steps",
            "run services update create-sketch",
        ]
    )
    # Every push flag is given on update too: the OIDC settings survive it.
    for subscription in after["subscriptions"].values():
        assert_pushes_with_oidc(subscription)
    # The doors exist now: one deploy each, with the real URL, no placeholder.
    deploys = [c for c in again if c["argv"][:2] == ["functions", "deploy"]]
    assert [d["argv"][2] for d in deploys] == list(FUNCTIONS)
    assert all(env_vars(d["argv"])["WEBHOOK_URL"] == WEBHOOK_URL for d in deploys)
    assert "nothing: everything existed" in second.stdout
    assert "kept from the deployed function" not in second.stdout
    assert "dropped:" not in second.stdout, "Cloud Functions' own LOG_EXECUTION_ID is not ours to drop"
    assert "LOG_EXECUTION_ID" not in second.stdout
    assert_no_secret_leaked(fake, second)


def test_sweep_token_never_leaks(fake: Fake) -> None:
    # The operator's shell holds another WEBHOOK_SECRET (Fake.env): the token comes from the secret
    # in Secret Manager all the same.
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    jobs = [c for c in fake.calls("gcloud") if c["argv"][:2] == ["scheduler", "jobs"] and "flags_file" in c]
    assert [c["flags_file"] for c in jobs] == [{"--headers": f"X-Sweep-Token={SWEEP_TOKEN}"}]
    assert "--format=none" in jobs[0]["argv"], "gcloud would print the job, header included"
    assert "X-Sweep-Token=<sweep token>" in result.stdout
    assert_no_secret_leaked(fake, result)
    assert list(fake.tmp.iterdir()) == [], "the flags file goes with the temporary folder"


def test_an_older_job_loses_its_authorization_header(fake: Fake) -> None:
    """A job made when the sweep token travelled in Authorization (now the OIDC token's) is
    updated with the whole new set: X-Sweep-Token, and Authorization removed."""
    fake.seed(
        jobs={
            "sketch-recovery-sweep": {
                "--uri": f"{WEBHOOK_URL}?action=sweep",
                "headers": {"Authorization": f"Bearer {SWEEP_TOKEN}"},
            }
        }
    )
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    update = fake.gcloud("scheduler", "jobs", "update", "http")[0]
    assert option(update, "--remove-headers") == "Authorization"
    job = fake.cloud()["jobs"]["sketch-recovery-sweep"]
    assert job["headers"] == {"X-Sweep-Token": SWEEP_TOKEN}
    assert job["--uri"] == f"{STEPS_URL}?action=sweep" and job["--oidc-service-account-email"] == PUSH_SA
    [call] = [c for c in fake.calls("gcloud") if c["argv"][:3] == ["scheduler", "jobs", "update"]]
    assert call["flags_file"] == {"--update-headers": f"X-Sweep-Token={SWEEP_TOKEN}"}
    assert_no_secret_leaked(fake, result)


@pytest.mark.parametrize("kind", ["functions", "topics", "jobs"])
def test_a_describe_that_is_refused_stops_the_deploy(fake: Fake, kind: str) -> None:
    result = fake.run("--project", PROJECT, FAKE_DESCRIBE_DENIED=kind)
    assert result.returncode != 0
    assert "status=[403]" in result.stderr, "gcloud's own message is shown"
    assert "could not tell whether" in result.stderr and "stopped before changing it" in result.stderr
    if kind == "functions":
        assert fake.deploys() == [], "a live webhook is never redeployed with the placeholder URL"
        assert fake.cloud()["service_accounts"] == [], "refused while planning: nothing changed"
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
    assert 2 in fake.sleeps()


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
    fake.seed(indexes=listed, ttls=[ttl])
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    assert fake.gcloud("firestore", "indexes", "composite", "create") == []
    updates = fake.gcloud("firestore", "fields", "ttls", "update")
    assert [option(argv, "--collection-group") for argv in updates] == ["sketches_idempotency"]


def test_names_and_region_can_be_changed(fake: Fake) -> None:
    other_sa = f"runner@{PROJECT}.iam.gserviceaccount.com"
    other_push = f"pusher@{PROJECT}.iam.gserviceaccount.com"
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
        "--push-service-account",
        other_push,
        "--skip-checks",
        REGION="europe-west1",
        FAKE_MISSING_SECRETS="novita-api-key,webhook-secret",
    )
    assert result.returncode == 0, output(result)
    described = [c["argv"][2] for c in fake.calls("gcloud") if c["argv"][:2] == ["secrets", "describe"]]
    assert described == ["nk", "wh"]
    cloud = fake.cloud()
    assert cloud["buckets"] == ["my-sketch-media"] and cloud["firebase_buckets"] == ["my-sketch-media"]
    assert other_sa in cloud["service_accounts"] and other_push in cloud["service_accounts"]
    assert ["secret/wh", other_sa, "roles/secretmanager.secretAccessor"] in cloud["bindings"]
    assert ["function/novita-webhook-steps", other_push, "roles/run.invoker"] in cloud["bindings"]
    for deploy in fake.deploys():
        assert option(deploy["argv"], "--set-secrets") == "NOVITA_API_KEY=nk:latest,WEBHOOK_SECRET=wh:latest"
        assert option(deploy["argv"], "--region") == "europe-west1"
        assert option(deploy["argv"], "--service-account") == other_sa
        assert env_vars(deploy["argv"])["MEDIA_BUCKET"] == "my-sketch-media"
    for subscription in cloud["subscriptions"].values():
        assert subscription["--push-auth-service-account"] == other_push
    job = cloud["jobs"]["sketch-recovery-sweep"]
    assert job["--oidc-service-account-email"] == other_push
    assert option(fake.gcloud("scheduler", "jobs", "create")[0], "--location") == "europe-west1"
    assert option(fake.gcloud("storage", "buckets", "create")[0], "--location") == "europe-west1"
    assert ("release", f"projects/{PROJECT}/releases/firebase.storage/my-sketch-media") in [
        ("release", c["body"]["release"]["name"]) for c in fake.calls("curl") if c["method"] == "PATCH"
    ]


# ------------------------------------------------------------------------- security rules


def test_first_rules_releases_are_created(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_NO_RELEASE="1")
    assert result.returncode == 0, output(result)
    rules = [c for c in fake.calls("curl") if "firebaserules" in c["url"]]
    assert [(c["method"], c["url"].split("/v1/projects/" + PROJECT + "/", 1)[1]) for c in rules] == [
        ("POST", "rulesets"),
        ("PATCH", "releases/cloud.firestore"),
        ("POST", "releases"),
        ("POST", "rulesets"),
        ("PATCH", f"releases/firebase.storage/{BUCKET}"),
        ("POST", "releases"),
    ]
    assert fake.cloud()["releases"] == [
        f"projects/{PROJECT}/releases/cloud.firestore",
        f"projects/{PROJECT}/releases/firebase.storage/{BUCKET}",
    ]


def test_skip_rules_calls_no_rules_api(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, "--skip-rules")
    assert result.returncode == 0, output(result)
    assert not [c for c in fake.calls("curl") if "firebaserules" in c["url"]]
    assert fake.cloud()["firebase_buckets"] == [BUCKET], "the bucket is linked all the same"


def test_storage_rules_refuse_every_client_read_and_write() -> None:
    text = (ROOT / "storage.rules").read_text()
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    assert "rules_version = '2';" in code
    assert re.search(
        r"service firebase\.storage\s*\{\s*match /b/\{bucket\}/o\s*\{\s*match /\{allPaths=\*\*\}"
        r"\s*\{\s*allow read, write: if false;\s*\}\s*\}\s*\}",
        code,
    )
    assert code.count("allow") == 1
    assert "download-token" in text, "the comment says why nothing needs a rule"


# ------------------------------------------------------------------ safe by default, caps


def test_auth_mode_none_is_refused_without_allow_open_and_a_cap(fake: Fake, tmp_path: Path) -> None:
    for args in (
        ["--auth-mode", "none"],
        ["--auth-mode", "none", "--allow-open"],
        ["--auth-mode", "none", "--max-per-day-total", "50"],
    ):
        result = fake.run("--project", PROJECT, *args)
        assert result.returncode == 1, args
        assert "--auth-mode none" in result.stderr and "--allow-open" in result.stderr
        assert "--max-per-day-total" in result.stderr
        assert fake.calls() == [], "refused before anything is read or changed"


def test_auth_mode_none_with_allow_open_and_a_cap_warns_loudly(fake: Fake, tmp_path: Path) -> None:
    env_file = write(tmp_path / "open.env", "MAX_SKETCHES_PER_DAY_TOTAL=50\n")
    result = fake.run(
        "--project",
        PROJECT,
        "--auth-mode",
        "none",
        "--allow-open",
        "--env-file",
        env_file,
        "--t2i-model",
        "flux_1",
        "--novita-base-url",
        "https://novita.example.com",
    )
    assert result.returncode == 0, output(result)
    assert "WARNING" in result.stderr and "ANYONE" in result.stderr
    assert "MAX_SKETCHES_PER_DAY_TOTAL=50" in result.stderr
    assert "AUTH_MODE=none" in result.stdout
    assert deployed_env(fake, "create-sketch")["AUTH_MODE"] == "none"
    for name in FUNCTIONS:
        env = deployed_env(fake, name)
        assert env["NOVITA_T2I_MODEL"] == "flux_1"
        assert env["NOVITA_BASE_URL"] == "https://novita.example.com"
        assert env["MAX_SKETCHES_PER_DAY_TOTAL"] == "50"


def test_caps_app_check_and_the_project_number_are_deployed(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, "--max-per-day-total", "300", "--app-check", "enforce")
    assert result.returncode == 0, output(result)
    for name in FUNCTIONS:
        env = deployed_env(fake, name)
        assert env["MAX_SKETCHES_PER_DAY_TOTAL"] == "300"
        assert env["APP_CHECK"] == "enforce"
        # The functions refuse to start with APP_CHECK on and no number (shared/core/config.py).
        assert env["FIREBASE_PROJECT_NUMBER"] == PROJECT_NUMBER
    assert "APP_CHECK=enforce (--app-check)" in result.stdout
    assert "MAX_SKETCHES_PER_DAY_TOTAL=300" in result.stdout
    assert "MAX_SKETCHES_PER_DAY=20 (the code's default)" in result.stdout


def test_the_summary_shows_exactly_what_was_deployed(fake: Fake, tmp_path: Path) -> None:
    env_file = write(
        tmp_path / "tuning.env", "# a comment\n\nMAX_SKETCHES_PER_DAY = 7\nSTEP_LEASE_SECONDS=45\n"
    )
    result = fake.run("--project", PROJECT, "--env-file", env_file)
    assert result.returncode == 0, output(result)
    summary = result.stdout.split("== Deployed", 1)[1]
    blocks = {}
    for name in FUNCTIONS:
        start = summary.index(f"\n{name}: ")
        blocks[name] = summary[start : summary.index("WEBHOOK_SECRET  <-", start)]
    assert blocks["novita-webhook"].startswith(f"\nnovita-webhook: {WEBHOOK_URL}\n    public door")
    assert blocks["novita-webhook-steps"].startswith(f"\nnovita-webhook-steps: {STEPS_URL}\n    private door")
    assert f"only {PUSH_SA} may call" in blocks["novita-webhook-steps"]
    assert blocks["create-sketch"].startswith(f"\ncreate-sketch: {CREATE_URL}\n    public")
    for name, block in blocks.items():
        printed = dict(
            line.strip().split("=", 1) for line in block.splitlines() if re.fullmatch(r"\s+[A-Z_]+=.*", line)
        )
        assert printed == deployed_env(fake, name), name
        assert "NOVITA_API_KEY  <- Secret Manager secret novita-api-key (latest)" in block
    assert "CORS origins:   none: no browser origin may call" in summary
    assert "Auth mode:      AUTH_MODE=firebase" in summary
    assert (
        "MAX_SKETCHES_PER_DAY=7\n" in summary
        and "MAX_SKETCHES_PER_DAY_TOTAL=1000 (the code's default)" in summary
    )
    assert "== What will be deployed" in result.stdout.split("== Service accounts")[0], (
        "printed before any change"
    )


# ------------------------------------------------------------------------------ env file


def test_the_env_file_is_applied_to_all_three_functions(fake: Fake, tmp_path: Path) -> None:
    env_file = write(tmp_path / "tuning.env", "MAX_SKETCHES_PER_DAY=7\nNOVITA_T2I_MODEL=flux_1\n")
    result = fake.run("--project", PROJECT, "--env-file", env_file)
    assert result.returncode == 0, output(result)
    for name in FUNCTIONS:
        env = deployed_env(fake, name)
        assert env["MAX_SKETCHES_PER_DAY"] == "7" and env["NOVITA_T2I_MODEL"] == "flux_1"


def test_an_env_file_is_checked_before_anything_is_read_or_changed(fake: Fake, tmp_path: Path) -> None:
    env_file = write(
        tmp_path / "bad.env",
        """\
        NOVITA_API_KEY=nk-pasted-here-by-mistake
        AUTH_MODE=none
        FIRESTORE_EMULATOR_HOST=127.0.0.1:8080
        MAX_SKETCHES=3
        not a line
        MAX_SKETCHES_PER_DAY=7
        MAX_SKETCHES_PER_DAY=8
        """,
    )
    result = fake.run("--project", PROJECT, "--env-file", env_file)
    assert result.returncode == 1
    problems = [
        line for line in result.stderr.splitlines() if line.startswith(f"deploy.sh: error: {env_file}: ")
    ]
    assert len(problems) == 6, result.stderr
    text = "\n".join(problems)
    assert "NOVITA_API_KEY is a secret" in text and "--api-key-secret" in text
    assert "AUTH_MODE is set by deploy.sh from --auth-mode" in text
    assert "FIRESTORE_EMULATOR_HOST is for local runs only" in text
    assert "MAX_SKETCHES is not a variable the functions read" in text
    assert "line 5: expected NAME=value" in text
    assert "line 7: MAX_SKETCHES_PER_DAY is set twice" in text
    assert "nk-pasted-here-by-mistake" not in result.stderr
    assert fake.calls() == [], "nothing is read or changed before the file passes"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MAX_SKETCHES_PER_DAY=0\n", "MAX_SKETCHES_PER_DAY must be between 1 and 10000"),
        ("APP_CHECK=always\n", "APP_CHECK must be one of off, monitor, enforce"),
        ("NOVITA_BASE_URL=novita\n", "NOVITA_BASE_URL must be an http(s) URL"),
    ],
)
def test_env_file_values_are_checked_with_the_functions_rules(
    fake: Fake, tmp_path: Path, text: str, message: str
) -> None:
    env_file = write(tmp_path / "tuning.env", text)
    result = fake.run("--project", PROJECT, "--env-file", env_file)
    assert result.returncode == 1
    assert f"deploy.sh: error: {env_file}: {message}" in result.stderr
    assert fake.calls() == []


def test_app_check_in_the_env_file_passes_with_the_project_number(fake: Fake, tmp_path: Path) -> None:
    env_file = write(tmp_path / "tuning.env", "APP_CHECK=monitor\n")
    result = fake.run("--project", PROJECT, "--env-file", env_file, "--skip-checks")
    assert result.returncode == 0, output(result)
    assert deployed_env(fake, "create-sketch")["APP_CHECK"] == "monitor"


def test_a_flag_and_the_env_file_may_not_disagree(fake: Fake, tmp_path: Path) -> None:
    env_file = write(tmp_path / "tuning.env", "NOVITA_T2I_MODEL=flux_1\n")
    result = fake.run("--project", PROJECT, "--env-file", env_file, "--t2i-model", "seedream_3_0")
    assert result.returncode == 1
    assert "NOVITA_T2I_MODEL is set both by --t2i-model" in result.stderr
    assert fake.calls() == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("AUTH_MODE", "set by deploy.sh from --auth-mode"), ("THREADS", "not a variable the functions read")],
)
def test_only_tuning_variables_can_be_unset(fake: Fake, name: str, message: str) -> None:
    result = fake.run("--project", PROJECT, "--unset", name)
    assert result.returncode == 1
    assert (
        f"--unset {name}: only tuning variables can be removed" in result.stderr and message in result.stderr
    )
    assert fake.calls() == []


def test_tuning_variables_are_kept_unless_unset(fake: Fake, tmp_path: Path) -> None:
    env_file = write(tmp_path / "tuning.env", "MAX_SKETCHES_PER_DAY=7\nSTEP_LEASE_SECONDS=45\n")
    first = fake.run("--project", PROJECT, "--env-file", env_file, "--skip-checks")
    assert first.returncode == 0, output(first)

    second = fake.run("--project", PROJECT, "--skip-checks")
    assert second.returncode == 0, output(second)
    assert "kept from the deployed function: MAX_SKETCHES_PER_DAY=7" in second.stdout
    assert "kept from the deployed function: STEP_LEASE_SECONDS=45" in second.stdout
    for name in FUNCTIONS:
        env = deployed_env(fake, name)
        assert env["MAX_SKETCHES_PER_DAY"] == "7" and env["STEP_LEASE_SECONDS"] == "45"

    third = fake.run("--project", PROJECT, "--unset", "MAX_SKETCHES_PER_DAY", "--skip-checks")
    assert third.returncode == 0, output(third)
    assert "removed (--unset): MAX_SKETCHES_PER_DAY" in third.stdout
    assert "kept from the deployed function: STEP_LEASE_SECONDS=45" in third.stdout
    for name in FUNCTIONS:
        env = deployed_env(fake, name)
        assert "MAX_SKETCHES_PER_DAY" not in env and env["STEP_LEASE_SECONDS"] == "45"


def test_a_new_door_gets_the_tuning_the_others_have(fake: Fake) -> None:
    """An upgrade from the two-function layout: the private door is new, and gets the tuning
    variables the deployed functions have, so that all three stay alike."""
    old = {"GOOGLE_CLOUD_PROJECT": PROJECT, "NOVITA_T2I_MODEL": "flux_1", "AUTH_MODE": "firebase"}
    fake.seed(
        service_accounts=[RUNTIME_SA, BUILD_SA],
        functions={"novita-webhook": {"argv": [], "env": old}, "create-sketch": {"argv": [], "env": old}},
        services={
            "novita-webhook": {"invoker_iam_disabled": False},
            "create-sketch": {"invoker_iam_disabled": False},
        },
    )
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    assert (
        "kept from the deployed function: NOVITA_T2I_MODEL=flux_1 (on novita-webhook, create-sketch;"
        in result.stdout
    )
    assert deployed_env(fake, "novita-webhook-steps")["NOVITA_T2I_MODEL"] == "flux_1"
    assert "dropped: AUTH_MODE (from novita-webhook: owned by deploy.sh (--auth-mode)" in result.stdout
    assert [d["argv"][2] for d in fake.deploys()] == list(FUNCTIONS), "existing URLs: one deploy each"


def test_nothing_set_before_is_dropped_silently(fake: Fake) -> None:
    fake.seed(
        service_accounts=[RUNTIME_SA, BUILD_SA],
        functions={
            "novita-webhook": {"argv": [], "env": {"GOOGLE_CLOUD_PROJECT": PROJECT, "LEGACY_FLAG": "1"}},
            "create-sketch": {
                "argv": [],
                "env": {
                    "FIRESTORE_EMULATOR_HOST": "127.0.0.1:8080",
                    "NOVITA_API_KEY": "nk-plain-must-not-print",
                },
            },
        },
        services={
            "novita-webhook": {"invoker_iam_disabled": False},
            "create-sketch": {"invoker_iam_disabled": False},
        },
    )
    result = fake.run("--project", PROJECT, "--skip-checks")
    assert result.returncode == 0, output(result)
    out = result.stdout
    assert "dropped: LEGACY_FLAG (from novita-webhook: unknown to the functions)" in out
    assert "dropped: FIRESTORE_EMULATOR_HOST (from create-sketch: local runs only)" in out
    assert (
        "dropped: NOVITA_API_KEY (from create-sketch: a secret; deploy.sh passes it from Secret Manager"
        in out
    )
    assert "nk-plain-must-not-print" not in output(result), "a dropped value is never printed"
    assert "LOG_EXECUTION_ID" not in out
    assert "LEGACY_FLAG" not in deployed_env(fake, "novita-webhook")
    # Said before the first change, and again in the summary.
    assert out.index("dropped: LEGACY_FLAG") < out.index("== Service accounts")
    assert out.count("dropped: LEGACY_FLAG") == 2


def test_kept_values_that_disagree_or_no_longer_pass_stop_the_deploy(fake: Fake) -> None:
    fake.seed(
        functions={
            "novita-webhook": {"argv": [], "env": {"MAX_SKETCHES_PER_DAY": "7"}},
            "create-sketch": {"argv": [], "env": {"MAX_SKETCHES_PER_DAY": "9"}},
        }
    )
    result = fake.run("--project", PROJECT)
    assert result.returncode == 1
    assert "MAX_SKETCHES_PER_DAY differs between the deployed functions" in result.stderr
    assert fake.cloud()["service_accounts"] == [] and fake.deploys() == []

    fake.seed(functions={"create-sketch": {"argv": [], "env": {"MAX_SKETCHES_PER_DAY": "lots"}}})
    result = fake.run("--project", PROJECT)
    assert result.returncode == 1
    assert (
        "the settings to deploy (kept values included): MAX_SKETCHES_PER_DAY must be a number"
        in result.stderr
    )
    assert fake.cloud()["service_accounts"] == [] and fake.deploys() == []


# ------------------------------------------------------------------------ public, private


def test_public_services_have_no_allusers_binding_and_are_opened_after_every_deploy(fake: Fake) -> None:
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    assert not [c for c in fake.calls() if "allUsers" in " ".join(c["argv"])]
    calls = fake.calls("gcloud")
    for index, call in enumerate(calls):
        if call["argv"][:2] != ["functions", "deploy"]:
            continue
        name = call["argv"][2]
        rest = [c["argv"] for c in calls[index + 1 :]]
        nxt = next(argv for argv in rest if argv[:3] == ["run", "services", "update"])
        assert nxt[3] == name, "the service of the function just deployed"
        flag = "--invoker-iam-check" if name == "novita-webhook-steps" else "--no-invoker-iam-check"
        assert flag in nxt
        # ... and read back.
        describe = next(argv for argv in rest if argv[:3] == ["run", "services", "describe"])
        assert describe[3] == name and ANNOTATION in describe
    assert "allow-unauthenticated" not in result.stdout.replace("--no-allow-unauthenticated", "")


def test_an_invoker_check_that_stays_on_stops_the_deploy(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_INVOKER_STUCK="novita-webhook")
    assert result.returncode == 1
    assert "invoker IAM check of novita-webhook (novita-webhook) is still on" in result.stderr
    assert fake.gcloud("pubsub", "subscriptions", "create") == []


def test_the_annotation_is_compared_case_insensitively(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_ANNOTATION_VALUE="True")
    assert result.returncode == 0, output(result)
    assert (
        "passed: invoker: create-sketch (create-sketch) has the invoker IAM check off (public)"
        in result.stdout
    )


# --------------------------------------------------------------------------- day one


PROPAGATING = [
    "ResponseError: status=[403], message=[Build failed: missing permission on the build service account]",
    "ResponseError: status=[403], message=[Permission denied on secret: projects/1/secrets/webhook-secret]",
    "Could not access secret: grant the runtime service account the Secret Manager Secret Accessor role",
    "PERMISSION_DENIED: Permission 'artifactregistry.repositories.list' denied on resource",
    "PERMISSION_DENIED: Caller is missing permission 'iam.serviceaccounts.actAs' on service account x",
    f"PERMISSION_DENIED: Caller {RUNTIME_SA} does not have permission to act as service account {BUILD_SA}",
]


@pytest.mark.parametrize("message", PROPAGATING)
def test_a_grant_still_propagating_is_waited_for(fake: Fake, message: str) -> None:
    result = fake.run("--project", PROJECT, "--skip-checks", FAKE_DEPLOY_ERRORS=message)
    assert result.returncode == 0, output(result)
    assert fake.sleeps() == [15]
    assert "refused while a fresh grant propagates: waiting 15 s for" in result.stdout
    assert message in result.stderr, "gcloud's message is shown as it comes"
    assert [d["argv"][2] for d in fake.deploys()] == [
        "novita-webhook",
        "novita-webhook",
        "novita-webhook-steps",
        "create-sketch",
    ]


def test_the_waits_double_and_end_after_about_eight_minutes(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_DEPLOY_ERRORS="|".join([PROPAGATING[0]] * 6))
    assert result.returncode == 1
    assert fake.sleeps() == [15, 30, 60, 120, 240]
    assert sum(fake.sleeps()) <= 8 * 60
    assert "still refused after 6 attempts" in result.stderr
    assert "roles/run.builder" in result.stderr
    assert fake.deploys() == []


def test_any_other_deploy_failure_stops_at_once(fake: Fake) -> None:
    message = "INVALID_ARGUMENT: Build failed: requirements.txt could not be resolved"
    result = fake.run("--project", PROJECT, FAKE_DEPLOY_ERRORS=message)
    assert result.returncode == 1
    assert fake.sleeps() == []
    assert message in result.stderr and "gcloud functions deploy failed" in result.stderr
    assert fake.deploys() == [] and fake.gcloud("pubsub", "subscriptions", "create") == []


# ------------------------------------------------------------------------- the checks


def test_the_deploy_proves_itself(fake: Fake) -> None:
    result = fake.run("--project", PROJECT)
    assert result.returncode == 0, output(result)
    out = result.stdout
    summary = out.split("End-of-deploy checks:", 1)[1]
    for line in (
        "passed: token URL: gs://",
        "passed: sweep: Cloud Scheduler ran sketch-recovery-sweep at ",
        "passed: sweep log: novita-webhook-steps logged 'sweep finished': examined 3, changed 1, errors 1, "
        "more false; first errors: sketch 0f: task-result 503",
        "passed: invoker: novita-webhook (novita-webhook) has the invoker IAM check off (public)",
        "passed: invoker: novita-webhook-steps (novita-webhook-steps) keeps the invoker IAM check on "
        "(private)",
        "passed: invoker: create-sketch (create-sketch) has the invoker IAM check off (public)",
    ):
        assert line in summary, line
    assert "FAILED" not in out
    # The object had a fresh token, was fetched through it, and is gone.
    [put] = fake.gcloud("storage", "cp")
    token = option(put, "--custom-metadata").removeprefix("firebaseStorageDownloadTokens=")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", token)
    assert re.fullmatch(rf"gs://{BUCKET}/deploy-check/\d{{8}}T\d{{6}}Z\.txt", put[3])
    assert put[2].startswith(str(fake.tmp)), "a file under the temporary folder"
    [fetch] = [c for c in fake.calls("curl") if "/v0/b/" in c["url"]]
    assert fetch["status"] == 200 and fetch["url"].endswith(f"?alt=media&token={token}")
    assert "/o/deploy-check%2F" in fetch["url"]
    assert fake.cloud()["objects"] == {}
    assert fake.gcloud("scheduler", "jobs", "run")
    assert fake.sleeps() == [], "nothing to wait for when the answers are there at once"


def test_a_failed_check_is_named_and_fails_the_deploy_after_the_summary(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_TOKEN_URL_STATUS="403")
    assert result.returncode == 1
    assert "FAILED: token URL: Firebase Storage answered 403" in result.stdout
    assert "1 check(s) FAILED" in result.stdout
    assert result.stdout.index("== Deployed") < result.stdout.index("1 check(s) FAILED")
    assert "passed: sweep:" in result.stdout, "the other checks still run"
    assert fake.cloud()["objects"] == {}, "the check's object is deleted all the same"


def test_a_sweep_the_door_refuses_is_reported_with_its_code(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_SWEEP_STATUS="16")
    assert result.returncode == 1
    assert "FAILED: sweep: the attempt of sketch-recovery-sweep at " in result.stdout
    assert "failed with code 16 (UNAUTHENTICATED" in result.stdout
    assert fake.gcloud("logging", "read") == [], "no sweep ran, so no line is looked for"


def test_a_job_that_never_runs_is_waited_for_a_bounded_time(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_SCHEDULER_SILENT="1")
    assert result.returncode == 1
    assert fake.sleeps() == [5] * 18
    assert (
        "FAILED: sweep: Cloud Scheduler made no attempt of sketch-recovery-sweep within 90 s" in result.stdout
    )


def test_a_missing_sweep_log_line_is_waited_for_a_bounded_time(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, FAKE_NO_SWEEP_LOG="1")
    assert result.returncode == 1
    assert fake.sleeps() == [10] * 12
    assert "FAILED: sweep log: no 'sweep finished' line of novita-webhook-steps" in result.stdout
    [read] = fake.gcloud("logging", "read")[:1]
    assert 'resource.labels.service_name="novita-webhook-steps"' in read[2]


def test_skip_checks_skips_them_and_says_so(fake: Fake) -> None:
    result = fake.run("--project", PROJECT, "--skip-checks")
    assert result.returncode == 0, output(result)
    assert fake.gcloud("storage", "cp") == [] and fake.gcloud("scheduler", "jobs", "run") == []
    assert fake.gcloud("logging", "read") == []
    assert "End-of-deploy checks: skipped (--skip-checks)" in result.stdout


def test_gcloudignore_keeps_everything_but_the_functions_out() -> None:
    patterns = (ROOT / ".gcloudignore").read_text().splitlines()
    for pattern in (
        "tests/",
        "bench/",
        "devstack/",
        "novita_simulator/",
        "scripts/",
        "docs/",
        "deploy/",
        "deploy.sh",
        "firestore.rules",
        "firestore.indexes.json",
        "storage.rules",
    ):
        assert pattern in patterns, pattern


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
        # Safe by default: with no AUTH_MODE set, a caller without a Firebase ID token is refused.
        bad = http.post(served, content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 401
        assert bad.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("served", ["novita_webhook"], indirect=True)
def test_staged_novita_webhook_serves(served: str) -> None:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        assert http.options(served).status_code == 204
        sketch = {"sketch": "0" * 32, "stage": "image", "token": "forged"}
        refused = http.post(served, params=sketch, json={"event_type": "ASYNC_TASK_RESULT"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        # The default door is the public one: it takes no sweep (404 there), and a forged token
        # gets none anywhere.
        sweep = http.post(served, params={"action": "sweep"}, headers={"X-Sweep-Token": "forged"})
        assert sweep.status_code in (401, 404)


# ----------------------------------------------------------------------------- shellcheck


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    files = ["deploy.sh", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").glob("*.sh"))]
    assert len(files) > 1
    result = subprocess.run(
        [shellcheck, "-x", "--severity=style", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""Configuration: every variable the functions read, in one catalogue, parsed once at start.

The standard library only: `deploy.sh` runs this module with the operator's own `python3` to check
an `--env-file` against the same names and rules before it changes anything:

    python3 -m shared.core.config check FILE     # every line NAME=value; errors name the variable
    python3 -m shared.core.config catalogue      # NAME<TAB>role<TAB>default, one a line

A variable's role says who sets it where the project is deployed: `secret` (Secret Manager),
`deploy` (deploy.sh, from its flags), `tuning` (an operator, through `--env-file`), `local` (the
local stack and the tests only: emulators, stand-ins for Google's endpoints).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Literal
from urllib.parse import urlsplit

TestModeStatus = Literal["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"]
AuthMode = Literal["none", "firebase"]
# Which media URLs a step may download (shared/media): https to public addresses only, or anything.
MediaPolicy = Literal["public-https", "any"]
# Which requests a novita_webhook deployment takes: Novita's deliveries (public), or Google's
# pushes and the sweep (private, behind Cloud Run IAM).
Door = Literal["public", "private"]
AppCheckMode = Literal["off", "monitor", "enforce"]
Role = Literal["secret", "deploy", "tuning", "local"]

FIREBASE_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)
APP_CHECK_JWKS_URL = "https://firebaseappcheck.googleapis.com/v1/jwks"

DAY = 86400.0
_COLLECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_PROJECT_NUMBER = re.compile(r"[0-9]{1,20}")


@dataclass(frozen=True)
class Variable:
    name: str
    role: Role
    default: str
    meaning: str


CATALOGUE: tuple[Variable, ...] = (
    Variable("NOVITA_API_KEY", "secret", "", "sent to Novita as Authorization: Bearer"),
    Variable("WEBHOOK_SECRET", "secret", "", "key of the webhook tokens, step signatures and sweep token"),
    Variable("GOOGLE_CLOUD_PROJECT", "deploy", "", "the project of Firestore, Pub/Sub and Cloud Storage"),
    Variable("WEBHOOK_URL", "deploy", "", "the public URL of novita_webhook (Novita's door)"),
    Variable("WEBHOOK_DOOR", "deploy", "public", "novita_webhook: public (Novita) or private (Google)"),
    Variable("AUTH_MODE", "deploy", "firebase", "firebase: Firebase ID tokens required; none: anyone"),
    Variable("CORS_ALLOWED_ORIGINS", "deploy", "", "browser origins allowed to call create_sketch"),
    Variable("MEDIA_BUCKET", "deploy", "", "the bucket of the durable stills and videos"),
    Variable("MEDIA_URL_POLICY", "deploy", "public-https", "public-https, or any (local runs only)"),
    Variable("FIREBASE_PROJECT_NUMBER", "deploy", "", "the project number App Check tokens name"),
    Variable("NOVITA_BASE_URL", "tuning", "https://api.novita.ai", "Novita, or a stand-in for it"),
    Variable("NOVITA_T2I_MODEL", "tuning", "seedream_3_0", "model_name of the guide's text to image"),
    Variable("NOVITA_WEBHOOK_TEST_MODE", "tuning", "", "TASK_STATUS_SUCCEED or TASK_STATUS_FAILED"),
    Variable("SKETCHES_COLLECTION", "tuning", "sketches", "the Firestore collection of the sketches"),
    Variable("FIREBASE_PROJECT_ID", "tuning", "", "audience of ID tokens (default: the project)"),
    Variable("APP_CHECK", "tuning", "off", "Firebase App Check on create_sketch: off, monitor, enforce"),
    Variable("MAX_SKETCHES_IN_PROGRESS", "tuning", "3", "unfinished sketches a user may have"),
    Variable("MAX_SKETCHES_PER_DAY", "tuning", "20", "sketches a signed-in user may make per UTC day"),
    Variable("MAX_GUEST_SKETCHES_PER_DAY", "tuning", "5", "sketches a guest may make per UTC day"),
    Variable("MAX_SKETCHES_PER_DAY_TOTAL", "tuning", "1000", "sketches the project makes per UTC day"),
    Variable("BALANCE_BREAKER_SECONDS", "tuning", "300", "pause after Novita says the balance is short"),
    Variable("STEP_LEASE_SECONDS", "tuning", "30", "how long a silent step keeps a sketch's work"),
    Variable("RECOVERY_INTERVAL_SECONDS", "tuning", "60", "least time between two looks at a sketch"),
    Variable("UNKNOWN_OUTCOME_GRACE_SECONDS", "tuning", "600", "wait for a lost answer's webhook"),
    Variable("MAX_SKETCH_AGE_SECONDS", "tuning", "7200", "a sketch unfinished this long fails"),
    Variable("FIRESTORE_EMULATOR_HOST", "local", "", "host:port of a Firestore emulator"),
    Variable("PUBSUB_EMULATOR_HOST", "local", "", "host:port of a Pub/Sub emulator"),
    Variable("STORAGE_EMULATOR_HOST", "local", "", "http://host:port of a Cloud Storage emulator"),
    Variable("FIREBASE_AUTH_EMULATOR_HOST", "local", "", "host:port of the Firebase Auth emulator"),
    Variable("GCE_METADATA_HOST", "local", "metadata.google.internal", "where access tokens come from"),
    Variable("FIREBASE_CERTS_URL", "local", FIREBASE_CERTS_URL, "where ID token certificates come from"),
    Variable("APP_CHECK_JWKS_URL", "local", APP_CHECK_JWKS_URL, "where App Check's keys come from"),
)
VARIABLES = tuple(variable.name for variable in CATALOGUE)
_DEFAULTS = {variable.name: variable.default for variable in CATALOGUE}


class ConfigError(Exception):
    """A required variable is missing or a variable is malformed; the message names it."""


class Secret:
    """A value that never shows in a repr, a log line or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"


@dataclass(frozen=True)
class Settings:
    novita_api_key: Secret
    novita_base_url: str
    webhook_url: str
    webhook_secret: Secret
    webhook_door: Door
    project: str
    sketches_collection: str
    # host:port of the Firestore and Pub/Sub emulators, and the Storage emulator's URL, when the
    # functions run against them instead of Google Cloud (the standard variables).
    firestore_emulator_host: str | None
    pubsub_emulator_host: str | None
    storage_emulator_host: str | None
    # The Cloud Storage bucket the durable copies of stills and videos go to; None: no copies.
    media_bucket: str | None
    # Where the instance's access token comes from (Google's metadata server outside the emulator).
    metadata_host: str
    media_url_policy: MediaPolicy
    t2i_model: str
    webhook_test_mode: TestModeStatus | None
    # Seconds a step's lease lasts without being renewed (a live step renews it).
    step_lease_seconds: float
    # Seconds between two task-result checks of one pending sketch (GET and the sweep).
    recovery_interval_seconds: float
    # Seconds to wait for the webhook of a request whose answer was lost before it counts as lost.
    unknown_outcome_grace_seconds: float
    # Seconds after which recovery fails a sketch that is still not finished, whatever the cause.
    max_sketch_age_seconds: float
    auth_mode: AuthMode
    firebase_project: str
    firebase_project_number: str | None
    firebase_certs_url: str
    # host:port of the Firebase Auth emulator: its unsigned tokens are accepted only while set.
    firebase_auth_emulator_host: str | None
    app_check: AppCheckMode
    app_check_jwks_url: str
    cors_allowed_origins: tuple[str, ...]
    max_sketches_in_progress: int
    max_sketches_per_day: int
    max_guest_sketches_per_day: int
    max_sketches_per_day_total: int
    # Seconds every instance refuses new sketches after Novita said the balance is not enough.
    balance_breaker_seconds: float


# ---------------------------------------------------------------------------------- parsing


def _raw(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip() or _DEFAULTS[name]


def _required(env: Mapping[str, str], name: str) -> str:
    value = _raw(env, name)
    if not value:
        raise ConfigError(f"{name} is required but not set")
    return value


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _raw(env, name) or None
    if value is not None and value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _number(env: Mapping[str, str], name: str, minimum: float, maximum: float) -> float:
    raw = _raw(env, name)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum:g} and {maximum:g}, got {raw!r}")
    return value


def _whole(env: Mapping[str, str], name: str, minimum: int, maximum: int) -> int:
    value = _number(env, name, minimum, maximum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def _optional(env: Mapping[str, str], name: str) -> str | None:
    return _raw(env, name) or None


def _optional_url(env: Mapping[str, str], name: str) -> str | None:
    value = _raw(env, name)
    return _url(name, value).rstrip("/") if value else None


def _matching(env: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = _raw(env, name)
    if value and not pattern.fullmatch(value):
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return value or None


def _collection(env: Mapping[str, str], name: str) -> str:
    value = _raw(env, name)
    if not _COLLECTION_ID.fullmatch(value) or value.startswith("__"):
        raise ConfigError(
            f"{name} must be a Firestore collection id (letters, digits, _ and -), got {value!r}"
        )
    return value


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = tuple(o.strip() for o in _raw(env, name).split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
            raise ConfigError(f"{name}: {origin!r} is not an origin like https://app.example.com")
    return origins


def settings_from(env: Mapping[str, str]) -> Settings:
    """Build settings from a mapping of environment variables, naming the first bad one.

    Safe by default: without configuration, Firebase ID tokens are required and no browser origin
    may call.
    """
    project = _required(env, "GOOGLE_CLOUD_PROJECT")
    app_check = _choice(env, "APP_CHECK", ("off", "monitor", "enforce"))
    number = _matching(env, "FIREBASE_PROJECT_NUMBER", _PROJECT_NUMBER, "a project number (digits)")
    if app_check != "off" and number is None:
        raise ConfigError("FIREBASE_PROJECT_NUMBER is required when APP_CHECK is monitor or enforce")
    return Settings(
        novita_api_key=Secret(_required(env, "NOVITA_API_KEY")),
        novita_base_url=_url("NOVITA_BASE_URL", _raw(env, "NOVITA_BASE_URL")).rstrip("/"),
        webhook_url=_url("WEBHOOK_URL", _required(env, "WEBHOOK_URL")),
        webhook_secret=Secret(_required(env, "WEBHOOK_SECRET")),
        webhook_door=_choice(env, "WEBHOOK_DOOR", ("public", "private")),  # type: ignore[arg-type]
        project=project,
        sketches_collection=_collection(env, "SKETCHES_COLLECTION"),
        firestore_emulator_host=_optional(env, "FIRESTORE_EMULATOR_HOST"),
        pubsub_emulator_host=_optional(env, "PUBSUB_EMULATOR_HOST"),
        storage_emulator_host=_optional_url(env, "STORAGE_EMULATOR_HOST"),
        media_bucket=_matching(env, "MEDIA_BUCKET", _BUCKET, "a Cloud Storage bucket name"),
        metadata_host=_raw(env, "GCE_METADATA_HOST"),
        media_url_policy=_choice(env, "MEDIA_URL_POLICY", ("public-https", "any")),  # type: ignore[arg-type]
        t2i_model=_raw(env, "NOVITA_T2I_MODEL"),
        webhook_test_mode=_choice(  # type: ignore[arg-type]
            env, "NOVITA_WEBHOOK_TEST_MODE", ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")
        ),
        step_lease_seconds=_number(env, "STEP_LEASE_SECONDS", 1.0, 600.0),
        recovery_interval_seconds=_number(env, "RECOVERY_INTERVAL_SECONDS", 0.0, DAY),
        unknown_outcome_grace_seconds=_number(env, "UNKNOWN_OUTCOME_GRACE_SECONDS", 0.0, DAY),
        max_sketch_age_seconds=_number(env, "MAX_SKETCH_AGE_SECONDS", 1.0, 30 * DAY),
        auth_mode=_choice(env, "AUTH_MODE", ("none", "firebase")),  # type: ignore[arg-type]
        firebase_project=_raw(env, "FIREBASE_PROJECT_ID") or project,
        firebase_project_number=number,
        firebase_certs_url=_url("FIREBASE_CERTS_URL", _raw(env, "FIREBASE_CERTS_URL")),
        firebase_auth_emulator_host=_optional(env, "FIREBASE_AUTH_EMULATOR_HOST"),
        app_check=app_check,  # type: ignore[arg-type]
        app_check_jwks_url=_url("APP_CHECK_JWKS_URL", _raw(env, "APP_CHECK_JWKS_URL")),
        cors_allowed_origins=_origins(env, "CORS_ALLOWED_ORIGINS"),
        max_sketches_in_progress=_whole(env, "MAX_SKETCHES_IN_PROGRESS", 1, 100),
        max_sketches_per_day=_whole(env, "MAX_SKETCHES_PER_DAY", 1, 10_000),
        max_guest_sketches_per_day=_whole(env, "MAX_GUEST_SKETCHES_PER_DAY", 0, 10_000),
        max_sketches_per_day_total=_whole(env, "MAX_SKETCHES_PER_DAY_TOTAL", 1, 10_000_000),
        balance_breaker_seconds=_number(env, "BALANCE_BREAKER_SECONDS", 1.0, DAY),
    )


@cache
def get_settings() -> Settings:
    return settings_from(os.environ)


# ------------------------------------------------------------------------- deploy.sh's checks

# Values that a deployment never needs and that only stand in for Google's own (a variable deploy.sh
# is asked to set from a file is checked by the same rules the functions apply at start).
_PLACEHOLDERS = {
    "NOVITA_API_KEY": "placeholder",
    "WEBHOOK_SECRET": "placeholder",
    "GOOGLE_CLOUD_PROJECT": "placeholder",
    "WEBHOOK_URL": "https://placeholder.invalid/",
    "FIREBASE_PROJECT_NUMBER": "1",
}


def read_env_file(text: str) -> dict[str, str]:
    """`NAME=value` lines (blank lines and `#` comments skipped); ConfigError naming a bad line."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
            raise ConfigError(f"line {number}: expected NAME=value, got {stripped[:80]!r}")
        if name in values:
            raise ConfigError(f"line {number}: {name} is set twice")
        values[name] = value.strip()
    return values


def check(values: Mapping[str, str]) -> list[str]:
    """What is wrong with `values` as variables of a deployment: unknown names, and values the
    functions would refuse at start. Empty when every one is usable."""
    known = {variable.name for variable in CATALOGUE}
    problems = [f"{name} is not a variable the functions read" for name in values if name not in known]
    # Each variable on its own (a bad one would hide the next), then all together (rules that tie
    # two of them, like APP_CHECK and FIREBASE_PROJECT_NUMBER).
    for name, value in values.items():
        if name in known:
            problems += _problem({**_PLACEHOLDERS, name: value})
    if not problems:
        problems += _problem({**_PLACEHOLDERS, **values})
    return problems


def _problem(env: Mapping[str, str]) -> list[str]:
    try:
        settings_from(env)
    except ConfigError as exc:
        return [str(exc)]
    return []


def _main(argv: list[str]) -> int:
    if argv == ["catalogue"]:
        for variable in CATALOGUE:
            print(f"{variable.name}\t{variable.role}\t{variable.default}")
        return 0
    if len(argv) == 2 and argv[0] == "check":
        try:
            with open(argv[1], encoding="utf-8") as file:
                problems = check(read_env_file(file.read()))
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            problems = [str(exc)]
        for problem in problems:
            print(f"{argv[1]}: {problem}", file=sys.stderr)
        return 1 if problems else 0
    print("usage: python3 -m shared.core.config catalogue | check FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

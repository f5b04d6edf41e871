"""Configuration, read once from the environment and validated before the first request."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from functools import cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr

from shared.media import MediaPolicy

TestModeStatus = Literal["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"]
AuthMode = Literal["none", "firebase"]

FIREBASE_CERTS_URL = (
    "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com"
)

DAY = 86400.0
_COLLECTION_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


# Every variable the functions read; the local stack passes each one set in its own environment on.
VARIABLES = (
    "NOVITA_API_KEY",
    "NOVITA_BASE_URL",
    "WEBHOOK_URL",
    "WEBHOOK_SECRET",
    "GOOGLE_CLOUD_PROJECT",
    "SKETCHES_COLLECTION",
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "MEDIA_BUCKET",
    "GCE_METADATA_HOST",
    "MEDIA_URL_POLICY",
    "NOVITA_T2I_MODEL",
    "NOVITA_WEBHOOK_TEST_MODE",
    "STEP_LEASE_SECONDS",
    "RECOVERY_INTERVAL_SECONDS",
    "UNKNOWN_OUTCOME_GRACE_SECONDS",
    "MAX_SKETCH_AGE_SECONDS",
    "AUTH_MODE",
    "FIREBASE_PROJECT_ID",
    "FIREBASE_CERTS_URL",
    "CORS_ALLOWED_ORIGINS",
    "MAX_SKETCHES_IN_PROGRESS",
    "MAX_SKETCHES_PER_DAY",
    "BALANCE_BREAKER_SECONDS",
)


class ConfigError(Exception):
    """A required variable is missing or a variable is malformed; the message names it."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    novita_api_key: SecretStr
    novita_base_url: str
    webhook_url: str
    webhook_secret: SecretStr
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
    # Seconds a step may hold a sketch's slow work (Seedream, the chain, the copy) before another
    # may take it up.
    step_lease_seconds: float
    # Seconds between two task-result checks of one pending sketch (GET and the sweep).
    recovery_interval_seconds: float
    # Seconds to wait for the webhook of a submission whose outcome is unknown before failing it.
    unknown_outcome_grace_seconds: float
    # Seconds after which recovery fails a sketch that is still not finished, whatever the cause.
    max_sketch_age_seconds: float
    auth_mode: AuthMode
    firebase_project: str
    firebase_certs_url: str
    cors_allowed_origins: tuple[str, ...]
    max_sketches_in_progress: int
    max_sketches_per_day: int
    # Seconds every instance refuses new sketches after Novita said the balance is not enough.
    balance_breaker_seconds: float


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required but not set")
    return value


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str | None, allowed: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip() or default
    if value is not None and value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _number(env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum:g} and {maximum:g}, got {raw!r}")
    return value


def _whole(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    value = _number(env, name, default, minimum, maximum)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number, got {env.get(name)!r}")
    return int(value)


def _optional_url(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return _url(name, value).rstrip("/") if value else None


def _bucket(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    if value and not _BUCKET.fullmatch(value):
        raise ConfigError(f"{name} must be a Cloud Storage bucket name, got {value!r}")
    return value or None


def _collection(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not _COLLECTION_ID.fullmatch(value) or value.startswith("__"):
        raise ConfigError(
            f"{name} must be a Firestore collection id (letters, digits, _ and -), got {value!r}"
        )
    return value


def settings_from(env: Mapping[str, str]) -> Settings:
    """Build settings from a mapping of environment variables, naming the first bad one."""
    auth_mode = _choice(env, "AUTH_MODE", "none", ("none", "firebase"))
    origins_raw = env.get("CORS_ALLOWED_ORIGINS", "").strip()
    if origins_raw:
        origins = tuple(o.strip() for o in origins_raw.split(",") if o.strip())
    elif auth_mode == "none":
        origins = ("*",)
    else:
        origins = ()
    project = _required(env, "GOOGLE_CLOUD_PROJECT")
    return Settings(
        novita_api_key=SecretStr(_required(env, "NOVITA_API_KEY")),
        novita_base_url=_url(
            "NOVITA_BASE_URL", env.get("NOVITA_BASE_URL", "").strip() or "https://api.novita.ai"
        ).rstrip("/"),
        webhook_url=_url("WEBHOOK_URL", _required(env, "WEBHOOK_URL")),
        webhook_secret=SecretStr(_required(env, "WEBHOOK_SECRET")),
        project=project,
        sketches_collection=_collection(env, "SKETCHES_COLLECTION", "sketches"),
        firestore_emulator_host=env.get("FIRESTORE_EMULATOR_HOST", "").strip() or None,
        pubsub_emulator_host=env.get("PUBSUB_EMULATOR_HOST", "").strip() or None,
        storage_emulator_host=_optional_url(env, "STORAGE_EMULATOR_HOST"),
        media_bucket=_bucket(env, "MEDIA_BUCKET"),
        metadata_host=env.get("GCE_METADATA_HOST", "").strip() or "metadata.google.internal",
        media_url_policy=_choice(env, "MEDIA_URL_POLICY", "public-https", ("public-https", "any")),
        t2i_model=env.get("NOVITA_T2I_MODEL", "").strip() or "seedream_3_0",
        webhook_test_mode=_choice(
            env, "NOVITA_WEBHOOK_TEST_MODE", None, ("TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED")
        ),
        step_lease_seconds=_number(env, "STEP_LEASE_SECONDS", 240.0, 1.0, DAY),
        recovery_interval_seconds=_number(env, "RECOVERY_INTERVAL_SECONDS", 60.0, 0.0, DAY),
        unknown_outcome_grace_seconds=_number(env, "UNKNOWN_OUTCOME_GRACE_SECONDS", 900.0, 0.0, 7 * DAY),
        max_sketch_age_seconds=_number(env, "MAX_SKETCH_AGE_SECONDS", 7200.0, 1.0, 30 * DAY),
        auth_mode=auth_mode,
        firebase_project=env.get("FIREBASE_PROJECT_ID", "").strip() or project,
        firebase_certs_url=_url(
            "FIREBASE_CERTS_URL", env.get("FIREBASE_CERTS_URL", "").strip() or FIREBASE_CERTS_URL
        ),
        cors_allowed_origins=origins,
        max_sketches_in_progress=_whole(env, "MAX_SKETCHES_IN_PROGRESS", 3, 1, 100),
        max_sketches_per_day=_whole(env, "MAX_SKETCHES_PER_DAY", 20, 1, 10_000),
        balance_breaker_seconds=_number(env, "BALANCE_BREAKER_SECONDS", 300.0, 1.0, DAY),
    )


@cache
def get_settings() -> Settings:
    return settings_from(os.environ)

"""The objects one function instance keeps between requests, built once on first use."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from functools import cache

import httpx
from google.cloud import firestore

from shared import logs
from shared.config import ConfigError, Settings, get_settings
from shared.http_retry import RetryingTransport
from shared.media import media_client
from shared.novita_client import NovitaClient
from shared.pipeline import Pipeline
from shared.recovery import Recovery
from shared.sketch_store import SketchStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: SketchStore
    pipeline: Pipeline
    recovery: Recovery


def load_settings_or_exit() -> Settings:
    """Settings for a function's import: a bad variable stops the process with one clear line."""
    logs.configure()
    try:
        return get_settings()
    except ConfigError as exc:
        # One structured line for Cloud Logging, one plain line on stderr for a terminal.
        log.critical("configuration error: %s", exc)
        sys.exit(f"configuration error: {exc}")


@cache
def get_runtime() -> Runtime:
    settings = get_settings()
    store = SketchStore(firestore.Client(project=settings.project), settings.sketches_collection)
    # One TLS context for both clients: loading the CA bundle is a noticeable part of a cold start.
    tls = httpx.create_ssl_context()
    media_http = media_client(transport=RetryingTransport(httpx.HTTPTransport(verify=tls)))
    novita = NovitaClient(settings, transport=httpx.HTTPTransport(verify=tls))
    pipeline = Pipeline(settings, store, novita, media_http)
    recovery = Recovery(settings, store, novita, pipeline)
    return Runtime(settings=settings, store=store, pipeline=pipeline, recovery=recovery)

"""The objects one function instance keeps between requests, built once on first use."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from dataclasses import dataclass
from functools import cache

import httpx

from shared import firestore_rest, logs
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


# An instance serves up to 32 requests at once (deploy.sh), each on its own thread: keep that many
# connections alive, so that a burst does not open (and TLS-handshake) new ones on every call.
POOL = httpx.Limits(max_connections=100, max_keepalive_connections=64)


def firestore_client(settings: Settings, tls: ssl.SSLContext) -> firestore_rest.Firestore:
    """Firestore itself with the instance's service account, or the emulator when one is named."""
    http = httpx.Client(timeout=firestore_rest.TIMEOUT, verify=tls, limits=POOL)
    if settings.firestore_emulator_host:
        base_url = f"http://{settings.firestore_emulator_host}"
        return firestore_rest.Firestore(http, settings.project, base_url=base_url)
    token = firestore_rest.MetadataToken(http, settings.metadata_host)
    return firestore_rest.Firestore(http, settings.project, token=token)


_building = threading.Lock()


@cache
def _build_runtime() -> Runtime:
    settings = get_settings()
    # One TLS context for every client: loading the CA bundle is a noticeable part of a cold start.
    tls = httpx.create_ssl_context()
    store = SketchStore(firestore_client(settings, tls), settings.sketches_collection)
    media_http = media_client(transport=RetryingTransport(httpx.HTTPTransport(verify=tls)))
    novita = NovitaClient(settings, transport=httpx.HTTPTransport(verify=tls, limits=POOL))
    pipeline = Pipeline(settings, store, novita, media_http)
    recovery = Recovery(settings, store, novita, pipeline)
    return Runtime(settings=settings, store=store, pipeline=pipeline, recovery=recovery)


def get_runtime() -> Runtime:
    """The instance's runtime. A burst of first requests on its threads builds it once."""
    with _building:
        return _build_runtime()

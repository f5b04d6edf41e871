"""The objects one function instance keeps between requests, built once on first use."""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from dataclasses import dataclass
from functools import cache

import httpx

from shared.core import logs
from shared.core.config import ConfigError, Settings, get_settings
from shared.google import firestore as firestore_rest
from shared.google import pubsub as pubsub_rest
from shared.google import storage as storage_rest
from shared.google.api import EMULATOR_TOKEN, TIMEOUT, GoogleApi, MetadataToken, TokenSource
from shared.media.fetch import media_client
from shared.media.policy import default_resolver
from shared.novita.client import NovitaClient
from shared.pipeline.creation import Creator
from shared.pipeline.forms import FormsInFirestore
from shared.pipeline.queue import StepQueue
from shared.pipeline.recovery import Recovery
from shared.pipeline.results import Results
from shared.pipeline.steps import Worker
from shared.pipeline.work import Tools
from shared.sketch.store import SketchStore
from shared.spending.breaker import BalanceBreaker
from shared.spending.daily import DailyCaps
from shared.spending.idempotency import IdempotencyKeys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: SketchStore
    queue: StepQueue
    creator: Creator
    worker: Worker
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


def google_http(tls: ssl.SSLContext) -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT, verify=tls, limits=POOL)


def google_token(settings: Settings, http: httpx.Client, emulated: bool) -> TokenSource:
    """The emulators' stand-in token, or the instance's own from the metadata server."""
    return EMULATOR_TOKEN if emulated else MetadataToken(http, settings.metadata_host)


def firestore_client(settings: Settings, http: httpx.Client, token: TokenSource) -> firestore_rest.Firestore:
    """Firestore itself with the instance's service account, or the emulator when one is named."""
    host = settings.firestore_emulator_host
    api = GoogleApi(http, token=EMULATOR_TOKEN if host else token)
    base_url = f"http://{host}" if host else firestore_rest.PRODUCTION_URL
    return firestore_rest.Firestore(api, settings.project, base_url=base_url)


def pubsub_client(settings: Settings, http: httpx.Client, token: TokenSource) -> pubsub_rest.PubSub:
    host = settings.pubsub_emulator_host
    api = GoogleApi(http, token=EMULATOR_TOKEN if host else token)
    base_url = f"http://{host}" if host else pubsub_rest.PRODUCTION_URL
    return pubsub_rest.PubSub(api, settings.project, base_url=base_url)


def storage_client(settings: Settings, http: httpx.Client, token: TokenSource) -> storage_rest.Storage:
    emulator = settings.storage_emulator_host
    api = GoogleApi(http, token=EMULATOR_TOKEN if emulator else token)
    return storage_rest.Storage(api, http, base_url=emulator or storage_rest.PRODUCTION_URL)


_building = threading.Lock()


@cache
def _build_runtime() -> Runtime:
    settings = get_settings()
    # One TLS context for every client: loading the CA bundle is a noticeable part of a cold start.
    tls = httpx.create_ssl_context()
    http = google_http(tls)
    token = google_token(settings, http, emulated=False)
    db = firestore_client(settings, http, token)
    store = SketchStore(db, settings.sketches_collection)
    secret = settings.webhook_secret.get_secret_value()
    queue = StepQueue(pubsub_client(settings, http, token), secret, settings.max_sketch_age_seconds)
    storage = storage_client(settings, http, token) if settings.media_bucket else None
    novita = NovitaClient(
        settings,
        transport=httpx.HTTPTransport(verify=tls, limits=POOL),
        memory=FormsInFirestore(db, settings.sketches_collection),
    )
    results = Results(settings, store)
    breaker = BalanceBreaker(db, settings.sketches_collection, settings.balance_breaker_seconds)
    # A media host's fault that may pass fails the step, which Pub/Sub delivers again with backoff.
    media_http = media_client(transport=httpx.HTTPTransport(verify=tls))
    worker = Worker(
        Tools(settings, store, results, novita, queue, breaker, media_http, storage, default_resolver)
    )
    creator = Creator(
        settings,
        store,
        results,
        novita,
        queue,
        breaker,
        DailyCaps(
            settings.sketches_collection,
            per_user=settings.max_sketches_per_day,
            per_guest=settings.max_guest_sketches_per_day,
            total=settings.max_sketches_per_day_total,
        ),
        IdempotencyKeys(db, settings.sketches_collection),
    )
    recovery = Recovery(store, results, worker, queue)
    return Runtime(
        settings=settings, store=store, queue=queue, creator=creator, worker=worker, recovery=recovery
    )


def get_runtime() -> Runtime:
    """The instance's runtime. A burst of first requests on its threads builds it once."""
    with _building:
        return _build_runtime()

"""The objects one function instance keeps between requests, each built once, on first use.

A part is built (and its modules imported) only when a request needs it: a `GET ?id=` needs the store
and recovery's look, never Novita's client; a delivery on the public door needs no step; a duplicate
step needs no Kling. That keeps a cold start to what its first request uses.
"""

from __future__ import annotations

import logging
import sys
import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from shared.core import logs
from shared.core.config import ConfigError, Settings, get_settings
from shared.core.http import KeptAlive, tls_context
from shared.google import firestore as firestore_rest
from shared.google import pubsub as pubsub_rest
from shared.google.api import EMULATOR_TOKEN, TIMEOUT, GoogleApi, MetadataToken, TokenSource
from shared.pipeline.queue import StepQueue
from shared.pipeline.recovery import Recovery
from shared.pipeline.results import Results
from shared.sketch.store import SketchStore

if TYPE_CHECKING:
    from shared.google.storage import Storage
    from shared.novita.client import NovitaClient
    from shared.pipeline.creation import Creator
    from shared.pipeline.deletion import Deletion
    from shared.pipeline.retry import Retrier
    from shared.pipeline.steps import Worker
    from shared.pipeline.work import Tools
    from shared.spending.breaker import BalanceBreaker
    from shared.spending.daily import DailyCaps
    from shared.spending.idempotency import IdempotencyKeys

log = logging.getLogger(__name__)
T = TypeVar("T")

# An instance serves up to 32 requests at once (deploy.sh), each on its own thread: Novita's client
# keeps that many connections alive, so that a burst does not open (and TLS-handshake) new ones on
# every call. (Google's, `KeptAlive`, keeps up to as many idle per host.)
POOL_CONNECTIONS, POOL_KEPT_ALIVE = 100, 64


def load_settings_or_exit() -> Settings:
    """Settings for a function's import: a bad variable stops the process with one clear line."""
    logs.configure()
    try:
        return get_settings()
    except ConfigError as exc:
        # One structured line for Cloud Logging, one plain line on stderr for a terminal.
        log.critical("configuration error: %s", exc)
        sys.exit(f"configuration error: {exc}")


def firestore_client(settings: Settings, http: KeptAlive, token: TokenSource) -> firestore_rest.Firestore:
    """Firestore itself with the instance's service account, or the emulator when one is named."""
    host = settings.firestore_emulator_host
    api = GoogleApi(http, token=EMULATOR_TOKEN if host else token)
    base_url = f"http://{host}" if host else firestore_rest.PRODUCTION_URL
    return firestore_rest.Firestore(api, settings.project, base_url=base_url)


def pubsub_client(settings: Settings, http: KeptAlive, token: TokenSource) -> pubsub_rest.PubSub:
    host = settings.pubsub_emulator_host
    api = GoogleApi(http, token=EMULATOR_TOKEN if host else token)
    base_url = f"http://{host}" if host else pubsub_rest.PRODUCTION_URL
    return pubsub_rest.PubSub(api, settings.project, base_url=base_url)


def storage_client(settings: Settings, http: KeptAlive, token: TokenSource) -> Storage:
    from shared.google import storage as storage_rest

    emulator = settings.storage_emulator_host
    api = GoogleApi(http, token=EMULATOR_TOKEN if emulator else token)
    return storage_rest.Storage(api, http, base_url=emulator or storage_rest.PRODUCTION_URL)


class _built_once(cached_property[T]):  # noqa: N801 (a decorator, named as cached_property is)
    """A part of the runtime, built by the first thread that asks for it while the others wait (since
    Python 3.12, cached_property lets racing threads each build their own). Once built, the value
    sits in the instance's __dict__ and is read without the lock."""

    def __get__(self, instance: Any, owner: type | None = None) -> T:
        if instance is None:
            return self  # type: ignore[return-value]  # the descriptor itself, as on the class
        with instance._lock:  # an RLock: a part may ask for another while it is built
            return super().__get__(instance, owner)


class Runtime:
    """One instance's clients and services; each part is built the first time it is asked for."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tls = tls_context()
        self._http = KeptAlive(self._tls, TIMEOUT)
        # The instance's own token; each client below takes the emulators' stand-in instead when an
        # emulator is named.
        self._token = MetadataToken(self._http, settings.metadata_host)
        self._db = firestore_client(settings, self._http, self._token)
        self.store = SketchStore(self._db, settings.sketches_collection)
        self.results = Results(settings, self.store)
        secret = settings.webhook_secret.get_secret_value()
        pubsub = pubsub_client(settings, self._http, self._token)
        self.queue = StepQueue(pubsub, secret, settings.max_sketch_age_seconds)
        self.recovery = Recovery(self.store, self.results, lambda: self.worker, self.queue)
        self._lock = threading.RLock()

    @_built_once
    def novita(self) -> NovitaClient:
        import httpx

        from shared.novita.client import NovitaClient
        from shared.pipeline.forms import FormsInFirestore

        limits = httpx.Limits(max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_KEPT_ALIVE)
        transport = httpx.HTTPTransport(verify=self._tls, limits=limits)
        memory = FormsInFirestore(self._db, self.settings.sketches_collection)
        return NovitaClient(self.settings, transport=transport, memory=memory)

    @_built_once
    def breaker(self) -> BalanceBreaker:
        from shared.spending.breaker import BalanceBreaker

        return BalanceBreaker(
            self._db, self.settings.sketches_collection, self.settings.balance_breaker_seconds
        )

    @_built_once
    def storage(self) -> Storage | None:
        return storage_client(self.settings, self._http, self._token) if self.settings.media_bucket else None

    @_built_once
    def worker(self) -> Worker:
        from shared.pipeline.steps import Worker

        return Worker(self.store, lambda: self.tools)

    @_built_once
    def tools(self) -> Tools:
        import httpx

        from shared.media.fetch import media_client
        from shared.media.policy import default_resolver
        from shared.pipeline.work import Tools

        # A media host's fault that may pass fails the step, which Pub/Sub delivers again with backoff.
        media_http = media_client(transport=httpx.HTTPTransport(verify=self._tls))
        return Tools(
            self.settings,
            self.store,
            self.results,
            self.novita,
            self.queue,
            self.breaker,
            media_http,
            self.storage,
            default_resolver,
        )

    @_built_once
    def caps(self) -> DailyCaps:
        from shared.spending.daily import DailyCaps

        return DailyCaps.of(self.settings)

    @_built_once
    def keys(self) -> IdempotencyKeys:
        from shared.spending.idempotency import IdempotencyKeys

        return IdempotencyKeys(self._db, self.settings.sketches_collection)

    @_built_once
    def creator(self) -> Creator:
        from shared.pipeline.creation import Creator

        return Creator(
            self.settings,
            self.store,
            self.results,
            self.novita,
            self.queue,
            self.breaker,
            self.caps,
            self.keys,
        )

    @_built_once
    def retrier(self) -> Retrier:
        from shared.pipeline.retry import Retrier

        return Retrier(self._db, self.tools, self.caps, self.keys)

    @_built_once
    def deletion(self) -> Deletion:
        from shared.pipeline.deletion import Deletion

        return Deletion(self._db, self.store, self.storage, self.settings)


_building = threading.Lock()
_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The instance's runtime. A burst of first requests on its threads builds it once."""
    global _runtime
    with _building:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime

"""Google Cloud's REST APIs without client SDKs: the instance's access token, Google's error format,
and one rule for trying again.

Each Google SDK (Firestore, Pub/Sub, Storage) pulls in gRPC, `google.api_core` and protobuf; importing
one took 200-330 ms of a cold start here (`python -X importtime`), about as long as the rest of the
function. The few calls the functions make ride on the standard library's HTTP (`shared/core/http.py`), and
talk to an emulator when the standard `*_EMULATOR_HOST` variable names one, as the SDKs do.

A call is tried again on a fault that may pass (no answer, 429, 500, 502, 503, 504, ABORTED) within a
retry window. Callers make that safe: every Firestore write carries a precondition, a Storage write
`ifGenerationMatch=0`, and a Pub/Sub step delivered twice is harmless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.core import timings
from shared.core.backoff import backoff_delay
from shared.core.http import KeptAlive, Response, Timeout, TransportError

# Each attempt may take 2 s and attempts start within 2.5 s: a service that does not answer makes a
# webhook delivery answer 503 in about 4.5 s, inside Novita's 5 s timeout.
TIMEOUT = Timeout(connect=timings.GOOGLE_CONNECT, read=timings.GOOGLE_READ)
RETRY_WINDOW = timings.GOOGLE_RETRY_WINDOW
RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 1.0
_TRANSIENT_STATUSES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "ABORTED", "RESOURCE_EXHAUSTED", "UNKNOWN"}
)
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class ApiError(Exception):
    """A Google API refused a call. `status` is its canonical code, e.g. `INVALID_ARGUMENT`."""

    def __init__(self, status: str, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.http_status = http_status


class Unavailable(ApiError):
    """The service could not be reached or did not answer in time; trying later may succeed."""


class NotFound(ApiError):
    """The resource is not there."""


class AlreadyExists(ApiError):
    """A create of a resource that is already there."""


class PreconditionFailed(ApiError):
    """A conditional write found the resource changed (or there) since the version it named."""


_BY_STATUS: dict[str, type[ApiError]] = {
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "FAILED_PRECONDITION": PreconditionFailed,
    **{status: Unavailable for status in _TRANSIENT_STATUSES},
}
# Storage's JSON API names no canonical status; its HTTP status says the same.
_BY_HTTP: dict[int, type[ApiError]] = {404: NotFound, 409: AlreadyExists, 412: PreconditionFailed}


def typed_error(error: Mapping[str, Any], http_status: int) -> ApiError:
    """The typed error for Google's `{"code", "message", "status"}` error object."""
    status = str(error.get("status") or f"HTTP_{http_status}")
    message = str(error.get("message", ""))[:500]
    kind = _BY_STATUS.get(status) or _BY_HTTP.get(http_status)
    if kind is None:
        kind = Unavailable if http_status in _TRANSIENT_HTTP else ApiError
    return kind(status, message, http_status)


def error_from(response: Response) -> ApiError:
    """The typed error for an answer that is not a success."""
    try:
        body = response.json()
        if isinstance(body, list):  # Firestore's runQuery answers a stream, even for an error
            body = body[0]
        return typed_error(body["error"], response.status_code)
    except (ValueError, LookupError, TypeError, AttributeError):
        status = response.status_code
        kind = Unavailable if status in _TRANSIENT_HTTP else _BY_HTTP.get(status, ApiError)
        return kind(f"HTTP_{status}", response.text[:300], status)


# ----------------------------------------------------------------------------------------- tokens


class TokenSource(Protocol):
    def __call__(self) -> str:
        """The access token to send now."""

    def forget(self) -> None:
        """Drop a token the service refused, so that the next call fetches a new one."""


class StaticToken:
    """A token that never changes: the emulators' `owner`, which bypasses Firestore's security rules
    as a service account does (the Pub/Sub and Storage emulators ignore it)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self) -> str:
        return self._token

    def forget(self) -> None:
        pass


EMULATOR_TOKEN = StaticToken("owner")


class MetadataToken:
    """The instance's OAuth access token from the metadata server, cached until shortly before it
    expires. Cloud Functions run as their service account; this is how its token is obtained."""

    EARLY_REFRESH_SECONDS = 60.0
    # After a failed fetch, calls fail at once for this long instead of queueing for the server.
    FAILURE_MEMORY_SECONDS = 1.0

    def __init__(self, http: KeptAlive, metadata_host: str) -> None:
        self._http = http
        self._url = f"http://{metadata_host}/computeMetadata/v1/instance/service-accounts/default/token"
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0  # wall-clock time, as the token's lifetime is
        self._failure: str | None = None
        self._failed_until = 0.0

    def __call__(self) -> str:
        with self._lock:
            now = time.time()
            if self._token is not None and now < self._expires_at:
                return self._token
            if self._failure is not None and now < self._failed_until:
                raise Unavailable("UNAUTHENTICATED", self._failure)
            try:
                self._token, self._expires_at = self._fetch()
            except Unavailable as exc:
                self._failure, self._failed_until = str(exc), now + self.FAILURE_MEMORY_SECONDS
                raise
            self._failure = None
            return self._token

    def forget(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> tuple[str, float]:
        try:
            response = self._http.request("GET", self._url, headers={"Metadata-Flavor": "Google"})
        except TransportError as exc:
            reason = f"no access token from the metadata server: {exc!r}"
            raise Unavailable("UNAUTHENTICATED", reason) from exc
        try:
            if not response.is_success:
                raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
            body = response.json()
            token, lifetime = str(body["access_token"]), float(body["expires_in"])
        except (ValueError, LookupError, TypeError) as exc:
            raise Unavailable(
                "UNAUTHENTICATED", f"unusable token answer from the metadata server: {exc!r}"
            ) from exc
        return token, time.time() + max(0.0, lifetime - self.EARLY_REFRESH_SECONDS)


# --------------------------------------------------------------------------------------- calling


class GoogleApi:
    """Calls to one Google API with the instance's token, retried through faults that may pass."""

    def __init__(
        self,
        http: KeptAlive,
        *,
        token: TokenSource = EMULATOR_TOKEN,
        retry_window: float = RETRY_WINDOW,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._token = token
        self._retry_window = retry_window
        self._sleep = sleep
        self._clock = clock

    def call(self, method: str, url: str, **request: Any) -> Response:
        """The successful answer to `method url`; raises the typed ApiError otherwise."""
        started = self._clock()
        attempt = 0
        token_refused = False
        while True:
            attempt += 1
            error: ApiError
            try:
                headers = {**request.pop("headers", {}), "Authorization": f"Bearer {self._token()}"}
                request["headers"] = headers
                response = self._http.request(method, url, **request)
            except TransportError as exc:
                error = Unavailable("UNAVAILABLE", f"no answer from {urlsplit(url).hostname}: {exc!r}")
            except Unavailable as exc:  # no access token yet
                error = exc
            else:
                if response.is_success:
                    return response
                error = error_from(response)
                if response.status_code == 401 and not token_refused:
                    # A token refused before its time (revoked, say): fetch a new one, once.
                    token_refused = True
                    self._token.forget()
                    continue
            delay = backoff_delay(attempt, RETRY_BASE_DELAY, RETRY_MAX_DELAY)
            if not isinstance(error, Unavailable) or self._clock() - started + delay > self._retry_window:
                raise error
            self._sleep(delay)

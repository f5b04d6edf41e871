"""Firestore over its REST API (v1): the few calls the sketch store makes, and nothing more.

The Google Cloud Firestore SDK pulls in gRPC, `google.api_core`, protobuf and `requests`; importing
it took 140-270 ms of every cold start, about as long as the rest of the function. These calls ride
on httpx, which the functions load anyway, and talk to the emulator when `FIRESTORE_EMULATOR_HOST`
is set, as the SDK does.

Every call is tried again on a fault that may pass (no answer, 429, 500, 502, 503, 504, ABORTED)
within `RETRY_WINDOW`. That is safe for writes too: each write carries a precondition, so a write
whose first attempt did land is refused the second time (ALREADY_EXISTS, FAILED_PRECONDITION), and
the caller reads the document again. A token Firestore refuses (401) is replaced once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

import httpx

from shared.http_retry import backoff_delay

PRODUCTION_URL = "https://firestore.googleapis.com"
DATABASE = "(default)"
# Each attempt may take 2 s and attempts start within 2.5 s: a store that does not answer makes a
# webhook delivery answer 503 in about 4.5 s, inside Novita's 5 s timeout.
TIMEOUT = httpx.Timeout(2.0, connect=1.0)
RETRY_WINDOW = 2.5
RETRY_BASE_DELAY = 0.1
RETRY_MAX_DELAY = 1.0
_TRANSIENT_STATUSES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "ABORTED", "RESOURCE_EXHAUSTED", "UNKNOWN"}
)
_TRANSIENT_HTTP = frozenset({429, 500, 502, 503, 504})
_SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class FirestoreError(Exception):
    """Firestore refused a call. `status` is its canonical code, e.g. `INVALID_ARGUMENT`."""

    def __init__(self, status: str, message: str, http_status: int | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.http_status = http_status


class Unavailable(FirestoreError):
    """Firestore could not be reached or did not answer in time; trying later may succeed."""


class NotFound(FirestoreError):
    """The document is not there."""


class AlreadyExists(FirestoreError):
    """`create` of a document that is already there."""


class PreconditionFailed(FirestoreError):
    """A conditional write found the document changed (or gone) since the version it named."""


_BY_STATUS: dict[str, type[FirestoreError]] = {
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "FAILED_PRECONDITION": PreconditionFailed,
    **{status: Unavailable for status in _TRANSIENT_STATUSES},
}


def error_from(response: httpx.Response) -> FirestoreError:
    """The typed error for a Firestore answer that is not a success."""
    try:
        body = response.json()
        if isinstance(body, list):  # runQuery answers a stream, even for an error
            body = body[0]
        return _typed(body["error"], response.status_code)
    except (ValueError, LookupError, TypeError):
        kind = Unavailable if response.status_code in _TRANSIENT_HTTP else FirestoreError
        return kind(f"HTTP_{response.status_code}", response.text[:300], response.status_code)


def _typed(error: Mapping[str, Any], http_status: int) -> FirestoreError:
    status, message = str(error["status"]), str(error.get("message", ""))
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = Unavailable if http_status in _TRANSIENT_HTTP else FirestoreError
    return kind(status, message, http_status)


# --------------------------------------------------------------------------------------- values


def encode_value(value: Any) -> dict[str, Any]:
    """One Python value as a Firestore `Value`."""
    if value is None:
        return {"nullValue": None}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, Enum):
        return encode_value(value.value)
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"a timestamp must carry its time zone: {value!r}")
        text = value.astimezone(UTC).isoformat(timespec="microseconds")
        return {"timestampValue": text.replace("+00:00", "Z")}
    if isinstance(value, Mapping):
        return {"mapValue": {"fields": encode_fields(value)}}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [encode_value(v) for v in value]}}
    raise TypeError(f"cannot store a {type(value).__name__} in Firestore")


def encode_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {str(key): encode_value(value) for key, value in data.items()}


def decode_value(value: Mapping[str, Any]) -> Any:
    """One Firestore `Value` as a Python value (timestamps as aware UTC datetimes)."""
    ((kind, inner),) = value.items()
    if kind == "nullValue":
        return None
    if kind in ("booleanValue", "stringValue"):
        return inner
    if kind == "integerValue":
        return int(inner)
    if kind == "doubleValue":
        return float(inner)  # NaN and infinities arrive as strings
    if kind == "timestampValue":
        return datetime.fromisoformat(inner).astimezone(UTC)
    if kind == "mapValue":
        return decode_fields(inner.get("fields", {}))
    if kind == "arrayValue":
        return [decode_value(v) for v in inner.get("values", [])]
    return inner  # kinds the store never writes (bytes, references, geo points) stay as they came


def decode_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: decode_value(value) for key, value in fields.items()}


def field_path(name: str) -> str:
    """A top-level field name as a field path (quoted unless it is a plain identifier)."""
    if _SIMPLE_FIELD.fullmatch(name):
        return name
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# ------------------------------------------------------------------------------------ documents


@dataclass(frozen=True)
class Document:
    id: str
    data: dict[str, Any]
    # Opaque: handed back unchanged as the precondition of the next write.
    update_time: str

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Document:
        return cls(
            id=str(document["name"]).rsplit("/", 1)[-1],
            data=decode_fields(document.get("fields", {})),
            update_time=str(document["updateTime"]),
        )


class TokenSource(Protocol):
    def __call__(self) -> str:
        """The access token to send now."""

    def forget(self) -> None:
        """Drop a token Firestore refused, so that the next call fetches a new one."""


class StaticToken:
    """A token that never changes: the emulator's `owner`, which bypasses security rules as a
    service account does."""

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

    def __init__(self, http: httpx.Client, metadata_host: str) -> None:
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
            response = self._http.get(self._url, headers={"Metadata-Flavor": "Google"})
        except httpx.HTTPError as exc:
            reason = f"no access token from the metadata server: {exc!r}"
            raise Unavailable("UNAUTHENTICATED", reason) from exc
        try:
            response.raise_for_status()
            body = response.json()
            token, lifetime = str(body["access_token"]), float(body["expires_in"])
        except (httpx.HTTPStatusError, ValueError, LookupError, TypeError) as exc:
            raise Unavailable(
                "UNAUTHENTICATED", f"unusable token answer from the metadata server: {exc!r}"
            ) from exc
        return token, time.time() + max(0.0, lifetime - self.EARLY_REFRESH_SECONDS)


class Firestore:
    """Documents of one database, addressed as (collection, document id)."""

    def __init__(
        self,
        http: httpx.Client,
        project: str,
        *,
        base_url: str = PRODUCTION_URL,
        token: TokenSource = EMULATOR_TOKEN,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._database = f"projects/{project}/databases/{DATABASE}"
        self._url = f"{base_url.rstrip('/')}/v1/{self._database}/documents"
        self._token = token
        self._sleep = sleep
        self._clock = clock

    def _name(self, collection: str, doc_id: str) -> str:
        return f"{self._database}/documents/{collection}/{doc_id}"

    def get(self, collection: str, doc_id: str) -> Document | None:
        try:
            response = self._call("GET", f"{self._url}/{collection}/{doc_id}")
        except NotFound:
            return None
        return Document.from_json(response.json())

    def create(self, collection: str, doc_id: str, data: Mapping[str, Any]) -> str:
        """Write a new document; its update time. AlreadyExists if it is there."""
        write = {"update": {"name": self._name(collection, doc_id), "fields": encode_fields(data)}}
        return self._commit({**write, "currentDocument": {"exists": False}})

    def update(self, collection: str, doc_id: str, data: Mapping[str, Any], *, if_update_time: str) -> str:
        """Set the given fields if the document is still at `if_update_time`; its new update time.
        PreconditionFailed if it changed or is gone."""
        write = {
            "update": {"name": self._name(collection, doc_id), "fields": encode_fields(data)},
            "updateMask": {"fieldPaths": [field_path(key) for key in data]},
            "currentDocument": {"updateTime": if_update_time},
        }
        return self._commit(write)

    def at_most(self, collection: str, field: str, value: Any, limit: int) -> list[Document]:
        """Documents whose `field` is at most `value`, in ascending order of it."""
        path = {"fieldPath": field_path(field)}
        condition = {"field": path, "op": "LESS_THAN_OR_EQUAL", "value": encode_value(value)}
        query = {
            "from": [{"collectionId": collection}],
            "where": {"fieldFilter": condition},
            "orderBy": [{"field": path, "direction": "ASCENDING"}],
            "limit": limit,
        }
        response = self._call("POST", f"{self._url}:runQuery", json={"structuredQuery": query})
        documents = []
        for item in response.json():
            if "error" in item:  # the stream broke off after it had started
                raise _typed(item["error"], response.status_code)
            if "document" in item:
                documents.append(Document.from_json(item["document"]))
        return documents

    def _commit(self, write: dict[str, Any]) -> str:
        response = self._call("POST", f"{self._url}:commit", json={"writes": [write]})
        return str(response.json()["writeResults"][0]["updateTime"])

    def _call(self, method: str, url: str, *, json: Any = None) -> httpx.Response:
        started = self._clock()
        attempt = 0
        token_refused = False
        while True:
            attempt += 1
            error: FirestoreError
            try:
                headers = {"Authorization": f"Bearer {self._token()}"}
                response = self._http.request(method, url, json=json, headers=headers)
            except httpx.TransportError as exc:
                error = Unavailable("UNAVAILABLE", f"no answer from Firestore: {exc!r}")
            except Unavailable as exc:  # no access token yet
                error = exc
            else:
                if response.is_success:
                    return response
                error = error_from(response)
                if error.status == "UNAUTHENTICATED" and not token_refused:
                    # A token refused before its time (revoked, say): fetch a new one, once.
                    token_refused = True
                    self._token.forget()
                    continue
            delay = backoff_delay(attempt, RETRY_BASE_DELAY, RETRY_MAX_DELAY)
            if not isinstance(error, Unavailable) or self._clock() - started + delay > RETRY_WINDOW:
                raise error
            self._sleep(delay)

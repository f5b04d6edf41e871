"""Cloud Storage over its JSON API: create-only resumable uploads, the URLs that play them, and the
removal of a deleted sketch's objects.

The Storage SDK's import took 240-320 ms here (`python -X importtime -c 'import google.cloud.storage'`);
an upload is a few HTTP calls. Every upload is resumable, so a video streams through in chunks
(never whole in memory) and a still takes the same path in one chunk. Each is created with
`ifGenerationMatch=0`: it never replaces an object that is already there.

Objects are served by Firebase Storage download-token URLs: the token lives in the object's metadata
(`firebaseStorageDownloadTokens`), the URL plays without credentials for as long as the token is
there, and the bucket itself stays private. Rewriting the token revokes every URL made from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from shared.core.deadline import Deadline
from shared.core.http import KeptAlive, Timeout, TransportError
from shared.google.api import ApiError, GoogleApi, NotFound, PreconditionFailed, Unavailable, error_from

PRODUCTION_URL = "https://storage.googleapis.com"
FIREBASE_DOWNLOAD_URL = "https://firebasestorage.googleapis.com/v0"
TOKEN_METADATA = "firebaseStorageDownloadTokens"
# Chunks other than the last must be multiples of 256 KiB. An upload holds at most about two chunks
# (the pieces of the next, and the one being joined from them); 4 MiB keeps that well under the
# +25 MB a copy may grow a worker by, with a 50 MB video in 13 calls.
CHUNK_BYTES = 16 * 256 * 1024
# A chunk's connection, and each read of its answer or write of its bytes.
CHUNK_TIMEOUT = Timeout(connect=5.0, read=60.0)


class ObjectExists(Exception):
    """An object of that name is already in the bucket; it was not replaced."""

    def __init__(self, existing: Mapping[str, Any]) -> None:
        super().__init__(f"object {existing.get('name')!r} exists already")
        self.existing = existing


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    token: str


class Storage:
    def __init__(self, api: GoogleApi, http: KeptAlive, *, base_url: str = PRODUCTION_URL) -> None:
        # `api` retries its calls; the chunk PUTs go through `http` directly, as a retried chunk
        # must restart from what the session says it has.
        self._api = api
        self._http = http
        self._base = base_url.rstrip("/")
        self._emulated = self._base != PRODUCTION_URL

    def download_url(self, bucket: str, name: str, token: str) -> str:
        """A URL that plays the object without credentials, as long as its token is not revoked."""
        encoded = quote(name, safe="")
        if self._emulated:
            # The emulator serves no Firebase endpoint (nor checks tokens); its download path stands in.
            return f"{self._base}/download/storage/v1/b/{bucket}/o/{encoded}?alt=media&token={token}"
        return f"{FIREBASE_DOWNLOAD_URL}/b/{bucket}/o/{encoded}?alt=media&token={token}"

    def get(self, bucket: str, name: str) -> dict[str, Any]:
        response = self._api.call("GET", f"{self._base}/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        return dict(response.json())

    def delete(self, bucket: str, name: str) -> bool:
        """Remove the object `name`; whether it was there (removing what is gone is done already)."""
        try:
            self._api.call("DELETE", f"{self._base}/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        except NotFound:
            return False
        return True

    def upload(
        self,
        bucket: str,
        name: str,
        data: bytes | Iterable[bytes],
        *,
        content_type: str,
        token: str,
        metadata: Mapping[str, str],
        deadline: Deadline,
    ) -> StoredObject:
        """Store `data` as a new object `name`; ObjectExists if there is one already.

        Bytes already in memory (a still) go in one call; pieces as they arrive (a video) go in
        chunks of CHUNK_BYTES, so that no more than about two chunks are ever held.
        """
        session = self._start(bucket, name, content_type, token, metadata)
        sent = 0
        try:
            for chunk in [data] if isinstance(data, bytes) else _chunks(data):
                # Only the rest after the full chunks is shorter: it completes the upload.
                last = isinstance(data, bytes) or len(chunk) < CHUNK_BYTES
                final = self._put(session, chunk, sent, sent + len(chunk) if last else None, deadline)
                sent += len(chunk)
        except PreconditionFailed as exc:
            # Cloud Storage may check `ifGenerationMatch=0` again as the upload completes: the
            # name was taken while the chunks went.
            raise ObjectExists(self.get(bucket, name)) from exc
        return StoredObject(name=name, size=int(final.get("size", sent)), token=token)

    def _start(
        self, bucket: str, name: str, content_type: str, token: str, metadata: Mapping[str, str]
    ) -> str:
        try:
            response = self._api.call(
                "POST",
                f"{self._base}/upload/storage/v1/b/{bucket}/o",
                params={"uploadType": "resumable", "name": name, "ifGenerationMatch": "0"},
                headers={"X-Upload-Content-Type": content_type},
                json={"contentType": content_type, "metadata": {**metadata, TOKEN_METADATA: token}},
            )
        except PreconditionFailed as exc:
            raise ObjectExists(self.get(bucket, name)) from exc
        location = response.headers.get("Location")
        if not location:
            raise ApiError("NO_SESSION", "the resumable upload was started without a session URI")
        return location

    def _put(
        self, session: str, data: bytes | memoryview, start: int, total: int | None, deadline: Deadline
    ) -> dict[str, Any]:
        """Send one chunk; the object's resource once the last chunk is in."""
        end = start + len(data) - 1
        if total is None:
            content_range = f"bytes {start}-{end}/*"
        elif data:
            content_range = f"bytes {start}-{end}/{total}"
        else:
            content_range = f"bytes */{total}"
        try:
            response = self._http.request(
                "PUT",
                session,
                content=data,  # sent as it is, never copied again
                headers={"Content-Range": content_range, "Content-Length": str(len(data))},
                timeout=CHUNK_TIMEOUT.within(deadline),
            )
        except TransportError as exc:
            raise Unavailable("UNAVAILABLE", f"Cloud Storage did not take a chunk: {exc!r}") from exc
        if response.status_code == 308:
            persisted = response.headers.get("Range", "")
            if total is None and persisted == f"bytes=0-{end}":
                return {}
            # Less than was sent is stored (after the last chunk: the object is not complete).
            # Resending from there is the resumable protocol, but a chunk lost in the middle is
            # rare enough to start the copy again instead.
            raise Unavailable("INCOMPLETE", f"Cloud Storage kept {persisted or 'nothing'} of bytes 0-{end}")
        if response.status_code in (200, 201):
            return dict(response.json())
        raise error_from(response)


def _chunks(pieces: Iterable[bytes]) -> Iterator[bytes | memoryview]:
    """`pieces` regrouped into full chunks of CHUNK_BYTES, then the rest (shorter, maybe empty).

    A piece larger than a chunk is cut into views of itself, not copies; smaller pieces are joined
    once per chunk. Besides the piece at hand, at most a chunk's worth is held.
    """
    held: list[memoryview] = []
    size = 0
    for piece in pieces:
        view = memoryview(piece)
        while len(view):
            take = min(len(view), CHUNK_BYTES - size)
            held.append(view[:take])
            size += take
            view = view[take:]
            if size == CHUNK_BYTES:
                yield held[0] if len(held) == 1 else b"".join(held)
                held, size = [], 0
    yield held[0] if len(held) == 1 else b"".join(held)

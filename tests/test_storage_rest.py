"""Cloud Storage's create-only resumable uploads and Firebase download-token URLs: against the real
emulator (`gcp-storage-emulator`), and, for what it does not do (preconditions, a chunk kept short),
with a scripted transport."""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from devstack.storage import StorageEmulator
from shared.core.deadline import Deadline
from shared.core.http import KeptAlive, Request, Response, tls_context
from shared.google.api import TIMEOUT, GoogleApi, StaticToken, Unavailable
from shared.google.storage import CHUNK_BYTES, PRODUCTION_URL, TOKEN_METADATA, ObjectExists, Storage
from tests.conftest import Scripted, firestore_error
from tests.google_http import MockHttp

Connect = Callable[[KeptAlive], Storage]
PIECE = 1 << 20  # what the source hands out at a time, as a video download's reads do


class Source:
    """Reproducible bytes handed out in pieces; counts what it has handed out, and hashes it."""

    def __init__(self, size: int, piece: int = PIECE) -> None:
        self.size = size
        self.piece = piece
        self.produced = 0
        self.sha256 = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        rng = random.Random(self.size)
        while self.produced < self.size:
            piece = rng.randbytes(min(self.piece, self.size - self.produced))
            self.produced += len(piece)
            self.sha256.update(piece)
            yield piece


class Recording(KeptAlive):
    """Passes requests to the emulator; for each chunk PUT, its Content-Range, its size and how
    much of the source had been handed out when it went."""

    def __init__(self, source: Source | None = None) -> None:
        super().__init__(tls_context(), TIMEOUT)
        self._source = source
        self.puts: list[tuple[str, int, int]] = []

    def send(self, request: Request) -> Response:
        if request.method == "PUT":
            produced = self._source.produced if self._source else 0
            sent = request.body or b""
            self.puts.append((request.headers["Content-Range"], len(sent), produced))
        return super().send(request)


@pytest.fixture
def connect(storage: StorageEmulator) -> Iterator[Connect]:
    """A client of the emulator through the given transport."""
    clients: list[KeptAlive] = []

    def make(http: KeptAlive) -> Storage:
        clients.append(http)
        return Storage(GoogleApi(http), http, base_url=storage.url)

    yield make
    for client in clients:
        client.close()


def _upload(storage: Storage, bucket: str, name: str, chunks: Any, token: str = "tok-1") -> int:
    stored = storage.upload(
        bucket,
        name,
        chunks,
        content_type="video/mp4",
        token=token,
        metadata={"sketch_id": "s1"},
        deadline=Deadline.after(60),
    )
    assert stored.name == name and stored.token == token
    return stored.size


def _download(storage: Storage, bucket: str, name: str, token: str = "tok-1") -> httpx.Response:
    # As a browser plays it: no credentials, only the URL.
    answer = httpx.get(storage.download_url(bucket, name, token), timeout=30)
    answer.raise_for_status()
    return answer


def _name(suffix: str = ".mp4") -> str:
    return f"videos/{uuid.uuid4().hex}{suffix}"


# ---------------------------------------------------------------------------- against the emulator


def test_a_large_upload_streams_in_chunks_and_reads_back_identical(
    storage: StorageEmulator, connect: Connect
) -> None:
    source = Source(20 * PIECE + 12345)
    recording = Recording(source)
    client, name = connect(recording), _name()

    assert _upload(client, storage.bucket, name, source) == source.size
    played = _download(client, storage.bucket, name)
    assert len(played.content) == source.size
    assert hashlib.sha256(played.content).hexdigest() == source.sha256.hexdigest()

    sizes = [size for _, size, _ in recording.puts]
    whole = source.size // CHUNK_BYTES
    assert len(sizes) == whole + 1 and sum(sizes) == source.size
    # Every chunk but the last is whole (the protocol wants multiples of 256 KiB) ...
    assert sizes[:-1] == [CHUNK_BYTES] * whole and 0 < sizes[-1] <= CHUNK_BYTES
    # ... and the upload holds at most a chunk and the piece that overflowed it, never the video.
    sent = 0
    for _, size, produced in recording.puts:
        assert produced - sent <= CHUNK_BYTES + PIECE
        sent += size
    assert [r for r, _, _ in recording.puts][
        -1
    ] == f"bytes {whole * CHUNK_BYTES}-{source.size - 1}/{source.size}"


def test_an_upload_of_whole_chunks_is_completed_by_an_empty_last_put(
    storage: StorageEmulator, connect: Connect
) -> None:
    source = Source(2 * CHUNK_BYTES)
    recording = Recording(source)
    client, name = connect(recording), _name()
    assert _upload(client, storage.bucket, name, source) == 2 * CHUNK_BYTES
    # Which full chunk is the last is known only once the source ends; holding one back to learn
    # it would cost a chunk of memory, so the upload is completed by an empty PUT with the total.
    assert [r for r, _, _ in recording.puts] == [
        f"bytes 0-{CHUNK_BYTES - 1}/*",
        f"bytes {CHUNK_BYTES}-{2 * CHUNK_BYTES - 1}/*",
        f"bytes */{2 * CHUNK_BYTES}",
    ]
    assert hashlib.sha256(_download(client, storage.bucket, name).content).digest() == source.sha256.digest()


@pytest.mark.parametrize("size", [0, 1, 300_000])
def test_a_small_upload_is_one_chunk(storage: StorageEmulator, connect: Connect, size: int) -> None:
    data = random.Random(size).randbytes(size)
    recording = Recording()
    client, name = connect(recording), _name(".jpeg")
    assert _upload(client, storage.bucket, name, [data[:10], data[10:]]) == size
    assert len(recording.puts) == 1
    assert _download(client, storage.bucket, name).content == data


def test_bytes_already_in_memory_go_in_one_call_however_large(
    storage: StorageEmulator, connect: Connect
) -> None:
    """A still is held whole anyway: cutting it into chunks would only add round trips."""
    data = random.Random(7).randbytes(CHUNK_BYTES * 2 + 99)
    recording = Recording()
    client, name = connect(recording), _name(".jpeg")

    assert _upload(client, storage.bucket, name, data) == len(data)

    assert [r for r, _, _ in recording.puts] == [f"bytes 0-{len(data) - 1}/{len(data)}"]
    assert _download(client, storage.bucket, name).content == data


def test_the_download_token_and_the_metadata_are_stored_on_the_object(
    storage: StorageEmulator, connect: Connect
) -> None:
    client, name = connect(KeptAlive(tls_context(), TIMEOUT)), _name()
    _upload(client, storage.bucket, name, [b"moov"], token="tok-42")
    stored = client.get(storage.bucket, name)
    assert stored["name"] == name and stored["contentType"] == "video/mp4" and int(stored["size"]) == 4
    assert stored["metadata"] == {"sketch_id": "s1", TOKEN_METADATA: "tok-42"}
    assert _download(client, storage.bucket, name, token="tok-42").headers["content-type"] == "video/mp4"


# ---------------------------------------------------------------------------------------- scripted


SESSION = "https://storage.test/upload/storage/v1/b/media/o?uploadType=resumable&upload_id=u1"
STARTED = httpx.Response(200, headers={"Location": SESSION})
EXISTING = {"name": "videos/a.mp4", "size": "9", "metadata": {"sketch_id": "s0", TOKEN_METADATA: "tok-0"}}


def _scripted(script: Scripted, sleeps: list[float] | None = None) -> Storage:
    http = MockHttp(script)
    sleep = [].append if sleeps is None else sleeps.append
    api = GoogleApi(http, token=StaticToken("instance-token"), sleep=sleep)
    return Storage(api, http)


def _scripted_upload(storage: Storage, chunks: Any) -> int:
    return _upload(storage, "media", "videos/a.mp4", chunks)


def test_an_upload_is_created_only_if_the_name_is_free() -> None:
    script = Scripted(STARTED, httpx.Response(200, json={"name": "videos/a.mp4", "size": "4"}))
    assert _scripted_upload(_scripted(script), [b"moov"]) == 4
    start, put = script.requests
    assert start.method == "POST" and start.url.path == "/upload/storage/v1/b/media/o"
    assert parse_qs(start.url.query.decode()) == {
        "uploadType": ["resumable"],
        "name": ["videos/a.mp4"],
        "ifGenerationMatch": ["0"],
    }
    assert start.headers["Authorization"] == "Bearer instance-token"
    assert start.headers["X-Upload-Content-Type"] == "video/mp4"
    assert json.loads(start.content) == {
        "contentType": "video/mp4",
        "metadata": {"sketch_id": "s1", TOKEN_METADATA: "tok-1"},
    }
    # The chunks go to the session, which is their credential.
    assert put.method == "PUT" and str(put.url) == SESSION and put.content == b"moov"
    assert put.headers["Content-Range"] == "bytes 0-3/4"


def test_a_taken_name_is_object_exists_with_what_is_there() -> None:
    taken = httpx.Response(412, json={"error": {"code": 412, "message": "conditionNotMet"}})
    script = Scripted(taken, httpx.Response(200, json=EXISTING))
    source = Source(10)
    with pytest.raises(ObjectExists) as caught:
        _scripted_upload(_scripted(script), source)
    assert caught.value.existing == EXISTING
    _, read = script.requests
    assert (
        read.method == "GET"
        and str(read.url) == "https://storage.googleapis.com/storage/v1/b/media/o/videos%2Fa.mp4"
    )
    assert source.produced == 0  # nothing was read, nothing sent


def test_a_name_taken_while_the_chunks_went_is_object_exists_too() -> None:
    # Cloud Storage may check the precondition again as the upload completes.
    taken = httpx.Response(412, json={"error": {"code": 412, "message": "conditionNotMet"}})
    script = Scripted(STARTED, taken, httpx.Response(200, json=EXISTING))
    with pytest.raises(ObjectExists) as caught:
        _scripted_upload(_scripted(script), [b"moov"])
    assert caught.value.existing == EXISTING
    assert [r.method for r in script.requests] == ["POST", "PUT", "GET"]


@pytest.mark.parametrize(
    "kept",
    [
        {"Range": f"bytes=0-{CHUNK_BYTES - 1000}"},  # fewer bytes than were sent
        {},  # none at all
    ],
)
def test_a_chunk_kept_short_is_a_fault_that_passes(kept: dict[str, str]) -> None:
    script = Scripted(STARTED, httpx.Response(308, headers=kept))
    with pytest.raises(Unavailable, match="kept"):
        _scripted_upload(_scripted(script), Source(CHUNK_BYTES + 10))
    assert len(script.requests) == 2  # nothing after the short chunk


def test_a_last_chunk_not_taken_whole_is_a_fault_that_passes() -> None:
    script = Scripted(STARTED, httpx.Response(308, headers={"Range": "bytes=0-1"}))
    with pytest.raises(Unavailable, match="kept"):
        _scripted_upload(_scripted(script), [b"moov"])


def test_a_chunk_that_gets_no_answer_is_a_fault_that_passes() -> None:
    script = Scripted(STARTED, httpx.ReadTimeout("slow"))
    with pytest.raises(Unavailable, match="did not take a chunk"):
        _scripted_upload(_scripted(script), [b"moov"])
    assert len(script.requests) == 2  # a chunk is not sent again into a session in an unknown state


def test_starting_an_upload_is_tried_again_through_a_fault_that_passes() -> None:
    script = Scripted(firestore_error(503, "UNAVAILABLE"), STARTED, httpx.Response(200, json={"size": "4"}))
    sleeps: list[float] = []
    assert _scripted_upload(_scripted(script, sleeps), [b"moov"]) == 4
    assert [r.method for r in script.requests] == ["POST", "POST", "PUT"] and len(sleeps) == 1


@pytest.mark.parametrize("base_url", [PRODUCTION_URL, PRODUCTION_URL + "/"])
def test_the_download_url_is_firebase_storage_s_token_url(base_url: str) -> None:
    http = MockHttp(Scripted(httpx.Response(500)))
    storage = Storage(GoogleApi(http), http, base_url=base_url)
    assert storage.download_url("media-bucket", "videos/s1 final#1.mp4", "tok-9") == (
        "https://firebasestorage.googleapis.com/v0/b/media-bucket/o/videos%2Fs1%20final%231.mp4"
        "?alt=media&token=tok-9"
    )

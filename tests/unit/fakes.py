"""In-memory stand-ins for Firestore, Pub/Sub and Cloud Storage, with the same rules the real ones
apply to the project's calls (preconditions, increments, query order and cursors), so that the
steps and the decisions can be tested by themselves, without an emulator."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shared.core.deadline import Deadline
from shared.google.api import AlreadyExists, GoogleApi, NotFound, PreconditionFailed, Unavailable
from shared.google.firestore import (
    NAME_FIELD,
    Delete,
    Document,
    Firestore,
    Write,
    decode_fields,
    encode_fields,
)
from shared.google.pubsub import Message, PubSub
from shared.google.storage import TOKEN_METADATA, ObjectExists, Storage, StoredObject

_OPERATORS = {
    "EQUAL": lambda a, b: a == b,
    "LESS_THAN_OR_EQUAL": lambda a, b: a is not None and a <= b,
    "LESS_THAN": lambda a, b: a is not None and a < b,
    "GREATER_THAN_OR_EQUAL": lambda a, b: a is not None and a >= b,
    "GREATER_THAN": lambda a, b: a is not None and a > b,
}


class MemoryFirestore(Firestore):
    """Documents in a dict; every write goes through Firestore's own value encoding, as on the wire."""

    def __init__(self) -> None:
        super().__init__(GoogleApi(None), "fake")  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self._docs: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self._clock = itertools.count(1)
        # Set to make every call fail as an outage would.
        self.down = False
        self.calls = 0

    def data(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._docs.get((collection, doc_id))
        return None if found is None else decode_fields(found[0])

    def get(self, collection: str, doc_id: str) -> Document | None:
        self._call()
        with self._lock:
            found = self._docs.get((collection, doc_id))
        if found is None:
            return None
        return Document(doc_id, decode_fields(found[0]), found[1])

    def commit(self, writes: Sequence[Write | Delete]) -> list[tuple[str, list[Any]]]:
        self._call()
        with self._lock:
            for write in writes:
                self._check(write)
            stamp = f"t{next(self._clock):08d}"
            return [self._apply(write, stamp) for write in writes]

    def query(
        self,
        collection: str,
        *,
        where: Sequence[tuple[str, Any, Any]] = (),
        order_by: Sequence[tuple[str, Any]] = (),
        start_after: Sequence[Any] | None = None,
        limit: int,
    ) -> list[Document]:
        self._call()
        with self._lock:
            rows = [
                Document(doc_id, decode_fields(fields), stamp)
                for (coll, doc_id), (fields, stamp) in self._docs.items()
                if coll == collection
            ]
        rows = [r for r in rows if all(_OPERATORS[op](r.data.get(f), v) for f, op, v in where)]

        def key(document: Document) -> list[Any]:
            return [document.id if f == NAME_FIELD else document.data.get(f) for f, _ in order_by]

        for index in reversed(range(len(order_by))):
            field, direction = order_by[index]
            rows.sort(key=lambda r, i=index: key(r)[i], reverse=direction == "DESCENDING")
        if start_after is not None:
            after = list(start_after)
            rows = [r for r in rows if _after(key(r), after, [d for _, d in order_by])]
        return rows[:limit]

    def _call(self) -> None:
        self.calls += 1
        if self.down:
            raise Unavailable("UNAVAILABLE", "the fake Firestore is down")

    def _check(self, write: Write | Delete) -> None:
        found = self._docs.get((write.collection, write.doc_id))
        if isinstance(write, Delete):
            if write.exists and found is None:
                raise NotFound("NOT_FOUND", "no such document")
        elif write.precondition == "absent":
            if found is not None:
                raise AlreadyExists("ALREADY_EXISTS", "the document exists")
        elif write.precondition is not None and (found is None or found[1] != write.precondition):
            raise PreconditionFailed("FAILED_PRECONDITION", "the document changed")

    def _apply(self, write: Write | Delete, stamp: str) -> tuple[str, list[Any]]:
        key = (write.collection, write.doc_id)
        if isinstance(write, Delete):
            self._docs.pop(key, None)
            return stamp, []
        found = self._docs.get(key)
        fields = {} if found is None or write.precondition == "absent" else dict(found[0])
        fields.update(encode_fields(write.data))
        sums = []
        for field, by in (write.increments or {}).items():
            total = int(decode_fields(fields).get(field) or 0) + by
            fields.update(encode_fields({field: total}))
            sums.append(total)
        self._docs[key] = (fields, stamp)
        return stamp, sums


def _after(values: list[Any], cursor: list[Any], directions: list[str]) -> bool:
    for value, at, direction in zip(values, cursor, directions, strict=True):
        if value == at:
            continue
        return (value > at) if direction == "ASCENDING" else (value < at)
    return False


class MemoryPubSub(PubSub):
    """Publishes into a list: what was handed on, in order."""

    def __init__(self) -> None:
        super().__init__(GoogleApi(None), "fake")  # type: ignore[arg-type]
        self.published: list[tuple[str, Message]] = []
        self.down = False

    def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        if self.down:
            raise Unavailable("UNAVAILABLE", "the fake Pub/Sub is down")
        self.published += [(topic, m) for m in messages]
        return [str(len(self.published) - i) for i in range(len(messages))]


class MemoryStorage(Storage):
    """Objects in a dict, created only where none is (as `ifGenerationMatch=0` asks)."""

    def __init__(self) -> None:
        super().__init__(GoogleApi(None), None, base_url="http://storage.test")  # type: ignore[arg-type]
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}

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
        if (bucket, name) in self.objects:
            raise ObjectExists(self.get(bucket, name))
        body = data if isinstance(data, bytes) else b"".join(bytes(piece) for piece in data)
        self.objects[(bucket, name)] = (body, {**metadata, TOKEN_METADATA: token})
        return StoredObject(name=name, size=len(body), token=token)

    def get(self, bucket: str, name: str) -> dict[str, Any]:
        if (bucket, name) not in self.objects:
            raise NotFound("NOT_FOUND", name)
        return {"name": name, "metadata": dict(self.objects[(bucket, name)][1])}

    def delete(self, bucket: str, name: str) -> bool:
        return self.objects.pop((bucket, name), None) is not None

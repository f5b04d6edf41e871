"""Firestore over its REST API (v1): the few calls the store makes, and nothing more.

The calls go through `shared.google.api` (the instance's token, Google's error format, tries again
within a short window). Trying a write again is safe: each write carries a precondition, so a write
whose first attempt did land is refused the second time (ALREADY_EXISTS, FAILED_PRECONDITION), and
the caller reads the document again. Increments are the exception: one may count twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from shared.google.api import GoogleApi, NotFound, typed_error

PRODUCTION_URL = "https://firestore.googleapis.com"
DATABASE = "(default)"
_SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A document's own name as a field, for orderings and cursors that must be total.
NAME_FIELD = "__name__"

Operator = Literal["EQUAL", "LESS_THAN_OR_EQUAL", "GREATER_THAN_OR_EQUAL", "LESS_THAN", "GREATER_THAN"]
Direction = Literal["ASCENDING", "DESCENDING"]


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


@dataclass(frozen=True)
class Write:
    """One write of an atomic commit: every write of a commit lands, or none does."""

    collection: str
    doc_id: str
    data: Mapping[str, Any]
    # "absent": the document must not exist yet (a create); a string: its update time must still
    # be this; None: written whatever is there (only with `increments`).
    precondition: Literal["absent"] | str | None
    # Fields added to atomically, with the sums given back by `commit`.
    increments: Mapping[str, int] | None = None


@dataclass(frozen=True)
class Delete:
    """The removal of a document, as one write of an atomic commit; `exists`: it must be there."""

    collection: str
    doc_id: str
    exists: bool = False


class Firestore:
    """Documents of one database, addressed as (collection, document id)."""

    def __init__(self, api: GoogleApi, project: str, *, base_url: str = PRODUCTION_URL) -> None:
        self._api = api
        self._database = f"projects/{project}/databases/{DATABASE}"
        self._url = f"{base_url.rstrip('/')}/v1/{self._database}/documents"

    def _name(self, collection: str, doc_id: str) -> str:
        return f"{self._database}/documents/{collection}/{doc_id}"

    def get(self, collection: str, doc_id: str) -> Document | None:
        try:
            response = self._api.call("GET", f"{self._url}/{collection}/{doc_id}")
        except NotFound:
            return None
        return Document.from_json(response.json())

    def create(self, collection: str, doc_id: str, data: Mapping[str, Any]) -> str:
        """Write a new document; its update time. AlreadyExists if it is there."""
        return self.commit([Write(collection, doc_id, data, "absent")])[0][0]

    def update(self, collection: str, doc_id: str, data: Mapping[str, Any], *, if_update_time: str) -> str:
        """Set the given fields if the document is still at `if_update_time`; its new update time.
        PreconditionFailed if it changed or is gone."""
        return self.commit([Write(collection, doc_id, data, if_update_time)])[0][0]

    def increment(self, collection: str, doc_id: str, field: str, by: int, data: Mapping[str, Any]) -> int:
        """Add `by` to `field` and set `data`'s fields (creating the document if needed); the sum,
        atomically. It carries no precondition: tried again after its answer was lost, it counts twice."""
        _, sums = self.commit([Write(collection, doc_id, data, None, {field: by})])[0]
        return int(sums[0])

    def delete(self, collection: str, doc_id: str) -> None:
        """Remove the document, if it is there."""
        self.commit([Delete(collection, doc_id)])

    def commit(self, writes: Sequence[Write | Delete]) -> list[tuple[str, list[Any]]]:
        """Apply `writes` atomically; for each, its update time and the sums of its increments.

        AlreadyExists or PreconditionFailed, and nothing written, if any precondition fails.
        """
        body = {"writes": [self._write(w) if isinstance(w, Write) else self._delete(w) for w in writes]}
        results = self._api.call("POST", f"{self._url}:commit", json=body).json()["writeResults"]
        return [
            (str(r.get("updateTime", "")), [decode_value(v) for v in r.get("transformResults", [])])
            for r in results
        ]

    def _delete(self, delete: Delete) -> dict[str, Any]:
        out: dict[str, Any] = {"delete": self._name(delete.collection, delete.doc_id)}
        if delete.exists:
            out["currentDocument"] = {"exists": True}
        return out

    def _write(self, write: Write) -> dict[str, Any]:
        out: dict[str, Any] = {
            "update": {
                "name": self._name(write.collection, write.doc_id),
                "fields": encode_fields(write.data),
            },
        }
        if write.precondition != "absent":
            # A create sets the whole document; anything else only the fields it names.
            out["updateMask"] = {"fieldPaths": [field_path(key) for key in write.data]}
        if write.precondition == "absent":
            out["currentDocument"] = {"exists": False}
        elif write.precondition is not None:
            out["currentDocument"] = {"updateTime": write.precondition}
        if write.increments:
            out["updateTransforms"] = [
                {"fieldPath": field_path(field), "increment": encode_value(by)}
                for field, by in write.increments.items()
            ]
        return out

    def query(
        self,
        collection: str,
        *,
        where: Sequence[tuple[str, Operator, Any]] = (),
        order_by: Sequence[tuple[str, Direction]] = (),
        start_after: Sequence[Any] | None = None,
        limit: int,
    ) -> list[Document]:
        """Documents matching every `where`, in `order_by`'s order, after the `start_after` cursor
        (one value per ordering), at most `limit`."""
        filters = [
            {"fieldFilter": {"field": {"fieldPath": field_path(f)}, "op": op, "value": encode_value(v)}}
            for f, op, v in where
        ]
        query: dict[str, Any] = {"from": [{"collectionId": collection}], "limit": limit}
        if len(filters) == 1:
            query["where"] = filters[0]
        elif filters:
            query["where"] = {"compositeFilter": {"op": "AND", "filters": filters}}
        if order_by:
            query["orderBy"] = [{"field": {"fieldPath": field_path(f)}, "direction": d} for f, d in order_by]
        if start_after is not None:
            values = [
                {"referenceValue": self._name(collection, v)} if f == NAME_FIELD else encode_value(v)
                for (f, _), v in zip(order_by, start_after, strict=True)
            ]
            query["startAt"] = {"values": values, "before": False}
        response = self._api.call("POST", f"{self._url}:runQuery", json={"structuredQuery": query})
        documents = []
        for item in response.json():
            if "error" in item:  # the stream broke off after it had started
                raise typed_error(item["error"], response.status_code)
            if "document" in item:
                documents.append(Document.from_json(item["document"]))
        return documents

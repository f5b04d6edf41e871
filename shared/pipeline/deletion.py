"""Deleting a sketch (`DELETE create_sketch?id=`, and `python -m shared.ops delete-user UID`): its
media in the bucket, then its document. An account's deletion also removes what the project kept
about the user beside their sketches: their places in progress, daily counts and idempotency keys.

The media goes first: a deletion that fails half way leaves the document, and deleting again
finishes the job, so no object is ever left that no document names. Then the document, and then
the bucket once more: a step that stored and recorded an object between the two is caught there.
A step whose write comes after the document went finds no sketch to record its object in, and
removes what it just stored (`shared/pipeline/links.py`); every other step and webhook for a sketch
that is gone changes nothing (`SketchStore.mutate` writes nothing where there is no document).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from shared.core import logs
from shared.core.config import Settings
from shared.google.api import ApiError
from shared.google.firestore import Delete, Firestore
from shared.google.storage import Storage
from shared.sketch import gallery
from shared.sketch.model import Sketch
from shared.sketch.objects import object_names
from shared.sketch.store import SketchStore

log = logging.getLogger(__name__)

# What names a user in the bookkeeping beside the sketches: (collection suffix, field).
USER_RECORDS = (("_slots", "user_id"), ("_daily", "user_id"), ("_idempotency", "scope"))
PAGE = 100


class MediaNotRemoved(Exception):
    """Cloud Storage did not remove an object; the document is kept, so deleting again finishes."""


@dataclass(frozen=True)
class Removed:
    """What one deletion removed: the sketch's document and these objects of the bucket."""

    sketch_id: str
    objects: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"deleted": self.sketch_id, "objects": list(self.objects)}


class Deletion:
    def __init__(
        self, db: Firestore, store: SketchStore, storage: Storage | None, settings: Settings
    ) -> None:
        self._db = db
        self._store = store
        self._storage = storage
        self._bucket = settings.media_bucket
        self._collection = settings.sketches_collection

    def delete(self, sketch: Sketch) -> Removed:
        """Remove the sketch's media, then its document. MediaNotRemoved (nothing of the document
        removed) or StoreUnavailable when a part could not be reached: deleting again goes on."""
        logs.bind_sketch(sketch.id)
        try:
            removed = self._remove_media(sketch)
        except ApiError as exc:
            raise MediaNotRemoved(f"Cloud Storage did not remove the sketch's media: {exc}") from exc
        self._store.remove(sketch.id)
        try:
            # What a step stored and recorded while the first pass ran.
            removed += self._remove_media(sketch)
        except ApiError as exc:
            log.error("an object of a deleted sketch may be left in the bucket: %s", exc)
        log.info("sketch deleted with its media", extra={"objects": removed})
        return Removed(sketch.id, tuple(removed))

    def delete_user(self, user_id: str) -> Iterator[Removed]:
        """Delete each of the user's sketches, newest first, a page of the gallery at a time."""
        token: str | None = None
        while True:
            sketches, token = gallery.page(self._store, user_id, gallery.MAX_LIMIT, token)
            for sketch in sketches:
                yield self.delete(sketch)
            if token is None:
                return

    def forget_user(self, user_id: str) -> int:
        """Remove the user's bookkeeping records (once their sketches are gone); how many there were."""
        removed = 0
        for suffix, field in USER_RECORDS:
            collection = f"{self._collection}{suffix}"
            while documents := self._db.query(collection, where=[(field, "EQUAL", user_id)], limit=PAGE):
                self._db.commit([Delete(collection, document.id) for document in documents])
                removed += len(documents)
        return removed

    def _remove_media(self, sketch: Sketch) -> list[str]:
        """Remove every object the sketch's media may be stored as; the names that were there."""
        if self._storage is None or self._bucket is None:
            return []
        return [name for name in object_names(sketch) if self._storage.delete(self._bucket, name)]

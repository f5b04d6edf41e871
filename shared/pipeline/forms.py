"""Which form of each paid request Novita takes (`shared/novita/client.py`), remembered for the whole
project in one Firestore document, so that a new instance (after a deploy, a scale-up or a crash)
goes straight to the form that works instead of learning it again from a refusal."""

from __future__ import annotations

import logging

from shared.google.api import ApiError
from shared.google.firestore import Firestore, Write
from shared.novita.client import FORMS, Form, Request

log = logging.getLogger(__name__)

DOCUMENT = "forms"


class FormsInFirestore:
    def __init__(self, db: Firestore, collection: str) -> None:
        self._db = db
        self._collection = f"{collection}_novita"

    def load(self) -> dict[Request, Form]:
        try:
            document = self._db.get(self._collection, DOCUMENT)
        except ApiError as exc:
            # The guide's forms, and a refusal moves on: nothing is lost but a free request.
            log.warning("the forms Novita takes could not be read: %s", exc)
            return {}
        data = {} if document is None else document.data
        requests: tuple[Request, ...] = ("text_to_image", "image_to_video")
        return {request: data[request] for request in requests if data.get(request) in FORMS}

    def save(self, request: Request, form: Form) -> None:
        try:
            self._db.commit([Write(self._collection, DOCUMENT, {request: form}, None)])
        except ApiError as exc:
            log.warning("the form Novita takes could not be remembered: %s", exc)

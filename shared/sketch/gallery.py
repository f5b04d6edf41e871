"""A user's sketches, newest first, a page at a time (`GET create_sketch` without `id`).

The page token is opaque to clients: the position after the last sketch of the page (its creation
time and id), so that a page never repeats or skips a sketch made meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from shared.sketch.model import Sketch, is_sketch_id
from shared.sketch.store import SketchStore

MAX_LIMIT = 50
DEFAULT_LIMIT = 20
_MAX_TOKEN = 200


class InvalidPageToken(ValueError):
    pass


def encode_token(sketch: Sketch) -> str:
    position = [sketch.created_at.astimezone(UTC).isoformat(timespec="microseconds"), sketch.id]
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str]:
    try:
        if len(token) > _MAX_TOKEN:
            raise ValueError("too long")
        created, sketch_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None or not isinstance(sketch_id, str) or not is_sketch_id(sketch_id):
            raise ValueError("not a position")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidPageToken("page_token is not one this API gave out") from exc
    return moment, sketch_id


def page(
    store: SketchStore, user_id: str | None, limit: int, token: str | None
) -> tuple[list[Sketch], str | None]:
    """One page of the user's sketches (everyone's when `user_id` is None), and the next page's token."""
    after = decode_token(token) if token else None
    sketches = store.newest(user_id, limit + 1, after)
    if len(sketches) <= limit:
        return sketches, None
    return sketches[:limit], encode_token(sketches[limit - 1])

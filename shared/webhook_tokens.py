"""Per-sketch webhook tokens: Novita sends no signature, so the URL we register carries one.

The token is an HMAC of the sketch id under `WEBHOOK_SECRET`; it is derived, never stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

Stage = Literal["image", "video"]
SKETCH_PARAM = "sketch"
STAGE_PARAM = "stage"
TOKEN_PARAM = "token"


class InvalidToken(Exception):
    """The call does not carry a valid token for the sketch it names."""


def _mac(secret: str, purpose: str) -> str:
    digest = hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sketch_token(secret: str, sketch_id: str) -> str:
    return _mac(secret, f"novita-webhook:{sketch_id}")


def sweep_token(secret: str) -> str:
    """The bearer token that authorises the recovery sweep action."""
    return _mac(secret, "recovery-sweep")


def verify(expected: str, presented: str | None) -> None:
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise InvalidToken("missing or invalid token")


def verify_sketch_token(secret: str, sketch_id: str | None, token: str | None) -> str:
    """Return the sketch id when `token` is valid for it; raise InvalidToken otherwise."""
    if not sketch_id:
        raise InvalidToken("missing sketch id")
    verify(sketch_token(secret, sketch_id), token)
    return sketch_id


def webhook_url(base_url: str, secret: str, sketch_id: str, stage: Stage) -> str:
    """`base_url` with the sketch id, the stage it waits on and the token appended to its query."""
    parts = urlsplit(base_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [
        (SKETCH_PARAM, sketch_id),
        (STAGE_PARAM, stage),
        (TOKEN_PARAM, sketch_token(secret, sketch_id)),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def main(argv: list[str]) -> int:
    """`python3 -m shared.webhook_tokens sweep-token`: the sweep's bearer token, from WEBHOOK_SECRET."""
    if argv != ["sweep-token"]:
        print("usage: WEBHOOK_SECRET=... python3 -m shared.webhook_tokens sweep-token", file=sys.stderr)
        return 2
    secret = os.environ.get("WEBHOOK_SECRET", "").strip()
    if not secret:
        print("WEBHOOK_SECRET is required but not set", file=sys.stderr)
        return 2
    print(sweep_token(secret))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

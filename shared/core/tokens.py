"""The project's own signatures, all HMAC-SHA256 under `WEBHOOK_SECRET`, checked in constant time.

Novita signs nothing and Pub/Sub's push emulator sends no identity token, so the project vouches
for what it hands out itself:

- the webhook URL registered with each Novita request carries a token over the sketch id and the
  stage it waits on: a call whose token does not match them all is refused;
- each step message published to Pub/Sub carries a signature over its data: a push whose signature
  does not match was not published by the project;
- the recovery sweep is called with a bearer token.

Tokens are derived, never stored. Rotating `WEBHOOK_SECRET` invalidates every one of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SKETCH_PARAM = "sketch"
STAGE_PARAM = "stage"
TOKEN_PARAM = "token"


class InvalidToken(Exception):
    """The call does not carry a valid token for what it names."""


def _mac(secret: str, purpose: bytes) -> str:
    digest = hmac.new(secret.encode(), purpose, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sketch_token(secret: str, sketch_id: str, stage: str) -> str:
    return _mac(secret, f"novita-webhook:{sketch_id}:{stage}".encode())


def sweep_token(secret: str) -> str:
    """The bearer token that authorises the recovery sweep action."""
    return _mac(secret, b"recovery-sweep")


def step_signature(secret: str, data: bytes) -> str:
    """The signature of a step message's data."""
    return _mac(secret, b"sketch-step:" + data)


def verify(expected: str, presented: str | None) -> None:
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace")):
        raise InvalidToken("missing or invalid token")


def webhook_url(base_url: str, secret: str, sketch_id: str, stage: str) -> str:
    """`base_url` with the sketch id, the stage it waits on and their token appended to its query."""
    parts = urlsplit(base_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [
        (SKETCH_PARAM, sketch_id),
        (STAGE_PARAM, stage),
        (TOKEN_PARAM, sketch_token(secret, sketch_id, stage)),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def main(argv: list[str]) -> int:
    """`python3 -m shared.core.tokens sweep-token`: the sweep's bearer token, from the webhook secret on
    stdin (so that it shows on no command line), else WEBHOOK_SECRET."""
    if argv != ["sweep-token"]:
        print("usage: python3 -m shared.core.tokens sweep-token < secret", file=sys.stderr)
        return 2
    piped = sys.stdin.read().strip() if not sys.stdin.isatty() else ""
    secret = piped or os.environ.get("WEBHOOK_SECRET", "").strip()
    if not secret:
        print(
            "the webhook secret is required (on stdin, or in WEBHOOK_SECRET) but not given", file=sys.stderr
        )
        return 2
    print(sweep_token(secret))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

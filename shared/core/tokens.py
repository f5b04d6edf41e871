"""The project's own signatures, all HMAC-SHA256 under `WEBHOOK_SECRET`, checked in constant time.

Novita signs nothing, and Pub/Sub's push emulator sends no identity token, so the project vouches
for what it hands out itself. Each signature names its purpose, so that none can stand for another:

- the webhook URL registered with each Novita request carries a token over the sketch id, the stage
  it waits on and when the request was made (`issued`): a call whose token does not match them all,
  or that comes after the token's lifetime, is refused;
- each step message published to Pub/Sub carries a signature over its data, which names its route,
  when it was published and until when it may be done (`shared/pipeline/queue.py`);
- the recovery sweep is called with its own token.

Tokens are derived, never stored. Rotating `WEBHOOK_SECRET` invalidates every one of them. The
standard library only: deploy.sh derives the sweep token with the operator's own `python3`.
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
ISSUED_PARAM = "t"
TOKEN_PARAM = "token"
# The sweep's token travels in its own header: the private door's Authorization header carries
# Google's identity token.
SWEEP_HEADER = "X-Sweep-Token"


class InvalidToken(Exception):
    """The call does not carry a valid token for what it names."""


def _mac(secret: str, purpose: bytes) -> str:
    digest = hmac.new(secret.encode(), purpose, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sketch_token(secret: str, sketch_id: str, stage: str, issued: int) -> str:
    return _mac(secret, f"novita-webhook:{sketch_id}:{stage}:{issued}".encode())


def sweep_token(secret: str) -> str:
    """The token that authorises the recovery sweep action."""
    return _mac(secret, b"recovery-sweep")


def step_signature(secret: str, data: bytes) -> str:
    """The signature of a step message's data (which names its route and its lifetime)."""
    return _mac(secret, b"sketch-step:" + data)


def verify(expected: str, presented: str | None) -> None:
    if not presented or not hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace")):
        raise InvalidToken("missing or invalid token")


def verify_webhook(
    secret: str,
    sketch_id: str,
    stage: str,
    issued: str | None,
    token: str | None,
    now: float,
    lifetime: float,
) -> None:
    """A webhook call's token must match its sketch, stage and issue time, and still be alive."""
    if not issued or not issued.isdigit() or len(issued) > 12:
        raise InvalidToken("missing or invalid token")
    verify(sketch_token(secret, sketch_id, stage, int(issued)), token)
    if not int(issued) <= now + 60 or int(issued) + lifetime < now:
        raise InvalidToken("the webhook token has expired")


def webhook_url(base_url: str, secret: str, sketch_id: str, stage: str, issued: int) -> str:
    """`base_url` with the sketch id, the stage it waits on, the issue time and their token appended."""
    parts = urlsplit(base_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [
        (SKETCH_PARAM, sketch_id),
        (STAGE_PARAM, stage),
        (ISSUED_PARAM, str(issued)),
        (TOKEN_PARAM, sketch_token(secret, sketch_id, stage, issued)),
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def main(argv: list[str]) -> int:
    """`python3 -m shared.core.tokens sweep-token`: the sweep's token, from the webhook secret on
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

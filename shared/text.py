"""Text that can be stored and sent on: JSON lets a lone surrogate (\\ud800) through, UTF-8 (and so
Firestore and every HTTP answer) does not."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it has a lone surrogate)") from None
    return value


Utf8Str = Annotated[str, AfterValidator(_encodable)]

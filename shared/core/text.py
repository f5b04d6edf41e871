"""Text that can be stored and sent on: JSON lets a lone surrogate (\\ud800) through, UTF-8 (and so
Firestore and every HTTP answer) does not.

Put `utf8` after a length bound (`Annotated[str, Field(max_length=...), utf8]`), so that the bound
is checked on the string itself and its message speaks of characters.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it has a lone surrogate)") from None
    return value


utf8 = AfterValidator(_encodable)
Utf8Str = Annotated[str, utf8]

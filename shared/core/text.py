"""Text that can be stored and sent on: JSON lets a lone surrogate (\\ud800) through, UTF-8 (and so
Firestore and every HTTP answer) does not.

The standard library only: a webhook delivery is read without pydantic. A pydantic model puts
`AfterValidator(encodable)` after a length bound, so that the bound is checked on the string itself
and its message speaks of characters.
"""

from __future__ import annotations


def encodable(value: str) -> str:
    """`value`, if UTF-8 can carry it; ValueError if it has a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it has a lone surrogate)") from None
    return value

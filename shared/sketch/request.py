"""The body of `POST create_sketch`: every field, its default, and the rules it must keep.

What Novita would refuse after a paid step is refused here, before anything is written or paid.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from shared.core.text import encodable
from shared.sketch.model import DEFAULT_VIDEO_PROMPT

# Novita's limits, refused here before anything is paid (`../shared/novita-api-notes.md`):
# text-to-image prompts stop at 1024 characters, Kling's at 2500; Seedream 3.0 needs an area of at
# least 512x512 and sides of at most 2048; Kling needs a still of at least 300 px a side and an
# aspect ratio within 2.5:1.
MAX_PROMPT = 1024
MAX_VIDEO_PROMPT = 2500
MIN_SIDE, MAX_SIDE = 300, 2048
MIN_AREA = 512 * 512
MAX_ASPECT = 2.5


# Bidirectional overrides and isolates reorder what a person sees ("walrus \u202egnp.exe" shows as
# "walrus exe.png"): refused, as are control characters other than tab, line feed and carriage return.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
# The same rule as a JSON Schema pattern (ECMA-262, which Python's re reads alike), for openapi.json.
_REFUSED = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
TEXT_PATTERN = rf"^[^{_REFUSED}]*$"
VISIBLE_PATTERN = rf"^[^{_REFUSED}]*[^{_REFUSED}\s][^{_REFUSED}]*$"


def _plain_text(value: str) -> str:
    """The text, checked and trimmed (the length limit applies to it as sent)."""
    bidi = sorted({f"U+{ord(ch):04X}" for ch in value if ch in BIDI_CONTROLS})
    if bidi:
        raise ValueError(f"must not contain bidirectional control characters ({', '.join(bidi)})")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in value):
        raise ValueError("must not contain control characters other than tab, line feed and carriage return")
    return value.strip()


def _text(limit: int, description: str, pattern: str = TEXT_PATTERN) -> Any:
    """A prompt field: a string of at most `limit` characters as sent, valid Unicode, plain text;
    stored without the spaces around it."""
    return Annotated[
        str,
        Field(strict=True, max_length=limit, description=description, json_schema_extra={"pattern": pattern}),
        AfterValidator(encodable),
        AfterValidator(_plain_text),
    ]


Prompt = _text(MAX_PROMPT, "what to draw; it needs a visible character", VISIBLE_PATTERN)
NegativePrompt = _text(MAX_PROMPT, "what not to draw; left out of Novita's request when empty")
VideoPrompt = _text(MAX_VIDEO_PROMPT, f"how the still should move; empty or absent: {DEFAULT_VIDEO_PROMPT!r}")


def _visible(value: str) -> bool:
    """Whether `value` has a character a person can see (not only spaces, zero-width or format
    characters)."""
    return any(
        not ch.isspace() and unicodedata.category(ch) not in ("Cf", "Cc", "Zs", "Zl", "Zp") for ch in value
    )


class CreateSketchRequest(BaseModel):
    """The body of `POST create_sketch`; any field not listed here is refused."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    video_prompt: VideoPrompt = ""
    width: Annotated[StrictInt, Field(ge=MIN_SIDE, le=MAX_SIDE)] = 720
    height: Annotated[StrictInt, Field(ge=MIN_SIDE, le=MAX_SIDE)] = 1280
    duration: Literal[5, 10] = 5
    seed: Annotated[StrictInt, Field(ge=-1, le=2147483647)] = -1

    @field_validator("prompt")
    @classmethod
    def _seen(cls, value: str) -> str:
        if not _visible(value):
            raise ValueError("must contain visible characters")
        return value

    @field_validator("duration", mode="before")
    @classmethod
    def _strict_duration(cls, value: Any) -> Any:
        # Literal[5, 10] would otherwise accept 5.0 and True-like values.
        if type(value) is not int:
            raise ValueError("must be the integer 5 or 10")
        return value

    @model_validator(mode="after")
    def _shape(self) -> CreateSketchRequest:
        area = self.width * self.height
        if area < MIN_AREA:
            raise ValueError(
                f"width x height is {area:,} pixels; Seedream 3.0 needs at least 512 x 512 = {MIN_AREA:,}"
            )
        ratio = max(self.width, self.height) / min(self.width, self.height)
        if ratio > MAX_ASPECT:
            raise ValueError(
                f"the aspect ratio is {ratio:.2f}:1; Kling takes at most {MAX_ASPECT}:1 either way"
            )
        return self

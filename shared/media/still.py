"""The still Kling is given, judged by its bytes alone: JPEG or PNG, its size, its pixels, its shape."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Literal

from shared.media.policy import MediaRejected, too_large

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MIN_SIDE = 300
# Kling animates stills of at most 2.5:1 either way (Novita's reference).
MAX_ASPECT = 2.5
# Kling renders at most 1080p (about 2 megapixels) and the project asks Seedream for at most
# 2048 x 2048: a still with more pixels than 4096 x 4096 has nothing more to give Kling, and decoding
# it would only cost memory (a 17 KB PNG can claim 12000 x 12000).
MAX_PIXELS = 4096 * 4096

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Still:
    # repr=False: a 10 MB bytes repr in a log line or traceback is useless.
    data: bytes = field(repr=False)
    format: Literal["jpeg", "png"]
    width: int
    height: int

    @property
    def mime(self) -> str:
        return f"image/{self.format}"

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else "png"


def inspect_still(
    data: bytes, *, min_side: int = DEFAULT_MIN_SIDE, max_bytes: int = DEFAULT_MAX_BYTES
) -> Still:
    """Validate `data` as a still Kling can animate, from its bytes alone (never URL or headers).

    Only what must be decoded is: the header gives the format and size, so a still with too many
    pixels is refused before any pixel is decoded; a JPEG is then decoded at an eighth of its size
    (enough to find a truncated scan), and a PNG's chunks and checksums are read to its end.
    """
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if data.startswith(_JPEG_MAGIC):
        expected: Literal["jpeg", "png"] = "jpeg"
    elif data.startswith(_PNG_MAGIC):
        expected = "png"
    else:
        raise MediaRejected("not_an_image", "image is not a JPEG or PNG")

    # Imported here: Pillow adds noticeably to cold start of functions that never inspect.
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as img:
            # Pillow reports multi-picture JPEGs from cameras as MPO; still a JPEG.
            actual = "jpeg" if img.format in ("JPEG", "MPO") else "png"
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise MediaRejected(
                    "too_many_pixels",
                    f"image is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels (4096x4096) are "
                    "accepted, more than Kling's 1080p video can use",
                )
            if actual == "jpeg":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                img.load()
            else:
                img.verify()
    except Image.DecompressionBombError as exc:
        raise MediaRejected("too_many_pixels", f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        truncated = "truncated" in str(exc).lower()
        raise MediaRejected(
            "truncated" if truncated else "not_an_image",
            "image is truncated (its data ends early)" if truncated else "image is not a JPEG or PNG",
        ) from exc
    if actual != expected:
        raise MediaRejected("not_an_image", "image is not a JPEG or PNG")

    if width < min_side or height < min_side:
        raise MediaRejected(
            "too_small",
            f"image is {width}x{height} pixels; at least {min_side}x{min_side} is required",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise MediaRejected(
            "aspect_ratio",
            f"image is {width}x{height} pixels, an aspect ratio of {ratio:.2f}:1; Kling takes at most "
            f"{MAX_ASPECT}:1 either way",
        )
    return Still(data=data, format=expected, width=width, height=height)

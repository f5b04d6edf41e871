"""The media the benchmark serves: a still just under 10 MB, one of the size Novita usually makes,
and a 50 MB video."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

# Under the 10 MB cap whichever way it is read (10,000,000 bytes or 10 MiB).
BIG_BYTES = 9_900_000
BIG_SIZE = (2160, 3840)  # a 4K portrait: mostly real scan data, not padding
MAX_COMMENT = 65533
BIG_NAME = "big.jpg"
TYPICAL_NAME = "typical.jpg"
VIDEO_NAME = "video.mp4"
VIDEO_BYTES = 50_000_000


def _jpeg(picture: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _pad(jpeg: bytes, size: int) -> bytes:
    """Comment segments after SOI until the file is exactly `size` bytes (still a valid JPEG)."""
    padding = bytearray()
    missing = size - len(jpeg)
    while missing > 0:
        body = min(MAX_COMMENT, missing - 4)
        if 0 < missing - (body + 4) < 4:
            body -= 4  # never leave less than a segment's 4-byte header to fill
        padding += b"\xff\xfe" + (body + 2).to_bytes(2, "big") + b"b" * body
        missing -= body + 4
    return jpeg[:2] + bytes(padding) + jpeg[2:]


def big_still(size: int = BIG_BYTES) -> bytes:
    """A noisy 2160x3840 JPEG at the highest quality that stays under `size`, padded to it."""
    rnd = random.Random(20240601)
    width, height = BIG_SIZE
    picture = Image.frombytes("RGB", BIG_SIZE, rnd.randbytes(width * height * 3))
    low, high, best = 50, 100, b""
    while low <= high:
        quality = (low + high) // 2
        data = _jpeg(picture, quality)
        if len(data) <= size - 8:
            best, low = data, quality + 1
        else:
            high = quality - 1
    if not best:
        raise RuntimeError("cannot make a still under the size asked for")
    return _pad(best, size)


def typical_still() -> bytes:
    """The 720x1280 JPEG the simulator makes for a prompt (what Novita usually returns)."""
    from novita_simulator.media import make_still

    return make_still("a walrus giving a TED talk about spoons", 720, 1280, "normal").data


def video(size: int = VIDEO_BYTES) -> bytes:
    """A video's worth of bytes: an MP4 `ftyp` box, then noise (the copy step streams it unread)."""
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    return head + random.Random(20240602).randbytes(size - len(head))


def write_media(folder: Path) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, data in ((BIG_NAME, big_still()), (TYPICAL_NAME, typical_still()), (VIDEO_NAME, video())):
        (folder / name).write_bytes(data)
        sizes[name] = len(data)
    return sizes

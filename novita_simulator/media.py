"""Real media the simulator produces: stills (JPEG/PNG and broken variants) and MP4 clips.

Each still and clip handed out carries the id of the task (or Seedream image) that made it, so that an
auditor holding only the bytes can tell whose they are: a JPEG comment segment right after SOI, a PNG
tEXt chunk, a top-level MP4 `free` box at the end, or an HTML comment on the broken CDN page. Drawing
and encoding are cached without the id; with_media_id adds it to a copy with a cheap splice.
"""

import dataclasses
import hashlib
import io
import textwrap
import zlib
from dataclasses import dataclass
from typing import Literal

import av
from PIL import Image, ImageDraw, ImageFont, ImageOps

from novita_simulator.memo import single_flight_cache

ImageMode = Literal["normal", "small", "large", "not_image", "png"]

SMALL_SIDE = 200
WATERMARK = "AI generated"  # Seedream 3.0's label, bottom right
# Larger than 10 MiB, so it breaks both the 10 MB and the 10 MiB reading of Kling's limit.
LARGE_MIN_BYTES = 10 * 1024 * 1024 + 64 * 1024
MAX_COMMENT_SEGMENT = 65533  # a JPEG segment's length field is 16 bits and counts itself

VIDEO_MAX_WIDTH = 320
VIDEO_FPS = 12
VIDEO_FRAMES = 18  # 1.5 s: enough to be a clip, quick to encode
VIDEO_ZOOM = 0.25
VIDEO_CODEC: Literal["libx264", "mpeg4"] = "libx264" if "libx264" in av.codecs_available else "mpeg4"

MEDIA_ID_LABEL = b"novita-media-id:"
PNG_TEXT_KEYWORD = b"novita-media-id"
JPEG_SOI = b"\xff\xd8"
JPEG_COMMENT = 0xFE
JPEG_START_OF_SCAN = 0xDA
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR comes first, with 13 bytes of data between its 8-byte head and 4-byte CRC.
PNG_AFTER_IHDR = len(PNG_SIGNATURE) + 25
MP4_BOX_HEAD = 8
MP4_LARGE_BOX_HEAD = 16
HTML_COMMENT = (b"<!-- ", b" -->\n")

NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>The CDN could not reach the origin.</p></body></html>\n"
)


@dataclass(frozen=True)
class MediaAsset:
    data: bytes
    content_type: str
    extension: str
    # "jpeg"/"png" for stills, "mp4" for clips: what the result entries call image_type/video_type
    media_type: str
    is_video: bool = False


@dataclass(frozen=True)
class MediaIdMark:
    """Where the id sits in a file: the bytes from start to end carry it and nothing else."""

    start: int
    end: int
    media_id: str


# Each distinct still and video is drawn once, without an id: the same prompt at the same size makes
# the same still, and the same still the same video, so a thousand alike sketches cost one encoding.
@single_flight_cache(maxsize=32)
def make_still(prompt: str, width: int, height: int, mode: ImageMode, watermark: bool = False) -> MediaAsset:
    if mode == "not_image":
        return MediaAsset(NOT_AN_IMAGE, "image/jpeg", "jpg", "jpeg")
    if mode == "small":
        width = height = SMALL_SIDE
    picture = draw_prompt(prompt, width, height)
    if watermark:
        stamp_watermark(picture)
    if mode == "png":
        return MediaAsset(encode(picture, "PNG"), "image/png", "png", "png")
    jpeg = encode(picture, "JPEG")
    if mode == "large":
        jpeg = pad_jpeg(jpeg, LARGE_MIN_BYTES)
    return MediaAsset(jpeg, "image/jpeg", "jpg", "jpeg")


def draw_prompt(prompt: str, width: int, height: int) -> Image.Image:
    digest = hashlib.sha256(prompt.encode()).digest()
    top, bottom = (digest[0], digest[1], digest[2]), (digest[3] // 3, digest[4] // 3, digest[5] // 3)
    gradient = Image.linear_gradient("L").resize((width, height))
    picture = ImageOps.colorize(gradient, black=top, white=bottom)
    font_size = max(10, width // 18)
    font = ImageFont.load_default(size=font_size)
    columns = max(8, int(width / (font_size * 0.6)) - 2)
    text = "\n".join(textwrap.wrap(prompt, columns)[: max(1, height // (font_size * 2))])
    margin = font_size // 2
    ImageDraw.Draw(picture).multiline_text(
        (margin, margin),
        text,
        font=font,
        fill="white",
        stroke_width=max(1, font_size // 12),
        stroke_fill="black",
    )
    return picture


def stamp_watermark(picture: Image.Image) -> None:
    font_size = max(10, picture.width // 40)
    font = ImageFont.load_default(size=font_size)
    margin = font_size // 2
    ImageDraw.Draw(picture).text(
        (picture.width - margin, picture.height - margin),
        WATERMARK,
        font=font,
        anchor="rd",
        fill="white",
        stroke_width=1,
        stroke_fill="black",
    )


def encode(picture: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "PNG":
        picture.save(buffer, "PNG", compress_level=1)
    else:
        picture.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def pad_jpeg(jpeg: bytes, min_bytes: int) -> bytes:
    """Insert comment segments after SOI: still a valid JPEG, just heavy."""
    padding = bytearray()
    filler = (b"novita-simulator padding " * (MAX_COMMENT_SEGMENT // 25 + 1))[:MAX_COMMENT_SEGMENT]
    while len(jpeg) + len(padding) < min_bytes:
        padding += b"\xff\xfe" + (len(filler) + 2).to_bytes(2, "big") + filler
    return jpeg[:2] + bytes(padding) + jpeg[2:]


@single_flight_cache(maxsize=32)
def make_video(still: bytes) -> MediaAsset:
    """A short zoom into the still, scaled down to keep encoding well under a second.

    Give it the still without its id (strip_media_id), so that stills alike but for it share a video.
    """
    with Image.open(io.BytesIO(still)) as opened:
        source = opened.convert("RGB")
    width, height = video_size(source.size)
    # Work from a copy twice the output size so each frame's crop-and-resize stays cheap.
    source = source.resize((width * 2, height * 2), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        options = {"preset": "ultrafast"} if VIDEO_CODEC == "libx264" else {}
        stream = container.add_stream(VIDEO_CODEC, rate=VIDEO_FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(VIDEO_FRAMES):
            zoom = 1 + VIDEO_ZOOM * index / (VIDEO_FRAMES - 1)
            frame = av.VideoFrame.from_image(zoomed(source, zoom, (width, height)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return MediaAsset(buffer.getvalue(), "video/mp4", "mp4", "mp4", is_video=True)


def video_size(still_size: tuple[int, int]) -> tuple[int, int]:
    still_width, still_height = still_size
    scale = min(1.0, VIDEO_MAX_WIDTH / still_width)
    # yuv420p needs even sides
    return max(2, int(still_width * scale) // 2 * 2), max(2, int(still_height * scale) // 2 * 2)


def zoomed(source: Image.Image, zoom: float, size: tuple[int, int]) -> Image.Image:
    crop_width, crop_height = source.width / zoom, source.height / zoom
    left, top = (source.width - crop_width) / 2, (source.height - crop_height) / 2
    return source.resize(
        size, Image.Resampling.BILINEAR, box=(left, top, left + crop_width, top + crop_height)
    )


def with_media_id(asset: MediaAsset, task_id: str) -> MediaAsset:
    """A copy of the (cached, id-less) asset carrying the id of the task (or Seedream image) that made it."""
    return dataclasses.replace(asset, data=embed_media_id(asset.data, task_id))


def embed_media_id(data: bytes, task_id: str) -> bytes:
    label = MEDIA_ID_LABEL + task_id.encode("ascii")
    if data.startswith(JPEG_SOI):
        # a comment segment: decoders skip it, and right after SOI it is the first thing a reader meets
        return data[:2] + b"\xff\xfe" + (len(label) + 2).to_bytes(2, "big") + label + data[2:]
    if data.startswith(PNG_SIGNATURE):
        text = PNG_TEXT_KEYWORD + b"\0" + task_id.encode("ascii")
        chunk = len(text).to_bytes(4, "big") + b"tEXt" + text + zlib.crc32(b"tEXt" + text).to_bytes(4, "big")
        return data[:PNG_AFTER_IHDR] + chunk + data[PNG_AFTER_IHDR:]
    if is_mp4(data):
        # at the end, so no chunk offset in moov moves; players skip `free` boxes
        return data + (MP4_BOX_HEAD + len(label)).to_bytes(4, "big") + b"free" + label
    # the broken CDN page (image_mode not_image) is HTML
    return data + HTML_COMMENT[0] + label + HTML_COMMENT[1]


def media_id(data: bytes) -> str | None:
    """The id of the task or Seedream image that made a still (JPEG, PNG) or clip (MP4); None if none."""
    mark = find_media_id(data)
    return mark.media_id if mark else None


def strip_media_id(data: bytes) -> bytes:
    """The bytes without their id, as they were drawn: what the video cache is keyed on."""
    mark = find_media_id(data)
    return data if mark is None else data[: mark.start] + data[mark.end :]


def find_media_id(data: bytes) -> MediaIdMark | None:
    if data.startswith(JPEG_SOI):
        return find_in_jpeg(data)
    if data.startswith(PNG_SIGNATURE):
        return find_in_png(data)
    if is_mp4(data):
        return find_in_mp4(data)
    return find_in_html(data)


def is_mp4(data: bytes) -> bool:
    return data[4:8] == b"ftyp"


def find_in_jpeg(data: bytes) -> MediaIdMark | None:
    """Walk the header segments, each FF, a marker and a length that counts itself, up to the scan."""
    position = len(JPEG_SOI)
    while position + 4 <= len(data) and data[position] == 0xFF and data[position + 1] != JPEG_START_OF_SCAN:
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if data[position + 1] == JPEG_COMMENT and data.startswith(MEDIA_ID_LABEL, position + 4):
            return MediaIdMark(position, end, decode_id(data[position + 4 + len(MEDIA_ID_LABEL) : end]))
        position = end
    return None


def find_in_png(data: bytes) -> MediaIdMark | None:
    """Walk the chunks, each a length, a type, the data and a CRC, up to IEND."""
    keyword = PNG_TEXT_KEYWORD + b"\0"
    position = len(PNG_SIGNATURE)
    while position + 12 <= len(data):
        kind = data[position + 4 : position + 8]
        end = position + 12 + int.from_bytes(data[position : position + 4], "big")
        if kind == b"tEXt" and data.startswith(keyword, position + 8):
            return MediaIdMark(position, end, decode_id(data[position + 8 + len(keyword) : end - 4]))
        if kind == b"IEND":
            break
        position = end
    return None


def find_in_mp4(data: bytes) -> MediaIdMark | None:
    """Walk the top-level boxes, each a 32-bit size (1: a 64-bit one follows the type; 0: to the end)."""
    position = 0
    while position + MP4_BOX_HEAD <= len(data):
        size = int.from_bytes(data[position : position + 4], "big")
        head = MP4_BOX_HEAD
        if size == 1:
            size, head = int.from_bytes(data[position + 8 : position + 16], "big"), MP4_LARGE_BOX_HEAD
        elif size == 0:
            size = len(data) - position
        if size < head:
            return None  # not a box: the file is broken here
        end = position + size
        if data[position + 4 : position + 8] == b"free" and data.startswith(MEDIA_ID_LABEL, position + head):
            return MediaIdMark(position, end, decode_id(data[position + head + len(MEDIA_ID_LABEL) : end]))
        position = end
    return None


def find_in_html(data: bytes) -> MediaIdMark | None:
    opening, closing = HTML_COMMENT
    start = data.rfind(opening + MEDIA_ID_LABEL)
    end = data.find(closing, start) if start >= 0 else -1
    if end < 0:
        return None
    return MediaIdMark(
        start, end + len(closing), decode_id(data[start + len(opening) + len(MEDIA_ID_LABEL) : end])
    )


def decode_id(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace")

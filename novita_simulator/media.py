"""Real media the simulator produces: stills (JPEG/PNG and broken variants) and MP4 clips."""

import hashlib
import io
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import av
from PIL import Image, ImageDraw, ImageFont, ImageOps

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


# Each distinct still and video is drawn once: the same prompt at the same size makes the same
# still, and the same still the same video, so a thousand alike sketches cost one encoding.
@lru_cache(maxsize=32)
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


@lru_cache(maxsize=32)
def make_video(still: bytes) -> MediaAsset:
    """A short zoom into the still, scaled down to keep encoding well under a second."""
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

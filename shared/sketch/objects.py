"""Where a sketch's media are kept in the bucket: the names of its still and its video.

Apart from the steps that store them (`shared/pipeline/links.py`), so that a deletion, which only
removes them, imports none of what fetching and storing needs."""

from __future__ import annotations

from shared.sketch.model import Sketch

# What a still may be stored as (`shared/media/still.py` takes JPEG and PNG).
STILL_EXTENSIONS = ("jpg", "png")


def still_name(sketch_id: str, extension: str) -> str:
    return f"sketches/{sketch_id}/still.{extension}"


def video_name(sketch_id: str) -> str:
    return f"sketches/{sketch_id}/video.mp4"


def object_names(sketch: Sketch) -> list[str]:
    """Every name the sketch's media may be stored under: the ones it records, and the ones a step
    may have stored without recording them yet (its write came after the upload)."""
    names = [still_name(sketch.id, extension) for extension in STILL_EXTENSIONS]
    names += [video_name(sketch.id), sketch.image_object, sketch.video_object]
    return list(dict.fromkeys(name for name in names if name is not None))

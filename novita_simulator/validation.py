"""Checks incoming API requests the way Novita does, answering 400 INVALID_REQUEST_BODY.

Where the personalities differ (see config), each has its own body model or parser here.
"""

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from PIL import Image, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from novita_simulator.config import Personality
from novita_simulator.errors import InvalidRequest
from novita_simulator.multipart import FormPart, MultipartError, is_form_data, parse_form_data
from novita_simulator.task import SUCCEED

KLING_MAX_IMAGE_BYTES = 10 * 1024 * 1024
KLING_MIN_SIDE = 300
KLING_MAX_PROMPT = 2500
# Kling's still and Seedream's size: the longer side at most 2.5 times the shorter.
MAX_ASPECT_RATIO = 2.5
TXT2IMG_MAX_PROMPT = 1024
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
SEEDREAM_MAX_PROMPT = 1024
SEEDREAM_MIN_SIDE, SEEDREAM_MAX_SIDE = 300, 2048
SEEDREAM_MIN_AREA = 512 * 512
SEEDREAM_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")

KlingDuration = Literal["5", "10"]
KLING_DEFAULT_DURATION: KlingDuration = "5"
# Fetches the still a Kling JSON request names by its `image` string; refuses with InvalidRequest.
FetchStill = Callable[[str], bytes]


def not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


NonBlankText = Annotated[str, AfterValidator(not_blank)]


class WebhookTestMode(BaseModel):
    enabled: bool = False
    return_task_status: Literal["TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"] = SUCCEED


class Webhook(BaseModel):
    url: str
    test_mode: WebhookTestMode | None = None

    @field_validator("url")
    @classmethod
    def http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return url

    def forced_status(self) -> str | None:
        """The status test mode asks for, or None when the task should run for real."""
        return self.test_mode.return_task_status if self.test_mode and self.test_mode.enabled else None


class Extra(BaseModel):
    response_image_type: Literal["jpeg", "png", "webp"] = "jpeg"
    webhook: Webhook | None = None


class Txt2ImgSettings(BaseModel):
    # strict: Novita's typed decoder refuses "720" for an integer
    model_config = ConfigDict(strict=True)

    model_name: str = Field(min_length=1)
    prompt: NonBlankText
    negative_prompt: str = ""
    width: int = Field(ge=128, le=2048)
    height: int = Field(ge=128, le=2048)
    image_num: int = Field(ge=1, le=4)
    steps: int = Field(ge=1, le=100)
    guidance_scale: float = Field(ge=1, le=30)
    sampler_name: str = Field(min_length=1)
    seed: int = Field(default=-1, ge=-1, le=2**32 - 1)


class ReferenceTxt2ImgSettings(Txt2ImgSettings):
    """The reference's rules on top: prompts of at most 1024 characters, and checkpoints only."""

    prompt: NonBlankText = Field(max_length=TXT2IMG_MAX_PROMPT)
    negative_prompt: str = Field(default="", max_length=TXT2IMG_MAX_PROMPT)

    @field_validator("model_name")
    @classmethod
    def checkpoint(cls, model_name: str) -> str:
        if not model_name.endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(
                f"{model_name!r} is not a Stable Diffusion checkpoint (a file name ending in .safetensors"
                " or .ckpt); Seedream 3.0 is POST /v3/seedream-3-0-txt2img"
            )
        return model_name


class Txt2ImgBody(BaseModel):
    extra: Extra = Field(default_factory=Extra)
    request: Txt2ImgSettings


class ReferenceTxt2ImgBody(Txt2ImgBody):
    request: ReferenceTxt2ImgSettings


class SeedreamRequest(BaseModel):
    """The reference's body for POST /v3/seedream-3-0-txt2img; fields it does not list are ignored."""

    model_config = ConfigDict(strict=True)

    prompt: NonBlankText = Field(max_length=SEEDREAM_MAX_PROMPT)
    model: Literal["seedream-3-0-t2i-250415"] | None = None
    response_format: Literal["url", "b64_json"] = "url"
    size: str = "1024x1024"
    seed: int = Field(default=-1, ge=-1, le=2147483647)
    guidance_scale: float = Field(default=2.5, ge=1, le=10)
    watermark: bool = True

    @field_validator("size")
    @classmethod
    def drawable(cls, size: str) -> str:
        width, height = parse_size(size)
        if not all(SEEDREAM_MIN_SIDE <= side <= SEEDREAM_MAX_SIDE for side in (width, height)):
            raise ValueError(f"each side must be between {SEEDREAM_MIN_SIDE} and {SEEDREAM_MAX_SIDE} pixels")
        if width * height < SEEDREAM_MIN_AREA:
            raise ValueError(f"width x height must be at least {SEEDREAM_MIN_AREA} pixels (512x512)")
        if not within_aspect_ratio(width, height):
            raise ValueError("the aspect ratio must be between 1:2.5 and 2.5:1")
        return size

    @property
    def dimensions(self) -> tuple[int, int]:
        return parse_size(self.size)


class KlingJsonBody(BaseModel):
    """The reference's body for Kling V2.1 I2V Master; fields it does not list (`extra` too) are ignored."""

    model_config = ConfigDict(strict=True)

    image: str = Field(min_length=1)
    prompt: NonBlankText = Field(max_length=KLING_MAX_PROMPT)
    negative_prompt: str = Field(default="", max_length=KLING_MAX_PROMPT)
    duration: KlingDuration = KLING_DEFAULT_DURATION
    guidance_scale: float = Field(default=0.5, ge=0, le=1)


@dataclass(frozen=True)
class KlingRequest:
    image: bytes
    prompt: str
    negative_prompt: str
    duration: int
    # the guide's cfg_scale, the reference's guidance_scale: 0 to 1 either way
    cfg_scale: float
    webhook: Webhook | None


def parse_txt2img(body: bytes, personality: Personality) -> Txt2ImgBody:
    data = parse_json_object(body)
    if "request" not in data and "prompt" in data:
        raise InvalidRequest("request: field required; txt2img settings must be nested under `request`")
    model = ReferenceTxt2ImgBody if personality == "reference" else Txt2ImgBody
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidRequest(describe(error)) from None


def parse_seedream(body: bytes) -> SeedreamRequest:
    try:
        return SeedreamRequest.model_validate(parse_json_object(body))
    except ValidationError as error:
        raise InvalidRequest(describe(error)) from None


def parse_kling(
    content_type: str, body: bytes, personality: Personality, fetch_still: FetchStill
) -> KlingRequest:
    if personality == "reference":
        return parse_kling_json(content_type, body, fetch_still)
    return parse_kling_form(content_type, body)


def parse_kling_json(content_type: str, body: bytes, fetch_still: FetchStill) -> KlingRequest:
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise InvalidRequest("Content-Type must be application/json")
    try:
        fields = KlingJsonBody.model_validate(parse_json_object(body))
    except ValidationError as error:
        raise InvalidRequest(describe(error)) from None
    still = fetch_still(fields.image)
    width, height = check_still(still)
    if not within_aspect_ratio(width, height):
        raise InvalidRequest(f"image: aspect ratio {width}x{height} is outside 1:2.5 to 2.5:1")
    return KlingRequest(
        image=still,
        prompt=fields.prompt,
        negative_prompt=fields.negative_prompt,
        duration=int(fields.duration),
        cfg_scale=fields.guidance_scale,
        webhook=None,  # the reference documents no webhook for Kling: only task-result knows the video
    )


def parse_kling_form(content_type: str, body: bytes) -> KlingRequest:
    if not is_form_data(content_type):
        raise InvalidRequest(
            "Content-Type must be multipart/form-data with the still as the file field `image`"
        )
    try:
        fields = parse_form_data(content_type, body)
    except MultipartError as error:
        raise InvalidRequest(str(error)) from None
    image = fields.get("image")
    if image is None or image.filename is None:
        raise InvalidRequest("image: a file field is required")
    check_still(image.data)
    prompt = text_field(fields, "prompt")
    if not prompt.strip():
        raise InvalidRequest("prompt: required")
    negative_prompt = text_field(fields, "negative_prompt")
    for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if len(value) > KLING_MAX_PROMPT:
            raise InvalidRequest(f"{name}: at most {KLING_MAX_PROMPT} characters")
    duration = text_field(fields, "duration") or KLING_DEFAULT_DURATION
    if duration not in get_args(KlingDuration):
        raise InvalidRequest("duration: must be 5 or 10")
    return KlingRequest(
        image=image.data,
        prompt=prompt,
        negative_prompt=negative_prompt,
        duration=int(duration),
        cfg_scale=parse_cfg_scale(text_field(fields, "cfg_scale")),
        webhook=parse_kling_extra(text_field(fields, "extra")),
    )


def check_still(data: bytes) -> tuple[int, int]:
    """The still's width and height, once it is a jpg or png of at most 10MB and at least 300x300."""
    if len(data) > KLING_MAX_IMAGE_BYTES:
        raise InvalidRequest("image: file size must not exceed 10MB")
    try:
        with Image.open(io.BytesIO(data)) as still:
            image_format, (width, height) = still.format, still.size
            still.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise InvalidRequest("image: must be a valid jpg, jpeg or png file") from None
    if image_format not in ("JPEG", "PNG"):
        raise InvalidRequest(f"image: format {image_format} is not supported, use jpg, jpeg or png")
    if width < KLING_MIN_SIDE or height < KLING_MIN_SIDE:
        raise InvalidRequest(f"image: resolution {width}x{height} is below {KLING_MIN_SIDE}x{KLING_MIN_SIDE}")
    return width, height


def within_aspect_ratio(width: int, height: int) -> bool:
    return max(width, height) <= MAX_ASPECT_RATIO * min(width, height)


def parse_size(size: str) -> tuple[int, int]:
    match = SEEDREAM_SIZE.fullmatch(size)
    if match is None:
        raise ValueError("must be WIDTHxHEIGHT in pixels, such as 1024x1024")
    return int(match[1]), int(match[2])


def parse_cfg_scale(raw: str) -> float:
    if not raw:
        return 0.5
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest("cfg_scale: must be a number between 0 and 1") from None
    if not 0 <= value <= 1:
        raise InvalidRequest("cfg_scale: must be a number between 0 and 1")
    return value


def parse_kling_extra(raw: str) -> Webhook | None:
    if not raw:
        return None
    try:
        return Extra.model_validate(parse_json_object(raw.encode())).webhook
    except ValidationError as error:
        raise InvalidRequest("extra: " + describe(error)) from None


def text_field(fields: dict[str, FormPart], name: str) -> str:
    part = fields.get(name)
    if part is None:
        return ""
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{name}: must be UTF-8 text") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    return data


def describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
        for problem in error.errors()[:5]
    )

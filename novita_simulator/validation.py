"""Checks incoming API requests the way Novita does, answering 400 INVALID_REQUEST_BODY."""

import io
import json
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from novita_simulator.errors import InvalidRequest
from novita_simulator.multipart import FormPart, MultipartError, is_form_data, parse_form_data
from novita_simulator.task import SUCCEED

KLING_MAX_IMAGE_BYTES = 10 * 1024 * 1024
KLING_MIN_SIDE = 300
KLING_DURATIONS = ("5", "10")
KLING_MAX_PROMPT = 2500


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
    prompt: str
    negative_prompt: str = ""
    width: int = Field(ge=128, le=2048)
    height: int = Field(ge=128, le=2048)
    image_num: int = Field(ge=1, le=4)
    steps: int = Field(ge=1, le=100)
    guidance_scale: float = Field(ge=1, le=30)
    sampler_name: str = Field(min_length=1)
    seed: int = Field(default=-1, ge=-1, le=2**32 - 1)

    @field_validator("prompt")
    @classmethod
    def not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("must not be blank")
        return prompt


class Txt2ImgBody(BaseModel):
    extra: Extra = Field(default_factory=Extra)
    request: Txt2ImgSettings


@dataclass(frozen=True)
class KlingRequest:
    image: bytes
    prompt: str
    negative_prompt: str
    duration: int
    cfg_scale: float
    webhook: Webhook | None


def parse_txt2img(body: bytes) -> Txt2ImgBody:
    data = parse_json_object(body)
    if "request" not in data and "prompt" in data:
        raise InvalidRequest("request: field required; txt2img settings must be nested under `request`")
    try:
        return Txt2ImgBody.model_validate(data)
    except ValidationError as error:
        raise InvalidRequest(describe(error)) from None


def parse_kling(content_type: str, body: bytes) -> KlingRequest:
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
    duration = text_field(fields, "duration") or KLING_DURATIONS[0]
    if duration not in KLING_DURATIONS:
        raise InvalidRequest("duration: must be 5 or 10")
    return KlingRequest(
        image=image.data,
        prompt=prompt,
        negative_prompt=negative_prompt,
        duration=int(duration),
        cfg_scale=parse_cfg_scale(text_field(fields, "cfg_scale")),
        webhook=parse_kling_extra(text_field(fields, "extra")),
    )


def check_still(data: bytes) -> None:
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

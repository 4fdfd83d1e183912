"""The parameters of ``/v1/images/generations`` and ``/v1/images/edits``, checked, and the
gridgen request payload they become (the table of what each one does is in ``docs/openai.md``).

The payload is the worker family's own request (``prompt``, ``num_images``, ``width``,
``height``...), so it is validated, queued and merged exactly like a ``/generate`` body.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..diffusion.conditioning import DEFAULT_STRENGTH
from .openai_errors import OpenAIError

__all__ = [
    "EDITS_SIDE_MULTIPLE",
    "EditParams",
    "GenerationParams",
    "ImageParams",
    "parse_params",
    "partial_image_steps",
    "to_payload",
]

EDITS_SIDE_MULTIPLE = 16  # every family's sides are multiples of 16 (SDXL: 8)
_SIZE = re.compile(r"^\s*(\d{1,5})\s*x\s*(\d{1,5})\s*$")
_MAX_SIDE, _MIN_SIDE = 2048, 64


class ImageParams(BaseModel):
    """What both routes accept. ``quality``, ``style``, ``background``, ``moderation``,
    ``user`` and ``safety_identifier`` are accepted and ignored (docs/openai.md says why)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=64)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    # accepted, ignored:
    quality: str | None = None
    style: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    # gridgen's own (the SDK's extra_body):
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    strength: float | None = None
    loras: list[dict[str, Any]] | None = None  # checked by the family's request model

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_from_a_form(cls, value: Any) -> Any:
        # A multipart form (the edits route) carries the list as JSON text.
        return json.loads(value) if isinstance(value, str) else value


class GenerationParams(ImageParams):
    """``/v1/images/generations``: a JSON body."""


class EditParams(ImageParams):
    """``/v1/images/edits``: multipart form fields (or JSON) besides ``image`` and ``mask``."""

    input_fidelity: str | None = None  # accepted, ignored


_GRIDGEN_FIELDS = ("seed", "num_inference_steps", "guidance_scale", "negative_prompt", "strength", "loras")


def parse_params(raw: Mapping[str, Any], model: type[ImageParams]) -> ImageParams:
    """``raw`` checked against ``model``; the first broken rule as a 400 naming its parameter."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first['msg']}"
        raise OpenAIError(400, message, param=param, code=str(first["type"])) from None


def _parse_size(size: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None or size.strip() == "auto":
        return default
    match = _SIZE.match(size)
    if not match:
        raise OpenAIError(
            400, f"Invalid value for 'size': {size!r}; expected 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto'",
            param="size", code="invalid_size",
        )
    return int(match.group(1)), int(match.group(2))


def auto_size_of(image_size: tuple[int, int]) -> tuple[int, int]:
    """``size="auto"`` of an edit: the input image's size, each side rounded down to a
    multiple of 16 and kept within 64..2048 (the longer side scaled down, aspect kept)."""
    width, height = image_size
    scale = min(1.0, _MAX_SIDE / max(width, height))
    sides = [max(_MIN_SIDE, math.floor(side * scale / EDITS_SIDE_MULTIPLE) * EDITS_SIDE_MULTIPLE)
             for side in (width, height)]
    return sides[0], sides[1]


def partial_image_steps(partial_images: int, steps: int) -> int:
    """``preview_every`` for ``partial_images`` previews spaced over ``steps`` steps: the
    previews come at multiples of it, and the first ``partial_images`` of those before the
    last step are sent (fewer when there are fewer steps than that)."""
    return max(1, steps // (partial_images + 1))


def to_payload(
    params: ImageParams,
    *,
    default_size: tuple[int, int],
    default_steps: int,
    worker_format: str,
    image: str | None = None,
    mask: str | None = None,
) -> dict[str, Any]:
    """The gridgen request for ``params`` (``image`` and ``mask``: data URLs of an edit)."""
    width, height = _parse_size(params.size, default_size)
    payload: dict[str, Any] = {
        "prompt": params.prompt,
        "num_images": params.n or 1,
        "width": width,
        "height": height,
        "image_format": worker_format,
        "output": "images",
        "preview_every": 0,
    }
    for name in _GRIDGEN_FIELDS:
        value = getattr(params, name)
        if value is not None:
            payload[name] = value
    if image is not None:
        payload["image"] = image
    if mask is not None:
        payload["mask"] = mask
    if params.stream and params.partial_images:
        steps = int(payload.get("num_inference_steps", default_steps))
        if image is not None:  # the image pipelines run about strength x steps of them
            strength = payload.get("strength", DEFAULT_STRENGTH["inpaint" if mask else "img2img"])
            steps = max(1, round(steps * float(strength)))
        payload["preview_every"] = partial_image_steps(params.partial_images, steps)
    return payload

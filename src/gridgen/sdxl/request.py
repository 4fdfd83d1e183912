"""The SDXL request and response models, shared by the worker, the HTTP server and the CLI.

Every rank validates the payload with :func:`validate_request` before touching the GPU,
so a bad request raises the same :class:`InvalidRequestError` on all ranks at once and
no rank is left waiting in a collective.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidRequestError
from ..grid import MAX_GRID_IMAGES
from ..images import EncodedImage, ImageFormat, image_data_url, sniff

__all__ = [
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "GenerateRequest",
    "GenerateResult",
    "InvalidRequestError",
    "PreviewEvent",
    "Timings",
    "image_to_data_url",
    "validate_request",
]

MAX_IMAGES = MAX_GRID_IMAGES  # every image of a request fits in its one grid
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
_JSON_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")

OutputKind = Literal["grid", "images", "both"]


class GenerateRequest(BaseModel):
    """One SDXL generation request: ``num_images`` images of one prompt, one seed.

    Image ``i`` is generated from seed ``seed + i``, whichever rank makes it, so the same
    request gives the same images on any number of GPUs, up to floating-point rounding
    (a rank's batch size can move a few pixel values by one level; docs/sdxl.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw; not blank."
    )
    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="What to steer away from."
    )
    num_images: int | None = Field(
        default=None,
        ge=1,
        le=MAX_IMAGES,
        description="How many images; default: one per GPU (the runner's world size).",
    )
    width: int = Field(default=1024, ge=64, le=2048, multiple_of=8, description="Pixels.")
    height: int = Field(default=1024, ge=64, le=2048, multiple_of=8, description="Pixels.")
    num_inference_steps: int = Field(default=20, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(
        default=5.0, ge=0.0, le=30.0, description="Classifier-free guidance; <= 1 turns it off."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description="Seed of image 0 (image i uses seed + i); default: a random one, reported back.",
    )
    preview_every: int = Field(
        default=5,
        ge=0,
        le=150,
        description="Stream a preview grid every this many steps (streaming only); 0 = off.",
    )
    image_format: ImageFormat = Field(default="png", description="Encoding of the returned images.")
    output: OutputKind = Field(
        default="grid", description="Return the grid, the separate images, or both."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        return value

    @field_validator(
        "num_images",
        "width",
        "height",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "preview_every",
        mode="before",
    )
    @classmethod
    def _numbers_only(cls, value: Any) -> Any:
        # Strict on purpose (docs/sdxl.md): JSON has numbers, and "64" or true is a client bug.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        if isinstance(value, (str, bytes)):
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            # Unquoting is the fix only for a number in quotes ("64"), not for "wide".
            hint = f" (write {text.strip():.20} without quotes)" if _JSON_NUMBER.fullmatch(text.strip()) else ""
            raise ValueError(f"must be a number, not a string{hint}")
        return value


class FieldError(BaseModel):
    """One broken rule: which field, which rule, and a sentence about it."""

    field: str
    rule: str
    message: str


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_errors(
    exc: ValidationError, model: type[BaseModel] | None = None, unsupported: Mapping[str, str] | None = None
) -> list[FieldError]:
    """One :class:`FieldError` per pydantic error. ``unsupported`` maps fields that other
    families accept to the reason this one does not (rule ``unsupported_field``)."""
    allowed = ", ".join((model or GenerateRequest).model_fields)
    unsupported = unsupported or {}
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(part) for part in err["loc"]) or "request"
        rule = str(err["type"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if rule == "extra_forbidden" and field in unsupported:
            rule, message = "unsupported_field", f"{unsupported[field]} (allowed: {allowed})"
        elif rule == "extra_forbidden":
            message = f"unknown field (allowed: {allowed})"
        elif rule == "missing":
            message = "is required"
        elif "input" in err:
            message = f"{message} (got {_short_repr(err['input'])})"
        out.append(FieldError(field=field, rule=rule, message=message))
    return out


def validate_request(
    payload: Mapping[str, Any] | GenerateRequest, world_size: int | None = None
) -> GenerateRequest:
    """Validate a request payload; fill ``num_images`` with ``world_size`` when absent.

    Pure and deterministic, so every rank reaches the same verdict on the same payload.

    Raises:
        InvalidRequestError: (a ``ValueError``) naming each bad field and the rule it broke.
    """
    if isinstance(payload, GenerateRequest):
        request = payload
    else:
        if not isinstance(payload, Mapping):
            raise InvalidRequestError(
                [
                    FieldError(
                        field="request",
                        rule="dict_type",
                        message=f"must be a mapping of fields, got {type(payload).__name__}",
                    )
                ]
            )
        try:
            request = GenerateRequest.model_validate(dict(payload))
        except ValidationError as exc:
            raise InvalidRequestError(_field_errors(exc)) from None
    if request.num_images is None and world_size is not None:
        request = request.model_copy(update={"num_images": min(max(world_size, 1), MAX_IMAGES)})
    return request


# -- results ------------------------------------------------------------------------


class Timings(BaseModel):
    """Seconds spent, measured on rank 0. ``setup`` is the worker's one-off setup time, on
    the first result after (re)starting only; ``None`` on every later one."""

    setup: float | None = None
    denoise: float
    decode: float
    gather: float
    encode: float
    total: float


class GenerateResult(BaseModel):
    """A generation result as JSON: images as ``data:`` URLs (see :meth:`from_worker`)."""

    grid: str | None = None
    images: list[str] = Field(default_factory=list)
    seeds: list[int]
    width: int
    height: int
    num_images: int
    timings: Timings

    @classmethod
    def from_worker(cls, result: Mapping[str, Any]) -> GenerateResult:
        """Convert the SDXL worker's result dict (encoded images or PIL images) to JSON form."""
        grid = result.get("grid")
        return cls(
            grid=image_to_data_url(grid) if grid is not None else None,
            images=[image_to_data_url(image) for image in result.get("images", [])],
            seeds=list(result["seeds"]),
            width=int(result["width"]),
            height=int(result["height"]),
            num_images=int(result["num_images"]),
            timings=Timings.model_validate(result["timings"]),
        )


class PreviewEvent(BaseModel):
    """One streamed progress event; ``preview_image`` is a ``data:`` URL, absent without previews."""

    step: int
    total_steps: int
    progress: float
    preview_image: str | None = None


def image_to_data_url(image: Any) -> str:
    """A ``data:image/...;base64,`` URL for an EncodedImage, raw PNG/JPEG/WebP bytes, or a
    PIL image (see :func:`gridgen.images.image_data_url`)."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = sniff(bytes(image))
    if not isinstance(image, EncodedImage | Image.Image):
        raise TypeError(f"not an image: {type(image).__name__}")
    return image_data_url(image)

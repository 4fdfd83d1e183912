"""What every family's request model shares, and validation for any of them.

Each family has its own pydantic model (in its module under :mod:`gridgen.diffusion.families`):
the fields it accepts, with its defaults and rules. A field another family accepts but this
one does not (``negative_prompt`` on FLUX.1, ``guidance_scale`` on FLUX.1-schnell) is an
error with the rule ``unsupported_field`` and the reason, never silently ignored. Every
model shares the fields of :class:`CommonRequest` (SDXL's defines the same ones itself) and
the result format (:class:`gridgen.diffusion.results.GenerateResult`).

Every rank validates the payload before touching the GPU, so a bad request raises the same
:class:`~gridgen.InvalidRequestError` on all ranks at once and no rank is left waiting in a
collective.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from ..errors import InvalidRequestError
from ..grid import MAX_GRID_IMAGES
from ..images import ImageFormat
from ..inputs import ImageInfo, ImageInputError, check_image_input
from .lora_request import Loras

__all__ = [
    "MAX_IMAGES",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "CommonRequest",
    "FieldError",
    "ImageInputFields",
    "OutputKind",
    "side_field",
    "validate_payload",
]

MAX_IMAGES = MAX_GRID_IMAGES  # every image of a request fits in its one grid
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1

OutputKind = Literal["grid", "images", "both"]


# -- results ------------------------------------------------------------------------

_NUMBERS = (
    "num_images", "width", "height", "num_inference_steps", "guidance_scale", "seed", "preview_every",
)


class ImageInputFields(BaseModel):
    """The image-input fields of every family's request model, checked where the request is
    validated (on the host before it is queued, and on every rank): a bad image is an
    :class:`~gridgen.InvalidRequestError` naming the field and the rule. Which families
    run them: :mod:`gridgen.diffusion.conditioning`."""

    image: str | None = Field(
        default=None,
        description="Start image for image-to-image (or inpainting with mask): a data URL or "
        "base64 of a PNG, JPEG or WebP file; resized to width x height.",
    )
    strength: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="With image: how much of the denoising to run over it, 0 (the image back, "
        "through the VAE) to 1 (from noise); default 0.6, and 1.0 when inpainting.",
    )
    mask: str | None = Field(
        default=None,
        description="With image: inpainting mask of the image's size; white repaints, black keeps.",
    )

    @field_validator("strength", mode="before")
    @classmethod
    def _strength_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool | str | bytes):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        return value

    @field_validator("image")
    @classmethod
    def _image_decodes(cls, value: str | None) -> str | None:
        if value is not None:
            _checked_or_error(value)
        return value

    @field_validator("strength", "mask")
    @classmethod
    def _needs_image(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or "image" not in info.data:  # no value, or the image already failed
            return value
        image = info.data["image"]
        if image is None:
            raise PydanticCustomError("requires_image", "needs an image (the start image to change)")
        if info.field_name == "mask":
            mask_size = _checked_or_error(value).size
            image_size = check_image_input(image).size
            if mask_size != image_size:
                raise PydanticCustomError(
                    "mask_size",
                    "is {mask} pixels but the image is {image}: they must be the same size",
                    {"mask": "x".join(map(str, mask_size)), "image": "x".join(map(str, image_size))},
                )
        return value


def _checked_or_error(value: Any) -> ImageInfo:
    try:
        return check_image_input(value)
    except ImageInputError as exc:
        raise PydanticCustomError(exc.rule, str(exc)) from None


class CommonRequest(ImageInputFields):
    """Fields every family accepts (the SDXL model defines the same ones itself)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw; not blank."
    )
    num_images: int | None = Field(
        default=None,
        ge=1,
        le=MAX_IMAGES,
        description="How many images; default: one per GPU (the runner's world size).",
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
    loras: Loras = ()

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        return value

    @field_validator(*_NUMBERS, mode="before", check_fields=False)
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
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
    exc: ValidationError, model: type[BaseModel], unsupported: Mapping[str, str] | None = None
) -> list[FieldError]:
    """One :class:`FieldError` per pydantic error. ``unsupported`` maps fields that other
    families accept to the reason this one does not (rule ``unsupported_field``)."""
    # The inherited image-input fields come first in the model; the prompt leads here.
    allowed = ", ".join(sorted(model.model_fields, key=lambda name: name in ImageInputFields.model_fields))
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


def side_field() -> Any:
    """``width`` / ``height`` of FLUX.1 and SD3.5, whose latents are 1/8 of the image and are
    cut into 2x2 patches: a multiple of 16 pixels."""
    return Field(default=1024, ge=64, le=2048, multiple_of=16, description="Pixels, a multiple of 16.")


RequestT = TypeVar("RequestT", bound=BaseModel)


def validate_payload(
    model: type[RequestT],
    payload: Mapping[str, Any] | BaseModel,
    world_size: int | None = None,
    unsupported: Mapping[str, str] | None = None,
) -> RequestT:
    """Validate ``payload`` against ``model``; fill ``num_images`` with ``world_size`` when absent.

    Pure and deterministic, so every rank reaches the same verdict on the same payload.

    Raises:
        InvalidRequestError: naming each bad field and the rule it broke.
    """
    if isinstance(payload, model):
        request = payload
    else:
        if isinstance(payload, BaseModel):
            payload = payload.model_dump()
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
            request = model.model_validate(dict(payload))
        except ValidationError as exc:
            raise InvalidRequestError(_field_errors(exc, model, unsupported)) from None
    if getattr(request, "num_images", 0) is None and world_size is not None:
        request = request.model_copy(update={"num_images": min(max(world_size, 1), MAX_IMAGES)})
    return request

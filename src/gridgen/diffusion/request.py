"""Request models of the FLUX.1 and SD3.5 families, and validation for any family.

Each family has its own pydantic model: the fields it accepts, with its defaults and
rules. A field another family accepts but this one does not (``negative_prompt`` on
FLUX.1, ``guidance_scale`` on FLUX.1-schnell) is an error with the rule
``unsupported_field`` and the reason, never silently ignored. The SDXL model is
:class:`gridgen.sdxl.GenerateRequest`; every model shares the fields defined in
:class:`CommonRequest` and the result format (:class:`gridgen.sdxl.GenerateResult`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..images import ImageFormat
from ..sdxl.request import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    FieldError,
    InvalidRequestError,
    OutputKind,
    _field_errors,
)

__all__ = [
    "CommonRequest",
    "FluxDevRequest",
    "FluxSchnellRequest",
    "SD3Request",
    "validate_payload",
]

_NUMBERS = (
    "num_images", "width", "height", "num_inference_steps", "guidance_scale", "seed", "preview_every",
)


class CommonRequest(BaseModel):
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


def _side() -> Any:
    # FLUX.1 and SD3 latents are 1/8 of the image and are cut into 2x2 patches: 16 pixels.
    return Field(default=1024, ge=64, le=2048, multiple_of=16, description="Pixels, a multiple of 16.")


class FluxDevRequest(CommonRequest):
    """FLUX.1-dev: guidance-distilled (the scale is an input of the model, one pass per
    step), so there is no negative prompt."""

    width: int = _side()
    height: int = _side()
    num_inference_steps: int = Field(default=28, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(
        default=3.5, ge=0.0, le=30.0, description="Distilled guidance, an input of the model."
    )


class FluxSchnellRequest(CommonRequest):
    """FLUX.1-schnell: timestep-distilled for 1 to 4 steps, no guidance at all."""

    width: int = _side()
    height: int = _side()
    num_inference_steps: int = Field(
        default=4, ge=1, le=16, description="Denoising steps (distilled for 1 to 4)."
    )


class SD3Request(CommonRequest):
    """Stable Diffusion 3.5: classifier-free guidance with a negative prompt, like SDXL."""

    negative_prompt: str = Field(
        default="", max_length=MAX_PROMPT_CHARS, description="What to steer away from."
    )
    width: int = _side()
    height: int = _side()
    num_inference_steps: int = Field(default=28, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(
        default=3.5, ge=0.0, le=30.0, description="Classifier-free guidance; <= 1 turns it off."
    )


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

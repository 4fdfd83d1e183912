"""Stable Diffusion XL: its request model and rules, its linear preview factors, and how a
prompt becomes its embedding arguments (two CLIP encoders, classifier-free guidance)."""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..._hub import DEFAULT_PREVIEW_MODEL
from ...errors import InvalidRequestError
from ...images import ImageFormat
from ..conditioning import input_merge_key, input_steps, refuse_unsupported_inputs
from ..lora_request import Loras, active_loras
from ..request import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    FieldError,
    ImageInputFields,
    OutputKind,
    _field_errors,
)
from .base import RGB, Family

if TYPE_CHECKING:
    from ..batching import Slot

__all__ = [
    "SDXL",
    "SDXL_LATENT_RGB_BIAS",
    "SDXL_LATENT_RGB_FACTORS",
    "GenerateRequest",
    "prompt_embeddings",
    "validate_request",
]

_JSON_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")

# Rows are latent channels 0..3, columns R, G, B. Applied to the latents as the UNet sees
# them (already multiplied by the VAE scaling factor); the result is roughly in [-1, 1].
SDXL_LATENT_RGB_FACTORS: tuple[RGB, ...] = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS: RGB = (0.1084, -0.0175, -0.0011)


class GenerateRequest(ImageInputFields):
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
    loras: Loras = ()

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
            raise InvalidRequestError(_field_errors(exc, GenerateRequest)) from None
    if request.num_images is None and world_size is not None:
        request = request.model_copy(update={"num_images": min(max(world_size, 1), MAX_IMAGES)})
    return request


def prompt_embeddings(
    pipeline: Any, requests: list[GenerateRequest], slots: list[Slot], device: Any
) -> dict[str, Any]:
    """The pipeline's embedding arguments, one row per slot.

    Each request's prompt is encoded alone (batch 1), exactly as the pipeline encodes a
    single request's prompt before repeating it, so a row's conditioning is bitwise what
    its request alone would get, whatever the other prompts in the batch.
    """
    import torch

    cfg = requests[0].guidance_scale > 1
    encoded: dict[int, tuple[Any, ...]] = {}
    for slot in slots:
        if slot.request not in encoded:
            request = requests[slot.request]
            encoded[slot.request] = pipeline.encode_prompt(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=cfg,
            )
    names = _EMBEDDING_ARGUMENTS
    out: dict[str, Any] = {}
    for position, name in enumerate(names):
        parts = [encoded[slot.request][position] for slot in slots]
        if all(part is not None for part in parts):  # no negatives without guidance
            out[name] = torch.cat(parts)
    return out


_EMBEDDING_ARGUMENTS = (  # in the order encode_prompt returns them
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


class _SDXL(Family):
    name, title, pipeline_class = "sdxl", "SDXL", "StableDiffusionXLPipeline"
    request_model = GenerateRequest
    step_tensors = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")
    shrinkable = True
    denoiser = "unet"
    step_cache = False  # diffusers' block caches are for transformers; the UNet has none
    latent_rgb = (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS)
    preview_model = DEFAULT_PREVIEW_MODEL
    parallel_refusals = {
        "ulysses": "its UNet has no sequence-parallel path (diffusers' context parallelism is "
        "for transformers); use cfg=2 to split one image",
        "ring": "its UNet has no sequence-parallel path (diffusers' context parallelism is "
        "for transformers); use cfg=2 to split one image",
    }
    image_pipelines = {
        "img2img": "stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img:StableDiffusionXLImg2ImgPipeline",
        "inpaint": "stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint:StableDiffusionXLInpaintPipeline",
    }

    def validate(self, payload: Mapping[str, Any] | BaseModel, world_size: int | None = None) -> Any:
        return refuse_unsupported_inputs(self, validate_request(payload, world_size))  # type: ignore[arg-type]

    def merge_key(self, request: Any) -> Hashable:
        """Prompt, negative prompt, seed and ``num_images`` may differ (they are per image), and
        so may ``image_format``, ``output`` and ``preview_every`` (per request, applied on
        rank 0 or at preview time); image inputs too, but not their kind and strength; the
        LoRA adapters and their scales may not."""
        return ("sdxl", request.width, request.height, request.num_inference_steps,
                float(request.guidance_scale), *input_merge_key(request), active_loras(request.loras))

    def embeddings(
        self, pipeline: Any, requests: Sequence[Any], slots: Sequence[Slot], device: Any
    ) -> dict[str, Any]:
        return prompt_embeddings(pipeline, list(requests), list(slots), device)

    def call_kwargs(self, request: Any) -> dict[str, Any]:
        return {"guidance_scale": request.guidance_scale}

    def count_steps(self, pipeline: Any, request: Any) -> int:
        scheduler = pipeline.scheduler
        probe = type(scheduler).from_config(scheduler.config)
        probe.set_timesteps(request.num_inference_steps, device="cpu")
        return input_steps(self, request, len(probe.timesteps), order=int(getattr(probe, "order", 1)))

    def image_steps(self, total: int, strength: float) -> int:
        return min(int(total * strength), total)  # SDXL's pipelines truncate the steps they run


SDXL: Family = _SDXL()

"""FLUX.1-dev and FLUX.1-schnell: their request models, preview factors, and the pipeline's
prompt encoding (CLIP pooled + T5) and packed 2x2-patch latents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ..request import CommonRequest
from ..request import side_field as _side
from .base import RGB, Family

if TYPE_CHECKING:
    import torch

__all__ = [
    "FLUX_DEV",
    "FLUX_LATENT_RGB_BIAS",
    "FLUX_LATENT_RGB_FACTORS",
    "FLUX_SCHNELL",
    "FluxDevRequest",
    "FluxSchnellRequest",
]

# Rows are latent channels, columns R, G, B; applied to the latents the denoiser sees (scaled
# and shifted). The factors ComfyUI and others use for previews of this family.
FLUX_LATENT_RGB_FACTORS: tuple[RGB, ...] = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS: RGB = (-0.0329, -0.0718, -0.0851)



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


_NO_NEGATIVE = "not supported by {title}: it is guidance-distilled and has no negative prompt"


class _Flux(Family):
    pipeline_class = "FluxPipeline"
    cuda_dtype = "bfloat16"  # FLUX.1 is trained and published in bfloat16; T5-XXL overflows float16
    step_tensors = ("latents", "prompt_embeds")
    latent_rgb = (FLUX_LATENT_RGB_FACTORS, FLUX_LATENT_RGB_BIAS)
    preview_model = "madebyollin/taef1"  # dev and schnell share the VAE
    parallel_refusals = {
        "cfg": "it is guidance-distilled (one pass per step, no unconditional branch to "
        "split off); use ulysses to split one image",
    }
    image_pipelines = {
        "img2img": "flux.pipeline_flux_img2img:FluxImg2ImgPipeline",
        "inpaint": "flux.pipeline_flux_inpaint:FluxInpaintPipeline",
    }

    def __init__(self, name: str, title: str, request_model: type[BaseModel],
                 unsupported: Mapping[str, str], max_sequence_length: int) -> None:
        self.name, self.title, self.request_model = name, title, request_model
        self.unsupported = unsupported
        self.default_max_sequence_length = max_sequence_length

    def encode(self, pipeline: Any, request: Any, device: Any) -> dict[str, Any]:
        prompt_embeds, pooled, _text_ids = pipeline.encode_prompt(
            prompt=request.prompt, prompt_2=None, device=device, num_images_per_prompt=1,
            max_sequence_length=self.default_max_sequence_length,
        )
        return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}

    def unpack(self, pipeline: Any, latents: torch.Tensor, request: Any) -> torch.Tensor:
        if latents.dim() == 4:
            return latents
        unpacked: torch.Tensor = pipeline._unpack_latents(
            latents, request.height, request.width, pipeline.vae_scale_factor
        )
        return unpacked


FLUX_DEV: Family = _Flux(
    "flux-dev", "FLUX.1-dev", FluxDevRequest,
    {"negative_prompt": _NO_NEGATIVE.format(title="FLUX.1-dev")}, 512,
)
FLUX_SCHNELL: Family = _Flux(
    "flux-schnell", "FLUX.1-schnell", FluxSchnellRequest,
    {
        "negative_prompt": _NO_NEGATIVE.format(title="FLUX.1-schnell"),
        "guidance_scale": "not supported by FLUX.1-schnell: it is distilled to run without guidance",
    },
    256,
)

"""Stable Diffusion 3.5: its request model, preview factors, and prompt encoding (two CLIP
encoders and T5, classifier-free guidance with a negative prompt)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..request import MAX_PROMPT_CHARS, CommonRequest
from ..request import side_field as _side
from .base import RGB, Family

__all__ = ["SD3", "SD3_LATENT_RGB_BIAS", "SD3_LATENT_RGB_FACTORS", "SD3Request"]

# Rows are latent channels, columns R, G, B (see flux.py).
SD3_LATENT_RGB_FACTORS: tuple[RGB, ...] = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)
SD3_LATENT_RGB_BIAS: RGB = (0.2394, 0.2135, 0.1925)


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


class _SD3(Family):
    name, title, pipeline_class = "sd3", "Stable Diffusion 3.5", "StableDiffusion3Pipeline"
    cuda_dtype = "bfloat16"  # SD3.5 is published in bfloat16; its T5-XXL overflows float16
    request_model = SD3Request
    step_tensors = ("latents", "prompt_embeds", "pooled_prompt_embeds")
    latent_rgb = (SD3_LATENT_RGB_FACTORS, SD3_LATENT_RGB_BIAS)
    preview_model = "madebyollin/taesd3"
    compile_blocks = ("JointTransformerBlock",)  # diffusers declares none for SD3
    step_cache = False  # its transformer has no diffusers cache hooks (no CacheMixin)
    default_max_sequence_length = 256
    parallel_refusals = {
        "ulysses": "diffusers (0.42) has no context-parallel plan for SD3's transformer (its "
        "attention processor calls SDPA directly); use cfg=2 to split one image",
        "ring": "diffusers (0.42) has no context-parallel plan for SD3's transformer (its "
        "attention processor calls SDPA directly); use cfg=2 to split one image",
    }
    image_pipelines = {
        "img2img": "stable_diffusion_3.pipeline_stable_diffusion_3_img2img:StableDiffusion3Img2ImgPipeline",
        "inpaint": "stable_diffusion_3.pipeline_stable_diffusion_3_inpaint:StableDiffusion3InpaintPipeline",
    }

    def encode(self, pipeline: Any, request: Any, device: Any) -> dict[str, Any]:
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                 "negative_pooled_prompt_embeds")
        encoded = pipeline.encode_prompt(
            prompt=request.prompt, prompt_2=None, prompt_3=None, device=device,
            num_images_per_prompt=1, do_classifier_free_guidance=request.guidance_scale > 1,
            negative_prompt=request.negative_prompt,
            max_sequence_length=self.default_max_sequence_length,
        )
        return {name: value for name, value in zip(names, encoded, strict=True) if value is not None}


SD3: Family = _SD3()

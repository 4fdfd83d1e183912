"""Family adapters: what the generic worker needs to know about one kind of diffusers pipeline.

The worker (:mod:`gridgen.diffusion.worker`) does the same for every family: validate,
agree on seeds, split the images over ranks, denoise with a per-step collective, preview,
decode, gather, grid. A :class:`Family` supplies the rest:

* its request model (fields, defaults, rules) and the fields it refuses, with why;
* what merged requests must share (:meth:`Family.merge_key`);
* how a prompt becomes the pipeline's embedding arguments, and how guidance is passed
  (SDXL and SD3.5 batch conditional and unconditional rows; FLUX.1-dev takes the scale as
  an input of a guidance-distilled model; FLUX.1-schnell takes none);
* how latents become a cheap preview: unpacked first when the pipeline packs them (FLUX's
  2x2 patches), then a linear latent-to-RGB map for its channels.

See ``docs/families.md`` for adding one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..sdxl.preview import SDXL_LATENT_RGB_BIAS, SDXL_LATENT_RGB_FACTORS
from ..sdxl.request import GenerateRequest, validate_request
from .request import FluxDevRequest, FluxSchnellRequest, SD3Request, validate_payload

if TYPE_CHECKING:
    import torch

    from ..sdxl.batching import Slot

__all__ = [
    "FAMILIES",
    "FLUX_DEV",
    "FLUX_LATENT_RGB_BIAS",
    "FLUX_LATENT_RGB_FACTORS",
    "FLUX_SCHNELL",
    "SD3",
    "SD3_LATENT_RGB_BIAS",
    "SD3_LATENT_RGB_FACTORS",
    "SDXL",
    "Family",
]

RGB = tuple[float, float, float]

# Rows are latent channels, columns R, G, B; applied to the latents the denoiser sees (scaled
# and shifted). The factors ComfyUI and others use for previews of these families.
FLUX_LATENT_RGB_FACTORS: tuple[RGB, ...] = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS: RGB = (-0.0329, -0.0718, -0.0851)
SD3_LATENT_RGB_FACTORS: tuple[RGB, ...] = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)
SD3_LATENT_RGB_BIAS: RGB = (0.2394, 0.2135, 0.1925)


class Family:
    """One pipeline family. Subclass it and override what differs (see ``docs/families.md``)."""

    name: str = ""
    """Short id, part of every merge key: ``"sdxl"``, ``"flux-dev"``, ``"flux-schnell"``, ``"sd3"``."""
    title: str = ""
    """Human name, for messages and page titles."""
    pipeline_class: str = ""
    """The diffusers pipeline class (``model_index.json``'s ``_class_name``)."""
    request_model: type[BaseModel] = BaseModel
    unsupported: Mapping[str, str] = {}
    """Fields other families accept that this one refuses, and why."""
    step_tensors: tuple[str, ...] = ("latents",)
    """``callback_on_step_end_tensor_inputs``: the per-row tensors the step callback gets."""
    shrinkable: bool = False
    """Cancelled rows may leave the batch between steps (every per-row tensor of the loop
    is among ``step_tensors`` and the scheduler keeps no per-row state)."""
    latent_rgb: tuple[tuple[RGB, ...], RGB] = ((), (0.0, 0.0, 0.0))
    """Linear latent-to-RGB preview factors (one row per latent channel) and bias."""
    default_max_sequence_length: int | None = None

    def validate(self, payload: Mapping[str, Any] | BaseModel, world_size: int | None = None) -> Any:
        """The validated request (``num_images`` filled from ``world_size`` when absent)."""
        return validate_payload(self.request_model, payload, world_size, self.unsupported)

    def guidance(self, request: Any) -> float:
        return float(getattr(request, "guidance_scale", 0.0))

    def merge_key(self, request: Any) -> Hashable:
        """What merged requests must share: everything that shapes the denoising batch."""
        return (self.name, request.width, request.height, request.num_inference_steps,
                self.guidance(request))

    def encode(self, pipeline: Any, request: Any, device: Any) -> dict[str, Any]:
        """One request's embedding arguments, batch 1 (``None`` values are left out)."""
        raise NotImplementedError

    def embeddings(
        self, pipeline: Any, requests: Sequence[Any], slots: Sequence[Slot], device: Any
    ) -> dict[str, Any]:
        """The embedding arguments, one row per slot; each prompt encoded alone, so a row's
        conditioning never depends on the other prompts of the batch."""
        import torch

        encoded = {
            k: self.encode(pipeline, requests[k], device) for k in {slot.request for slot in slots}
        }
        names = encoded[slots[0].request].keys()
        return {name: torch.cat([encoded[slot.request][name] for slot in slots]) for name in names}

    def call_kwargs(self, request: Any) -> dict[str, Any]:
        """Pipeline arguments besides embeddings, size, steps, generators and callbacks."""
        out: dict[str, Any] = {"guidance_scale": self.guidance(request)}
        if self.default_max_sequence_length is not None:
            out["max_sequence_length"] = self.default_max_sequence_length
        return out

    def count_steps(self, pipeline: Any, request: Any) -> int:
        """How many times the step callback will run (the same on every rank)."""
        return int(request.num_inference_steps)

    def unpack(self, pipeline: Any, latents: torch.Tensor, request: Any) -> torch.Tensor:
        """Latents as ``(B, C, h, w)`` (the pipeline's step and output layout may differ)."""
        return latents


class _SDXL(Family):
    name, title, pipeline_class = "sdxl", "SDXL", "StableDiffusionXLPipeline"
    request_model = GenerateRequest
    step_tensors = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")
    shrinkable = True
    latent_rgb = (SDXL_LATENT_RGB_FACTORS, SDXL_LATENT_RGB_BIAS)

    def validate(self, payload: Mapping[str, Any] | BaseModel, world_size: int | None = None) -> Any:
        return validate_request(payload, world_size)  # type: ignore[arg-type]

    def merge_key(self, request: Any) -> Hashable:
        from ..sdxl.batching import merge_key

        return merge_key(request)

    def embeddings(
        self, pipeline: Any, requests: Sequence[Any], slots: Sequence[Slot], device: Any
    ) -> dict[str, Any]:
        from ..sdxl.batching import prompt_embeddings

        return prompt_embeddings(pipeline, list(requests), list(slots), device)

    def call_kwargs(self, request: Any) -> dict[str, Any]:
        return {"guidance_scale": request.guidance_scale}

    def count_steps(self, pipeline: Any, request: Any) -> int:
        scheduler = pipeline.scheduler
        probe = type(scheduler).from_config(scheduler.config)
        probe.set_timesteps(request.num_inference_steps, device="cpu")
        return len(probe.timesteps)


_NO_NEGATIVE = "not supported by {title}: it is guidance-distilled and has no negative prompt"


class _Flux(Family):
    pipeline_class = "FluxPipeline"
    step_tensors = ("latents", "prompt_embeds")
    latent_rgb = (FLUX_LATENT_RGB_FACTORS, FLUX_LATENT_RGB_BIAS)

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


class _SD3(Family):
    name, title, pipeline_class = "sd3", "Stable Diffusion 3.5", "StableDiffusion3Pipeline"
    request_model = SD3Request
    step_tensors = ("latents", "prompt_embeds", "pooled_prompt_embeds")
    latent_rgb = (SD3_LATENT_RGB_FACTORS, SD3_LATENT_RGB_BIAS)
    default_max_sequence_length = 256

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


SDXL: Family = _SDXL()
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
SD3: Family = _SD3()

FAMILIES: dict[str, Family] = {f.name: f for f in (SDXL, FLUX_DEV, FLUX_SCHNELL, SD3)}
"""Every family by name."""

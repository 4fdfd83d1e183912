"""The family adapter's base class: what the generic worker needs to know about one kind of diffusers pipeline.

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

Each family is one module beside this one (``sdxl.py``, ``flux.py``, ``sd3.py``) and one
line in ``families/__init__.py``; see ``docs/families.md`` for adding one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..conditioning import input_merge_key, input_steps, refuse_unsupported_inputs
from ..lora_request import active_loras
from ..request import validate_payload

if TYPE_CHECKING:
    import torch

    from ..batching import Slot

__all__ = ["RGB", "Family"]

RGB = tuple[float, float, float]
"""One latent channel's contribution to R, G and B in a linear preview."""


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
    preview_model: str = ""
    """Hub id of the family's TAESD (an ``AutoencoderTiny`` of its latent space): what
    ``setup(preview="taesd")`` loads when no ``preview_model`` is given."""
    default_max_sequence_length: int | None = None
    cuda_dtype: str = "float16"
    """The weights' dtype on a GPU when ``setup(dtype=None)`` (float32 on CPU, always)."""
    denoiser: str = "transformer"
    """The pipeline's attribute holding the denoising model (``"unet"`` for SDXL)."""
    compile_blocks: tuple[str, ...] = ()
    """Block classes ``optimize="compile"`` compiles, one graph per class and shape (the
    denoiser's own ``_repeated_blocks`` when empty)."""
    step_cache: bool = True
    """Whether ``step_cache`` (diffusers' first-block cache) can serve this family."""
    parallel_refusals: Mapping[str, str] = {}
    """Degrees of ``setup(parallel=...)`` (``"cfg"``, ``"ulysses"``, ``"ring"``) this family
    cannot split one image by, and why (see :mod:`gridgen.diffusion.parallel`)."""
    image_pipelines: Mapping[str, str] = {}
    """Its image pipelines, ``"module:Class"`` under ``diffusers.pipelines``, by kind
    (``"img2img"``, ``"inpaint"``; see :mod:`gridgen.diffusion.conditioning`). A kind left
    out is refused with the rule ``unsupported_field``."""

    @property
    def latent_channels(self) -> int:
        return len(self.latent_rgb[0])

    def validate(self, payload: Mapping[str, Any] | BaseModel, world_size: int | None = None) -> Any:
        """The validated request (``num_images`` filled from ``world_size`` when absent)."""
        request = validate_payload(self.request_model, payload, world_size, self.unsupported)
        return refuse_unsupported_inputs(self, request)

    def guidance(self, request: Any) -> float:
        return float(getattr(request, "guidance_scale", 0.0))

    def merge_key(self, request: Any) -> Hashable:
        """What merged requests must share: everything that shapes the denoising batch (the
        LoRA adapters and their scales too)."""
        return (self.name, request.width, request.height, request.num_inference_steps,
                self.guidance(request), *input_merge_key(request), active_loras(request.loras))

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
        return input_steps(self, request, int(request.num_inference_steps))

    def image_steps(self, total: int, strength: float) -> int:
        """How many of ``total`` steps the image pipelines run at ``strength`` (FLUX.1's and
        SD3.5's rounding: they truncate the steps they skip)."""
        return total - int(max(total - min(total * strength, total), 0))

    def unpack(self, pipeline: Any, latents: torch.Tensor, request: Any) -> torch.Tensor:
        """Latents as ``(B, C, h, w)`` (the pipeline's step and output layout may differ)."""
        return latents



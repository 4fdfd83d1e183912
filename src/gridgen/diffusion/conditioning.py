"""Image inputs on the ranks: image-to-image and inpainting with diffusers' own pipelines.

A request with an ``image`` (and maybe a ``mask``) runs its family's image-to-image or
inpainting pipeline (:attr:`Family.image_pipelines
<gridgen.diffusion.families.Family.image_pipelines>`) instead of the text-to-image one.
Those are built once per rank from the loaded pipeline's modules (:func:`sharing`), so
they share them (no second copy of the weights; compiled blocks, CUDA-graphed UNet,
quantized layers, caches and offload hooks are the same objects). Everything else of the
worker is unchanged: images strided over the ranks with per-image seeds, the per-step
collective cancel, previews, decode, gather and grid. Merged requests share the kind of
input and the strength (both shape the denoising loop); each row carries its own
request's start image and mask, decoded once per batch on each rank.

``strength`` runs ``strength x num_inference_steps`` of the steps (the pipelines' own
rounding, :meth:`Family.image_steps <gridgen.diffusion.families.Family.image_steps>`).
When that is no step at all (``strength`` 0, or too small for the steps), no pipeline
runs: the start image's latents (the VAE's encoding, its mode) are decoded like any
result, which is what image-to-image at strength 0 is.

Masks are diffusers': white repaints, black keeps (see :mod:`gridgen.inputs`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequestError
from ..inputs import decode_image_input
from .request import FieldError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .families import Family

__all__ = [
    "DEFAULT_STRENGTH",
    "ImageInputs",
    "input_kind",
    "input_merge_key",
    "input_steps",
    "refuse_unsupported_inputs",
    "sharing",
    "strength_of",
    "supported",
    "vae_dtype_kept",
]

DEFAULT_STRENGTH = {"img2img": 0.6, "inpaint": 1.0}
"""``strength`` when a request gives none: image-to-image keeps the start image's layout,
inpainting repaints the masked area from noise."""


def input_kind(request: Any) -> str | None:
    """``"inpaint"`` (image and mask), ``"img2img"`` (image), or None (text only)."""
    if getattr(request, "image", None) is None:
        return None
    return "inpaint" if getattr(request, "mask", None) is not None else "img2img"


def strength_of(request: Any) -> float:
    kind = input_kind(request)
    if kind is None:
        return 0.0
    strength = getattr(request, "strength", None)
    return float(DEFAULT_STRENGTH[kind] if strength is None else strength)


def input_merge_key(request: Any) -> tuple[Hashable, ...]:
    """What merged requests must share about image inputs: the kind and the strength."""
    kind = input_kind(request)
    return () if kind is None else (kind, strength_of(request))


@functools.cache
def supported(family: Family, kind: str) -> bool:
    """Whether the installed diffusers has ``family``'s pipeline for ``kind`` (checked
    without importing it, so the host can answer before any worker loads)."""
    where = family.image_pipelines.get(kind)
    if where is None:
        return False
    module = where.partition(":")[0]
    try:
        return importlib.util.find_spec(f"diffusers.pipelines.{module}") is not None
    except ModuleNotFoundError:
        return False


def input_steps(family: Family, request: Any, count: int, order: int = 1) -> int:
    """The step callbacks of ``request``: ``count`` (its text-to-image pipeline's) without an
    image, else what its image pipeline keeps of the ``num_inference_steps`` schedule."""
    if input_kind(request) is None:
        return count
    total = int(request.num_inference_steps)
    skipped = total - family.image_steps(total, strength_of(request))
    return max(0, count - skipped * order)


def refuse_unsupported_inputs(family: Family, request: Any) -> Any:
    """``request``, unless it asks for an image pipeline ``family`` lacks (in the installed
    diffusers): then the rule ``unsupported_field`` on ``image`` or ``mask``."""
    kind = input_kind(request)
    if kind is None or supported(family, kind):
        return request
    field, what = ("mask", "inpainting") if kind == "inpaint" else ("image", "image-to-image")
    message = f"not supported by {family.title} with the installed diffusers: it has no {what} pipeline"
    raise InvalidRequestError([FieldError(field=field, rule="unsupported_field", message=message)])


class ImageInputs:
    """One rank's image pipelines (built on first use, sharing the loaded one's modules)
    and the per-row inputs of a batch."""

    def __init__(self, family: Family, pipeline: Any) -> None:
        self.family = family
        self.base = pipeline
        self._pipelines: dict[str, Any] = {}

    @classmethod
    def of(cls, worker: Any) -> ImageInputs:
        """``worker``'s, made on first use (again when its pipeline was replaced)."""
        inputs: ImageInputs | None = worker.__dict__.get("_image_inputs")
        if inputs is None or inputs.base is not worker.pipeline:
            inputs = worker.__dict__["_image_inputs"] = cls(worker.family, worker.pipeline)
        return inputs

    def pipeline(self, kind: str) -> Any:
        if kind not in self._pipelines:
            module, _, name = self.family.image_pipelines[kind].partition(":")
            pipeline_class = getattr(importlib.import_module(f"diffusers.pipelines.{module}"), name)
            pipe = sharing(pipeline_class, self.base)
            pipe.set_progress_bar_config(disable=True)
            self._pipelines[kind] = pipe
        return self._pipelines[kind]

    def call(
        self, requests: Sequence[Any], rows: Sequence[int], generators: Sequence[torch.Generator]
    ) -> tuple[Any, dict[str, Any]]:
        """The image pipeline of these requests and its arguments besides embeddings, steps,
        generators and callbacks, for rows of ``requests[rows[i]]``: one start image (and
        mask) per row, the strength, and the size when the pipeline takes one.

        Image-to-image gets each row's start image already encoded (:meth:`encode`, drawing
        on that row's generator as the pipeline would), so the pipeline skips its own encode.
        """
        first = requests[rows[0]]
        kind = input_kind(first)
        assert kind is not None
        pipeline = self.pipeline(kind)
        decoded = _decoded(requests, set(rows))
        out: dict[str, Any] = {"strength": strength_of(first)}
        if kind == "inpaint":
            out.update(image=[decoded[k][0] for k in rows], mask_image=[decoded[k][1] for k in rows])
        else:
            starts = {k: image for k, (image, _) in decoded.items()}
            out["image"] = self.encode(starts, rows, generators, first.width, first.height)
        if "width" in inspect.signature(pipeline.__call__).parameters:  # SDXL's img2img has none
            out.update(width=first.width, height=first.height)
        return pipeline, out

    def encode(
        self, images: Mapping[int, Image.Image], rows: Sequence[int], generators: Sequence[torch.Generator],
        width: int, height: int,
    ) -> torch.Tensor:
        """Start images as the latents image-to-image noises, ``(B, C, h, w)``, row ``i`` from
        ``images[rows[i]]``: each image encoded once, and each row a sample of its encoding
        drawn with that row's generator (what the pipelines do, encoding once per row),
        shifted and scaled as they do.

        The VAE runs in its own dtype. diffusers' SDXL pipelines would upcast a
        ``force_upcast`` VAE to float32 for this and cast it back to the *prompt's* dtype
        (float16), leaving the worker's bfloat16 or float32 VAE in the float16 that
        overflows; encoding here keeps it as it is and skips the float32 encode.
        """
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        vae = self.base.vae
        encoded = self._encodings(images, width, height)
        with torch.no_grad():  # not inference_mode: the pipeline updates these latents in place
            latents = torch.cat([
                encoded[k].mean + encoded[k].std * randn_tensor(
                    encoded[k].mean.shape, generator=generator, device=vae.device, dtype=vae.dtype)
                for k, generator in zip(rows, generators, strict=True)
            ])
        return _normalized(vae.config, latents)

    def start_latents(self, requests: Sequence[Any], rows: Sequence[int]) -> torch.Tensor:
        """Strength 0: each row's start image as the latents the denoiser would see (the
        VAE encoding's mode, shifted and scaled as the pipelines do), ``(B, C, h, w)``."""
        import torch

        first = requests[rows[0]]
        starts = {k: image for k, (image, _) in _decoded(requests, set(rows)).items()}
        encoded = self._encodings(starts, first.width, first.height)
        latents = torch.cat([encoded[k].mode() for k in rows])
        return _normalized(self.base.vae.config, latents)

    def _encodings(self, images: Mapping[int, Image.Image], width: int, height: int) -> dict[int, Any]:
        """Each image's VAE encoding (a diagonal Gaussian), one encode per image, in the
        VAE's own dtype."""
        import torch

        vae = self.base.vae
        order = sorted(images)
        pixels = self.base.image_processor.preprocess([images[k] for k in order], height=height, width=width)
        pixels = pixels.to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad():
            return {k: vae.encode(pixels[i : i + 1]).latent_dist for i, k in enumerate(order)}


def _normalized(config: Any, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents as the denoiser sees them (the inverse of :func:`~.vae.decode_latents`)."""
    import torch

    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
        return (latents - mean_t) * float(config.scaling_factor) / std_t
    shift = getattr(config, "shift_factor", None)
    return (latents - float(shift or 0.0)) * float(config.scaling_factor)


@contextlib.contextmanager
def vae_dtype_kept(vae: Any) -> Iterator[None]:
    """Put ``vae`` back in its dtype after the block: diffusers' SDXL inpainting encodes
    with the VAE in float32 and casts it back to the prompt's dtype, the float16 the
    worker's VAE overflows in."""
    dtype = vae.dtype
    try:
        yield
    finally:
        if vae.dtype != dtype:
            vae.to(dtype=dtype)


def sharing(pipeline_class: type, base: Any) -> Any:
    """A ``pipeline_class`` made of ``base``'s modules (the same objects) and its config.

    Not diffusers' ``from_pipe``: that ends with ``to(dtype=...)`` on the new pipeline,
    float32 when no dtype is given, which casts the shared modules in place (a FLUX.1
    transformer doubles to 48 GB; CUDA graphs captured on the old weights then read freed
    memory), and one dtype would not fit anyway: the VAE runs in another dtype than the
    denoiser. Components the class takes that ``base`` lacks stay at their defaults.
    """
    accepted = inspect.signature(pipeline_class.__init__).parameters  # type: ignore[misc]
    given = {**{k: v for k, v in base.config.items() if not k.startswith("_")}, **base.components}
    return pipeline_class(**{k: v for k, v in given.items() if k in accepted})


def _decoded(requests: Sequence[Any], indices: set[int]) -> dict[int, tuple[Image.Image, Image.Image | None]]:
    """Each request's start image (RGB) and mask (L), resized to its size, decoded once."""
    from PIL import Image

    out = {}
    for k in indices:
        request = requests[k]
        size = (request.width, request.height)
        image = decode_image_input(request.image).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        mask = None
        if request.mask is not None:
            mask = decode_image_input(request.mask).convert("L").resize(size, Image.Resampling.BILINEAR)
        out[k] = (image, mask)
    return out

"""Cheap previews of latents during denoising, as uint8 ``(B, 3, h, w)`` tensors on the latents' device.

Two kinds:

:class:`LinearPreview`
    Each RGB pixel is a fixed linear mix of the 4 latent channels plus a bias (the SDXL
    factors ComfyUI and others use), at latent resolution (1/8 of the image), upscaled 2x
    by pixel repetition. Needs no weights; costs one tiny matmul.

:class:`TaesdPreview`
    Decodes with an ``AutoencoderTiny`` of the family's latent space (TAESD-XL
    ``madebyollin/taesdxl``, TAEF1 ``taef1``, TAESD3 ``taesd3``): a recognisable
    image at full resolution for about 5 % of the VAE's cost, then area-downscaled so the
    longest side is at most ``max_side`` pixels (previews travel to the browser often).

Both know their output size without running (:meth:`size`), so a rank that has no image
of its own can still take part in the preview gather with a correctly shaped empty batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = [
    "LinearPreview",
    "Previewer",
    "TaesdPreview",
    "make_previewer",
    "to_uint8",
]

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] (diffusers' convention) to uint8 in [0, 255], on their device.

    Same arithmetic as diffusers' ``VaeImageProcessor.postprocess`` for PIL output:
    ``round(clamp(x / 2 + 0.5, 0, 1) * 255)``.
    """
    import torch

    return (images.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)


class Previewer(Protocol):
    """Turns a batch of latents into a batch of small uint8 RGB images."""

    def size(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        """``(height, width)`` of the previews of latents of this size."""
        ...

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` latents -> ``(B, 3, H, W)`` uint8 previews on the same device."""
        ...


class LinearPreview:
    """Latent-to-RGB by a family's fixed linear factors (:attr:`Family.latent_rgb
    <gridgen.diffusion.families.Family.latent_rgb>`); ``upscale`` repeats pixels (default 2x).

    ``factors`` has one ``(r, g, b)`` row per latent channel (4 for SDXL, 16 for FLUX.1 and SD3).
    """

    def __init__(
        self,
        factors: Sequence[tuple[float, float, float]],
        bias: tuple[float, float, float],
        upscale: int = 2,
    ) -> None:
        if upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        self.upscale = upscale
        self.factors, self.bias = tuple(factors), bias
        self._weights: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def size(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        return latent_height * self.upscale, latent_width * self.upscale

    def _factors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if device not in self._weights:
            self._weights[device] = (
                torch.tensor(self.factors, dtype=torch.float32, device=device),
                torch.tensor(self.bias, dtype=torch.float32, device=device),
            )
        return self._weights[device]

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        import torch

        factors, bias = self._factors(latents.device)
        rgb = torch.einsum("bchw,cr->brhw", latents.float(), factors) + bias.view(1, 3, 1, 1)
        out = to_uint8(rgb)
        if self.upscale > 1:
            out = out.repeat_interleave(self.upscale, dim=2).repeat_interleave(self.upscale, dim=3)
        return out


class TaesdPreview:
    """Decode with an ``AutoencoderTiny``; downscale so the longest side is at most ``max_side``."""

    def __init__(self, decoder: Any, max_side: int = 512) -> None:
        self.decoder = decoder
        self.max_side = max_side
        config = decoder.config
        self._factor = int(config.upsampling_scaling_factor) ** (
            len(config.decoder_block_out_channels) - 1
        )
        self._scaling = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        self._shift = float(getattr(config, "shift_factor", 0.0) or 0.0)

    def size(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        height, width = latent_height * self._factor, latent_width * self._factor
        longest = max(height, width)
        if longest <= self.max_side:
            return height, width
        scale = self.max_side / longest
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        dtype = next(self.decoder.parameters()).dtype
        with torch.inference_mode():
            # as diffusers' pipelines decode with it: latents / scaling_factor + shift_factor
            scaled = latents.to(dtype) / self._scaling + self._shift
            decoded = self.decoder.decode(scaled, return_dict=False)[0]
            height, width = self.size(latents.shape[-2], latents.shape[-1])
            if decoded.shape[-2:] != (height, width):
                decoded = F.interpolate(decoded.float(), size=(height, width), mode="area")
            return to_uint8(decoded)


def make_previewer(
    mode: str | None, preview_model: str | None, latent_rgb: Any, load_decoder: Callable[[str | None], Any]
) -> Previewer | None:
    """The previewer of ``setup(preview=mode)``: ``"auto"`` is TAESD when a ``preview_model``
    is given, else linear; ``load_decoder(preview_model)`` loads the TAESD decoder."""
    if mode == "auto":
        mode = "taesd" if preview_model is not None else "linear"
    if mode == "taesd":
        return TaesdPreview(load_decoder(preview_model))
    if mode == "linear":
        factors, bias = latent_rgb
        return LinearPreview(factors=factors, bias=bias)
    return None

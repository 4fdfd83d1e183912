"""Decoding latents (SDXL, FLUX.1, SD3.5) to uint8 images with the pipeline's VAE, in calls of chosen sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .preview import to_uint8

if TYPE_CHECKING:
    import torch

__all__ = ["decode_latents"]


def decode_latents(vae: Any, latents: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """VAE-decode on the latents' device (as diffusers' pipelines do), to uint8 there.

    ``sizes`` are the rows of each VAE call, in order (their sum may exceed the latents'
    rows: the last call is then padded with copies of its first row, dropped after). A
    compiled or graphed VAE is fastest at batch sizes it has already run.
    """
    import torch

    config = vae.config
    latents = latents.to(dtype=vae.dtype)
    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        if shift is not None:  # FLUX.1, SD3: latents were shifted before scaling
            latents = latents + shift
    count, start, chunks = latents.shape[0], 0, []
    with torch.inference_mode():
        for rows in sizes:
            chunk = latents[start : start + rows]
            if chunk.shape[0] < rows:
                chunk = torch.cat([chunk, chunk[:1].expand(rows - chunk.shape[0], -1, -1, -1)])
            decoded = to_uint8(vae.decode(chunk, return_dict=False)[0])
            chunks.append(decoded[: count - start])
            start += rows
    return torch.cat(chunks)

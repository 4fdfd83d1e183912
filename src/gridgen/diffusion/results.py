"""What a diffusion worker returns, as JSON models: the result, its timings and the streamed
previews. The same for every family (the request models are each family's own)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

from ..images import EncodedImage, image_data_url, sniff

__all__ = ["GenerateResult", "PreviewEvent", "Timings", "image_to_data_url"]

class Timings(BaseModel):
    """Seconds spent, measured on rank 0. ``setup`` is the worker's one-off setup time, on
    the first result after (re)starting only; ``None`` on every later one."""

    setup: float | None = None
    denoise: float
    decode: float
    gather: float
    encode: float
    total: float


class GenerateResult(BaseModel):
    """A generation result as JSON: images as ``data:`` URLs (see :meth:`from_worker`)."""

    grid: str | None = None
    images: list[str] = Field(default_factory=list)
    seeds: list[int]
    width: int
    height: int
    num_images: int
    timings: Timings

    @classmethod
    def from_worker(cls, result: Mapping[str, Any]) -> GenerateResult:
        """Convert a diffusion worker's result dict (encoded images or PIL images) to JSON form."""
        grid = result.get("grid")
        return cls(
            grid=image_to_data_url(grid) if grid is not None else None,
            images=[image_to_data_url(image) for image in result.get("images", [])],
            seeds=list(result["seeds"]),
            width=int(result["width"]),
            height=int(result["height"]),
            num_images=int(result["num_images"]),
            timings=Timings.model_validate(result["timings"]),
        )


class PreviewEvent(BaseModel):
    """One streamed progress event; ``preview_image`` is a ``data:`` URL, absent without previews."""

    step: int
    total_steps: int
    progress: float
    preview_image: str | None = None


def image_to_data_url(image: Any) -> str:
    """A ``data:image/...;base64,`` URL for an EncodedImage, raw PNG/JPEG/WebP bytes, or a
    PIL image (see :func:`gridgen.images.image_data_url`)."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = sniff(bytes(image))
    if not isinstance(image, EncodedImage | Image.Image):
        raise TypeError(f"not an image: {type(image).__name__}")
    return image_data_url(image)

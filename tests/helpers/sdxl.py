"""Helpers shared by the SDXL tests (a plain module: conftest names collide between folders)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

SMALL: dict[str, Any] = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 4}
"""The request size the tests use: 64x64 (latents 8x8), 4 steps."""


def pixels(image: Any) -> np.ndarray[Any, Any]:
    """An image as a uint8 HxWx3 array: PIL images, or encoded images (``.data`` bytes)."""
    if hasattr(image, "data") and isinstance(image.data, bytes):
        image = Image.open(io.BytesIO(image.data))
    assert isinstance(image, Image.Image), type(image)
    return np.asarray(image.convert("RGB"))


def tile(
    grid: Any, index: int, cols: int, size: tuple[int, int] = (64, 64)
) -> np.ndarray[Any, Any]:
    """Cell ``index`` of a grid without padding, as an array."""
    width, height = size
    row, col = divmod(index, cols)
    return pixels(grid)[row * height : (row + 1) * height, col * width : (col + 1) * width]


# Three requests that merge (same size, steps and guidance) but differ in everything else.
A: dict[str, Any] = {**SMALL, "prompt": "a red cube", "num_images": 2, "seed": 5, "output": "both"}
B: dict[str, Any] = {
    **SMALL, "prompt": "a blue sphere", "negative_prompt": "blurry", "num_images": 1, "seed": 70,
    "output": "images", "image_format": "jpeg",
}
C: dict[str, Any] = {**SMALL, "prompt": "a green cone", "num_images": 3, "seed": 5, "output": "images"}


def arrays(result: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    """A result's separate images as arrays."""
    return [pixels(image) for image in result["images"]]


def close(a: list[np.ndarray[Any, Any]], b: list[np.ndarray[Any, Any]], jpeg: bool = False) -> None:
    """The same images up to float rounding (another batch size): at most one grey level
    (JPEG-encoded ones: within half a grey level on average)."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        diff = np.abs(x.astype(int) - y.astype(int))
        if jpeg:
            assert diff.mean() < 0.5, f"image {i}: mean {diff.mean()}"
        else:
            assert diff.max() <= 1 and diff.mean() < 0.01, f"image {i}: max {diff.max()}"

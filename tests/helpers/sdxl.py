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

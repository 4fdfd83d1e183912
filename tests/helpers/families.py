"""Helpers for the FLUX.1 / SD3.5 tests (a plain module: conftest names collide between folders)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image

MODELS = ("tiny-flux", "tiny-sd3")

SMALL: dict[str, Any] = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 3}
"""64x64 (latents 8x8, 4x4 patches), 3 steps: well under a second per image on CPU."""


def requests(model: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Three requests that merge (same size, steps, guidance) but differ in everything else;
    SD3.5 gets a negative prompt in the second (FLUX.1 refuses one)."""
    a = {**SMALL, "prompt": "a red cube", "num_images": 2, "seed": 5, "output": "both"}
    b = {**SMALL, "prompt": "a blue sphere", "num_images": 1, "seed": 70, "output": "images"}
    c = {**SMALL, "prompt": "a green cone", "num_images": 2, "seed": 5, "output": "images"}
    if model == "tiny-sd3":
        b["negative_prompt"] = "blurry"
    return a, b, c


def pixels(image: Any) -> np.ndarray[Any, Any]:
    """An image as a uint8 HxWx3 array: PIL images, or encoded images (``.data`` bytes)."""
    if hasattr(image, "data") and isinstance(image.data, bytes):
        image = Image.open(io.BytesIO(image.data))
    assert isinstance(image, Image.Image), type(image)
    return np.asarray(image.convert("RGB"))


def arrays(result: dict[str, Any]) -> list[np.ndarray[Any, Any]]:
    return [pixels(image) for image in result["images"]]


def close(a: list[np.ndarray[Any, Any]], b: list[np.ndarray[Any, Any]]) -> None:
    """The same images up to float rounding (another batch size): at most one grey level."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        diff = np.abs(x.astype(int) - y.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, f"image {i}: max {diff.max()}"


def grid_shape(n: int, cell: int) -> tuple[int, int]:
    """(width, height) of a grid of ``n`` square cells of side ``cell``."""
    cols = math.ceil(math.sqrt(n))
    return cols * cell, math.ceil(n / cols) * cell


def tile(grid: np.ndarray[Any, Any], index: int, n: int, cell: int = 64) -> np.ndarray[Any, Any]:
    cols = math.ceil(math.sqrt(n))
    row, col = divmod(index, cols)
    return grid[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]


def fp8_on_cpu(monkeypatch: Any) -> None:
    """Let torchao's float8 quantization run on this CPU machine: its hardware check is the one
    part that cannot run here (no float8 GPU), so it is bypassed; the rest runs for real."""
    monkeypatch.setenv("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    import torchao.float8.inference
    import torchao.quantization.quant_api

    for module in (torchao.float8.inference, torchao.quantization.quant_api):
        monkeypatch.setattr(module, "_check_hardware_support", lambda granularity: None)

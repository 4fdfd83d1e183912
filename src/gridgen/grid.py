"""``make_grid``: lay out up to 64 equally sized images in one PIL image.

Pure PIL/numpy (torch only when tensors are passed); no torchvision.

>>> from PIL import Image
>>> tiles = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(5)]
>>> make_grid(tiles).size          # 5 images -> 3 columns x 2 rows
(192, 128)
>>> make_grid(tiles, cols=5, padding=2).size
(332, 68)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image, ImageColor

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_GRID_IMAGES", "GridInput", "make_grid"]

MAX_GRID_IMAGES = 64
"""The most images one grid takes."""

GridInput = Union["Image.Image", "torch.Tensor", "np.ndarray[Any, Any]"]
"""One image: a PIL image, a CHW tensor or an HWC (or HW) numpy array."""

Color = tuple[int, ...] | int | str

_MODES_BY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def _grid_shape(n: int, cols: int | None, rows: int | None) -> tuple[int, int]:
    """Return ``(cols, rows)`` for ``n`` images; the default is the most nearly square layout."""
    for name, value in (("cols", cols), ("rows", rows)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cols is None and rows is None:
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
    elif cols is None:
        assert rows is not None
        cols = math.ceil(n / rows)
    elif rows is None:
        rows = math.ceil(n / cols)
    if cols * rows < n:
        raise ValueError(
            f"a grid of {cols} cols x {rows} rows holds {cols * rows} images, but {n} were given"
        )
    return cols, rows


def _float_to_uint8(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Map floats in [0, 1] to uint8 (values outside are clipped), rounding like diffusers does."""
    clipped = np.clip(np.nan_to_num(array.astype(np.float32, copy=False)), 0.0, 1.0)
    out: np.ndarray[Any, Any] = np.rint(clipped * 255.0).astype(np.uint8)
    return out


def _hwc_to_pil(array: np.ndarray[Any, Any], index: int) -> Image.Image:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _MODES_BY_CHANNELS:
        raise ValueError(
            f"image {index}: expected an HWC array with 1, 3 or 4 channels, got shape {tuple(array.shape)}"
        )
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _float_to_uint8(array)
    else:
        raise ValueError(
            f"image {index}: expected uint8 or float pixels in [0, 1], got dtype {array.dtype}"
        )
    pixels = np.ascontiguousarray(pixels)
    if pixels.shape[2] == 1:
        return Image.fromarray(pixels[:, :, 0], mode="L")
    return Image.fromarray(pixels, mode=_MODES_BY_CHANNELS[pixels.shape[2]])


def _tensor_to_pil(tensor: torch.Tensor, index: int) -> Image.Image:
    import torch

    if tensor.ndim != 3 or tensor.shape[0] not in _MODES_BY_CHANNELS:
        raise ValueError(
            f"image {index}: expected a CHW tensor with 1, 3 or 4 channels, got shape {tuple(tensor.shape)}"
        )
    tensor = tensor.detach()
    if tensor.dtype == torch.uint8:
        hwc = tensor.permute(1, 2, 0).cpu().numpy()
    elif tensor.is_floating_point():
        hwc = _float_to_uint8(tensor.permute(1, 2, 0).float().cpu().numpy())
    else:
        raise ValueError(
            f"image {index}: expected uint8 or float pixels in [0, 1], got dtype {tensor.dtype}"
        )
    return _hwc_to_pil(hwc, index)


def _to_pil(item: Any, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        return _hwc_to_pil(item, index)
    if type(item).__module__.startswith("torch"):
        return _tensor_to_pil(item, index)
    raise TypeError(
        f"image {index}: expected a PIL image, a CHW tensor or an HWC numpy array, got {type(item).__name__}"
    )


def _as_list(images: Any) -> list[Any]:
    """Split a batch (BCHW tensor, BHWC array) into images; pass sequences through."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(
                f"a numpy batch must be BHWC (4 dimensions), got shape {tuple(images.shape)}"
            )
        return list(images)
    if type(images).__module__.startswith("torch") and hasattr(images, "ndim"):
        if images.ndim != 4:
            raise ValueError(
                f"a tensor batch must be BCHW (4 dimensions), got shape {tuple(images.shape)}"
            )
        return list(images.unbind(0))
    if isinstance(images, Image.Image) or not isinstance(images, Sequence):
        raise TypeError(
            "images must be a list of images (PIL, CHW tensors or HWC arrays) or a BCHW tensor, "
            f"got {type(images).__name__}"
        )
    return list(images)


def _fill_color(background: Color, mode: str) -> float | tuple[int, ...] | str:
    if isinstance(background, str):
        return ImageColor.getcolor(background, mode)
    if isinstance(background, int):
        background = (background, background, background)
    values = tuple(int(v) for v in background)
    if mode == "L":
        if len(values) == 1:
            return values[0]
        r, g, b = values[:3]
        return round((r * 299 + g * 587 + b * 114) / 1000)
    if mode == "RGBA" and len(values) == 3:
        return (*values, 255)
    if mode == "RGB" and len(values) == 4:
        return values[:3]
    return values


def make_grid(
    images: Sequence[GridInput] | torch.Tensor | np.ndarray[Any, Any],
    cols: int | None = None,
    rows: int | None = None,
    padding: int = 0,
    background: Color = (0, 0, 0),
) -> Image.Image:
    """Lay out ``images`` left to right, top to bottom, in one PIL image.

    Args:
        images: 1 to 64 images of one size and one mode: a list of PIL images,
            CHW tensors or HWC (or HW) numpy arrays (the kinds may be mixed),
            or a single BCHW tensor / BHWC array. Pixels are uint8, or floats in
            [0, 1] (clipped). 1, 3 and 4 channels give modes L, RGB and RGBA.
        cols: number of columns. Default: ``ceil(sqrt(n))`` (the most nearly
            square layout), or ``ceil(n / rows)`` when ``rows`` is given.
        rows: number of rows. Default: ``ceil(n / cols)``.
        padding: pixels of ``background`` between cells and around the border.
        background: color of the padding and of empty cells: an RGB(A) tuple,
            a grey level or a PIL color name.

    Returns:
        A new image of size ``(cols * w + (cols + 1) * padding,
        rows * h + (rows + 1) * padding)`` in the images' mode.

    Raises:
        ValueError: no images, more than 64, images of different sizes or modes
            (the message names the image and both sizes), a bad array shape or
            dtype, or ``cols * rows`` smaller than the number of images.
        TypeError: something that is not an image.
    """
    items = _as_list(images)
    n = len(items)
    if n == 0:
        raise ValueError("make_grid needs at least 1 image, got 0")
    if n > MAX_GRID_IMAGES:
        raise ValueError(f"make_grid takes at most {MAX_GRID_IMAGES} images, got {n}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    ncols, nrows = _grid_shape(n, cols, rows)

    tiles = [_to_pil(item, i) for i, item in enumerate(items)]
    _check_alike(tiles)
    width, height = tiles[0].size
    mode = tiles[0].mode
    grid = Image.new(
        mode,
        (ncols * width + (ncols + 1) * padding, nrows * height + (nrows + 1) * padding),
        _fill_color(background, mode),  # type: ignore[arg-type]
    )
    for i, tile in enumerate(tiles):
        row, col = divmod(i, ncols)
        grid.paste(tile, (padding + col * (width + padding), padding + row * (height + padding)))
    return grid


def _check_alike(tiles: Sequence[Image.Image]) -> None:
    """Raise ``ValueError`` naming the first tile whose size or mode differs from tile 0's."""
    width, height = tiles[0].size
    mode = tiles[0].mode
    for i, tile in enumerate(tiles[1:], start=1):
        if tile.size != (width, height):
            raise ValueError(
                f"image {i} is {tile.width}x{tile.height} (WxH) but image 0 is {width}x{height}; "
                "all images in a grid must have the same size"
            )
        if tile.mode != mode:
            raise ValueError(
                f"image {i} has mode {tile.mode} but image 0 has mode {mode}; "
                "all images in a grid must have the same mode"
            )

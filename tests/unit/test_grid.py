"""make_grid: layouts, input kinds, padding and the errors it raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gridgen.grid import make_grid


def _solid(i: int, size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, (i * 10 % 256, 255 - i, 7))


@pytest.mark.parametrize(
    ("n", "cols", "rows"),
    [(1, 1, 1), (2, 2, 1), (3, 2, 2), (4, 2, 2), (5, 3, 2), (7, 3, 3), (10, 4, 3), (64, 8, 8)],
)
def test_default_layout_is_most_nearly_square(n: int, cols: int, rows: int) -> None:
    grid = make_grid([_solid(i) for i in range(n)])
    assert grid.size == (cols * 8, rows * 6)


def test_tiles_are_placed_left_to_right_top_to_bottom_and_empty_cells_get_background() -> None:
    grid = make_grid([_solid(i) for i in range(5)], background=(1, 2, 3))
    for i in range(5):
        row, col = divmod(i, 3)
        assert grid.getpixel((col * 8 + 4, row * 6 + 3)) == _solid(i).getpixel((0, 0))
    assert grid.getpixel((2 * 8 + 4, 6 + 3)) == (1, 2, 3)


def test_explicit_cols_rows_and_padding() -> None:
    grid = make_grid([_solid(i) for i in range(4)], cols=4, padding=2, background=(9, 9, 9))
    assert grid.size == (4 * 8 + 5 * 2, 6 + 2 * 2)
    assert grid.getpixel((0, 0)) == (9, 9, 9)
    assert grid.getpixel((2, 2)) == _solid(0).getpixel((0, 0))
    assert grid.getpixel((2 + 8 + 2, 2)) == _solid(1).getpixel((0, 0))
    assert make_grid([_solid(i) for i in range(4)], rows=1).size == (32, 6)
    assert make_grid([_solid(i) for i in range(5)], rows=2).size == (24, 12)


def test_tensor_and_array_inputs_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    batch = torch.rand(3, 3, 6, 8, generator=gen)
    as_u8 = (batch * 255).round().to(torch.uint8)
    from_batch = make_grid(batch)
    from_list = make_grid(list(batch))
    from_u8 = make_grid(as_u8)
    from_np = make_grid([t.permute(1, 2, 0).numpy() for t in batch])
    from_np_u8 = make_grid([t.permute(1, 2, 0).numpy() for t in as_u8])
    ref = np.asarray(from_u8)
    assert from_batch.mode == "RGB" and from_batch.size == (16, 12)
    for other in (from_batch, from_list, from_np, from_np_u8):
        assert np.array_equal(np.asarray(other), ref)


def test_float_values_are_clipped_and_grey_and_rgba_modes_work() -> None:
    grid = make_grid([np.full((4, 4, 3), 2.0), np.full((4, 4, 3), -1.0)])
    assert grid.getpixel((0, 0)) == (255, 255, 255)
    assert grid.getpixel((4, 0)) == (0, 0, 0)
    grey = make_grid([np.zeros((4, 4), np.uint8)] * 3, background=(255, 255, 255))
    assert grey.mode == "L" and grey.getpixel((7, 7)) == 255
    rgba = make_grid(torch.zeros(2, 4, 4, 4, dtype=torch.uint8), cols=3, background=(1, 2, 3))
    assert rgba.mode == "RGBA" and rgba.getpixel((9, 0)) == (1, 2, 3, 255)


def test_mismatched_sizes_name_the_image_and_both_sizes() -> None:
    images = [_solid(0), _solid(1), _solid(2, size=(8, 7))]
    with pytest.raises(ValueError, match=r"image 2 is 8x7 .* image 0 is 8x6"):
        make_grid(images)


def test_mismatched_modes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"image 1 has mode L but image 0 has mode RGB"):
        make_grid([_solid(0), Image.new("L", (8, 6))])


def test_grid_too_small_and_image_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"2 cols x 2 rows holds 4 images, but 5"):
        make_grid([_solid(i) for i in range(5)], cols=2, rows=2)
    with pytest.raises(ValueError, match="at least 1"):
        make_grid([])
    with pytest.raises(ValueError, match="at most 64"):
        make_grid([_solid(0)] * 65)
    with pytest.raises(ValueError, match="cols must be a positive integer"):
        make_grid([_solid(0)], cols=0)
    with pytest.raises(ValueError, match="padding"):
        make_grid([_solid(0)], padding=-1)


def test_bad_shapes_and_types_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"image 0: expected a CHW tensor"):
        make_grid([torch.zeros(2, 4, 4)])
    with pytest.raises(ValueError, match="BCHW"):
        make_grid(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="dtype int32"):
        make_grid([np.zeros((4, 4, 3), np.int32)])
    with pytest.raises(TypeError, match="image 1"):
        make_grid([_solid(0), "not an image"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        make_grid(_solid(0))  # type: ignore[arg-type]

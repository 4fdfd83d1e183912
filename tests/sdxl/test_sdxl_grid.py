"""Grids for 1..7 images over 2 ranks: layout, order, seeds, formats, defaults and timings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from helpers.sdxl import SMALL, pixels, tile


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_grid_of_n_images_over_two_ranks(sdxl2: Any, n: int) -> None:
    result = sdxl2.invoke({**SMALL, "num_images": n, "seed": 40, "output": "both"})
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert result["num_images"] == n
    assert result["seeds"] == [40 + i for i in range(n)]
    assert (result["width"], result["height"]) == (64, 64)
    assert result["grid"].size == (cols * 64, rows * 64)
    assert len(result["images"]) == n
    for i, image in enumerate(result["images"]):
        assert image.size == (64, 64)
        assert np.array_equal(tile(result["grid"], i, cols), pixels(image)), f"cell {i}"
    # the strided split must not leave padding images in the grid: every cell is distinct
    cells = {tile(result["grid"], i, cols).tobytes() for i in range(n)}
    assert len(cells) == n


def test_num_images_defaults_to_the_world_size(sdxl2: Any) -> None:
    result = sdxl2.invoke({**SMALL, "seed": 1})
    assert result["num_images"] == 2
    assert result["grid"].size == (128, 64)
    assert "images" not in result  # output="grid" is the default


def test_an_absent_seed_is_drawn_once_reported_and_reproducible(sdxl2: Any) -> None:
    first = sdxl2.invoke({**SMALL, "num_images": 3})
    seed = first["seeds"][0]
    assert first["seeds"] == [seed, seed + 1, seed + 2]  # both ranks used the same draw
    assert 0 <= seed < 2**53
    again = sdxl2.invoke({**SMALL, "num_images": 3, "seed": seed})
    assert np.abs(pixels(again["grid"]).astype(int) - pixels(first["grid"])).max() <= 1
    other = sdxl2.invoke({**SMALL, "num_images": 3})
    assert other["seeds"][0] != seed


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")]
)
def test_image_format(sdxl2: Any, fmt: str, pil_format: str) -> None:
    result = sdxl2.invoke(
        {**SMALL, "num_images": 2, "seed": 3, "image_format": fmt, "output": "images"}
    )
    assert "grid" not in result
    assert [image.format for image in result["images"]] == [pil_format, pil_format]


def test_direct_worker_returns_encoded_images_and_timings(direct: Any) -> None:
    result = direct(**SMALL, num_images=2, seed=9, image_format="jpeg", output="both")
    assert result["grid"].format == "jpeg"
    assert result["grid"].data[:2] == b"\xff\xd8"
    assert [image.format for image in result["images"]] == ["jpeg", "jpeg"]
    timings = result["timings"]
    assert set(timings) == {"setup", "text_encode", "denoise", "decode", "gather", "encode", "total"}
    assert all(value >= 0 for value in timings.values() if value is not None)
    assert timings["text_encode"] <= timings["denoise"]  # text encoding is part of the denoise phase
    assert result["new_shapes"] == 0  # no CUDA graphs or compiles on CPU
    parts = timings["denoise"] + timings["decode"] + timings["gather"] + timings["encode"]
    assert parts <= timings["total"] + 1e-3


def test_setup_time_comes_with_the_first_result_only(tiny_cache: str) -> None:
    from gridgen.sdxl import SDXLWorker

    worker = SDXLWorker()
    worker.setup(model="tiny")
    first, second = (worker(**SMALL, seed=1)["timings"] for _ in range(2))
    assert first["setup"] > 0
    assert second["setup"] is None

"""Streaming previews: when they come, what they carry, their grid, and the two preview kinds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from gridgen.diffusion.families import SDXL
from gridgen.diffusion.preview import LinearPreview, TaesdPreview
from gridgen.sdxl import SDXLWorker

from helpers.sdxl import SMALL, pixels


def _split(items: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    *events, result = items
    return events, result


def test_previews_every_k_steps_over_two_ranks(sdxl2: Any) -> None:
    items = list(sdxl2.stream({**SMALL, "num_images": 3, "seed": 2, "preview_every": 2}))
    events, result = _split(items)
    assert [e["step"] for e in events] == [2, 4]
    assert [e["total_steps"] for e in events] == [4, 4]
    assert [e["progress"] for e in events] == [0.5, 1.0]
    for event in events:
        # 3 previews in a 2x2 grid; linear previews are latent size (8x8) upscaled 2x
        assert event["preview_image"].size == (32, 32)
        assert set(event) == {"step", "total_steps", "progress", "preview_image"}
    assert not np.array_equal(
        pixels(events[0]["preview_image"]), pixels(events[1]["preview_image"])
    )
    assert result["grid"].size == (128, 128)
    assert result["seeds"] == [2, 3, 4]


def test_steps_that_are_not_a_multiple_and_previews_off(sdxl2: Any) -> None:
    events, _ = _split(list(sdxl2.stream({**SMALL, "num_inference_steps": 5, "preview_every": 2})))
    assert [e["step"] for e in events] == [2, 4]
    assert [e["total_steps"] for e in events] == [5, 5]
    events, result = _split(list(sdxl2.stream({**SMALL, "preview_every": 0})))
    assert events == []
    assert "grid" in result


def test_a_rank_without_images_still_joins_the_preview_gathers(sdxl2: Any) -> None:
    # one image on two ranks: rank 1 has nothing to denoise but must join every collective
    events, result = _split(list(sdxl2.stream({**SMALL, "num_images": 1, "preview_every": 1})))
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert all(e["preview_image"].size == (16, 16) for e in events)
    assert result["grid"].size == (64, 64)
    assert sdxl2.invoke({**SMALL, "num_images": 2})["num_images"] == 2  # group still in step


@pytest.fixture(scope="module")
def taesd_worker(tiny_cache: str) -> Iterator[SDXLWorker]:
    worker = SDXLWorker()
    worker.setup(model="tiny", preview="taesd")  # the tiny model's own tiny AutoencoderTiny
    yield worker


def test_taesd_previews_are_decoded_at_image_size(taesd_worker: SDXLWorker) -> None:
    assert isinstance(taesd_worker.previewer, TaesdPreview)
    taesd_worker.streamed.clear()
    result = taesd_worker(streaming=True, **SMALL, num_images=2, preview_every=2)
    events = taesd_worker.streamed
    assert [e["step"] for e in events] == [2, 4]
    assert all(e["preview_image"].size == (128, 64) for e in events)  # 2 x 64x64 decodes
    assert result["num_images"] == 2


def test_streaming_without_previewer_sends_progress_only(tiny_cache: str) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny", preview=None)
    worker(streaming=True, **SMALL, num_images=1, preview_every=2)
    assert worker.streamed == [
        {"step": 2, "total_steps": 4, "progress": 0.5},
        {"step": 4, "total_steps": 4, "progress": 1.0},
    ]
    worker.streamed.clear()
    worker(**SMALL, num_images=1, preview_every=2)  # not streaming: nothing is sent
    assert worker.streamed == []


def test_linear_preview_uses_the_sdxl_factors() -> None:
    preview = LinearPreview(*SDXL.latent_rgb)
    latents = torch.zeros(2, 4, 3, 5)
    latents[1, 0] = 1.0  # channel 0 only
    out = preview(latents)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 6, 10)
    assert out[0, :, 0, 0].tolist() == [141, 125, 127]  # bias only: (b + 1) / 2 * 255
    assert out[1, :, 0, 0].tolist() == [188, 179, 183]  # (f0 + b + 1) / 2 * 255
    assert preview.size(3, 5) == (6, 10)
    assert LinearPreview(*SDXL.latent_rgb, upscale=1)(latents).shape == (2, 3, 3, 5)


def test_taesd_preview_size_is_capped(taesd_worker: SDXLWorker) -> None:
    assert isinstance(taesd_worker.previewer, TaesdPreview)
    small = TaesdPreview(taesd_worker.previewer.decoder, max_side=32)
    assert small.size(8, 16) == (16, 32)
    out = small(torch.randn(1, 4, 8, 16))
    assert out.shape == (1, 3, 16, 32) and out.dtype == torch.uint8

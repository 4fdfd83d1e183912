"""GenerateResult / PreviewEvent: the JSON forms the server and CLI send, images as data URLs."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from gridgen.diffusion.results import image_to_data_url
from gridgen.sdxl import GenerateResult, PreviewEvent

from helpers.sdxl import SMALL, pixels


def _decode(url: str) -> tuple[str, Image.Image]:
    header, _, payload = url.partition(",")
    return header, Image.open(io.BytesIO(base64.b64decode(payload)))


def test_from_a_direct_result_keeps_the_encoded_bytes(direct: Any) -> None:
    raw = direct(**SMALL, num_images=2, seed=4, image_format="webp", output="both")
    result = GenerateResult.from_worker(raw)
    assert result.seeds == [4, 5] and result.num_images == 2
    assert (result.width, result.height) == (64, 64)
    assert result.timings.total == raw["timings"]["total"]
    assert result.grid is not None
    header, grid = _decode(result.grid)
    assert header == "data:image/webp;base64"
    assert result.grid.endswith(base64.b64encode(raw["grid"].data).decode())  # no re-encoding
    assert grid.size == (128, 64)
    assert len(result.images) == 2
    json_text = result.model_dump_json()
    assert GenerateResult.model_validate_json(json_text) == result


def test_from_a_runner_result_with_pil_images(sdxl2: Any) -> None:
    raw = sdxl2.invoke({**SMALL, "num_images": 1, "seed": 4, "output": "images"})
    result = GenerateResult.from_worker(raw)
    assert result.grid is None
    header, image = _decode(result.images[0])
    assert header == "data:image/png;base64"
    assert (pixels(image) == pixels(raw["images"][0])).all()


def test_data_urls_and_preview_events() -> None:
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    assert image_to_data_url(png.getvalue()).startswith("data:image/png;base64,iVBOR")
    with pytest.raises(TypeError, match="not an image"):
        image_to_data_url(3)
    event = PreviewEvent(step=5, total_steps=20, progress=0.25)
    assert event.model_dump() == {
        "step": 5,
        "total_steps": 20,
        "progress": 0.25,
        "preview_image": None,
    }

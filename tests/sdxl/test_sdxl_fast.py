"""setup(optimize=...): the graphed UNet path gives the eager path's images; deferred encoding."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

from gridgen.images import EncodedImage
from gridgen.sdxl import SDXLWorker
from gridgen.sdxl.fast import GraphedUNet, optimize_pipeline

REQUEST: dict[str, Any] = {
    "prompt": "a lighthouse", "num_images": 2, "width": 64, "height": 64,
    "num_inference_steps": 3, "seed": 7, "output": "images", "image_format": "png",
}


def _pixels(result: dict[str, Any]) -> list[np.ndarray]:
    return [np.asarray(image.open().convert("RGB")) for image in result["images"]]


def test_graphed_unet_path_matches_eager(tiny_cache: str) -> None:
    eager = SDXLWorker()
    eager.setup(model="tiny", optimize="none")
    fast = SDXLWorker()
    fast.setup(model="tiny", optimize="graphs")
    assert isinstance(fast.graphed_unet, GraphedUNet)
    assert eager.graphed_unet is None
    expected, got = eager(**REQUEST), fast(**REQUEST)
    for a, b in zip(_pixels(expected), _pixels(got), strict=True):
        np.testing.assert_array_equal(a, b)
    # the static-buffer path ran (one entry per CFG batch shape), without eager fallbacks
    assert len(fast.graphed_unet.entries) == 1 and fast.graphed_unet.fallbacks == 0


def test_auto_is_eager_on_cpu(tiny_cache: str) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny")
    assert worker.graphed_unet is None


def test_bad_mode_is_rejected(tiny_cache: str) -> None:
    with pytest.raises(ValueError, match="optimize must be"):
        optimize_pipeline(object(), "fastest", "cpu")  # type: ignore[arg-type]


def test_deferred_encoding_returns_a_future(tiny_cache: str) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny", defer_encoding=True, warmup=(1,), warmup_size=(64, 64))
    result = worker(**REQUEST)
    assert isinstance(result, concurrent.futures.Future)
    done = result.result(timeout=60)
    assert done["num_images"] == 2 and len(done["images"]) == 2
    assert done["timings"]["encode"] > 0  # the encoding ran, in the future's thread
    for image in done["images"]:  # and produced real image files of the requested size
        assert isinstance(image, EncodedImage)
        assert image.open().size == (done["width"], done["height"])
    worker.teardown()

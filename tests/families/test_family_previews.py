"""TAESD previews for FLUX.1 and SD3.5: an ``AutoencoderTiny`` of their 16-channel latent
space decodes each preview at image size; a decoder of another latent space is refused by
name before the model loads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gridgen.diffusion import worker_for
from gridgen.diffusion.builders import build_tiny_taesd, ensure_tiny_sdxl
from gridgen.diffusion.families import FLUX_DEV, FLUX_SCHNELL, SD3, SDXL
from gridgen.diffusion.models import load_preview_decoder
from gridgen.diffusion.preview import TaesdPreview, to_uint8

from helpers.families import MODELS, SMALL, pixels


def test_each_family_names_the_taesd_of_its_latent_space() -> None:
    assert {f.name: (f.preview_model, f.latent_channels) for f in (SDXL, FLUX_DEV, FLUX_SCHNELL, SD3)} == {
        "sdxl": ("madebyollin/taesdxl", 4),
        "flux-dev": ("madebyollin/taef1", 16),
        "flux-schnell": ("madebyollin/taef1", 16),
        "sd3": ("madebyollin/taesd3", 16),
    }


@pytest.mark.parametrize("model", MODELS)
def test_taesd_previews_are_decoded_at_image_size(model: str, family_cache: str) -> None:
    worker = worker_for(model)()
    worker.setup(model=model, preview="taesd")  # the tiny models' own 16-channel decoder
    assert isinstance(worker.previewer, TaesdPreview)
    assert worker.previewer.decoder.config.latent_channels == 16
    result = worker(streaming=True, **SMALL, num_images=2, preview_every=1)
    events = worker.streamed
    assert [e["step"] for e in events] == [1, 2, 3]
    # 2 images of 64x64 decoded at full size, side by side (linear previews would be 32x16)
    assert all(e["preview_image"].size == (128, 64) for e in events)
    assert not np.array_equal(pixels(events[0]["preview_image"]), pixels(events[-1]["preview_image"]))
    assert result["num_images"] == 2


def test_a_taesd_folder_of_another_latent_space_is_refused_before_the_model_loads(
    family_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdxl_taesd = str(ensure_tiny_sdxl() / "taesd")  # 4 latent channels
    worker = worker_for("tiny-flux")()
    monkeypatch.setattr("gridgen.diffusion.worker.load_family_pipeline", _must_not_load)
    with pytest.raises(
        ValueError,
        match=r"preview_model '.*taesd' decodes 4-channel latents; FLUX.1-dev's have 16 "
        r"\(its TAESD: 'madebyollin/taef1'\)",
    ):
        worker.setup(model="tiny-flux", preview="taesd", preview_model=sdxl_taesd)


def test_a_loaded_decoder_of_another_latent_space_is_refused(family_cache: str) -> None:
    # "tiny" is the tiny SDXL model's decoder, found by name (no config.json to read first)
    with pytest.raises(ValueError, match=r"'.*taesd' decodes 4-channel latents; Stable Diffusion 3.5's have 16"):
        load_preview_decoder("tiny", model="tiny-sd3")


def test_the_taesd_preview_scales_and_shifts_as_the_pipelines_decode() -> None:
    decoder: Any = build_tiny_taesd(16)
    decoder.register_to_config(scaling_factor=2.0, shift_factor=0.25)
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = to_uint8(decoder.decode(latents / 2.0 + 0.25, return_dict=False)[0])
        unshifted = to_uint8(decoder.decode(latents / 2.0, return_dict=False)[0])
    out = TaesdPreview(decoder)(latents)
    assert torch.equal(out, expected)
    assert not torch.equal(out, unshifted)


def _must_not_load(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the model loaded before the preview_model was checked")

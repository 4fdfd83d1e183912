"""The image-to-image and inpainting pipelines share the loaded modules as they are: no
module changes dtype or storage, whatever dtypes the worker gave them.

On a GPU a cast here was the whole failure: diffusers' ``from_pipe`` casts every shared
module to float32, so a FLUX.1 transformer doubled past the card's memory and SDXL's
CUDA graphs, captured on the float16 weights, read freed memory. Here the worker's
modules are put in bfloat16 (SDXL: only the VAE, as the GPU worker keeps it beside a
float16 UNet), which the CPU runs too, and each request must leave every parameter in its
dtype and, but for the VAE of SDXL's inpainting, where it was.

And the worker's own encode of the start image (once per image, in the VAE's dtype) gives
what diffusers' image-to-image pipeline gives when it encodes the image itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from gridgen import Batch
from gridgen.inputs import input_data_url

from helpers.families import SMALL, pixels

START = input_data_url(
    Image.fromarray((np.random.RandomState(1).rand(64, 64, 3) * 255).astype("uint8"))
)
MASK = input_data_url(
    Image.fromarray(np.kron(np.eye(2, dtype="uint8") * 255, np.ones((32, 32), "uint8")))
)
KINDS = {"img2img": {"image": START, "strength": 0.5}, "inpaint": {"image": START, "mask": MASK}}


def storage(pipeline: Any) -> dict[str, tuple[Any, int]]:
    """Each component's first parameter: its dtype and the address of its data."""
    out = {}
    for name, module in pipeline.components.items():
        first = next(iter(getattr(module, "parameters", lambda: iter(()))()), None)
        if first is not None:
            out[name] = (first.dtype, first.data_ptr())
    return out


@pytest.mark.parametrize("model", ["tiny", "tiny-flux", "tiny-sd3"])
def test_image_requests_leave_every_module_as_it_was(model: str, family_cache: str) -> None:
    import torch

    from gridgen.diffusion import worker_for

    worker = worker_for(model)()
    worker.setup(model=model)
    pipeline = worker.pipeline
    (pipeline.vae if model == "tiny" else pipeline).to(torch.bfloat16)
    before = storage(pipeline)
    assert before["vae"][0] == torch.bfloat16
    for kind, extra in KINDS.items():
        (result,) = worker.run_batch(Batch.of([{**SMALL, **extra, "seed": 1, "output": "images"}]))
        assert isinstance(result, dict), (kind, result.exception())
        after = storage(pipeline)
        assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}, kind
        # SDXL's inpainting pipeline encodes with the VAE in float32 and the worker casts it
        # back: new VAE storage there (nothing holds its old one); the rest must not move.
        moved = {k for k in before if after[k][1] != before[k][1]}
        assert moved <= ({"vae"} if (model, kind) == ("tiny", "inpaint") else set()), (kind, moved)
        assert pixels(result["images"][0]).std() > 0, kind


@pytest.mark.parametrize("model", ["tiny", "tiny-flux", "tiny-sd3"])
def test_image_to_image_gives_what_diffusers_own_pipeline_gives(model: str, family_cache: str) -> None:
    """The worker encodes the start image itself (once, in the VAE's dtype) and draws each
    row's sample with that row's generator: with float32 on CPU that is what diffusers'
    image-to-image pipeline makes from the image itself, within one grey level."""
    import torch
    from PIL import Image as PILImage

    from gridgen.diffusion import worker_for
    from gridgen.diffusion.conditioning import ImageInputs
    from gridgen.inputs import decode_image_input

    worker = worker_for(model)()
    worker.setup(model=model)
    guidance = 3.5
    request = {**SMALL, "image": START, "strength": 0.6, "num_images": 2, "seed": 5, "guidance_scale": guidance,
               "output": "images"}
    vae, encodes = worker.pipeline.vae, []
    encode = vae.encode
    vae.encode = lambda *args, **kwargs: encodes.append(1) or encode(*args, **kwargs)
    try:
        (result,) = worker.run_batch(Batch.of([request]))
    finally:
        del vae.encode
    assert len(encodes) == 1  # one start image, two rows: encoded once
    ours = [pixels(image).astype(int) for image in result["images"]]

    pipeline = ImageInputs.of(worker).pipeline("img2img")
    start = decode_image_input(START).convert("RGB").resize((64, 64), PILImage.Resampling.LANCZOS)
    # The worker's SDXL requests default to the negative prompt "" (encoded), where
    # diffusers' default None means zeros: ask diffusers for the same.
    extra: dict[str, Any] = {"width": 64, "height": 64} if model != "tiny" else {"negative_prompt": ""}
    theirs = pipeline(
        prompt=[SMALL["prompt"]] * 2, image=[start, start], strength=0.6, guidance_scale=guidance, num_images_per_prompt=1,
        num_inference_steps=SMALL["num_inference_steps"], output_type="np",
        generator=[torch.Generator("cpu").manual_seed(5 + i) for i in range(2)], **extra,
    ).images
    for got, want in zip(ours, theirs, strict=True):
        assert np.abs(got - (want * 255).round().astype(int)).max() <= 1

"""Edits through the official ``openai`` SDK, shared by the SDXL and FLUX.1 server tests:
image-to-image, and inpainting with OpenAI's mask (transparent means edit)."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
from PIL import Image

FAST = {"num_inference_steps": 4, "seed": 7}


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def start_png(seed: int = 1, size: tuple[int, int] = (64, 64)) -> bytes:
    noise = (np.random.RandomState(seed).rand(8, 8, 3) * 255).astype("uint8")
    return png(Image.fromarray(noise).resize(size, Image.Resampling.BILINEAR))


def decoded(b64: str) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def check_edit_without_mask(client: Any) -> None:
    """Two results of one start image, 64x64, each its own seed; the strength matters."""
    image = ("start.png", start_png(), "image/png")
    result = client.images.edit(image=image, prompt="a lighthouse", size="64x64", n=2,
                                extra_body={**FAST, "strength": 0.5})
    images = [decoded(d.b64_json) for d in result.data]
    assert [i.shape for i in images] == [(64, 64, 3)] * 2
    assert not np.array_equal(images[0], images[1])  # seeds 7 and 8
    again = client.images.edit(image=image, prompt="a lighthouse", size="64x64", n=1,
                               extra_body={**FAST, "strength": 1.0})
    assert not np.array_equal(decoded(again.data[0].b64_json), images[0])


def check_edit_with_mask(client: Any, url: str, key: str) -> None:
    """An RGBA mask, transparent where to edit, gives what ``/generate`` gives for the
    diffusers mask (white where to edit) at the same seed: the conventions are mapped."""
    start = start_png(2)
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (16, 16, 48, 48))  # transparent: repaint here
    result = client.images.edit(image=("start.png", start, "image/png"), mask=("mask.png", png(rgba), "image/png"),
                                prompt="a red door", size="64x64", n=1, extra_body=FAST)
    via_sdk = decoded(result.data[0].b64_json)
    white = Image.new("L", (64, 64), 0)
    white.paste(255, (16, 16, 48, 48))
    own = httpx.post(
        f"{url}/generate", headers={"Authorization": f"Bearer {key}"}, timeout=60,
        json={"prompt": "a red door", "width": 64, "height": 64, "num_images": 1, "output": "images",
              "image": "data:image/png;base64," + base64.b64encode(start).decode(),
              "mask": "data:image/png;base64," + base64.b64encode(png(white)).decode(), **FAST},
    )
    assert own.status_code == 200, own.text
    expected = np.asarray(Image.open(io.BytesIO(base64.b64decode(own.json()["images"][0].partition(",")[2]))).convert("RGB"))
    assert np.abs(via_sdk.astype(int) - expected.astype(int)).max() <= 1
    plain = client.images.edit(image=("start.png", start, "image/png"), prompt="a red door", size="64x64", n=1,
                               extra_body=FAST)
    assert not np.array_equal(decoded(plain.data[0].b64_json), via_sdk), "the mask made no difference"

"""Image-to-image and inpainting (issue 22) on two real gloo ranks, for SDXL, FLUX.1 and SD3.5
(tiny): merged requests with image inputs each get the images they get alone, previews
count the steps the strength keeps, strength 0 is the VAE round trip of the start image,
strength 1 and text-to-image, and a cancel seen on one rank.

One pair of rank processes per model runs every scenario (``scenarios``); a one-rank
worker built in the test process makes each request alone for the comparisons.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gridgen import Batch, Cancelled
from gridgen.inputs import input_data_url

from helpers.families import arrays, close
from helpers.gloo import on_ranks

MODELS = ("tiny", "tiny-flux", "tiny-sd3")
SMALL: dict[str, Any] = {"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 4}


def start_image(seed: int, size: tuple[int, int] = (64, 64)) -> str:
    """A smooth random RGB image (as a PNG data URL), not the request's size on purpose for
    seed 2 (the worker resizes it)."""
    noise = (np.random.RandomState(seed).rand(8, 8, 3) * 255).astype("uint8")
    return input_data_url(Image.fromarray(noise).resize(size, Image.Resampling.BILINEAR))


def box_mask(box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> str:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return input_data_url(mask)


IMAGES = {1: start_image(1), 2: start_image(2, (96, 80)), 3: start_image(3)}
MASK = box_mask((16, 16, 48, 48))


def image_requests() -> list[dict[str, Any]]:
    """Three image-to-image requests that merge (same kind and strength), differing in
    prompt, start image, seed, count and output."""
    return [
        {**SMALL, "prompt": "a red cube", "image": IMAGES[1], "strength": 0.5, "num_images": 2, "seed": 5,
         "output": "both", "preview_every": 1},
        {**SMALL, "prompt": "a blue sphere", "image": IMAGES[2], "strength": 0.5, "num_images": 1, "seed": 70,
         "output": "images"},
        {**SMALL, "prompt": "a green cone", "image": IMAGES[3], "strength": 0.5, "num_images": 2, "seed": 5,
         "output": "images"},
    ]


def inpaint_requests() -> list[dict[str, Any]]:
    return [
        {**SMALL, "image": IMAGES[1], "mask": MASK, "num_images": 2, "seed": 9, "output": "images"},
        {**SMALL, "prompt": "a dog", "image": IMAGES[3], "mask": box_mask((0, 0, 32, 64)), "num_images": 1,
         "seed": 11, "output": "images"},
    ]


def scenarios(rank: int, model: str) -> dict[str, Any]:
    """Runs on each rank; rank 0 reports what its results held."""
    from gridgen.diffusion import worker_for

    worker = worker_for(model)(rank=rank, world_size=2)
    worker.setup(model=model)
    out: dict[str, Any] = {}
    key = worker.batch_key
    out["keys_differ"] = len({
        key({**SMALL}), key({**SMALL, "image": IMAGES[1]}), key({**SMALL, "image": IMAGES[1], "strength": 0.3}),
        key({**SMALL, "image": IMAGES[1], "mask": MASK}),
    }) == 4 and key({**SMALL, "image": IMAGES[1]}) == key({**SMALL, "image": IMAGES[3], "seed": 1})

    merged = Batch.of(image_requests(), streaming=True)
    results = worker.run_batch(merged)
    out["merged"] = [arrays(r) if r else None for r in results]
    out["previews"] = [[(e["step"], e["total_steps"]) for e in item.streamed] for item in merged]
    out["inpaint"] = [arrays(r) if r else None for r in worker.run_batch(Batch.of(inpaint_requests()))]

    strength0 = {**SMALL, "image": IMAGES[1], "strength": 0.0, "num_images": 3, "seed": 1, "output": "images"}
    (result,) = worker.run_batch(Batch.of([strength0]))
    out["strength0"] = arrays(result) if result else None
    for name, extra in (("text", {}), ("s1_a", {"image": IMAGES[1], "strength": 1.0}),
                        ("s1_b", {"image": IMAGES[3], "strength": 1.0})):
        (result,) = worker.run_batch(Batch.of([{**SMALL, "num_images": 2, "seed": 3, "output": "images", **extra}]))
        out[name] = arrays(result) if result else None

    # only rank 1 sees the second request cancelled, at its second check: the others finish
    checks: list[int] = []

    def rank1_cancels_b(request_id: int) -> bool:
        checks.append(request_id)
        return rank == 1 and request_id == 1 and checks.count(1) >= 2

    a, b, c = image_requests()
    ra, rb, rc = worker.run_batch(Batch.of([a, b, c], is_cancelled=rank1_cancels_b))
    out["cancel_b"] = {
        "b_cancelled": isinstance(rb, concurrent.futures.Future) and isinstance(rb.exception(), Cancelled),
        "a": arrays(ra) if ra else None,
        "c": arrays(rc) if rc else None,
    }
    return out


@pytest.fixture(scope="module", params=MODELS)
def ranks(request: pytest.FixtureRequest, family_cache: str,
          tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    model = str(request.param)
    return model, on_ranks(scenarios, tmp_path_factory.mktemp("gloo"), model)


@pytest.fixture(scope="module")
def direct(family_cache: str) -> dict[str, Any]:
    """One worker per model built directly: one rank, no torch.distributed, no runner."""
    from gridgen.diffusion import worker_for

    workers: dict[str, Any] = {}
    for model in MODELS:
        workers[model] = worker_for(model)()
        workers[model].setup(model=model)
    return workers


def test_image_inputs_are_part_of_the_merge_key(ranks: tuple[str, list[dict[str, Any]]]) -> None:
    _, (zero, one) = ranks
    assert zero["keys_differ"] and one["keys_differ"]


def test_merged_image_requests_each_get_their_own_images(
    ranks: tuple[str, list[dict[str, Any]]], direct: dict[str, Any]
) -> None:
    model, (zero, one) = ranks
    assert one["merged"] == [None, None, None]
    alone = [arrays(direct[model](**request)) for request in image_requests()]
    for got, expected in zip(zero["merged"], alone, strict=True):
        close(got, expected)
    assert [len(images) for images in zero["merged"]] == [2, 1, 2]
    assert not np.array_equal(zero["merged"][0][0], zero["merged"][2][0]), "another start image and prompt"
    for got, expected in zip(zero["inpaint"], inpaint_requests(), strict=True):
        close(got, arrays(direct[model](**expected)))


def test_previews_count_the_steps_the_strength_keeps(ranks: tuple[str, list[dict[str, Any]]]) -> None:
    _, (zero, one) = ranks
    # strength 0.5 of 4 steps: the image pipelines run the last 2 (SDXL, FLUX.1 and SD3.5 alike)
    assert zero["previews"] == [[(1, 2), (2, 2)], [], []]
    assert one["previews"] == [[], [], []]


def test_strength_zero_is_the_start_image_through_the_vae(
    ranks: tuple[str, list[dict[str, Any]]], direct: dict[str, Any]
) -> None:
    import torch

    model, (zero, _) = ranks
    pipeline = direct[model].pipeline
    # the round trip computed here with diffusers' own parts: encode (the mode), decode
    start = Image.open(io.BytesIO(base64.b64decode(IMAGES[1].partition(",")[2]))).convert("RGB")
    with torch.inference_mode():
        pixels = pipeline.image_processor.preprocess(start, height=64, width=64)
        decoded = pipeline.vae.decode(pipeline.vae.encode(pixels).latent_dist.mode(), return_dict=False)[0]
    round_trip = np.asarray(pipeline.image_processor.postprocess(decoded, output_type="pil")[0])
    assert len(zero["strength0"]) == 3
    for image in zero["strength0"]:  # every seed: no noise at all
        diff = np.abs(image.astype(int) - round_trip.astype(int))
        assert diff.max() <= 1, diff.max()


def test_strength_one_ignores_the_start_image_where_the_schedule_starts_from_pure_noise(
    ranks: tuple[str, list[dict[str, Any]]],
) -> None:
    model, (zero, _) = ranks
    if model == "tiny":
        # SDXL adds noise to the image at the first timestep (sigma ~14.6): it still shows
        assert not np.array_equal(zero["s1_a"][0], zero["s1_b"][0])
    else:
        # FLUX.1 and SD3.5 start at sigma 1: pure noise, the same whatever the image
        close(zero["s1_a"], zero["s1_b"])
    # not text-to-image: the image pipelines draw the VAE encoding's sample from each
    # image's generator before its noise, so the noise differs (docs/openai.md)
    assert not np.array_equal(zero["s1_a"][0], zero["text"][0])


def test_a_cancel_seen_on_one_rank_drops_that_image_request_everywhere(
    ranks: tuple[str, list[dict[str, Any]]], direct: dict[str, Any]
) -> None:
    model, (zero, _) = ranks
    a, _, c = image_requests()
    assert zero["cancel_b"]["b_cancelled"], "rank 0 learnt of rank 1's cancel"
    close(zero["cancel_b"]["a"], arrays(direct[model](**a)))
    close(zero["cancel_b"]["c"], arrays(direct[model](**c)))

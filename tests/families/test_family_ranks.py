"""FLUX.1-dev and SD3.5 (tiny) on two real gloo ranks: grids of 1 to 5 images, the same images
as on one rank, previews, merged requests, and a collective cancel that stops the denoising
loop and skips the VAE decode."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

from gridgen import Batch, Cancelled

from helpers.families import MODELS, SMALL, arrays, close, grid_shape, pixels, requests, tile
from helpers.gloo import on_ranks


def _count_calls(module: Any, counts: dict[str, int], name: str, rows: bool = False) -> None:
    """Count ``module``'s forward calls (or the rows they get) in ``counts[name]``."""

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = args[0] if args else next(iter(kwargs.values()))
        counts[name] += first.shape[0] if rows else 1

    module.register_forward_pre_hook(hook, with_kwargs=True)


def scenarios(rank: int, model: str) -> dict[str, Any]:
    """Runs on each rank; rank 0 reports what its results held."""
    from gridgen.diffusion import worker_for

    worker = worker_for(model)(rank=rank, world_size=2)
    worker.setup(model=model)
    counts = {"denoiser": 0, "decoded": 0}
    _count_calls(worker.pipeline.transformer, counts, "denoiser")
    vae = worker.pipeline.vae
    decode = vae.decode

    def counting_decode(latents: Any, *args: Any, **kwargs: Any) -> Any:
        counts["decoded"] += latents.shape[0]
        return decode(latents, *args, **kwargs)

    vae.decode = counting_decode
    out: dict[str, Any] = {"grids": {}}

    for n in range(1, 6):
        (result,) = worker.run_batch(Batch.of([{**SMALL, "num_images": n, "seed": 40, "output": "both"}]))
        if result:
            out["grids"][n] = (result["seeds"], pixels(result["grid"]), arrays(result))

    a, b, c = requests(model)
    merged = Batch.of([{**a, "preview_every": 1}, b, c], streaming=True)
    results = worker.run_batch(merged)
    out["merged"] = [arrays(r) if r else None for r in results]
    out["previews"] = [[(e["step"], e["preview_image"].size) for e in item.streamed] for item in merged]

    # only rank 1 sees b cancelled, at its second check: a and c finish, b's rows are not decoded
    checks: list[int] = []

    def rank1_cancels_b(request_id: int) -> bool:
        checks.append(request_id)
        return rank == 1 and request_id == 1 and checks.count(1) >= 2

    counts["decoded"] = 0
    ra, rb, rc = worker.run_batch(Batch.of([a, b, c], is_cancelled=rank1_cancels_b))
    out["cancel_b"] = {
        "b_cancelled": isinstance(rb, concurrent.futures.Future) and isinstance(rb.exception(), Cancelled),
        "a": arrays(ra) if ra else None,
        "c": arrays(rc) if rc else None,
        "decoded": counts["decoded"],
    }

    # everything cancelled after step 1, seen on rank 0 only: both ranks stop, nobody decodes
    seen: list[int] = []

    def rank0_cancels_after_first_step(request_id: int) -> bool:
        seen.append(request_id)
        return rank == 0 and len(seen) >= 2

    counts["decoded"] = counts["denoiser"] = 0
    long = {**SMALL, "num_images": 3, "num_inference_steps": 40, "seed": 1}
    try:
        worker.run_batch(Batch.of([long], is_cancelled=rank0_cancels_after_first_step))
        out["all_cancelled"] = "no exception"
    except Cancelled as exc:
        out["all_cancelled"] = str(exc)
    out["after_cancel"] = dict(counts)
    return out


@pytest.fixture(scope="module", params=MODELS)
def ranks(request: pytest.FixtureRequest, family_cache: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[dict[str, Any]]]:
    model = str(request.param)
    return model, on_ranks(scenarios, tmp_path_factory.mktemp("gloo"), model)


def test_grids_of_one_to_five_images_over_two_ranks(ranks: tuple[str, list[dict[str, Any]]]) -> None:
    _, (zero, one) = ranks
    assert one["grids"] == {}  # the other ranks return {} per request
    for n in range(1, 6):
        seeds, grid, images = zero["grids"][n]
        assert seeds == [40 + i for i in range(n)]
        assert grid.shape[1::-1] == grid_shape(n, 64), f"n={n}"
        assert len(images) == n
        for i, image in enumerate(images):
            assert image.shape == (64, 64, 3)
            assert np.array_equal(tile(grid, i, n), image), f"n={n} cell {i}"
        assert len({image.tobytes() for image in images}) == n, "every cell is its own image"


def test_two_ranks_make_the_images_one_rank_makes(
    ranks: tuple[str, list[dict[str, Any]]], direct_workers: dict[str, Any]
) -> None:
    model, (zero, _) = ranks
    direct = direct_workers[model]
    for n in (1, 4, 5):  # n=5: rank 0 makes images 0, 2, 4 as one batch of 3, rank 1 makes 1, 3
        _, _, images = zero["grids"][n]
        close(images, arrays(direct(**SMALL, num_images=n, seed=40, output="images")))
    # image i depends on (seed, i) only: the grid of 5 starts with the grid of 4
    close(zero["grids"][5][2][:4], zero["grids"][4][2])


def test_merged_requests_get_their_own_images_and_previews(
    ranks: tuple[str, list[dict[str, Any]]], direct_workers: dict[str, Any]
) -> None:
    model, (zero, one) = ranks
    direct = direct_workers[model]
    assert one["merged"] == [None, None, None]
    for got, alone in zip(zero["merged"], requests(model), strict=True):
        close(got, arrays(direct(**alone)))
    # a's 2 images previewed after each of the 3 steps: a 2x1 grid of 16x16 previews
    # (latents 8x8 for FLUX after unpacking its 2x2 patches, upscaled 2x)
    assert zero["previews"] == [[(1, (32, 16)), (2, (32, 16)), (3, (32, 16))], [], []]
    assert one["previews"] == [[], [], []]  # previews are sent by rank 0 only


def test_a_cancel_seen_on_one_rank_drops_that_request_everywhere(
    ranks: tuple[str, list[dict[str, Any]]], direct_workers: dict[str, Any]
) -> None:
    model, (zero, one) = ranks
    direct = direct_workers[model]
    a, _, c = requests(model)
    assert zero["cancel_b"]["b_cancelled"], "rank 0 learnt of rank 1's cancel"
    close(zero["cancel_b"]["a"], arrays(direct(**a)))
    close(zero["cancel_b"]["c"], arrays(direct(**c)))
    # 5 images: rank 0 made a0, b0, c1 and rank 1 a1, c0; b0 was never decoded
    assert (zero["cancel_b"]["decoded"], one["cancel_b"]["decoded"]) == (2, 2)


def test_cancelling_everything_stops_the_loop_and_skips_the_decode(
    ranks: tuple[str, list[dict[str, Any]]],
) -> None:
    _, (zero, one) = ranks
    assert "step 2 " in zero["all_cancelled"] and "step 2 " in one["all_cancelled"]
    # 2 of 40 denoising steps ran (one batched forward each, guidance included), then nothing:
    # diffusers' interrupt alone would still have decoded
    assert zero["after_cancel"] == {"denoiser": 2, "decoded": 0}
    assert one["after_cancel"] == {"denoiser": 2, "decoded": 0}

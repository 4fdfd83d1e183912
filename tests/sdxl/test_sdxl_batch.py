"""SDXLWorker.run_batch on one rank, in-process: merged requests keep their own images, seeds,
previews and cancellation; batch_key validates; padding to warm sizes (CUDA-graph path)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np
import pytest

from gridgen import Batch, Cancelled
from gridgen.sdxl import InvalidRequestError, SDXLWorker

from helpers.sdxl import A, B, C, arrays, close, pixels


@pytest.fixture(scope="module")
def alone(direct: SDXLWorker) -> dict[str, list[np.ndarray[Any, Any]]]:
    """Each request's images when it runs by itself (the reference for every batch)."""
    return {name: arrays(direct(**{**req, "output": "images"}))
            for name, req in (("A", A), ("B", B), ("C", C))}


def test_each_request_gets_its_own_result(direct: SDXLWorker, alone: dict[str, Any]) -> None:
    a, b, c = direct.run_batch(Batch.of([A, B, C]))
    assert [r["seeds"] for r in (a, b, c)] == [[5, 6], [70], [5, 6, 7]]
    assert [r["num_images"] for r in (a, b, c)] == [2, 1, 3]
    assert pixels(a["grid"]).shape == (64, 128, 3) and "grid" not in b and "grid" not in c
    assert [image.format for image in b["images"]] == ["jpeg"]
    close(arrays(a), alone["A"])
    close(arrays(c), alone["C"])  # same seeds as A, another prompt: other images
    assert not np.array_equal(arrays(a)[0], arrays(c)[0])
    close(arrays(b), alone["B"], jpeg=True)
    # one call: the shared phases are the same figures; encoding is each request's own
    assert a["timings"]["denoise"] == b["timings"]["denoise"] == c["timings"]["denoise"]
    assert all(r["timings"]["total"] >= r["timings"]["encode"] >= 0 for r in (a, b, c))


def test_previews_are_per_request(direct: SDXLWorker) -> None:
    batch = Batch.of([{**A, "preview_every": 2}, {**C, "preview_every": 1}, B], streaming=True)
    batch[2].streaming = False  # merged with a request that does not stream
    direct.run_batch(batch)
    a_events, c_events = batch[0].streamed, batch[1].streamed
    assert [e["step"] for e in a_events] == [2, 4]
    assert [e["step"] for e in c_events] == [1, 2, 3, 4]
    assert all(e["total_steps"] == 4 for e in a_events + c_events)
    assert {e["preview_image"].size for e in a_events} == {(32, 16)}  # its own 2 images
    assert {e["preview_image"].size for e in c_events} == {(32, 32)}  # its own 3, 2x2 grid
    assert batch[2].streamed == []


def test_cancelling_one_request_shrinks_the_batch(
    direct: SDXLWorker, alone: dict[str, Any]
) -> None:
    rows: list[int] = []
    hook = direct.pipeline.unet.register_forward_pre_hook(lambda _, args: rows.append(args[0].shape[0]))
    cancelled: set[int] = set()
    batch = Batch.of([{**A, "preview_every": 1}, C], streaming=True, is_cancelled=cancelled.__contains__)
    batch[0].sink = lambda event, fmt: (batch[0].streamed.append(event), cancelled.add(0))  # cancel at step 1
    try:
        a, c = direct.run_batch(batch)
    finally:
        hook.remove()
    assert [e["step"] for e in batch[0].streamed] == [1]
    assert isinstance(a, concurrent.futures.Future)
    with pytest.raises(Cancelled):
        a.result()
    close(arrays(c), alone["C"])
    # CFG doubles the rows. The cancel came during step 1's preview, after that step's
    # check: step 2 still ran all 5 images, its check saw the cancel, then C's 3 alone.
    assert rows == [10, 10, 6, 6]


def test_when_every_request_is_cancelled_the_call_raises(direct: SDXLWorker) -> None:
    calls: list[int] = []

    def cancel_both_at_step_2(request_id: int) -> bool:
        calls.append(request_id)
        return len(calls) > 2  # two requests per check: True from the second check

    with pytest.raises(Cancelled, match="step 2"):
        direct.run_batch(Batch.of([A, C], is_cancelled=cancel_both_at_step_2))
    assert len(calls) == 4, "no step may run (or check again) after every request stopped"


def test_batch_key_merges_what_shares_the_denoising_batch() -> None:
    key = SDXLWorker.batch_key(A)
    assert key == SDXLWorker.batch_key(B) == SDXLWorker.batch_key(C)
    assert key == SDXLWorker.batch_key({**A, "preview_every": 0, "guidance_scale": 5})
    for change in ({"width": 128}, {"height": 128}, {"num_inference_steps": 5},
                   {"guidance_scale": 1.0}):
        assert SDXLWorker.batch_key({**A, **change}) != key, change
    assert SDXLWorker.batch_units(A, 2) == 2
    assert SDXLWorker.batch_units({"prompt": "x"}, 3) == 3  # num_images defaults to the world size


@pytest.mark.parametrize(
    ("payload", "field"),
    [({**A, "width": 100}, "width"), ({**A, "prompt": " "}, "prompt"), ({**A, "steps": 3}, "steps")],
)
def test_batch_key_rejects_bad_requests_naming_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        SDXLWorker.batch_key(payload)
    assert caught.value.fields == [field] and field in str(caught.value)
    with pytest.raises(InvalidRequestError):
        SDXLWorker.batch_units(payload, 2)


def test_an_unoptimised_worker_declares_no_batch_sizes(direct: SDXLWorker) -> None:
    assert direct.graphed_unet is None and direct.batch_sizes is None  # any merge runs as is


def test_run_batch_refuses_requests_of_different_keys(direct: SDXLWorker) -> None:
    with pytest.raises(ValueError, match="batch_key"):
        direct.run_batch(Batch.of([A, {**A, "width": 128}]))


def test_graphed_path_pads_to_warm_sizes(tiny_cache: str, alone: dict[str, Any]) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny", optimize="graphs", warmup=(4,), warmup_size=(64, 64))
    graphs = worker.graphed_unet
    assert graphs is not None and len(graphs.entries) == 1  # the warm-up's batch of 4
    assert worker.batch_sizes == [4]  # the runner merges only into warm sizes
    phases = worker.setup_phases
    assert list(phases)[:2] == ["load", "optimize"] and "warmup_4" in phases
    assert all(seconds >= 0 for seconds in phases.values())
    assert worker.setup_seconds is not None and sum(phases.values()) <= worker.setup_seconds + 0.01
    a, b = worker.run_batch(Batch.of([A, B]))  # 3 images, padded to 4
    close(arrays(a), alone["A"])
    assert len(graphs.entries) == 1, "a merged batch of 3 must reuse the warm shape"
    assert worker.warm.sizes("unet", (64, 64)) == [4]
    assert worker.warm.sizes("vae", (64, 64)) == [4]
    # a cancelled request keeps its rows (no new shape) but is not delivered
    cancelled = {1}
    a, b = worker.run_batch(Batch.of([A, B], is_cancelled=cancelled.__contains__))
    assert isinstance(b, concurrent.futures.Future) and isinstance(a, dict)
    close(arrays(a), alone["A"])
    assert len(graphs.entries) == 1


def test_merging_without_guidance(direct: SDXLWorker) -> None:
    # guidance_scale <= 1: no negative embeddings, batch rows are not doubled
    a, c = ({**req, "guidance_scale": 1.0} for req in (A, C))
    merged_a, merged_c = direct.run_batch(Batch.of([a, c]))
    close(arrays(merged_a), arrays(direct(**a)))
    close(arrays(merged_c), arrays(direct(**c)))

"""SDXLWorker.run_batch on two real gloo ranks (no runner): merged images spread over the
ranks equal each request's images made alone on one rank; cancellation seen on one rank only
stops the request on both; an idle rank joins every collective."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from gridgen import Batch, Cancelled
from gridgen.sdxl import SDXLWorker

from helpers.gloo import on_ranks
from helpers.sdxl import A, B, C, arrays, close


def scenarios(rank: int) -> dict[str, Any]:
    """Runs on each rank; rank 0 reports what its results held."""
    worker = SDXLWorker(rank=rank, world_size=2)
    worker.setup(model="tiny")
    out: dict[str, Any] = {}

    # 6 images: rank 0 makes A0, B0, C1; rank 1 makes A1, C0, C2
    merged = Batch.of([{**A, "preview_every": 2}, B, C], streaming=True)
    results = worker.run_batch(merged)
    out["merged"] = [arrays(r) if r else None for r in results]
    out["previews"] = [[(e["step"], e["preview_image"].size) for e in item.streamed] for item in merged]

    # only rank 1 sees B cancelled, at its second check
    checks: list[int] = []

    def rank1_cancels_b(request_id: int) -> bool:
        checks.append(request_id)
        return rank == 1 and request_id == 1 and checks.count(1) >= 2

    a, b, c = worker.run_batch(Batch.of([A, B, C], is_cancelled=rank1_cancels_b))
    out["cancel_b"] = {
        "b_cancelled": isinstance(b, concurrent.futures.Future) and isinstance(b.exception(), Cancelled),
        "a": arrays(a) if a else None,
        "c": arrays(c) if c else None,
    }

    # no seeds: rank 0 draws one per request and both ranks use it
    drawn = worker.run_batch(Batch.of([{**A, "seed": None}, {**C, "seed": None}]))
    out["seeds"] = [r.get("seeds") for r in drawn]

    # one image in all: rank 1 makes nothing but joins the preview gathers
    one = Batch.of([{**B, "num_images": 1, "preview_every": 1}], streaming=True)
    worker.run_batch(one)
    out["one_previews"] = [e["step"] for e in one[0].streamed]

    # everything cancelled on rank 0 only: both ranks raise at the same step
    try:
        worker.run_batch(Batch.of([A, C], is_cancelled=lambda rid: rank == 0))
        out["all_cancelled"] = "no exception"
    except Cancelled as exc:
        out["all_cancelled"] = str(exc)
    return out


@pytest.fixture(scope="module")
def ranks(tiny_cache: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return on_ranks(scenarios, tmp_path_factory.mktemp("gloo"))


def test_merged_images_are_those_of_each_request_alone(
    ranks: list[dict[str, Any]], direct: SDXLWorker
) -> None:
    zero, one = ranks
    assert one["merged"] == [None, None, None]  # the other ranks return {} per request
    a, b, c = zero["merged"]
    close(a, arrays(direct(**A)))  # one rank, alone: the reference
    close(b, arrays(direct(**B)), jpeg=True)
    close(c, arrays(direct(**C)))
    # previews: A's own 2 images at steps 2 and 4; B and C did not ask (preview_every 5 > 4)
    assert zero["previews"] == [[(2, (32, 16)), (4, (32, 16))], [], []]
    assert one["previews"] == [[], [], []]  # previews are sent by rank 0 only


def test_a_cancel_seen_on_one_rank_stops_that_request_on_both(
    ranks: list[dict[str, Any]], direct: SDXLWorker
) -> None:
    zero, _ = ranks
    assert zero["cancel_b"]["b_cancelled"], "rank 0 learnt of rank 1's cancel"
    close(zero["cancel_b"]["a"], arrays(direct(**A)))
    close(zero["cancel_b"]["c"], arrays(direct(**C)))


def test_drawn_seeds_idle_ranks_and_cancelling_everything(ranks: list[dict[str, Any]]) -> None:
    zero, one = ranks
    (seeds_a, seeds_c) = zero["seeds"]
    assert len(seeds_a) == 2 and len(seeds_c) == 3 and seeds_a[0] != seeds_c[0]
    assert seeds_a[1] == seeds_a[0] + 1
    assert zero["one_previews"] == [1, 2, 3, 4]
    assert "step 1 " in zero["all_cancelled"] and "step 1 " in one["all_cancelled"]

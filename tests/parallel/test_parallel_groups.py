"""Four gloo ranks as two CFG-2 groups: a four-image request gives the images four
data-parallel ranks give (the groups share the images as ranks did; each group splits
one image's guidance over its pair)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gridgen import Batch

from helpers.families import arrays
from helpers.gloo import on_ranks

# Four rank processes importing diffusers on two cores: about 40 s idle, more when loaded.
pytestmark = pytest.mark.timeout(300)

REQUEST: dict[str, Any] = {
    "prompt": "a red cube", "negative_prompt": "blurry", "width": 64, "height": 64,
    "num_inference_steps": 2, "seed": 11, "num_images": 4, "output": "images",
}


def grouped_and_flat(rank: int) -> dict[str, Any]:
    from gridgen.diffusion import worker_for

    grouped = worker_for("tiny")(rank=rank, world_size=4)
    grouped.setup(model="tiny", parallel={"cfg": 2})
    (by_groups,) = grouped.run_batch(Batch.of([REQUEST]))
    flat = worker_for("tiny")(rank=rank, world_size=4)
    flat.setup(model="tiny")
    (by_ranks,) = flat.run_batch(Batch.of([REQUEST]))
    return {
        "groups": grouped.grouping.groups,
        "grouped": arrays(by_groups) if by_groups else None,
        "flat": arrays(by_ranks) if by_ranks else None,
    }


def test_two_cfg_groups_make_the_images_four_data_parallel_ranks_make(
    family_cache: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ranks = on_ranks(grouped_and_flat, tmp_path_factory.mktemp("groups"), world=4)
    assert [r["groups"] for r in ranks] == [2, 2, 2, 2]
    assert all(r["grouped"] is None and r["flat"] is None for r in ranks[1:])  # rank 0 answers
    grouped, flat = ranks[0]["grouped"], ranks[0]["flat"]
    assert len(grouped) == len(flat) == 4
    for a, b in zip(grouped, flat, strict=True):
        # fp32 on CPU: the CFG split reorders no sum over the batch, so within one grey level
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1

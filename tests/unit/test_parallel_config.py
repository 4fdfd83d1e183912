"""The ``parallel`` option: parsing, the rules of each family and world size, the strided
split over groups, the CFG split of a batch, and ``--parallel`` on the command line."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

from gridgen._preflight import UsageError, worker_options
from gridgen.cli import build_parser
from gridgen.diffusion.batching import BatchPlan
from gridgen.diffusion.families import FLUX_DEV, FLUX_SCHNELL, SD3, SDXL
from gridgen.diffusion.parallel import (
    CfgSplit,
    ParallelGroups,
    Parallelism,
    check_parallel,
    check_sequence_request,
)
from gridgen.errors import InvalidRequestError


def test_parse_dicts_and_cli_text() -> None:
    assert Parallelism.parse({"cfg": 2, "ulysses": 2}) == Parallelism(cfg=2, ulysses=2)
    assert Parallelism.parse(" cfg=2 , ulysses=4") == Parallelism(cfg=2, ulysses=4)
    assert Parallelism.parse(None) == Parallelism() and str(Parallelism()) == "none"
    assert Parallelism(cfg=2, ring=2).group_size == 4 and str(Parallelism(cfg=2, ring=2)) == "cfg=2,ring=2"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"tensor": 2}, "parallel: unknown degree 'tensor'; the degrees are cfg, ulysses, ring"),
        ({"ulysses": 0}, r"parallel.ulysses: must be a whole number >= 1, got 0"),
        ({"ring": 1.5}, r"parallel.ring: must be a whole number >= 1, got 1.5"),
        ({"cfg": 4}, r"parallel.cfg: must be 1 or 2 \(two branches"),
        ("cfg:2", r"parallel: 'cfg:2' is not NAME=N"),
        (3, "parallel: expected a dict"),
    ],
)
def test_bad_values_name_the_option_and_the_rule(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Parallelism.parse(value)


@pytest.mark.parametrize(
    ("parallel", "family", "world", "message"),
    [
        ({"cfg": 2}, SDXL, 3, "a group is cfg x ulysses x ring = 2 ranks, which must divide the world size 3"),
        ({"cfg": 2, "ulysses": 2}, SD3, 6, "= 4 ranks, which must divide the world size 6"),
        ({"cfg": 2}, FLUX_DEV, 2, "parallel.cfg: not for FLUX.1-dev: it is guidance-distilled"),
        ({"cfg": 2}, FLUX_SCHNELL, 2, "parallel.cfg: not for FLUX.1-schnell"),
        ({"ulysses": 2}, SDXL, 2, "parallel.ulysses: not for SDXL: its UNet has no sequence-parallel path"),
        ({"ring": 2}, SD3, 2, "parallel.ring: not for Stable Diffusion 3.5: diffusers .* has no context-parallel plan"),
    ],
)
def test_configurations_that_cannot_run_are_refused(
    parallel: dict[str, int], family: Any, world: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_parallel(Parallelism.parse(parallel), family, world)


def test_ring_needs_cuda_and_16_bit_and_the_step_cache_data_parallelism() -> None:
    ring = Parallelism(ring=2)
    with pytest.raises(ValueError, match=r"parallel.ring: ring attention needs .* on CPU or in float32 use ulysses"):
        check_parallel(ring, FLUX_DEV, 2, "cpu")
    with pytest.raises(ValueError, match=r"parallel\.ring"):
        check_parallel(ring, FLUX_DEV, 2, "cuda", torch.float32)
    check_parallel(ring, FLUX_DEV, 2, "cuda", torch.bfloat16)
    with pytest.raises(ValueError, match="step_cache: only with data parallelism"):
        check_parallel(Parallelism(ulysses=2), FLUX_DEV, 2, "cpu", step_cache=0.1)
    check_parallel(Parallelism(), FLUX_DEV, 3, "cpu", step_cache=0.1)


def test_sequence_parallel_needs_a_token_count_it_can_split() -> None:
    request = FLUX_DEV.validate({"prompt": "a cat", "width": 80, "height": 80})  # 5 x 5 tokens
    with pytest.raises(InvalidRequestError, match=r"width: with parallel ulysses x ring = 2, .* = 25 tokens"):
        check_sequence_request(Parallelism(ulysses=2), request)
    check_sequence_request(Parallelism(ulysses=2), FLUX_DEV.validate({"prompt": "a cat", "width": 64, "height": 80}))


def test_ranks_form_groups_and_images_are_strided_over_groups() -> None:
    places = [ParallelGroups(Parallelism(cfg=2), rank, 8) for rank in range(8)]
    assert [p.group for p in places] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [p.leader for p in places] == [True, False] * 4
    assert [p.cfg_branch for p in places] == [0, 1] * 4
    assert places[0].groups == 4 and places[0].data_group is None  # no mesh: not built
    inner = [ParallelGroups(Parallelism(cfg=2, ulysses=2), rank, 4).cfg_branch for rank in range(4)]
    assert inner == [0, 0, 1, 1]  # cfg outermost, the sequence ranks inside
    plan = BatchPlan([3, 2], [10, 50], world_size=2)  # 5 images over 2 groups
    assert [s.seed for s in plan.share(0)] == [10, 12, 51] and [s.seed for s in plan.share(1)] == [11, 50]


def test_the_cfg_split_runs_its_half_and_the_pair_gets_both() -> None:
    seen: list[dict[str, Any]] = []

    def forward(sample: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        seen.append({"sample": sample, "t": t, **kwargs})
        return (sample * 10,)

    class Pipe:
        do_classifier_free_guidance = True

    split = CfgSplit(group=None, branch=1)
    split._exchange = lambda mine: torch.cat([torch.zeros_like(mine), mine])  # type: ignore[method-assign]
    split.pipeline = Pipe()
    rows = torch.arange(4.0).reshape(4, 1)
    (out,) = split(forward, rows, torch.tensor(5.0), added={"time_ids": torch.arange(4)}, scale=2)
    assert seen[0]["sample"].tolist() == [[2.0], [3.0]]  # the conditional half
    assert seen[0]["added"]["time_ids"].tolist() == [2, 3] and seen[0]["t"].dim() == 0
    assert out.tolist() == [[0.0], [0.0], [20.0], [30.0]]
    Pipe.do_classifier_free_guidance = False  # guidance <= 1: the whole batch, no exchange
    (whole,) = split(forward, rows, torch.tensor(5.0))
    assert whole.shape == (4, 1)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_cli_parallel_becomes_a_setup_argument_checked_before_workers_start() -> None:
    args = _args("--parallel", "cfg=2", "--workers", "4", "--device", "cpu")
    assert worker_options(args, SDXL) == {"parallel": "cfg=2"}
    with pytest.raises(UsageError, match=r"--parallel cfg=2: parallel.cfg: not for FLUX.1-dev"):
        worker_options(_args("--parallel", "cfg=2", "--workers", "2", "--device", "cpu"), FLUX_DEV)
    with pytest.raises(UsageError, match=r"--parallel ulysses=2: .* must divide the world size 3"):
        worker_options(_args("--parallel", "ulysses=2", "--workers", "3", "--device", "cpu"), FLUX_DEV)
    with pytest.raises(UsageError, match=r"--parallel cfg=2: .* must divide the world size 1"):
        worker_options(_args("--parallel", "cfg=2", "--device", "cpu"), SDXL)  # one CPU worker by default

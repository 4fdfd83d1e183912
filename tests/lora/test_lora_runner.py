"""LoRA adapters through a 2-rank runner (the worker API): both ranks apply the same adapters,
merged calls never mix adapter sets, unknown adapters are refused on the host before
queueing, a rank that cannot load an adapter fails that request alone, and a folder that
gains an adapter serves it at once.

One runner for the module: ``FlakyLoraSDXLWorker`` (the SDXL worker whose rank 1 cannot
load adapters named ``rank1-*``) on the tiny model, a ``lora_dir``, merging on. References
come from a worker built directly (one rank), which never loaded an adapter for ``base``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gridgen import DistributedRunner, InvalidRequestError, WorkerError
from gridgen.sdxl import SDXLWorker

from helpers.lora import SMALL, FlakyLoraSDXLWorker, apart, pixels, with_loras
from helpers.runtime import LiveRunner, live


@pytest.fixture(scope="module")
def folder(lora_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``a``, ``b`` and ``rank1-fails`` (a copy of ``b``); ``../spare.safetensors`` beside it."""
    path = tmp_path_factory.mktemp("loras-runner")
    made = lora_folders["tiny"]
    for source, name in (("a", "a"), ("b", "b"), ("b", "rank1-fails")):
        shutil.copy(made / f"{source}.safetensors", path / f"{name}.safetensors")
    shutil.copy(made / "c.safetensors", path.parent / "spare.safetensors")  # a test adds it
    return path


@pytest.fixture(scope="module")
def group(folder: Path) -> Iterator[LiveRunner]:
    setup = {"model": "tiny", "lora_dir": str(folder), "max_loras": 2}
    with live(FlakyLoraSDXLWorker, setup=setup, max_batch=8, error_grace=10.0) as rt:
        yield rt


@pytest.fixture(scope="module")
def solo_and_base(folder: Path) -> tuple[SDXLWorker, list[Any]]:
    """A worker on one rank serving the folder, and its images of ``SMALL`` made before it
    loaded any adapter: what a service that never loaded one gives."""
    worker = SDXLWorker()
    worker.setup(model="tiny", lora_dir=str(folder))
    return worker, pixels(worker(**SMALL))


@pytest.fixture()
def solo(solo_and_base: tuple[SDXLWorker, list[Any]]) -> SDXLWorker:
    return solo_and_base[0]


@pytest.fixture()
def base(solo_and_base: tuple[SDXLWorker, list[Any]]) -> list[Any]:
    """Never-adapted images of ``SMALL`` (and of every request that differs from it only by
    naming no adapter, or adapters at scale 0)."""
    return solo_and_base[1]


def _run(group: LiveRunner, *payloads: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit every payload at once (so compatible ones merge); their results in order."""

    async def body(runner: DistributedRunner[Any]) -> list[dict[str, Any]]:
        handles = [runner.submit(payload) for payload in payloads]
        return list(await asyncio.gather(*(handle.result() for handle in handles)))

    return group.run(body, timeout=120)


def test_both_ranks_apply_the_same_adapters(group: LiveRunner, solo: SDXLWorker) -> None:
    two = with_loras({**SMALL, "num_images": 2}, ("a", 0.8), ("b", 0.5))
    [result] = _run(group, two)
    # image i depends on (seed + i) and the adapters only: each rank made one of them
    for i, image in enumerate(pixels(result)):
        alone = pixels(solo(**with_loras({**SMALL, "seed": SMALL["seed"] + i}, ("a", 0.8), ("b", 0.5))))
        assert apart([image], alone) < 0.05


def test_merged_calls_never_mix_adapter_sets(group: LiveRunner, solo: SDXLWorker, base: list[Any]) -> None:
    a, b = with_loras(SMALL, ("a", 1.0)), with_loras(SMALL, ("b", 1.0))
    none = {**SMALL, "loras": []}
    payloads = [a, SMALL, b, {**a, "seed": 12}, none, with_loras(SMALL, ("a", 0.0))]
    results = _run(group, *payloads)
    denoise = [r["timings"]["denoise"] for r in results]
    assert denoise[0] == denoise[3] and denoise[1] == denoise[4] == denoise[5]  # merged
    assert len({denoise[0], denoise[1], denoise[2]}) == 3  # three adapter sets, three calls
    for payload, result in zip(payloads, results, strict=True):
        adapted = any(spec["scale"] for spec in payload.get("loras", []))
        want = pixels(solo(**payload)) if adapted else base  # no adapter: a fresh service's images
        assert apart(pixels(result), want) < 0.05, payload.get("loras")


def test_unknown_adapters_and_paths_are_refused_before_queueing(group: LiveRunner) -> None:
    async def body(runner: DistributedRunner[Any]) -> list[InvalidRequestError]:
        errors = []
        for name in ("nope", "../a", "a/b"):
            with pytest.raises(InvalidRequestError) as caught:
                runner.submit(with_loras(SMALL, (name, 1.0)))  # raises at once: never queued
            errors.append(caught.value)
        assert runner.queue_size == 0
        return errors

    unknown, dots, slash = group.run(body)
    assert [e.errors[0].rule for e in (unknown, dots, slash)] == ["unknown_lora", "lora_path", "lora_path"]
    assert unknown.errors[0].field == "loras.0.name" and "'nope'" in str(unknown)
    assert "registered: a, b, rank1-fails" in str(unknown)
    assert "never a path" in str(slash)


def test_a_rank_that_cannot_load_an_adapter_fails_that_request_alone(
    group: LiveRunner, solo: SDXLWorker, base: list[Any]
) -> None:
    pids = group.run(_pids)
    with pytest.raises(WorkerError) as caught:
        _run(group, with_loras(SMALL, ("rank1-fails", 1.0)))
    assert caught.value.remote_type.endswith("LoraLoadError")
    assert "rank1-fails" in str(caught.value)
    a, none = _run(group, with_loras(SMALL, ("a", 1.0)), SMALL)  # the next requests run right
    assert apart(pixels(a), pixels(solo(**with_loras(SMALL, ("a", 1.0))))) < 0.05
    assert apart(pixels(none), base) < 0.05
    assert group.run(_pids) == pids  # no rank died, the group was not rebuilt


def test_a_folder_that_gains_an_adapter_serves_it_at_once(group: LiveRunner, folder: Path) -> None:
    with pytest.raises(InvalidRequestError, match="'spare'"):
        _run(group, with_loras(SMALL, ("spare", 1.0)))
    shutil.copy(folder.parent / "spare.safetensors", folder / "spare.safetensors")
    try:
        [with_spare] = _run(group, with_loras(SMALL, ("spare", 1.0)))
        [without] = _run(group, SMALL)
        assert apart(pixels(with_spare), pixels(without)) > 1.0
    finally:
        (folder / "spare.safetensors").unlink()


async def _pids(runner: DistributedRunner[Any]) -> list[int | None]:
    return runner.pids

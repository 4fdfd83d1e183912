"""LoRA adapters on one worker built directly (one rank, no runner): the images each request
gets, the cache's bounds, a broken file. SDXL, FLUX.1 and SD3.5 tiny models, 64x64, 2 steps.

Each family's adapters are made in the test with PEFT and diffusers' ``save_lora_weights``
(``helpers.lora``); every reference image comes from a worker that never loaded an adapter.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gridgen import InvalidRequestError, LoraLoadError
from gridgen.diffusion import worker_for

from helpers.lora import SMALL, apart, pixels, same, with_loras

MODELS = ("tiny", "tiny-flux", "tiny-sd3")


@pytest.fixture(scope="module")
def folders(lora_folders: dict[str, Path]) -> dict[str, Path]:
    return lora_folders


@pytest.fixture(scope="module")
def base(folders: dict[str, Path]) -> dict[str, Any]:
    """Per model, a worker that never loaded an adapter (nor was given sources)."""
    workers = {}
    for model in MODELS:
        workers[model] = worker_for(model)()
        workers[model].setup(model=model)
    return workers


@pytest.fixture(scope="module")
def served(folders: dict[str, Path]) -> dict[str, Any]:
    """Per model, a worker serving its folder with at most 2 adapters loaded."""
    workers = {}
    for model in MODELS:
        workers[model] = worker_for(model)()
        workers[model].setup(model=model, lora_dir=str(folders[model]), max_loras=2)
    return workers


@pytest.mark.parametrize("model", MODELS)
def test_scale_0_is_no_adapter_bit_for_bit_and_scale_1_changes_the_image(
    model: str, base: dict[str, Any], served: dict[str, Any]
) -> None:
    worker = served[model]
    reference = pixels(base[model](**SMALL))
    adapted = pixels(worker(**with_loras(SMALL, ("a", 1.0))))
    assert apart(adapted, reference) > 2.0, "the adapter hardly changed the image"
    assert same(pixels(worker(**with_loras(SMALL, ("a", 0.0)))), reference)
    assert same(pixels(worker(**SMALL)), reference)  # after an adapter: a fresh service's images
    assert same(pixels(worker(**with_loras(SMALL, ("a", 1.0)))), adapted)  # and back, the same


@pytest.mark.parametrize("model", ["tiny", "tiny-flux"])
def test_two_adapters_at_once_in_any_order(model: str, served: dict[str, Any]) -> None:
    worker = served[model]
    a = pixels(worker(**with_loras(SMALL, ("a", 1.0))))
    b = pixels(worker(**with_loras(SMALL, ("b", 0.5))))
    both = pixels(worker(**with_loras(SMALL, ("a", 1.0), ("b", 0.5))))
    assert apart(both, a) > 1.0 and apart(both, b) > 1.0
    assert same(pixels(worker(**with_loras(SMALL, ("b", 0.5), ("a", 1.0)))), both)
    assert same(pixels(worker(**with_loras(SMALL, ("a", 1.0), ("b", 0.5), ("c", 0.0)))), both)


def test_least_recently_used_adapters_are_unloaded_under_a_count_limit_of_2(
    served: dict[str, Any], base: dict[str, Any]
) -> None:
    worker = served["tiny"]
    cache = worker.lora_cache
    first_a = pixels(worker(**with_loras(SMALL, ("a", 1.0))))
    worker(**with_loras(SMALL, ("b", 1.0)))
    assert list(cache.loaded) == ["a", "b"]
    worker(**with_loras(SMALL, ("a", 0.7)))  # a used again: b is now the oldest
    worker(**with_loras(SMALL, ("c", 1.0)))
    assert list(cache.loaded) == ["a", "c"]
    assert _peft_adapters(worker) == 2  # unloaded from the pipeline, not only forgotten
    worker(**with_loras(SMALL, ("b", 1.0), ("c", 1.0)))  # never evicts what the request uses
    assert list(cache.loaded) == ["b", "c"]  # a went, though it was used after b
    assert same(pixels(worker(**with_loras(SMALL, ("a", 1.0)))), first_a)  # loaded again, right
    assert same(pixels(worker(**SMALL)), pixels(base["tiny"](**SMALL)))


@pytest.fixture(scope="module")
def tight(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An SDXL worker keeping 1 byte of adapters, serving a folder of its own (tests add
    files to it) with ``a``, ``b``, ``c``, and adapter ``x``, a file tests rewrite."""
    own = tmp_path_factory.mktemp("loras-own")
    for name in ("a", "b", "c"):
        shutil.copy(folders["tiny"] / f"{name}.safetensors", own)
    mine = tmp_path_factory.mktemp("loras-rewritten") / "x.safetensors"
    shutil.copy(folders["tiny"] / "a.safetensors", mine)
    worker = worker_for("tiny")()
    worker.setup(model="tiny", lora_dir=str(own), loras={"x": str(mine)}, max_lora_bytes=1)
    return worker


def test_a_byte_bound_keeps_only_the_running_requests_adapters(tight: Any) -> None:
    worker = tight
    worker(**with_loras(SMALL, ("a", 1.0)))
    both = worker(**with_loras(SMALL, ("b", 1.0), ("c", 1.0)))  # over the bound, still runs
    assert list(worker.lora_cache.loaded) == ["b", "c"] and both["images"]


def test_a_broken_or_foreign_file_fails_that_request_alone(
    tight: Any, base: dict[str, Any], folders: dict[str, Path]
) -> None:
    worker = tight
    own = worker.lora_cache.sources.directory
    adapted = pixels(worker(**with_loras(SMALL, ("a", 1.0))))
    (own / "broken.safetensors").write_bytes(b"not a safetensors file")
    shutil.copy(folders["tiny-flux"] / "a.safetensors", own / "foreign.safetensors")  # FLUX.1's
    with pytest.raises(LoraLoadError, match="'broken'"):
        worker(**with_loras(SMALL, ("broken", 1.0)))
    assert same(pixels(worker(**SMALL)), pixels(base["tiny"](**SMALL)))
    with pytest.raises(LoraLoadError, match=r"'foreign'.*adapts no layer of this model"):
        worker(**with_loras(SMALL, ("foreign", 1.0)))
    assert same(pixels(worker(**with_loras(SMALL, ("a", 1.0)))), adapted)
    assert same(pixels(worker(**SMALL)), pixels(base["tiny"](**SMALL)))


def test_a_file_changed_on_disk_is_loaded_again(folders: dict[str, Path], tight: Any) -> None:
    mine = tight.lora_cache.sources.path("x")
    shutil.copy(folders["tiny"] / "a.safetensors", mine)
    as_a = pixels(tight(**with_loras(SMALL, ("x", 1.0))))
    shutil.copy(folders["tiny"] / "b.safetensors", mine)
    as_b = pixels(tight(**with_loras(SMALL, ("x", 1.0))))
    assert apart(as_a, as_b) > 1.0
    assert same(as_b, pixels(tight(**with_loras(SMALL, ("b", 1.0)))))


def test_unknown_names_and_a_worker_without_sources(base: dict[str, Any], served: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="no adapter named 'zzz'") as caught:
        served["tiny"](**with_loras(SMALL, ("zzz", 1.0)))
    assert caught.value.errors[0].rule == "unknown_lora"
    with pytest.raises(InvalidRequestError, match="none are configured"):
        base["tiny"](**with_loras(SMALL, ("a", 1.0)))
    with pytest.raises(InvalidRequestError, match="never a path") as caught:
        served["tiny"](**with_loras(SMALL, ("../a", 1.0)))
    assert caught.value.errors[0].field == "loras.0.name"


def _peft_adapters(worker: Any) -> int:
    return len(getattr(worker.pipeline.unet, "peft_config", {}))

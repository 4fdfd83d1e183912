"""The speed levers of the transformer families on CPU: regional compile (run for SD3.5, whose
tiny model compiles in seconds; its plumbing for FLUX.1), the step cache (run, and isolated
between requests), and the options refused before anything loads."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gridgen.diffusion import FluxWorker, SD3Worker, SDXLWorker

from helpers.families import fp8_on_cpu

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "seed": 3}


def _pixels(result: dict[str, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(result["grid"].data))).astype(np.int16)


@pytest.mark.timeout(240)  # inductor compiles two block graphs and the VAE decoder on the CPU
def test_sd3_compiled_blocks_give_the_eager_images(family_cache: str, direct_workers: dict[str, Any]) -> None:
    eager = _pixels(direct_workers["tiny-sd3"](**SMALL, num_inference_steps=2))
    worker = SD3Worker()
    worker.setup(model="tiny-sd3", optimize="compile", warmup=(1,), warmup_size=(64, 64))
    compiled = _pixels(worker(**SMALL, num_inference_steps=2))
    assert np.abs(compiled - eager).max() <= 2  # measured 1 of 255 (float reordering)
    assert worker.fixed_shapes and worker.batch_sizes == [1]  # merges form warm sizes only
    assert "warmup_1" in worker.setup_phases


def test_flux_compile_targets_every_repeated_block_and_the_decoder(family_cache: str) -> None:
    worker = FluxWorker()
    worker.setup(model="tiny-flux", optimize="compile")  # compiles lazily: nothing runs here
    transformer = worker.pipeline.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)
    assert transformer._compiled_call_impl is None  # regional: the blocks, not the whole model
    assert worker.pipeline.vae.decoder._compiled_call_impl is not None
    assert all(block.attn.fused_projections for block in blocks)  # fewer, larger GEMMs
    assert worker.fixed_shapes


def test_sd3_is_compiled_by_the_blocks_gridgen_names(family_cache: str) -> None:
    worker = SD3Worker()
    worker.setup(model="tiny-sd3", optimize="compile")
    blocks = worker.pipeline.transformer.transformer_blocks
    assert all(block._compiled_call_impl is not None for block in blocks)


def test_step_cache_skips_steps_and_no_request_sees_another_requests_cache(family_cache: str) -> None:
    cached = FluxWorker()
    cached.setup(model="tiny-flux", step_cache=0.5)
    first = cached(**{**SMALL, "prompt": "a red cube"}, num_inference_steps=6)
    second = cached(**SMALL, num_inference_steps=6)
    assert second["step_cache"]["steps"] == 6 and 0 < second["step_cache"]["skipped"] < 6
    assert first["step_cache"]["steps"] == 6

    fresh = FluxWorker()
    fresh.setup(model="tiny-flux", step_cache=0.5)
    alone = fresh(**SMALL, num_inference_steps=6)
    assert np.array_equal(_pixels(second), _pixels(alone))  # nothing carried over from "a red cube"

    uncached = FluxWorker()
    uncached.setup(model="tiny-flux")
    plain = uncached(**SMALL, num_inference_steps=6)
    assert "step_cache" not in plain
    assert not np.array_equal(_pixels(second), _pixels(plain))  # skipping changed the image


@pytest.mark.parametrize(
    ("worker", "options", "message"),
    [
        (FluxWorker, {"quantize": "fp8", "optimize": "compile"}, r'quantize="fp8" needs a CUDA GPU; the device is cpu'),
        (FluxWorker, {"quantize": "int4"}, r'quantize must be "fp8" or None'),
        (SDXLWorker, {"quantize": "fp8"}, r'quantize="fp8" is for the transformer families'),
        (FluxWorker, {"step_cache": 0.0}, r"step_cache must be a threshold in \(0, 1\]"),
        (FluxWorker, {"step_cache": True}, r"step_cache must be a threshold between 0 and 1"),
        (SDXLWorker, {"step_cache": 0.1}, r"step_cache needs diffusers' cache hooks, which SDXL lacks"),
        (FluxWorker, {"cpu_offload": True}, r"cpu_offload moves models to a GPU while they run; the device is cpu"),
    ],
)
def test_lossy_and_offload_options_are_refused_before_loading(
    worker: type, options: dict[str, Any], message: str
) -> None:
    model = "tiny" if worker is SDXLWorker else "tiny-flux"
    instance = worker()
    with pytest.raises(ValueError, match=message):
        instance.setup(model=model, **options)
    assert not hasattr(instance, "pipeline")  # refused before anything loaded


def test_the_step_cache_counter_reads_the_caches_decision_even_through_compiled_blocks(
    family_cache: str,
) -> None:
    """Counters made one after the other over blocks compiled again (as
    ``bench/family_levers.py`` does per lever) each count their own runs, from the cache's
    state read on the eager top-level model."""
    import torch

    from gridgen.diffusion.fast import compile_blocks
    from gridgen.diffusion.lossy import CacheCounter, apply_step_cache

    worker = FluxWorker()
    worker.setup(model="tiny-flux", step_cache=0.95)
    transformer = worker.pipeline.transformer
    torch._dynamo.reset()
    runs = []
    for threshold in (0.0, 0.95, 0.0):
        worker._cache_counter.close()
        transformer.disable_cache()
        apply_step_cache(transformer, threshold)
        worker._cache_counter = CacheCounter(transformer)
        compile_blocks(transformer, fullgraph=False)
        runs.append(worker(**SMALL, num_inference_steps=6)["step_cache"]["skipped"])
    assert runs == [0, 5, 0]


def test_fp8_leaves_the_processes_compiler_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao's float8 config switches inductor's exhaustive coordinate-descent tuning on for
    the whole process unless told not to: every later compile (the VAE decoder, each warm
    size) then tuned for minutes, and an FP8 worker on one H100 never finished its setup."""
    import torch
    import torch._inductor.config as inductor

    from gridgen.diffusion.lossy import apply_quantization

    fp8_on_cpu(monkeypatch)
    names = ("coordinate_descent_tuning", "coordinate_descent_check_all_directions", "force_fuse_int_mm_with_mul")
    before = [getattr(inductor, n) for n in names], torch.get_float32_matmul_precision()
    model = torch.nn.Sequential(torch.nn.Linear(32, 32)).to(torch.bfloat16)
    apply_quantization(model, "fp8")
    assert type(model[0].weight).__name__ == "Float8Tensor"  # quantized
    assert ([getattr(inductor, n) for n in names], torch.get_float32_matmul_precision()) == before

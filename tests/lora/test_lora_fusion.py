"""LoRA on the fast path fused into the weights (``optimize="graphs"``, the default
``lora_mode="fuse"``): the graphs never change, an active adapter runs the base kernels, and
the base weights come back bit for bit.

On CPU the graphed UNet runs its static-buffer path (no CUDA graph), keyed like the real
one. Recompiles are counted with ``torch._dynamo``'s counters on a transformer block
compiled with the ``eager`` backend: dynamo's guards (what makes a switch recompile) are
the same whatever the backend, and inductor on this CPU would take minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gridgen.diffusion.lora_fusion import LoraFusion
from gridgen.sdxl import SDXLWorker

from helpers.lora import (
    SMALL,
    apart,
    count_graphs_of_one_block,
    pixels,
    same,
    tiny_lora_worker,
    with_loras,
)


@pytest.fixture(scope="module")
def fused(folder: Path) -> SDXLWorker:
    return tiny_lora_worker(folder, LoraFusion, optimize="graphs")


def _weights(worker: SDXLWorker) -> dict[str, Any]:
    return {name: p.detach().clone() for name, p in worker.pipeline.unet.named_parameters()}


def test_fused_adapters_give_the_eager_adapters_images(eager: SDXLWorker, fused: SDXLWorker) -> None:
    base = pixels(eager(**SMALL))
    assert same(pixels(fused(**SMALL)), base)
    for specs in ((("a", 1.0),), (("a", 0.6), ("b", -1.5)), (("a", 1.0), ("b", 1.0), ("c", 1.0))):
        want = pixels(eager(**with_loras(SMALL, *specs)))
        got = pixels(fused(**with_loras(SMALL, *specs)))
        assert apart(got, want) < 0.05 and apart(got, base) > 1.0, specs  # one grey level at most
    assert same(pixels(fused(**with_loras(SMALL, ("a", 0.0)))), base)


def test_the_base_weights_come_back_bit_for_bit(fused: SDXLWorker) -> None:
    fused(**SMALL)
    before = _weights(fused)
    fused(**with_loras(SMALL, ("a", 1.0), ("b", -2.0)))
    changed = [name for name, p in fused.pipeline.unet.named_parameters() if not p.equal(before[name])]
    assert any(name.endswith("attn1.to_qkv.weight") for name in changed)  # the fused projections'
    fused(**with_loras(SMALL, ("c", 0.7)))
    fused(**SMALL)
    after = _weights(fused)
    assert all(after[name].equal(before[name]) for name in before)
    backend = fused.lora_cache.backend
    assert backend.kept_bytes > 0 and not backend.dirty


def test_switching_adapters_captures_no_new_graph(fused: SDXLWorker) -> None:
    graphs = fused.graphed_unet
    first = pixels(fused(**with_loras(SMALL, ("a", 1.0))))
    keys = set(graphs.entries)
    assert len(keys) == 1  # one per shape, whatever the adapters: the weights change, not the graph
    fused(**with_loras(SMALL, ("b", 1.0)))
    fused(**SMALL)
    fused(**with_loras(SMALL, ("a", 0.5), ("b", 0.5)))
    assert same(pixels(fused(**with_loras(SMALL, ("a", 1.0)))), first)  # no stale weights
    assert set(graphs.entries) == keys


def test_switching_adapters_never_recompiles(folder: Path) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny", optimize="graphs", lora_dir=str(folder))
    counters = count_graphs_of_one_block(worker)
    worker(**with_loras(SMALL, ("a", 1.0)))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    for request in (with_loras(SMALL, ("b", 1.0)), SMALL, with_loras(SMALL, ("a", -1.0), ("b", 2.0)),
                    with_loras(SMALL, ("a", 0.3))):
        worker(**request)
    assert counters["stats"]["unique_graphs"] == graphs  # not even the no-adapter request adds one
    assert not counters["recompiles"] or sum(counters["recompiles"].values()) == 0


def test_any_linear_layer_fuses_and_a_convolution_is_refused(tmp_path: Path) -> None:
    from gridgen import LoraLoadError
    from gridgen.diffusion import load_family_pipeline
    from gridgen.diffusion.models import family_of

    from helpers.lora import make_lora

    pipeline = load_family_pipeline(family_of("tiny"), "tiny", device="cpu", dtype=None)
    make_lora(pipeline, "sdxl", tmp_path / "ff.safetensors", seed=5, targets=["to_k", "ff.net.2", "proj_in"])
    make_lora(pipeline, "sdxl", tmp_path / "conv.safetensors", seed=6, targets=["conv1"])
    eager, fused = SDXLWorker(), SDXLWorker()
    eager.setup(model="tiny", optimize="none", lora_dir=str(tmp_path))
    fused.setup(model="tiny", optimize="graphs", lora_dir=str(tmp_path))
    want = pixels(eager(**with_loras(SMALL, ("ff", 1.0))))
    assert apart(pixels(fused(**with_loras(SMALL, ("ff", 1.0)))), want) < 0.05
    with pytest.raises(LoraLoadError, match=r"conv1.*not a Linear layer.*optimize='none'"):
        fused(**with_loras(SMALL, ("conv", 1.0)))
    assert same(pixels(fused(**SMALL)), pixels(eager(**SMALL)))  # and it serves on


def test_flux_adapters_go_into_its_fused_projections(lora_folders: dict[str, Path]) -> None:
    from gridgen.diffusion import FluxWorker

    folder = str(lora_folders["tiny-flux"])
    eager, fused = FluxWorker(), FluxWorker()
    eager.setup(model="tiny-flux", optimize="none", lora_dir=folder)
    fused.setup(model="tiny-flux", optimize="graphs", lora_dir=folder)
    assert isinstance(fused.lora_cache.backend, LoraFusion)
    assert hasattr(fused.pipeline.transformer.transformer_blocks[0].attn, "to_qkv")  # kept fused
    both = with_loras(SMALL, ("a", 0.8), ("b", -1.0))
    assert apart(pixels(fused(**both)), pixels(eager(**both))) < 0.05
    assert same(pixels(fused(**SMALL)), pixels(eager(**SMALL)))

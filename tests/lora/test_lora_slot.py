"""LoRA on the fast path through a slot (``optimize="graphs"``, ``lora_mode="slot"``): the
adapters go through one fixed low-rank slot, so switching them changes weights, never the
graphs.

On CPU the graphed UNet runs its static-buffer path (no CUDA graph), keyed like the real
one. Recompiles are counted with ``torch._dynamo``'s counters on the UNet's transformer
blocks compiled with the ``eager`` backend: dynamo's guards (what makes a switch
recompile) are the same whatever the backend, and inductor on this CPU would take minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gridgen.diffusion.lora_slots import LoraSlots
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
def fast(folder: Path) -> SDXLWorker:
    return tiny_lora_worker(folder, LoraSlots, optimize="graphs", lora_max_rank=8, lora_mode="slot")


def test_the_slot_gives_the_eager_adapters_images(eager: SDXLWorker, fast: SDXLWorker) -> None:
    base = pixels(eager(**SMALL))
    assert same(pixels(fast(**SMALL)), base)  # the slot off: the base layers, bit for bit
    for specs in ((("a", 1.0),), (("a", 0.6), ("b", -1.5))):
        want = pixels(eager(**with_loras(SMALL, *specs)))
        got = pixels(fast(**with_loras(SMALL, *specs)))
        assert apart(got, want) < 0.05 and apart(got, base) > 1.0, specs  # one grey level at most
    assert same(pixels(fast(**with_loras(SMALL, ("a", 0.0)))), base)


def test_switching_adapters_captures_no_new_graph(fast: SDXLWorker) -> None:
    graphs = fast.graphed_unet
    first = pixels(fast(**with_loras(SMALL, ("a", 1.0))))
    fast(**SMALL)
    keys = set(graphs.entries)
    assert len(keys) == 2  # one per shape and slot state (on, off), whatever the adapters
    fast(**with_loras(SMALL, ("b", 1.0)))
    fast(**with_loras(SMALL, ("a", 0.5), ("b", 0.5)))
    fast(**SMALL)
    assert same(pixels(fast(**with_loras(SMALL, ("a", 1.0)))), first)  # no stale weights
    assert set(graphs.entries) == keys


def test_switching_adapters_never_recompiles(folder: Path) -> None:
    worker = SDXLWorker()
    worker.setup(model="tiny", optimize="graphs", lora_dir=str(folder), lora_max_rank=8, lora_mode="slot")
    counters = count_graphs_of_one_block(worker)
    worker(**with_loras(SMALL, ("a", 1.0)))
    with_slot = counters["stats"]["unique_graphs"]
    worker(**SMALL)
    both = counters["stats"]["unique_graphs"]
    assert with_slot > 0 and both > with_slot  # the slot off is one more path, traced once
    for request in (with_loras(SMALL, ("b", 1.0)), with_loras(SMALL, ("a", -1.0), ("b", 2.0)),
                    SMALL, with_loras(SMALL, ("a", 0.3))):
        worker(**request)
    assert counters["stats"]["unique_graphs"] == both
    assert not counters["recompiles"] or sum(counters["recompiles"].values()) == 0


def test_a_rank_sum_over_the_slot_fails_that_request_alone(eager: SDXLWorker, fast: SDXLWorker) -> None:
    from gridgen import LoraLoadError

    fast(**with_loras(SMALL, ("a", 1.0), ("b", 1.0)))  # ranks 4 + 4: the slot's 8
    with pytest.raises(LoraLoadError, match="add up to 12"):
        fast(**with_loras(SMALL, ("a", 1.0), ("b", 1.0), ("c", 1.0)))
    assert same(pixels(fast(**SMALL)), pixels(eager(**SMALL)))


def test_flux_adapters_go_through_the_transformers_slot(lora_folders: dict[str, Path]) -> None:
    from gridgen.diffusion import FluxWorker

    folder = str(lora_folders["tiny-flux"])
    eager, fast = FluxWorker(), FluxWorker()
    eager.setup(model="tiny-flux", optimize="none", lora_dir=folder)
    fast.setup(model="tiny-flux", optimize="graphs", lora_dir=folder, lora_max_rank=8, lora_mode="slot")
    assert isinstance(fast.lora_cache.backend, LoraSlots)
    assert not hasattr(fast.pipeline.transformer.transformer_blocks[0].attn, "to_qkv")  # unfused
    both = with_loras(SMALL, ("a", 0.8), ("b", -1.0))
    assert apart(pixels(fast(**both)), pixels(eager(**both))) < 0.05
    assert same(pixels(fast(**SMALL)), pixels(eager(**SMALL)))


def test_an_active_slot_adds_its_product_inside_the_second_matmul(fast: SDXLWorker) -> None:
    """A slot layer with an adapter on runs the base matmul and two low-rank ones, the last
    adding into the base result (``addmm``): no elementwise pass over the layer's output.
    PEFT's own forward, kept as the reference, makes two (times the scaling, plus)."""
    import torch
    from peft.tuners.lora.layer import Linear as PeftLinear
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    slots = fast.lora_cache.backend
    assert isinstance(slots, LoraSlots)
    fast(**with_loras(SMALL, ("a", 1.0)))  # leaves a's weights in the slot, and the slot on
    layer = next(module for module in slots.layers.values() if module.lora_A["gridgen_slot"].weight.abs().sum() > 0)
    x = torch.randn(2, 16, layer.in_features)
    with torch.no_grad():
        with Ops() as fused:
            got = layer(x)
        with Ops() as peft:
            want = PeftLinear.forward(layer, x)
    assert not {"mul", "add"} & set(fused.names), fused.names
    assert "addmm" in fused.names and {"mul", "add"} <= set(peft.names), (fused.names, peft.names)
    torch.testing.assert_close(got, want)
    fast(**SMALL)
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))  # the slot off: the base layer alone


def test_the_slot_covers_the_attention_projections_unless_asked_for_all(tmp_path: Path) -> None:
    """By default the slot leaves the feed-forward layers alone (they cost an active adapter
    the most time); an adapter of those is refused, naming the option that serves it."""
    from gridgen import LoraLoadError
    from gridgen.diffusion import load_family_pipeline
    from gridgen.diffusion.models import family_of

    from helpers.lora import make_lora

    pipeline = load_family_pipeline(family_of("tiny"), "tiny", device="cpu", dtype=None)
    make_lora(pipeline, "sdxl", tmp_path / "ff.safetensors", seed=5, targets=["to_q", "ff.net.2"])
    eager, attention, every = SDXLWorker(), SDXLWorker(), SDXLWorker()
    eager.setup(model="tiny", optimize="none", lora_dir=str(tmp_path))
    attention.setup(model="tiny", optimize="graphs", lora_dir=str(tmp_path), lora_max_rank=4, lora_mode="slot")
    every.setup(model="tiny", optimize="graphs", lora_dir=str(tmp_path), lora_max_rank=4, lora_mode="slot", lora_layers="all")
    covered = set(attention.lora_cache.backend.layers)
    assert covered and all(name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") for name in covered)
    assert covered < set(every.lora_cache.backend.layers)
    assert any(name.endswith("ff.net.2") for name in every.lora_cache.backend.layers)
    with pytest.raises(LoraLoadError, match=r"ff\.net\.2.*lora_layers='all' \(--lora-layers all\)"):
        attention(**with_loras(SMALL, ("ff", 1.0)))
    assert same(pixels(attention(**SMALL)), pixels(eager(**SMALL)))  # and it serves on
    want = pixels(eager(**with_loras(SMALL, ("ff", 1.0))))
    assert apart(pixels(every(**with_loras(SMALL, ("ff", 1.0)))), want) < 0.05

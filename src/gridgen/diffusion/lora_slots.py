"""LoRA on the compiled fast path with ``lora_mode="slot"``: adapters written into one fixed
low-rank slot, so that switching adapters never recompiles and never captures a new CUDA
graph (the default, :mod:`gridgen.diffusion.lora_fusion`, adds them into the weights).

At setup, before anything is compiled or captured, the attention projections of the
denoiser's transformer blocks (SDXL's ``attentions``, FLUX.1's and SD3.5's
``transformer_blocks`` / ``single_transformer_blocks``: ``to_q``, ``to_k``, ``to_v``,
``to_out.0`` and the context stream's ``add_*_proj`` / ``to_add_out``), or with
``setup(lora_layers="all")`` every ``Linear`` layer of those blocks, get one PEFT LoRA
adapter, the *slot*, of rank ``max_rank`` (``setup(lora_max_rank=...)``), all zeros. A request's
adapters are then written into the slot's weights in place: their down projections
stacked along the rank, their up projections side by side, each scaled by
``scale * alpha / rank``; the rest stays zero. Only data changes between requests, never
the code path or a shape, so the compiled graph and the captured CUDA graphs stay valid
and read the new weights.

Each slot layer's forward is PEFT's computation with the addition fused into the second
low-rank matmul (:func:`_slot_forward`). A request without adapters runs with the slot
disabled: the layers call their untouched base layers, bit for bit the base model. The
compiler traces that path once (one more graph, made at warm-up); CUDA graphs are keyed on
it (:attr:`LoraSlots.enabled`).

Limits, refused with :class:`~gridgen.LoraLoadError`: an adapter for layers outside the
slot (the text encoders, convolutions: serve those with ``optimize="none"``), and a request
whose adapters' ranks add up to more than ``max_rank`` on a layer. Measured on CPU with
``torch._dynamo`` counters (``tests/lora/test_lora_fast.py``): switching between adapters
adds no graph; the first request without adapters adds one, after which none.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import LoraLoadError
from .lora_weights import adapter_bytes, denoiser_prefix, read_adapter

__all__ = ["DEFAULT_LORA_MAX_RANK", "LORA_LAYERS", "LoraLayers", "LoraSlots", "slot_targets"]

logger = logging.getLogger("gridgen.diffusion")

DEFAULT_LORA_MAX_RANK = 64
"""The slot's rank when ``setup(lora_max_rank=...)`` is not given."""
LoraLayers = Literal["attention", "all"]
"""The layers the slot covers: the attention projections (what LoRA trainers target by
default, and the cheaper slot) or every ``Linear`` of the transformer blocks."""
LORA_LAYERS: tuple[LoraLayers, ...] = ("attention", "all")
SLOT = "gridgen_slot"
_BLOCKS = ("attentions", "transformer_blocks", "single_transformer_blocks")
_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def slot_targets(denoiser: Any, layers: LoraLayers = "attention") -> list[str]:
    """The names of the slot's layers: the ``Linear`` layers inside the denoiser's transformer
    blocks, only their attention projections unless ``layers`` is ``"all"``."""
    import torch

    return [
        name for name, module in denoiser.named_modules()
        if type(module) is torch.nn.Linear and any(part in _BLOCKS for part in name.split("."))
        and (layers == "all" or any(name.endswith("." + p) for p in _PROJECTIONS))
    ]


@dataclass
class _Adapter:
    """One adapter on the device: per layer (down, up * alpha / rank)."""

    layers: dict[str, tuple[Any, Any]]
    nbytes: int


class LoraSlots:
    """The fast path's LoRA backend (see the module docstring and
    :class:`~gridgen.diffusion.lora_cache.LoraBackend`)."""

    def __init__(self, pipeline: Any, max_rank: int = DEFAULT_LORA_MAX_RANK,
                 layers: LoraLayers = "attention") -> None:
        from peft import LoraConfig

        if type(max_rank) is not int or not 1 <= max_rank <= 1024:
            raise ValueError(f"lora_max_rank must be an int from 1 to 1024, got {max_rank!r}")
        if layers not in LORA_LAYERS:
            raise ValueError(f"lora_layers must be one of {', '.join(LORA_LAYERS)}, got {layers!r}")
        self.pipeline = pipeline
        self.max_rank = max_rank
        self.covers = layers
        self.prefix = denoiser_prefix(pipeline)
        self.denoiser = getattr(pipeline, self.prefix)
        targets = slot_targets(self.denoiser, layers)
        config = LoraConfig(r=max_rank, lora_alpha=max_rank, target_modules=targets)
        self.denoiser.add_adapter(config, adapter_name=SLOT)
        modules = dict(self.denoiser.named_modules())
        self.layers = {name: modules[name] for name in targets}
        for module in self.layers.values():
            module.forward = types.MethodType(_slot_forward, module)
        self._written: set[str] = set()
        self._zero(self.layers)
        self.enabled = True
        self.disable()

    def load(self, name: str, file: Path) -> tuple[Any, int]:
        def refuse(layer: str) -> str | None:
            return None if layer in self.layers else "outside the fast path's slot (" + self._outside(layer) + ")"

        layers = read_adapter(self.pipeline, name, file, refuse)
        nbytes = adapter_bytes(layers)
        return _Adapter(layers, nbytes), nbytes

    def _outside(self, layer: str) -> str:
        if self.covers == "attention" and layer in slot_targets(self.denoiser, "all"):
            return ("the attention projections of the transformer blocks): start the service with "
                    "lora_layers='all' (--lora-layers all) or serve it with optimize='none'")
        return "the Linear layers of the transformer blocks): serve it with optimize='none'"

    def unload(self, handle: Any) -> None:
        handle.layers.clear()  # the tensors go with the last reference

    def apply(self, adapters: Sequence[tuple[Any, float]]) -> None:
        import torch

        ranks: dict[str, int] = {}
        for adapter, _ in adapters:
            for layer, (down, _up) in adapter.layers.items():
                ranks[layer] = ranks.get(layer, 0) + down.shape[0]
        over = {layer: rank for layer, rank in ranks.items() if rank > self.max_rank}
        if over:
            layer, rank = next(iter(over.items()))
            raise LoraLoadError(
                f"the adapters' ranks add up to {rank} on {layer!r}, over lora_max_rank "
                f"{self.max_rank}: start the service with a larger --lora-max-rank"
            )
        self._zero({name: self.layers[name] for name in self._written - set(ranks)})
        with torch.no_grad():
            for layer in ranks:
                module, start = self.layers[layer], 0
                slot_down, slot_up = module.lora_A[SLOT].weight, module.lora_B[SLOT].weight
                for adapter, scale in adapters:
                    if layer in adapter.layers:
                        down, up = adapter.layers[layer]
                        end = start + down.shape[0]
                        slot_down[start:end].copy_(down)
                        slot_up[:, start:end].copy_(up * scale)
                        start = end
                slot_down[start:].zero_()
                slot_up[:, start:].zero_()
        self._written = set(ranks)
        if not self.enabled:
            self.denoiser.enable_adapters()
            self.enabled = True

    def disable(self) -> None:
        if self.enabled:
            self.denoiser.disable_adapters()
            self.enabled = False

    def _zero(self, layers: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for module in layers.values():
                module.lora_A[SLOT].weight.zero_()
                module.lora_B[SLOT].weight.zero_()


def _slot_forward(layer: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """A slot layer's forward: PEFT's result, ``base(x) + B(A(x))`` (the slot's scaling is 1),
    with the addition done by the second matmul (``addmm``: cuBLAS adds it as it writes).

    PEFT computes ``result + lora_B(lora_A(x)) * scaling``: two more passes over the layer's
    whole output (the multiply, even by 1, and the add) on every slot layer of every step,
    which cost more than the low-rank matmuls themselves.
    """
    import torch

    result = layer.base_layer(x, *args, **kwargs)
    if layer.disable_adapters:
        return result
    down = layer.lora_A[SLOT].weight
    up = layer.lora_B[SLOT].weight
    low = torch.nn.functional.linear(x.to(down.dtype), down)
    if up.dtype != result.dtype:
        return result + torch.nn.functional.linear(low, up).to(result.dtype)
    flat = torch.addmm(result.reshape(-1, result.shape[-1]), low.reshape(-1, low.shape[-1]), up.t())
    return flat.view(result.shape).to(result.dtype)

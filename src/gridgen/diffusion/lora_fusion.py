"""LoRA on the compiled fast path, fused: a request's adapters are added into the
denoiser's weights in place, and the base weights are kept to put back.

CUDA graphs and compiled regions read a layer's weight from the same storage on every
call, so writing ``W0 + sum(scale * up @ down)`` into that storage (``copy_``, never a new
tensor) changes what they compute without a recompile or a new capture, and an active
adapter then costs nothing per step: the layers run exactly the kernels they ran without
it. The price is paid when adapters change (one pass over each adapted weight) and in
memory: the first time an adapter touches a layer, that layer's base weight is copied once
(:attr:`LoraFusion.kept_bytes`), so a request without adapters, or with other ones, gets
the base weights back bit for bit.

The sum is formed in float32 from the kept base weight and rounded once into the layer's
dtype, the same whatever was fused before. Adapters name the unfused projections
(``to_q``, ``to_k``, ``to_v``, ``add_*_proj``); where the fast path fused them
(``to_qkv``, ``to_kv``, ``to_added_qkv``) their rows of the fused weight are written.
Any ``Linear`` layer of the denoiser can be adapted; convolutions and the text encoders
cannot (serve those with ``optimize="none"``).

:mod:`gridgen.diffusion.lora_slots` is the other fast-path backend (``lora_mode="slot"``):
no copy of the weights, a cost on every step instead. ``docs/lora.md`` has both measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .lora_weights import adapter_bytes, denoiser_prefix, read_adapter

__all__ = ["LoraFusion"]

# A fused projection's weight is its parts' weights stacked in this order.
_FUSED = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


class LoraFusion:
    """The fast path's default LoRA backend (see the module docstring and
    :class:`~gridgen.diffusion.lora_cache.LoraBackend`)."""

    def __init__(self, pipeline: Any) -> None:
        import torch

        self.pipeline = pipeline
        self.denoiser = getattr(pipeline, denoiser_prefix(pipeline))
        # Named before the fast path fuses q/k/v: the layers adapter files name.
        self.linears = {name for name, m in self.denoiser.named_modules() if type(m) is torch.nn.Linear}
        self.kept: dict[str, Any] = {}
        """Base weights of the layers adapters have touched, by the name of the layer that runs."""
        self.dirty: set[str] = set()
        """Layers whose weight holds adapters now."""
        self._targets: dict[str, tuple[str, int, int]] = {}

    @property
    def kept_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.kept.values())

    def load(self, name: str, file: Path) -> tuple[Any, int]:
        def refuse(layer: str) -> str | None:
            if layer in self.linears:
                return None
            return ("which is not a Linear layer of the denoiser: the compiled fast path adapts "
                    "Linear layers only (serve it with optimize='none')")

        layers = read_adapter(self.pipeline, name, file, refuse)
        return layers, adapter_bytes(layers)

    def unload(self, handle: Any) -> None:
        handle.clear()  # the tensors go with the last reference

    def apply(self, adapters: Sequence[tuple[Any, float]]) -> None:
        import torch

        updates: dict[str, list[tuple[int, int, Any, Any, float]]] = {}
        for layers, scale in adapters:
            if scale == 0:
                continue
            for layer, (down, up) in layers.items():
                target, start, stop = self._target(layer)
                updates.setdefault(target, []).append((start, stop, down, up, scale))
        try:
            with torch.no_grad():
                self._restore(self.dirty - set(updates))
                for target, parts in updates.items():
                    weight = self.denoiser.get_submodule(target).weight
                    kept = self.kept.get(target)
                    if kept is None:
                        kept = self.kept[target] = weight.detach().clone()
                    total = kept.to(torch.float32, copy=True)  # never the kept tensor itself
                    for start, stop, down, up, scale in parts:
                        total[start:stop].addmm_(up.float(), down.float(), alpha=scale)
                    weight.copy_(total)
                    self.dirty.add(target)
        except BaseException:
            self.disable()
            raise

    def disable(self) -> None:
        import torch

        with torch.no_grad():
            self._restore(set(self.dirty))

    def _restore(self, targets: set[str]) -> None:
        for target in targets:
            self.denoiser.get_submodule(target).weight.copy_(self.kept[target])
            self.dirty.discard(target)

    def _target(self, layer: str) -> tuple[str, int, int]:
        """The layer that runs ``layer``'s computation, and ``layer``'s rows of its weight
        (found once per layer: every switch asks again)."""
        if layer not in self._targets:
            self._targets[layer] = self._find_target(layer)
        return self._targets[layer]

    def _find_target(self, layer: str) -> tuple[str, int, int]:
        rows = self.denoiser.get_submodule(layer).out_features
        parent_name, _, leaf = layer.rpartition(".")
        parent = self.denoiser.get_submodule(parent_name)
        if getattr(parent, "fused_projections", False):
            for fused, parts in _FUSED.items():
                if leaf in parts and getattr(parent, fused, None) is not None:
                    start = sum(getattr(parent, part).out_features for part in parts[: parts.index(leaf)])
                    return f"{parent_name}.{fused}", start, start + rows
        return layer, 0, rows

"""Reading a LoRA file for the fast path's backends (:mod:`.lora_fusion`, :mod:`.lora_slots`):
per adapted layer of the denoiser, its down projection and its up projection times
``alpha / rank``, on the denoiser's device and in its dtype."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LoraLoadError

__all__ = ["adapter_bytes", "denoiser_prefix", "read_adapter"]


def denoiser_prefix(pipeline: Any) -> str:
    """The name of the pipeline's denoiser, which prefixes its keys in LoRA files."""
    return "unet" if getattr(pipeline, "unet", None) is not None else "transformer"


def read_adapter(
    pipeline: Any, name: str, file: Path, refuse: Callable[[str], str | None]
) -> dict[str, tuple[Any, Any]]:
    """Adapter ``name``'s layers in ``file``: ``{layer: (down, up * alpha / rank)}``.

    ``refuse(layer)`` says why a layer the file adapts cannot be served (None: it can).

    Raises:
        LoraLoadError: the file adapts other models than the denoiser, holds other weights
            than plain ``lora_A`` / ``lora_B`` pairs, a refused layer, or nothing.
    """
    import torch

    prefix = denoiser_prefix(pipeline)
    denoiser = getattr(pipeline, prefix)
    parsed = type(pipeline).lora_state_dict(str(file), return_lora_metadata=True)
    state, alphas, metadata = _unpack(parsed)
    others = sorted({key.split(".", 1)[0] for key in state if not key.startswith(prefix + ".")})
    if others:
        raise LoraLoadError(
            f"adapter {name!r} also adapts {', '.join(others)}: the compiled fast path "
            f"adapts the {prefix} only (serve it with optimize='none')"
        )
    layers: dict[str, tuple[Any, Any]] = {}
    device, dtype = denoiser.device, denoiser.dtype
    for key in state:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise LoraLoadError(f"adapter {name!r}: {key!r} is not a plain LoRA weight "
                                    "(the fast path takes lora_A / lora_B pairs only)")
            continue
        layer = key[len(prefix) + 1:-len(".lora_A.weight")]
        reason = refuse(layer)
        if reason is not None:
            raise LoraLoadError(f"adapter {name!r} adapts {layer!r}, {reason}")
        down, up = state[key], state[key[: -len("lora_A.weight")] + "lora_B.weight"]
        rank = down.shape[0]
        scaling = _alpha(alphas, metadata, prefix, layer, rank) / rank
        with torch.no_grad():
            layers[layer] = (down.to(device, dtype), (up.float() * scaling).to(device, dtype))
    if not layers:
        raise LoraLoadError(f"adapter {name!r} holds no LoRA weights for {prefix}")
    return layers


def adapter_bytes(layers: dict[str, tuple[Any, Any]]) -> int:
    """The bytes :func:`read_adapter`'s layers hold on the device."""
    return int(sum(d.numel() * d.element_size() + u.numel() * u.element_size() for d, u in layers.values()))


def _unpack(parsed: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``lora_state_dict``'s answer, whichever family: (state, alphas, metadata)."""
    if isinstance(parsed, dict):
        return parsed, {}, {}
    parts = list(parsed)
    state, rest = parts[0], parts[1:]
    metadata = rest.pop() if rest else None
    alphas = rest[0] if rest else None
    return state, dict(alphas or {}), dict(metadata or {})


def _alpha(alphas: dict[str, Any], metadata: dict[str, Any], prefix: str, layer: str, rank: int) -> float:
    """A layer's LoRA alpha: kohya's per-layer alphas, else the file's PEFT metadata, else the rank."""
    for key in (f"{prefix}.{layer}.alpha", f"{layer}.alpha"):
        if key in alphas:
            return float(alphas[key])
    pattern = metadata.get(f"{prefix}.alpha_pattern") or metadata.get("alpha_pattern") or {}
    for suffix, value in dict(pattern).items():
        if layer == suffix or layer.endswith("." + suffix):
            return float(value)
    alpha = metadata.get(f"{prefix}.lora_alpha", metadata.get("lora_alpha"))
    return float(alpha) if alpha is not None else float(rank)

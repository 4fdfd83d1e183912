"""Which speed levers a diffusion worker's ``setup`` puts on its pipeline, in their order:
the LoRA backend first (a slot's layers must exist before anything compiles), then the family's
graphs or compile (:mod:`.fast`) with FP8 and the step cache (:mod:`.lossy`), then CPU
offload last (it moves the models the others prepared). Offload keeps the denoiser on the GPU:
it runs every step, and moving it costs a copy of its weights per call at least."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .families import Family
from .fast import (
    CompileRegions,
    OptimizeMode,
    optimize_pipeline,
    optimize_transformer,
    resolve_optimize,
)
from .graphed import GraphedForward
from .lora_cache import LoraCache, LoraMode, setup_loras
from .lora_slots import LoraLayers, LoraSlots
from .lossy import CacheCounter, Quantize

__all__ = ["Levers", "apply_levers", "offload_all_but_denoiser"]


@dataclass(frozen=True)
class Levers:
    """What :func:`apply_levers` installed."""

    graphed_unet: Any
    """SDXL's CUDA-graph wrapper of the UNet, or None."""
    graphed: list[GraphedForward]
    """The transformer families' CUDA-graph wrappers (text encoders, the transformer)."""
    fixed_shapes: bool
    """Compiled or graphed: merged batches are padded to warm sizes."""
    lora_cache: LoraCache | None
    cache_counter: CacheCounter | None


def apply_levers(
    pipeline: Any,
    family: Family,
    device: Any,
    optimize: OptimizeMode,
    compile_regions: CompileRegions,
    text_encoder_graphs: bool,
    quantize: Quantize,
    step_cache: float | None,
    cpu_offload: bool,
    lora_sources: Any,
    lora_limits: tuple[int, int, int, LoraLayers, LoraMode],
    sequence_parallel: bool = False,
) -> Levers:
    """Put the levers the options ask for on ``pipeline`` (options already checked)."""
    fast = resolve_optimize(optimize, device) != "none"
    lora_cache = setup_loras(pipeline, lora_sources, fast, *lora_limits)
    slots = lora_cache.backend if lora_cache is not None and isinstance(lora_cache.backend, LoraSlots) else None
    graphed_unet, graphed = None, list[GraphedForward]()
    if family.denoiser == "unet":
        graphed_unet = optimize_pipeline(
            pipeline, optimize, device, regions=compile_regions, text_encoder_graphs=text_encoder_graphs,
            lora_variant=None if slots is None else lambda: slots.enabled,  # type: ignore[attr-defined]
        )
        fixed_shapes = graphed_unet is not None
    else:
        # Offloading moves the text encoders' weights, whose addresses a graph holds (the
        # transformer stays); sequence parallelism runs collectives inside the transformer,
        # which a graph would have to capture.
        fixed_shapes, graphed = optimize_transformer(
            pipeline, optimize, device, blocks=family.compile_blocks, quantize=quantize, step_cache=step_cache,
            lora_variant=None if slots is None else lambda: slots.enabled,  # type: ignore[attr-defined]
            text_encoder_graphs=text_encoder_graphs and not cpu_offload,
            transformer_graphs=not sequence_parallel,
        )
    counter = CacheCounter(getattr(pipeline, family.denoiser)) if step_cache is not None else None
    if cpu_offload:
        offload_all_but_denoiser(pipeline, family.denoiser, device)
    return Levers(graphed_unet, graphed, fixed_shapes, lora_cache, counter)


def offload_all_but_denoiser(pipeline: Any, denoiser: str, device: Any) -> None:
    """diffusers' model offload of the text encoders and the VAE; ``denoiser`` stays on the GPU.

    Nothing in diffusers' offload chain then moves the text encoders off before the denoiser
    runs: the worker calls ``pipeline.maybe_free_model_hooks()`` once the prompts are encoded.
    """
    chain = [name for name in pipeline.model_cpu_offload_seq.split("->") if name != denoiser]
    pipeline.model_cpu_offload_seq = "->".join(chain)
    pipeline._exclude_from_cpu_offload = [*pipeline._exclude_from_cpu_offload, denoiser]
    pipeline.enable_model_cpu_offload(device=device)

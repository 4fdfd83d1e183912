"""The two speed levers that change the images, both off by default: FP8 weights and
activations (``quantize="fp8"``) and step caching (``step_cache=threshold``).

Both come from the field's libraries rather than code of our own:

* **FP8** is torchao's float8 dynamic quantization with per-row scales
  (``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``) on every ``Linear``
  of the denoiser: FLUX.1 spends about 80 % of a step in ``Linear`` layers (59 of 74 TFLOP),
  which run at twice the 16-bit rate on a Hopper GPU. It needs a GPU of compute capability
  8.9 or more, torchao, and ``optimize="compile"`` (eager float8 is slower than bf16).
* **Step caching** is diffusers' first-block cache (``FirstBlockCacheConfig``): at each step
  the first transformer block runs; when its output moved less than ``threshold`` (relative
  L1) since the last full step, the other blocks are skipped and their last residual is
  reused. Larger thresholds skip more steps and move the image further.

:func:`check_lossy` refuses what cannot run here before any weights load, naming the option
and the rule; :func:`apply_quantization` and :func:`apply_step_cache` change a loaded pipeline.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .families import Family

__all__ = [
    "FP8_MIN_CAPABILITY",
    "CacheCounter",
    "Quantize",
    "apply_quantization",
    "apply_step_cache",
    "check_lossy",
]

_FBC_HEAD_HOOK = "fbc_leader_block_hook"  # diffusers.hooks.first_block_cache

Quantize = Literal["fp8"] | None
"""``"fp8"``: float8 weights and activations in the denoiser's ``Linear`` layers; ``None``: none."""

FP8_MIN_CAPABILITY = (8, 9)
"""float8 matrix products need Ada (8.9) or Hopper (9.0) and newer."""


def check_lossy(
    family: Family, device: Any, optimize: str, quantize: Quantize, step_cache: float | None
) -> None:
    """Raise ``ValueError`` naming the option and the rule when ``quantize`` or ``step_cache``
    cannot serve ``family`` on ``device`` (checked before anything loads)."""
    import torch

    if quantize is not None:
        if quantize != "fp8":
            raise ValueError(f'quantize must be "fp8" or None, got {quantize!r}')
        if family.denoiser != "transformer":
            raise ValueError(f'quantize="fp8" is for the transformer families (FLUX.1, SD3.5), not {family.title}')
        target = torch.device(device)
        if target.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(f'quantize="fp8" needs a CUDA GPU; the device is {target}')
        capability = torch.cuda.get_device_capability(target)
        if capability < FP8_MIN_CAPABILITY:
            raise ValueError(
                f'quantize="fp8" needs a GPU of compute capability 8.9 or more (Ada, Hopper); '
                f"{torch.cuda.get_device_name(target)} is {capability[0]}.{capability[1]}"
            )
        if importlib.util.find_spec("torchao") is None:
            raise ValueError('quantize="fp8" needs torchao: pip install "gridgen[fp8]"')
        if optimize != "compile":
            raise ValueError(
                f'quantize="fp8" needs optimize="compile" (eager float8 is slower than bf16), got {optimize!r}'
            )
    if step_cache is not None:
        if isinstance(step_cache, bool) or not isinstance(step_cache, int | float):
            raise ValueError(f"step_cache must be a threshold between 0 and 1, got {step_cache!r}")
        if not 0.0 < float(step_cache) <= 1.0:
            raise ValueError(f"step_cache must be a threshold in (0, 1], got {step_cache}")
        if not family.step_cache:
            raise ValueError(f"step_cache needs diffusers' cache hooks, which {family.title} lacks (FLUX.1 has them)")


def apply_quantization(denoiser: Any, quantize: Quantize) -> None:
    """Quantize ``denoiser``'s ``Linear`` layers in place (before it is compiled)."""
    if quantize is None:
        return
    import os

    # torchao's C++ extensions are built for one torch version; its float8 path is pure
    # Python and Triton, so skip loading them rather than warn about a mismatch.
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    from torchao.quantization import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    # set_inductor_config=False: by default torchao turns on inductor's exhaustive
    # coordinate-descent tuning for the whole process, and every later compile (the VAE
    # decoder, each new warm size) then tunes its kernels for minutes: an FP8 worker's setup
    # outlasted 9 minutes on one H100, and tuning inside a CUDA graph capture crashed it.
    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))


def apply_step_cache(denoiser: Any, threshold: float | None) -> None:
    """Turn on diffusers' first-block cache on ``denoiser`` with ``threshold``."""
    if threshold is None:
        return
    from diffusers import FirstBlockCacheConfig

    denoiser.enable_cache(FirstBlockCacheConfig(threshold=float(threshold)))  # type: ignore[no-untyped-call]


class CacheCounter:
    """Counts the steps the step cache skipped: after each call of the denoiser, the
    decision diffusers' first-block cache took in that call (its shared state's
    ``should_compute``).

    The hook sits on the denoiser itself, which regional compile leaves eager, and reads
    the state the cache's own blocks act on; a hook inside a compiled block would be traced
    once into its graph, and a compiled graph reused by a later counter would keep
    calling the old one.
    """

    def __init__(self, denoiser: Any) -> None:
        head = next(
            (hook for module in denoiser.modules()
             if (registry := getattr(module, "_diffusers_hook", None)) is not None
             and (hook := registry.get_hook(_FBC_HEAD_HOOK)) is not None),
            None,
        )
        if head is None:
            raise ValueError("the denoiser has no first-block cache to count")
        self._states = head.state_manager
        self.skipped = 0
        self._handle = denoiser.register_forward_hook(self._count)

    def _count(self, *_: Any) -> None:
        if not self._states.get_state().should_compute:
            self.skipped += 1

    def close(self) -> None:
        self._handle.remove()

    def take(self, steps: int) -> dict[str, int]:
        """``{"steps", "skipped"}`` since the last call (``steps``: the denoiser calls made)."""
        skipped, self.skipped = self.skipped, 0
        return {"steps": steps, "skipped": min(skipped, steps)}

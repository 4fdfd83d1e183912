"""What :meth:`DiffusionWorker.setup <gridgen.diffusion.DiffusionWorker.setup>` checks before
it loads anything, and the small helpers of its phases."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["PreviewMode", "check_setup", "phase_clock", "thread_lock_for_progress_bars"]

PreviewMode = Literal["auto", "taesd", "linear"] | None


def check_setup(
    worker_cls: Any, model: str, device: Any, preview: PreviewMode, optimize: str, cpu_offload: bool,
    preview_model: str | None = None,
) -> None:
    """Refuse what ``worker_cls``'s family cannot do with ``model`` on ``device`` (``ValueError``
    naming the option and the rule), before loading anything."""
    import torch

    from .models import family_of, preview_latent_mismatch

    own = worker_cls.family
    if preview not in ("auto", "taesd", "linear", None):
        raise ValueError(f"preview must be 'auto', 'taesd', 'linear' or None, got {preview!r}")
    family = family_of(model)
    if family is not own:
        raise ValueError(
            f"model {model!r} is a {family.title} pipeline, not {own.title}: serve it "
            f"with gridgen.diffusion.worker_for({model!r}) (here: {worker_cls.__name__})"
        )
    if preview in ("taesd", "auto") and preview_model is not None:
        mismatch = preview_latent_mismatch(own, preview_model)
        if mismatch:
            raise ValueError(f"preview_model {mismatch}")
    if not cpu_offload:
        return
    if torch.device(device).type != "cuda":
        raise ValueError(f"cpu_offload moves models to a GPU while they run; the device is {device}")
    # SDXL's CUDA graphs keep the addresses of the weights they captured: offloading moves them.
    if own.denoiser == "unet" and optimize != "none":
        raise ValueError(
            f'cpu_offload needs optimize="none" for {own.title} (its CUDA graphs '
            f"hold the weights' GPU addresses), got {optimize!r}"
        )


def phase_clock(phases: dict[str, float]) -> Callable[[str], None]:
    """``mark(name)`` records the seconds since the previous mark (or since creation) as ``name``."""
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - last[0], 3)
        last[0] = now

    return mark


def thread_lock_for_progress_bars() -> None:
    """Give tqdm (which diffusers uses while loading) a thread lock, not its default
    multiprocessing one: that one is a named semaphore in /dev/shm that outlives the worker
    (which leaves with os._exit) until the host exits, two more at every group restart."""
    import threading

    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())



"""``SDXLWorker``: data-parallel SDXL, the SDXL family of :class:`~gridgen.diffusion.DiffusionWorker`.

Everything it does (validation, seeds, the strided split over ranks, per-step collective
cancel, previews, decode, gather, grid, merged requests) is the generic worker's; see
:mod:`gridgen.diffusion.worker`. SDXL adds CUDA graphs and regional compile
(:mod:`gridgen.sdxl.fast`) and TAESD previews.
"""

from __future__ import annotations

from typing import ClassVar

from ..diffusion.families import SDXL, Family
from ..diffusion.worker import DiffusionWorker, PreviewMode
from .models import DEFAULT_MODEL

__all__ = ["PreviewMode", "SDXLWorker"]


class SDXLWorker(DiffusionWorker):
    """Stable Diffusion XL, data parallel: every rank makes its share of the images.

    Use it with a runner::

        async with DistributedRunner(SDXLWorker, world_size=2) as runner:   # start(model=...)
            result = await runner.invoke({"prompt": "a cat", "num_images": 4})

    or directly, on one device, without a runner::

        worker = SDXLWorker()
        worker.setup(model="tiny")
        result = worker(prompt="a cat", width=64, height=64, num_inference_steps=4)

    Payload fields are those of :class:`~gridgen.sdxl.GenerateRequest`; the result and the
    streamed previews are described in :class:`~gridgen.diffusion.DiffusionWorker`.
    ``setup(model=None)`` loads ``stabilityai/stable-diffusion-xl-base-1.0``.
    """

    family: ClassVar[Family] = SDXL
    default_model: ClassVar[str] = DEFAULT_MODEL

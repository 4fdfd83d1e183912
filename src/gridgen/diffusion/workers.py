"""The worker class of each family: :class:`DiffusionWorker` with its :class:`Family` set.

:func:`worker_for` picks one from a model name, folder or hub id.
"""

from __future__ import annotations

from typing import ClassVar

from .families import FLUX_DEV, FLUX_SCHNELL, SD3, SDXL, Family
from .models import DEFAULT_MODEL, family_of
from .worker import DiffusionWorker

__all__ = ["FluxSchnellWorker", "FluxWorker", "SD3Worker", "SDXLWorker", "worker_for"]


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


class FluxWorker(DiffusionWorker):
    """FLUX.1-dev, data parallel (fields: :class:`~gridgen.diffusion.FluxDevRequest`).

    ``setup(model=None)`` loads ``black-forest-labs/FLUX.1-dev``; ``"tiny-flux"`` is the
    built-in tiny random model, ``"flux-random"`` the full size with random weights.
    """

    family: ClassVar[Family] = FLUX_DEV
    default_model: ClassVar[str] = "black-forest-labs/FLUX.1-dev"


class FluxSchnellWorker(DiffusionWorker):
    """FLUX.1-schnell, data parallel (fields: :class:`~gridgen.diffusion.FluxSchnellRequest`)."""

    family: ClassVar[Family] = FLUX_SCHNELL
    default_model: ClassVar[str] = "black-forest-labs/FLUX.1-schnell"


class SD3Worker(DiffusionWorker):
    """Stable Diffusion 3.5, data parallel (fields: :class:`~gridgen.diffusion.SD3Request`).

    ``setup(model=None)`` loads ``stabilityai/stable-diffusion-3.5-large``; ``"tiny-sd3"``
    is the built-in tiny random model, ``"sd3-random"`` the full size with random weights.
    """

    family: ClassVar[Family] = SD3
    default_model: ClassVar[str] = "stabilityai/stable-diffusion-3.5-large"


_WORKERS: dict[str, type[DiffusionWorker]] = {
    SDXL.name: SDXLWorker,
    FLUX_DEV.name: FluxWorker,
    FLUX_SCHNELL.name: FluxSchnellWorker,
    SD3.name: SD3Worker,
}


def worker_for(model: str) -> type[DiffusionWorker]:
    """The worker class serving ``model`` (a built-in name, a folder or a hub id), by its
    family (:func:`family_of`: ``model_index.json``'s ``_class_name``).

    Raises:
        ValueError: the model's pipeline class has no family in gridgen.
    """
    family = family_of(model)
    return _WORKERS[family.name]

"""Data-parallel diffusers text-to-image pipelines: one generic worker, one small adapter per family.

Families: SDXL (:class:`~gridgen.sdxl.SDXLWorker`), FLUX.1-dev (:class:`FluxWorker`),
FLUX.1-schnell (:class:`FluxSchnellWorker`) and Stable Diffusion 3.5 (:class:`SD3Worker`).
:func:`worker_for` picks the class from a model name, folder or hub id. Needs the ``sdxl``
extra (diffusers, transformers, pydantic).
"""

from __future__ import annotations

from typing import ClassVar

# gridgen.sdxl first: its worker is a family of this package, so it must finish importing
# before this package's modules ask it for parts.
from .. import sdxl as _sdxl  # noqa: F401
from .families import FAMILIES, FLUX_DEV, FLUX_SCHNELL, SD3, SDXL, Family
from .models import (
    BUILTIN_MODELS,
    build_random,
    build_tiny_flux,
    build_tiny_sd3,
    ensure_tiny,
    family_of,
    load_family_pipeline,
)
from .request import CommonRequest, FluxDevRequest, FluxSchnellRequest, SD3Request
from .worker import DiffusionWorker

__all__ = [
    "BUILTIN_MODELS",
    "FAMILIES",
    "CommonRequest",
    "DiffusionWorker",
    "Family",
    "FluxDevRequest",
    "FluxSchnellRequest",
    "FluxSchnellWorker",
    "FluxWorker",
    "SD3Request",
    "SD3Worker",
    "build_random",
    "build_tiny_flux",
    "build_tiny_sd3",
    "ensure_tiny",
    "family_of",
    "load_family_pipeline",
    "worker_for",
]


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
    if family is SDXL:
        # gridgen.sdxl imports this package (its worker is one family of it): import it late.
        from ..sdxl.family import SDXLWorker

        return SDXLWorker
    return _WORKERS[family.name]

"""Data-parallel diffusers text-to-image pipelines: one generic worker, one small adapter per family.

Families: SDXL (:class:`SDXLWorker`, also :class:`gridgen.sdxl.SDXLWorker`), FLUX.1-dev
(:class:`FluxWorker`), FLUX.1-schnell (:class:`FluxSchnellWorker`) and Stable Diffusion 3.5
(:class:`SD3Worker`). :func:`worker_for` picks the class from a model name, folder or hub id.
Everything the families share lives here (the worker, merging, seeds, encoding, previews,
the speed levers, dtypes, model loading and builds); a family is one module of
:mod:`gridgen.diffusion.families`. Needs the ``sdxl`` extra (diffusers, transformers, pydantic).
"""

from __future__ import annotations

from .builders import build_random, build_tiny_flux, build_tiny_sd3, ensure_tiny
from .families import FAMILIES, FLUX_DEV, FLUX_SCHNELL, SD3, SDXL, Family
from .families.flux import FluxDevRequest, FluxSchnellRequest
from .families.sd3 import SD3Request
from .models import BUILTIN_MODELS, family_of, load_family_pipeline
from .request import CommonRequest
from .worker import DiffusionWorker
from .workers import FluxSchnellWorker, FluxWorker, SD3Worker, SDXLWorker, worker_for

__all__ = [
    "BUILTIN_MODELS",
    "FAMILIES",
    "FLUX_DEV",
    "FLUX_SCHNELL",
    "SD3",
    "SDXL",
    "CommonRequest",
    "DiffusionWorker",
    "Family",
    "FluxDevRequest",
    "FluxSchnellRequest",
    "FluxSchnellWorker",
    "FluxWorker",
    "SD3Request",
    "SD3Worker",
    "SDXLWorker",
    "build_random",
    "build_tiny_flux",
    "build_tiny_sd3",
    "ensure_tiny",
    "family_of",
    "load_family_pipeline",
    "worker_for",
]

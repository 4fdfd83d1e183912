"""SDXL, data parallel: SDXL's public face over :mod:`gridgen.diffusion`.

The worker, its request and result models and the model builders, as users import them;
everything is defined in :mod:`gridgen.diffusion` (the worker and its machinery shared by
every family) and :mod:`gridgen.diffusion.families.sdxl` (SDXL's request model and rules).
Needs the ``sdxl`` extra (``pip install gridgen[sdxl]``): diffusers, transformers, pydantic.
"""

from ..diffusion.builders import (
    RANDOM_MODEL,
    TINY_MODEL,
    build_random_sdxl,
    build_tiny_sdxl,
    ensure_tiny_sdxl,
)
from ..diffusion.families.sdxl import GenerateRequest, validate_request
from ..diffusion.models import DEFAULT_MODEL, load_pipeline
from ..diffusion.results import GenerateResult, PreviewEvent, Timings
from ..diffusion.workers import SDXLWorker
from ..errors import InvalidRequestError, ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL",
    "RANDOM_MODEL",
    "TINY_MODEL",
    "GenerateRequest",
    "GenerateResult",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PreviewEvent",
    "SDXLWorker",
    "Timings",
    "build_random_sdxl",
    "build_tiny_sdxl",
    "ensure_tiny_sdxl",
    "load_pipeline",
    "validate_request",
]

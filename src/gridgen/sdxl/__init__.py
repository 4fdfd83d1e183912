"""SDXL, data parallel: the worker, its request/result models and the model builders.

Needs the ``sdxl`` extra (``pip install gridgen[sdxl]``): diffusers, transformers, pydantic.
"""

from .family import SDXLWorker
from .models import (
    DEFAULT_MODEL,
    RANDOM_MODEL,
    TINY_MODEL,
    ModelNotFoundError,
    build_random_sdxl,
    build_tiny_sdxl,
    ensure_tiny_sdxl,
    load_pipeline,
)
from .request import (
    GenerateRequest,
    GenerateResult,
    InvalidRequestError,
    PreviewEvent,
    Timings,
    validate_request,
)

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

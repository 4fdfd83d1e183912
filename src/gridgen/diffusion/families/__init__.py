"""Family adapters: one module per kind of diffusers pipeline, registered here by name.

Adding a family is one module (its request model, rules, preview factors, prompt encoding;
a subclass of :class:`Family`) and one entry in :data:`FAMILIES`, plus a worker class in
``gridgen.diffusion`` (see ``docs/families.md``).
"""

from __future__ import annotations

from .base import RGB, Family
from .flux import FLUX_DEV, FLUX_SCHNELL, FluxDevRequest, FluxSchnellRequest
from .sd3 import SD3, SD3Request
from .sdxl import SDXL, GenerateRequest

__all__ = [
    "FAMILIES",
    "FLUX_DEV",
    "FLUX_SCHNELL",
    "RGB",
    "SD3",
    "SDXL",
    "Family",
    "FluxDevRequest",
    "FluxSchnellRequest",
    "GenerateRequest",
    "SD3Request",
]

FAMILIES: dict[str, Family] = {f.name: f for f in (SDXL, FLUX_DEV, FLUX_SCHNELL, SD3)}
"""Every family by name."""

"""Getting an SDXL pipeline, as users import it: ``load_pipeline`` (a hub id, a folder,
``"tiny"`` or ``"sdxl-random"``), the preview decoder and the builders.

Defined in :mod:`gridgen.diffusion.models` and :mod:`gridgen.diffusion.builders`, shared with
every family.
"""

from ..diffusion._env import cache_dir, resolve_dtype
from ..diffusion.builders import (
    RANDOM_MODEL,
    TINY_MODEL,
    build_random_sdxl,
    build_tiny_sdxl,
    build_tiny_taesd,
    ensure_tiny_sdxl,
    sdxl_base_config,
)
from ..diffusion.models import (
    DEFAULT_MODEL,
    DEFAULT_PREVIEW_MODEL,
    load_pipeline,
    load_preview_decoder,
)
from ..errors import ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PREVIEW_MODEL",
    "RANDOM_MODEL",
    "TINY_MODEL",
    "ModelNotFoundError",
    "build_random_sdxl",
    "build_tiny_sdxl",
    "build_tiny_taesd",
    "cache_dir",
    "ensure_tiny_sdxl",
    "load_pipeline",
    "load_preview_decoder",
    "resolve_dtype",
    "sdxl_base_config",
]

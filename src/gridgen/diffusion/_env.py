"""The model libraries as gridgen uses them, and where it keeps what it builds.

diffusers and transformers are imported here only, quietly unless ``GRIDGEN_VERBOSE=1``;
dtypes are resolved here only (``None`` means the family's GPU dtype on CUDA, float32 elsewhere).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["cache_dir", "diffusers", "resolve_dtype", "transformers", "verbose"]


def cache_dir() -> Path:
    """Where gridgen keeps what it builds: ``$GRIDGEN_CACHE``, else ``$XDG_CACHE_HOME/gridgen``,
    else ``~/.cache/gridgen``."""
    if env := os.environ.get("GRIDGEN_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gridgen"


_DTYPE_NAMES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device | str, cuda_default: str = "float16"
) -> torch.dtype:
    """``None`` means ``cuda_default`` on CUDA and float32 elsewhere; strings like ``"fp16"``
    are accepted."""
    import torch

    if dtype is None:
        dtype = cuda_default if torch.device(device).type == "cuda" else "float32"
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(
            f"dtype must be float16, bfloat16 or float32 (or None for auto), got {dtype!r}"
        )
    resolved: torch.dtype = getattr(torch, name)
    return resolved


def diffusers() -> Any:
    """diffusers, typed loosely: its classes are partly annotated and register modules at run time."""
    transformers()  # first: importing diffusers' pipelines logs transformers warnings
    import diffusers as library

    _quiet(library.utils.logging)
    return library


def transformers() -> Any:
    import transformers as library

    _quiet(library.utils.logging)
    return library


def verbose() -> bool:
    """Whether ``GRIDGEN_VERBOSE`` asks for the model libraries' own output (see :func:`_quiet`)."""
    return os.environ.get("GRIDGEN_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}


def _quiet(library_logging: Any) -> None:
    """transformers and diffusers print warnings (``accelerate`` missing, ``torchvision``
    missing...) and loading bars in every worker: errors only and no bars, unless
    ``GRIDGEN_VERBOSE=1`` is set (the workers inherit it; ``gridgen --verbose`` sets it)."""
    if verbose():
        return
    library_logging.set_verbosity_error()
    library_logging.disable_progress_bar()
    from huggingface_hub.utils.tqdm import disable_progress_bars

    disable_progress_bars()

"""Getting a pipeline: a built-in model (:mod:`.builders`), a hub id or a local folder, and
telling which family a model belongs to.

Three kinds of ``model`` name, for every family:

``"tiny"`` / ``"tiny-flux"`` / ``"tiny-sd3"``, ``"sdxl-random"`` / ``"flux-random"`` /
``"flux-schnell-random"`` / ``"sd3-random"``
    Built locally (see :mod:`gridgen.diffusion.builders`): no download.

anything else
    A hub id or a local folder, loaded with the family's pipeline class's ``from_pretrained``.
    The local cache is tried first with ``local_files_only=True``; the hub is only contacted
    when it answers a quick connection probe, so an offline machine fails at once with
    :class:`~gridgen.ModelNotFoundError` instead of hanging on retries.
    :func:`family_of` reads its ``model_index.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._hub import (
    DEFAULT_MODEL,
    DEFAULT_PREVIEW_MODEL,
    dtype_kwargs,
    from_pretrained,
    looks_like_path,
)
from ._env import diffusers as _d
from ._env import resolve_dtype
from .builders import (
    _CONFIGS,
    _TINY_DIRS,
    RANDOM_MODEL,
    TINY_MODEL,
    build_random,
    build_random_sdxl,
    ensure_tiny,
    ensure_tiny_sdxl,
    ensure_tiny_taesd,
)
from .families import FAMILIES, FLUX_DEV, FLUX_SCHNELL, SD3, SDXL, Family

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionXLPipeline

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "DEFAULT_PREVIEW_MODEL",
    "family_of",
    "load_family_pipeline",
    "load_pipeline",
    "load_preview_decoder",
    "preview_latent_mismatch",
]

BUILTIN_MODELS: dict[str, Family] = {
    TINY_MODEL: SDXL,
    RANDOM_MODEL: SDXL,
    "tiny-flux": FLUX_DEV,
    "flux-random": FLUX_DEV,
    "flux-schnell-random": FLUX_SCHNELL,
    "tiny-sd3": SD3,
    "sd3-random": SD3,
}
"""Built-in model names and their family."""


def _model_index(model: str) -> tuple[dict[str, Any], Callable[[str], dict[str, Any] | None]] | None:
    """``model_index.json`` of a folder or hub id, and a reader of its other JSON files;
    None when it cannot be read (not cached and no hub)."""
    folder = Path(os.path.expanduser(model))
    if folder.is_dir():
        def read_local(name: str) -> dict[str, Any] | None:
            path = folder / name
            return json.loads(path.read_text("utf-8")) if path.is_file() else None

        index = read_local("model_index.json")
        return None if index is None else (index, read_local)
    if looks_like_path(model):
        return None
    from huggingface_hub import hf_hub_download

    from .._hub import hub_reachable

    online = hub_reachable()

    def read_hub(name: str) -> dict[str, Any] | None:
        for local_only in (True, False) if online else (True,):
            try:
                path = hf_hub_download(model, name, local_files_only=local_only)
            except Exception:
                continue
            data: dict[str, Any] = json.loads(Path(path).read_text("utf-8"))
            return data
        return None

    index = read_hub("model_index.json")
    return None if index is None else (index, read_hub)


def family_of(model: str) -> Family:
    """The family of ``model``: a built-in name, or a folder / hub id by its ``model_index.json``.

    A model whose ``model_index.json`` cannot be read (not cached, hub unreachable) counts
    as SDXL, so loading it fails as it always did, with
    :class:`~gridgen.ModelNotFoundError` and how to fix it.

    Raises:
        ValueError: the pipeline class is not one gridgen has a family for.
    """
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model]
    found = _model_index(model)
    if found is None:
        return SDXL
    index, read = found
    class_name = str(index.get("_class_name", ""))
    if class_name == "FluxPipeline":
        transformer = read("transformer/config.json") or {}
        return FLUX_DEV if transformer.get("guidance_embeds", True) else FLUX_SCHNELL
    for family in FAMILIES.values():
        if family.pipeline_class == class_name:
            return family
    known = ", ".join(sorted({f.pipeline_class for f in FAMILIES.values()}))
    raise ValueError(f"model {model!r} is a {class_name or 'unknown'} pipeline; gridgen serves {known}")


def load_family_pipeline(
    family: Family, model: str, *, device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None, **from_pretrained_kwargs: Any,
) -> Any:
    """Load ``model`` as a ``family`` pipeline onto ``device`` (see the module docstring).

    Raises:
        ModelNotFoundError: not a folder, not cached, and the hub is unreachable.
    """
    import torch

    if family is SDXL:
        return load_pipeline(model, device=device, dtype=dtype, **from_pretrained_kwargs)
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target, family.cuda_dtype)
    if model in _CONFIGS:
        return build_random(model, target, torch_dtype)
    pipeline_cls = getattr(_d(), family.pipeline_class)
    kwargs = {**dtype_kwargs(torch_dtype, from_pretrained_kwargs), **from_pretrained_kwargs}
    if model in _TINY_DIRS:
        kwargs.setdefault("local_files_only", True)
        pipeline = pipeline_cls.from_pretrained(str(ensure_tiny(model)), **kwargs)
    else:
        pipeline = from_pretrained(pipeline_cls, "model", model, **kwargs)
    return pipeline.to(target)


def load_pipeline(
    model: str = DEFAULT_MODEL,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    **from_pretrained_kwargs: Any,
) -> StableDiffusionXLPipeline:
    """Load an SDXL pipeline onto ``device``.

    Args:
        model: ``"tiny"``, ``"sdxl-random"``, a hub id or a local folder (see the module docs).
        device: where the pipeline runs.
        dtype: weights' dtype; ``None`` is float16 on CUDA, float32 elsewhere.
        **from_pretrained_kwargs: passed to ``StableDiffusionXLPipeline.from_pretrained``
            (ignored by ``"sdxl-random"``).

    Raises:
        ModelNotFoundError: the model is not a folder, not cached, and the hub is unreachable.
    """
    import torch

    pipeline_cls = _d().StableDiffusionXLPipeline
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if model == RANDOM_MODEL:
        return build_random_sdxl(target, torch_dtype)
    kwargs = {**dtype_kwargs(torch_dtype, from_pretrained_kwargs), **from_pretrained_kwargs}
    if model == TINY_MODEL:
        kwargs.setdefault("local_files_only", True)
        pipeline = pipeline_cls.from_pretrained(str(ensure_tiny_sdxl()), **kwargs)
    else:
        pipeline = from_pretrained(pipeline_cls, "model", model, **kwargs)
    loaded: StableDiffusionXLPipeline = pipeline.to(target)
    return loaded


def preview_latent_mismatch(family: Family, preview_model: str, channels: int | None = None) -> str | None:
    """Why the TAESD ``preview_model`` (whose latent ``channels`` are read from its folder's
    ``config.json`` when not given) cannot preview ``family``'s latents, else None."""
    if channels is None:
        config = Path(preview_model).expanduser() / "config.json"
        if not config.is_file():
            return None  # a hub id: checked once it loads
        channels = json.loads(config.read_text("utf-8")).get("latent_channels")
    if channels is None or channels == family.latent_channels:
        return None
    return (
        f"{preview_model!r} decodes {channels}-channel latents; {family.title}'s have "
        f"{family.latent_channels} (its TAESD: {family.preview_model!r})"
    )


def load_preview_decoder(
    preview_model: str | None,
    *,
    model: str = DEFAULT_MODEL,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
) -> AutoencoderTiny:
    """Load the ``AutoencoderTiny`` used for previews of ``model``'s latents.

    ``preview_model`` is a hub id or folder; ``None`` means the built-in tiny models' own
    decoder for ``"tiny"``, ``"tiny-flux"`` and ``"tiny-sd3"``, else the family's TAESD
    (``madebyollin/taesdxl``, ``taef1`` or ``taesd3``); ``"tiny"`` always means the tiny
    SDXL model's decoder. A decoder of another latent space (its ``latent_channels`` differ
    from the family's) raises ``ValueError`` naming both.
    """
    import torch

    family = family_of(model)
    target = torch.device(device)
    torch_dtype = resolve_dtype(dtype, target)
    if preview_model == TINY_MODEL or (preview_model is None and model == TINY_MODEL):
        source = str(ensure_tiny_sdxl() / "taesd")
    elif preview_model is None and model in _TINY_DIRS:
        source = str(ensure_tiny_taesd(family.latent_channels))
    else:
        source = preview_model or family.preview_model
    decoder = from_pretrained(
        _d().AutoencoderTiny, "preview model", source, **dtype_kwargs(torch_dtype, {})
    )
    mismatch = preview_latent_mismatch(family, source, int(decoder.config.latent_channels))
    if mismatch:
        raise ValueError(f"preview_model {mismatch}")
    loaded: AutoencoderTiny = decoder.to(target).eval()
    return loaded

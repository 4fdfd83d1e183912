"""Loading diffusers parts from a local folder or the Hugging Face hub, failing fast and clearly offline.

Shared by every pipeline family (:mod:`gridgen.diffusion.models`, :mod:`gridgen.diffusion.builders`).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .errors import ModelNotFoundError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PREVIEW_MODEL",
    "check_model",
    "dtype_kwargs",
    "from_pretrained", "hub_reachable", "looks_like_path"]

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_PREVIEW_MODEL = "madebyollin/taesdxl"
_HUB_PROBE_TIMEOUT_S = 2.0


def hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """False when offline mode is set or the hub's host does not accept a TCP connection quickly.

    The probe (DNS included) runs in a daemon thread so a resolver that hangs cannot
    block the caller longer than ``timeout``.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="gridgen-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (os.sep != "/" and os.sep in model)
    )


def _not_found(what: str, model: str, reason: str, example: str) -> ModelNotFoundError:
    if what == "model":
        fallback = (
            'or use the built-in tiny SDXL with random weights that needs no download (model="tiny"; '
            "on the command line: --model tiny)"
        )
    else:
        fallback = 'or use preview="linear" (a latent-to-RGB approximation that needs no weights)'
    return ModelNotFoundError(
        f"cannot load {what} {model!r}: {reason}. To fix it: pass the path of a local folder "
        f"that holds it (a diffusers save_pretrained layout), or download it on a machine with "
        f"network (`hf download {example}`) and copy the Hugging Face cache here, "
        f"{fallback}."
    )


def check_model(model: str, builtin: Collection[str]) -> None:
    """Raise :class:`ModelNotFoundError` now if loading ``model`` would fail for want of it.

    A cheap look on the host before any worker starts: a ``builtin`` name, a folder that
    exists, a hub id whose ``model_index.json`` is in the Hugging Face cache, or a
    reachable hub pass; what loading finds wrong beyond that still fails in the workers.
    """
    if model in builtin or os.path.isdir(os.path.expanduser(model)):
        return
    if looks_like_path(model):
        raise _not_found("model", model, "no such folder", DEFAULT_MODEL)
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "model_index.json"), str) or hub_reachable():
        return
    raise _not_found(
        "model",
        model,
        "it is neither a local folder nor in the Hugging Face cache, and the hub cannot be "
        "reached (offline, or HF_HUB_OFFLINE=1)",
        model,
    )


def dtype_kwargs(dtype: torch.dtype, given: dict[str, Any]) -> dict[str, Any]:
    """The dtype keyword of ``from_pretrained``: ``dtype`` on diffusers that renamed it, else
    ``torch_dtype``; nothing when the caller passed either."""
    if "dtype" in given or "torch_dtype" in given:
        return {}
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    except ImportError:  # pragma: no cover - older diffusers
        renamed = False
    return {"dtype" if renamed else "torch_dtype": dtype}


def from_pretrained(cls: Any, what: str, model: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` for a folder or hub id, failing fast and clearly when offline."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return cls.from_pretrained(expanded, **kwargs)
    if looks_like_path(model):
        example = DEFAULT_MODEL if what == "model" else DEFAULT_PREVIEW_MODEL
        raise _not_found(what, model, "no such folder", example)
    if kwargs.get("local_files_only"):
        try:
            return cls.from_pretrained(model, **kwargs)
        except (OSError, ValueError) as exc:
            raise _not_found(what, model, f"it is not in the local cache ({exc})", model) from exc
    try:
        return cls.from_pretrained(model, **{**kwargs, "local_files_only": True})
    except (OSError, ValueError) as exc:
        cached_error = exc
    if not hub_reachable():
        raise _not_found(
            what,
            model,
            "it is neither a local folder nor in the Hugging Face cache, and the hub cannot be "
            "reached (offline, or HF_HUB_OFFLINE=1)",
            model,
        ) from cached_error
    return cls.from_pretrained(model, **kwargs)

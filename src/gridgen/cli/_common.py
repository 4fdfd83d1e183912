"""What the ``gridgen`` subcommands share: quiet workers, the model's family and worker class,
messages to stderr."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from .._preflight import UsageError

QUIET_ENV = {
    # Model loading in every worker otherwise prints progress bars and advisories.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TQDM_DISABLE": "1",  # diffusers' "Loading pipeline components" bar has no switch of its own
}


def model_family(model: str) -> Any:
    """The model's family (:func:`gridgen.diffusion.family_of`), as a usage error if unknown."""
    from ..diffusion import family_of

    try:
        return family_of(model)
    except ValueError as exc:
        raise UsageError(f"--model: {exc}") from None


def default_model() -> str:
    from ..sdxl import DEFAULT_MODEL

    return DEFAULT_MODEL


def worker_class(model: str) -> Any:
    """The worker class of ``model``'s family; a built-in tiny model is built once here,
    not in every rank at the same time."""
    from ..diffusion import ensure_tiny, worker_for

    if model in ("tiny", "tiny-flux", "tiny-sd3"):
        ensure_tiny(model)
    return worker_for(model)


def api_keys(args: Any) -> list[str]:
    """The service's API keys: ``--api-key`` (repeatable) and ``$GRIDGEN_API_KEY``."""
    from ..server.auth import api_keys_from

    try:
        return api_keys_from(getattr(args, "api_key", None))
    except ValueError as exc:
        raise UsageError(f"--api-key / $GRIDGEN_API_KEY: {exc}") from None


def quiet_workers(verbose: bool) -> None:
    if verbose:
        os.environ["GRIDGEN_VERBOSE"] = "1"  # the model libraries' own output, in every worker
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def describe(devices: Sequence[str]) -> str:
    """``cpu`` for two CPU workers, not ``cpu, cpu``; ``cuda:0, cuda:1`` for two GPUs."""
    return devices[0] if len(set(devices)) == 1 else ", ".join(devices)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

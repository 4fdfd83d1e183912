"""LoRA adapters per request: where they come from, the request field, and each rank's cache.

* **Sources** (:class:`LoraSources`): named files or folders (``setup(loras={"name": path})``,
  ``--lora NAME=PATH``) and one folder whose ``*.safetensors`` files are adapters named by
  their stem (``setup(lora_dir=...)``, ``--lora-dir``), scanned again whenever the folder
  changes. A request names adapters, never paths: nothing outside these sources is ever read
  because of a request.
* **The field** (:class:`LoraSpec`): ``loras: [{"name": "...", "scale": 0.8}, ...]``, at most
  :data:`MAX_LORAS_PER_REQUEST` adapters, scales from -2 to 2 (default 1). A name with a path
  separator is refused by the request model everywhere; an unknown name by
  :meth:`LoraSources.check`, on the host before the request is queued.
* **The cache** (:class:`~gridgen.diffusion.lora_cache.LoraCache`): one per rank, least recently used adapters unloaded
  first when over ``max_loras`` adapters or ``max_lora_bytes``; the adapters of the request
  being served are never unloaded. Loading goes through diffusers' PEFT integration
  (``load_lora_weights(..., adapter_name=...)``, ``set_adapters``, ``disable_lora``,
  ``delete_adapters``).

What the request gets (:func:`active_loras`): its adapters sorted by name, those at scale 0
left out. A request without adapters (or with every scale 0) runs with the adapters
disabled, where PEFT calls the untouched base layers: bit for bit the images of a pipeline
that never loaded one. Merged requests share the exact adapter set and scales (it is part
of every family's merge key).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from .lora_request import (
    MAX_LORA_SCALE,
    MAX_LORAS_PER_REQUEST,
    Loras,
    LoraSpec,
    active_loras,
    name_problem,
)
from .request import FieldError

__all__ = [
    "DEFAULT_MAX_LORAS",
    "DEFAULT_MAX_LORA_BYTES",
    "MAX_LORAS_PER_REQUEST",
    "MAX_LORA_SCALE",
    "LoraSources",
    "LoraSpec",
    "Loras",
    "active_loras",
    "parse_byte_size",
]

logger = logging.getLogger("gridgen.diffusion")

_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes

DEFAULT_MAX_LORAS = 8
"""Adapters each rank keeps loaded by default (``setup(max_loras=...)``)."""
DEFAULT_MAX_LORA_BYTES = 4 << 30
"""Bytes of adapter weights each rank keeps loaded by default (``setup(max_lora_bytes=...)``)."""


def _request_error(field: str, rule: str, message: str) -> InvalidRequestError:
    return InvalidRequestError([FieldError(field=field, rule=rule, message=message)])


# -- sources --------------------------------------------------------------------------------


def _weights_file(path: Path) -> Path:
    """The safetensors file of an adapter given as a file or a folder."""
    if path.is_file():
        return path
    if path.is_dir():
        preferred = path / _WEIGHTS_FILE
        if preferred.is_file():
            return preferred
        found = sorted(path.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise ValueError(
            f"LoRA folder {str(path)!r} holds {len(found)} .safetensors files and no "
            f"{_WEIGHTS_FILE}: give the file itself"
        )
    raise FileNotFoundError(f"LoRA adapter {str(path)!r} does not exist")


class LoraSources:
    """The adapters a service may use: named paths, and the ``*.safetensors`` of one folder.

    A named adapter shadows a folder file of the same stem. The folder is listed again
    whenever its modification time changes (a file added, removed or renamed), so adapters
    dropped into it are usable at once without a restart.

    Raises (at construction, so ``setup`` fails fast):
        ValueError: a bad name, or a folder holding several weight files.
        FileNotFoundError: a named path or the folder does not exist.
    """

    def __init__(
        self,
        named: Mapping[str, str | os.PathLike[str]] | None = None,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        self.named: dict[str, Path] = {}
        for name, path in (named or {}).items():
            problem = name_problem(str(name))
            if problem is not None:
                raise ValueError(f"loras: {problem[1]}")
            self.named[str(name)] = _weights_file(Path(path).expanduser())
        self.directory = None if directory is None else Path(directory).expanduser()
        if self.directory is not None and not self.directory.is_dir():
            raise FileNotFoundError(f"lora_dir {str(self.directory)!r} is not a folder")
        self._lock = threading.Lock()
        self._listed: tuple[int, dict[str, Path]] | None = None

    @property
    def empty(self) -> bool:
        """No source at all: requests may not name adapters."""
        return not self.named and self.directory is None

    def _folder(self) -> dict[str, Path]:
        if self.directory is None:
            return {}
        try:
            stamp = self.directory.stat().st_mtime_ns
        except OSError:
            return {}
        with self._lock:
            if self._listed is None or self._listed[0] != stamp:
                found = {}
                for file in sorted(self.directory.glob("*.safetensors")):
                    if name_problem(file.stem) is None and file.is_file():
                        found[file.stem] = file
                    else:
                        logger.warning("lora_dir: %s is not a usable adapter name; skipped", file.name)
                self._listed = (stamp, found)
            return self._listed[1]

    def names(self) -> list[str]:
        """Every registered adapter name, sorted."""
        return sorted({**self._folder(), **self.named})

    def path(self, name: str) -> Path | None:
        """The weights file of adapter ``name``, or None when no source holds it."""
        return self.named.get(name) or self._folder().get(name)

    def check(self, loras: Sequence[LoraSpec], field: str = "loras") -> None:
        """Raise :class:`~gridgen.InvalidRequestError` (rule ``unknown_lora``) for the first
        adapter no source holds."""
        for i, spec in enumerate(loras):
            if self.path(spec.name) is None:
                known = ", ".join(self.names()) or "none are configured"
                raise _request_error(
                    f"{field}.{i}.name", "unknown_lora",
                    f"no adapter named {spec.name!r} (registered: {known})",
                )

    @classmethod
    def from_setup(cls, setup_kwargs: Mapping[str, Any]) -> LoraSources:
        """The sources ``setup(loras=..., lora_dir=...)`` gets, shared between calls with the
        same sources (the host checks every request against them)."""
        named = setup_kwargs.get("loras") or {}
        directory = setup_kwargs.get("lora_dir")
        key = (tuple(sorted((str(k), os.fspath(v)) for k, v in dict(named).items())),
               None if directory is None else os.fspath(directory))
        with _SHARED_LOCK:
            sources = _SHARED.get(key)
            if sources is None:
                sources = _SHARED[key] = cls(named, directory)
            return sources


_SHARED: dict[Any, LoraSources] = {}
_SHARED_LOCK = threading.Lock()


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", re.IGNORECASE)


def parse_byte_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"`` or ``"1000000"`` as bytes (powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r} (write e.g. 512M or 2G)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


# -- what the worker calls ---------------------------------------------------------------


def check_request_loras(request: Any, setup_kwargs: Mapping[str, Any]) -> None:
    """On the host, at submit: refuse a request naming an adapter no configured source holds,
    or more adapters than a rank keeps loaded (``max_loras``).

    Raises:
        InvalidRequestError: rule ``unknown_lora`` or ``too_many_loras``, naming the adapter.
    """
    loras = tuple(getattr(request, "loras", ()) or ())
    if not loras:
        return
    LoraSources.from_setup(setup_kwargs).check(loras)
    limit = setup_kwargs.get("max_loras") or DEFAULT_MAX_LORAS
    active = active_loras(loras)
    if len(active) > limit:
        raise _request_error(
            "loras", "too_many_loras",
            f"{len(active)} adapters ({', '.join(n for n, _ in active)}) but each worker keeps "
            f"at most {limit} loaded (max_loras)",
        )

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
* **The cache** (:class:`LoraCache`): one per rank, least recently used adapters unloaded
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
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..errors import InvalidRequestError, LoraLoadError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_LORAS",
    "DEFAULT_MAX_LORA_BYTES",
    "MAX_LORAS_PER_REQUEST",
    "MAX_LORA_SCALE",
    "LoraCache",
    "LoraSources",
    "LoraSpec",
    "Loras",
    "active_loras",
    "parse_byte_size",
    "read_lora",
]

logger = logging.getLogger("gridgen.diffusion")

MAX_LORAS_PER_REQUEST = 4
"""Most adapters one request may name."""
MAX_LORA_SCALE = 2.0
"""Scales run from ``-MAX_LORA_SCALE`` to ``MAX_LORA_SCALE``."""
DEFAULT_MAX_LORAS = 8
"""Adapters each rank keeps loaded by default (``setup(max_loras=...)``)."""
DEFAULT_MAX_LORA_BYTES = 4 << 30
"""Bytes of adapter weights each rank keeps loaded by default (``setup(max_lora_bytes=...)``)."""
MAX_NAME_CHARS = 128
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes


def name_problem(name: str) -> tuple[str, str] | None:
    """``(rule, message)`` when ``name`` cannot name an adapter, else None."""
    if any(sep in name for sep in ("/", "\\", os.sep)):
        return "lora_path", f"adapter {name!r}: a request names a registered adapter, never a path"
    if not 1 <= len(name) <= MAX_NAME_CHARS or not _NAME.fullmatch(name):
        return "lora_name", (
            f"adapter {name!r}: a name is 1 to {MAX_NAME_CHARS} letters, digits and _ . + - "
            "and does not start with . + or -"
        )
    return None


class LoraSpec(BaseModel):
    """One adapter a request asks for: a registered ``name`` and its ``scale``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="A registered adapter's name (never a path).")
    scale: float = Field(
        default=1.0, ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE,
        description="How strongly it applies; 0 leaves it out.",
    )

    @field_validator("name")
    @classmethod
    def _a_name_not_a_path(cls, value: str) -> str:
        problem = name_problem(value)
        if problem is not None:
            raise PydanticCustomError(problem[0], "{message}", {"message": problem[1]})
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, (bool, str, bytes)):
            raise ValueError(f"must be a number, not {type(value).__name__}")
        return value


def _each_once(loras: tuple[LoraSpec, ...]) -> tuple[LoraSpec, ...]:
    seen: set[str] = set()
    for spec in loras:
        if spec.name in seen:
            raise PydanticCustomError(
                "lora_duplicate", "{message}", {"message": f"adapter {spec.name!r} is named twice"}
            )
        seen.add(spec.name)
    return loras


Loras = Annotated[
    tuple[LoraSpec, ...],
    Field(
        max_length=MAX_LORAS_PER_REQUEST,
        description=(
            f"LoRA adapters to apply, by registered name, each with a scale from "
            f"{-MAX_LORA_SCALE:g} to {MAX_LORA_SCALE:g} (default 1); at most "
            f"{MAX_LORAS_PER_REQUEST}. Empty: the base model."
        ),
    ),
    AfterValidator(_each_once),
]
"""The type of every family's ``loras`` request field (default ``()``)."""


def active_loras(loras: Iterable[LoraSpec] | None) -> tuple[tuple[str, float], ...]:
    """``((name, scale), ...)`` sorted by name, scale-0 adapters left out: what a request runs
    with, and the adapter part of its merge key (the same set in any order is one key)."""
    return tuple(sorted((s.name, float(s.scale)) for s in loras or () if s.scale != 0))


def _request_error(field: str, rule: str, message: str) -> InvalidRequestError:
    from ..sdxl.request import FieldError

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


def read_lora(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """An adapter's state dict, read on the CPU from its safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


# -- the per-rank cache ------------------------------------------------------------------


@dataclass
class _Loaded:
    adapter: str  # the PEFT adapter name (users' names may hold dots, which PEFT refuses)
    file: Path
    stamp: tuple[int, int]  # the file's (mtime_ns, size) when loaded
    nbytes: int


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class LoraCache:
    """The adapters loaded into one rank's pipeline, least recently used unloaded first.

    :meth:`activate` makes the pipeline run with exactly a request's adapters: it loads
    those not loaded yet (unloading others to stay within ``max_count`` adapters and
    ``max_bytes``, never one the request uses), then sets them active with their scales,
    or disables every adapter when the request has none. A file that changed on disk since
    it was loaded is loaded again.
    """

    def __init__(
        self,
        pipeline: Any,
        sources: LoraSources,
        max_count: int = DEFAULT_MAX_LORAS,
        max_bytes: int = DEFAULT_MAX_LORA_BYTES,
        reader: Callable[[Path], Mapping[str, Any]] = read_lora,
    ) -> None:
        if type(max_count) is not int or max_count < 1:
            raise ValueError(f"max_loras must be an int >= 1, got {max_count!r}")
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_lora_bytes must be an int >= 1, got {max_bytes!r}")
        self.pipeline = pipeline
        self.sources = sources
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.reader = reader
        self.loaded: OrderedDict[str, _Loaded] = OrderedDict()
        """Loaded adapters by name, least recently used first."""
        self.active: tuple[tuple[str, float], ...] = ()
        self.load_seconds: dict[str, float] = {}
        """Seconds the last load of each adapter took (read, then ``load_lora_weights``)."""
        self._ids = 0

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.loaded.values())

    def activate(self, loras: tuple[tuple[str, float], ...]) -> None:
        """Run the next denoising with exactly ``loras`` (see :func:`active_loras`).

        Raises:
            InvalidRequestError: an adapter no source holds (rule ``unknown_lora``).
            LoraLoadError: an adapter could not be loaded; the pipeline is left with no
                adapter active, so the next request runs as asked.
        """
        names = [name for name, _ in loras]
        try:
            for name in names:
                self._ensure(name, pinned=names)
                self.loaded.move_to_end(name)
        except BaseException:
            self._disable()
            raise
        if not loras:
            self._disable()
            return
        if loras != self.active:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(
                [self.loaded[name].adapter for name in names], [scale for _, scale in loras]
            )
            self.active = loras

    def _disable(self) -> None:
        if self.loaded and self.active != ():
            self.pipeline.disable_lora()
        self.active = ()

    def _ensure(self, name: str, pinned: Sequence[str]) -> None:
        file = self.sources.path(name)
        if file is None:
            known = ", ".join(self.sources.names()) or "none are configured"
            raise _request_error(
                "loras", "unknown_lora", f"no adapter named {name!r} (registered: {known})"
            )
        entry = self.loaded.get(name)
        try:
            stamp = _stamp(file)
        except OSError as exc:
            raise LoraLoadError(f"adapter {name!r}: cannot read {file.name}: {exc}") from exc
        if entry is not None and entry.file == file and entry.stamp == stamp:
            return
        if entry is not None:  # the file changed on disk: load it again
            self._unload(name)
        started = time.perf_counter()
        try:
            state = dict(self.reader(file))
        except Exception as exc:
            raise LoraLoadError(f"adapter {name!r}: cannot read {file.name}: {exc}") from exc
        nbytes = sum(int(t.numel()) * self._element_size() for t in state.values())
        self._make_room(nbytes, pinned)
        self._ids += 1
        adapter = f"gridgen_{self._ids}"
        try:
            self.pipeline.load_lora_weights(state, adapter_name=adapter)
        except Exception as exc:
            self._forget(adapter)
            raise LoraLoadError(f"adapter {name!r} could not be loaded from {file.name}: {exc}") from exc
        self.loaded[name] = _Loaded(adapter, file, stamp, nbytes)
        self.load_seconds[name] = time.perf_counter() - started
        self.active = ()  # a new adapter comes in active: set_adapters again
        logger.info("loaded LoRA %r (%.1f MB) in %.2fs", name, nbytes / 1e6, self.load_seconds[name])

    def _element_size(self) -> int:
        dtype = getattr(self.pipeline, "dtype", None)
        return int(getattr(dtype, "itemsize", 4))

    def _make_room(self, nbytes: int, pinned: Sequence[str]) -> None:
        for name in list(self.loaded):
            if len(self.loaded) < self.max_count and self.nbytes + nbytes <= self.max_bytes:
                return
            if name not in pinned:
                self._unload(name)

    def _unload(self, name: str) -> None:
        entry = self.loaded.pop(name)
        self._forget(entry.adapter)
        self.active = ()
        logger.info("unloaded LoRA %r", name)

    def _forget(self, adapter: str) -> None:
        """Delete PEFT adapter ``adapter`` wherever it got to (also after a failed load)."""
        for component in self._components():
            peft_config = getattr(component, "peft_config", None)
            if peft_config and adapter in peft_config:
                component.delete_adapters(adapter)

    def _components(self) -> list[Any]:
        names = getattr(self.pipeline, "_lora_loadable_modules", ())
        return [c for c in (getattr(self.pipeline, n, None) for n in names) if c is not None]


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


def apply_loras(
    cache: LoraCache | None, request: Any, collective: bool, rank: int, world_size: int, device: Any
) -> None:
    """Make this rank's pipeline run ``request``'s adapters; collective when ``collective``.

    Every rank reports whether it managed; if any did not, every rank raises (its own error,
    or :class:`~gridgen.LoraLoadError` naming the ranks that failed) at the same point, so no
    rank waits in a denoising collective for one that gave up, and the request fails alone.
    """
    wanted = active_loras(getattr(request, "loras", ()))
    error: BaseException | None = None
    if cache is None:
        if wanted:
            error = _request_error(
                "loras", "unknown_lora",
                f"no adapter named {wanted[0][0]!r} (registered: none are configured)",
            )
    else:
        try:
            cache.activate(wanted)
        except Exception as exc:
            error = exc
    if collective:
        import torch
        import torch.distributed as dist

        failed = torch.zeros(world_size, dtype=torch.int32, device=device)
        failed[rank] = error is not None
        dist.all_reduce(failed)
        ranks = [r for r, flag in enumerate(failed.tolist()) if flag]
        if ranks and error is None:
            error = LoraLoadError(
                f"adapters {', '.join(n for n, _ in wanted)}: loading failed on rank(s) "
                f"{', '.join(map(str, ranks))} (their error says why)"
            )
    if error is not None:
        raise error

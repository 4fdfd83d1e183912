"""Each rank's loaded LoRA adapters (:class:`LoraCache`), and how they get into a pipeline.

The cache keeps the bookkeeping (which adapters are loaded, least recently used first,
their bytes, the files they came from); a backend does the loading: :class:`PeftAdapters`
(one PEFT adapter per LoRA, diffusers' ``load_lora_weights`` / ``set_adapters`` /
``disable_lora``) on the eager path, :class:`~gridgen.diffusion.lora_slots.LoraSlots` on the
compiled fast path. See :mod:`gridgen.diffusion.lora` for the rules.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import LoraLoadError
from .lora import (
    DEFAULT_MAX_LORA_BYTES,
    DEFAULT_MAX_LORAS,
    LoraSources,
    _request_error,
    active_loras,
)
from .lora_fusion import LoraFusion
from .lora_slots import LORA_LAYERS, LoraLayers, LoraSlots

LoraMode = Literal["fuse", "slot"]
"""How the compiled fast path applies adapters: added into the weights
(:mod:`~gridgen.diffusion.lora_fusion`) or through a low-rank slot
(:mod:`~gridgen.diffusion.lora_slots`)."""
LORA_MODES: tuple[LoraMode, ...] = ("fuse", "slot")

__all__ = [
    "LoraBackend",
    "LoraCache",
    "PeftAdapters",
    "apply_loras",
    "check_lora_options",
    "lora_warmup_sizes",
    "setup_loras",
]

logger = logging.getLogger("gridgen.diffusion")


class LoraBackend(Protocol):
    """How adapters get into one pipeline: :class:`PeftAdapters` (eager), or on the compiled
    fast path :class:`~gridgen.diffusion.lora_fusion.LoraFusion` or
    :class:`~gridgen.diffusion.lora_slots.LoraSlots`."""

    def load(self, name: str, file: Path) -> tuple[Any, int]:
        """Load adapter ``name`` from ``file``; return a handle for the other calls and its
        bytes in memory."""
        ...

    def unload(self, handle: Any) -> None: ...

    def apply(self, adapters: Sequence[tuple[Any, float]]) -> None:
        """Run with exactly these adapters (handles and scales; not empty)."""
        ...

    def disable(self) -> None:
        """Run the base model: bit for bit a pipeline that never loaded an adapter."""
        ...


class PeftAdapters:
    """Each adapter a PEFT adapter of the pipeline (``load_lora_weights(adapter_name=...)``),
    chosen with ``set_adapters``; none: ``disable_lora`` (PEFT calls the base layers)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._ids = 0

    def load(self, name: str, file: Path) -> tuple[Any, int]:
        self._ids += 1
        adapter = f"gridgen_{self._ids}"  # users' names may hold dots, which PEFT refuses
        before = _lora_bytes(self.pipeline)
        try:
            # The path, not a state dict: diffusers then reads the file's alpha metadata too.
            self.pipeline.load_lora_weights(str(file), adapter_name=adapter)
        except BaseException:
            self.unload(adapter)
            raise
        if not self._holds(adapter):  # diffusers skips keys no layer matches, with a warning
            raise LoraLoadError(f"adapter {name!r} ({file.name}) adapts no layer of this model: "
                                "an adapter made for another model?")
        return adapter, _lora_bytes(self.pipeline) - before

    def _holds(self, adapter: str) -> bool:
        names = getattr(self.pipeline, "_lora_loadable_modules", ())
        return any(adapter in (getattr(getattr(self.pipeline, n, None), "peft_config", None) or {})
                   for n in names)

    def unload(self, handle: Any) -> None:
        """Delete PEFT adapter ``handle`` wherever it got to (also after a failed load)."""
        if self._holds(handle):
            self.pipeline.delete_adapters(handle)

    def apply(self, adapters: Sequence[tuple[Any, float]]) -> None:
        self.pipeline.enable_lora()
        self.pipeline.set_adapters([h for h, _ in adapters], [scale for _, scale in adapters])

    def disable(self) -> None:
        if _lora_bytes(self.pipeline):  # diffusers refuses to disable what was never loaded
            self.pipeline.disable_lora()


def _lora_bytes(pipeline: Any) -> int:
    """Bytes of every LoRA parameter loaded into ``pipeline``'s components."""
    total = 0
    for name in getattr(pipeline, "_lora_loadable_modules", ()):
        component = getattr(pipeline, name, None)
        if component is not None:
            total += sum(p.numel() * p.element_size() for n, p in component.named_parameters() if "lora_" in n)
    return int(total)


@dataclass
class _Loaded:
    handle: Any
    file: Path
    stamp: tuple[int, int]  # the file's (mtime_ns, size) when loaded
    nbytes: int


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


class LoraCache:
    """The adapters loaded on one rank, least recently used unloaded first.

    :meth:`activate` makes the pipeline run with exactly a request's adapters: it loads
    those not loaded yet (unloading others to stay within ``max_count`` adapters and
    ``max_bytes``, never one the request uses), then applies them with their scales, or
    disables every adapter when the request has none. A file that changed on disk since it
    was loaded is loaded again. ``backend``: :class:`PeftAdapters` on the pipeline unless given.
    """

    def __init__(
        self,
        pipeline: Any,
        sources: LoraSources,
        max_count: int = DEFAULT_MAX_LORAS,
        max_bytes: int = DEFAULT_MAX_LORA_BYTES,
        backend: LoraBackend | None = None,
    ) -> None:
        if type(max_count) is not int or max_count < 1:
            raise ValueError(f"max_loras must be an int >= 1, got {max_count!r}")
        if type(max_bytes) is not int or max_bytes < 1:
            raise ValueError(f"max_lora_bytes must be an int >= 1, got {max_bytes!r}")
        self.backend: LoraBackend = PeftAdapters(pipeline) if backend is None else backend
        self.sources = sources
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.loaded: OrderedDict[str, _Loaded] = OrderedDict()
        """Loaded adapters by name, least recently used first."""
        self.active: tuple[tuple[str, float], ...] | None = None
        """What the pipeline runs with now (None: not known, set it again)."""
        self.load_seconds: dict[str, float] = {}
        """Seconds the last load of each adapter took (read, then load into the pipeline)."""

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
            if loras != self.active:
                if loras:
                    self.backend.apply([(self.loaded[n].handle, scale) for n, scale in loras])
                elif self.loaded or self.active is None:
                    self.backend.disable()
                self.active = loras
        except BaseException:
            self.active = None
            if self.loaded:
                self.backend.disable()
                self.active = ()
            raise

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
        self._make_room(stamp[1], pinned)  # a file's size: about its weights' bytes
        self.active = None
        try:
            handle, nbytes = self.backend.load(name, file)
        except LoraLoadError:
            raise
        except Exception as exc:
            raise LoraLoadError(f"adapter {name!r} could not be loaded from {file.name}: {exc}") from exc
        self.loaded[name] = _Loaded(handle, file, stamp, nbytes)
        self.load_seconds[name] = time.perf_counter() - started
        self._make_room(0, pinned)
        logger.info("loaded LoRA %r (%.1f MB) in %.2fs", name, nbytes / 1e6, self.load_seconds[name])

    def _make_room(self, nbytes: int, pinned: Sequence[str]) -> None:
        """Unload least recently used adapters (never a pinned one) until ``nbytes`` more
        fit; with ``nbytes`` 0, until the cache is within its bounds."""
        for name in list(self.loaded):
            count = len(self.loaded) + (1 if nbytes else 0)
            if count <= self.max_count and self.nbytes + nbytes <= self.max_bytes:
                return
            if name not in pinned:
                self._unload(name)

    def _unload(self, name: str) -> None:
        entry = self.loaded.pop(name)
        self.backend.unload(entry.handle)
        self.active = None
        logger.info("unloaded LoRA %r", name)


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


def check_lora_options(
    loras: Mapping[str, str | os.PathLike[str]] | None,
    lora_dir: str | os.PathLike[str] | None,
    max_loras: int,
    max_lora_bytes: int,
    lora_max_rank: int,
    quantize: str | None,
    lora_layers: LoraLayers = "attention",
    lora_mode: LoraMode = "fuse",
) -> LoraSources:
    """``setup``'s LoRA options, checked before the model loads; the adapter sources.

    Raises:
        ValueError / FileNotFoundError: a bad name, path, bound, ``lora_layers`` or
            ``lora_mode``, or FP8 with adapters.
    """
    sources = LoraSources(loras, lora_dir)
    for name, value, low in (("max_loras", max_loras, 1), ("max_lora_bytes", max_lora_bytes, 1),
                             ("lora_max_rank", lora_max_rank, 1)):
        if type(value) is not int or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if lora_layers not in LORA_LAYERS:
        raise ValueError(f"lora_layers must be one of {', '.join(LORA_LAYERS)}, got {lora_layers!r}")
    if lora_mode not in LORA_MODES:
        raise ValueError(f"lora_mode must be one of {', '.join(LORA_MODES)}, got {lora_mode!r}")
    if quantize is not None and not sources.empty:
        raise ValueError(f"quantize={quantize!r} and LoRA adapters do not combine: the float8 "
                         "layers would quantize the adapters' low-rank weights too")
    return sources


def setup_loras(
    pipeline: Any,
    sources: LoraSources,
    fast_path: bool,
    max_loras: int,
    max_lora_bytes: int,
    lora_max_rank: int,
    lora_layers: LoraLayers = "attention",
    lora_mode: LoraMode = "fuse",
) -> LoraCache | None:
    """The worker's cache of adapters from ``sources``, or None when there are none.

    On the fast path (CUDA graphs, compiled regions), adapters are fused into the weights
    (:class:`~gridgen.diffusion.lora_fusion.LoraFusion`) or, with ``lora_mode="slot"``, go
    through one fixed slot (:class:`~gridgen.diffusion.lora_slots.LoraSlots`), added here:
    call this before the pipeline is compiled or captured.
    """
    if sources.empty:
        return None
    backend: LoraBackend
    if not fast_path:
        backend = PeftAdapters(pipeline)
    elif lora_mode == "fuse":
        backend = LoraFusion(pipeline)
    else:
        backend = LoraSlots(pipeline, lora_max_rank, lora_layers)
    cache = LoraCache(pipeline, sources, max_loras, max_lora_bytes, backend=backend)
    cache.active = ()
    return cache


def lora_warmup_sizes(warmup: Sequence[int], cache: LoraCache | None) -> Iterator[int]:
    """``setup(warmup=...)``'s sizes, run twice with a LoRA slot: adapters off, then through
    the (zero) slot, so both paths are compiled and captured before the first request."""
    yield from warmup
    if cache is not None and isinstance(cache.backend, LoraSlots) and warmup:
        cache.backend.apply([])
        yield from warmup
        cache.backend.disable()

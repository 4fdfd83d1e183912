"""CUDA graphs around any module's forward: :class:`GraphedForward`.

SDXL's :class:`~gridgen.diffusion.fast.GraphedUNet` knows the UNet's arguments by name.
The transformer families call their denoiser and text encoders with other arguments
(FLUX.1's transformer takes seven tensors; its T5 and CLIP encoders return model outputs
read by attribute), so this wrapper keys on the call's whole argument tree instead: the
tensors' shapes, dtypes and devices and every other argument's value. A new key captures a
graph; a known key copies the inputs into the graph's static buffers and replays it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["GraphedForward", "capture_graph"]

logger = logging.getLogger("gridgen.diffusion")


class GraphedForward:
    """Replaces ``module.forward`` with CUDA graph replays, one graph per argument signature.

    Outputs are cloned out of the graph's static buffers on every replay (the caller may
    keep one call's output while making the next: FLUX.1's true CFG calls the transformer
    twice a step, the pipelines call a text encoder for the prompt and again for the
    negative prompt). Every graph of one wrapper shares one memory pool: calls run one at a
    time on one stream. A call with an argument that cannot be part of a key (a dict, a
    list of tensors) runs eager, as does every call after a failed capture (a forward that
    synchronises with the host). On CPU the static-buffer path runs without a graph, so the
    wrapper is testable anywhere.
    """

    def __init__(self, module: Any, warmup: int = 2, variant: Callable[[], Hashable] | None = None) -> None:
        import torch

        self.module = module
        self.eager = module.forward
        self.warmup = warmup
        self.variant = variant
        """What decides the computation besides the arguments (a LoRA slot on or off): part
        of every graph's key."""
        self.cuda = next(module.parameters()).device.type == "cuda"
        self.entries: dict[Hashable, dict[str, Any]] = {}
        self.capture_seconds: list[float] = []
        self.fallbacks = 0
        self.failed: str | None = None
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None

    def install(self) -> GraphedForward:
        """Route ``module.forward`` through the graphs; returns self."""
        self.module.forward = self
        return self

    def uninstall(self) -> None:
        """Give the module its eager forward back and drop the graphs (and their buffers)."""
        self.module.__dict__.pop("forward", None)
        self.entries.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

        leaves, spec = tree_flatten((args, kwargs))
        key = self._key(leaves, spec) if self.failed is None else None
        if key is None:
            self.fallbacks += 1
            return self.eager(*args, **kwargs)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._capture(key, leaves, spec)
            if entry is None:
                self.fallbacks += 1
                return self.eager(*args, **kwargs)
        for static, value in zip(entry["inputs"], leaves, strict=True):
            if static is not None:
                static.copy_(value)
        if entry["graph"] is None:
            static_args, static_kwargs = tree_unflatten(entry["leaves"], spec)
            return self.eager(*static_args, **static_kwargs)
        entry["graph"].replay()
        return tree_map(lambda x: x.clone() if torch.is_tensor(x) else x, entry["out"])

    def _key(self, leaves: list[Any], spec: Any) -> Hashable | None:
        import torch

        parts: list[Hashable] = [str(spec)]
        for leaf in leaves:
            if torch.is_tensor(leaf):
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.device))
            elif leaf is None or isinstance(leaf, (bool, int, float, str)):
                parts.append((type(leaf), leaf))
            else:
                return None
        if self.variant is not None:
            parts.append(self.variant())
        return tuple(parts)

    def _capture(self, key: Hashable, leaves: list[Any], spec: Any) -> dict[str, Any] | None:
        import torch
        from torch.utils._pytree import tree_unflatten

        started = time.perf_counter()
        inputs = [leaf.clone() if torch.is_tensor(leaf) else None for leaf in leaves]
        static_leaves = [s if s is not None else leaf for s, leaf in zip(inputs, leaves, strict=True)]
        static_args, static_kwargs = tree_unflatten(static_leaves, spec)
        entry: dict[str, Any] = {"inputs": inputs, "leaves": static_leaves, "graph": None, "out": None}
        if self.cuda:
            try:
                entry["graph"], entry["out"] = capture_graph(
                    lambda: self.eager(*static_args, **static_kwargs), self.warmup, self.pool
                )
            except Exception as exc:
                self.failed = f"{type(exc).__name__}: {exc}"
                logger.warning("%s stays eager: CUDA graph capture failed (%s)", type(self.module).__name__, exc)
                return None
        self.entries[key] = entry
        self.capture_seconds.append(time.perf_counter() - started)
        logger.info("%s graph ready in %.2fs", type(self.module).__name__, self.capture_seconds[-1])
        return entry


def capture_graph(run: Callable[[], Any], warmup: int, pool: Any = None) -> tuple[Any, Any]:
    """Run ``run`` ``warmup`` times on a side stream (cuBLAS/cuDNN workspaces, compiled
    kernels, lazily tuned ones), then capture one more run in a CUDA graph (in ``pool``, if
    given); return the graph and that run's output, whose tensors the graph's replays
    overwrite. Gradients off throughout."""
    import torch

    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), torch.no_grad():
        out = run()
    torch.cuda.synchronize()
    return graph, out

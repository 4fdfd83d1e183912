"""Workers for the GPU benchmark: importable by module path, as spawn needs.

``BenchSDXLWorker`` is gridgen's SDXL worker plus two bench-only requests:
``{"bench": "memory"}`` returns this process's peak GPU memory since the last such
request, and ``"bench_latents": true`` adds the final latents of rank 0's share to the
result, for the optimised-vs-eager comparison.
"""

from __future__ import annotations

from typing import Any

from seed_recipe import ExampleDistributedWorker

from gridgen.sdxl import SDXLWorker

__all__ = ["BenchSDXLWorker", "SeedBenchWorker"]


def _peak() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {"peak_gib": 0.0}
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return {"peak_gib": peak}


class BenchSDXLWorker(SDXLWorker):
    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        if payload.get("bench") == "memory":
            return _peak()
        want_latents = bool(payload.pop("bench_latents", False))
        self._bench_latents = None
        result = super().__call__(streaming=streaming, **payload)
        if want_latents and self.rank == 0 and self._bench_latents is not None:
            if hasattr(result, "result"):  # a deferred result (concurrent.futures.Future)
                result = result.result()
            result = {**result, "latents": self._bench_latents.float().cpu()}
        return result

    def _decode(self, latents: Any, request: Any) -> Any:  # type: ignore[override]
        self._bench_latents = latents
        return super()._decode(latents, request)


class SeedBenchWorker(ExampleDistributedWorker):
    """The seed's worker; its bench-only memory request is handled in seed_recipe.py."""

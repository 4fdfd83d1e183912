"""Workers for the GPU benchmark: importable by module path, as spawn needs.

``BenchSDXLWorker`` is gridgen's SDXL worker plus three bench-only requests:
``{"bench": "memory"}`` returns this process's peak GPU memory since the last such
request; ``{"bench": "bare", "payload": {...}, "repeats": k}`` runs the optimised pipeline
itself ``k`` times back to back in this process (text encoders, denoising, VAE decode to
uint8 on the device; no runner, no grid, no encoding) and returns the seconds; and
``"bench_latents": true`` adds the final latents of rank 0's share to the result, for
the optimised-vs-eager comparison.
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
    @classmethod
    def batch_key(cls, payload: dict[str, Any]) -> Any:
        # bench-only requests are no SDXL requests: never merged, served by __call__ below
        if "bench" in payload or payload.get("bench_latents"):
            return None
        return super().batch_key(payload)

    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        if payload.get("bench") == "memory":
            return _peak()
        if payload.get("bench") == "setup":
            return dict(getattr(self, "setup_phases", {}))
        if payload.get("bench") == "bare":
            return self._bare(payload["payload"], int(payload.get("repeats", 1)))
        want_latents = bool(payload.pop("bench_latents", False))
        self._bench_latents = None
        result = super().__call__(streaming=streaming, **payload)
        if want_latents and self.rank == 0 and self._bench_latents is not None:
            if hasattr(result, "result"):  # a deferred result (concurrent.futures.Future)
                result = result.result()
            result = {**result, "latents": self._bench_latents.float().cpu()}
        return result

    def _bare(self, request: dict[str, Any], repeats: int) -> dict[str, float]:
        """The bare optimised pipeline: what a request costs without the runner and encoding."""
        import time

        import torch

        from gridgen.diffusion.preview import to_uint8

        n, vae = request["num_images"], self.pipeline.vae
        self._sync()
        started = time.perf_counter()
        for _ in range(repeats):
            latents = self.pipeline(
                prompt=request["prompt"], negative_prompt=request.get("negative_prompt"),
                width=request["width"], height=request["height"],
                num_inference_steps=request["num_inference_steps"],
                guidance_scale=request["guidance_scale"], num_images_per_prompt=n,
                generator=[torch.Generator(self.device).manual_seed(i) for i in range(n)],
                output_type="latent",
            ).images
            latents = latents.to(vae.dtype) / vae.config.scaling_factor
            with torch.inference_mode():
                for start in range(0, n, self.decode_batch_size):
                    chunk = latents[start : start + self.decode_batch_size]
                    to_uint8(vae.decode(chunk, return_dict=False)[0])
        self._sync()
        return {"seconds": time.perf_counter() - started}

    def _decode(self, latents: Any, request: Any) -> Any:  # type: ignore[override]
        self._bench_latents = latents
        return super()._decode(latents, request)


class SeedBenchWorker(ExampleDistributedWorker):
    """The seed's worker; its bench-only memory request is handled in seed_recipe.py."""

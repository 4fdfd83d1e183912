"""FLUX.1-dev at full size (random weights) on one GPU: gridgen's FluxWorker behind a runner
against the plain diffusers pipeline call, same settings, same process, one after the other.

Measures s/image at 1 and 4 images per request (1024x1024, 28 steps, bf16, distilled guidance
3.5), peak GPU memory, and what streaming linear previews every 5 steps cost. Weights are
``flux-random`` (gridgen/diffusion/configs/flux.1-dev.json, seeded), so both sides run the same
model; the timings are the architecture's, the images are noise.

    PYTHONPATH=src:bench python3 bench/family_bench.py --out $OUT [--steps 28 --size 1024 --rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any

from gridgen import Batch, DistributedRunner
from gridgen.diffusion import FluxWorker


class BenchFluxWorker(FluxWorker):
    """FluxWorker that reports rank 0's peak GPU memory with each result."""

    def setup(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        import torch

        super().setup(*args, **kwargs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # not the fp32 build of the random weights

    def run_batch(self, batch: Batch) -> list[Any]:
        import torch

        results = super().run_batch(batch)
        peak = torch.cuda.max_memory_allocated() / 2**30
        return [{**r, "peak_gib": peak} if isinstance(r, dict) and r else r for r in results]


def payload(args: argparse.Namespace, images: int, preview_every: int = 0) -> dict[str, Any]:
    return {
        "prompt": "a lighthouse at dawn", "num_images": images, "width": args.size, "height": args.size,
        "num_inference_steps": args.steps, "guidance_scale": 3.5, "seed": 1, "preview_every": preview_every,
    }


async def gridgen_side(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    # The worker class must be importable by name in the worker process, not __main__'s.
    from family_bench import BenchFluxWorker as worker_cls

    out: dict[str, Any] = {}
    runner = DistributedRunner(
        worker_cls, world_size=1, device="cuda", request_timeout=900, stream_buffer=1024,
        setup_kwargs={"model": "flux-random", "dtype": "bf16", "preview": "linear",
                      "defer_encoding": False, "warmup": (1,), "warmup_size": (args.size, args.size)},
    )
    started = time.perf_counter()
    async with runner:
        out["startup_s"] = time.perf_counter() - started
        log(f"gridgen started in {out['startup_s']:.1f}s")
        for images in args.images:
            for stream in (False, True):
                times, peaks, items = [], [], 0
                for _ in range(args.rounds):
                    begun = time.perf_counter()
                    if stream:
                        result: Any = None
                        async for item in runner.stream(payload(args, images, preview_every=5)):
                            items += 1
                            result = item
                    else:
                        result = await runner.invoke(payload(args, images))
                    times.append(time.perf_counter() - begun)
                    peaks.append(float(result["peak_gib"]))
                key = f"{images}{'-stream' if stream else ''}"
                out[key] = {"s_per_image": min(times) / images, "times_s": times, "peak_gib": max(peaks),
                            "stream_items": items, "timings": result["timings"]}
                log(f"gridgen {key}: {min(times) / images:.3f} s/image, peak {max(peaks):.1f} GiB")
    return out


def diffusers_side(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    import torch

    from gridgen.diffusion import build_random

    out: dict[str, Any] = {}
    started = time.perf_counter()
    pipe = build_random("flux-random", "cuda", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out["build_s"] = time.perf_counter() - started
    pipe(prompt="warm-up", width=args.size, height=args.size, num_inference_steps=2)  # cuBLAS, allocator
    for images in args.images:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.rounds):
            begun = time.perf_counter()
            pipe(
                prompt="a lighthouse at dawn", num_images_per_prompt=images, width=args.size, height=args.size,
                num_inference_steps=args.steps, guidance_scale=3.5,
                generator=torch.Generator("cuda").manual_seed(1),
            )
            torch.cuda.synchronize()
            times.append(time.perf_counter() - begun)
        peak = torch.cuda.max_memory_allocated() / 2**30
        out[str(images)] = {"s_per_image": min(times) / images, "times_s": times, "peak_gib": peak}
        log(f"diffusers {images}: {min(times) / images:.3f} s/image, peak {peak:.1f} GiB")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--images", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    args = parser.parse_args()

    import diffusers
    import torch

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    data: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "model": "flux-random (FLUX.1-dev architecture, random weights)", "dtype": "bfloat16",
        "size": args.size, "steps": args.steps, "rounds": args.rounds,
    }
    data["gridgen"] = asyncio.run(gridgen_side(args, log))
    data["diffusers"] = diffusers_side(args, log)
    path = Path(args.out) / f"{data['date']}-flux-random-{data['device'].replace('NVIDIA ', '').lower()}.json"
    path.write_text(json.dumps(data, indent=2))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

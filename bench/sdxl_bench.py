"""Side-by-side GPU benchmark: the seed's recipe against gridgen's SDXL worker.

Full-size SDXL with random weights (the published configs; compute per step is the
real model's), 1024x1024, 20 steps, classifier-free guidance, 16-bit weights, one
prompt. Both run in one host process on one GPU, each behind a ``DistributedRunner``
at ``world_size=1`` (``--world-size`` for more GPUs), in alternating rounds:

* ``seed_recipe``: ``bench/seed_recipe.py``, the seed's worker exactly: one image per
  GPU per request, VAE upcast, ``output_type="pt"``; streaming = its callback every 5 steps;
* ``gridgen``: ``gridgen.sdxl.SDXLWorker`` with 1, 4 and 8 images per GPU, with and
  without streaming previews every 5 steps.

Each measurement queues ``--requests`` requests at once and times first submit to last
result, as a service under load sees it: s/image = that time / images made.

    python bench/sdxl_bench.py --out results_dir [--rounds 2] [--images 1,4,8]

writes ``<out>/<date>-<gpu>.json`` (and prints a table); ``bench/plot.py`` draws it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_workers import BenchSDXLWorker, SeedBenchWorker

from gridgen import DistributedRunner

UNET_TFLOP_PER_STEP_CFG = 13.52  # one CFG UNet step (batch 2) at 1024x1024, from the config's counts
VAE_TFLOP_PER_DECODE = 10.47
PROMPT = "a lighthouse at dawn, volumetric light, highly detailed"
NEGATIVE = "A blurry image"


def tflop_per_image(steps: int) -> float:
    return steps * UNET_TFLOP_PER_STEP_CFG + VAE_TFLOP_PER_DECODE


def gridgen_payload(images: int, stream: bool, args: argparse.Namespace, seed: int = 0) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "num_images": images * args.world_size,
        "width": args.size,
        "height": args.size,
        "num_inference_steps": args.steps,
        "guidance_scale": 5.0,
        "seed": seed,
        "preview_every": 5 if stream else 0,
        "output": "grid",
        "image_format": args.image_format,
    }


def seed_payload(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "width": args.size,
        "height": args.size,
        "num_inference_steps": args.steps,
    }


async def timed_batch(runner: DistributedRunner[Any], payload: dict[str, Any], stream: bool, requests: int) -> tuple[float, int]:
    """Queue ``requests`` copies at once; return (seconds, stream items seen)."""
    items = 0

    async def one() -> None:
        nonlocal items
        if stream:
            async for _ in runner.stream(payload):
                items += 1
        else:
            await runner.invoke(payload)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    return time.perf_counter() - started, items


async def peak_gib(runner: DistributedRunner[Any]) -> float:
    result = await runner.invoke({"bench": "memory"})
    return float(result["peak_gib"])


class Results:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "runs": [], "startup": {}, "samples": {}, "accuracy": None}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))


async def main(args: argparse.Namespace) -> Results:
    import diffusers
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    date = datetime.date.today().isoformat()
    slug = gpu.replace("NVIDIA ", "").replace(" ", "-").lower()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Results(
        out / f"{date}-{slug}{'' if args.world_size == 1 else f'x{args.world_size}'}.json",
        {
            "device": gpu,
            "date": date,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "width": args.size,
            "height": args.size,
            "steps": args.steps,
            "world_size": args.world_size,
            "requests_per_measurement": args.requests,
            "model": args.model,
            "gridgen_setup": args.gridgen_setup,
            "image_format": args.image_format,
        },
    )
    setup = json.loads(args.gridgen_setup)
    common = {"world_size": args.world_size, "device": device, "request_timeout": 600, "stream_buffer": 1024}

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    gridgen = DistributedRunner(BenchSDXLWorker, setup_kwargs={"model": args.model, **setup}, **common)
    started = time.perf_counter()
    await gridgen.start()
    results.data["startup"]["gridgen_cold_s"] = time.perf_counter() - started
    log(f"gridgen started (cold) in {results.data['startup']['gridgen_cold_s']:.1f}s")
    results.save()

    seed = DistributedRunner(SeedBenchWorker, setup_kwargs={"model": args.model}, **common)
    started = time.perf_counter()
    await seed.start()
    results.data["startup"]["seed_recipe_s"] = time.perf_counter() - started
    log(f"seed recipe started in {results.data['startup']['seed_recipe_s']:.1f}s")

    configs: list[tuple[str, int, bool]] = []
    for stream in (False, True):
        configs.append(("seed_recipe", 1, stream))
        for images in args.images:
            configs.append(("gridgen", images, stream))

    def payload_of(name: str, images: int, stream: bool) -> dict[str, Any]:
        return seed_payload(args) if name == "seed_recipe" else gridgen_payload(images, stream, args)

    runners = {"seed_recipe": seed, "gridgen": gridgen}
    samples: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    for name, images, stream in configs:  # warm-up: one request of each, memory peak per config
        key = f"{name}/{images}/{'stream' if stream else 'plain'}"
        await peak_gib(runners[name])
        seconds, items = await timed_batch(runners[name], payload_of(name, images, stream), stream, 1)
        peaks[key] = await peak_gib(runners[name])
        log(f"warm-up {key}: {seconds:.2f}s, {items} items, peak {peaks[key]:.1f} GiB")
        samples[key] = []
    for round_ in range(args.rounds):
        for name, images, stream in configs:
            key = f"{name}/{images}/{'stream' if stream else 'plain'}"
            seconds, _ = await timed_batch(runners[name], payload_of(name, images, stream), stream, args.requests)
            per_image = seconds / (args.requests * images)
            samples[key].append(per_image)
            log(f"round {round_ + 1} {key}: {per_image:.3f} s/image")
        results.data["samples"] = samples
        results.save()

    flop = tflop_per_image(args.steps) * (args.size / 1024) ** 2
    for name, images, stream in configs:
        key = f"{name}/{images}/{'stream' if stream else 'plain'}"
        s = statistics.median(samples[key])
        results.data["runs"].append(
            {
                "name": name,
                "images_per_gpu": images,
                "stream": stream,
                "s_per_image": round(s, 4),
                "img_per_s_per_gpu": round(1 / s, 4),
                "peak_gib": round(peaks[key], 2),
                "tflops": round(flop / s, 1),
                "samples_s_per_image": [round(x, 4) for x in samples[key]],
            }
        )
    results.save()
    await seed.stop()

    if args.accuracy and setup:
        # the same request through an eager worker (no optimisation options) vs the optimised one
        eager = DistributedRunner(BenchSDXLWorker, setup_kwargs={"model": args.model}, **common)
        await eager.start()
        request = {**gridgen_payload(2, False, args, seed=1234), "output": "images", "image_format": "png", "bench_latents": True}
        fast_out, eager_out = await gridgen.invoke(request), await eager.invoke(request)
        await eager.stop()
        results.data["accuracy"] = compare(fast_out, eager_out)
        log(f"accuracy: {results.data['accuracy']}")
    if args.warm_restart:  # last, so a run cut short still has everything else
        started = time.perf_counter()
        await gridgen.restart()
        results.data["startup"]["gridgen_warm_s"] = time.perf_counter() - started
        log(f"gridgen restarted (warm caches) in {results.data['startup']['gridgen_warm_s']:.1f}s")
        results.save()
    await gridgen.stop()
    results.save()
    return results


def compare(fast: dict[str, Any], eager: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    image_diffs = [
        np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
        for a, b in zip(fast["images"], eager["images"], strict=True)
    ]
    report: dict[str, Any] = {
        "images_max_abs_uint8": int(max(d.max() for d in image_diffs)),
        "images_mean_abs_uint8": float(np.mean([d.mean() for d in image_diffs])),
    }
    if "latents" in fast and "latents" in eager:
        a, b = fast["latents"].float(), eager["latents"].float()
        report["latents_max_abs"] = float((a - b).abs().max())
        report["latents_mean_abs"] = float((a - b).abs().mean())
        report["latents_rel_l2"] = float((a - b).norm() / b.norm())
    return report


def print_table(data: dict[str, Any]) -> None:
    print(f"\n{data['device']}, torch {data['torch']}, diffusers {data['diffusers']}, {data['width']}x{data['height']}, {data['steps']} steps")
    print(f"startup: {json.dumps({k: round(v, 1) for k, v in data['startup'].items()})}")
    print(f"{'run':12} {'img/gpu':>7} {'stream':>6} {'s/img':>7} {'img/s':>7} {'TFLOP/s':>8} {'peak GiB':>8}")
    for run in data["runs"]:
        print(
            f"{run['name']:12} {run['images_per_gpu']:7d} {run['stream']!s:>6} {run['s_per_image']:7.3f} "
            f"{run['img_per_s_per_gpu']:7.3f} {run['tflops']:8.1f} {run['peak_gib']:8.1f}"
        )
    if data.get("accuracy"):
        print(f"accuracy vs eager: {data['accuracy']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3, help="requests queued per measurement")
    parser.add_argument("--images", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    parser.add_argument("--model", default="sdxl-random", help="'tiny' for a CPU dry run of the plumbing")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--image-format", default="png", choices=["png", "jpeg", "webp"])
    parser.add_argument("--gridgen-setup", default="{}", help="JSON setup kwargs for SDXLWorker (optimisations)")
    parser.add_argument("--warm-restart", action="store_true", help="restart gridgen once to time a warm start")
    parser.add_argument("--accuracy", action="store_true", help="compare the optimised worker with an eager one")
    arguments = parser.parse_args()
    final = asyncio.run(main(arguments))
    print_table(final.data)

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
``--concurrent N`` also times N one-image requests submitted at once (merged into one call
up to ``--max-batch``, issue 12).

``--steady R[,R...] --steady-requests N`` measures latency under a steady queue: N one-image
requests (different prompts and seeds) arrive at R requests/s (every 1/R s, or
``--steady-arrivals poisson``), each timed from its arrival
to its result; once with merging on (``--max-batch``, default the runner's 8) and once off
(``max_batch=1``), on the same warm runner. Mean, p50 and p90 go to the results' ``latency``.

    python bench/sdxl_bench.py --out results_dir [--rounds 2] [--images 1,4,8]

writes ``<out>/<date>-<gpu>.json`` (and prints a table); ``bench/plot.py`` draws it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
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
        "image_format": args.formats[0],
    }


def seed_payload(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "width": args.size,
        "height": args.size,
        "num_inference_steps": args.steps,
    }


async def timed_batch(
    runner: DistributedRunner[Any], payload: dict[str, Any], stream: bool, requests: int
) -> tuple[float, int, list[dict[str, Any]]]:
    """Queue ``requests`` copies at once; return (seconds, stream items seen, result timings)."""
    items = 0
    timings: list[dict[str, Any]] = []

    async def one() -> None:
        nonlocal items
        if stream:
            async for _ in runner.stream(payload):
                items += 1
        else:
            result = await runner.invoke(payload)
            if isinstance(result, dict) and "timings" in result:
                timings.append(result["timings"])

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    return time.perf_counter() - started, items, timings


def arrival_times(rate: float, requests: int, arrivals: str) -> list[float]:
    """Seconds from the start: every ``1 / rate`` (fixed), or a Poisson process of that rate
    (seeded, so merging on and off see the same arrivals)."""
    if arrivals == "fixed":
        return [i / rate for i in range(requests)]
    import random

    rng, now, out = random.Random(12), 0.0, []
    for _ in range(requests):
        out.append(now)
        now += rng.expovariate(rate)
    return out


async def steady_latency(runner: DistributedRunner[Any], rate: float, requests: int, args: argparse.Namespace) -> dict[str, Any]:
    """``requests`` one-image requests arriving at ``rate`` per second (open loop: an arrival
    never waits for an earlier result); latency = arrival to result."""
    latencies: list[float] = []
    denoise: set[float] = set()
    offsets = arrival_times(rate, requests, args.steady_arrivals)
    started = time.perf_counter()

    async def one(i: int) -> None:
        arrival = started + offsets[i]
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        payload = {**gridgen_payload(1, False, args, seed=1000 + i), "num_images": 1, "prompt": f"{PROMPT}, variant {i}"}
        result = await runner.invoke(payload)
        latencies.append(time.perf_counter() - arrival)
        denoise.add(result["timings"]["denoise"])  # one value per call: merged requests share it

    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "max_batch": runner.max_batch,
        "rate_per_s": rate,
        "arrivals": args.steady_arrivals,
        "requests": requests,
        "mean_s": round(statistics.fmean(ordered), 4),
        "p50_s": round(statistics.median(ordered), 4),
        "p90_s": round(statistics.quantiles(ordered, n=10, method="inclusive")[8], 4),
        "max_s": round(ordered[-1], 4),
        "calls": len(denoise),
        "wall_s": round(wall, 3),
        "throughput_per_s": round(requests / wall, 4),
    }


async def setup_phases(runner: DistributedRunner[Any], started: float, ready: float) -> dict[str, float]:
    """Seconds per phase of rank 0's setup, and ``process_start``: the rest of the start
    (spawning the worker, imports, the process group) before and after setup."""
    phases: dict[str, float] = await runner.invoke({"bench": "setup"})
    return {"process_start": round(ready - started - sum(phases.values()), 3), **phases}


async def peak_gib(runner: DistributedRunner[Any]) -> float:
    result = await runner.invoke({"bench": "memory"})
    return float(result["peak_gib"])


class Results:
    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {**header, "runs": [], "latency": [], "startup": {}, "samples": {}, "accuracy": None}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))


@dataclasses.dataclass(frozen=True)
class Config:
    """One measured configuration: ``requests`` requests of ``images`` images per GPU, queued at once."""

    name: str  # "seed_recipe", "gridgen" or "bare_pipeline"
    images: int
    stream: bool
    image_format: str  # "none" for the bare pipeline (no encoding)
    requests: int

    @property
    def key(self) -> str:
        return f"{self.name}/{self.images}/{'stream' if self.stream else 'plain'}/{self.image_format}/r{self.requests}"


def configs_of(args: argparse.Namespace) -> list[Config]:
    out: list[Config] = []
    first = args.formats[0]
    if args.seed_recipe:
        out.append(Config("seed_recipe", 1, False, "png", args.requests))
    for fmt in args.formats:
        out += [Config("gridgen", n, False, fmt, args.requests) for n in args.images]
    if args.concurrent:
        # N one-image requests at once: merged into one batch where the worker batches
        # requests, one after another where it does not.
        out.append(Config("gridgen", 1, False, first, args.concurrent))
    if args.bare:
        out += [Config("bare_pipeline", n, False, "none", args.requests) for n in args.images]
    if args.seed_recipe and args.stream_images:
        out.append(Config("seed_recipe", 1, True, "png", args.requests))
    out += [Config("gridgen", n, True, first, args.requests) for n in args.stream_images]
    return out


def precision_of(setup: dict[str, Any], name: str) -> str:
    if name == "seed_recipe":
        return "fp16 (fp32 VAE)"
    dtype = str(setup.get("dtype") or "fp16").replace("torch.", "")
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)


async def measure(runners: dict[str, DistributedRunner[Any]], config: Config, args: argparse.Namespace) -> tuple[float, list[dict[str, Any]]]:
    """Seconds for one measurement of ``config`` (all its requests) and the results' timings."""
    if config.name == "bare_pipeline":
        payload = {"bench": "bare", "payload": gridgen_payload(config.images, False, args), "repeats": config.requests}
        result = await runners["gridgen"].invoke(payload)
        return float(result["seconds"]), []
    if config.name == "seed_recipe":
        payload = seed_payload(args)
    else:
        payload = {**gridgen_payload(config.images, config.stream, args), "image_format": config.image_format}
    seconds, _, timings = await timed_batch(runners[config.name], payload, config.stream, config.requests)
    return seconds, timings


def isolate_compile_caches() -> Path:
    """Point inductor and Triton at fresh folders this run owns, so it may wipe them later."""
    root = Path(tempfile.mkdtemp(prefix="gridgen-bench-caches-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    return root


async def main(args: argparse.Namespace) -> Results:
    import diffusers
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    date = datetime.date.today().isoformat()
    slug = gpu.replace("NVIDIA ", "").replace(" ", "-").lower()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = json.loads(args.gridgen_setup)
    cache_root = isolate_compile_caches() if args.cache_restart else None
    if args.compile_cache:
        setup["compile_cache"] = args.compile_cache
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
            "gridgen_setup": json.dumps(setup),
            "formats": args.formats,
            "command": " ".join(sys.argv),
        },
    )
    common = {"world_size": args.world_size, "device": device, "request_timeout": 600, "stream_buffer": 1024}

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    batching: dict[str, Any] = {} if args.max_batch is None else {"max_batch": args.max_batch}
    if args.batch_sizes:
        batching["batch_sizes"] = args.batch_sizes
    gridgen = DistributedRunner(BenchSDXLWorker, setup_kwargs={"model": args.model, **setup}, **common, **batching)
    results.data["max_batch"] = gridgen.max_batch
    results.data["batch_sizes"] = None if gridgen.batch_sizes is None else list(gridgen.batch_sizes)
    started = time.perf_counter()
    await gridgen.start()
    results.data["startup"]["gridgen_cold_s"] = time.perf_counter() - started
    results.data["startup"]["gridgen_cold_phases"] = await setup_phases(gridgen, started, started + results.data["startup"]["gridgen_cold_s"])
    log(f"gridgen started (cold) in {results.data['startup']['gridgen_cold_s']:.1f}s: {results.data['startup']['gridgen_cold_phases']}")
    results.save()
    runners: dict[str, DistributedRunner[Any]] = {"gridgen": gridgen}
    if args.seed_recipe:
        seed = DistributedRunner(SeedBenchWorker, setup_kwargs={"model": args.model}, **common)
        started = time.perf_counter()
        await seed.start()
        results.data["startup"]["seed_recipe_s"] = time.perf_counter() - started
        log(f"seed recipe started in {results.data['startup']['seed_recipe_s']:.1f}s")
        runners["seed_recipe"] = seed

    configs = configs_of(args)
    samples: dict[str, list[float]] = {}
    encode_s: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    for config in configs:  # warm-up: one measurement of each, memory peak per config
        runner = runners["gridgen" if config.name == "bare_pipeline" else config.name]
        await peak_gib(runner)
        seconds, _ = await measure(runners, dataclasses.replace(config, requests=1), args)
        peaks[config.key] = await peak_gib(runner)
        log(f"warm-up {config.key}: {seconds:.2f}s, peak {peaks[config.key]:.1f} GiB")
        samples[config.key], encode_s[config.key] = [], []
    for round_ in range(args.rounds):
        for config in configs:
            seconds, timings = await measure(runners, config, args)
            per_image = seconds / (config.requests * config.images)
            samples[config.key].append(per_image)
            encode_s[config.key] += [t["encode"] for t in timings if "encode" in t]
            log(f"round {round_ + 1} {config.key}: {per_image:.3f} s/image")
        results.data["samples"] = samples
        results.save()

    flop = tflop_per_image(args.steps) * (args.size / 1024) ** 2
    for config in configs:
        s = statistics.median(samples[config.key])
        run: dict[str, Any] = {
            "name": config.name,
            "images_per_gpu": config.images,
            "stream": config.stream,
            "s_per_image": round(s, 4),
            "img_per_s_per_gpu": round(1 / s, 4),
            "precision": precision_of(setup, config.name),
            "image_format": config.image_format,
            "requests": config.requests,
            "peak_gib": round(peaks[config.key], 2),
            "tflops": round(flop / s, 1),
            "samples_s_per_image": [round(x, 4) for x in samples[config.key]],
        }
        if encode_s[config.key]:
            run["encode_s_median"] = round(statistics.median(encode_s[config.key]), 4)
        results.data["runs"].append(run)
    results.save()
    if args.seed_recipe:
        await runners["seed_recipe"].stop()
    await steady_runs(gridgen, results, args, log)

    if args.accuracy and setup:
        # the same request through an eager worker (no optimisation options) vs the optimised one
        eager = DistributedRunner(BenchSDXLWorker, setup_kwargs={"model": args.model}, **common)
        await eager.start()
        request = {**gridgen_payload(2, False, args, seed=1234), "output": "images", "image_format": "png", "bench_latents": True}
        fast_out, eager_out = await gridgen.invoke(request), await eager.invoke(request)
        await eager.stop()
        results.data["accuracy"] = compare(fast_out, eager_out)
        log(f"accuracy: {results.data['accuracy']}")
    if args.warm_restart:
        started = time.perf_counter()
        await gridgen.restart()
        results.data["startup"]["gridgen_warm_s"] = time.perf_counter() - started
        log(f"gridgen restarted (warm caches) in {results.data['startup']['gridgen_warm_s']:.1f}s")
        results.save()
    await gridgen.stop()
    if cache_root is not None:  # last, so a run cut short still has everything else
        await fresh_start_with_cache(results, args, setup, common, cache_root, log)
    results.save()
    return results


async def steady_runs(gridgen: DistributedRunner[Any], results: Results, args: argparse.Namespace, log: Any) -> None:
    """Each ``--steady`` rate with merging on (the runner's max_batch), then off (1)."""
    merged = gridgen.max_batch
    for rate in args.steady:
        for max_batch in dict.fromkeys((merged, 1)):
            gridgen.max_batch = max_batch
            entry = await steady_latency(gridgen, rate, args.steady_requests, args)
            results.data["latency"].append(entry)
            results.save()
            log(f"steady {rate}/s, max_batch {max_batch}: mean {entry['mean_s']:.3f}s, p90 {entry['p90_s']:.3f}s, {entry['calls']} calls")
    gridgen.max_batch = merged


async def fresh_start_with_cache(
    results: Results, args: argparse.Namespace, setup: dict[str, Any], common: dict[str, Any], cache_root: Path, log: Any
) -> None:
    """Start again as a fresh machine would: empty inductor and Triton caches, only the cache file."""
    cache = Path(setup.get("compile_cache") or os.environ.get("GRIDGEN_COMPILE_CACHE", ""))
    if not cache.is_file():
        log("no compile cache file was written: skipping the fresh start")
        return
    results.data["startup"]["compile_cache_bytes"] = cache.stat().st_size
    shutil.rmtree(cache_root)
    isolate_compile_caches()
    runner = DistributedRunner(BenchSDXLWorker, setup_kwargs={"model": args.model, **setup}, **common)
    started = time.perf_counter()
    await runner.start()
    ready = time.perf_counter()
    results.data["startup"]["gridgen_fresh_caches_with_cache_file_s"] = ready - started
    results.data["startup"]["gridgen_fresh_phases"] = phases = await setup_phases(runner, started, ready)
    log(f"gridgen started with empty local caches and the cache file in {ready - started:.1f}s: {phases}")
    payload = {**gridgen_payload(max(args.images), False, args), "image_format": args.formats[0]}
    seconds, _, _ = await timed_batch(runner, payload, False, 1)
    results.data["startup"]["first_request_after_fresh_start_s"] = seconds
    log(f"first {max(args.images)}-image request after it: {seconds:.2f}s")
    await runner.stop()


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
    print(f"startup: {json.dumps({k: v if isinstance(v, dict) else round(v, 1) for k, v in data['startup'].items()})}")
    print(f"{'run':14} {'img/gpu':>7} {'reqs':>4} {'stream':>6} {'format':>6} {'s/img':>7} {'img/s':>7} {'TFLOP/s':>8} {'peak GiB':>8} {'encode s':>8}")
    for run in data["runs"]:
        print(
            f"{run['name']:14} {run['images_per_gpu']:7d} {run.get('requests', 0):4d} {run['stream']!s:>6} "
            f"{run.get('image_format', '?'):>6} {run['s_per_image']:7.3f} {run['img_per_s_per_gpu']:7.3f} "
            f"{run['tflops']:8.1f} {run['peak_gib']:8.1f} {run.get('encode_s_median', float('nan')):8.3f}"
        )
    if data.get("latency"):
        print(f"\nsteady queue, one-image requests: {'req/s':>6} {'max_batch':>9} {'reqs':>4} {'calls':>5} {'mean s':>7} {'p50 s':>7} {'p90 s':>7} {'max s':>7}")
        for row in data["latency"]:
            print(
                f"{'':34}{row['rate_per_s']:6.2f} {row['max_batch']:9d} {row['requests']:4d} {row['calls']:5d} "
                f"{row['mean_s']:7.3f} {row['p50_s']:7.3f} {row['p90_s']:7.3f} {row['max_s']:7.3f}"
            )
    if data.get("accuracy"):
        print(f"accuracy vs eager: {data['accuracy']}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _rates(text: str) -> list[float]:
    rates = [float(x) for x in text.split(",") if x]
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"arrival rates must be > 0 requests/s, got {text!r}")
    return rates


def _formats(text: str) -> list[str]:
    formats = [x for x in text.split(",") if x]
    bad = [x for x in formats if x not in ("png", "jpeg", "webp")]
    if bad or not formats:
        raise argparse.ArgumentTypeError(f"formats are png, jpeg or webp, got {text!r}")
    return formats


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=3, help="requests queued per measurement")
    parser.add_argument("--images", type=_ints, default=[1, 4, 8])
    parser.add_argument("--stream-images", type=_ints, default=None, help="images per GPU of the streaming runs (default: --images; '' for none)")
    parser.add_argument("--model", default="sdxl-random", help="'tiny' for a CPU dry run of the plumbing")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--formats", type=_formats, default=["png"], help="output formats measured, e.g. png,jpeg (the first is used for streaming and --concurrent)")
    parser.add_argument("--concurrent", type=int, default=0, help="also time N one-image requests submitted at once")
    parser.add_argument("--batch-sizes", type=_ints, default=None, help="runner option batch_sizes: unit totals a merged call may have, e.g. 1,8 for warm-up sizes 1 and 8 on one GPU (default: any)")
    parser.add_argument("--max-batch", type=int, default=None, help="runner option max_batch of the gridgen runner: most requests merged into one call (1: none; default: the runner's, 8)")
    parser.add_argument("--steady", type=_rates, default=[], help="arrival rates R[,R...] (requests/s): latency of one-image requests under a steady queue, merging on then off")
    parser.add_argument("--steady-arrivals", choices=["fixed", "poisson"], default="fixed", help="--steady arrivals: every 1/R s, or a seeded Poisson process of rate R (default: %(default)s)")
    parser.add_argument("--steady-requests", type=int, default=24, help="requests per --steady measurement (default: %(default)s)")
    parser.add_argument("--bare", action="store_true", help="also time the bare optimised pipeline in the worker process (no runner, no encoding)")
    parser.add_argument("--no-seed-recipe", dest="seed_recipe", action="store_false", help="leave out the seed's recipe")
    parser.add_argument("--compile-cache", default=None, help="setup(compile_cache=...): load it if it exists, else write it after warm-up")
    parser.add_argument("--cache-restart", action="store_true", help="at the end, empty the local inductor/Triton caches and start again from the cache file only (a fresh machine)")
    parser.add_argument("--gridgen-setup", default="{}", help="JSON setup kwargs for SDXLWorker (optimisations)")
    parser.add_argument("--warm-restart", action="store_true", help="restart gridgen once to time a warm start")
    parser.add_argument("--accuracy", action="store_true", help="compare the optimised worker with an eager one")
    arguments = parser.parse_args()
    if arguments.stream_images is None:
        arguments.stream_images = arguments.images
    final = asyncio.run(main(arguments))
    print_table(final.data)

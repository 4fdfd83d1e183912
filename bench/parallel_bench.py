"""One image on several GPUs (issue 24): FLUX.1-dev with Ulysses-2 / Ulysses-4 and SDXL with
CFG-2 against one GPU, and data-parallel throughput at 8 images per GPU, all through the
runner at full size with random weights (``flux-random``, ``sdxl-random``: the timings are
the architectures', the images are noise).

Each configuration starts its own runner, warms up, then times ``--rounds`` requests. The
results file is rewritten after every configuration, so a run cut short keeps what it
measured; a configuration that fails is recorded with its error and the next one runs.

Fields of each entry: ``name``, ``model``, ``world_size``, ``parallel`` (``"none"`` or e.g.
``"ulysses=2"``), ``images`` per request, ``seconds`` (median request latency), ``samples``,
``images_per_s``, ``speedup`` (one-GPU latency / this latency, latency configurations) and
``efficiency``: ``speedup / world_size`` for one image, ``images_per_s / (world_size x
one GPU's images_per_s)`` for data parallelism. Targets (issue 24): Ulysses-2 at most 0.6x
and Ulysses-4 at most 0.35x the one-GPU time, CFG-2 at most 0.6x, data parallel >= 0.95.

    PYTHONPATH=src python3 bench/parallel_bench.py --out bench/results [--optimize compile]
        [--only flux-1,flux-ulysses-2] [--rounds 3] [--steps-flux 28 --steps-sdxl 20]

A smoke run of the script on CPU (tiny models; the figures mean nothing)::

    PYTHONPATH=src python3 bench/parallel_bench.py --out /tmp/pb --device cpu --workers 2 \
        --flux-model tiny-flux --sdxl-model tiny --size 64 --steps-flux 2 --steps-sdxl 2 \
        --rounds 1 --dtype fp32 --optimize none
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

from gridgen import DistributedRunner
from gridgen.diffusion import worker_for


def configurations(gpus: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """What to run on ``gpus`` GPUs, baselines first (later entries divide by them)."""
    flux = {"model": args.flux_model, "steps": args.steps_flux, "guidance_scale": 3.5}
    sdxl = {"model": args.sdxl_model, "steps": args.steps_sdxl, "guidance_scale": 5.0}
    out = [
        {"name": "flux-1", **flux, "world_size": 1, "parallel": None, "images": 1},
        {"name": "flux-ulysses-2", **flux, "world_size": 2, "parallel": {"ulysses": 2}, "images": 1,
         "baseline": "flux-1"},
        {"name": "flux-ulysses-4", **flux, "world_size": 4, "parallel": {"ulysses": 4}, "images": 1,
         "baseline": "flux-1"},
        {"name": "sdxl-1", **sdxl, "world_size": 1, "parallel": None, "images": 1},
        {"name": "sdxl-cfg-2", **sdxl, "world_size": 2, "parallel": {"cfg": 2}, "images": 1,
         "baseline": "sdxl-1"},
        {"name": "sdxl-dp-1", **sdxl, "world_size": 1, "parallel": None, "images": 8},
        {"name": f"sdxl-dp-{gpus}", **sdxl, "world_size": gpus, "parallel": None, "images": 8 * gpus,
         "baseline": "sdxl-dp-1", "throughput": True},
        {"name": f"sdxl-cfg-2-dp-{gpus}", **sdxl, "world_size": gpus, "parallel": {"cfg": 2},
         "images": 8 * (gpus // 2), "baseline": "sdxl-dp-1", "throughput": True},
    ]
    wanted = set(args.only.split(",")) if args.only else None
    seen: set[str] = set()
    kept = []
    for entry in out:
        if entry["world_size"] > gpus or entry["name"] in seen or (wanted and entry["name"] not in wanted):
            continue
        seen.add(entry["name"])
        kept.append(entry)
    return kept


async def measure(entry: dict[str, Any], args: argparse.Namespace, log: Any) -> dict[str, Any]:
    size = args.size
    setup = {
        "model": entry["model"], "dtype": args.dtype, "optimize": args.optimize, "preview": None,
        "defer_encoding": False, "parallel": entry["parallel"],
        "warmup": (max(1, entry["images"] // (entry["world_size"] // _group(entry))),),
        "warmup_size": (size, size),
    }
    payload = {
        "prompt": "a lighthouse at dawn", "num_images": entry["images"], "width": size, "height": size,
        "num_inference_steps": entry["steps"], "guidance_scale": entry["guidance_scale"], "seed": 1,
        "output": "grid", "image_format": "jpeg",
    }
    runner = DistributedRunner(
        worker_for(entry["model"]), world_size=entry["world_size"], device=args.device,
        request_timeout=1800, setup_kwargs=setup,
    )
    started = time.perf_counter()
    async with runner:
        startup = time.perf_counter() - started
        log(f"{entry['name']}: started in {startup:.1f}s")
        await runner.invoke(payload)  # a first request after the warm-up: nothing left to compile
        samples = []
        for _ in range(args.rounds):
            begun = time.perf_counter()
            await runner.invoke(payload)
            samples.append(time.perf_counter() - begun)
    seconds = statistics.median(samples)
    return {"startup_s": round(startup, 1), "seconds": round(seconds, 4), "samples": [round(s, 4) for s in samples],
            "images_per_s": round(entry["images"] / seconds, 4)}


def _group(entry: dict[str, Any]) -> int:
    parallel = entry["parallel"] or {}
    return int(parallel.get("cfg", 1) * parallel.get("ulysses", 1) * parallel.get("ring", 1))


def efficiency(entry: dict[str, Any], done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = done.get(entry.get("baseline", ""))
    if not base or "seconds" not in base or "seconds" not in entry:
        return {}
    if entry.get("throughput"):
        return {"efficiency": round(entry["images_per_s"] / (entry["world_size"] * base["images_per_s"]), 4)}
    speedup = base["seconds"] / entry["seconds"]
    return {"speedup": round(speedup, 4), "time_ratio": round(1 / speedup, 4),
            "efficiency": round(speedup / entry["world_size"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps-flux", type=int, default=28)
    parser.add_argument("--steps-sdxl", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--optimize", default="compile", choices=("auto", "graphs", "compile", "none"))
    parser.add_argument("--only", default=None, help="comma-separated configuration names")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--workers", type=int, default=None, help="GPUs to use (default: all visible)")
    parser.add_argument("--flux-model", default="flux-random")
    parser.add_argument("--sdxl-model", default="sdxl-random")
    args = parser.parse_args()

    import diffusers
    import torch

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    gpus = args.workers or torch.cuda.device_count()
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    data: dict[str, Any] = {
        "device": device, "gpus": gpus, "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "size": args.size, "dtype": args.dtype, "optimize": args.optimize, "rounds": args.rounds,
        "results": [],
    }
    name = device.replace("NVIDIA ", "").replace(" ", "-").lower()
    path = Path(args.out) / f"{data['date']}-parallel-{name}-x{gpus}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[str, Any]] = {}
    for entry in configurations(gpus, args):
        record: dict[str, Any] = {
            "name": entry["name"], "model": entry["model"], "world_size": entry["world_size"],
            "parallel": ",".join(f"{k}={v}" for k, v in (entry["parallel"] or {}).items()) or "none",
            "images": entry["images"], "steps": entry["steps"],
        }
        try:
            record.update(asyncio.run(measure(entry, args, log)))
            record.update(efficiency({**entry, **record}, done))
            log(f"{entry['name']}: {record}")
        except Exception as exc:  # keep going: the other configurations still measure
            record["error"] = f"{type(exc).__name__}: {exc}"
            record["traceback"] = traceback.format_exc()
            log(f"{entry['name']}: FAILED {record['error']}")
        done[entry["name"]] = record
        data["results"].append(record)
        path.write_text(json.dumps(data, indent=2))  # partial results survive a cut-short run
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

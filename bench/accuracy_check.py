"""Does the optimised SDXL path compute what eager computes? One process, one GPU.

Builds the full-size random-weight SDXL (seeded, so every worker holds the same weights)
three times: ``optimize="none"`` (eager, fp32-upcast VAE as diffusers does it),
``"graphs"`` and ``"compile"``; runs the same request (2 images, seed 1234, 1024x1024,
20 steps) through each and compares final latents and decoded images.

    python bench/accuracy_check.py --out results_dir [--model sdxl-random] [--size 1024]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_workers import BenchSDXLWorker


def _stats(a: Any, b: Any) -> dict[str, float]:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return {
        "max_abs": float(np.abs(a - b).max()),
        "mean_abs": float(np.abs(a - b).mean()),
        "rel_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)),
    }


def run(mode: str, args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    worker = BenchSDXLWorker(device=device)
    started = time.perf_counter()
    worker.setup(model=args.model, optimize=mode)
    setup_s = time.perf_counter() - started
    worker(**request, bench_latents=True)  # first call: graph capture / compile
    started = time.perf_counter()
    out = worker(**request, bench_latents=True)
    call_s = time.perf_counter() - started
    images = [np.asarray(img.open().convert("RGB")) for img in out["images"]]
    result = {"mode": mode, "setup_s": setup_s, "second_call_s": call_s,
              "latents": out["latents"].float().numpy(), "images": images}
    del worker
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--model", default="sdxl-random")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default="none,graphs,compile")
    args = parser.parse_args()
    request = {"prompt": "a lighthouse at dawn", "num_images": 2, "width": args.size, "height": args.size,
               "num_inference_steps": args.steps, "seed": 1234, "output": "images", "image_format": "png"}
    modes = args.modes.split(",")
    runs = {}
    for mode in modes:
        runs[mode] = run(mode, args, request)
        print(f"{mode}: setup {runs[mode]['setup_s']:.1f}s, call {runs[mode]['second_call_s']:.2f}s", flush=True)
    reference = runs[modes[0]]
    report: dict[str, Any] = {"request": request, "model": args.model, "reference": modes[0], "comparisons": {}}
    import numpy as np

    ref_lat = reference["latents"]
    report["reference_latents_abs_mean"] = float(np.abs(ref_lat).mean())
    report["reference_latents_abs_max"] = float(np.abs(ref_lat).max())
    for mode in modes[1:]:
        r = runs[mode]
        report["comparisons"][mode] = {
            "latents": _stats(r["latents"], ref_lat),
            "images_uint8": _stats(np.stack(r["images"]), np.stack(reference["images"])),
            "setup_s": r["setup_s"],
            "second_call_s": r["second_call_s"],
        }
    report["finite"] = all(bool(np.isfinite(r["latents"]).all()) for r in runs.values())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

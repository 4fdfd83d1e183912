"""Image-to-image against text-to-image at the same number of denoising steps, through the runner.

For each family (SDXL ``sdxl-random``, FLUX.1-dev ``flux-random``: full-size architectures,
random weights) one runner on one GPU runs, with the same seed and prompt:

* ``img2img``: a 1024x1024 start image (PNG, as a client sends it), ``strength`` 0.6,
  ``--steps`` steps, ``--images`` images: diffusers runs ``int(steps * strength)`` of them;
* ``txt2img``: no image, ``round(steps * strength)`` steps, the same images.

The difference per image is what the image input costs: the host decoding it to check it,
its trip to the ranks, the pipeline's preprocessing and the VAE encode of the start image.
The target (issue 22) is at most 5 % over text-to-image. Each measurement is the best of
``--rounds`` after one warm-up; the JSON file is rewritten after each one, so a run cut
short keeps what it measured.

    PYTHONPATH=src python bench/img2img_bench.py --out bench/results [--families sdxl,flux]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

FAMILIES = {"sdxl": ("sdxl-random", "fp16", 20, 8), "flux": ("flux-random", "bf16", 28, 4)}


def start_image(size: int) -> str:
    """A smooth colour image as a PNG data URL (noise would make a needlessly large PNG)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, (x + y) / 2], axis=-1) * 255
    out = io.BytesIO()
    Image.fromarray(rgb.astype("uint8")).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


async def bench_family(name: str, args: argparse.Namespace, record: Any, log: Any) -> None:
    from gridgen import DistributedRunner
    from gridgen.diffusion import worker_for
    from gridgen.inputs import decode_image_input

    model, dtype, default_steps, default_images = FAMILIES[name]
    steps = args.steps or default_steps
    images = args.images or default_images
    image = start_image(args.size)
    begun = time.perf_counter()
    decode_image_input(image)  # what the host spends checking it before queueing
    record(name, "host_decode_s", time.perf_counter() - begun)
    record(name, "input_png_bytes", len(image) * 3 // 4)
    same_steps = round(steps * args.strength)
    base = {"prompt": "a lighthouse at dawn", "num_images": images, "width": args.size, "height": args.size,
            "seed": 1, "preview_every": 0, "image_format": "png", "output": "images"}
    cases = {
        "img2img": {**base, "image": image, "strength": args.strength, "num_inference_steps": steps},
        "txt2img_same_steps": {**base, "num_inference_steps": same_steps},
    }
    runner = DistributedRunner(
        worker_for(model), world_size=1, device="cuda", request_timeout=1800,
        setup_kwargs={"model": model, "dtype": dtype, "defer_encoding": False},
    )
    started = time.perf_counter()
    async with runner:
        record(name, "startup_s", time.perf_counter() - started)
        log(f"{name}: started in {time.perf_counter() - started:.1f}s")
        for case, payload in cases.items():
            await runner.invoke(payload)  # warm-up: allocator, cuBLAS plans
            times, timings = [], None
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                result = await runner.invoke(payload)
                times.append(time.perf_counter() - t0)
                timings = result["timings"]
            record(name, case, {"s_per_image": min(times) / images, "times_s": times, "timings": timings,
                                "images": images, "steps": payload["num_inference_steps"]})
            log(f"{name} {case}: {min(times) / images:.3f} s/image")
    results = DATA[name]
    if "img2img" in results and "txt2img_same_steps" in results:
        img, txt = results["img2img"]["s_per_image"], results["txt2img_same_steps"]["s_per_image"]
        record(name, "overhead_fraction", img / txt - 1)
        log(f"{name}: image input overhead {100 * (img / txt - 1):+.1f} % (target <= 5 %)")


DATA: dict[str, Any] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--families", default="sdxl,flux")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=None, help="default: SDXL 20, FLUX.1 28")
    parser.add_argument("--images", type=int, default=None, help="default: SDXL 8, FLUX.1 4")
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import diffusers
    import torch

    meta = {"device": torch.cuda.get_device_name(0), "date": datetime.date.today().isoformat(),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version(), "size": args.size, "strength": args.strength,
            "rounds": args.rounds}
    path = Path(args.out) / f"{meta['date']}-img2img-{meta['device'].replace('NVIDIA ', '').lower().replace(' ', '-')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def record(family: str, key: str, value: Any) -> None:
        DATA.setdefault(family, {})[key] = value
        path.write_text(json.dumps({"meta": meta, **DATA}, indent=2))

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    for family in args.families.split(","):
        try:
            asyncio.run(bench_family(family, args, record, log))
        except Exception as exc:  # keep the other family's numbers
            record(family, "error", repr(exc))
            log(f"{family}: failed: {exc!r}")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()

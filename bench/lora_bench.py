"""What LoRA adapters per request cost on one GPU (issue 23): switching, an active adapter,
first load, and a mixed queue. Full-size random models, random rank-32 adapters made here.

    python bench/lora_bench.py --out bench/results/lora-h100.json [--models sdxl-random,flux-random]

For each model, one runner (one GPU, ``world_size=1``) with a ``lora_dir`` holding two
adapters ``a`` and ``b`` (rank 32, random, on the attention projections of the denoiser),
one-image requests at ``--size`` and ``--steps``; every figure is the host's wall time per
request (``invoke``), the median of ``--repeats`` runs after one warm-up:

* ``none``: no adapter; ``same``: adapter ``a`` every request (no switch);
  ``switch``: ``a`` and ``b`` alternating (every request switches);
* ``switch_cost_s`` = ``switch`` - ``same``; ``switch_keeps_images``: ``a`` after ``b``
  gives ``a``'s image byte for byte, and not the no-adapter image (no stale CUDA graph); ``active_ratio`` = ``none`` / ``same``
  (throughput with one active adapter relative to none);
* ``first_load_s``: the first request naming ``c`` (not loaded, read from local disk) minus ``same``;
* ``mixed_queue_s``: ``--queue`` one-image requests (8) submitted at once, half ``a`` and half none,
  interleaved, against ``plain_queue_s`` with none: the runner merges only requests of the
  same adapter set, so the mixed queue runs as two merged calls instead of one;
* ``baseline_none_s``: the same no-adapter request on a runner started *without* adapter
  sources (the speed path the service takes when no LoRA is configured: fused q/k/v, no
  slot), so ``none_s`` - ``baseline_none_s`` is what configuring adapters costs a request
  that uses none.

With ``--optimize`` on (the default ``auto`` on a GPU), adapters go through the fast path's
``--lora-mode``: fused into the weights (:mod:`gridgen.diffusion.lora_fusion`, the default)
or a LoRA slot (:mod:`gridgen.diffusion.lora_slots`) of rank ``--rank``.

The JSON is rewritten after every figure, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = {
    "sdxl": ("unet", ["to_q", "to_k", "to_v", "to_out.0"]),
    "flux": ("transformer", ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                             "add_v_proj", "to_add_out"]),
}


def denoiser_on_meta(model: str) -> Any:
    """The denoiser of built-in ``model`` with no weights (shapes only)."""
    import diffusers
    import torch

    from gridgen.diffusion import builders

    with torch.device("meta"):
        if model == "sdxl-random":
            config = builders.sdxl_base_config()["unet"]
            return diffusers.UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
        config = builders.family_config(model)["transformer"]
        return diffusers.FluxTransformer2DModel(
            **{k: v for k, v in config.items() if not k.startswith("_") and k not in ("note", "model_type")}
        )


def make_lora(denoiser: Any, kind: str, path: Path, rank: int, seed: int) -> int:
    """A random rank-``rank`` adapter in diffusers' format; returns its parameter count."""
    import torch
    from safetensors.torch import save_file

    prefix, targets = TARGETS[kind]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in denoiser.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in targets):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.02
            state[f"{prefix}.{name}.lora_A.weight"] = down.to(torch.bfloat16)
            state[f"{prefix}.{name}.lora_B.weight"] = up.to(torch.bfloat16)
    save_file(state, str(path))
    return sum(t.numel() for t in state.values())


class Report:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.data = path, {"meta": meta, "models": {}}

    def put(self, model: str, key: str, value: Any) -> None:
        self.data["models"].setdefault(model, {})[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2))
        print(f"{model} {key}: {value}", flush=True)


def _pixels(image: Any) -> bytes:
    """An image's pixels (the runner hands back PIL images; an encoded one has ``open()``)."""
    image = image.open() if hasattr(image, "open") else image
    return bytes(image.convert("RGB").tobytes())


async def timed(runner: Any, payload: dict[str, Any]) -> float:
    started = time.perf_counter()
    await runner.invoke(payload)
    return time.perf_counter() - started


async def series(runner: Any, payloads: list[dict[str, Any]]) -> float:
    """Median seconds per request over ``payloads`` run one after another."""
    return statistics.median([await timed(runner, p) for p in payloads])


async def queue(runner: Any, payloads: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(runner.submit(p).result() for p in payloads))
    return time.perf_counter() - started


async def bench_model(model: str, args: argparse.Namespace, report: Report) -> None:
    from gridgen import DistributedRunner
    from gridgen.diffusion import worker_for

    kind = "flux" if model.startswith("flux") else "sdxl"
    folder = Path(tempfile.mkdtemp(prefix="gridgen-lora-bench-"))
    denoiser = denoiser_on_meta(model)
    params = {name: make_lora(denoiser, kind, folder / f"{name}.safetensors", args.rank, seed)
              for seed, name in enumerate(("a", "b", "c"))}
    report.put(model, "adapter", {"rank": args.rank, "parameters": params["a"],
                                  "file_mb": round((folder / "a.safetensors").stat().st_size / 1e6, 1),
                                  "targets": TARGETS[kind][1]})
    base = {"prompt": "a lighthouse at dawn", "num_images": 1, "width": args.size, "height": args.size,
            "num_inference_steps": args.steps, "seed": 1, "output": "grid", "image_format": "jpeg"}
    with_a = {**base, "loras": [{"name": "a", "scale": 0.8}]}
    with_b = {**base, "loras": [{"name": "b", "scale": 0.8}]}
    n = args.repeats
    worker_cls = worker_for(model)

    if not args.skip_baseline:
        plain = {"model": model, "optimize": args.optimize}
        async with DistributedRunner(worker_cls, world_size=1, setup_kwargs=plain, max_batch=args.queue) as runner:
            await timed(runner, base)
            report.put(model, "baseline_none_s", await series(runner, [base] * n))
            await queue(runner, [base] * args.queue)  # warm the merged shape, as below
            report.put(model, "baseline_plain_queue_s", await queue(runner, [base] * args.queue))

    setup = {"model": model, "optimize": args.optimize, "lora_dir": str(folder), "lora_max_rank": args.rank,
             "lora_mode": args.lora_mode}
    async with DistributedRunner(worker_cls, world_size=1, setup_kwargs=setup, max_batch=args.queue) as runner:
        await timed(runner, base)
        await timed(runner, with_a)
        await timed(runner, with_b)
        none = await series(runner, [base] * n)
        report.put(model, "none_s", none)
        same = await series(runner, [with_a] * n)
        report.put(model, "same_s", same)
        switch = await series(runner, [with_a, with_b] * ((n + 1) // 2))
        report.put(model, "switch_s", switch)
        report.put(model, "switch_cost_s", switch - same)
        # No stale graph: adapter a after b gives a's image again, and differs from none.
        first_a, _, again_a, plain = [
            _pixels((await runner.invoke(p))["grid"]) for p in (with_a, with_b, with_a, base)
        ]
        report.put(model, "switch_keeps_images", first_a == again_a and first_a != plain)
        report.put(model, "active_ratio", none / same)
        first = await timed(runner, {**base, "loras": [{"name": "c", "scale": 0.8}]})
        report.put(model, "first_load_s", first - same)
        mixed = [with_a if i % 2 == 0 else base for i in range(args.queue)]
        await queue(runner, mixed)  # warm the merged shapes (4 images)
        report.put(model, "mixed_queue_s", await queue(runner, mixed))
        await queue(runner, [base] * args.queue)  # warm the merged shape
        report.put(model, "plain_queue_s", await queue(runner, [base] * args.queue))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/lora.json")
    parser.add_argument("--models", default="sdxl-random,flux-random")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--queue", type=int, default=8, help="requests in the queued figures")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--optimize", default="auto", choices=("auto", "graphs", "compile", "none"),
                        help="the workers' speed path (auto: CUDA graphs for SDXL, fused QKV for "
                        "FLUX.1)")
    parser.add_argument("--lora-mode", default="fuse", choices=("fuse", "slot"),
                        help="how the fast path applies adapters: fused into the weights, or a "
                        "low-rank slot of rank --rank over the attention projections")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="skip the runner without adapter sources")
    args = parser.parse_args()
    import torch

    meta = {"argv": sys.argv[1:], "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report = Report(Path(args.out), meta)
    for model in args.models.split(","):
        asyncio.run(bench_model(model, args, report))


if __name__ == "__main__":
    main()

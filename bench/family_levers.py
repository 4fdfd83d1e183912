"""Speed levers of a diffusion family at full size (random weights) on one GPU, three ways.

``bare``      one process, one pipeline: plain diffusers eager first (the reference images
              and latents), then ``--levers`` applied in place one after the other, each
              compiled afresh, timed and compared with the eager images of the same seeds.
              A lever is ``+``-joined parts: ``compile`` (alone: plain regional compile),
              ``fp8``, ``cache:T`` (first-block cache), ``autotune`` (inductor's
              ``max-autotune-no-cudagraphs``), ``cudnn`` (SDPA limited to cuDNN attention),
              ``cdt`` (inductor's coordinate-descent tuning of its own kernels),
              ``flags`` (``cdt`` with all directions, ``epilogue_fusion=False``,
              ``conv_1x1_as_mm``: the flux-fast recipe's inductor flags), ``graph`` (a CUDA
              graph around the whole compiled transformer), ``te`` (CUDA graphs around the
              text encoders), ``steps:N`` (N steps instead of ``--steps``: what the time a
              step cache saves buys without it, compared with the same full-step images);
              FP8, once applied, stays for the levers after it.
``runner``    gridgen's worker behind a ``DistributedRunner`` with ``--setup`` (setup kwargs,
              JSON): s/image at each ``--images`` count, streamed previews every 5 steps, peak
              GPU memory, setup phases.
``diffusers`` the plain diffusers pipeline call, eager, at each ``--images`` count.

Every measurement is appended to ``$OUT/levers.jsonl`` as soon as it is made, so a run cut
short still reports what it measured. One device call can run several modes in turn::

    PYTHONPATH=src:bench python3 bench/family_levers.py runner --model flux-random \\
        --setup '{"optimize": "compile", "warmup": [1, 4]}' --images 1,4 --out $OUT
    PYTHONPATH=src:bench python3 bench/family_levers.py bare --model flux-random \\
        --levers compile,cache:0.08,fp8,fp8+cache:0.08 --out $OUT

On CPU with a tiny model (``--model tiny-flux --device cpu --size 64 --steps 2``) it checks
its own plumbing in seconds.
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
from gridgen.diffusion import family_of, worker_for


def _worker_class(model: str) -> type:
    base = worker_for(model)

    class Bench(base):  # type: ignore[valid-type, misc]
        """The family's worker, reporting rank 0's peak GPU memory and setup phases with each result."""

        def setup(self, *args: Any, **kwargs: Any) -> None:
            import torch

            super().setup(*args, **kwargs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

        def run_batch(self, batch: Batch) -> list[Any]:
            import torch

            results = super().run_batch(batch)
            peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
            return [{**r, "peak_gib": peak, "setup_phases": getattr(self, "setup_phases", {})} if isinstance(r, dict) and r else r
                    for r in results]

    Bench.__qualname__ = Bench.__name__ = f"Bench{base.__name__}"
    return Bench


def _payload(args: argparse.Namespace, images: int, seed: int = 1, preview_every: int = 0) -> dict[str, Any]:
    payload = {"prompt": "a lighthouse at dawn", "num_images": images, "width": args.size, "height": args.size,
               "num_inference_steps": args.steps, "seed": seed, "preview_every": preview_every}
    if args.guidance is not None:
        payload["guidance_scale"] = args.guidance
    return payload


def _cache_name(threshold: float | None) -> str | None:
    return None if threshold is None else f"first_block:{threshold:g}"


class Log:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.path = Path(args.out) / "levers.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.common = {
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "python": platform.python_version(), "model": args.model,
            "family": family_of(args.model).name, "size": args.size, "steps": args.steps,
            "image_format": "png",
            # what the figures were made with; the modes update these as they change them
            "precision": "bf16", "cache": None, "images_per_request": None,
        }

    def __call__(self, **record: Any) -> None:
        line = {**self.common, **record}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        shown = {k: v for k, v in record.items() if k not in ("times_s", "setup_phases", "timings")}
        print(f"[{time.strftime('%H:%M:%S')}] {json.dumps(shown)}", flush=True)


# -- runner ------------------------------------------------------------------------------


async def runner_mode(args: argparse.Namespace, log: Log) -> None:
    import diffusers  # noqa: F401  (the worker class imports it in the workers too)

    options = json.loads(args.setup)
    log.common.update(precision=options.get("quantize") or options.get("dtype") or "bf16",
                      cache=_cache_name(options.get("step_cache")),
                      preview="taesd" if args.taesd_random else "linear")
    preview: dict[str, Any] = {"preview": "linear"}
    if args.taesd_random:
        preview = {"preview": "taesd", "preview_model": _random_taesd(args)}
    setup = {"model": args.model, **preview, "warmup_size": (args.size, args.size),
             "defer_encoding": False,  # results as dicts, to carry peak_gib
             **options}
    worker_cls = _worker_class(args.model)
    globals()[worker_cls.__name__] = worker_cls  # importable by name in the worker process
    runner = DistributedRunner(worker_cls, world_size=1, device=args.device, request_timeout=1800,
                               stream_buffer=4096, setup_kwargs=setup)
    started = time.perf_counter()
    async with runner:
        startup = time.perf_counter() - started
        log(mode="runner", setup=args.setup, startup_s=round(startup, 1))
        first = await runner.invoke(_payload(args, 1, seed=0))
        phases = {name: round(seconds, 2) for name, seconds in first["setup_phases"].items()}
        # What users with real weights pay: the start without the random-weight build ("load").
        log(mode="runner", setup=args.setup, setup_phases=phases,
            process_start_s=round(startup - sum(phases.values()), 1),
            startup_without_load_s=round(startup - phases.get("load", 0.0), 1))
        for images in args.images:
            for stream in (False, True) if images == 1 and args.previews else (False,):
                times, result = [], None
                for r in range(args.rounds):
                    begun = time.perf_counter()
                    if stream:
                        async for item in runner.stream(_payload(args, images, seed=1 + r, preview_every=5)):
                            result = item
                    else:
                        result = await runner.invoke(_payload(args, images, seed=1 + r))
                    times.append(time.perf_counter() - begun)
                assert isinstance(result, dict)
                log(mode="runner", setup=args.setup, images_per_request=images, previews=5 if stream else 0,
                    s_per_image=round(sorted(times)[len(times) // 2] / images, 4),
                    times_s=[round(t, 4) for t in times], peak_gib=round(float(result["peak_gib"]), 2),
                    step_cache=result.get("step_cache"), timings=result["timings"])


def _random_taesd(args: argparse.Namespace) -> str:
    """A full-size ``AutoencoderTiny`` (the published TAESDs' default architecture) of the
    family's latent channels, random weights, saved under ``--out``."""
    import torch
    from diffusers import AutoencoderTiny

    folder = Path(args.out) / "taesd-random"
    torch.manual_seed(0)
    AutoencoderTiny(latent_channels=family_of(args.model).latent_channels).save_pretrained(folder)
    return str(folder)


# -- plain diffusers and the bare levers ---------------------------------------------------


def _build(args: argparse.Namespace) -> Any:
    import torch

    from gridgen.diffusion import load_family_pipeline

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    pipe = load_family_pipeline(family_of(args.model), args.model, device=args.device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe: Any, args: argparse.Namespace, images: int, seed: int, steps: int | None = None,
              latents: dict[str, Any] | None = None) -> Any:
    """The decoded images (float, on the CPU); with ``latents``, its ``"final"`` gets the last
    step's latents (before decoding) too."""
    import torch

    kwargs: dict[str, Any] = {}
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    if latents is not None:
        def keep(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            latents["final"] = tensors["latents"]
            return tensors

        kwargs["callback_on_step_end"] = keep
    out = pipe(prompt="a lighthouse at dawn", num_images_per_prompt=images, width=args.size,
               height=args.size, num_inference_steps=steps or args.steps, output_type="pt",
               generator=[torch.Generator(args.device).manual_seed(seed + i) for i in range(images)], **kwargs)
    if args.device == "cuda":
        torch.cuda.synchronize()
    if latents is not None:
        latents["final"] = latents["final"].float().cpu()
    return out.images.float().cpu()


def _kernels(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """GPU time of one 1-image call by kernel kind (ms), and its ten longest kernels."""
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device == "cuda"  # on CPU: host time per op, for the plumbing
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        _generate(pipe, args, 1, seed=0)
    kinds: dict[str, float] = {}
    rows = []
    for event in prof.key_averages():
        ms = (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1000
        if ms <= 0:
            continue
        name = event.key.lower()
        kind = ("attention" if any(k in name for k in ("fmha", "flash", "cudnn", "attention", "sdpa"))
                else "gemm" if any(k in name for k in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "matmul"))
                else "triton" if name.startswith("triton") else "other")
        kinds[kind] = kinds.get(kind, 0.0) + ms
        rows.append((ms, event.count, event.key[:90]))
    rows.sort(reverse=True)
    return {"by_kind_ms": {k: round(v, 1) for k, v in sorted(kinds.items())},
            "top": [[round(ms, 1), count, name] for ms, count, name in rows[:10]]}


def _time(pipe: Any, args: argparse.Namespace, images: int, steps: int | None = None) -> tuple[float, list[float], float]:
    import torch

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for r in range(args.rounds):
        begun = time.perf_counter()
        _generate(pipe, args, images, seed=100 + r, steps=steps)
        times.append(time.perf_counter() - begun)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else 0.0
    return sorted(times)[len(times) // 2] / images, times, peak


def _quality(images: Any, reference: Any, latents: Any, reference_latents: Any) -> dict[str, float]:
    """Image differences (PSNR, mean and max in grey levels) and the latents' relative L2."""
    import torch

    diff = (images - reference).abs() * 255
    mse = float(((images - reference) ** 2).mean())
    psnr = float("inf") if mse == 0 else float(10 * torch.log10(torch.tensor(1.0 / mse)))
    rel_l2 = float((latents - reference_latents).norm() / reference_latents.norm().clamp_min(1e-12))
    return {"psnr_db": round(psnr, 2), "mean_abs_255": round(float(diff.mean()), 3),
            "max_abs_255": round(float(diff.max()), 1), "latents_rel_l2": round(rel_l2, 4)}


NOT_ENCODED = "none (tensors, not encoded)"


def diffusers_mode(args: argparse.Namespace, log: Log) -> None:
    log.common.update(image_format=NOT_ENCODED)  # _generate stops at decoded tensors
    started = time.perf_counter()
    pipe = _build(args)
    log(mode="diffusers", build_s=round(time.perf_counter() - started, 1))
    _generate(pipe, args, 1, seed=0)  # cuBLAS handles, the allocator
    for images in args.images:
        s, times, peak = _time(pipe, args, images)
        log(mode="diffusers", lever="eager", images_per_request=images, s_per_image=round(s, 4),
            times_s=[round(t, 4) for t in times], peak_gib=round(peak, 2))


def bare_mode(args: argparse.Namespace, log: Log) -> None:
    import torch
    import torch._dynamo
    import torch._inductor.config

    from gridgen.diffusion.fast import compile_blocks
    from gridgen.diffusion.graphed import GraphedForward
    from gridgen.diffusion.lossy import CacheCounter, apply_quantization, apply_step_cache

    log.common.update(image_format=NOT_ENCODED)
    pipe = _build(args)
    transformer = pipe.transformer
    transformer.fuse_qkv_projections()
    seeds = (7, 8)
    _generate(pipe, args, 1, seed=0)
    reference_latents = {seed: dict[str, Any]() for seed in seeds}
    reference = {seed: _generate(pipe, args, 1, seed, latents=reference_latents[seed]) for seed in seeds}
    s, times, peak = _time(pipe, args, 1)
    log(mode="bare", lever="eager", images_per_request=1, s_per_image=round(s, 4), peak_gib=round(peak, 2))
    quantized = cached = False
    graphed: list[GraphedForward] = []
    for lever in args.levers:
        parts = lever.split("+")
        wants_fp8, threshold, steps = "fp8" in parts, None, None
        for part in parts:
            if part.startswith("cache:"):
                threshold = float(part.split(":")[1])
            if part.startswith("steps:"):
                steps = int(part.split(":")[1])
        # cudnn: SDPA may pick only cuDNN's attention (else math), chosen when the blocks trace.
        torch.backends.cuda.enable_flash_sdp("cudnn" not in parts)
        torch.backends.cuda.enable_mem_efficient_sdp("cudnn" not in parts)
        flags = "flags" in parts
        torch._inductor.config.coordinate_descent_tuning = "cdt" in parts or flags
        torch._inductor.config.coordinate_descent_check_all_directions = flags
        torch._inductor.config.epilogue_fusion = not flags
        torch._inductor.config.conv_1x1_as_mm = flags
        for wrapper in graphed:
            wrapper.uninstall()
        graphed.clear()
        torch._dynamo.reset()  # each lever traces afresh: nothing of the last one's graphs
        if cached:
            transformer.disable_cache()
            cached = False
        if wants_fp8 and not quantized:
            apply_quantization(transformer, "fp8")
            quantized = True
        log.common.update(precision="fp8" if quantized else "bf16", cache=_cache_name(threshold), steps=steps or args.steps)
        counter = None
        if threshold is not None:
            apply_step_cache(transformer, threshold)
            cached = True
            counter = CacheCounter(transformer)
        started = time.perf_counter()
        compile_blocks(transformer, family_of(args.model).compile_blocks, fullgraph=not cached,
                       mode="max-autotune-no-cudagraphs" if "autotune" in parts else None)
        if cached:
            transformer._reset_stateful_cache()
        _generate(pipe, args, 1, seed=0)
        if "graph" in parts:
            graphed.append(GraphedForward(transformer).install())
        if "te" in parts:
            graphed += [GraphedForward(getattr(pipe, name)).install() for name in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, name, None) is not None]
        if graphed:
            _generate(pipe, args, 1, seed=0)  # captures
        log(mode="bare", lever=lever, compile_s=round(time.perf_counter() - started, 1),
            graphs={type(g.module).__name__: g.failed or len(g.entries) for g in graphed} or None)
        if counter is not None:
            counter.take(args.steps)  # the warm-up's steps are not the measured ones
        quality = []
        for seed in seeds:
            if cached:
                transformer._reset_stateful_cache()
            latents: dict[str, Any] = {}
            images = _generate(pipe, args, 1, seed, steps, latents=latents)
            quality.append(_quality(images, reference[seed], latents["final"], reference_latents[seed]["final"]))
        skipped = counter.take(args.steps * len(seeds)) if counter else None
        if counter is not None:
            counter.close()
        if cached:
            transformer._reset_stateful_cache()
        s, times, peak = _time(pipe, args, 1, steps)
        log(mode="bare", lever=lever, images_per_request=1, s_per_image=round(s, 4),
            times_s=[round(t, 4) for t in times], peak_gib=round(peak, 2), quality_vs_eager=quality,
            step_cache=skipped)
        if args.profile:
            log(mode="bare", lever=lever, kernels=_kernels(pipe, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("runner", "diffusers", "bare"))
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="flux-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    parser.add_argument("--setup", default='{"optimize": "compile", "warmup": [1]}')
    parser.add_argument("--previews", action="store_true", help="runner: also stream previews every 5 steps")
    parser.add_argument("--taesd-random", action="store_true",
                        help="runner: TAESD previews from a full-size AutoencoderTiny of the family's latent "
                        "space with random weights (TAEF1's and TAESD3's compute; the hub is out of reach)")
    parser.add_argument("--profile", action="store_true", help="bare: GPU time by kernel kind, per lever")
    parser.add_argument("--levers", type=lambda s: s.split(","), default=["compile", "cache:0.08"])
    args = parser.parse_args()
    log = Log(args)
    if args.mode == "runner":
        asyncio.run(runner_mode(args, log))
    elif args.mode == "diffusers":
        diffusers_mode(args, log)
    else:
        bare_mode(args, log)


if __name__ == "__main__":
    main()

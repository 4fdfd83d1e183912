"""Issue 15's levers on one H200, in one process: text-encoder graphs, output encoding, UNet variants.

Full-size random SDXL (gridgen's seeded ``sdxl-random``), fp16, 1024x1024. Writes
``<out>/levers.json`` after every stage (a run cut short keeps what it measured).

* ``text``: ``pipeline.encode_prompt`` (prompt + negative, both encoders), eager against
  ``GraphedTextEncoder``; the graphed outputs must equal eager's.
* ``encode``: the 8-image grid and one image, PNG (Pillow vs ``encoding.encode_png`` on 8
  threads) and JPEG, and how much a spinning Python thread slows while each runs.
* ``unet``: per variant (regions x dtype x autotune) the first call (compile + capture) at
  CFG batch 2 and 16, then graphed forwards timed with CUDA events (median), and a full
  20-step 1-image run's latents and fp32-VAE image against eager fp16's.

    python bench/explore/h200_levers.py --out DIR [--deadline 540] [--variants ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gridgen.diffusion.fast import _REGIONS, GraphedTextEncoder, GraphedUNet, save_compile_cache
from gridgen.sdxl.models import build_random_sdxl

PROMPT, NEGATIVE = "a lighthouse at dawn, volumetric light, highly detailed", "A blurry image"
T0 = time.perf_counter()


def left(args: argparse.Namespace) -> float:
    return args.deadline - (time.perf_counter() - T0)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def cuda_ms(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def stage_text(pipe: Any, res: dict[str, Any]) -> None:
    def enc() -> Any:
        return pipe.encode_prompt(prompt=PROMPT, device="cuda", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)

    with torch.no_grad():
        ref = enc()
        eager = cuda_ms(enc, 10)
        for name in ("text_encoder", "text_encoder_2"):
            GraphedTextEncoder(getattr(pipe, name)).install()
        enc()
        got = enc()
        graphed = cuda_ms(enc, 10)
    same = all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    res["text"] = {"eager_ms": statistics.median(eager), "graphed_ms": statistics.median(graphed),
                   "bitwise_equal": same, "eager_samples": eager, "graphed_samples": graphed,
                   "failed": [getattr(pipe, n).forward.failed for n in ("text_encoder", "text_encoder_2")]}
    log(f"text encoders: eager {res['text']['eager_ms']:.1f} ms, graphed {res['text']['graphed_ms']:.1f} ms, equal {same}")


def spin_rate(work: Any) -> tuple[float, float]:
    """(spinner iterations/s while work() runs in a thread, work's seconds)."""
    count, done = [0], threading.Event()

    def job() -> None:
        work()
        done.set()

    thread = threading.Thread(target=job)
    started = time.perf_counter()
    thread.start()
    while not done.is_set():
        count[0] += 1
    seconds = time.perf_counter() - started
    thread.join()
    return count[0] / seconds, seconds


def stage_encode(res: dict[str, Any]) -> None:
    from PIL import Image

    from gridgen._codec import encode_image
    from gridgen.diffusion.encoding import OutputEncoder, encode_png, grid_array

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (8, 1024, 1024, 3), dtype=np.uint8)
    enc = OutputEncoder()
    out: dict[str, Any] = {}
    alone_count, started = 0, time.perf_counter()
    while time.perf_counter() - started < 0.5:
        alone_count += 1
    out["spin_alone_per_s"] = alone_count / 0.5
    for label, images in (("grid8", batch), ("one", batch[:1])):
        grid = grid_array(images)
        cases = {
            "pil_png": lambda g=grid: encode_image(Image.fromarray(g), "png"),
            "parallel_png": lambda g=grid: encode_png(g, enc.pool),
            "pil_jpeg": lambda g=grid: encode_image(Image.fromarray(g), "jpeg", 90),
        }
        for name, fn in cases.items():
            fn()
            seconds = [(lambda t: (fn(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(3)]
            rate, _ = spin_rate(fn)
            out[f"{label}/{name}"] = {"s": statistics.median(seconds), "spin_per_s": rate}
            log(f"encode {label} {name}: {statistics.median(seconds) * 1000:.0f} ms, spinner {rate / out['spin_alone_per_s']:.0%}")
    res["encode"] = out
    enc.close()


def inputs(batch: int, dtype: torch.dtype) -> dict[str, Any]:
    g = torch.Generator("cuda").manual_seed(batch)
    return {
        "sample": torch.randn(batch, 4, 128, 128, generator=g, device="cuda", dtype=dtype),
        "t": torch.tensor(500.0, device="cuda"),
        "ehs": torch.randn(batch, 77, 2048, generator=g, device="cuda", dtype=dtype),
        "te": torch.randn(batch, 1280, generator=g, device="cuda", dtype=dtype),
        "ti": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * batch, device="cuda", dtype=dtype),
    }


def compile_options(flags: list[str]) -> dict[str, Any]:
    """Inductor options of a variant's flags: ``coord`` (coordinate-descent tuning of the
    Triton pointwise/reduction kernels), ``autotune`` (max-autotune of GEMMs and
    convolutions, plus ``coord``)."""
    options: dict[str, Any] = {}
    if "coord" in flags or "autotune" in flags:
        options["coordinate_descent_tuning"] = True
    if "autotune" in flags:
        options["max_autotune"] = True
    return options


def make_variant(base: Any, regions: str | None, dtype: torch.dtype, flags: list[str]) -> tuple[Any, GraphedUNet]:
    unet = copy.deepcopy(base)
    if dtype != torch.float16:
        unet.to(dtype)
    unet.fuse_qkv_projections()
    if regions:
        unet._repeated_blocks = _REGIONS[regions]
        kw: dict[str, Any] = {"fullgraph": True, "dynamic": False}
        if options := compile_options(flags):
            kw["options"] = options
        unet.compile_repeated_blocks(**kw)
    if dtype != torch.float16:
        inner = unet.forward

        def cast_forward(sample: Any, t: Any, encoder_hidden_states: Any = None, *a: Any, added_cond_kwargs: Any = None, return_dict: bool = True, **k: Any) -> Any:
            cond = {key: v.to(dtype) for key, v in added_cond_kwargs.items()}
            out = inner(sample.to(dtype), t, encoder_hidden_states.to(dtype), *a, added_cond_kwargs=cond, return_dict=False, **k)[0]
            return (out.to(torch.float16),)

        unet.forward = cast_forward
    return unet, GraphedUNet(unet).install()


def run_pipe(pipe: Any, unet: Any) -> tuple[torch.Tensor, float]:
    pipe.unet = unet
    kw = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=1024, height=1024, num_inference_steps=20,
              guidance_scale=5.0, num_images_per_prompt=1, output_type="latent")
    torch.cuda.synchronize()
    started = time.perf_counter()
    lat = pipe(**kw, generator=[torch.Generator("cuda").manual_seed(1234)]).images
    torch.cuda.synchronize()
    return lat.float(), time.perf_counter() - started


def decode(pipe: Any, vae32: Any, lat: torch.Tensor) -> np.ndarray[Any, Any]:
    with torch.no_grad():
        img = vae32.decode(lat.float() / vae32.config.scaling_factor, return_dict=False)[0]
    return (img.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy().astype(np.int16)


def stage_unet(pipe: Any, res: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    base = pipe.unet
    vae32 = copy.deepcopy(pipe.vae).float()
    with torch.no_grad():
        ref_lat, _ = run_pipe(pipe, base)
        ref_lat, eager_s = run_pipe(pipe, base)
        ref_img = decode(pipe, vae32, ref_lat)
    res["eager_1img_denoise_s"] = eager_s
    res["ref_latents_abs_mean"] = float(ref_lat.abs().mean())
    res["variants"] = {}
    for spec in args.variants.split(","):
        regions, dt, *rest = spec.split(":")
        batches = [16] if "b16only" in rest else [16, 2]
        need = 240 if "autotune" in rest else 100
        if left(args) < need:
            log(f"skip {spec}: {left(args):.0f}s left")
            continue
        dtype = torch.bfloat16 if dt == "bf16" else torch.float16
        log(f"variant {spec}")
        torch._dynamo.reset()  # each variant's compiled code is its own
        entry: dict[str, Any] = {}
        res["variants"][spec] = entry
        unet, graphed = make_variant(base, None if regions == "none" else regions, dtype, rest)
        for b in batches:
            x = inputs(b, torch.float16)

            def call(x: dict[str, Any] = x, graphed: Any = graphed) -> Any:
                return graphed(x["sample"], x["t"], x["ehs"], added_cond_kwargs={"text_embeds": x["te"], "time_ids": x["ti"]}, return_dict=False)

            started = time.perf_counter()
            with torch.no_grad():
                call()
            torch.cuda.synchronize()
            entry[f"b{b}_first_call_s"] = time.perf_counter() - started
            with torch.no_grad():
                samples = cuda_ms(call, 12 if b == 2 else 6)
            entry[f"b{b}_ms"] = statistics.median(samples)
            entry[f"b{b}_samples"] = samples
            log(f"  CFG batch {b}: first call {entry[f'b{b}_first_call_s']:.1f}s, {entry[f'b{b}_ms']:.1f} ms/forward")
            (out / "levers.json").write_text(json.dumps(res, indent=2))
        if 2 in batches:
            with torch.no_grad():
                lat, seconds = run_pipe(pipe, unet)
                img = decode(pipe, vae32, lat)
            d = (lat - ref_lat).abs()
            di = np.abs(img - ref_img)
            entry["accuracy_vs_eager_fp16"] = {
                "latents_max_abs": float(d.max()), "latents_mean_abs": float(d.mean()),
                "latents_rel_l2": float((lat - ref_lat).norm() / ref_lat.norm()),
                "images_max_abs_uint8": int(di.max()), "images_mean_abs_uint8": float(di.mean()),
                "finite": bool(torch.isfinite(lat).all()),
            }
            entry["pipeline_1img_denoise_s"] = seconds
            log(f"  accuracy {entry['accuracy_vs_eager_fp16']}, 1-image denoise {seconds:.3f}s")
        pipe.unet = base
        del unet, graphed
        torch.cuda.empty_cache()
        (out / "levers.json").write_text(json.dumps(res, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--deadline", type=float, default=540)
    parser.add_argument("--stages", default="text,encode,unet,cache")
    parser.add_argument("--variants", default="blocks:fp16,transformers:fp16,transformers:bf16,blocks:bf16,stages:fp16")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096  # several variants compile the same classes
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    stages = args.stages.split(",")
    if "encode" in stages:
        stage_encode(res)
    pipe = build_random_sdxl(device="cuda", dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    res["build_s"] = time.perf_counter() - T0
    log("built")
    if "text" in stages:
        stage_text(pipe, res)
    (out / "levers.json").write_text(json.dumps(res, indent=2))
    if "unet" in stages:
        stage_unet(pipe, res, args, out)
    if "cache" in stages:
        started = time.perf_counter()
        size = save_compile_cache(out / "mega.bin")
        res["mega_cache"] = {"bytes": size, "save_s": time.perf_counter() - started}
        (out / "mega.bin").unlink(missing_ok=True)
        log(f"mega cache {size / 2**20:.1f} MiB")
    (out / "levers.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items()}, indent=1)[-6000:])


if __name__ == "__main__":
    main()

"""Issue 15, second GPU session: the levers round 2 left unmeasured, in one process.

Full-size random SDXL (gridgen's seeded ``sdxl-random``), fp16, 1024x1024, on one H200.
Writes ``<out>/round3.json`` after every variant, so a run cut short keeps what it measured.

* ``unet``: ``h200_levers``' UNet stage, variants ``regions:dtype[:coord][:autotune][:b16only]``:
  ``coord`` is inductor's ``coordinate_descent_tuning`` (retunes the block sizes of its
  Triton pointwise and reduction kernels); ``autotune`` is ``max_autotune`` (benchmarks
  Triton GEMM and convolution templates, with their fused epilogues, against cuBLAS/cuDNN
  per shape) plus ``coord``. Per variant: the first call (compile + capture) and the median
  graphed forward at CFG batch 16 and 2, and a 20-step 1-image run's latents and fp32-VAE
  image against eager fp16.
* ``vae``: decode variants at 1 and 8 images: ``resnets`` (today's: compiled
  ``ResnetBlock2D``), ``decoder`` (the whole decoder compiled), ``decoder_cl`` (the same in
  channels_last), ``decoder_coord``; time per image and the image against an fp32 decode.

    python bench/explore/h200_round3.py --out DIR [--deadline 540] [--variants ...] [--vae ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import h200_levers
import torch
from h200_levers import compile_options, cuda_ms

from gridgen.sdxl.models import build_random_sdxl

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def left(args: argparse.Namespace) -> float:
    return args.deadline - (time.perf_counter() - T0)


def save(res: dict[str, Any], out: Path) -> None:
    (out / "round3.json").write_text(json.dumps(res, indent=2))


def stage_unet(pipe: Any, res: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """``h200_levers``' UNet stage (its ``levers.json`` too), its results kept under ``unet``."""
    levers: dict[str, Any] = {}
    h200_levers.stage_unet(pipe, levers, args, out)
    res["eager_1img_denoise_s"] = levers["eager_1img_denoise_s"]
    res["unet"] = levers["variants"]


def make_vae(base: Any, kind: str) -> Any:
    vae = copy.deepcopy(base).to(torch.bfloat16)
    if kind == "resnets":
        vae._repeated_blocks = ["ResnetBlock2D"]
        vae.compile_repeated_blocks(fullgraph=True, dynamic=False)
        return vae
    if kind.endswith("_cl"):
        vae.to(memory_format=torch.channels_last)
    options = compile_options(["coord"]) if kind.endswith("_coord") else {}
    vae.decoder = torch.compile(vae.decoder, fullgraph=True, dynamic=False, **({"options": options} if options else {}))
    return vae


def stage_vae(pipe: Any, res: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    base = pipe.vae
    vae32 = copy.deepcopy(base).float()
    g = torch.Generator("cuda").manual_seed(7)
    lat8 = torch.randn(8, 4, 128, 128, generator=g, device="cuda") * 5
    with torch.no_grad():
        ref = vae32.decode(lat8[:1] / vae32.config.scaling_factor, return_dict=False)[0].float()
    del vae32
    variants = res.setdefault("vae", {})
    for kind in args.vae.split(","):
        if left(args) < 70:
            variants[kind] = {"skipped": f"{left(args):.0f}s left"}
            continue
        torch._dynamo.reset()
        log(f"vae variant {kind}")
        vae = make_vae(base, kind)
        entry: dict[str, Any] = {}
        variants[kind] = entry
        for n in (8, 1):
            x = (lat8[:n] / vae.config.scaling_factor).to(torch.bfloat16)
            if kind.endswith("_cl"):
                x = x.contiguous(memory_format=torch.channels_last)

            def call(vae: Any = vae, x: Any = x) -> Any:
                return vae.decode(x, return_dict=False)[0]

            started = time.perf_counter()
            with torch.no_grad():
                img = call()
            torch.cuda.synchronize()
            entry[f"n{n}_first_call_s"] = time.perf_counter() - started
            with torch.no_grad():
                samples = cuda_ms(call, 6)
            entry[f"n{n}_ms_per_image"] = statistics.median(samples) / n
            log(f"  {n} images: first {entry[f'n{n}_first_call_s']:.1f}s, {entry[f'n{n}_ms_per_image']:.2f} ms/image")
            if n == 1:
                d = ((img.float() - ref) / 2).abs()
                entry["vs_fp32_max_abs_0_1"], entry["vs_fp32_mean_abs_0_1"] = float(d.max()), float(d.mean())
            save(res, out)
        del vae
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--deadline", type=float, default=540)
    parser.add_argument("--stages", default="unet,vae")
    parser.add_argument("--variants", default="transformers:fp16,transformers:fp16:coord,transformers:bf16:coord,transformers:fp16:autotune")
    parser.add_argument("--vae", default="resnets,decoder,decoder_cl,decoder_coord")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch._dynamo.config.cache_size_limit = 256
    torch._dynamo.config.accumulated_cache_size_limit = 4096
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    pipe = build_random_sdxl(device="cuda", dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    res["build_s"] = time.perf_counter() - T0
    log("built")
    for stage in args.stages.split(","):
        {"unet": stage_unet, "vae": stage_vae}[stage](pipe, res, args, out)
    save(res, out)
    print(json.dumps(res, indent=1)[-5000:])


if __name__ == "__main__":
    main()

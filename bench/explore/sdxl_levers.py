#!/usr/bin/env python
"""Measure SDXL speed levers on one GPU, standalone (no gridgen import).

Full-size SDXL architecture (bench/explore/sdxl-base-1.0.json) with random
weights, 1024x1024, 20 Euler steps, CFG on, 16-bit weights.  Stages:

  build     models on the device, fast random init (std 0.02, zero biases)
  sync      count host-device syncs in one eager pipeline call
  baseline  the seed recipe (1 image/call, fp32 VAE upcast, output_type="pt")
            and the same pipeline at 2/4/8 images per call
  ref       eager reference outputs (fixed latents) for the accuracy checks
  levers    one UNet forward at CFG batch 2 and 16: SDPA backends,
            channels_last, fused QKV, cudnn.benchmark, bf16, CUDA graphs
  vae       VAE decode fp32 / fp32-upcast round trip / fp16 / bf16,
            channels_last; previews: linear latent->RGB and AutoencoderTiny
  e2e       the optimised pipeline (graphs + best levers) end to end at
            1/4/8 images, previews, accuracy vs eager, peak memory
  compile   regional torch.compile (repeated BasicTransformerBlocks, then
            ResnetBlock2D too), compile times, step and end-to-end speed
  bf16      whole pipeline in bf16 with graphs, speed and accuracy

Every measured row is appended to results JSON as soon as it exists, so a
run killed by a time limit still leaves its data.  `--tiny` builds a tiny
variant of the same architecture and runs every stage on the CPU (CUDA graphs
are emulated by the same static-buffer plumbing) so bugs cost no GPU time.

Usage:
  python bench/explore/sdxl_levers.py --tiny --out /tmp/tiny
  python bench/explore/sdxl_levers.py --out $OUT --deadline 520
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "sdxl-base-1.0.json")

PROMPT = "A fantasy landscape"
NEG = "A blurry image"
STEPS = 20
SEED = 1234
ALL_STAGES = ["build", "sync", "baseline", "ref", "levers", "vae", "e2e", "profile", "compile", "bf16"]

T_START = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T_START:7.1f}s]", *a, flush=True)


# --------------------------------------------------------------------------- results


class Results:
    def __init__(self, out_dir: str):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "results.json")
        self.data: dict = {"meta": {}, "rows": [], "errors": [], "notes": []}

    def meta(self, **kw):
        self.data["meta"].update(kw)
        self.flush()

    def note(self, msg: str):
        log("NOTE", msg)
        self.data["notes"].append(msg)
        self.flush()

    def add(self, stage: str, name: str, samples=None, images: int | None = None, **kw):
        row = {"stage": stage, "name": name}
        if samples is not None:
            samples = [float(s) for s in samples]
            row["median_s"] = statistics.median(samples)
            row["min_s"] = min(samples)
            row["samples_s"] = samples
            if images:
                row["images"] = images
                row["per_image_s"] = row["median_s"] / images
        row.update(kw)
        self.data["rows"].append(row)
        self.flush()
        extra = {k: v for k, v in kw.items() if k not in ("samples_s",)}
        med = f"median {row['median_s'] * 1e3:9.2f} ms" if samples is not None else ""
        pi = f" per image {row['per_image_s']:.3f} s" if "per_image_s" in row else ""
        log(f"{stage:9s} {name:44s} {med}{pi} {json.dumps(extra, default=str) if extra else ''}")
        return row

    def error(self, stage: str, name: str, exc: BaseException):
        tb = traceback.format_exc()
        log(f"ERROR {stage}/{name}: {type(exc).__name__}: {exc}\n{tb[-2000:]}")
        self.data["errors"].append({"stage": stage, "name": name, "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]})
        self.flush()

    def find(self, stage: str, name: str):
        for r in self.data["rows"]:
            if r["stage"] == stage and r["name"] == name:
                return r
        return None

    def flush(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- config / build


def strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_") and k not in ("model_type", "note")}


def load_config(tiny: bool) -> dict:
    with open(CONFIG) as f:
        cfg = json.load(f)
    if not tiny:
        return cfg
    u = dict(cfg["unet"])
    u.update(
        block_out_channels=[32, 64, 128],
        attention_head_dim=[1, 2, 4],  # diffusers reads this as heads: head dim 32
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=64,  # 32 (te1) + 32 (te2)
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
        sample_size=16,
        norm_num_groups=8,
    )
    v = dict(cfg["vae"])
    v.update(block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=128)
    t1 = dict(cfg["text_encoder"])
    t1.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, projection_dim=32)
    t2 = dict(cfg["text_encoder_2"])
    t2.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, projection_dim=32)
    cfg = dict(cfg, unet=u, vae=v, text_encoder=t1, text_encoder_2=t2)
    return cfg


def bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(dirpath: str):
    """A byte-level CLIP BPE vocabulary with no merges (the real vocab is not
    reachable offline); sequences are padded to 77 tokens, so compute equals
    the real model's."""
    from transformers import CLIPTokenizer

    chars = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(dirpath, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(dirpath, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(dirpath, model_max_length=77)


def reinit_(model, gen, std: float = 0.02):
    """Random normal weights (std 0.02), zero biases, unit norms: keeps 20 CFG
    steps and the VAE finite in fp16."""
    import torch
    from torch import nn

    with torch.no_grad():
        for mod in model.modules():
            is_norm = isinstance(mod, (nn.GroupNorm, nn.LayerNorm)) or "norm" in type(mod).__name__.lower()
            for pname, p in mod.named_parameters(recurse=False):
                if is_norm:
                    p.fill_(1.0 if pname == "weight" else 0.0)
                elif p.dim() >= 2:
                    p.normal_(0.0, std, generator=gen)
                else:
                    p.zero_()


def build(cfg: dict, device, dtype, res: Results):
    import torch
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokdir = tempfile.mkdtemp(prefix="sdxl_tok_")
    tok = write_tokenizer(tokdir)
    gen = torch.Generator(device).manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        unet = UNet2DConditionModel(**strip(cfg["unet"]))
        reinit_(unet, gen)
        unet = unet.to(dtype)
        vae = AutoencoderKL(**strip(cfg["vae"]))
        reinit_(vae, gen)
        vae = vae.to(dtype)
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        te1 = CLIPTextModel(CLIPTextConfig(**strip(cfg["text_encoder"]), **ids))
        reinit_(te1, gen)
        te1 = te1.to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**strip(cfg["text_encoder_2"]), **ids))
        reinit_(te2, gen)
        te2 = te2.to(dtype)
        tiny = AutoencoderTiny()  # default config == taesd(xl) architecture, random weights
        reinit_(tiny, gen)
        tiny = tiny.to(dtype)
    for m in (unet, vae, te1, te2, tiny):
        m.eval().requires_grad_(False)
    sched = EulerDiscreteScheduler.from_config(strip(cfg["scheduler"]))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
        unet=unet, scheduler=sched, add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    sync(device)
    n_unet = sum(p.numel() for p in unet.parameters())
    res.add("build", "construct+init", build_s=time.perf_counter() - t0, unet_params=n_unet,
            te_params=sum(p.numel() for p in te1.parameters()) + sum(p.numel() for p in te2.parameters()),
            vae_params=sum(p.numel() for p in vae.parameters()))
    return pipe, tiny


# --------------------------------------------------------------------------- timing helpers


def sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_wall(fn, device, warmup: int, iters: int):
    """Host wall clock around each call, synchronised: end-to-end latency."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def time_events(fn, device, warmup: int, iters: int):
    """CUDA events around each of back-to-back calls (GPU time incl. launch gaps)."""
    import torch

    if torch.device(device).type != "cuda":
        return time_wall(fn, device, warmup, iters)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) / 1e3 for a, b in ev]


def peak_reset(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device):
    import torch

    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def free_mem(device):
    import gc

    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def diff_stats(a, b) -> dict:
    import torch

    a = a.float()
    b = b.float()
    d = (a - b).abs()
    return {
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "ref_max_abs": float(b.abs().max()),
        "ref_mean_abs": float(b.abs().mean()),
        "finite": bool(torch.isfinite(a).all() and torch.isfinite(b).all()),
    }


@contextlib.contextmanager
def sdpa_backends(names: list[str] | None):
    if not names:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bk = [getattr(SDPBackend, n) for n in names]
    try:
        cm = sdpa_kernel(bk, set_priority=True)
    except TypeError:
        cm = sdpa_kernel(bk)
    with cm:
        yield


# --------------------------------------------------------------------------- CUDA graphs of the UNet forward


class GraphedUNet:
    """Replaces `unet.forward` with a CUDA graph replay, one graph per input
    shape, captured on first use (warm-up on a side stream, then capture).
    Inputs are copied into static buffers, the returned tensor is the graph's
    static output (valid until the next replay of the same graph: the
    pipeline consumes it before that).  On CPU it runs the same static-buffer
    plumbing without a graph, so the logic is testable without a GPU."""

    def __init__(self, unet, warmup: int = 2):
        import torch

        self.unet = unet
        self.orig = unet.forward
        self.entries: dict = {}
        self.capture_s: dict = {}
        self.warmup = warmup
        self.cuda = next(unet.parameters()).device.type == "cuda"
        self.calls = 0
        self.fallbacks = 0
        # One memory pool for all shapes: safe because a graph's output is
        # consumed before any other graph of this UNet is replayed (one batch
        # at a time, one stream).
        self.pool = torch.cuda.graph_pool_handle() if self.cuda else None

    def install(self):
        self.unet.forward = self
        return self

    def uninstall(self):
        if "forward" in self.unet.__dict__:
            del self.unet.__dict__["forward"]
        self.entries.clear()

    def _run(self, s):
        return self.orig(
            s["sample"], s["t"], encoder_hidden_states=s["ehs"],
            added_cond_kwargs={"text_embeds": s["te"], "time_ids": s["ti"]}, return_dict=False,
        )[0]

    def __call__(self, sample, timestep, encoder_hidden_states, timestep_cond=None, attention_mask=None,
                 cross_attention_kwargs=None, added_cond_kwargs=None, down_block_additional_residuals=None,
                 mid_block_additional_residual=None, down_intrablock_additional_residuals=None,
                 encoder_attention_mask=None, return_dict=True):
        import torch

        self.calls += 1
        extra = (timestep_cond, attention_mask, cross_attention_kwargs, down_block_additional_residuals,
                 mid_block_additional_residual, down_intrablock_additional_residuals, encoder_attention_mask)
        if any(x is not None for x in extra) or not added_cond_kwargs or set(added_cond_kwargs) != {"text_embeds", "time_ids"}:
            self.fallbacks += 1
            return self.orig(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond,
                             attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
                             added_cond_kwargs=added_cond_kwargs,
                             down_block_additional_residuals=down_block_additional_residuals,
                             mid_block_additional_residual=mid_block_additional_residual,
                             down_intrablock_additional_residuals=down_intrablock_additional_residuals,
                             encoder_attention_mask=encoder_attention_mask, return_dict=return_dict)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(timestep, dtype=torch.float32, device=sample.device)
        te, ti = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        key = tuple((tuple(x.shape), x.dtype) for x in (sample, timestep, encoder_hidden_states, te, ti))
        e = self.entries.get(key)
        if e is None:
            e = self._capture(key, sample, timestep, encoder_hidden_states, te, ti)
        s = e["static"]
        s["sample"].copy_(sample)
        s["t"].copy_(timestep)
        s["ehs"].copy_(encoder_hidden_states)
        s["te"].copy_(te)
        s["ti"].copy_(ti)
        if e["graph"] is not None:
            e["graph"].replay()
            out = e["out"]
        else:
            out = self._run(s)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    def _capture(self, key, sample, timestep, ehs, te, ti):
        import torch

        t0 = time.perf_counter()
        static = {"sample": sample.clone(), "t": timestep.clone(), "ehs": ehs.clone(), "te": te.clone(), "ti": ti.clone()}
        graph = None
        out = None
        if self.cuda:
            st = torch.cuda.Stream()
            st.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(st):
                for _ in range(self.warmup):
                    self._run(static)
            torch.cuda.current_stream().wait_stream(st)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._run(static)
            torch.cuda.synchronize()
        e = {"static": static, "graph": graph, "out": out}
        self.entries[key] = e
        self.capture_s[str(key[0][0])] = time.perf_counter() - t0
        return e


# --------------------------------------------------------------------------- helpers on the pipeline


class Bench:
    def __init__(self, args, res: Results):
        import torch

        self.args = args
        self.res = res
        self.device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.float16
        self.cfg = load_config(args.tiny)
        self.H = self.W = 128 if args.tiny else 1024
        self.lat_hw = self.H // 8
        self.deadline = args.deadline
        self.refs: dict = {}
        self.best: dict = {"sdpa": None, "channels_last": True, "fused": True, "cudnn_benchmark": False, "vae": "fp16"}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - T_START)

    def n(self, k: int) -> int:
        return k

    # -- inputs
    def latents(self, n: int, seed: int = SEED, dtype=None):
        import torch

        dtype = dtype or self.dtype
        gs = []
        for i in range(n):
            g = torch.Generator(self.device).manual_seed(seed + i)
            gs.append(torch.randn((1, 4, self.lat_hw, self.lat_hw), generator=g, device=self.device, dtype=torch.float32))
        return torch.cat(gs).to(dtype)

    def unet_inputs(self, B: int, dtype=None):
        import torch

        dtype = dtype or self.dtype
        g = torch.Generator(self.device).manual_seed(7)
        cad = self.cfg["unet"]["cross_attention_dim"]
        ted = self.cfg["text_encoder_2"]["projection_dim"]
        return {
            "sample": torch.randn((B, 4, self.lat_hw, self.lat_hw), generator=g, device=self.device).to(dtype),
            "t": torch.tensor(951.0, device=self.device),
            "ehs": torch.randn((B, 77, cad), generator=g, device=self.device).to(dtype),
            "te": torch.randn((B, ted), generator=g, device=self.device).to(dtype),
            "ti": torch.tensor([[self.H, self.W, 0, 0, self.H, self.W]], device=self.device, dtype=dtype).repeat(B, 1),
        }

    @staticmethod
    def step_fn(unet, inp):
        def f():
            return unet(inp["sample"], inp["t"], encoder_hidden_states=inp["ehs"],
                        added_cond_kwargs={"text_embeds": inp["te"], "time_ids": inp["ti"]}, return_dict=False)[0]
        return f

    # -- pipeline calls
    def seed_call(self, n: int):
        return self.pipe(prompt=PROMPT, negative_prompt=NEG, height=self.H, width=self.W,
                         num_inference_steps=STEPS, num_images_per_prompt=n, output_type="pt").images

    def latent_call(self, n: int, latents, callback=None, sdpa=None):
        with sdpa_backends(sdpa):
            return self.pipe(prompt=PROMPT, negative_prompt=NEG, height=self.H, width=self.W,
                             num_inference_steps=STEPS, num_images_per_prompt=n, latents=latents,
                             output_type="latent", callback_on_step_end=callback).images

    def decode(self, vae, latents):
        import torch

        sf = self.cfg["vae"]["scaling_factor"]
        k = self.args.vae_chunk
        outs = [vae.decode(c.to(vae.dtype) / sf, return_dict=False)[0] for c in latents.split(k)]
        img = outs[0] if len(outs) == 1 else torch.cat(outs)
        return (img / 2 + 0.5).clamp(0, 1)

    def reps_for(self, full: int) -> int:
        return 1 if self.args.tiny else full


# --------------------------------------------------------------------------- stages


def stage_sync(b: Bench):
    """Count synchronising CUDA calls in one eager seed-recipe call."""
    import torch

    if not b.cuda:
        b.res.add("sync", "seed recipe (skipped on CPU)")
        return
    b.seed_call(1)  # warm
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)
        try:
            b.seed_call(1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    locs: dict[str, int] = {}
    for x in w:
        if "synchroniz" in str(x.message):
            k = f"{os.path.basename(x.filename)}:{x.lineno}"
            locs[k] = locs.get(k, 0) + 1
    b.res.add("sync", "seed recipe syncs", count=sum(locs.values()), where=locs)


def stage_baseline(b: Bench):
    r = b.reps_for
    peak_reset(b.device)
    s = time_wall(lambda: b.seed_call(1), b.device, warmup=1, iters=r(5))
    b.res.add("baseline", "seed recipe b1 (fp16, VAE fp32 upcast, pt)", s, images=1, peak_gib=peak_gib(b.device))
    for n in (2, 4, 8):
        if b.left() < (60 if n == 8 else 30):
            b.res.note(f"baseline b{n} skipped: deadline")
            break
        peak_reset(b.device)
        s = time_wall(lambda: b.seed_call(b.n(n)), b.device, warmup=1, iters=r(2 if n == 8 else 3))
        b.res.add("baseline", f"seed pipeline b{n}", s, images=b.n(n), peak_gib=peak_gib(b.device))
    # text encoding alone (runs inside every call)

    dev = b.device
    s = time_wall(lambda: b.pipe.encode_prompt(PROMPT, device=dev, num_images_per_prompt=1,
                                               do_classifier_free_guidance=True, negative_prompt=NEG),
                  dev, warmup=2, iters=r(10))
    b.res.add("baseline", "encode_prompt (both CLIPs, prompt+negative)", s)


def stage_ref(b: Bench):
    """Eager references with fixed latents: b1 seed SEED, b4 seeds SEED..SEED+3.
    Decoded like the seed recipe (fp32 upcast of the fp16 VAE)."""
    import torch

    vae32 = copy.deepcopy(b.pipe.vae).float()
    b.vae32 = vae32
    for n in (1, 4):
        lat0 = b.latents(n)
        lat = b.latent_call(n, lat0)
        img = b.decode(vae32, lat)
        b.refs[n] = {"latents": lat.clone(), "image": img.float().clone(), "init": lat0}
        b.res.add("ref", f"eager reference b{n}", finite=bool(torch.isfinite(lat).all() and torch.isfinite(img).all()),
                  latents_std=float(lat.float().std()), latents_absmax=float(lat.float().abs().max()),
                  image_mean=float(img.float().mean()), image_std=float(img.float().std()))
    # run-to-run determinism of eager, and the fp16 noise floor (another SDPA backend)
    lat = b.latent_call(1, b.refs[1]["init"])
    b.res.add("ref", "eager rerun vs eager (latents)", **diff_stats(lat, b.refs[1]["latents"]))
    if b.cuda and not b.args.no_floor:
        for alt in ("EFFICIENT_ATTENTION", "MATH"):
            try:
                lat = b.latent_call(1, b.refs[1]["init"], sdpa=[alt])
                img = b.decode(vae32, lat)
                b.res.add("ref", f"eager sdpa={alt} vs eager default (latents)", **diff_stats(lat, b.refs[1]["latents"]))
                b.res.add("ref", f"eager sdpa={alt} vs eager default (image)", **diff_stats(img, b.refs[1]["image"]))
            except Exception as e:
                b.res.error("ref", alt, e)
    # image 0 of the b4 reference vs the b1 reference: batch-size dependence of eager
    if 4 in b.refs:
        r4 = b.refs[4]
        b.res.add("ref", "eager b4 image0 vs eager b1 (latents)", **diff_stats(r4["latents"][:1], b.refs[1]["latents"]))
        b.res.add("ref", "eager b4 image0 vs eager b1 (image)", **diff_stats(r4["image"][:1], b.refs[1]["image"]))


def _lever(b: Bench, name: str, unet, batches=(2, 16), sdpa=None, dtype=None, graph=False):
    import torch

    out = {}
    for B in batches:
        if b.left() < 25:
            b.res.note(f"lever {name} b{B} skipped: deadline")
            continue
        try:
            inp = b.unet_inputs(B, dtype)
            g = None
            with sdpa_backends(sdpa):
                if graph:
                    g = GraphedUNet(unet).install()
                    t0 = time.perf_counter()
                    y = Bench.step_fn(unet, inp)()
                    sync(b.device)
                    cap = time.perf_counter() - t0
                f = Bench.step_fn(unet, inp)
                y = f()
                finite = bool(torch.isfinite(y).all())
                warm, it = (3, 10) if B <= 2 else (2, 6)
                s = time_events(f, b.device, warm, b.reps_for(it))
            if g is not None:
                g.uninstall()
            del y
            row = b.res.add("levers", f"{name} step b{B}", s, cfg_batch=B, finite=finite,
                            **({"capture_s": round(cap, 3)} if graph else {}))
            out[B] = row["median_s"]
        except Exception as e:
            b.res.error("levers", f"{name} b{B}", e)
        free_mem(b.device)
    return out


def stage_levers(b: Bench):
    import torch

    unet = b.pipe.unet
    res = {}
    res["eager"] = _lever(b, "eager fp16 (default sdpa)", unet)
    if b.cuda:
        res["graph"] = _lever(b, "eager fp16 + CUDA graph", unet, graph=True)
        for bk in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            res[bk] = _lever(b, f"sdpa={bk}", unet, sdpa=[bk])
        _lever(b, "sdpa=MATH", unet, batches=(2,), sdpa=["MATH"])
    # choose the SDPA backend by the batch-16 step (fall back to batch 2)
    cands = {k: v for k, v in res.items() if k in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION") and v}
    if cands:
        def score(v):
            return v.get(16) or v.get(2)
        best = min(cands, key=lambda k: score(cands[k]))
        if score(cands[best]) < score(res["eager"]) * 0.99:
            b.best["sdpa"] = [best, "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
        b.res.note(f"best sdpa: {best} ({score(cands[best]) * 1e3:.1f} ms vs default {score(res['eager']) * 1e3:.1f} ms); using {b.best['sdpa']}")
    sd = b.best["sdpa"]
    unet.to(memory_format=torch.channels_last)
    res["cl"] = _lever(b, "channels_last", unet, sdpa=sd)
    unet.to(memory_format=torch.contiguous_format)
    unet.fuse_qkv_projections()
    res["fused"] = _lever(b, "fused QKV", unet, sdpa=sd)
    unet.to(memory_format=torch.channels_last)
    res["cl+fused"] = _lever(b, "channels_last + fused QKV", unet, sdpa=sd)
    if b.cuda:
        torch.backends.cudnn.benchmark = True
        res["cl+fused+bench"] = _lever(b, "cl + fused + cudnn.benchmark", unet, sdpa=sd)
        torch.backends.cudnn.benchmark = False

    def sc(k):
        v = res.get(k) or {}
        return v.get(16) or v.get(2) or float("inf")

    opts = {"cl": (True, False), "fused": (False, True), "cl+fused": (True, True), "eager": (False, False)}
    bestk = min(opts, key=sc)
    b.best["channels_last"], b.best["fused"] = opts[bestk]
    if b.cuda and sc("cl+fused+bench") < sc("cl+fused") * 0.99 and bestk == "cl+fused":
        b.best["cudnn_benchmark"] = True
    b.res.note(f"best layout: {bestk}; cudnn.benchmark={b.best['cudnn_benchmark']}")
    # put the fp16 unet into the chosen state
    if not b.best["fused"]:
        unet.unfuse_qkv_projections()
    unet.to(memory_format=torch.channels_last if b.best["channels_last"] else torch.contiguous_format)
    torch.backends.cudnn.benchmark = b.best["cudnn_benchmark"]
    if b.cuda:
        _lever(b, "best fp16 + CUDA graph", unet, sdpa=sd, graph=True)
    # bf16 copy of the unet (timing only)
    if b.left() > 60:
        ub = copy.deepcopy(unet).to(torch.bfloat16)
        if b.best["fused"]:
            ub.unfuse_qkv_projections()
        ub.to(memory_format=torch.contiguous_format)
        _lever(b, "bf16 eager (default sdpa)", ub, dtype=torch.bfloat16)
        ub.fuse_qkv_projections()
        ub.to(memory_format=torch.channels_last)
        _lever(b, "bf16 cl + fused", ub, sdpa=sd, dtype=torch.bfloat16)
        if b.cuda:
            _lever(b, "bf16 cl + fused + CUDA graph", ub, sdpa=sd, dtype=torch.bfloat16, graph=True)
        del ub
        free_mem(b.device)


def stage_vae(b: Bench):
    import torch

    vae16 = b.pipe.vae
    vae32 = getattr(b, "vae32", None)
    if vae32 is None:
        vae32 = copy.deepcopy(vae16).float()
    vaebf = copy.deepcopy(vae32).to(torch.bfloat16)
    r = b.reps_for
    sf = b.cfg["vae"]["scaling_factor"]
    for n in (1, 8):
        n = b.n(n)
        if b.left() < 40:
            b.res.note("vae stage cut: deadline")
            return
        lat = b.latents(n) * 0.5
        ref = b.decode(vae32, lat)
        peak_reset(b.device)
        s = time_events(lambda: b.decode(vae32, lat), b.device, 1, r(5 if n == 1 else 3))
        b.res.add("vae", f"decode fp32 b{n}", s, images=n, peak_gib=peak_gib(b.device))

        def roundtrip():
            vae16.to(torch.float32)
            y = vae16.decode(lat.float() / sf, return_dict=False)[0]
            vae16.to(torch.float16)
            return y
        s = time_wall(roundtrip, b.device, 1, r(5 if n == 1 else 3))
        b.res.add("vae", f"decode fp32 upcast round trip (pipeline default) b{n}", s, images=n)
        for name, v in (("fp16", vae16), ("bf16", vaebf)):
            img = b.decode(v, lat)
            st = diff_stats(img, ref)
            peak_reset(b.device)
            s = time_events(lambda: b.decode(v, lat), b.device, 1, r(5 if n == 1 else 3))
            b.res.add("vae", f"decode {name} b{n}", s, images=n, peak_gib=peak_gib(b.device), vs_fp32=st)
            if b.cuda:
                v.to(memory_format=torch.channels_last)
                s = time_events(lambda: b.decode(v, lat), b.device, 1, r(5 if n == 1 else 3))
                b.res.add("vae", f"decode {name} channels_last b{n}", s, images=n)
                v.to(memory_format=torch.contiguous_format)
        if b.cuda and not b.best["cudnn_benchmark"]:
            torch.backends.cudnn.benchmark = True
            s = time_events(lambda: b.decode(vae16, lat), b.device, 2, r(5 if n == 1 else 3))
            b.res.add("vae", f"decode fp16 cudnn.benchmark b{n}", s, images=n)
            torch.backends.cudnn.benchmark = False
        # previews
        tiny = b.tiny
        s = time_events(lambda: preview_linear(lat), b.device, 2, r(10))
        b.res.add("vae", f"preview linear latent->RGB (+uint8 to host) b{n}", s, images=n)
        s = time_events(lambda: preview_tiny(tiny, lat), b.device, 2, r(5))
        b.res.add("vae", f"preview AutoencoderTiny 1024px (+uint8 to host) b{n}", s, images=n)
        free_mem(b.device)
    # which VAE path the fast pipeline uses: fastest of fp16 / bf16 at b8
    def med(k):
        row = b.res.find("vae", k)
        return row["median_s"] if row else float("inf")
    n8 = b.n(8)
    choices = {
        ("fp16", False): med(f"decode fp16 b{n8}"), ("fp16", True): med(f"decode fp16 channels_last b{n8}"),
        ("bf16", False): med(f"decode bf16 b{n8}"), ("bf16", True): med(f"decode bf16 channels_last b{n8}"),
    }
    bestv = min(choices, key=choices.get)
    b.best["vae"], b.best["vae_cl"] = bestv
    b.vaebf = vaebf
    b.res.note(f"fast VAE path: {bestv} ({choices[bestv]})")


LAT_RGB = [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]]
LAT_RGB_BIAS = [0.1084, -0.0175, -0.0011]


def preview_linear(lat):
    import torch

    m = torch.tensor(LAT_RGB, device=lat.device, dtype=torch.float32)
    bias = torch.tensor(LAT_RGB_BIAS, device=lat.device).view(1, 3, 1, 1)
    rgb = torch.einsum("bchw,cr->brhw", lat.float(), m) + bias
    return ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()


def preview_tiny(tiny, lat):
    import torch

    img = tiny.decode(lat.to(tiny.dtype) / tiny.config.scaling_factor, return_dict=False)[0]
    return ((img.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()


def _e2e(b: Bench, label: str, n: int, decode_vae, graphed: GraphedUNet | None, callback=None, iters=3, acc=True):

    n = b.n(n)
    if b.left() < (25 + 6 * n):
        b.res.note(f"e2e {label} b{n} skipped: deadline")
        return None
    lat0 = b.latents(n)

    def call():
        lat = b.latent_call(n, lat0, callback=callback, sdpa=b.best["sdpa"])
        return lat, b.decode(decode_vae, lat)

    peak_reset(b.device)
    t0 = time.perf_counter()
    lat, img = call()  # warm-up (captures graphs for this shape)
    sync(b.device)
    first = time.perf_counter() - t0
    s = time_wall(call, b.device, 0, b.reps_for(iters))
    extra = {"first_call_s": round(first, 3), "peak_gib": peak_gib(b.device)}
    if graphed is not None:
        extra["capture_s"] = {k: round(v, 3) for k, v in graphed.capture_s.items()}
    if acc:
        lat, img = call()
        ref = b.refs.get(n)
        if ref is not None:
            extra["acc_latents"] = diff_stats(lat, ref["latents"])
            extra["acc_image"] = diff_stats(img, ref["image"])
        elif 1 in b.refs:
            extra["acc_latents_img0_vs_ref_b1"] = diff_stats(lat[:1], b.refs[1]["latents"])
            extra["acc_image_img0_vs_ref_b1"] = diff_stats(img[:1], b.refs[1]["image"])
        if n > 1 and 1 in b.refs:
            extra["img0_vs_ref_b1"] = diff_stats(img[:1], b.refs[1]["image"])
    return b.res.add("e2e", f"{label} b{n}", s, images=n, **extra)


def apply_fast(b: Bench):
    """Put the pipeline into the optimised state chosen by the lever stage."""
    import torch

    unet = b.pipe.unet
    if b.best["fused"] and not any("Fused" in type(p).__name__ for p in unet.attn_processors.values()):
        unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last if b.best["channels_last"] else torch.contiguous_format)
    if b.cuda:
        torch.backends.cudnn.benchmark = b.best["cudnn_benchmark"]
    if b.best["vae"] == "fp16":
        vae = b.pipe.vae
    else:
        vae = getattr(b, "vaebf", None)
        if vae is None:
            vae = b.vaebf = copy.deepcopy(b.pipe.vae).to(torch.bfloat16)
    if b.best.get("vae_cl"):
        vae.to(memory_format=torch.channels_last)
    return vae


def stage_e2e(b: Bench):
    vae = apply_fast(b)
    b.res.note(f"fast path settings: {json.dumps(b.best)}")
    _e2e(b, "opt eager (no graphs)", 1, vae, None)
    _e2e(b, "opt eager (no graphs)", 8, vae, None, iters=2, acc=False)
    g = GraphedUNet(b.pipe.unet).install()
    b.graphed = g
    for n in (1, 4, 8):
        _e2e(b, "opt + CUDA graphs", n, vae, g, iters=3 if n < 8 else 2)
    b.res.add("e2e", "graph wrapper stats", calls=g.calls, fallbacks=g.fallbacks, graphs=len(g.entries))
    # previews every 5 steps (steps 0, 5, 10, 15), as the seed's streaming does
    tiny = b.tiny

    def cb_lin(pipe, i, t, kw):
        if i % 5 == 0:
            preview_linear(kw["latents"])
        return {}

    def cb_tiny(pipe, i, t, kw):
        if i % 5 == 0:
            preview_tiny(tiny, kw["latents"])
        return {}

    for n in (1, 8):
        _e2e(b, "opt + graphs + linear previews/5", n, vae, g, callback=cb_lin, iters=2, acc=False)
        _e2e(b, "opt + graphs + TAESD previews/5", n, vae, g, callback=cb_tiny, iters=2, acc=False)
    # syncs inside the optimised loop
    if b.cuda:
        import torch

        lat0 = b.latents(1)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode(1)
            try:
                b.latent_call(1, lat0, sdpa=b.best["sdpa"])
            finally:
                torch.cuda.set_sync_debug_mode(0)
        locs: dict[str, int] = {}
        for x in w:
            if "synchroniz" in str(x.message):
                k = f"{os.path.basename(x.filename)}:{x.lineno}"
                locs[k] = locs.get(k, 0) + 1
        b.res.add("e2e", "opt + graphs syncs (latent output)", count=sum(locs.values()), where=locs)
    g.uninstall()
    free_mem(b.device)


def _dynamo_limits():
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    for name in ("accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)


def stage_compile(b: Bench):
    """Regional compilation: each group in --compile-kinds (';'-separated,
    cumulative) is compiled with compile_repeated_blocks(fullgraph=True,
    dynamic=False); first-call (compile) times at CFG batch 2 and 16, then
    step times without and with a CUDA graph around the whole UNet."""

    if b.left() < 120:
        b.res.note("compile stage skipped: deadline")
        return
    import torch._inductor.config as ic

    _dynamo_limits()
    if b.args.inductor:
        for k, v in json.loads(b.args.inductor).items():
            setattr(ic, k, v)
        b.res.meta(inductor_options=json.loads(b.args.inductor))
    vae = apply_fast(b)
    unet = b.pipe.unet
    b.res.meta(inductor_cache_dir=os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    kinds = [k.split("+") for k in b.args.compile_kinds.split(";") if k]
    for ki, kind in enumerate(kinds):
        if b.left() < 100:
            b.res.note(f"compile {kind} skipped: deadline")
            break
        label = "+".join(k for kk in kinds[: ki + 1] for k in kk)
        unet._repeated_blocks = kind
        t0 = time.perf_counter()
        unet.compile_repeated_blocks(fullgraph=True, dynamic=False)
        for B in (2, 16):
            inp = b.unet_inputs(B)
            with sdpa_backends(b.best["sdpa"]):
                t1 = time.perf_counter()
                f = Bench.step_fn(unet, inp)
                try:
                    f()
                    sync(b.device)
                except Exception as e:
                    b.res.error("compile", f"{label} first call b{B}", e)
                    return
                b.res.add("compile", f"compile {label} first call b{B}", compile_s=round(time.perf_counter() - t1, 2))
        b.res.add("compile", f"compile {label} total", compile_s=round(time.perf_counter() - t0, 2))
        _lever(b, f"compiled[{label}]", unet, sdpa=b.best["sdpa"])
        if b.cuda:
            _lever(b, f"compiled[{label}] + CUDA graph", unet, sdpa=b.best["sdpa"], graph=True)
        if b.args.compile_e2e:
            g = GraphedUNet(unet).install()
            for n in (1, 8):
                _e2e(b, f"opt + compiled[{label}] + graphs", n, vae, g, iters=3 if n == 1 else 2)
            g.uninstall()
        free_mem(b.device)
    if b.args.profile:
        try:
            stage_profile(b, unet, label="compiled")
        except Exception as e:
            b.res.error("compile", "profile", e)
    if b.args.compile_vae and b.left() > 90:
        try:
            compile_vae(b, vae)
        except Exception as e:
            b.res.error("compile", "vae", e)
    try:
        from torch._dynamo.utils import counters

        b.res.add("compile", "dynamo counters", stats=dict(counters["stats"]), graph_breaks=len(counters["graph_break"]))
    except Exception as e:
        b.res.error("compile", "counters", e)
    if b.args.final_batches:
        g = GraphedUNet(unet).install()
        for n in [int(x) for x in b.args.final_batches.split(",")]:
            _e2e(b, "FINAL compiled+graphs", n, vae, g, iters=3 if n <= 4 else 2)
        b.res.add("e2e", "FINAL graph wrapper stats", calls=g.calls, fallbacks=g.fallbacks, graphs=len(g.entries))
        g.uninstall()
        free_mem(b.device)


def compile_vae(b: Bench, vae):
    """Regional compile of the VAE's ResnetBlock2D (decoder side is what runs)."""

    vae32 = getattr(b, "vae32", None)
    if vae32 is None:
        vae32 = b.vae32 = copy.deepcopy(b.pipe.vae).float()
    r = b.reps_for
    lats = {n: b.latents(n, seed=99) * 0.5 for n in (1, 8)}
    refs = {n: b.decode(vae32, lats[n]) for n in lats}
    for n, lat in lats.items():
        s = time_events(lambda: b.decode(vae, lat), b.device, 1, r(5 if n == 1 else 3))
        b.res.add("vae", f"decode {vae.dtype} eager (before compile) b{n}", s, images=n,
                  vs_fp32=diff_stats(b.decode(vae, lat), refs[n]))
    vae._repeated_blocks = ["ResnetBlock2D"]
    t0 = time.perf_counter()
    vae.compile_repeated_blocks(fullgraph=True, dynamic=False)
    for n, lat in lats.items():
        t1 = time.perf_counter()
        y = b.decode(vae, lat)
        sync(b.device)
        b.res.add("compile", f"compile VAE ResnetBlock2D first call b{n}", compile_s=round(time.perf_counter() - t1, 2))
        s = time_events(lambda: b.decode(vae, lat), b.device, 1, r(5 if n == 1 else 3))
        b.res.add("vae", f"decode {vae.dtype} compiled[ResnetBlock2D] b{n}", s, images=n, vs_fp32=diff_stats(y, refs[n]))
    b.res.add("compile", "compile VAE ResnetBlock2D total", compile_s=round(time.perf_counter() - t0, 2))


def stage_profile(b: Bench, unet=None, label: str = "eager"):
    """Kernel-time breakdown of one UNet forward at CFG batch 16 (current state
    of the UNet, eager launches so the profiler sees every kernel)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not b.cuda:
        return
    if unet is None:
        apply_fast(b)
        unet = b.pipe.unet
    inp = b.unet_inputs(16)
    f = Bench.step_fn(unet, inp)
    with sdpa_backends(b.best["sdpa"]):
        f()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                f()
            torch.cuda.synchronize()
    cats: dict[str, float] = {}
    top = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = getattr(ev, "cuda_time_total", 0)
        if not t or ev.key.startswith("aten::"):
            continue
        name = ev.key
        low = name.lower()
        if any(k in low for k in ("flash", "fmha", "attention", "sdpa", "attn")):
            c = "attention"
        elif any(k in low for k in ("conv", "implicit", "xmma_fprop", "fprop", "dgrad", "winograd", "sm90_xmma_fprop")):
            c = "conv"
        elif any(k in low for k in ("gemm", "nvjet", "cutlass", "matmul", "xmma", "sm90_")):
            c = "gemm"
        elif "triton" in low:
            c = "triton (fused pointwise/norm)"
        elif any(k in low for k in ("norm", "elementwise", "vectorized", "reduce", "cat", "copy", "silu", "gelu")):
            c = "eager pointwise/norm/copy"
        else:
            c = "other"
        cats[c] = cats.get(c, 0.0) + t / 2 / 1e3  # ms per forward
        top.append((t / 2 / 1e3, ev.count // 2, name[:120]))
    top.sort(reverse=True)
    total = sum(cats.values())
    b.res.add("profile", f"{label} UNet forward b16 kernel ms by category", total_ms=round(total, 2),
              categories={k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
              top_kernels=[{"ms": round(a, 3), "count": c, "name": n} for a, c, n in top[:25]])


def stage_bf16(b: Bench):
    """Whole pipeline in bf16 (text encoders, UNet, VAE) + the fast path."""
    import torch

    if b.left() < 90:
        b.res.note("bf16 stage skipped: deadline")
        return
    pipe = b.pipe
    apply_fast(b)
    pipe.to(torch.bfloat16)
    b.dtype = torch.bfloat16
    vae = pipe.vae
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in pipe.unet.modules())
    label = "bf16 pipeline + " + ("compiled + " if compiled else "") + "graphs"
    g = GraphedUNet(pipe.unet).install()
    for n in (1, 8):
        t0 = time.perf_counter()
        _e2e(b, label, n, vae, g, iters=3 if n == 1 else 2)
        b.res.note(f"{label} b{n} stage incl. recompile: {time.perf_counter() - t0:.1f}s")
    g.uninstall()


# --------------------------------------------------------------------------- main


def summary(res: Results):
    rows = res.data["rows"]
    base = res.find("baseline", "seed recipe b1 (fp16, VAE fp32 upcast, pt)")
    base_pi = base["per_image_s"] if base else None
    eager = {r.get("cfg_batch"): r["median_s"] for r in rows if r["stage"] == "levers" and r["name"].startswith("eager fp16 (default sdpa)")}
    lines = ["", "=" * 100, f"{'stage':9s} {'name':52s} {'median':>10s} {'per img':>8s} {'speedup':>8s}  extra", "-" * 100]
    for r in rows:
        if "median_s" not in r:
            continue
        sp = ""
        if r["stage"] in ("baseline", "e2e") and base_pi and r.get("per_image_s"):
            sp = f"{base_pi / r['per_image_s']:.2f}x"
        elif r["stage"] in ("levers",) and r.get("cfg_batch") in eager:
            sp = f"{eager[r['cfg_batch']] / r['median_s']:.2f}x"
        pi = f"{r['per_image_s']:.3f}" if r.get("per_image_s") else ""
        ex = []
        for k in ("capture_s", "first_call_s", "peak_gib", "compile_s"):
            if k in r:
                ex.append(f"{k}={r[k]}")
        if "acc_image" in r:
            ex.append(f"img max/mean {r['acc_image']['max_abs']:.2e}/{r['acc_image']['mean_abs']:.2e}")
        if "acc_latents" in r:
            ex.append(f"lat max/mean {r['acc_latents']['max_abs']:.2e}/{r['acc_latents']['mean_abs']:.2e}")
        if r.get("finite") is False:
            ex.append("NONFINITE")
        lines.append(f"{r['stage']:9s} {r['name'][:52]:52s} {r['median_s'] * 1e3:8.1f}ms {pi:>8s} {sp:>8s}  {' '.join(ex)}")
    for r in rows:
        if r["stage"] == "compile" and "compile_s" in r:
            lines.append(f"compile   {r['name']}: {r['compile_s']} s")
    lines.append(f"notes: {res.data['notes']}")
    lines.append(f"errors: {[e['stage'] + '/' + e['name'] + ': ' + e['error'][:120] for e in res.data['errors']]}")
    print("\n".join(lines), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny architecture on CPU (plumbing test)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/sdxl_levers"))
    ap.add_argument("--stages", default=",".join(ALL_STAGES[:-1]))
    ap.add_argument("--deadline", type=float, default=520.0, help="seconds from start after which stages are skipped")
    ap.add_argument("--compile-kinds", default="BasicTransformerBlock",
                    help="';'-separated groups of block class names to compile cumulatively, '+' within a group")
    ap.add_argument("--compile-e2e", action="store_true", help="end-to-end b1/b8 after each compile group")
    ap.add_argument("--compile-vae", action="store_true", help="also compile the VAE's ResnetBlock2D regionally")
    ap.add_argument("--profile", action="store_true", help="kernel breakdown of the compiled UNet at CFG batch 16")
    ap.add_argument("--final-batches", default="", help="end-to-end batches for the final compiled+graphs path, e.g. 1,4,8,16")
    ap.add_argument("--inductor", default="", help="JSON of torch._inductor.config options")
    ap.add_argument("--vae-chunk", type=int, default=8, help="decode at most this many images per VAE call")
    ap.add_argument("--no-floor", action="store_true", help="skip the SDPA-backend noise-floor references")
    ap.add_argument("--best", default="", help="JSON overriding the lever choices (e.g. from an earlier run)")
    args = ap.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_cold_"))
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch

    torch.set_grad_enabled(False)
    res = Results(args.out)
    import diffusers
    import transformers

    meta = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                diffusers=diffusers.__version__, transformers=transformers.__version__, tiny=args.tiny,
                stages=args.stages, argv=sys.argv)
    if torch.cuda.is_available() and not args.tiny:
        p = torch.cuda.get_device_properties(0)
        meta.update(gpu=p.name, sms=p.multi_processor_count, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                    flash_sdp=torch.backends.cuda.flash_sdp_enabled(), mem_eff_sdp=torch.backends.cuda.mem_efficient_sdp_enabled(),
                    cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled(), cudnn=torch.backends.cudnn.version())
    res.meta(**meta)
    log("meta", json.dumps(meta))
    b = Bench(args, res)
    if args.best:
        b.best.update(json.loads(args.best))
    stages = [s for s in args.stages.split(",") if s]
    try:
        b.pipe, b.tiny = build(b.cfg, b.device, b.dtype, res)
    except Exception as e:
        res.error("build", "build", e)
        raise
    fns = {"sync": stage_sync, "baseline": stage_baseline, "ref": stage_ref, "levers": stage_levers,
           "vae": stage_vae, "e2e": stage_e2e, "profile": stage_profile, "compile": stage_compile, "bf16": stage_bf16}
    for st in stages:
        if st == "build":
            continue
        if b.left() < 20:
            res.note(f"stage {st} skipped: deadline")
            continue
        log(f"--- stage {st} (left {b.left():.0f}s)")
        try:
            fns[st](b)
        except Exception as e:
            res.error(st, "stage", e)
        free_mem(b.device)
        res.meta(best=b.best)
    res.meta(total_s=time.perf_counter() - T_START, peak_gib_overall=round(torch.cuda.max_memory_allocated() / 2**30, 2) if b.cuda else None)
    summary(res)


if __name__ == "__main__":
    main()

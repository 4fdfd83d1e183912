"""FLUX.1's T5-XXL text encoder alone (the shipped full-size config, random weights, bf16,
batch 1) at 256 tokens (schnell) and 512 (dev): milliseconds per call, median of 20 after a
warm-up, four ways in turn: eager, eager in a CUDA graph (``GraphedForward``, what
``optimize="graphs"`` and ``"compile"`` do), each ``T5Block`` compiled (``fullgraph``,
static shapes), and the compiled blocks in a CUDA graph. Also CLIP-L's time, for the total.
Writes ``$OUT/text_encoders.json``.

    OUT=/tmp PYTHONPATH=src python3 bench/text_encoder_bench.py

``--device cpu --tiny`` (a 2-layer T5 and CLIP, float32) checks its own plumbing in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import transformers as t

from gridgen.diffusion.builders import _kwargs, family_config
from gridgen.diffusion.graphed import GraphedForward


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _ms(call: object, tokens: torch.Tensor) -> float:
    times = []
    for i in range(23):
        _sync()
        begun = time.perf_counter()
        call(tokens)  # type: ignore[operator]
        _sync()
        if i >= 3:
            times.append((time.perf_counter() - begun) * 1000)
    return round(sorted(times)[len(times) // 2], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="2-layer encoders, for the plumbing")
    args = parser.parse_args()
    device = args.device
    cfg = family_config("flux-random")
    t5_cfg, clip_cfg = _kwargs(cfg["t5"]), _kwargs(cfg["text_encoder"])
    if args.tiny:
        t5_cfg.update(d_model=64, d_ff=128, num_heads=4, num_layers=2)
        clip_cfg.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    with torch.device(device):
        t5 = t.T5EncoderModel(t.T5Config(**t5_cfg))
        clip = t.CLIPTextModel(t.CLIPTextConfig(**clip_cfg))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t5, clip = t5.to(dtype).eval(), clip.to(dtype).eval()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    res: dict[str, object] = {"device": name, "torch": torch.__version__, "tiny": args.tiny}
    calls = {"t5": lambda ids: t5(ids, output_hidden_states=False), "clip": lambda ids: clip(ids, output_hidden_states=False)}
    with torch.inference_mode():
        for tokens in (256, 512):
            ids = torch.randint(0, 1000, (1, tokens), device=device)
            res[f"t5-{tokens}-eager"] = _ms(calls["t5"], ids)
        res["clip-77-eager"] = _ms(calls["clip"], torch.randint(0, 1000, (1, 77), device=device))
        graphed = GraphedForward(t5).install()
        for tokens in (256, 512):
            res[f"t5-{tokens}-graph"] = _ms(calls["t5"], torch.randint(0, 1000, (1, tokens), device=device))
        graphed.uninstall()
        for block in t5.encoder.block:
            block.compile(fullgraph=True, dynamic=False)
        for tokens in (256, 512):
            begun = time.perf_counter()
            ids = torch.randint(0, 1000, (1, tokens), device=device)
            calls["t5"](ids)
            res[f"t5-{tokens}-compile-first-call-s"] = round(time.perf_counter() - begun, 1)
            res[f"t5-{tokens}-compile"] = _ms(calls["t5"], ids)
        graphed = GraphedForward(t5).install()
        for tokens in (256, 512):
            res[f"t5-{tokens}-compile+graph"] = _ms(calls["t5"], torch.randint(0, 1000, (1, tokens), device=device))
        print(json.dumps(res), flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "text_encoders.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

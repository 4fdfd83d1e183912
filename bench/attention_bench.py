"""torch's scaled-dot-product attention alone at FLUX.1-dev's shape (24 heads, 4,608 tokens,
head dim 128, bf16; batch 1 and 4), each SDPA backend forced in turn (``default``: torch's
own choice): milliseconds per call (mean of 20 after 3) and TFLOP/s, to ``$OUT/attn.json``.

    OUT=/tmp python3 bench/attention_bench.py
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = [("default", None), ("flash", [SDPBackend.FLASH_ATTENTION]), ("cudnn", [SDPBackend.CUDNN_ATTENTION]),
            ("efficient", [SDPBackend.EFFICIENT_ATTENTION])]


def main() -> None:
    print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), flush=True)
    res: dict[str, object] = {}
    for b in (1, 4):
        q, k, v = (torch.randn(b, 24, 4608, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flop = 4 * b * 24 * 4608 * 4608 * 128
        for name, backends in BACKENDS:
            try:
                with sdpa_kernel(backends) if backends else torch.autocast("cuda", enabled=False):
                    for _ in range(3):
                        F.scaled_dot_product_attention(q, k, v)
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(20):
                        F.scaled_dot_product_attention(q, k, v)
                    end.record()
                    torch.cuda.synchronize()
                ms = start.elapsed_time(end) / 20
                res[f"b{b}-{name}"] = {"ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1)}
            except RuntimeError as exc:  # a backend that cannot run this shape or card
                res[f"b{b}-{name}"] = repr(exc)[:200]
            print(b, name, res[f"b{b}-{name}"], flush=True)
    with open(os.path.join(os.environ["OUT"], "attn.json"), "w") as file:
        json.dump(res, file, indent=1)


if __name__ == "__main__":
    main()

"""What each part of a full-size pipeline weighs on the GPU, and what ``cpu_offload`` moves.

Built on the meta device (shapes, no weights), so it runs anywhere in seconds::

    PYTHONPATH=src python3 bench/component_sizes.py flux-random sd3-random --dtype bfloat16

For each model: GiB per component; the GiB that ``cpu_offload=True`` keeps off the GPU
between requests and copies to it for every batch (the text encoders and the VAE); and the
weights resident at the offloaded peak (the transformer beside the largest offloaded part,
while that part runs) against all of them without offload. Activations come on top of both.
"""

from __future__ import annotations

import argparse
import json

import torch

from gridgen.diffusion import family_of
from gridgen.diffusion.builders import build_random


def sizes(model: str, dtype: str) -> dict[str, object]:
    pipe = build_random(model, device="meta", dtype=dtype)
    parts = {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    denoiser = family_of(model).denoiser
    gib = {name: sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30 for name, m in parts.items()}
    offloaded = {name: size for name, size in gib.items() if name != denoiser}
    return {
        "model": model, "dtype": dtype,
        "components_gib": {name: round(size, 2) for name, size in sorted(gib.items())},
        "offloaded_gib": round(sum(offloaded.values()), 2),
        "weights_resident_gib": round(sum(gib.values()), 2),
        "weights_resident_offloaded_peak_gib": round(gib[denoiser] + max(offloaded.values()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", choices=("flux-random", "flux-schnell-random", "sd3-random"))
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    for model in args.models:
        print(json.dumps(sizes(model, args.dtype)))


if __name__ == "__main__":
    main()

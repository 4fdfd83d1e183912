"""The workers' PNG encoder with ISA-L's deflate against the standard library's zlib.

Photograph-like content (smooth gradients plus sensor-like noise, which compresses to about
two thirds, as photographs do) and pure noise (the worst case, what random-weight models
draw), at one 1024x1024 image and the 8-image grid of 3072x2048, through the workers' own
:class:`gridgen.diffusion.encoding.OutputEncoder` with its default threads::

    PYTHONPATH=src python3 bench/png_bench.py [--threads N] [--repeats 7]

Prints one JSON object per case: median milliseconds and megabytes for each deflate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import zlib
from typing import Any

import numpy as np

from gridgen.diffusion import encoding
from gridgen.diffusion.encoding import OutputEncoder


def _photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x // 4 % 256, y // 4 % 256, (x + y) // 8 % 256], axis=-1)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="the encoder's threads (default: its own)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from isal import isal_zlib

    rng = np.random.default_rng(0)
    cases = {
        "photo 1024x1024": _photo(1024, 1024, rng),
        "photo grid 3072x2048": _photo(2048, 3072, rng),
        "noise 1024x1024": rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8),
    }
    encoder = OutputEncoder(args.threads)
    threads = encoder.pool._max_workers if encoder.pool is not None else 1
    try:
        for name, image in cases.items():
            row: dict[str, Any] = {"case": name, "threads": threads, "cpus": os.cpu_count(),
                                   "machine": platform.machine()}
            for label, module in (("zlib", zlib), ("isal", isal_zlib)):
                encoding._deflate = module  # type: ignore[assignment]
                times = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    out = encoder.encode(image, "png", 90)
                    times.append(time.perf_counter() - started)
                row[f"{label}_ms"] = round(statistics.median(times) * 1000, 1)
                row[f"{label}_mb"] = round(len(out.data) / 1e6, 2)
            row["speedup"] = round(row["zlib_ms"] / row["isal_ms"], 1)
            print(json.dumps(row), flush=True)
    finally:
        encoder.close()


if __name__ == "__main__":
    main()

"""Micro-benchmark of the runtime itself: invoke round trip and stream item delay.

Two CPU ranks (gloo), no model: what the control channel and the codec cost.

    python bench/rpc_bench.py [--world-size 2] [--repeats 200] [--json out.json]

* round trip: ``await runner.invoke(payload)`` where every rank receives the
  payload and rank 0 returns it unchanged (so the payload crosses twice);
* stream delay: the time from ``add_streaming_result`` in rank 0 to the item
  reaching the host's ``async for`` (both read CLOCK_MONOTONIC, which is one
  clock for every process of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
from PIL import Image

from gridgen import DistributedRunner, DistributedWorker


def _now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class BenchWorker(DistributedWorker):
    def __call__(self, streaming: bool = False, data: Any = None, items: int = 0, gap: float = 0.002, **_: Any) -> Any:
        if streaming and self.rank == 0:
            for i in range(items):
                time.sleep(gap)  # spaced out, so each delay is one item's, not a queue's
                self.add_streaming_result({"i": i, "t": _now()})
        return data


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p90_ms": ordered[int(len(ordered) * 0.9)] * 1e3,
        "min_ms": ordered[0] * 1e3,
        "n": len(ordered),
    }


async def _round_trips(runner: DistributedRunner[BenchWorker], data: Any, repeats: int) -> list[float]:
    for _ in range(5):
        await runner.invoke({"data": data})
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        await runner.invoke({"data": data})
        samples.append(time.perf_counter() - start)
    return samples


async def _stream_delays(runner: DistributedRunner[BenchWorker], items: int) -> list[float]:
    delays = []
    async for item in runner.stream({"items": items}):
        if isinstance(item, dict):
            delays.append(_now() - item["t"])
    return delays[5:]  # the first few include warm-up


async def main(world_size: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    payloads = {
        "1KB bytes": os.urandom(1024),
        "1MB bytes": os.urandom(1024 * 1024),
        "1024x1024 RGB image (PNG)": image,
    }
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "world_size": world_size,
        "round_trip": {},
    }
    async with DistributedRunner(BenchWorker, world_size=world_size, device="cpu") as runner:
        for name, data in payloads.items():
            n = repeats if "image" not in name else max(20, repeats // 10)
            results["round_trip"][name] = _stats(await _round_trips(runner, data, n))
        results["stream_item_delay"] = _stats(await _stream_delays(runner, repeats + 5))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(main(args.world_size, args.repeats))
    print(f"{figures['machine']}; {figures['world_size']} CPU ranks")
    print(f"{'what':40} {'median ms':>10} {'p90 ms':>10} {'min ms':>10} {'n':>5}")
    for name, s in [*figures["round_trip"].items(), ("stream item delay", figures["stream_item_delay"])]:
        print(f"{name:40} {s['median_ms']:10.3f} {s['p90_ms']:10.3f} {s['min_ms']:10.3f} {s['n']:5d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)

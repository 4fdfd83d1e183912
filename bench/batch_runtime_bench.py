"""Runtime batching on two CPU ranks, no model: N one-unit requests against one N-unit request.

The worker models a GPU call: a fixed cost per call (``--call-ms``, kernel launches, a
collective, encoding set-up) plus a cost per unit (``--unit-ms``, one image), both slept,
so the figure measures the runtime (queue, merge, dispatch, routing) and not the CPU.
Each repeat times, in alternating order:

* ``merged``: N concurrent one-unit requests on a runner with ``max_batch=N``;
* ``unmerged``: the same on a runner with ``max_batch=1`` (each request its own call);
* ``single``: one request of N units.

    python bench/batch_runtime_bench.py [--requests 8] [--repeats 15] [--call-ms 40] [--unit-ms 10]

The goal of issue 12 for the SDXL case is merged <= 1.25 x single.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from typing import Any

from gridgen import Batch, DistributedRunner, DistributedWorker


class CostWorker(DistributedWorker):
    """Sleeps ``call_ms`` once per call plus ``unit_ms`` per unit; merges every request."""

    @classmethod
    def batch_key(cls, payload: dict[str, Any]) -> Any:
        return "all"

    @classmethod
    def batch_units(cls, payload: dict[str, Any], world_size: int) -> int:
        return int(payload.get("units", 1))

    def run_batch(self, batch: Batch) -> list[Any]:
        units = sum(int(item.payload.get("units", 1)) for item in batch)
        call_ms = float(batch[0].payload["call_ms"])
        unit_ms = float(batch[0].payload["unit_ms"])
        time.sleep((call_ms + units * unit_ms) / 1000)
        if batch.should_stop():  # the collective check a real worker makes once per step
            return [None] * len(batch)
        return [{"units": int(item.payload.get("units", 1))} for item in batch]


async def _time(runner: DistributedRunner[CostWorker], payloads: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(runner.invoke(p) for p in payloads))
    return time.perf_counter() - start


async def main(requests: int, repeats: int, call_ms: float, unit_ms: float) -> dict[str, list[float]]:
    cost = {"call_ms": call_ms, "unit_ms": unit_ms}
    small = [dict(cost, units=1) for _ in range(requests)]
    big = [dict(cost, units=requests)]
    merging = DistributedRunner(CostWorker, world_size=2, device="cpu", max_batch=requests)
    plain = DistributedRunner(CostWorker, world_size=2, device="cpu", max_batch=1)
    times: dict[str, list[float]] = {"merged": [], "unmerged": [], "single": []}
    async with merging, plain:
        for runner in (merging, plain):  # warm-up
            await _time(runner, big)
        for i in range(repeats):
            order = [("merged", merging, small), ("unmerged", plain, small), ("single", merging, big)]
            for name, runner, payloads in order[i % 3 :] + order[: i % 3]:
                times[name].append(await _time(runner, payloads))
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--call-ms", type=float, default=40.0)
    parser.add_argument("--unit-ms", type=float, default=10.0)
    args = parser.parse_args()
    times = asyncio.run(main(args.requests, args.repeats, args.call_ms, args.unit_ms))
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; 2 CPU ranks; "
          f"{args.requests} requests, call {args.call_ms} ms + {args.unit_ms} ms/unit, {args.repeats} repeats")
    single = statistics.median(times["single"])
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:10} median {median * 1000:8.1f} ms   {median / single:5.2f} x single")

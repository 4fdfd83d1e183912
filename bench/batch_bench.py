"""Merged requests against one large request (issue 12), tiny SDXL on CPU ranks.

Two modes, each alternating its cases round by round and reporting medians:

* ``runner`` (the issue's figure): a ``DistributedRunner`` with merging on
  (``--max-batch``, default 8): 8 concurrent one-image requests with different prompts
  and seeds, against one 8-image request.
* ``worker`` (the SDXL side alone, no runner): the same ranks joined by gloo, calling
  ``SDXLWorker.run_batch`` on the 8 requests, ``__call__`` on the 8-image request, and
  ``__call__`` 8 times in a row on one-image requests (what a queue did before merging).

    python bench/batch_bench.py --mode worker --rounds 7
    python bench/batch_bench.py --mode runner --rounds 7 [--max-batch 1]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from typing import Any

SIZE: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 4, "preview_every": 0}


def singles() -> list[dict[str, Any]]:
    return [{**SIZE, "prompt": f"prompt number {i}", "num_images": 1, "seed": 100 + i} for i in range(8)]


def eight() -> dict[str, Any]:
    return {**SIZE, "prompt": "one prompt", "num_images": 8, "seed": 100}


def _rank(rank: int, world: int, store: str, rounds: int, out: Any) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    import torch
    import torch.distributed as dist

    from gridgen import Batch
    from gridgen.sdxl import SDXLWorker

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    worker = SDXLWorker(rank=rank, world_size=world)
    worker.setup(model="tiny")
    cases = {
        "merged 8 x 1 (run_batch)": lambda: worker.run_batch(Batch.of(singles())),
        "one 8-image request": lambda: worker(**eight()),
        "8 x 1 one after another": lambda: [worker(**p) for p in singles()],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for case in cases.values():
        case()  # warm-up
    for _ in range(rounds):
        for name, case in cases.items():
            dist.barrier()
            started = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - started)
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def worker_mode(args: argparse.Namespace) -> dict[str, list[float]]:
    import tempfile

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_rank, args=(r, args.world_size, store, args.rounds, out))
                 for r in range(args.world_size)]
        for proc in procs:
            proc.start()
        times: dict[str, list[float]] = out.get(timeout=1800)
        for proc in procs:
            proc.join()
    return times


async def runner_mode(args: argparse.Namespace) -> dict[str, list[float]]:
    from gridgen import DistributedRunner
    from gridgen.sdxl import SDXLWorker

    runner = DistributedRunner(SDXLWorker, world_size=args.world_size, device="cpu",
                               setup_kwargs={"model": "tiny"}, max_batch=args.max_batch)
    times: dict[str, list[float]] = {"8 concurrent x 1": [], "one 8-image request": []}
    async with runner:

        async def concurrent() -> None:
            await asyncio.gather(*(runner.invoke(p) for p in singles()))

        async def single() -> None:
            await runner.invoke(eight())

        cases = {"8 concurrent x 1": concurrent, "one 8-image request": single}
        for case in cases.values():
            await case()  # warm-up
        for _ in range(args.rounds):
            for name, case in cases.items():
                started = time.perf_counter()
                await case()
                times[name].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["worker", "runner"], default="worker")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    times = worker_mode(args) if args.mode == "worker" else asyncio.run(runner_mode(args))
    reference = statistics.median(times["one 8-image request"])
    print(f"{args.mode} mode, {args.world_size} CPU ranks, tiny SDXL 64x64, 4 steps, {args.rounds} rounds")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:28s} median {median:.3f} s  ({median / reference:.2f} x the 8-image request)")


if __name__ == "__main__":
    main()

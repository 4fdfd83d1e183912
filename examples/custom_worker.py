"""A custom worker: a distributed Monte Carlo estimate of pi that streams its progress.

    python examples/custom_worker.py

Every rank throws random darts at the unit square in chunks; after each chunk the
ranks add up their hits with ``dist.all_reduce`` (a collective: every rank takes
part), and rank 0 streams the running estimate. Runs on two CPU ranks (gloo), no
GPU needed; with ``device="cuda"`` the same code runs one rank per GPU over NCCL.

Shows: ``setup`` with keyword arguments, ``__call__`` with payload fields,
``add_streaming_result``, a collective, collective cancellation with
``should_stop()``, and a typed error carrying the failing rank.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from gridgen import DistributedRunner, DistributedWorker, WorkerError


class PiWorker(DistributedWorker):
    """Estimates pi; each rank draws its own samples from a seed that depends on its rank."""

    def setup(self, seed: int = 0, **kwargs: Any) -> None:
        # Runs once per rank, inside the worker process: load models / data here.
        self.seed = seed

    def __call__(
        self, streaming: bool = False, samples: int = 200_000, chunks: int = 8, **kwargs: Any
    ) -> Any:
        import torch
        import torch.distributed as dist

        if samples < chunks * self.world_size:
            # Every rank sees the same payload, so every rank raises: nobody waits in a collective.
            raise ValueError(f"samples must be at least chunks * world_size, got {samples}")
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.rank)
        per_chunk = samples // (chunks * self.world_size)
        inside = total = 0
        for chunk in range(1, chunks + 1):
            darts = torch.rand(per_chunk, 2, generator=generator, device="cpu").to(self.device)
            hits = int((darts.pow(2).sum(dim=1) <= 1.0).sum())
            counts = torch.tensor([hits, per_chunk], dtype=torch.float64, device=self.device)
            dist.all_reduce(counts)  # sum over ranks; every rank must call it
            inside += int(counts[0])
            total += int(counts[1])
            if streaming and self.rank == 0:
                self.add_streaming_result(
                    {"chunk": chunk, "chunks": chunks, "estimate": 4 * inside / total}
                )
            if self.should_stop():  # collective: True on every rank once any rank saw a cancel
                break
        return {"pi": 4 * inside / total, "samples": total, "ranks": self.world_size}


async def main() -> None:
    async with DistributedRunner(
        PiWorker, world_size=2, device="cpu", setup_kwargs={"seed": 7}
    ) as runner:
        # 1. invoke: rank 0's return value
        result = await runner.invoke({"samples": 100_000})
        print(
            f"invoke: pi ~ {result['pi']:.4f} from {result['samples']} samples on {result['ranks']} ranks"
        )

        # 2. stream: every add_streaming_result item as it is made, then the return value
        async for item in runner.stream({"samples": 400_000, "chunks": 4}):
            if "chunk" in item:
                print(
                    f"stream: chunk {item['chunk']}/{item['chunks']}: pi ~ {item['estimate']:.4f}"
                )
            else:
                print(
                    f"stream: done, pi ~ {item['pi']:.4f} (error {abs(item['pi'] - math.pi):.4f})"
                )

        # 3. cancellation: leaving the loop early cancels the request on every rank;
        #    should_stop() makes all ranks leave their loop at the same chunk.
        async for item in runner.stream({"samples": 50_000_000, "chunks": 500}):
            if item.get("chunk") == 3:
                print(f"cancel: stopped after chunk {item['chunk']} of {item['chunks']}")
                break

        # 4. errors: a typed exception naming the rank, with the remote traceback
        try:
            await runner.invoke({"samples": 1})
        except WorkerError as error:
            print(f"error: rank {error.rank} raised {error.remote_type}: {error.remote_message}")

        # 5. the runner is still healthy after a cancel and an error
        result = await runner.invoke({"samples": 10_000, "chunks": 2})
        print(f"still healthy: pi ~ {result['pi']:.4f}")


if __name__ == "__main__":  # good style; not required: the workers do not run this script again
    asyncio.run(main())

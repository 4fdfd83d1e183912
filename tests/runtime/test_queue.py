"""The request queue: FIFO, bounded, QueueFull at once."""

from __future__ import annotations

import asyncio
from typing import Any

from gridgen import DistributedRunner, QueueFull

from helpers.runtime import live


def test_fifo_order_and_queue_full() -> None:
    with live(max_queue=4) as rt:

        async def scenario(runner: DistributedRunner[Any]) -> tuple[list[Any], list[float]]:
            loop = asyncio.get_running_loop()
            finished: list[int] = []
            rejected_at: list[float] = []
            start = loop.time()

            async def call(i: int) -> Any:
                try:
                    await runner.invoke({"op": "steps", "steps": 2, "delay": 0.05})
                    finished.append(i)
                    return i
                except QueueFull:
                    rejected_at.append(loop.time() - start)
                    return "full"

            results = await asyncio.gather(*(call(i) for i in range(20)))
            return [results, finished], rejected_at

        (results, finished), rejected_at = rt.run(scenario)
        assert results.count("full") == 16
        assert finished == [0, 1, 2, 3]
        assert max(rejected_at) < 0.1  # rejected at once, not after waiting


def test_queue_position() -> None:
    with live(max_queue=8) as rt:

        async def scenario(runner: DistributedRunner[Any]) -> list[Any]:
            first = runner.submit({"op": "steps", "steps": 4, "delay": 0.05})
            second = runner.submit({"op": "echo"})
            third = runner.submit({"op": "echo"})
            await asyncio.sleep(0.05)
            positions = [first.position, second.position, third.position, first.status]
            await third.result()
            positions.append(third.status)
            return positions

        assert rt.run(scenario) == [None, 0, 1, "running", "done"]

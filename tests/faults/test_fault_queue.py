"""Twenty concurrent calls with ``max_queue=4`` while a request is already running.

The excess fail at once with :class:`QueueFull` (nothing queued, each within
milliseconds of its call); the accepted ones finish in FIFO order, streams and invokes
alike; once the queue drains, calls are accepted again. ``test_queue.py`` covers twenty
calls on an idle runner.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gridgen import DistributedRunner, QueueFull

from helpers.runtime import live


def test_twenty_calls_behind_a_running_one() -> None:
    with live(max_queue=4) as rt:

        async def scenario(runner: DistributedRunner[Any]) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            blocker = asyncio.create_task(runner.invoke({"op": "steps", "steps": 10, "delay": 0.05}))
            while runner._current is None:
                await asyncio.sleep(0.01)
            finished: list[int] = []
            rejected: dict[int, tuple[float, str]] = {}

            async def call(i: int) -> None:
                started = loop.time()
                try:
                    if i % 3 == 0:
                        items = [x async for x in runner.stream({"op": "echo", "message": i, "items": 1, "on_rank": 0})]
                        assert items[-1]["echo"] == i
                    else:
                        assert (await runner.invoke({"op": "echo", "message": i}))["echo"] == i
                    finished.append(i)
                except QueueFull as exc:
                    rejected[i] = (loop.time() - started, str(exc))

            calls = [asyncio.create_task(call(i)) for i in range(20)]
            await asyncio.sleep(0)  # every call has tried to enter the queue
            queue_size = runner.queue_size
            await asyncio.gather(*calls)
            await blocker
            # the queue drained: room again
            again = await runner.invoke({"op": "echo", "message": "again"})
            return {"finished": finished, "rejected": rejected, "queue_size": queue_size, "again": again}

        out = rt.run(scenario)
    assert out["queue_size"] == 4
    assert out["finished"] == [0, 1, 2, 3]  # FIFO: the first four callers, in call order
    assert sorted(out["rejected"]) == list(range(4, 20))
    for waited, message in out["rejected"].values():
        assert waited < 0.05  # rejected at once, not after waiting for room
        assert "max_queue=4" in message
    assert out["again"]["echo"] == "again"

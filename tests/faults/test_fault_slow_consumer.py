"""A consumer that stops reading a long stream: host and worker memory stay bounded.

Policy (``DistributedRunner(stream_buffer=N)``): the host reads every stream item off
the control socket as soon as it arrives and keeps at most ``N`` unread items per
request, dropping the *oldest*; ``RequestHandle.dropped_items`` counts the drops. The
final result is never dropped. So the worker never waits on a slow consumer and neither
side accumulates the stream.
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

import psutil

from gridgen import DistributedRunner, DistributedWorker

from helpers.runtime import live

MB = 1024 * 1024


class BigItemWorker(DistributedWorker):
    """Streams ``count`` items of ``size`` bytes from rank 0, then returns a small summary."""

    def __call__(self, streaming: bool = False, count: int = 0, size: int = 0, **_: Any) -> Any:
        if self.rank == 0:
            for i in range(count):
                block = bytearray(size)
                block[:8] = i.to_bytes(8, "little")
                self.add_streaming_result({"i": i, "data": bytes(block)})
        return {"sent": count if self.rank == 0 else 0}


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_unread_stream_keeps_memory_bounded_and_the_result_arrives() -> None:
    count, size, buffer = 400, MB, 4  # 400 MB streamed to a consumer that reads nothing
    with live(BigItemWorker, stream_buffer=buffer) as rt:
        worker_pids = [p for p in rt.runner.pids if p]

        async def scenario(runner: DistributedRunner[Any]) -> dict[str, Any]:
            # warm up both sides (first-use allocations) before taking the baseline
            warm = runner.submit({"count": 8, "size": MB}, streaming=True)
            await warm.result()
            gc.collect()
            host_before = _rss(os.getpid())
            workers_before = [_rss(p) for p in worker_pids]
            host_peak, worker_peaks = host_before, list(workers_before)

            handle = runner.submit({"count": count, "size": size}, streaming=True)
            while not handle.done():  # the consumer reads nothing; we only sample memory
                host_peak = max(host_peak, _rss(os.getpid()))
                worker_peaks = [max(a, _rss(p)) for a, p in zip(worker_peaks, worker_pids, strict=True)]
                await asyncio.sleep(0.05)
            dropped = handle.dropped_items
            items = [item async for item in handle.events()]
            return {
                "host_growth": host_peak - host_before,
                "worker_growth": [a - b for a, b in zip(worker_peaks, workers_before, strict=True)],
                "dropped": dropped,
                "items": items,
            }

        out = rt.run(scenario, timeout=100)

    items = out["items"]
    # the final result arrives, after the newest `buffer` items (the oldest were dropped)
    assert items[-1] == {"sent": count}
    assert [item["i"] for item in items[:-1]] == list(range(count - buffer, count))
    assert all(int.from_bytes(item["data"][:8], "little") == item["i"] for item in items[:-1])
    assert out["dropped"] == count - buffer
    # 400 MB went through; neither side kept more than a small, fixed amount of it
    assert out["host_growth"] < 96 * MB, out
    assert all(growth < 96 * MB for growth in out["worker_growth"]), out


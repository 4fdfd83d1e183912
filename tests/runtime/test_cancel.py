"""Cancellation and time limits: queued requests vanish, running ones stop on every rank."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gridgen import DistributedRunner, RequestTimeout

from helpers.runtime import LiveRunner


def test_cancelling_the_task_stops_the_request_on_every_rank(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> tuple[float, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(runner.invoke({"op": "steps", "steps": 500, "delay": 0.02}))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = loop.time()
        # the next request runs as soon as the ranks stopped (well before the 10 s of steps)
        after = await runner.invoke({"op": "steps", "steps": 1, "delay": 0})
        return loop.time() - started, after

    waited, after = probe.run(scenario)
    assert waited < 3
    assert after == {"completed": 1, "cancelled": False}


def test_cancelling_a_queued_request_removes_it(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> tuple[int, int, Any]:
        running = asyncio.create_task(runner.invoke({"op": "steps", "steps": 10, "delay": 0.05}))
        await asyncio.sleep(0.05)
        handle = runner.submit({"op": "echo", "message": "never"})
        queued_before = runner.queue_size
        handle.cancel()
        queued_after = runner.queue_size
        result = await running
        return queued_before, queued_after, result

    before, after, result = probe.run(scenario)
    assert (before, after) == (1, 0)
    assert result["completed"] == 10


def test_timeout_counts_from_submission(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> float:
        loop = asyncio.get_running_loop()
        blocker = asyncio.create_task(runner.invoke({"op": "steps", "steps": 20, "delay": 0.05}))
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(RequestTimeout):
            # queued behind a 1 s request: its 0.5 s runs out while still waiting
            await runner.invoke({"op": "echo"}, timeout=0.5)
        elapsed = loop.time() - started
        await blocker
        return elapsed

    elapsed = probe.run(scenario)
    assert 0.4 < elapsed < 0.9


def test_timeout_of_a_running_request_cancels_it(probe: LiveRunner) -> None:
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        probe.sync.invoke({"op": "steps", "steps": 500, "delay": 0.02}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert probe.sync.invoke({"op": "steps", "steps": 1, "delay": 0})["completed"] == 1


def test_stream_idle_timeout(probe: LiveRunner) -> None:
    with pytest.raises(RequestTimeout, match="no stream item"):
        list(probe.sync.stream({"op": "steps", "steps": 3, "delay": 1.0}, idle_timeout=0.3))
    assert probe.sync.invoke({"op": "echo", "message": "ok"})["echo"] == "ok"


def test_hanging_rank_is_rebuilt_after_the_timeout(probe: LiveRunner) -> None:
    pids = probe.runner.pids
    with pytest.raises(RequestTimeout):
        probe.sync.invoke({"op": "hang", "on_rank": 1}, timeout=0.5)
    # cancel_grace is 5 s in this fixture: then the group is rebuilt and the next request works
    assert probe.sync.invoke({"op": "allreduce"}, timeout=60) == {"sum": 3}
    assert probe.runner.pids != pids


def test_worker_sees_the_cancel_flag(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> tuple[list[Any], Any]:
        items = []
        async for item in runner.stream({"op": "steps", "steps": 200, "delay": 0.02}):
            items.append(item)
            if len(items) == 3:
                break  # cancels the request on every rank
        # The next request runs only once every rank has left the cancelled one.
        return items, await runner.invoke({"op": "last_steps"})

    items, seen = probe.run(scenario)
    assert items == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert seen["cancelled"] is True  # rank 0's flag was set by the host's cancel
    assert 3 <= seen["completed"] < 200  # and the loop stopped on it

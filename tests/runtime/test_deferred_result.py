"""A worker may return a Future: the rank is freed at once and the value follows.

This is how the SDXL worker keeps image encoding off the GPU's critical path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gridgen import DistributedRunner, WorkerError

from helpers.runtime import LiveRunner


def test_next_request_runs_while_the_previous_value_is_still_coming(probe: LiveRunner) -> None:
    async def scenario(runner: DistributedRunner[Any]) -> tuple[Any, float, float]:
        slow = asyncio.create_task(runner.invoke({"op": "deferred", "delay": 1.5, "message": "late"}))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        quick = await runner.invoke({"op": "echo", "message": "quick"})
        quick_done = time.monotonic()
        result = await slow
        return quick["echo"], quick_done - started, result["done_at"] - quick_done

    echo, quick_took, slow_after_quick = probe.run(scenario)
    assert echo == "quick"
    assert quick_took < 1.0  # did not wait for the 1.5 s deferred value
    assert slow_after_quick > 0.3  # the deferred value really came later


def test_deferred_value_arrives(probe: LiveRunner) -> None:
    assert probe.sync.invoke({"op": "deferred", "delay": 0.1, "message": "m"})["deferred"] == "m"


def test_deferred_failure_is_a_worker_error(probe: LiveRunner) -> None:
    with pytest.raises(WorkerError) as info:
        probe.sync.invoke({"op": "deferred", "delay": 0.1, "fail": True, "on_rank": 0})
    assert info.value.remote_type == "ValueError" and "deferred failure" in info.value.remote_message
    assert probe.sync.invoke({"op": "echo", "message": "after"})["echo"] == "after"


def test_deferred_value_streams_end_with_the_result(probe: LiveRunner) -> None:
    items = list(probe.sync.stream({"op": "deferred", "delay": 0.2, "message": "s"}))
    assert items[-1]["deferred"] == "s"

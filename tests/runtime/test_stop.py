"""stop(): grace for the running request, queued ones fail, idempotent, nothing left behind."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from gridgen import DistributedRunner, RequestCancelled, RunnerClosed
from gridgen.testing import ProbeWorker


def test_stop_finishes_running_fails_queued_then_closes(tmp_path: Path) -> None:
    marker = tmp_path / "teardown"

    async def main() -> tuple[Any, ...]:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start(teardown_marker=str(marker))
        control_dir = runner.control_dir
        pids = runner.pids
        running = asyncio.create_task(runner.invoke({"op": "steps", "steps": 10, "delay": 0.05}))
        await asyncio.sleep(0.1)
        queued = [asyncio.create_task(runner.invoke({"op": "echo"})) for _ in range(2)]
        await asyncio.sleep(0)
        await runner.stop(timeout=10)
        results = await asyncio.gather(running, *queued, return_exceptions=True)
        with pytest.raises(RunnerClosed):
            await runner.invoke({"op": "echo"})
        await runner.stop()  # idempotent
        return results, control_dir, pids, runner.state

    results, control_dir, pids, state = asyncio.run(main())
    assert results[0]["completed"] == 10
    assert all(isinstance(r, RunnerClosed) for r in results[1:])
    assert state == "stopped"
    assert not os.path.exists(control_dir)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert sorted(marker.read_text().split()) == ["0", "1"]  # teardown ran on every rank


def test_worker_ignoring_sigterm_is_killed() -> None:
    async def main() -> list[int | None]:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start(ignore_sigterm=True)
        pids = runner.pids
        # a request that never ends: stop's grace runs out, SIGTERM is ignored, SIGKILL follows
        task = asyncio.create_task(runner.invoke({"op": "hang", "on_rank": 0}))
        await asyncio.sleep(0.2)
        await runner.stop(timeout=0.5)
        with pytest.raises(RequestCancelled):
            await task
        return pids

    pids = asyncio.run(main())
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids if p)


def test_async_with_stops_on_exit() -> None:
    async def main() -> tuple[str, str]:
        async with DistributedRunner(ProbeWorker, world_size=1, device="cpu") as runner:
            inside = runner.state
        return inside, runner.state

    assert asyncio.run(main()) == ("ready", "stopped")

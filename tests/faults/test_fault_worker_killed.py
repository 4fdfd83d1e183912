"""A rank killed from outside (SIGKILL, as the OOM killer does) during invoke and stream.

The running request fails within 5 s with :class:`WorkerDiedError` naming the rank and
the signal; without ``auto_restart`` the requests queued behind it fail with the same
error and ``restart()`` heals; with ``auto_restart`` the queued requests complete by
themselves, in order. ``test_worker_crash.py`` covers a rank killing itself and exit codes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from gridgen import DistributedRunner, WorkerDiedError

from helpers.runtime import live

LONG = {"op": "steps", "steps": 1000, "delay": 0.02}  # 20 s unless interrupted


async def _kill_when_running(runner: DistributedRunner[Any], rank: int) -> float:
    """SIGKILL ``rank``'s process once the first request is running; return when it was sent."""
    loop = asyncio.get_running_loop()
    while runner._current is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # well inside __call__
    pid = runner.pids[rank]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return loop.time()


def _check_died(error: BaseException, rank: int) -> None:
    assert isinstance(error, WorkerDiedError), repr(error)
    assert error.rank == rank
    assert error.signal == "SIGKILL" and error.exitcode == -signal.SIGKILL
    assert f"rank {rank}" in str(error) and "SIGKILL" in str(error)


def test_kill_during_invoke_fails_fast_then_restart_heals() -> None:
    with live() as rt:

        async def scenario(runner: DistributedRunner[Any]) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            running = asyncio.create_task(runner.invoke(LONG))
            queued = [asyncio.create_task(runner.invoke({"op": "echo", "message": i})) for i in range(2)]
            killed_at = await _kill_when_running(runner, 1)
            outcomes = await asyncio.gather(running, *queued, return_exceptions=True)
            failed_after = loop.time() - killed_at
            state = (runner.ready, runner.state)
            later = loop.time()
            with_dead_group = await asyncio.gather(runner.invoke({"op": "echo"}), return_exceptions=True)
            later = loop.time() - later
            pids = runner.pids
            await runner.restart()
            healed = await runner.invoke({"op": "allreduce"})
            return {
                "outcomes": outcomes, "failed_after": failed_after, "state": state,
                "with_dead_group": with_dead_group[0], "later": later,
                "pids": (pids, runner.pids), "healed": healed, "ready": runner.ready,
            }

        out = rt.run(scenario)
    assert out["failed_after"] < 5
    for outcome in out["outcomes"]:  # the running request and the two queued behind it
        _check_died(outcome, 1)
    assert out["state"] == (False, "dead")
    _check_died(out["with_dead_group"], 1)  # until restart(), new requests fail at once
    assert out["later"] < 1
    assert out["healed"] == {"sum": 3} and out["ready"]
    before, after = out["pids"]
    assert not set(before) & set(after)


def test_kill_during_stream_fails_fast_then_restart_heals() -> None:
    with live() as rt:

        async def scenario(runner: DistributedRunner[Any]) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            items: list[Any] = []
            error: BaseException | None = None
            killed_at = 0.0
            try:
                async for item in runner.stream(LONG):
                    items.append(item)
                    if len(items) == 3:
                        pid = runner.pids[0]
                        assert pid is not None
                        os.kill(pid, signal.SIGKILL)
                        killed_at = loop.time()
            except WorkerDiedError as exc:
                error = exc
            failed_after = loop.time() - killed_at
            await runner.restart()
            again = [item async for item in runner.stream({"op": "steps", "steps": 3, "delay": 0})]
            return {"items": items, "error": error, "failed_after": failed_after, "again": again}

        out = rt.run(scenario)
    assert out["items"][:3] == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert out["error"] is not None
    _check_died(out["error"], 0)
    assert out["failed_after"] < 5
    assert out["again"] == [{"step": 1}, {"step": 2}, {"step": 3}, {"completed": 3, "cancelled": False}]


def test_auto_restart_runs_the_queued_requests_by_itself() -> None:
    with live(auto_restart=True) as rt:

        async def scenario(runner: DistributedRunner[Any]) -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            pids = runner.pids
            order: list[int] = []

            async def queued_call(i: int) -> Any:
                if i % 2:
                    items = [item async for item in runner.stream({"op": "echo", "items": 2, "on_rank": 0, "message": i})]
                    result = items[-1]
                else:
                    result = await runner.invoke({"op": "allreduce"})
                order.append(i)
                return result

            running = asyncio.create_task(runner.invoke(LONG))
            await asyncio.sleep(0)  # the long request is first in line
            queued = [asyncio.create_task(queued_call(i)) for i in range(4)]
            killed_at = await _kill_when_running(runner, 1)
            first = await asyncio.gather(running, return_exceptions=True)
            failed_after = loop.time() - killed_at
            results = await asyncio.gather(*queued)
            return {
                "first": first[0], "failed_after": failed_after, "results": results, "order": order,
                "ready": runner.ready, "pids": (pids, runner.pids),
            }

        out = rt.run(scenario, timeout=90)
    _check_died(out["first"], 1)
    assert out["failed_after"] < 5
    # no restart() call: the four requests queued behind the killed one all completed, in order
    assert out["order"] == [0, 1, 2, 3]
    assert out["results"][0] == {"sum": 3} and out["results"][2] == {"sum": 3}
    assert out["results"][1]["echo"] == 1 and out["results"][3]["echo"] == 3
    assert out["ready"]
    before, after = out["pids"]
    assert not set(before) & set(after)

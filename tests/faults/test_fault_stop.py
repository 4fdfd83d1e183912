"""stop() with one request running and two queued.

The running request finishes within the grace period (or fails with
:class:`RequestCancelled` once it is over), queued requests fail at once with
:class:`RunnerClosed` saying they never ran, new calls of every kind fail with
:class:`RunnerClosed` from the moment stop() begins, and a rank ignoring SIGTERM is
killed. ``test_stop.py`` covers the basic sequence and teardown; this file adds timings,
streams among the queued, calls made while stopping, and the over-grace case.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import psutil
import pytest

from gridgen import DistributedRunner, RequestCancelled, RunnerClosed
from gridgen.testing import ProbeWorker


def _gone(pids: list[int | None]) -> bool:
    for pid in pids:
        if pid is None:
            continue
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


async def _consume(runner: DistributedRunner[Any], payload: dict[str, Any]) -> list[Any]:
    return [item async for item in runner.stream(payload)]


async def _new_calls_fail(runner: DistributedRunner[Any]) -> list[str]:
    messages = []
    for call in (
        lambda: runner.invoke({"op": "echo"}),
        lambda: _consume(runner, {"op": "echo"}),
        lambda: asyncio.sleep(0, runner.submit({"op": "echo"})),
    ):
        with pytest.raises(RunnerClosed) as info:
            await call()
        messages.append(str(info.value))
    return messages


def test_running_finishes_in_grace_queued_fail_new_calls_closed() -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start()
        control_dir, pids = runner.control_dir, runner.pids
        running = asyncio.create_task(runner.invoke({"op": "steps", "steps": 20, "delay": 0.05}))  # ~1 s
        await asyncio.sleep(0.2)
        queued = [
            asyncio.create_task(runner.invoke({"op": "echo"})),
            asyncio.create_task(_consume(runner, {"op": "echo", "items": 3})),
        ]
        await asyncio.sleep(0.05)
        started = loop.time()
        stopping = asyncio.create_task(runner.stop(timeout=10))
        await asyncio.sleep(0.05)
        during = (runner.state, runner.ready, await _new_calls_fail(runner))
        queued_outcomes = await asyncio.gather(*queued, return_exceptions=True)
        queued_failed_after = loop.time() - started
        result = await running
        await stopping
        stop_took = loop.time() - started
        after = await _new_calls_fail(runner)
        return {
            "during": during, "queued": queued_outcomes, "queued_failed_after": queued_failed_after,
            "result": result, "stop_took": stop_took, "after": after, "state": runner.state,
            "dir": control_dir, "pids": pids,
        }

    out = asyncio.run(main())
    state, ready, messages = out["during"]
    assert state == "stopping" and ready is False
    assert all("stopped" in m for m in messages)
    for outcome in out["queued"]:
        assert isinstance(outcome, RunnerClosed), repr(outcome)
        assert "stopped before this request ran" in str(outcome)
    assert out["queued_failed_after"] < 0.5  # at once, not after the running one
    assert out["result"] == {"completed": 20, "cancelled": False}  # ran to the end
    assert out["stop_took"] < 1.0 + 8  # ~1 s of work left, then teardown and exit
    assert all("stopped" in m for m in out["after"])
    assert out["state"] == "stopped"
    assert not os.path.exists(out["dir"])
    assert _gone(out["pids"])


def test_request_outliving_the_grace_is_cancelled_and_sigterm_ignorers_killed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gridgen")
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        await runner.start(ignore_sigterm=True)
        control_dir, pids = runner.control_dir, runner.pids
        # rank 0 never returns, rank 1 waits for it in an all-reduce; both ignore SIGTERM
        running = asyncio.create_task(_consume(runner, {"op": "hang", "on_rank": 0}))
        await asyncio.sleep(0.3)
        started = loop.time()
        await runner.stop(timeout=1.0)
        stop_took = loop.time() - started
        outcome = (await asyncio.gather(running, return_exceptions=True))[0]
        return {"outcome": outcome, "stop_took": stop_took, "dir": control_dir, "pids": pids}

    out = asyncio.run(main())
    assert isinstance(out["outcome"], RequestCancelled), repr(out["outcome"])
    assert "stopped while this request ran" in str(out["outcome"])
    # 1 s grace, then SIGTERM (ignored) and SIGKILL after terminate's own grace
    assert 1.0 <= out["stop_took"] < 1.0 + 6
    assert _gone(out["pids"])
    assert not os.path.exists(out["dir"])
    assert "ignored SIGTERM" in caplog.text  # they were killed, not merely terminated

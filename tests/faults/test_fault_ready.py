"""``runner.ready``: false while starting, restarting and after a death; true again after restart().

A health endpoint reports ``runner.ready``, so it must never say "ready" while requests
cannot run. The state is sampled at every event-loop turn, so even a short window in
which ``ready`` were wrongly true would be seen.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from gridgen import DistributedRunner
from gridgen.testing import ProbeWorker


class _Sampler:
    """Records ``(state, ready)`` at every event-loop turn while active."""

    def __init__(self, runner: DistributedRunner[Any]) -> None:
        self.runner = runner
        self.seen: list[tuple[str, bool]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            sample = (self.runner.state, self.runner.ready)
            if not self.seen or self.seen[-1] != sample:
                self.seen.append(sample)
            await asyncio.sleep(0)

    async def __aenter__(self) -> _Sampler:
        self.seen = []
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0)  # the first sample: the state before the phase
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _ready_only_when_ready(seen: list[tuple[str, bool]]) -> None:
    for state, ready in seen:
        assert ready == (state == "ready"), seen


# Four group starts while the sampler keeps one core busy: 48 s on a loaded two-core machine.
@pytest.mark.timeout(200)
def test_ready_through_start_restart_death_auto_restart_and_stop() -> None:
    async def main() -> dict[str, list[tuple[str, bool]]]:
        runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
        phases: dict[str, list[tuple[str, bool]]] = {}
        assert (runner.state, runner.ready) == ("new", False)

        async with _Sampler(runner) as s:
            await runner.start()
            await asyncio.sleep(0)
        phases["start"] = s.seen

        async with _Sampler(runner) as s:
            await runner.restart()
            await asyncio.sleep(0)
        phases["restart"] = s.seen

        async with _Sampler(runner) as s:
            pid = runner.pids[1]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while runner.state != "dead":
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # and it stays down: nothing restarts by itself
        phases["death"] = s.seen

        async with _Sampler(runner) as s:
            await runner.restart()
            assert await runner.invoke({"op": "allreduce"}) == {"sum": 3}
        phases["restart after death"] = s.seen

        runner.auto_restart = True
        async with _Sampler(runner) as s:
            pid = runner.pids[0]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            while runner.state == "ready":  # a request sent before the death is noticed fails with it
                await asyncio.sleep(0.01)
            # the next request waits for the automatic restart
            assert await asyncio.wait_for(runner.invoke({"op": "allreduce"}), 60) == {"sum": 3}
        phases["auto restart"] = s.seen

        async with _Sampler(runner) as s:
            await runner.stop()
            await asyncio.sleep(0)
        phases["stop"] = s.seen
        return phases

    phases = asyncio.run(main())
    for seen in phases.values():
        _ready_only_when_ready(seen)
    assert phases["start"] == [("new", False), ("starting", False), ("ready", True)]
    assert phases["restart"] == [("ready", True), ("restarting", False), ("ready", True)]
    assert phases["death"] == [("ready", True), ("dead", False)]
    assert phases["restart after death"] == [("dead", False), ("restarting", False), ("ready", True)]
    assert phases["auto restart"] == [("ready", True), ("restarting", False), ("ready", True)]
    assert phases["stop"] == [("ready", True), ("stopping", False), ("stopped", False)]

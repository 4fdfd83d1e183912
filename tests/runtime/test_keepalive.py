"""Keepalive: an idle runner invokes the keepalive payload on its own."""

from __future__ import annotations

import asyncio
from typing import Any

from gridgen import DistributedRunner

from helpers.runtime import live


def test_keepalive_runs_when_idle_and_only_then() -> None:
    with live(keepalive_payload={"op": "echo", "message": "keepalive"}, keepalive_interval=0.3) as rt:

        async def scenario(runner: DistributedRunner[Any]) -> tuple[int, int]:
            before = await runner.invoke({"op": "calls"})
            await asyncio.sleep(1.5)  # idle: one keepalive each 0.3 s, at most 5
            idle = await runner.invoke({"op": "calls"}) - before - 1
            busy_start = await runner.invoke({"op": "calls"})
            for _ in range(8):  # busy: requests 0.1 s apart leave no 0.3 s idle gap
                await asyncio.sleep(0.1)
                await runner.invoke({"op": "echo"})
            busy = await runner.invoke({"op": "calls"}) - busy_start - 9
            return idle, busy

        idle, busy = rt.run(scenario)
        assert 3 <= idle <= 5  # 1.5 s / 0.3 s, less scheduling slack; never more often
        assert busy == 0


def test_no_keepalive_without_configuration() -> None:
    with live() as rt:

        async def scenario(runner: DistributedRunner[Any]) -> Any:
            await asyncio.sleep(1.0)
            return await runner.invoke({"op": "calls"})

        assert rt.run(scenario) == 1

"""Keepalive: an idle runner invokes the keepalive payload on its own."""

from __future__ import annotations

import asyncio
from typing import Any

from gridgen import DistributedRunner

from runtime_helpers import live


def test_keepalive_runs_when_idle() -> None:
    with live(keepalive_payload={"op": "echo", "message": "keepalive"}, keepalive_interval=0.3) as rt:

        async def scenario(runner: DistributedRunner[Any]) -> Any:
            await asyncio.sleep(1.5)
            return await runner.invoke({"op": "calls"})

        # about four keepalives ran while idle, plus this request
        assert rt.run(scenario) >= 3


def test_no_keepalive_without_configuration() -> None:
    with live() as rt:

        async def scenario(runner: DistributedRunner[Any]) -> Any:
            await asyncio.sleep(1.0)
            return await runner.invoke({"op": "calls"})

        assert rt.run(scenario) == 1

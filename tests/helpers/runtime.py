"""Started runners for tests: a runner on a background event loop, reused within a module.

Imported by name (``from helpers.runtime import live``): a module name of its own, since
several ``conftest.py`` files share the name ``conftest``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gridgen import DistributedRunner
from gridgen.testing import ProbeWorker

T = TypeVar("T")


class LiveRunner:
    """A started runner on a background event loop; ``run`` executes a coroutine on that loop."""

    def __init__(self, runner: DistributedRunner[Any], **setup_kwargs: Any) -> None:
        self.runner = runner
        self.sync = runner.sync(**setup_kwargs)

    def __enter__(self) -> LiveRunner:
        self.sync.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sync.stop(timeout=5)

    def ensure_healthy(self, timeout: float = 5.0) -> LiveRunner:
        """Make the group ready and idle: every rank answers a collective within ``timeout``
        seconds, else the group is restarted."""

        async def check(runner: DistributedRunner[Any]) -> None:
            if runner.state != "ready":
                await runner.restart()
                return
            try:
                await runner.invoke({"op": "allreduce"}, timeout=timeout)
            except Exception:
                await runner.restart()

        self.run(check, timeout=120)
        return self

    def run(self, fn: Callable[[DistributedRunner[Any]], Awaitable[T]], timeout: float = 60) -> T:
        async def body() -> T:
            return await asyncio.wait_for(fn(self.runner), timeout)

        return self.sync._call(body())


def live(worker_cls: type = ProbeWorker, world_size: int = 2, setup: dict[str, Any] | None = None, **options: Any) -> LiveRunner:
    options.setdefault("device", "cpu")
    return LiveRunner(DistributedRunner(worker_cls, world_size=world_size, **options), **(setup or {}))

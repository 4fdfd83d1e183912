"""Shared fixtures: started runners on two CPU ranks, reused within a test module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from gridgen import DistributedRunner
from gridgen.testing import ProbeWorker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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

    def run(self, fn: Callable[[DistributedRunner[Any]], Awaitable[T]], timeout: float = 60) -> T:
        async def body() -> T:
            return await asyncio.wait_for(fn(self.runner), timeout)

        return self.sync._call(body())


def live(worker_cls: type = ProbeWorker, world_size: int = 2, setup: dict[str, Any] | None = None, **options: Any) -> LiveRunner:
    options.setdefault("device", "cpu")
    return LiveRunner(DistributedRunner(worker_cls, world_size=world_size, **options), **(setup or {}))


@pytest.fixture(scope="module")
def probe() -> Iterator[LiveRunner]:
    """Two CPU ranks running ProbeWorker, shared by a test module; tests must leave it healthy."""
    with live(error_grace=2.0, cancel_grace=5.0) as rt:
        yield rt

"""start(): setup failures and time limits give StartupError with nothing left running."""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest

from gridgen import DistributedRunner, StartupError, StartupTimeout
from gridgen.testing import ProbeWorker


def _children() -> set[int]:
    """Live child processes, except multiprocessing's resource tracker (started at the first
    spawn of the test session, shared by every later one, and not a worker)."""
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline())
    }


def test_setup_raising_on_one_rank() -> None:
    before = _children()
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    with pytest.raises(StartupError) as info:
        asyncio.run(runner.start(fail_on_rank=1))
    assert info.value.rank == 1
    assert info.value.remote_type == "RuntimeError"
    assert "setup failed on purpose" in info.value.remote_traceback
    assert _children() - before == set()
    assert runner.control_dir is None


def test_setup_hanging_past_the_start_timeout() -> None:
    before = _children()
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    started = time.monotonic()
    with pytest.raises(StartupTimeout) as info:
        asyncio.run(runner.start(timeout=10, hang_on_rank=0))
    assert isinstance(info.value, TimeoutError)
    assert info.value.rank == 0
    assert time.monotonic() - started < 25
    assert _children() - before == set()


def test_setup_kwargs_reach_every_rank() -> None:
    async def main() -> object:
        async with DistributedRunner(ProbeWorker, world_size=1, device="cpu", setup_kwargs={"answer": 42}) as runner:
            return runner.ready

    assert asyncio.run(main()) is True


def test_bad_arguments_are_rejected_before_spawning() -> None:
    with pytest.raises(TypeError, match="DistributedWorker subclass"):
        DistributedRunner(dict, world_size=2)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="world_size"):
        DistributedRunner(ProbeWorker, world_size=0, device="cpu")
    with pytest.raises(ValueError, match="devices"):
        DistributedRunner(ProbeWorker, devices=["cpu", "cuda:0"])
    if not __import__("torch").cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            DistributedRunner(ProbeWorker, world_size=2, device="cuda")


def test_default_device_without_cuda_is_cpu() -> None:
    runner = DistributedRunner(ProbeWorker)
    if not __import__("torch").cuda.is_available():
        assert runner.devices == ["cpu"] and runner.backend == "gloo"
    assert os.cpu_count()


def test_setup_arguments_to_a_started_runner_are_an_error_not_ignored() -> None:
    async def main() -> None:
        async with DistributedRunner(ProbeWorker, world_size=1, device="cpu") as runner:
            await runner.start()  # no arguments: a harmless no-op
            with pytest.raises(RuntimeError, match="would be ignored"):
                await runner.start(model="other")

    asyncio.run(main())

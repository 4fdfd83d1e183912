"""start() fails: setup raises on one rank, hangs past ``start(timeout=...)``, or a rank dies.

Each gives a :class:`StartupError` naming the rank, and leaves nothing behind: no child
process of the test process (checked with psutil), nothing in the temporary directory
(the runner's private directory, its socket and its rendezvous file are gone). The runner
can then be started again. ``test_startup.py`` checks the errors and the processes; this
file adds the directory, a rank dying in setup, and the retry.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import psutil
import pytest

from gridgen import DistributedRunner, DistributedWorker, StartupError, StartupTimeout
from gridgen.testing import ProbeWorker


class DiesInSetup(DistributedWorker):
    def setup(self, die_on_rank: int | None = None, **kwargs: Any) -> None:
        if self.rank == die_on_rank:
            os._exit(9)

    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        return None


def _children() -> set[int]:
    alive = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture()
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of this test's own (short: ipc socket paths are limited)."""
    # multiprocessing's resource tracker is a child that the first spawn starts and that
    # lives as long as this process: start it now, so it counts as already there.
    resource_tracker.ensure_running()
    path = Path(tempfile.mkdtemp(prefix="gft-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _left_behind(path: Path, before: set[int]) -> tuple[set[int], list[str]]:
    # terminate() reaps the ranks before start() raises; allow a moment for helpers
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (_children() - before or any(path.iterdir())):
        time.sleep(0.05)
    return _children() - before, sorted(p.name for p in path.iterdir())


def _start(runner: DistributedRunner[Any], **kwargs: Any) -> None:
    asyncio.run(runner.start(**kwargs))


def _retry_works(runner: DistributedRunner[Any]) -> Any:
    async def main() -> Any:
        await runner.start()
        try:
            return await runner.invoke({"op": "allreduce"})
        finally:
            await runner.stop()

    return asyncio.run(main())


def test_setup_raising_on_one_rank(private_tmp: Path) -> None:
    before = _children()
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    with pytest.raises(StartupError) as info:
        _start(runner, fail_on_rank=1)
    assert info.value.rank == 1 and info.value.remote_type == "RuntimeError"
    assert "setup failed on purpose on rank 1" in info.value.remote_traceback
    assert "rank 1" in str(info.value)
    assert not runner.ready and runner.control_dir is None
    assert _left_behind(private_tmp, before) == (set(), [])
    # the same runner starts once the cause is gone
    runner.setup_kwargs = {}
    assert _retry_works(runner) == {"sum": 3}
    assert _left_behind(private_tmp, before) == (set(), [])


def test_setup_hanging_past_the_start_timeout(private_tmp: Path) -> None:
    before = _children()
    runner = DistributedRunner(ProbeWorker, world_size=2, device="cpu")
    started = time.monotonic()
    with pytest.raises(StartupTimeout) as info:
        _start(runner, timeout=3, hang_on_rank=0)
    elapsed = time.monotonic() - started
    assert isinstance(info.value, StartupError) and isinstance(info.value, TimeoutError)
    assert info.value.rank == 0 and "not ready after 3s" in str(info.value)
    assert 3 <= elapsed < 3 + 10  # the limit, plus SIGTERM -> SIGKILL of a rank stuck in setup
    assert not runner.ready
    assert _left_behind(private_tmp, before) == (set(), [])


def test_rank_dying_during_setup(private_tmp: Path) -> None:
    before = _children()
    runner = DistributedRunner(DiesInSetup, world_size=2, device="cpu")
    with pytest.raises(StartupError) as info:
        _start(runner, die_on_rank=1)
    assert info.value.rank == 1
    assert "rank 1" in str(info.value) and "code 9" in str(info.value)
    assert _left_behind(private_tmp, before) == (set(), [])

"""A worker process that dies: WorkerDiedError fast, restart() heals, auto_restart heals by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from gridgen import WorkerDiedError

from helpers.runtime import LiveRunner, live


@pytest.fixture()
def fresh() -> Iterator[LiveRunner]:
    with live() as rt:
        yield rt


def test_killed_rank_fails_the_request_and_later_ones_until_restart(fresh: LiveRunner) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        fresh.sync.invoke({"op": "kill", "on_rank": 1})
    assert time.monotonic() - started < 5
    assert info.value.rank == 1
    assert info.value.signal == "SIGKILL" and info.value.exitcode == -9
    assert not fresh.runner.ready and fresh.runner.state == "dead"

    started = time.monotonic()
    with pytest.raises(WorkerDiedError):
        fresh.sync.invoke({"op": "echo"})
    assert time.monotonic() - started < 5

    fresh.sync.restart()
    assert fresh.runner.ready
    assert fresh.sync.invoke({"op": "allreduce"}) == {"sum": 3}


def test_exit_code_is_reported(fresh: LiveRunner) -> None:
    with pytest.raises(WorkerDiedError) as info:
        fresh.sync.invoke({"op": "exit", "on_rank": 0, "code": 7})
    assert info.value.rank == 0 and info.value.exitcode == 7 and info.value.signal is None
    assert "exited with code 7" in str(info.value)


def test_killed_rank_during_stream(fresh: LiveRunner) -> None:
    with pytest.raises(WorkerDiedError) as info:
        list(fresh.sync.stream({"op": "kill", "on_rank": 0}))
    assert info.value.rank == 0


def test_auto_restart_continues_the_queue() -> None:
    with live(auto_restart=True) as rt:
        with pytest.raises(WorkerDiedError):
            rt.sync.invoke({"op": "kill", "on_rank": 1})
        # the next request waits for the automatic restart and succeeds
        assert rt.sync.invoke({"op": "allreduce"}, timeout=60) == {"sum": 3}
        assert rt.runner.ready

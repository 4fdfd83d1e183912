"""A rank that raises: a typed error with its traceback, and recovery when others are stuck."""

from __future__ import annotations

import time

import pytest

from gridgen import WorkerError

from helpers.runtime import LiveRunner


def test_error_on_rank1_names_the_rank_and_keeps_the_traceback(probe: LiveRunner) -> None:
    probe.sync.invoke({"op": "echo"})  # healthy before we start
    with pytest.raises(WorkerError) as info:
        probe.sync.invoke({"op": "raise", "on_rank": 1, "message": "boom"})
    error = info.value
    assert error.rank == 1
    assert error.remote_type == "ValueError"
    assert error.remote_message == "boom"
    assert "_misbehave" in error.remote_traceback
    assert "rank 1" in str(error) and "boom" in str(error)


def test_rank_raising_before_a_collective_rebuilds_the_group(probe: LiveRunner) -> None:
    # the previous test left rank 0 stuck in an all-reduce: this waits for that rebuild
    assert probe.sync.invoke({"op": "allreduce"}) == {"sum": 3}
    pids_before = probe.runner.pids
    started = time.monotonic()
    with pytest.raises(WorkerError) as info:
        probe.sync.invoke({"op": "raise", "on_rank": 0})
    assert info.value.rank == 0
    # the caller is told at once, not after the collective times out
    assert time.monotonic() - started < 5
    # rank 1 is stuck in all_reduce: after error_grace the group is rebuilt and the next request works
    assert probe.sync.invoke({"op": "allreduce"}) == {"sum": 3}
    assert probe.runner.pids != pids_before
    assert probe.runner.ready


def test_errors_on_every_rank_need_no_rebuild(probe: LiveRunner) -> None:
    pids_before = probe.runner.pids
    with pytest.raises(WorkerError):
        probe.sync.invoke({"op": "raise"})
    assert probe.sync.invoke({"op": "echo", "message": "after"})["echo"] == "after"
    assert probe.runner.pids == pids_before

"""Worker output and logs carry the rank."""

from __future__ import annotations

import logging

import pytest

from helpers.runtime import live


def test_worker_output_is_prefixed_with_the_rank(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gridgen.runner")
    # The runner starts inside the test so its workers inherit capfd's file descriptors.
    with live() as rt:
        rt.sync.invoke({"op": "print", "message": "hello-from-worker"})
    # Leaving `with` stopped the runner, which waits for the ranks to exit, and each rank
    # drains its prefix pumps (the threads writing the prefixed lines) before it exits.
    out, err = capfd.readouterr()
    assert "[rank 0] hello-from-worker" in out
    assert "[rank 1] hello-from-worker" in out
    assert "[rank 0] hello-from-worker" in err
    assert "[rank 1] WARNING gridgen.testing [rank 1]: hello-from-worker" in err
    assert "runner ready: 2 ranks on cpu" in caplog.messages  # not "on cpu, cpu"


def test_restart_log_counts_restarts_one_by_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gridgen")
    with live(world_size=1) as rt:
        for _ in range(3):
            rt.run(lambda runner: runner.restart())
    restarted = [r.getMessage() for r in caplog.records if "worker group restarted" in r.getMessage()]
    assert restarted == [f"worker group restarted (restart {n})" for n in (1, 2, 3)]

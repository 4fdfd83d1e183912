"""How ranks start: CPU ranks fork from a forkserver that imported torch, and still see the
host's environment and stdout as they are when each rank starts, as a spawned rank would."""

from __future__ import annotations

import os
import uuid

import psutil
import pytest

from gridgen._worker_start import start_context

from helpers.env_worker import EnvWorker
from helpers.runtime import live


def test_cpu_ranks_fork_from_the_forkserver_and_gpu_ranks_are_spawned() -> None:
    assert start_context(["cpu", "cpu"], "gloo")[0].get_start_method() == "forkserver"
    assert start_context(["cuda:0", "cuda:1"], "nccl")[0].get_start_method() == "spawn"
    assert start_context(["cuda:0"], "gloo")[0].get_start_method() == "spawn"  # CUDA forbids fork


def test_a_rank_started_later_sees_the_environment_and_stdout_of_the_host_then(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    with live(EnvWorker, world_size=1):
        pass  # the forkserver runs from here on, with the environment of this moment
    mark = uuid.uuid4().hex
    monkeypatch.setenv("GRIDGEN_TEST_MARK", mark)
    capfd.readouterr()
    with live(EnvWorker, world_size=2) as rt:
        result = rt.sync.invoke({})
        parents = [psutil.Process(pid).parent() for pid in rt.runner.pids if pid is not None]
    assert result["at_import"] == mark, "the worker's module was imported with the host's environment"
    assert result["now"] == mark
    assert result["torch_preloaded"]  # forked from a process that imported it
    assert len(parents) == 2 and all(p is not None and p.pid != os.getpid() for p in parents)
    assert all("forkserver" in " ".join(p.cmdline()) for p in parents if p is not None)
    out = capfd.readouterr().out
    assert f"[rank 0] mark {mark}" in out and f"[rank 1] mark {mark}" in out

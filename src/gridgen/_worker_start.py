"""How worker processes are started: a forkserver for CPU ranks, spawn for GPU ranks.

A spawned process imports torch afresh: about 1.5 s of CPU per rank, paid again at every
restart. CPU ranks are instead forked from multiprocessing's forkserver, a process that
imported torch, ``torch.distributed``, ZeroMQ and the worker's entry point once
(:mod:`gridgen._worker_preload`): a rank starts in tens of milliseconds. GPU ranks are
still spawned: forking is only safe before any CUDA call, and a process that loads a
model for seconds or minutes gains nothing from a faster start.

A forked rank must still see the host as a spawned one would, so each start carries,
ahead of the worker spec (:class:`HostStart`, applied as it is unpickled):

* the host's environment *now* (a forked process inherits the forkserver's, frozen when
  it started);
* the host's stdout and stderr *now*, as file descriptors passed with the start
  (a test's captured output, a service's redirected logs).

Everything else (``sys.path``, the working directory, the worker class by value) travels
as it does for spawn, and the host's death still reaches each rank through
``multiprocessing.parent_process().sentinel``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.reduction
import os
from collections.abc import Sequence
from multiprocessing.context import ForkServerContext, SpawnContext
from typing import Any

__all__ = ["HostFd", "HostStart", "start_context"]

PRELOAD = "gridgen._worker_preload"


def start_context(devices: Sequence[str], backend: str) -> tuple[ForkServerContext | SpawnContext, bool]:
    """The multiprocessing context for ranks on ``devices``, and whether it forks."""
    if backend == "gloo" and all(d.startswith("cpu") for d in devices):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([PRELOAD])  # read once, when the forkserver starts
        return context, True
    return multiprocessing.get_context("spawn"), False  # CUDA forbids fork


def _take_fd(dup: Any) -> int:
    return int(dup.detach())


class HostFd:
    """One of the host's file descriptors, duplicated into the rank as it starts.

    Pickled only inside ``Process.start()``, when multiprocessing hands the descriptor to
    the forkserver along with the new process.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return _take_fd, (multiprocessing.reduction.DupFd(self.fd),)


class HostStart:
    """What a forked rank takes from the host at start: its environment and stdio."""

    def __init__(self) -> None:
        self.environ = dict(os.environ)
        self.stdout: int | HostFd = HostFd(1)
        self.stderr: int | HostFd = HostFd(2)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Applied as it is unpickled in the rank, before the worker spec that follows it in
        # the process's arguments: unpickling the spec imports the worker's module, which
        # may read the environment at import.
        self.__dict__.update(state)
        self.apply()

    def apply(self) -> None:
        """In the rank: become what a spawned process would have been."""
        os.environ.clear()
        os.environ.update(self.environ)
        for fd, own in ((1, self.stdout), (2, self.stderr)):
            if isinstance(own, int):
                os.dup2(own, fd)
                os.close(own)

"""Host side of the worker processes: devices, spawning, the sentinel watcher, terminate then kill."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from ._class_ref import by_value, main_not_rerun
from ._worker_process import WorkerSpec, worker_main

logger = logging.getLogger("gridgen.runner")


def resolve_devices(
    world_size: int | None, device: str | None, devices: Sequence[Any] | None
) -> tuple[list[str], str]:
    """Decide each rank's device and the torch.distributed backend.

    * ``devices=[0, 1]`` or ``["cuda:0", "cuda:1"]``: one rank per entry.
    * ``device="cpu"``: CPU ranks with gloo (``world_size`` defaults to 1).
    * ``device="cuda"`` or None with CUDA present: ``cuda:0..W-1`` with NCCL
      (``world_size`` defaults to the number of visible GPUs).
    * None without CUDA: CPU ranks with gloo.
    """
    if world_size is not None and (not isinstance(world_size, int) or world_size < 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if devices is not None:
        names = [f"cuda:{d}" if isinstance(d, int) else str(d) for d in devices]
        if not names:
            raise ValueError("devices must name at least one device")
        if world_size is not None and world_size != len(names):
            raise ValueError(f"world_size={world_size} does not match the {len(names)} devices given")
        kinds = {n.split(":")[0] for n in names}
        if kinds - {"cpu", "cuda"} or len(kinds) != 1:
            raise ValueError(f"devices must be all 'cpu' or all 'cuda:N', got {names}")
        if "cuda" in kinds:
            _check_cuda(names)
            return names, "nccl"
        return names, "gloo"
    if device is None:
        device = "cuda" if _cuda_count() > 0 else "cpu"
    if device == "cpu":
        return ["cpu"] * (world_size or 1), "gloo"
    if device == "cuda":
        count = _cuda_count()
        if count == 0:
            raise RuntimeError("device='cuda' was asked for but no CUDA device is visible; use device='cpu'")
        n = world_size or count
        names = [f"cuda:{i}" for i in range(n)]
        _check_cuda(names)
        return names, "nccl"
    raise ValueError(f"device must be 'cpu', 'cuda' or None, got {device!r}; use devices=[...] to pick GPUs")


def _cuda_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _check_cuda(names: list[str]) -> None:
    count = _cuda_count()
    for name in names:
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= count:
            raise RuntimeError(f"{name} is not visible: {count} CUDA device(s) found")
    if len(set(names)) != len(names):
        raise ValueError(f"each rank needs its own GPU, got {names}")


class WorkerGroup:
    """One generation of worker processes, one per rank."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        self.specs = specs
        self.generation = specs[0].generation
        self.processes: list[BaseProcess] = []
        self._watched: list[int] = []

    def spawn(self) -> None:
        context = multiprocessing.get_context("spawn")  # CUDA forbids fork
        packed = [by_value(spec, f"worker class {spec.worker_cls.__qualname__}") for spec in self.specs]
        for spec, args in zip(self.specs, packed, strict=True):
            process = context.Process(
                target=worker_main, args=(args,), name=f"gridgen-g{spec.generation}-rank{spec.rank}"
            )
            with main_not_rerun():
                process.start()
            self.processes.append(process)

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.processes]

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[int, int | None], None]) -> None:
        """Call ``on_exit(rank, exitcode)`` from the loop as soon as a process ends."""

        def fire(rank: int, fd: int) -> None:
            loop.remove_reader(fd)
            self._watched.remove(fd)
            process = self.processes[rank]
            process.join(timeout=0)  # reap it and read its exit code
            # The kernel closes a dying process's pipes (the sentinel) a moment before the
            # process can be reaped: wait that moment out, or the exit code is lost.
            deadline = time.monotonic() + 1.0
            while process.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.001)
                process.join(timeout=0)
            on_exit(rank, process.exitcode)

        for rank, process in enumerate(self.processes):
            fd = process.sentinel
            loop.add_reader(fd, fire, rank, fd)
            self._watched.append(fd)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        for fd in self._watched:
            loop.remove_reader(fd)
        self._watched.clear()

    def alive(self) -> list[BaseProcess]:
        return [p for p in self.processes if p.is_alive()]

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every process to end; True if they all did."""
        loop = asyncio.get_running_loop()
        pending = self.alive()
        if not pending:
            return True
        waiters: list[asyncio.Future[None]] = []
        fds: list[int] = []
        for process in pending:
            future: asyncio.Future[None] = loop.create_future()
            fd = process.sentinel
            # A second reader on a watched fd would replace the watcher's; use a dup.
            dup = os.dup(fd)
            fds.append(dup)
            loop.add_reader(dup, _set_once, future)
            waiters.append(future)
        try:
            _, still = await asyncio.wait(waiters, timeout=timeout)
        finally:
            for dup in fds:
                loop.remove_reader(dup)
                os.close(dup)
        for process in pending:
            process.join(timeout=0)
        return not still

    async def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM every live process, wait ``grace`` seconds, then SIGKILL what is left."""
        for process in self.alive():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        if await self.wait_exit(grace):
            return
        for process in self.alive():
            logger.warning("rank process %s ignored SIGTERM for %.1fs; killing it", process.name, grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await self.wait_exit(5.0)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL and reap."""
        for process in self.processes:
            if process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.join(timeout=5)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

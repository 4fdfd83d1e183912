"""The worker processes: devices, spawn, rendezvous, readiness, death watch, retire, restart.

:class:`WorkerGroup` is one generation of processes (spawn, the sentinel watcher,
terminate then kill). :class:`Supervisor` keeps one group alive for the runner: it
starts it and waits for every rank's ``ready``, notices a death, rebuilds the group
(``restart``) and owns the group's health (``ready``, ``restarting``, ``dead``). It
reports up through two callbacks (the group's requests are lost; a message for the
dispatcher) and never looks at requests itself.

Exit hooks: a started runner's processes are killed at interpreter exit even when the
caller never stopped it (``_live`` holds the supervisors of started runners).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401  # before our atexit hook: see _kill_leftovers
import os
import signal
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from ._class_ref import WorkerNotSendable, by_value, main_not_rerun
from ._control import ControlSocket
from ._options import RunnerOptions
from ._protocol import ErrorInfo, Kind, Message, pack
from ._stats import RunnerStats
from ._worker_main import WorkerSpec, forked_main, worker_main
from ._worker_start import HostStart, start_context
from .errors import GridgenError, RunnerClosed, StartupError, StartupTimeout, WorkerDiedError
from .worker import DistributedWorker

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
        self._watching = False

    def spawn(self) -> None:
        """Start every rank's process; raise StartupError naming the rank that could not start."""
        context, forks = start_context([spec.device for spec in self.specs], self.specs[0].backend)
        for spec in self.specs:
            try:
                packed = by_value(spec, f"worker class {spec.worker_cls.__qualname__}")
            except WorkerNotSendable as exc:
                raise StartupError(f"could not start the worker processes: {exc}", rank=spec.rank) from exc
            target, args = (forked_main, (HostStart(), packed)) if forks else (worker_main, (packed,))
            process = context.Process(target=target, args=args, name=f"gridgen-g{spec.generation}-rank{spec.rank}")
            try:
                with main_not_rerun():
                    process.start()
            except Exception as exc:
                raise StartupError(
                    f"could not start the process of rank {spec.rank}: {exc}", rank=spec.rank
                ) from exc
            self.processes.append(process)

    @property
    def pids(self) -> list[int | None]:
        return [p.pid for p in self.processes]

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[int, int | None], None]) -> None:
        """Call ``on_exit(rank, exitcode)`` from the loop as soon as a process ends."""

        def reap(rank: int, deadline: float) -> None:
            process = self.processes[rank]
            process.join(timeout=0)  # reap it and read its exit code
            # The kernel closes a dying process's pipes (the sentinel) a moment before the
            # process can be reaped: look again shortly (without blocking the loop), for up
            # to a second, or the exit code is lost.
            if process.exitcode is None and loop.time() < deadline:
                loop.call_later(0.001, reap, rank, deadline)
                return
            if self._watching:
                on_exit(rank, process.exitcode)

        def fire(rank: int, fd: int) -> None:
            loop.remove_reader(fd)
            self._watched.remove(fd)
            reap(rank, loop.time() + 1.0)

        self._watching = True

        for rank, process in enumerate(self.processes):
            fd = process.sentinel
            loop.add_reader(fd, fire, rank, fd)
            self._watched.append(fd)

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._watching = False
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


# Strong references: a started runner owns live processes until stop(), even when the
# caller dropped it (a script that raised); a weak set let it vanish before atexit.
_live: set[Supervisor] = set()

# Ordering hazard: atexit runs hooks last-in, first-out, and multiprocessing.util registers
# a hook that joins every child process (forever, for workers a forgotten runner never
# stopped) when it is first imported, which would otherwise happen at the first spawn,
# after ours. It is imported at the top of this module so that our hook, registered
# below, runs first.


@atexit.register
def _kill_leftovers() -> None:
    for supervisor in list(_live):
        supervisor.kill_now()


OnLost = Callable[[GridgenError], None]


class Supervisor:
    """Keeps one worker group alive for a runner; owns the group's health.

    Health: ``starting`` (before the first group is ready), ``ready``, ``restarting``,
    ``dead`` (a rank died and no restart is under way; ``dead_error`` says why), and
    ``closed`` once the runner stops (no more restarts).
    """

    def __init__(
        self,
        worker_cls: type[DistributedWorker],
        devices: list[str],
        backend: str,
        options: RunnerOptions,
        control: ControlSocket,
        on_lost: OnLost,
        stats: RunnerStats | None = None,
    ) -> None:
        self.worker_cls = worker_cls
        self.stats = RunnerStats() if stats is None else stats
        self.devices = devices
        self.backend = backend
        self.world_size = len(devices)
        self.options = options
        self.control = control
        self.setup_kwargs: dict[str, Any] = {}
        self._on_lost = on_lost  # the group's unfinished requests are lost, with this error
        self.group: WorkerGroup | None = None
        self.generation = 0  # +1 per spawned and per retired group: not a restart count
        self.restarts = 0
        self.health = "starting"
        self.health_changed = asyncio.Event()
        self.dead_error: GridgenError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready_ranks: set[int] = set()
        self.worker_batch_sizes: tuple[int, ...] | None = None
        """What rank 0's worker declared in ``batch_sizes`` at its last ready."""
        self._startup: asyncio.Future[None] | None = None
        self._restarting: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[None]] = set()

    @property
    def pids(self) -> list[int | None]:
        return self.group.pids if self.group is not None else []

    def _set_health(self, health: str) -> None:
        self.health = health
        self.health_changed.set()
        self.health_changed = asyncio.Event()

    # -- start ---------------------------------------------------------------------------

    async def start(self, timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        _live.add(self)
        await self._spawn(timeout)
        self._set_health("ready")

    def on_message(self, rank: int, message: Message) -> None:
        """``ready`` and ``setup_error`` from the ranks of the group being started."""
        startup = self._startup
        if startup is None or startup.done():
            return
        if message.kind is Kind.SETUP_ERROR:
            info = ErrorInfo.from_wire(message.data).to_wire()
            startup.set_exception(StartupError.from_remote(rank, info, during="setup"))
            return
        self._ready_ranks.add(rank)
        if rank == 0:
            sizes = message.data.get("batch_sizes") if isinstance(message.data, dict) else None
            self.worker_batch_sizes = None if sizes is None else tuple(sizes)
        if len(self._ready_ranks) == self.world_size:
            startup.set_result(None)

    def _specs(self, generation: int) -> list[WorkerSpec]:
        assert self.control.dir is not None
        return [
            WorkerSpec(
                worker_cls=self.worker_cls,
                rank=rank,
                world_size=self.world_size,
                device=device,
                backend=self.backend,
                address=self.control.address,
                session_key=self.control.key,
                generation=generation,
                store_path=os.path.join(self.control.dir, f"store-{generation}"),
                runner_dir=self.control.dir,
                setup_kwargs=self.setup_kwargs,
                collective_timeout=self.options.collective_timeout,
                max_message_bytes=self.options.max_message_bytes,
                log_level=logging.getLogger("gridgen").getEffectiveLevel(),
                prefix_output=self.options.prefix_output,
                cwd=self.options.cwd,
                set_device=self.options.set_device,
            )
            for rank, device in enumerate(self.devices)
        ]

    async def _spawn(self, timeout: float | None) -> None:
        assert self._loop is not None
        self.generation += 1
        generation = self.generation
        group = WorkerGroup(self._specs(generation))
        self.control.admit(generation, self.world_size)
        self._ready_ranks = set()
        self._startup = self._loop.create_future()
        self.group = group
        try:
            group.spawn()
        except BaseException:
            await self._kill(group)
            raise
        group.watch(self._loop, lambda rank, code: self._on_exit(generation, rank, code))
        try:
            await asyncio.wait_for(asyncio.shield(self._startup), timeout)
        except TimeoutError:
            waiting = sorted(set(range(self.world_size)) - self._ready_ranks)
            await self._kill(group)
            raise StartupTimeout(
                f"ranks {waiting} were not ready after {timeout}s (setup still running or stuck)", rank=waiting[0]
            ) from None
        except BaseException:
            await self._kill(group)
            raise
        finally:
            self._startup = None

    # -- death ---------------------------------------------------------------------------

    def _on_exit(self, generation: int, rank: int, exitcode: int | None) -> None:
        if generation != self.generation or self.health == "closed":
            return
        error = WorkerDiedError(rank, exitcode)
        logger.error("%s", error, extra={"rank": rank})
        self.stats.worker_died()
        if self._startup is not None and not self._startup.done():
            self._startup.set_exception(StartupError(f"rank {rank} died during startup: {error}", rank=rank))
            return
        if self.health == "restarting":
            return
        self._on_lost(error)
        self.dead_error = error
        group = self.group
        if group is not None and self._loop is not None:
            group.unwatch(self._loop)
            # The other ranks are likely stuck in a collective with the dead one.
            self._in_background(group.terminate(grace=1.0))
        if self.options.auto_restart:
            self.begin_restart(str(error), None)
        else:
            self._set_health("dead")

    def dead_rank(self) -> tuple[int, int | None] | None:
        """(rank, exit code) of a process of the group that has ended, if any (reaps it)."""
        if self.group is not None:
            for rank, process in enumerate(self.group.processes):
                if not process.is_alive():
                    return rank, process.exitcode
        return None

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- restart -------------------------------------------------------------------------

    def begin_restart(self, why: str, timeout: float | None) -> asyncio.Future[None]:
        """Start a restart unless one is under way; either way return the one running."""
        if self.health == "closed":
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(RunnerClosed("the runner is stopping; no restart"))
            refused.add_done_callback(_consume)
            return refused
        if self._restarting is None or self._restarting.done():
            self._set_health("restarting")
            task = asyncio.ensure_future(self._restart(why, timeout))
            task.add_done_callback(_consume)
            self._restarting = task
        return self._restarting

    async def restart(self, why: str, timeout: float | None) -> None:
        await asyncio.shield(self.begin_restart(why, timeout))

    async def _restart(self, why: str, timeout: float | None) -> None:
        from .errors import RequestCancelled

        logger.warning("restarting the worker group: %s", why)
        # Requests that already failed (the error that led here) keep their error.
        self._on_lost(RequestCancelled(f"the worker group was restarted: {why}"))
        await self.retire(graceful=False)
        try:
            await self._spawn(self.options.start_timeout if timeout is None else timeout)
        except BaseException as exc:
            if isinstance(exc, GridgenError):
                self.dead_error = exc
            else:
                self.dead_error = RunnerClosed(f"the restart was interrupted: {exc!r}")
            if self.health == "restarting":
                self._set_health("dead")
            raise
        self.dead_error = None
        if self.health == "restarting":
            self._set_health("ready")
        self.restarts += 1
        self.stats.group_restarted()
        logger.warning("worker group restarted (restart %d)", self.restarts)

    async def cancel_restart(self) -> None:
        if self._restarting is not None and not self._restarting.done():
            self._restarting.cancel()
            with contextlib.suppress(BaseException):
                await self._restarting

    # -- stop ----------------------------------------------------------------------------

    def close(self) -> None:
        """No more restarts; deaths are no longer news."""
        self._set_health("closed")

    async def retire(self, graceful: bool) -> None:
        """End the current group: ask nicely (shutdown -> teardown) if ``graceful``, then terminate."""
        group = self.group
        if group is None:
            return
        self.generation += 1  # exits of the old group are ignored from now on
        self.control.forget()  # and so are its messages
        if self._loop is not None:
            group.unwatch(self._loop)
        if graceful:
            frame = pack(Kind.SHUTDOWN)
            self.control.broadcast(group.generation, len(group.processes), frame)
            if await group.wait_exit(10.0):
                self.group = None
                return
        await group.terminate(grace=3.0 if graceful else 1.0)
        self.group = None

    async def _kill(self, group: WorkerGroup) -> None:
        if self._loop is not None:
            group.unwatch(self._loop)
        await group.terminate(grace=1.0)
        if self.group is group:
            self.group = None

    def forget(self) -> None:
        _live.discard(self)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL and reap, remove the directory."""
        if self.group is not None:
            self.group.kill_now()
        self.control.remove_dir()


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

"""``DistributedRunner``: the public face that composes the runtime's owners.

A request's life: ``submit`` encodes the payload (so bad values fail in the caller,
before anything is queued) and puts it on a bounded FIFO queue; the dispatcher
(:mod:`gridgen._dispatch`) sends each request to every rank directly and waits until
every rank has reported; stream items are routed by request id to that request's
buffer only (:mod:`gridgen._requests`). Time limits count from submission.

Recovery rules:

* a rank raises -> the caller gets :class:`WorkerError` at once, the other ranks are
  told to cancel, and if they have not all reported within ``error_grace`` seconds they
  are assumed stuck in a collective: the group is terminated and respawned (``setup``
  runs again) before the next request;
* a cancelled or timed-out running request whose ranks do not stop within
  ``cancel_grace`` seconds: the group is rebuilt the same way;
* a worker process dies -> the running request and every later one fail with
  :class:`WorkerDiedError` until ``restart()`` (or at once with ``auto_restart``).

Who owns what is in ARCHITECTURE.md at the repository root.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._batching import BatchPolicy
from ._control import ControlSocket
from ._dispatch import Dispatcher
from ._events import text_events
from ._options import DEFAULT_BATCH_WAIT, RunnerOptions, collective_timeout_of, log_ignored_ports
from ._options import Option as _Option
from ._protocol import Kind, Message
from ._requests import RequestHandle
from ._stats import RunnerStats
from ._supervisor import Supervisor, resolve_devices
from .errors import RunnerClosed, WorkerDiedError
from .worker import DistributedWorker

if TYPE_CHECKING:
    from ._sync import SyncRunner

__all__ = ["DistributedRunner", "RequestHandle"]

logger = logging.getLogger("gridgen.runner")

W = TypeVar("W", bound=DistributedWorker)


class DistributedRunner(Generic[W]):
    """Runs ``worker_cls`` in one process per rank and sends it requests.

    Args:
        worker_cls: a :class:`DistributedWorker` subclass, from a module, a script or a
            notebook cell (what the workers cannot import travels by value).
        world_size: number of ranks. Defaults to the number of ``devices``, else the
            visible GPUs, else 1.
        device: ``"cpu"`` (gloo), ``"cuda"`` (NCCL, ``cuda:0..W-1``) or None (CUDA when present).
        devices: explicit per-rank devices, e.g. ``[0, 2]`` or ``["cuda:1", "cuda:3"]``.
        setup_kwargs: keyword arguments for ``setup`` (``start(**kwargs)`` overrides them);
            kept for restarts.
        max_queue: requests allowed to wait (not counting the running one); past it
            ``submit``/``invoke``/``stream`` raise :class:`QueueFull` at once.
        request_timeout: default time limit of each request, from submission (None: none).
        stream_idle_timeout: default limit between two streamed items (None: none).
        error_grace: after a rank raised, how long the other ranks get to report before
            they are assumed stuck in a collective and the group is rebuilt.
        cancel_grace: after a cancel, how long the ranks get to stop before the group is rebuilt.
        auto_restart: respawn the group by itself after a worker process died.
        keepalive_payload / keepalive_interval: invoke this payload after the runner has
            been idle for this many seconds (as the seed's SDK does, to keep GPUs warm).
        max_message_bytes: largest encoded message in either direction.
        stream_buffer: streamed items kept per request for a slow consumer (oldest dropped).
        collective_timeout: torch.distributed timeout inside the workers.
        stop_grace: how long ``stop()`` lets a running request finish.
        start_timeout: default limit for ``start()`` (None: none).
        prefix_output: prefix each line the workers print with ``[rank N]``.
        max_batch: most queued requests merged into one call when the worker declares them
            compatible (``batch_key``); 0 or 1: no merging. Workers without a key are unaffected.
        max_batch_units: most work units (``batch_units``, e.g. images) in one merged call;
            None: no cap. The head of the queue is always taken, even alone over the cap.
        batch_wait: seconds the head of the queue waits for more compatible requests once
            the group is free (default 0.02: a burst merges; a lone request waits that long
            unless its units already fill a call); 0 merges only what is already queued.
        batch_sizes: the unit totals a merged call may have (None: what the worker declares
            in its ``batch_sizes`` after setup, else any). A compiled or
            CUDA-graphed worker pads a batch up to a size it has already run, so give the
            totals its warm shapes serve (warm images per rank times ``world_size``): merges
            then form only those, and what does not fit runs in the next call, never padded
            nor compiled at request time. The head of the queue alone is always allowed.
    """

    # Over 60 lines for its 24 parameters, each passed on once; splitting it would only move them.
    def __init__(
        self,
        worker_cls: type[W],
        world_size: int | None = None,
        *,
        device: str | None = None,
        devices: list[Any] | None = None,
        setup_kwargs: Mapping[str, Any] | None = None,
        max_queue: int = 64,
        request_timeout: float | None = None,
        stream_idle_timeout: float | None = None,
        error_grace: float = 5.0,
        cancel_grace: float = 30.0,
        auto_restart: bool = False,
        keepalive_payload: Mapping[str, Any] | None = None,
        keepalive_interval: float | None = None,
        max_message_bytes: int = 256 * 1024 * 1024,
        stream_buffer: int = 64,
        collective_timeout: float | None = None,
        stop_grace: float = 30.0,
        start_timeout: float | None = None,
        prefix_output: bool = True,
        max_batch: int = 8,
        max_batch_units: int | None = None,
        batch_wait: float = DEFAULT_BATCH_WAIT,
        batch_sizes: Sequence[int] | None = None,
        timeout: float | None = None,
        cwd: str | os.PathLike[str] | None = None,
        set_device: bool | None = None,
        master_addr: str | None = None,
        master_port: int | None = None,
        worker_addr: str | None = None,
        worker_port: int | None = None,
    ) -> None:
        if not (isinstance(worker_cls, type) and issubclass(worker_cls, DistributedWorker)):
            raise TypeError(f"worker_cls must be a DistributedWorker subclass, got {worker_cls!r}")
        log_ignored_ports(master_addr=master_addr, master_port=master_port, worker_addr=worker_addr, worker_port=worker_port)
        self.options = RunnerOptions(
            max_queue=max_queue,
            request_timeout=request_timeout,
            stream_idle_timeout=stream_idle_timeout,
            error_grace=error_grace,
            cancel_grace=cancel_grace,
            auto_restart=auto_restart,
            keepalive_payload=None if keepalive_payload is None else dict(keepalive_payload),
            keepalive_interval=keepalive_interval,
            max_message_bytes=max_message_bytes,
            stream_buffer=stream_buffer,
            collective_timeout=collective_timeout_of(collective_timeout, timeout),
            stop_grace=stop_grace,
            start_timeout=start_timeout,
            prefix_output=prefix_output,
            max_batch=max_batch,
            max_batch_units=max_batch_units,
            batch_wait=batch_wait,
            batch_sizes=None if batch_sizes is None else tuple(batch_sizes),
            cwd=None if cwd is None else os.fspath(cwd),
            set_device=set_device is not False,
        )
        self.worker_cls = worker_cls
        self.devices, self.backend = resolve_devices(world_size, device, devices)
        self.world_size = len(self.devices)
        family = getattr(worker_cls, "family", None)
        self._stats = RunnerStats(getattr(family, "name", None) or "none")
        self._stats.use_devices(self.devices)
        self._build_owners(dict(setup_kwargs or {}))
        self._lifecycle = asyncio.Lock()
        self._start_error: Exception | None = None

    def _build_owners(self, setup_kwargs: dict[str, Any]) -> None:
        """The socket, the supervisor and the dispatcher of one run, from new to stopped."""
        self._control = ControlSocket(self.options)
        self._supervisor = Supervisor(
            self.worker_cls, self.devices, self.backend, self.options, self._control, self._on_group_lost,
            self._stats,
        )
        self._supervisor.setup_kwargs = setup_kwargs
        supervisor = self._supervisor
        policy = BatchPolicy(
            self.worker_cls, self.world_size, self.options,
            lambda: supervisor.worker_batch_sizes, lambda: supervisor.setup_kwargs,
        )
        self._dispatcher = Dispatcher(self.options, self._control, self._supervisor, policy, self._stats)
        self._phase = "new"  # new, starting, running, draining, stopping, stopped
        self._stopped = asyncio.Event()

    # -- settings (see the class docstring) ----------------------------------------------

    @property
    def setup_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``setup``; kept for restarts (change them, then ``restart()``)."""
        return self._supervisor.setup_kwargs

    @setup_kwargs.setter
    def setup_kwargs(self, value: Mapping[str, Any]) -> None:
        self._supervisor.setup_kwargs = dict(value)

    # Each setting reads and writes ``self.options`` (the class docstring says what it means).
    max_queue: _Option[int] = _Option()
    request_timeout: _Option[float | None] = _Option()
    stream_idle_timeout: _Option[float | None] = _Option()
    error_grace: _Option[float] = _Option()
    cancel_grace: _Option[float] = _Option()
    auto_restart: _Option[bool] = _Option()
    keepalive_interval: _Option[float | None] = _Option()
    max_message_bytes: _Option[int] = _Option()
    stream_buffer: _Option[int] = _Option()
    collective_timeout: _Option[float] = _Option()
    stop_grace: _Option[float] = _Option()
    start_timeout: _Option[float | None] = _Option()
    prefix_output: _Option[bool] = _Option()
    max_batch: _Option[int] = _Option()
    max_batch_units: _Option[int | None] = _Option()
    batch_wait: _Option[float] = _Option()
    batch_sizes: _Option[tuple[int, ...] | None] = _Option()

    # -- public state -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``ready``, ``restarting``, ``dead`` (a worker died),
        ``draining`` (see :meth:`drain`), ``stopping`` or ``stopped``."""
        if self._phase == "running":
            return self._supervisor.health
        return self._phase

    @property
    def ready(self) -> bool:
        """True when every rank is started and healthy and requests run."""
        return self.state == "ready"

    @property
    def worker_batch_sizes(self) -> tuple[int, ...] | None:
        """The ``batch_sizes`` the worker declared at its last setup (used when the
        ``batch_sizes`` option is None); None before the first start or when it declared none."""
        return self._supervisor.worker_batch_sizes

    @property
    def queue_size(self) -> int:
        """Requests waiting (not counting the running one)."""
        return len(self._dispatcher.queue)

    @property
    def in_flight(self) -> int:
        """Requests out of the queue (running, or their results on the way) not yet answered."""
        return self._dispatcher.in_flight

    def stats(self) -> dict[str, Any]:
        """The runner's numbers since it was built, as plain values: what ``/metrics`` shows
        (:class:`gridgen.metrics.RunnerCollector`; each key is described in docs/operations.md)."""
        now = {"state": self.state, "ready": self.ready, "world_size": self.world_size}
        return {**now, "queue_size": self.queue_size, "in_flight": self.in_flight, **self._stats.as_dict()}

    def add_stats_listener(self, listener: Callable[[str, Mapping[str, str], float], None]) -> None:
        """Call ``listener(name, labels, value)`` for each count and observation that
        :meth:`stats` takes in, as it happens: for push exporters such as Ray's metrics."""
        self._stats.listeners.append(listener)

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' pids, by rank (empty before start)."""
        return self._supervisor.pids

    @property
    def control_dir(self) -> str | None:
        """The runner's private directory (control socket, rendezvous files); None when not started."""
        return self._control.dir

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> DistributedRunner[W]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, timeout: float | None = None, **setup_kwargs: Any) -> None:
        """Spawn the workers, initialise torch.distributed, run ``setup(**setup_kwargs)`` on every rank.

        Returns once every rank is ready. Raises :class:`StartupError` (with the failing
        rank and its traceback) or :class:`StartupTimeout`; every process is cleaned up first.
        After ``stop()`` or ``terminate()`` it starts a fresh group.
        """
        async with self._lifecycle:
            if self._phase == "stopping":
                await self._stopped.wait()
            if self._phase == "stopped":
                self._build_owners(self.setup_kwargs)
            if self._phase != "new":
                if setup_kwargs and setup_kwargs != self.setup_kwargs:
                    raise RuntimeError(
                        f"the runner is already {self.state}: setup arguments {sorted(setup_kwargs)} "
                        "would be ignored; pass them to the first start() (or setup_kwargs=), "
                        "or call restart() after changing runner.setup_kwargs"
                    )
                return
            if setup_kwargs:
                self.setup_kwargs = dict(setup_kwargs)
            self._phase = "starting"
            self._control.open(self._on_message)
            self._start_error = None
            try:
                await self._supervisor.start(self.options.start_timeout if timeout is None else timeout)
            except BaseException as exc:
                await self._control.close()
                self._supervisor.forget()
                self._phase = "new"
                if isinstance(exc, Exception):
                    self._start_error = exc
                raise
            self._dispatcher.start()
            self._phase = "running"
            devices = self.devices[0] if len(set(self.devices)) == 1 else ", ".join(self.devices)
            logger.info("runner ready: %d ranks on %s", self.world_size, devices)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop: queued requests fail with :class:`RunnerClosed`, the running one gets ``timeout``
        seconds (default ``stop_grace``) to finish, ranks run ``teardown``, then SIGTERM, then SIGKILL.

        Idempotent; also runs when leaving ``async with``.
        """
        await self._shut_down(self.options.stop_grace if timeout is None else timeout, graceful=True)

    async def terminate(self) -> None:
        """Kill the worker processes now (SIGTERM, then SIGKILL after a second), without ``teardown``.

        Queued requests fail with :class:`RunnerClosed`, the running one with
        :class:`RequestCancelled`. The runner is then stopped; ``start()`` starts it again.
        """
        await self._shut_down(0.0, graceful=False)

    async def _shut_down(self, grace: float, graceful: bool) -> None:
        if self._phase == "stopped":
            return
        if self._phase == "stopping":
            await self._stopped.wait()
            return
        if self._phase == "new":
            self._phase = "stopped"
            self._stopped.set()
            return
        self._phase = "stopping"
        supervisor = self._supervisor
        supervisor.close()
        await supervisor.cancel_restart()
        abandoned = await self._dispatcher.stop(grace)
        await supervisor.cancel_restart()  # one the dispatcher began before it saw the stop
        # Ranks still busy with an abandoned request cannot run teardown: go straight to SIGTERM.
        await supervisor.retire(graceful=graceful and not abandoned)
        await self._control.close()
        supervisor.forget()
        self._phase = "stopped"
        self._stopped.set()
        logger.info("runner stopped")

    async def drain(self, timeout: float | None = 30.0) -> int:
        """Refuse new requests (``state`` ``draining``, ``submit`` raises :class:`RunnerClosed`),
        let queued and running ones finish for ``timeout`` seconds (None: no limit), then cancel
        the rest with a :class:`RequestCancelled` naming the drain; returns how many. Then :meth:`stop`."""
        if self._phase != "running":
            return 0
        self._phase = "draining"
        logger.info("draining: %d queued, %d running", self.queue_size, self.in_flight)
        cancelled = await self._dispatcher.drain(timeout)
        logger.info("drained%s", f"; {cancelled} request(s) cancelled at the timeout" if cancelled else "")
        return cancelled

    async def restart(self, timeout: float | None = None) -> None:
        """Terminate the worker group and start a fresh one (``setup`` runs again).

        The running request, if any, fails with :class:`RequestCancelled`; queued ones stay queued.
        """
        if self._phase != "running":
            raise RunnerClosed(f"cannot restart a runner that is {self.state}")
        await self._supervisor.restart("restart() was called", timeout)

    def sync(self, **setup_kwargs: Any) -> SyncRunner:
        """A blocking facade for scripts and notebooks: ``with runner.sync() as r: r.invoke(...)``."""
        from ._sync import SyncRunner

        return SyncRunner(self, setup_kwargs)

    # -- requests ---------------------------------------------------------------------------

    def submit(
        self,
        payload: Mapping[str, Any] | Any,
        *,
        streaming: bool = False,
        timeout: float | None = None,
        trace_id: str | None = None,
    ) -> RequestHandle:
        """Queue a request and return its handle at once.

        ``trace_id``: the caller's id for the request (the server passes the HTTP
        ``x-request-id``), on the runner's log lines about it (``extra["request_id"]``).

        Raises :class:`RunnerClosed`, :class:`QueueFull`, ``TypeError`` for a value
        that cannot travel, or :class:`PayloadTooLarge`: all before anything is queued.
        """
        if self._phase in ("new", "starting"):
            error = RunnerClosed(
                "the runner is not running (not started): await runner.start() (or use `async with`)"
            )
            self._stats.rejected(error)
            raise error
        if self._phase in ("draining", "stopping", "stopped"):
            error = RunnerClosed(f"the runner is not running ({self._phase}): it has stopped taking requests")
            self._stats.rejected(error)
            raise error
        request = self._dispatcher.submit(payload, streaming=streaming, timeout=timeout, trace_id=trace_id)
        return RequestHandle(request, self._dispatcher.queue, self._dispatcher.cancel)

    async def invoke(self, payload: Mapping[str, Any] | Any = None, timeout: float | None = None) -> Any:
        """Run ``payload`` (default ``{}``) on every rank and return rank 0's return value.

        ``timeout`` limits the request, counted from submission. Raises :class:`WorkerError`
        (a rank raised), :class:`WorkerDiedError`, :class:`RequestTimeout`, :class:`QueueFull`
        or :class:`RunnerClosed`. Cancelling the awaiting task cancels the request on every rank.
        """
        return await self.submit({} if payload is None else payload, timeout=timeout).result()

    async def stream(
        self,
        payload: Mapping[str, Any] | Any = None,
        timeout: float | None = None,
        streaming_timeout: float | None = None,
        as_text_events: bool = False,
        *,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Yield every ``add_streaming_result`` item of this request as it is produced, then
        rank 0's return value. The arguments are fal's, in fal's order.

        ``timeout`` limits the request (from submission); ``streaming_timeout`` (fal's name)
        or ``idle_timeout`` the wait between two items. With ``as_text_events=True`` each
        item is server-sent-event bytes ``b"data: {json}\\n\\n"``, images and arrays in
        fal's JSON shapes, and an error ends the stream with a last event
        ``data: {"error": {"type", "message", "rank"}}`` instead of raising, so an HTTP
        client gets a complete response. Leaving the loop early cancels the request.
        """
        if streaming_timeout is not None and idle_timeout is not None:
            raise ValueError("streaming_timeout (fal's name) and idle_timeout are one limit: give one of them")
        idle = streaming_timeout if streaming_timeout is not None else idle_timeout
        items = self._items(payload, timeout, idle)
        items = text_events(items) if as_text_events else items
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()

    async def _items(self, payload: Any, timeout: float | None, idle: float | None) -> AsyncGenerator[Any, None]:
        handle = self.submit({} if payload is None else payload, streaming=True, timeout=timeout)
        events = handle.events(idle_timeout=self.options.stream_idle_timeout if idle is None else idle)
        try:
            async for item in events:
                yield item
        finally:
            await events.aclose()

    # -- health -------------------------------------------------------------------------------

    def is_alive(self) -> bool:
        """True while the runner is started, its group ready and every worker process alive."""
        supervisor = self._supervisor
        return self._phase == "running" and supervisor.health == "ready" and supervisor.dead_rank() is None

    def ensure_alive(self) -> None:
        """Return if :meth:`is_alive`, else raise why not: the :class:`WorkerDiedError` of a
        rank whose process died, or :class:`RunnerClosed` (not started, restarting, stopped)."""
        if self.is_alive():
            return
        death = self._death()
        if death is not None:
            raise death
        raise RunnerClosed(f"the runner is not running (it is {self.state})")

    def gather_errors(self) -> list[Exception]:
        """The errors that left the runner unusable: the failed ``start()``'s, a dead rank's.

        Empty while it is healthy (the errors of single requests went to their callers).
        """
        return [error for error in (self._start_error, self._death()) if error is not None]

    def _death(self) -> Exception | None:
        """Why the running group is unusable, if a rank died: its error, or which rank."""
        if self._phase != "running":
            return None
        dead = self._supervisor.dead_rank()
        return self._supervisor.dead_error or (WorkerDiedError(*dead) if dead is not None else None)

    # -- internals ------------------------------------------------------------------------

    def _on_message(self, rank: int, message: Message) -> None:
        if message.kind is Kind.HELLO:
            pid = message.data.get("pid") if isinstance(message.data, dict) else None
            logger.debug("rank %d connected (pid %s)", rank, pid)
        elif message.kind in (Kind.READY, Kind.SETUP_ERROR):
            self._supervisor.on_message(rank, message)
        else:
            self._dispatcher.on_message(rank, message)

    @property
    def _current(self) -> Any:
        """The running request (or None); tests wait on it to act while a request runs."""
        return self._dispatcher.current

    def _on_group_lost(self, error: Any) -> None:
        self._dispatcher.fail_unfinished(error)

    def _kill_now(self) -> None:
        self._supervisor.kill_now()

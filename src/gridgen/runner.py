"""``DistributedRunner``: starts one worker process per rank and runs requests on them.

A request's life: ``submit`` encodes the payload (so bad values fail in the
caller, before anything is queued) and puts it on a bounded FIFO queue; one
dispatcher task sends each request to every rank directly and waits until
every rank has reported; stream items are routed by request id to that
request's buffer only. Time limits count from submission.

Recovery rules (the reason for each timeout is in its docstring below):

* a rank raises -> the caller gets :class:`WorkerError` at once, the other
  ranks are told to cancel, and if they have not all reported within
  ``error_grace`` seconds they are assumed stuck in a collective: the group
  is terminated and respawned (``setup`` runs again) before the next request;
* a cancelled or timed-out running request whose ranks do not stop within
  ``cancel_grace`` seconds: the group is rebuilt the same way;
* a worker process dies -> the running request and every later one fail with
  :class:`WorkerDiedError` until ``restart()`` (or at once with ``auto_restart``).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import hmac
import itertools
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import zmq
import zmq.asyncio

from . import _channel as ch
from ._codec import decode, encode, text_event
from ._process import WorkerGroup, resolve_devices
from ._worker_process import WorkerSpec
from .errors import (
    GridgenError,
    QueueFull,
    RequestCancelled,
    RequestTimeout,
    RunnerClosed,
    StartupError,
    StartupTimeout,
    WorkerDiedError,
    WorkerError,
)
from .worker import DistributedWorker

if TYPE_CHECKING:
    from ._sync import SyncRunner

__all__ = ["DistributedRunner", "RequestHandle"]

logger = logging.getLogger("gridgen.runner")

W = TypeVar("W", bound=DistributedWorker)

_DEATH_GRACE = 0.2  # seconds a rank's error waits for news of another rank's death

# Strong references: a started runner owns live processes until stop(), even when the
# caller dropped it (a script that raised); a weak set let it vanish before atexit.
_live_runners: set[DistributedRunner[Any]] = set()


# Ordering hazard: atexit runs hooks last-in, first-out, and multiprocessing.util registers
# a hook that joins every child process (forever, for workers a forgotten runner never
# stopped) when it is first imported, which would otherwise happen at the first spawn,
# after ours. Import it now so that our hook, registered below, runs first.
import multiprocessing.util  # noqa: E402,F401


@atexit.register
def _kill_leftovers() -> None:
    for runner in list(_live_runners):
        runner._kill_now()


class _Request:
    """The host's record of one request."""

    def __init__(
        self,
        request_id: int,
        frame: bytes,
        streaming: bool,
        deadline: float | None,
        buffer: int,
        loop: asyncio.AbstractEventLoop,
        internal: bool = False,
    ) -> None:
        self.id = request_id
        self.frame = frame
        self.streaming = streaming
        self.deadline = deadline
        self.internal = internal
        self.future: asyncio.Future[Any] = loop.create_future()
        self.items: collections.deque[Any] = collections.deque(maxlen=buffer)
        self.dropped = 0
        self.wake = asyncio.Event()  # the consumer: a new item or the end
        self.changed = asyncio.Event()  # the dispatcher: a rank reported, a cancel was sent
        self.settled = False  # every rank has finished with it (or the group is gone)
        self.status = "queued"
        self.reported: set[int] = set()  # ranks whose final answer (done/error/cancelled) came
        self.released: set[int] = set()  # ranks free for the next request (answered or released)
        self.result: Any = None
        self.first_error_at: float | None = None
        self.collective_failed = False  # a rank's error escaped from a torch.distributed call
        self.first_error: WorkerError | None = None
        self.cancel_at: float | None = None
        # The caller may have stopped waiting (cancelled, timed out): mark errors as seen.
        self.future.add_done_callback(_consume_exception)

    def push(self, item: Any) -> None:
        if len(self.items) == self.items.maxlen:
            # A slow consumer: keep the newest previews, drop the oldest. Final results
            # never go through this buffer, so they are never dropped.
            self.dropped += 1
        self.items.append(item)
        self.wake.set()

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if not self.future.done():
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)
        self.wake.set()

    def settle(self) -> None:
        self.settled = True
        self.status = "done"
        self.changed.set()
        self.wake.set()


def _failed_in_collective(info: Mapping[str, Any]) -> bool:
    """True when a remote exception escaped from a torch.distributed call (its innermost
    frame is there): that collective was aborted (timed out, peer gone), so the ranks'
    collectives are out of step and every later one fails until the group is rebuilt."""
    files = re.findall(r'^\s*File "([^"]+)"', str(info.get("traceback", "")), re.MULTILINE)
    return bool(files) and "torch/distributed/" in files[-1].replace("\\", "/")


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class RequestHandle:
    """A submitted request: its queue position, its streamed items, its result, and cancel."""

    def __init__(self, runner: DistributedRunner[Any], request: _Request) -> None:
        self._runner = runner
        self._request = request

    @property
    def id(self) -> int:
        """The request's id, unique within this runner (workers see it as ``request_id``)."""
        return self._request.id

    @property
    def status(self) -> str:
        """``"queued"``, ``"running"`` or ``"done"``."""
        return self._request.status

    @property
    def position(self) -> int | None:
        """How many requests wait ahead of this one (0: it runs next); None once running or done."""
        return self._runner._position(self._request)

    @property
    def dropped_items(self) -> int:
        """Streamed items dropped because the consumer fell more than ``stream_buffer`` behind."""
        return self._request.dropped

    def done(self) -> bool:
        """True once the request has a result or an error."""
        return self._request.future.done()

    def cancel(self) -> None:
        """Drop the request if queued; if running, send a cancel to every rank."""
        self._runner._cancel(self._request, RequestCancelled("request cancelled by the caller"))

    def _remaining(self) -> float | None:
        if self._request.deadline is None:
            return None
        return self._request.deadline - asyncio.get_running_loop().time()

    def _timed_out(self) -> RequestTimeout:
        error = RequestTimeout(f"request {self.id} passed its time limit (counted from submission)")
        self._runner._cancel(self._request, error)
        return error

    async def result(self) -> Any:
        """Wait for rank 0's return value; raise the request's error."""
        future = self._request.future
        try:
            done, _ = await asyncio.wait({future}, timeout=self._remaining())
        except asyncio.CancelledError:
            self.cancel()
            raise
        if not done:
            raise self._timed_out()
        return future.result()

    async def events(self, idle_timeout: float | None = None) -> AsyncGenerator[Any, None]:
        """Yield each streamed item as it arrives, then the final result.

        ``idle_timeout`` limits the wait between two items. Leaving the loop early
        cancels the request.
        """
        request = self._request
        loop = asyncio.get_running_loop()
        try:
            while True:
                if request.items:
                    yield request.items.popleft()
                    continue
                if request.future.done():
                    yield request.future.result()
                    return
                request.wake.clear()
                limits = [t for t in (self._remaining(), idle_timeout) if t is not None]
                timeout = min(limits) if limits else None
                started = loop.time()
                try:
                    await asyncio.wait_for(request.wake.wait(), timeout)
                except TimeoutError:
                    remaining = self._remaining()
                    if remaining is not None and remaining <= 0:
                        raise self._timed_out() from None
                    error = RequestTimeout(
                        f"request {self.id}: no stream item for {loop.time() - started:.1f}s (idle_timeout={idle_timeout})"
                    )
                    self._runner._cancel(request, error)
                    raise error from None
        finally:
            if not request.future.done():
                self.cancel()


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
    """

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
        collective_timeout: float = 600.0,
        stop_grace: float = 30.0,
        start_timeout: float | None = None,
        prefix_output: bool = True,
    ) -> None:
        if not (isinstance(worker_cls, type) and issubclass(worker_cls, DistributedWorker)):
            raise TypeError(f"worker_cls must be a DistributedWorker subclass, got {worker_cls!r}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        if stream_buffer < 1:
            raise ValueError(f"stream_buffer must be >= 1, got {stream_buffer}")
        if (keepalive_payload is None) != (keepalive_interval is None):
            raise ValueError("keepalive_payload and keepalive_interval go together")
        if keepalive_interval is not None and keepalive_interval <= 0:
            raise ValueError(f"keepalive_interval must be > 0, got {keepalive_interval}")
        self.worker_cls = worker_cls
        self.devices, self.backend = resolve_devices(world_size, device, devices)
        self.world_size = len(self.devices)
        self.setup_kwargs: dict[str, Any] = dict(setup_kwargs or {})
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.error_grace = error_grace
        self.cancel_grace = cancel_grace
        self.auto_restart = auto_restart
        self.keepalive_interval = keepalive_interval
        self.max_message_bytes = max_message_bytes
        self.stream_buffer = stream_buffer
        self.collective_timeout = collective_timeout
        self.stop_grace = stop_grace
        self.start_timeout = start_timeout
        self.prefix_output = prefix_output
        self._keepalive_payload = None if keepalive_payload is None else self._normalize(keepalive_payload)

        self._state = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dir: str | None = None
        self._address = ""
        self._key = secrets.token_bytes(ch.SESSION_KEY_BYTES)
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._group: WorkerGroup | None = None
        self._generation = 0  # +1 per spawned and per retired group: not a restart count
        self._restarts = 0
        self._members: dict[bytes, tuple[int, int]] = {}
        self._ready_ranks: set[int] = set()
        self._startup: asyncio.Future[None] | None = None
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_wake = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._requests: dict[int, _Request] = {}
        self._current: _Request | None = None
        self._ids = itertools.count(1)
        self._dead: GridgenError | None = None
        self._reader: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._restarting: asyncio.Future[None] | None = None
        self._lifecycle = asyncio.Lock()
        self._background: set[asyncio.Future[None]] = set()
        self._stopped = asyncio.Event()

    # -- public state ---------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``ready``, ``restarting``, ``dead`` (a worker died), ``stopping`` or ``stopped``."""
        return self._state

    @property
    def ready(self) -> bool:
        """True when every rank is started and healthy and requests run."""
        return self._state == "ready"

    @property
    def queue_size(self) -> int:
        """Requests waiting (not counting the running one)."""
        return len(self._queue)

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' pids, by rank (empty before start)."""
        return self._group.pids if self._group is not None else []

    @property
    def control_dir(self) -> str | None:
        """The runner's private directory (control socket, rendezvous files); None when not started."""
        return self._dir

    def _set_state(self, state: str) -> None:
        self._state = state
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> DistributedRunner[W]:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, timeout: float | None = None, **setup_kwargs: Any) -> None:
        """Spawn the workers, initialise torch.distributed, run ``setup(**setup_kwargs)`` on every rank.

        Returns once every rank is ready. Raises :class:`StartupError` (with the failing
        rank and its traceback) or :class:`StartupTimeout`; every process is cleaned up first.
        """
        async with self._lifecycle:
            if self._state in ("stopping", "stopped"):
                raise RunnerClosed("this runner was stopped; create a new DistributedRunner")
            if self._state != "new":
                if setup_kwargs and setup_kwargs != self.setup_kwargs:
                    raise RuntimeError(
                        f"the runner is already {self._state}: setup arguments {sorted(setup_kwargs)} "
                        "would be ignored; pass them to the first start() (or setup_kwargs=), "
                        "or call restart() after changing runner.setup_kwargs"
                    )
                return
            if setup_kwargs:
                self.setup_kwargs = dict(setup_kwargs)
            self._loop = asyncio.get_running_loop()
            self._set_state("starting")
            self._dir = tempfile.mkdtemp(prefix="gridgen-")  # mode 0700
            self._address = f"ipc://{self._dir}/control"
            self._ctx = zmq.asyncio.Context()
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes + 1024)
            router.bind(self._address)
            os.chmod(os.path.join(self._dir, "control"), 0o600)
            self._router = router
            _live_runners.add(self)
            self._reader = asyncio.create_task(self._read_loop(), name="gridgen-reader")
            try:
                await self._spawn_group(self.start_timeout if timeout is None else timeout)
            except BaseException:
                await self._close_transport()
                self._set_state("new")
                raise
            self._dispatcher = asyncio.create_task(self._dispatch_loop(), name="gridgen-dispatcher")
            self._set_state("ready")
            logger.info("runner ready: %d ranks on %s", self.world_size, ", ".join(self.devices))

    async def stop(self, timeout: float | None = None) -> None:
        """Stop: queued requests fail with :class:`RunnerClosed`, the running one gets ``timeout``
        seconds (default ``stop_grace``) to finish, ranks run ``teardown``, then SIGTERM, then SIGKILL.

        Idempotent; also runs when leaving ``async with``.
        """
        if self._state == "stopped":
            return
        if self._state == "stopping":
            await self._stopped.wait()
            return
        if self._state == "new":
            self._set_state("stopped")
            self._stopped.set()
            return
        grace = self.stop_grace if timeout is None else timeout
        self._set_state("stopping")
        while self._queue:
            self._queue.popleft().finish(error=RunnerClosed("the runner stopped before this request ran"))
        self._queue_wake.set()
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(BaseException):
                await self._restarting
        abandoned = False
        if self._dispatcher is not None:
            done, _ = await asyncio.wait({self._dispatcher}, timeout=grace)
            if not done:
                current = self._current
                if current is not None:
                    logger.warning("stop(): request %d still running after %.1fs; abandoning it", current.id, grace)
                    current.finish(error=RequestCancelled("the runner stopped while this request ran"))
                    abandoned = True
                self._dispatcher.cancel()
                with contextlib.suppress(BaseException):
                    await self._dispatcher
        if self._restarting is not None and not self._restarting.done():
            # a restart the dispatcher began before it saw the stop
            self._restarting.cancel()
            with contextlib.suppress(BaseException):
                await self._restarting
        pending = [r.future for r in self._requests.values() if r.status != "queued" and not r.future.done()]
        if pending and not abandoned:
            # deferred results (e.g. images being encoded) still on their way
            await asyncio.wait(pending, timeout=grace)
        self._fail_unfinished(RequestCancelled("the runner stopped before this result arrived"))
        # Ranks still busy with an abandoned request cannot run teardown: go straight to SIGTERM.
        await self._retire_group(graceful=not abandoned)
        await self._close_transport()
        self._set_state("stopped")
        self._stopped.set()
        logger.info("runner stopped")

    async def restart(self, timeout: float | None = None) -> None:
        """Terminate the worker group and start a fresh one (``setup`` runs again).

        The running request, if any, fails with :class:`RequestCancelled`; queued ones stay queued.
        """
        if self._state in ("new", "stopping", "stopped"):
            raise RunnerClosed(f"cannot restart a runner that is {self._state}")
        await self._restart_group("restart() was called", timeout)

    def sync(self, **setup_kwargs: Any) -> SyncRunner:
        """A blocking facade for scripts and notebooks: ``with runner.sync() as r: r.invoke(...)``."""
        from ._sync import SyncRunner

        return SyncRunner(self, setup_kwargs)

    # -- requests -----------------------------------------------------------------

    def submit(
        self, payload: Mapping[str, Any] | Any, *, streaming: bool = False, timeout: float | None = None
    ) -> RequestHandle:
        """Queue a request and return its handle at once.

        Raises :class:`RunnerClosed`, :class:`QueueFull`, ``TypeError`` for a value
        that cannot travel, or :class:`PayloadTooLarge`: all before anything is queued.
        """
        self._check_open()
        if len(self._queue) >= self.max_queue and not (self.max_queue == 0 and self._current is None):
            raise QueueFull(f"the queue already holds {len(self._queue)} waiting requests (max_queue={self.max_queue})")
        payload = self._normalize(payload)
        request_id = next(self._ids)
        frame = encode([ch.CALL, request_id, [streaming, payload]], max_bytes=self.max_message_bytes)
        loop = asyncio.get_running_loop()
        limit = self.request_timeout if timeout is None else timeout
        deadline = None if limit is None else loop.time() + limit
        request = _Request(request_id, frame, streaming, deadline, self.stream_buffer, loop)
        self._queue.append(request)
        self._requests[request_id] = request
        request.future.add_done_callback(lambda _: self._queue_wake.set())
        self._queue_wake.set()
        return RequestHandle(self, request)

    async def invoke(self, payload: Mapping[str, Any] | Any, *, timeout: float | None = None) -> Any:
        """Run ``payload`` on every rank and return rank 0's return value.

        Raises :class:`WorkerError` (a rank raised), :class:`WorkerDiedError`,
        :class:`RequestTimeout`, :class:`QueueFull` or :class:`RunnerClosed`.
        Cancelling the awaiting task cancels the request on every rank.
        """
        return await self.submit(payload, timeout=timeout).result()

    async def stream(
        self,
        payload: Mapping[str, Any] | Any,
        *,
        as_text_events: bool = False,
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Yield every ``add_streaming_result`` item of this request as it is produced, then
        rank 0's return value.

        With ``as_text_events=True`` each item is server-sent-event bytes
        ``b"data: {json}\\n\\n"`` with images as ``data:image/...;base64,`` URLs.
        Leaving the loop early cancels the request on every rank.
        """
        handle = self.submit(payload, streaming=True, timeout=timeout)
        idle = self.stream_idle_timeout if idle_timeout is None else idle_timeout
        events = handle.events(idle_timeout=idle)
        try:
            async for item in events:
                yield text_event(item) if as_text_events else item
        finally:
            await events.aclose()

    # -- internals: requests ------------------------------------------------------

    def _check_open(self) -> None:
        if self._state in ("new", "starting"):
            raise RunnerClosed("the runner is not started: await runner.start() (or use `async with`)")
        if self._state in ("stopping", "stopped"):
            raise RunnerClosed("the runner is stopped and takes no more requests")

    @staticmethod
    def _normalize(payload: Any) -> dict[str, Any]:
        if hasattr(payload, "model_dump") and not isinstance(payload, Mapping):
            payload = payload.model_dump()
        if not isinstance(payload, Mapping):
            raise TypeError(f"payload must be a dict of keyword arguments, got {type(payload).__name__}")
        for key in payload:
            if not isinstance(key, str):
                raise TypeError(f"payload keys must be str (they become keyword arguments), got {key!r}")
        if "streaming" in payload:
            raise ValueError("payload key 'streaming' is reserved: use runner.stream() to stream")
        return dict(payload)

    def _position(self, request: _Request) -> int | None:
        if request.status != "queued":
            return None
        try:
            return self._queue.index(request)
        except ValueError:
            return None

    def _send(self, rank: int, frame: bytes, generation: int | None = None) -> None:
        assert self._router is not None and self._group is not None
        identity = ch.routing_id(self._group.generation if generation is None else generation, rank)
        # zmq.asyncio reports a failed send (ROUTER_MANDATORY: the peer is gone) through the future.
        sent: asyncio.Future[Any] = self._router.send_multipart([identity, frame], flags=zmq.NOBLOCK)  # type: ignore[assignment]
        sent.add_done_callback(lambda f: self._log_send_failure(rank, f))

    @staticmethod
    def _log_send_failure(rank: int, sent: asyncio.Future[Any]) -> None:
        if not sent.cancelled() and sent.exception() is not None:
            # The rank's connection is gone; its sentinel reports the death.
            logger.warning("could not send to rank %d: %s", rank, sent.exception(), extra={"rank": rank})

    def _broadcast(self, frame: bytes) -> None:
        for rank in range(self.world_size):
            self._send(rank, frame)

    def _cancel(self, request: _Request, error: BaseException) -> None:
        """Cancel a request: drop it if queued, else tell every rank. The caller gets ``error``."""
        if request.status == "queued":
            with contextlib.suppress(ValueError):
                self._queue.remove(request)
            self._requests.pop(request.id, None)
            request.finish(error=error)
            request.settle()
            return
        if request.settled:
            # Every rank is free already; only a deferred result was due: stop waiting for it.
            request.finish(error=error)
            self._requests.pop(request.id, None)
            return
        if request.status == "running" and request.cancel_at is None:
            assert self._loop is not None
            request.cancel_at = self._loop.time()
            request.finish(error=error)
            self._broadcast(encode([ch.CANCEL, request.id, None]))
            request.changed.set()
            logger.info("request %d cancelled: %s", request.id, error)

    async def _dispatch_loop(self) -> None:
        while True:
            request = await self._next_request()
            if request is None:
                return
            if request.future.done() and not request.internal:
                continue  # cancelled while waiting its turn
            if not await self._await_healthy(request):
                continue
            await self._run(request)

    async def _next_request(self) -> _Request | None:
        while not self._queue:
            if self._state in ("stopping", "stopped"):
                return None
            self._queue_wake.clear()
            if self._keepalive_payload is not None and self._state == "ready":
                try:
                    await asyncio.wait_for(self._queue_wake.wait(), self.keepalive_interval)
                except TimeoutError:
                    await self._keepalive()
            else:
                await self._queue_wake.wait()
        return self._queue.popleft()

    async def _await_healthy(self, request: _Request) -> bool:
        """Wait out a restart; fail the request if the group is dead or the runner stopping."""
        while self._state != "ready":
            if self._state in ("stopping", "stopped"):
                request.finish(error=RunnerClosed("the runner stopped before this request ran"))
                return False
            if self._state == "dead":
                assert self._dead is not None
                request.finish(error=self._dead)
                return False
            await self._state_changed.wait()
            if request.future.done():
                return False
        return True

    async def _keepalive(self) -> None:
        assert self._keepalive_payload is not None and self._loop is not None
        request_id = next(self._ids)
        frame = encode([ch.CALL, request_id, [False, self._keepalive_payload]], max_bytes=self.max_message_bytes)
        request = _Request(request_id, frame, False, None, 1, self._loop, internal=True)
        self._requests[request_id] = request
        logger.debug("keepalive request %d", request_id)
        await self._run(request)

    async def _run(self, request: _Request) -> None:
        assert self._loop is not None
        request.status = "running"
        self._current = request
        try:
            self._broadcast(request.frame)
            while not request.settled:
                now = self._loop.time()
                timeout = None
                if request.first_error_at is not None:
                    timeout = request.first_error_at + self.error_grace - now
                elif request.cancel_at is not None:
                    timeout = request.cancel_at + self.cancel_grace - now
                request.changed.clear()
                try:
                    await asyncio.wait_for(request.changed.wait(), timeout)
                except TimeoutError:
                    stuck = sorted(set(range(self.world_size)) - request.released)
                    why = "a rank raised" if request.first_error_at is not None else "the request was cancelled"
                    logger.warning(
                        "request %d: %s and ranks %s did not finish within %.1fs; rebuilding the group",
                        request.id, why, stuck,
                        self.error_grace if request.first_error_at is not None else self.cancel_grace,
                    )
                    with contextlib.suppress(GridgenError):  # a failed restart leaves the runner "dead"
                        await self._restart_group(f"ranks {stuck} stuck after {why}", None)
                    break
            else:
                if request.collective_failed and self._state == "ready":
                    # Every rank answered, but a collective was aborted (e.g. it timed out
                    # before error_grace ran out): the group is poisoned all the same.
                    with contextlib.suppress(GridgenError):
                        await self._restart_group(f"a collective failed during request {request.id}", None)
        finally:
            self._current = None
            if request.future.done():
                self._requests.pop(request.id, None)

    # -- internals: messages ------------------------------------------------------

    async def _read_loop(self) -> None:
        assert self._router is not None
        router = self._router
        while True:
            try:
                frames = await router.recv_multipart()
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            if len(frames) != 3:
                logger.warning("dropped a control message with %d frames", len(frames))
                continue
            identity, key, body = frames
            if not hmac.compare_digest(key, self._key):
                logger.warning("dropped a control message without the session key (from %r)", identity[:32])
                continue
            member = self._members.get(identity)
            if member is None or member[0] != self._generation:
                continue  # a rank of a group that was already replaced
            try:
                kind, request_id, data = ch.parse_body(decode(body, max_bytes=self.max_message_bytes), ch.WORKER_KINDS)
            except ValueError as exc:
                logger.warning("dropped a malformed message from rank %d: %s", member[1], exc)
                continue
            try:
                self._on_message(member[1], kind, request_id, data)
            except Exception:
                logger.exception("error handling %s from rank %d", kind, member[1])

    def _on_message(self, rank: int, kind: str, request_id: int, data: Any) -> None:
        if kind == ch.HELLO:
            logger.debug("rank %d connected (pid %s)", rank, data.get("pid") if isinstance(data, dict) else None)
            return
        if kind in (ch.READY, ch.SETUP_ERROR):
            self._on_startup_message(rank, kind, data)
            return
        request = self._requests.get(request_id)
        if request is None:
            return
        if kind == ch.ITEM:
            if request.streaming and not request.future.done():
                request.push(data)
            return
        if kind == ch.RELEASED:
            request.released.add(rank)
            self._settle_if_free(request)
            return
        if rank in request.reported:
            return
        request.reported.add(rank)
        request.released.add(rank)
        if kind == ch.DONE:
            if rank == 0:
                request.result = data
        elif kind == ch.ERROR:
            info = data if isinstance(data, dict) else {"type": "Exception", "message": str(data)}
            error = WorkerError.from_remote(rank, info)
            request.first_error = request.first_error or error
            request.collective_failed = request.collective_failed or _failed_in_collective(info)
            logger.error("request %d failed on rank %d: %s", request.id, rank, error.remote_message, extra={"rank": rank})
            if request.first_error_at is None:
                assert self._loop is not None
                request.first_error_at = self._loop.time()
                if len(request.released) < self.world_size:
                    # Cooperative ranks stop early; stuck ones are handled by error_grace.
                    self._broadcast(encode([ch.CANCEL, request.id, None]))
                    # A rank's error is often the echo of another rank's death (gloo reports
                    # "connection reset" before the dead process's sentinel fires): give the
                    # sentinel a moment so the caller learns the cause, not the symptom.
                    self._loop.call_later(_DEATH_GRACE, self._surface_error, request, error)
                else:
                    request.finish(error=error)
        if len(request.reported) == self.world_size:
            if request.first_error_at is not None and not request.future.done():
                request.finish(error=request.first_error)
            elif request.first_error_at is None and request.cancel_at is None:
                request.finish(result=request.result)
            elif not request.future.done():
                request.finish(error=RequestCancelled("request cancelled"))
            self._requests.pop(request.id, None)
        self._settle_if_free(request)

    def _surface_error(self, request: _Request, error: WorkerError) -> None:
        if request.future.done():
            return
        group = self._group
        if group is not None:
            for rank, process in enumerate(group.processes):
                if not process.is_alive():  # reaps it: the exit code is known now
                    request.finish(error=WorkerDiedError(rank, process.exitcode, f"{error.remote_type} on rank {error.rank} followed"))
                    return
        request.finish(error=error)

    def _settle_if_free(self, request: _Request) -> None:
        """Once every rank is free, the group may take the next request (results may still come)."""
        if not request.settled and len(request.released) == self.world_size:
            request.settle()
        request.changed.set()

    def _fail_unfinished(self, error: GridgenError) -> None:
        """Fail the running request and those whose deferred results are still due."""
        for request in list(self._requests.values()):
            if request.status != "queued" and not request.future.done():
                request.finish(error=error)
            if request.status != "queued":
                if not request.settled:
                    request.settle()
                self._requests.pop(request.id, None)

    # -- internals: the worker group -------------------------------------------

    def _on_startup_message(self, rank: int, kind: str, data: Any) -> None:
        startup = self._startup
        if startup is None or startup.done():
            return
        if kind == ch.SETUP_ERROR:
            info = data if isinstance(data, dict) else {"message": str(data)}
            startup.set_exception(StartupError.from_remote(rank, info, during="setup"))
            return
        self._ready_ranks.add(rank)
        if len(self._ready_ranks) == self.world_size:
            startup.set_result(None)

    async def _spawn_group(self, timeout: float | None) -> None:
        assert self._loop is not None and self._dir is not None
        self._generation += 1
        generation = self._generation
        specs = [
            WorkerSpec(
                worker_cls=self.worker_cls,
                rank=rank,
                world_size=self.world_size,
                device=device,
                backend=self.backend,
                address=self._address,
                session_key=self._key,
                generation=generation,
                store_path=os.path.join(self._dir, f"store-{generation}"),
                runner_dir=self._dir,
                setup_kwargs=self.setup_kwargs,
                collective_timeout=self.collective_timeout,
                max_message_bytes=self.max_message_bytes,
                log_level=logging.getLogger("gridgen").getEffectiveLevel(),
                prefix_output=self.prefix_output,
            )
            for rank, device in enumerate(self.devices)
        ]
        group = WorkerGroup(specs)
        self._members = {ch.routing_id(generation, rank): (generation, rank) for rank in range(self.world_size)}
        self._ready_ranks = set()
        self._startup = self._loop.create_future()
        self._group = group
        try:
            group.spawn()
        except Exception as exc:
            await group.terminate(grace=1.0)
            raise StartupError(f"could not start the worker processes: {exc}", rank=None) from exc
        group.watch(self._loop, lambda rank, code: self._on_exit(generation, rank, code))
        try:
            await asyncio.wait_for(asyncio.shield(self._startup), timeout)
        except TimeoutError:
            waiting = sorted(set(range(self.world_size)) - self._ready_ranks)
            await self._kill_group(group)
            raise StartupTimeout(
                f"ranks {waiting} were not ready after {timeout}s (setup still running or stuck)", rank=waiting[0]
            ) from None
        except BaseException:
            await self._kill_group(group)
            raise
        finally:
            self._startup = None

    def _on_exit(self, generation: int, rank: int, exitcode: int | None) -> None:
        if generation != self._generation or self._state in ("stopping", "stopped"):
            return
        error = WorkerDiedError(rank, exitcode)
        logger.error("%s", error, extra={"rank": rank})
        if self._startup is not None and not self._startup.done():
            self._startup.set_exception(
                StartupError(f"rank {rank} died during startup: {error}", rank=rank)
            )
            return
        if self._state == "restarting":
            return
        self._fail_unfinished(error)
        self._dead = error
        group = self._group
        if group is not None and self._loop is not None:
            group.unwatch(self._loop)
            # The other ranks are likely stuck in a collective with the dead one.
            reaper = asyncio.ensure_future(group.terminate(grace=1.0))
            self._background.add(reaper)
            reaper.add_done_callback(self._background.discard)
        if self.auto_restart:
            self._begin_restart(str(error), None)
        else:
            self._set_state("dead")

    def _begin_restart(self, why: str, timeout: float | None) -> asyncio.Future[None]:
        """Start a restart unless one is under way; either way return the one running."""
        if self._state in ("stopping", "stopped"):
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(RunnerClosed("the runner is stopping; no restart"))
            refused.add_done_callback(_consume_exception)
            return refused
        if self._restarting is None or self._restarting.done():
            self._set_state("restarting")
            task = asyncio.ensure_future(self._do_restart(why, timeout))
            task.add_done_callback(_consume_exception)
            self._restarting = task
        return self._restarting

    async def _restart_group(self, why: str, timeout: float | None) -> None:
        await asyncio.shield(self._begin_restart(why, timeout))

    async def _do_restart(self, why: str, timeout: float | None) -> None:
        logger.warning("restarting the worker group: %s", why)
        self._set_state("restarting")
        # Requests that already failed (the error that led here) keep their error.
        self._fail_unfinished(RequestCancelled(f"the worker group was restarted: {why}"))
        await self._retire_group(graceful=False)
        try:
            await self._spawn_group(self.start_timeout if timeout is None else timeout)
        except BaseException as exc:
            if isinstance(exc, GridgenError):
                self._dead = exc
            else:
                self._dead = StartupError(f"restart failed: {exc!r}", rank=None)
            if self._state == "restarting":
                self._set_state("dead")
            raise
        self._dead = None
        if self._state == "restarting":
            self._set_state("ready")
        self._restarts += 1
        logger.warning("worker group restarted (restart %d)", self._restarts)

    async def _retire_group(self, graceful: bool) -> None:
        """End the current group: ask nicely (shutdown -> teardown) if ``graceful``, then terminate."""
        group = self._group
        if group is None:
            return
        self._generation += 1  # messages and exits from the old group are ignored from now on
        if self._loop is not None:
            group.unwatch(self._loop)
        if graceful and self._router is not None:
            frame = encode([ch.SHUTDOWN, 0, None])
            for rank in range(len(group.processes)):
                self._send(rank, frame, generation=group.generation)
            if await group.wait_exit(10.0):
                self._group = None
                return
        await group.terminate(grace=3.0 if graceful else 1.0)
        self._group = None

    async def _kill_group(self, group: WorkerGroup) -> None:
        if self._loop is not None:
            group.unwatch(self._loop)
        await group.terminate(grace=1.0)
        if self._group is group:
            self._group = None

    async def _close_transport(self) -> None:
        for task in (self._reader,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._reader = None
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        _live_runners.discard(self)

    def _kill_now(self) -> None:
        if self._group is not None:
            self._group.kill_now()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

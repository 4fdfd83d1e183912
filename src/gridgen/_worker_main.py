"""What runs inside each worker process: the entry point the host spawns.

The user's worker object sees the runtime only through its :class:`~gridgen.worker.WorkerContext`
(the running request's id, the cancel flag, the stream sink, the CPU control group).

Two threads:

* the **main thread** runs user code (``setup``, ``__call__``, ``teardown``)
  after ``torch.cuda.set_device`` on that same thread;
* the **I/O thread** owns the DEALER socket (ZeroMQ sockets are not
  thread-safe): it receives commands, forwards outgoing frames that the main
  thread hands it over an ``inproc`` PAIR socket, sets the cancel flag, and
  watches the host's death through ``multiprocessing.parent_process().sentinel``
  (readable once the host is gone, however it died).

Nothing here sleeps to poll: both threads block on ``zmq.Poller`` or a queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import shutil
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import zmq

from . import worker as worker_module
from ._batch import Batch, BatchItem
from ._protocol import HOST_KINDS, ErrorInfo, Kind, Message, pack, parse, routing_id
from ._worker_logging import configure_logging, drain_output, prefix_output
from .errors import Cancelled
from .worker import DistributedWorker, WorkerContext, declared_batch_sizes

if TYPE_CHECKING:
    from ._worker_start import HostStart
    from .images import ImageFormat

logger = logging.getLogger("gridgen.worker")


@dataclass
class WorkerSpec:
    """Everything a worker process needs; sent over the private spawn pipe (pickle is fine there)."""

    worker_cls: type[DistributedWorker]
    rank: int
    world_size: int
    device: str
    backend: str
    address: str
    session_key: bytes
    generation: int
    store_path: str
    runner_dir: str
    setup_kwargs: dict[str, Any] = field(default_factory=dict)
    collective_timeout: float = 600.0
    max_message_bytes: int | None = None
    log_level: int = logging.WARNING
    prefix_output: bool = True
    cwd: str | None = None  # the workers' working directory (fal's cwd=)
    set_device: bool = True  # torch.cuda.set_device before setup (fal's set_device=)


_OUT_HWM = 16  # frames queued per hop on the way out (main thread -> I/O thread -> host)
_HOST_DEAD_EXIT = 70  # exit code when the host vanished; the host never reads it, it is for ps/logs


class _WorkerIO:
    """The I/O thread and its sockets. ``send`` may be called from any thread."""

    def __init__(self, spec: WorkerSpec, on_cancel: Any) -> None:
        self._spec = spec
        self._on_cancel = on_cancel
        self.commands: queue.Queue[tuple[Kind, int, Any]] = queue.Queue()
        self._ctx = zmq.Context()
        self._dealer = self._ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.ROUTING_ID, routing_id(spec.generation, spec.rank))
        self._dealer.setsockopt(zmq.LINGER, 5000)
        if spec.max_message_bytes is not None:
            self._dealer.setsockopt(zmq.MAXMSGSIZE, spec.max_message_bytes + 1024)
        self._dealer.connect(spec.address)
        # Few frames in flight: a producer faster than the host reads (big stream items)
        # waits in add_streaming_result instead of queueing without bound in this process.
        self._dealer.setsockopt(zmq.SNDHWM, _OUT_HWM)
        endpoint = f"inproc://gridgen-out-{id(self)}"
        self._out_recv = self._ctx.socket(zmq.PAIR)
        self._out_recv.setsockopt(zmq.RCVHWM, _OUT_HWM)
        self._out_recv.bind(endpoint)
        self._out_send = self._ctx.socket(zmq.PAIR)
        self._out_send.setsockopt(zmq.SNDHWM, _OUT_HWM)
        self._out_send.connect(endpoint)
        self._send_lock = threading.Lock()
        parent = multiprocessing.parent_process()
        self._parent_sentinel: int | None = parent.sentinel if parent is not None else None
        self._thread = threading.Thread(target=self._run, name="gridgen-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, kind: Kind, request_id: int, data: Any = None) -> None:
        self.send_frame(pack(kind, request_id, data, max_bytes=self._spec.max_message_bytes))

    def send_error(self, kind: Kind, request_id: int, exc: BaseException) -> None:
        self.send(kind, request_id, ErrorInfo.from_exception(exc).to_wire())

    def send_frame(self, frame: bytes) -> None:
        with self._send_lock:
            self._out_send.send(frame)

    def close(self) -> None:
        """Flush what was sent, stop the I/O thread, close the sockets."""
        with self._send_lock:
            self._out_send.send(b"")  # the empty frame tells the I/O thread to finish
        self._thread.join(timeout=10)
        self._out_send.close(linger=0)
        self._ctx.term()

    def _host_died(self) -> None:
        # The host is gone (even SIGKILL closes its end of the parent pipe). Nobody
        # will remove the runner's private directory, so the workers do it.
        shutil.rmtree(self._spec.runner_dir, ignore_errors=True)
        os._exit(_HOST_DEAD_EXIT)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._out_recv, zmq.POLLIN)
        if self._parent_sentinel is not None:
            poller.register(self._parent_sentinel, zmq.POLLIN)
        key = self._spec.session_key
        while True:
            events = dict(poller.poll())
            if self._parent_sentinel is not None and self._parent_sentinel in events:
                self._host_died()
            if self._out_recv in events:
                while True:
                    try:
                        frame = self._out_recv.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if not frame:
                        self._out_recv.close(linger=0)
                        self._dealer.close()  # LINGER lets queued frames reach the host
                        return
                    self._send_out([key, frame])
            if self._dealer in events:
                self._receive_all()

    def _receive_all(self) -> None:
        while True:
            try:
                raw = self._dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(raw)

    def _send_out(self, frames: list[bytes]) -> None:
        """Send to the host, waiting while it does not take messages (it is behind, or gone).

        A blocking send would wait forever once the host is dead (a DEALER without a peer
        blocks), and this thread would never see the host's death: keep watching for it,
        and for cancels, while waiting.
        """
        while True:
            try:
                self._dealer.send_multipart(frames, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            poller = zmq.Poller()
            poller.register(self._dealer, zmq.POLLIN | zmq.POLLOUT)
            if self._parent_sentinel is not None:
                poller.register(self._parent_sentinel, zmq.POLLIN)
            events = dict(poller.poll())
            if self._parent_sentinel is not None and self._parent_sentinel in events:
                self._host_died()
            if events.get(self._dealer, 0) & zmq.POLLIN:
                self._receive_all()

    def _handle(self, raw: bytes) -> None:
        try:
            message = parse(raw, HOST_KINDS)
        except ValueError as exc:  # CodecError is a ValueError
            logger.warning("dropped a malformed control message: %s", exc)
            return
        if message.kind is Kind.CANCEL:
            self._on_cancel(message.request_id)
        else:
            self.commands.put((message.kind, message.request_id, message.data))


class _WorkerRuntime:
    """The main thread's side: owns the user's worker object and the context it reads."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.io = _WorkerIO(spec, self._on_cancel)
        self.context: WorkerContext | None = None
        self._lock = threading.Lock()
        self._cancelled_ids: set[int] = set()
        self._streaming = False
        self._batch_ids: frozenset[int] = frozenset()  # the requests of the running batch
        self._loop: asyncio.AbstractEventLoop | None = None

    def _await(self, value: Any) -> Any:
        """``value``, or its result when it is awaitable (``async def`` setup, __call__ or
        teardown): run here, on the main thread, in one event loop kept for the process."""
        if not inspect.isawaitable(value):
            return value
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(value)

    # Called on the I/O thread.
    def _on_cancel(self, request_id: int) -> None:
        with self._lock:
            self._cancelled_ids.add(request_id)
            context = self.context
            if context is not None and context.request_id == request_id:
                context.cancel.set()
            elif context is not None and self._batch_ids and self._batch_ids <= self._cancelled_ids:
                context.cancel.set()  # every request of the batch is cancelled: the worker may stop

    def _emit(self, item: Any) -> None:
        if self._batch_ids:
            raise RuntimeError(
                "inside run_batch, stream with item.add_streaming_result(...): "
                "self.add_streaming_result cannot tell which request an item is for"
            )
        context = self.context
        request_id = None if context is None else context.request_id
        if request_id is None or not self._streaming:
            return
        self.io.send(Kind.ITEM, request_id, item)

    def _init_distributed(self) -> Any:
        import torch
        import torch.distributed as dist

        spec = self.spec
        if spec.device.startswith("cuda") and spec.set_device:
            torch.cuda.set_device(torch.device(spec.device))
        else:
            _share_cpu_cores(spec.world_size)
        store = dist.FileStore(spec.store_path, spec.world_size)  # type: ignore[attr-defined]
        dist.init_process_group(
            backend=spec.backend,
            store=store,
            rank=spec.rank,
            world_size=spec.world_size,
            timeout=timedelta(seconds=spec.collective_timeout),
        )
        if spec.backend == "gloo":
            return None  # the default group is already a CPU group
        # Cancellation checks all-reduce a flag over a CPU group so they never sync the GPU.
        return dist.new_group(backend="gloo", timeout=timedelta(seconds=spec.collective_timeout))

    def run(self) -> int:
        spec = self.spec
        self.io.start()
        self.io.send(Kind.HELLO, 0, {"pid": os.getpid()})
        try:
            self.context = WorkerContext(self._emit, self._init_distributed())
            worker = _build_worker(spec)
            worker._attach(self.context)
            self._await(worker.setup(**spec.setup_kwargs))
            sizes = declared_batch_sizes(worker)
        except Exception as exc:
            logger.error("setup failed on rank %d", spec.rank, exc_info=True)
            self.io.send_error(Kind.SETUP_ERROR, 0, exc)
            self.io.close()
            return 1
        self.io.send(Kind.READY, 0, {"batch_sizes": sizes})
        while True:
            kind, request_id, data = self.io.commands.get()
            if kind is Kind.SHUTDOWN:
                break
            if kind is Kind.BATCH:
                self._call_batch(worker, data)
            else:
                self._call(worker, request_id, data)
        try:
            self._await(worker.teardown())
        except Exception:
            logger.exception("teardown failed on rank %d", spec.rank)
        if self._loop is not None:
            self._loop.close()
        self.io.close()
        return 0

    def _call(self, worker: DistributedWorker, request_id: int, data: Any) -> None:
        context = self.context
        assert context is not None
        streaming, payload = data[0], data[1]
        with self._lock:
            context.request_id = request_id
            self._streaming = streaming
            context.cancel.clear()
            if request_id in self._cancelled_ids:
                context.cancel.set()
        try:
            result = self._await(worker(streaming=streaming, **payload))
        except Cancelled:
            self.io.send(Kind.CANCELLED, request_id)
        except Exception as exc:
            self.io.send_error(Kind.ERROR, request_id, exc)
        else:
            if isinstance(result, concurrent.futures.Future):
                # The rank is free now (its GPU work is done); the value follows when the
                # future resolves, e.g. image encoding in a thread, overlapped with the next request.
                self.io.send(Kind.RELEASED, request_id)
                result.add_done_callback(functools.partial(self._deliver, request_id))
            else:
                self._send_result(request_id, result)
        finally:
            with self._lock:
                context.request_id = None
                self._cancelled_ids.discard(request_id)
                # Cancels for requests older than this one can never matter again.
                self._cancelled_ids = {i for i in self._cancelled_ids if i > request_id}

    # -- merged requests -------------------------------------------------------------------

    def _call_batch(self, worker: DistributedWorker, calls: list[Message]) -> None:
        context = self.context
        assert context is not None
        ids = [call.request_id for call in calls]
        items = [
            BatchItem(
                index=i,
                request_id=call.request_id,
                payload=dict(call.data[1]),
                streaming=call.data[0],
                sink=functools.partial(self._emit_item, call.request_id, call.data[0]),
            )
            for i, call in enumerate(calls)
        ]
        batch = Batch(items, is_cancelled=self._cancelled_ids.__contains__, group=context.control_group)
        with self._lock:
            self._batch_ids = frozenset(ids)
            context.request_id = None
            context.cancel.clear()
            if self._batch_ids <= self._cancelled_ids:
                context.cancel.set()
        try:
            results = worker.run_batch(batch)
        except Cancelled:
            self._send_all(ids, Kind.CANCELLED)
        except Exception as exc:
            self._send_all(ids, Kind.ERROR, ErrorInfo.from_exception(exc).to_wire())
        else:
            if isinstance(results, concurrent.futures.Future):
                self._send_all(ids, Kind.RELEASED)
                results.add_done_callback(functools.partial(self._deliver_batch, ids))
            else:
                self._send_results(ids, results)
        finally:
            with self._lock:
                self._batch_ids = frozenset()
                # The batch's first request was the oldest queued: cancels for older ones
                # can never matter again. Later ids may belong to requests still to come.
                self._cancelled_ids = {i for i in self._cancelled_ids if i > ids[0] and i not in ids}

    def _emit_item(self, request_id: int, streaming: bool, item: Any, image_format: ImageFormat) -> None:
        if streaming and request_id not in self._cancelled_ids:
            from .images import encode_images_in  # PIL: only once a worker streams

            self.io.send(Kind.ITEM, request_id, encode_images_in(item, image_format))

    def _send_all(self, ids: list[int], kind: Kind, data: Any = None) -> None:
        for request_id in ids:
            self.io.send(kind, request_id, data)

    def _send_results(self, ids: list[int], results: Any) -> None:
        if not isinstance(results, list | tuple) or len(results) != len(ids):
            got = f"{len(results)} values" if isinstance(results, list | tuple) else type(results).__name__
            error = TypeError(f"run_batch must return a list of one value per request ({len(ids)}), got {got}")
            self._send_all(ids, Kind.ERROR, ErrorInfo.from_exception(error).to_wire())
            return
        for request_id, value in zip(ids, results, strict=True):
            if isinstance(value, concurrent.futures.Future):
                self.io.send(Kind.RELEASED, request_id)
                value.add_done_callback(functools.partial(self._deliver, request_id))
            elif request_id in self._cancelled_ids:
                self.io.send(Kind.CANCELLED, request_id)  # its caller is gone: do not encode it
            else:
                self._send_result(request_id, value)

    def _deliver_batch(self, ids: list[int], future: concurrent.futures.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or isinstance(error, Cancelled):
            self._send_all(ids, Kind.CANCELLED)
        elif error is not None:
            self._send_all(ids, Kind.ERROR, ErrorInfo.from_exception(error).to_wire())
        else:
            self._send_results(ids, future.result())

    def _send_result(self, request_id: int, result: Any) -> None:
        try:
            # Only rank 0's value is returned to the caller; the others are not even encoded.
            self.io.send(Kind.DONE, request_id, result if self.spec.rank == 0 else None)
        except Exception as exc:  # an unsupported type or a too-large result
            self.io.send_error(Kind.ERROR, request_id, exc)

    def _deliver(self, request_id: int, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            self.io.send(Kind.CANCELLED, request_id)
            return
        error = future.exception()
        if error is None:
            self._send_result(request_id, future.result())
        elif isinstance(error, Cancelled):
            self.io.send(Kind.CANCELLED, request_id)
        else:
            self.io.send_error(Kind.ERROR, request_id, error)


def _build_worker(spec: WorkerSpec) -> DistributedWorker:
    """The user's worker for this rank. A subclass with fal's ``__init__(self, rank=0,
    world_size=1)`` takes no device argument: it gets the device from the process."""
    worker_module._process_device = spec.device
    parameters: Mapping[str, inspect.Parameter]
    try:
        parameters = inspect.signature(spec.worker_cls).parameters
    except (TypeError, ValueError):  # no signature to read: pass the device, as always
        parameters = {"device": inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY)}
    if "device" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return spec.worker_cls(rank=spec.rank, world_size=spec.world_size, device=spec.device)
    return spec.worker_cls(rank=spec.rank, world_size=spec.world_size)


def _share_cpu_cores(world_size: int) -> None:
    """Give each CPU rank its share of the cores, as torchrun does with OMP_NUM_THREADS.

    Each process would otherwise start one thread per core; several ranks on one machine
    then oversubscribe the cores, and since ranks step in lockstep through collectives,
    small CPU requests run 10 to 50 times slower. An explicit OMP_NUM_THREADS wins.
    """
    if world_size <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // world_size)
    if torch.get_num_threads() > threads:
        torch.set_num_threads(threads)


def forked_main(host: HostStart, spec: WorkerSpec) -> None:
    """The target of a rank forked from the forkserver; ``host`` was applied as it arrived."""
    worker_main(spec)


def worker_main(spec: WorkerSpec) -> None:
    """The target of each spawned worker process."""
    # Ctrl-C in a terminal reaches the whole process group; the host decides how workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.cwd is not None:
        os.chdir(spec.cwd)
    pumps = prefix_output(spec.rank) if spec.prefix_output else []
    configure_logging(spec.rank, spec.log_level)
    if spec.backend == "gloo":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    else:
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    code = _WorkerRuntime(spec).run()
    drain_output(pumps)
    # os._exit skips multiprocessing's exit finalizers, among them the unlinking of named
    # semaphores made here (tqdm's default lock is one per worker): the host's resource
    # tracker, which spawned workers share, would report each as leaked. Run them first.
    run_finalizers = getattr(multiprocessing.util, "_run_finalizers", None)  # private, stable since 2.6
    if run_finalizers is not None:
        run_finalizers(0)
    # Skip interpreter teardown: torch.distributed and CUDA destructors can hang at exit.
    os._exit(code)

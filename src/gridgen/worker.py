"""``DistributedWorker``: the class users subclass to run code on every rank."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any

from .errors import Cancelled

if TYPE_CHECKING:
    import torch
    import torch.distributed

__all__ = ["DistributedWorker", "WorkerContext"]

StreamSink = Callable[[Any], None]

# The device of this worker process. The runtime sets it before it builds the worker, so
# that a subclass whose ``__init__(self, rank=0, world_size=1)`` calls
# ``super().__init__(rank, world_size)`` (fal's signature) still gets its device.
_process_device = "cpu"


class WorkerContext:
    """What the worker process gives a worker: the one object the runtime shares with it.

    The worker process (:mod:`gridgen._worker_main`) owns it and updates it between
    requests; the worker only reads it. A worker built without a runner has none.
    """

    def __init__(self, emit: StreamSink, control_group: Any) -> None:
        self.emit = emit  # sends a streamed item of the running request
        self.control_group = control_group  # the CPU group for collective cancellation checks
        self.cancel = threading.Event()  # set once the host cancelled the running request
        self.request_id: int | None = None


class DistributedWorker:
    """One instance lives in each worker process, one process per rank.

    Subclass it and override ``setup`` (once per process, load models onto
    ``self.device``), ``__call__`` (once per request, on every rank) and
    optionally ``teardown``. The runner calls all three on the process's main
    thread, after ``torch.cuda.set_device(self.device)`` on that thread, with
    ``torch.distributed`` already initialised (gloo on CPU, NCCL on CUDA), so
    ``dist.gather``, ``dist.all_reduce`` and ``dist.barrier`` work between ranks.
    All three may be ``async def``: they are then awaited on that same thread, in one
    event loop kept for the process. A subclass may override ``__init__(self, rank=0,
    world_size=1)`` (fal's signature) and call ``super().__init__(rank, world_size)``:
    ``self.device`` is still this rank's device.

    ``invoke`` returns rank 0's return value; the other ranks' return values
    are ignored (they are not even encoded). ``__call__`` may also return a
    ``concurrent.futures.Future`` of its value: the rank is then free for the next
    request at once and the value is sent when the future resolves (the SDXL worker
    encodes images this way, in a thread, while the GPU starts the next request).

    A worker can also be built directly, without a runner, for unit tests:
    ``w = MyWorker(); w.setup(); w(prompt="x")``; streamed items are then kept
    in ``w.streamed``.
    """

    rank: int
    world_size: int
    batch_sizes: Collection[int] | None = None
    """The unit totals (see :meth:`batch_units`) a merged call should have on this worker,
    set in ``setup`` (rank 0's value is used): e.g. the batch sizes it warmed up, which run
    without padding or compiling. The runner merges only into these totals unless its own
    ``batch_sizes`` option is set. None (the default): any total. Ignored by a worker that
    never merges (no :meth:`batch_key`)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self._device_spec = _process_device if device is None else device
        self._device: torch.device | None = None
        self._context: WorkerContext | None = None
        self._local_cancel = threading.Event()
        self.streamed: list[Any] = []

    def _attach(self, context: WorkerContext) -> None:
        """Called once by the worker process, before ``setup``."""
        self._context = context

    @property
    def _distributed(self) -> bool:
        return self._context is not None

    @property
    def _cancel(self) -> threading.Event:
        return self._local_cancel if self._context is None else self._context.cancel

    @property
    def _request_id(self) -> int | None:
        return None if self._context is None else self._context.request_id

    # -- what users override -------------------------------------------------

    def setup(self, **kwargs: Any) -> Awaitable[None] | None:
        """Called once per rank by ``runner.start(**kwargs)``, before any request (may be ``async def``)."""

    def __call__(self, streaming: bool = False, **payload: Any) -> Any:
        """Called once per request on every rank with the request's payload as keywords."""
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(streaming=False, **payload)")

    def teardown(self) -> Awaitable[None] | None:
        """Called once per rank when the runner stops cleanly (may be ``async def``)."""

    # -- what user code calls -------------------------------------------------

    @property
    def device(self) -> torch.device:
        """This rank's ``torch.device``: ``cuda:N`` or ``cpu``."""
        if self._device is None:
            import torch

            self._device = torch.device(self._device_spec)
        return self._device

    def add_streaming_result(self, result: Any, image_format: str = "jpeg", as_text_event: bool = False) -> None:
        """Send ``result`` to the caller of ``runner.stream()`` now, tagged to this request.

        Any rank may call it; items arrive in the order each rank sent them.
        ``result`` is encoded immediately, so later changes to it are not seen. PIL images
        in it are encoded as ``image_format`` (``"jpeg"``, ``"png"`` or ``"webp"``);
        :class:`~gridgen.EncodedImage` values are sent as they are.
        ``as_text_event`` is accepted for compatibility: the *caller* chooses the
        format with ``runner.stream(..., as_text_events=True)``.
        When the caller used ``invoke`` (not streaming), items are dropped.
        """
        from .images import encode_images_in, stream_format

        del as_text_event
        fmt = stream_format(image_format)
        if self._context is None:
            self.streamed.append(result)
        else:
            self._context.emit(encode_images_in(result, fmt))

    def add_streaming_error(self, error: BaseException | str) -> None:
        """Send an error item to the caller of ``runner.stream()``; the request goes on.

        The item is ``{"error": {"type", "message", "rank"}}`` (the shape of the last event
        of a failed ``as_text_events`` stream). To fail the request, raise instead.
        """
        if isinstance(error, BaseException):
            cls = type(error)  # named as WorkerError.remote_type names remote exceptions
            builtin = cls.__module__ in ("builtins", "__main__")
            kind = cls.__qualname__ if builtin else f"{cls.__module__}.{cls.__qualname__}"
            message = str(error)
        else:
            kind, message = "Error", str(error)
        self.add_streaming_result({"error": {"type": kind, "message": message, "rank": self.rank}})

    def rank_print(self, message: str, debug: bool = False) -> None:
        """Print ``[rank N] message`` (``[debug] [rank N] message`` with ``debug=True``)."""
        prefix = f"[debug] [rank {self.rank}]" if debug else f"[rank {self.rank}]"
        print(f"{prefix} {message}", flush=True)

    @property
    def cancelled(self) -> bool:
        """True once the host cancelled the running request (this rank's local view)."""
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`~gridgen.Cancelled` if the running request was cancelled.

        This is a local check: ranks may see the cancel at different moments. Call it
        only where no other rank waits for this one in a collective; otherwise use
        :meth:`should_stop`.
        """
        if self._cancel.is_set():
            raise Cancelled(f"request cancelled (rank {self.rank})")

    def should_stop(self) -> bool:
        """Collective cancellation check: every rank must call it at the same points.

        Returns True on *every* rank when *any* rank saw the cancel, so all ranks
        leave their loop at the same step and no collective is left waiting.
        It all-reduces one integer over a CPU (gloo) group, so it never
        synchronises the GPU.
        """
        local = self._cancel.is_set()
        if self.world_size == 1 or not self._distributed:
            return local
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        group = None if self._context is None else self._context.control_group
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
        stop = bool(flag.item())
        if stop:
            self._cancel.set()
        return stop

    @property
    def request_id(self) -> int | None:
        """The id of the request being run, or None between requests."""
        return self._request_id

    # -- merging queued requests into one call ----------------------------------------
    # (imported here, for annotations only, to keep this block self-contained)
    if TYPE_CHECKING:
        from collections.abc import Hashable

        from ._batch import Batch

    @classmethod
    def check_payload(cls, payload: dict[str, Any], setup_kwargs: Mapping[str, Any]) -> None:
        """Called on the host when a request is submitted, before :meth:`batch_key`, with the
        keyword arguments the runner gives ``setup``: raise to reject the request before it
        is queued (the diffusion workers refuse an adapter that no configured source holds).
        It runs on the class (no instance); do not modify either argument. Default: nothing.
        """
        del payload, setup_kwargs

    @classmethod
    def batch_key(cls, payload: dict[str, Any]) -> Hashable | None:
        """Requests with equal, non-None keys may be merged into one :meth:`run_batch` call.

        Called on the host, once per request when it is submitted, on the class (no
        instance, no ``setup``): it must be a cheap, pure function of the payload. Raising
        rejects that request before it is queued (use it to validate). The default, None,
        never merges: every request runs alone through ``__call__``, as before.
        """
        del payload
        return None

    @classmethod
    def batch_units(cls, payload: dict[str, Any], world_size: int) -> int:
        """Work units of one request (e.g. its images), counted against the runner's
        ``max_batch_units``. Called on the host like :meth:`batch_key`. Default: 1."""
        del payload, world_size
        return 1

    def run_batch(self, batch: Batch) -> list[Any]:
        """Serve several merged requests at once; called instead of ``__call__`` on every rank.

        Called on the main thread for a worker whose :meth:`batch_key` returned a key (also
        for a batch of one). Return one value per request, in batch order (rank 0's list is
        used); an element may be a ``concurrent.futures.Future``, and so may the whole list.
        Raising fails every request of the batch. Stream with ``item.add_streaming_result``
        (``self.add_streaming_result`` cannot tell which request an item is for), and check
        cancellation with the collective :meth:`Batch.cancelled <gridgen.Batch.cancelled>`.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.batch_key returned a key, so requests may be merged and "
            f"{type(self).__name__} must implement run_batch(batch); or let batch_key return "
            "None to run each request alone through __call__"
        )


def declared_batch_sizes(worker: DistributedWorker) -> list[int] | None:
    """``worker.batch_sizes`` after setup, checked and sorted (a bad value fails setup).

    Only for a worker that merges (it overrides ``batch_key``): code written for fal may
    use the name for something else, and without merging it means nothing here.
    """
    sizes = worker.batch_sizes
    merges = type(worker).batch_key.__func__ is not DistributedWorker.batch_key.__func__  # type: ignore[attr-defined]
    if sizes is None or not merges:
        return None
    values = list(sizes) if isinstance(sizes, Collection) and not isinstance(sizes, str) else None
    if not values or any(type(n) is not int or n < 1 for n in values):
        raise ValueError(
            f"{type(worker).__name__}.batch_sizes must be None or a non-empty collection of "
            f"ints >= 1, got {sizes!r}"
        )
    return sorted(set(values))
